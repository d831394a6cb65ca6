"""Build the derived tables of reference_data/: each ZIP's nearest hospitals and their weights
(hospital_candidates.csv), who prefers which language (language_lep.csv) and the joint
population's tables (state_age_sex.csv, state_mortality.csv, race_by_state_age.csv), then the
generator's parsed tables as reference.marshal (what a run loads at start-up instead of the CSVs)
and the stays' tables as stays.marshal (what a run with --encounters loads instead of computing).

    python tools/build_reference.py            # rewrite the files (deterministic, ~5 s)
    python tools/build_reference.py --check    # exit 1 if a file differs from a rebuild

Offline, so a plan never pays for the nearest-hospital search (1.3 s for 33,187 ZIPs) or the
fits. Reads only reference_data/; stdlib and, for the two .marshal files, the generator itself.
tests/test_places.py rebuilds the files with these functions and compares them with the
committed ones.

Hospital model (docs and README "Places and hospitals"):
  * general hospitals = CMS "Acute Care Hospitals" and "Critical Access Hospitals"; "Childrens"
    are an extra candidate for patients under 18; Psychiatric, VA, DoD, Long-term and Rural
    Emergency Hospitals are never used;
  * a ZIP's candidates are the K = 10 nearest general hospitals, whatever their state
    (great-circle distance between ZIP internal points; a hospital sits at its ZIP's point),
    weighted by a gravity model w = volume / (d_km + 5)**BETA, BETA = 1, volume = the hospital's
    HCRIS 2021 total discharges (hospital_volumes.csv), or for a hospital without them its beds x
    the median discharges per bed of its type, else the median discharges of its type. K and
    BETA were tuned (docs/population-model.md) so that patients per hospital follow discharges
    (Pearson 0.94) and the top tenth of hospitals holds 42 % of patients (HCRIS: 44.5 %); with
    the former K = 5 in-state, BETA = 2 the top tenth held 36 %;
  * the children's candidate is the nearest children's hospital within 100 km, in any state;
  * weights are integers on one scale, round(1000 * w), at least 1, so a children's weight adds
    to the general ones without renormalising (a ZIP's sum stays far below 2**32).
"""

from __future__ import annotations

import argparse
import csv
import functools
import io
import math
import re
import statistics
import sys
import unicodedata
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import NamedTuple

DATA = Path(__file__).resolve().parents[1] / "reference_data"
OUT = "hospital_candidates.csv"
K = 10  # general-hospital candidates per ZIP
D0_KM = 5.0  # gravity-model distance offset: a hospital in the patient's own ZIP stays finite
BETA = 1.0  # gravity-model distance decay
CHILD_RADIUS_KM = 100.0
WEIGHT_SCALE = 1000.0
GENERAL_TYPES = ("Acute Care Hospitals", "Critical Access Hospitals")
CHILDREN_TYPE = "Childrens"
EARTH_KM = 6371.0088
COLUMNS = ["zip", "hospitals", "weights", "children_hospital", "children_weight"]


class Zip(NamedTuple):
    zip: str
    state: str
    county_fips: str
    county_name: str
    lat: float
    lng: float


def rows(data: Path, name: str) -> list[dict[str, str]]:
    with open(data / name, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def load_zips(data: Path = DATA) -> list[Zip]:
    """zips.csv joined to counties.csv, in file (ZIP) order."""
    county = {r["county_fips"]: r["county_name"] for r in rows(data, "counties.csv")}
    return [
        Zip(r["zip"], r["state"], r["county_fips"], county[r["county_fips"]],
            float(r["lat"]), float(r["lng"]))
        for r in rows(data, "zips.csv")
    ]  # fmt: skip


def hospital_volumes(hospitals: Sequence[Mapping[str, str]], data: Path = DATA) -> dict[str, float]:
    """CCN -> the gravity model's size: HCRIS 2021 total discharges (hospital_volumes.csv); for
    a general or children's hospital without them, its beds x the median discharges per bed of
    its type, else the median discharges of its type (the medians over the type's hospitals with
    both figures, resp. with discharges)."""
    volume = {r["ccn"]: r for r in rows(data, "hospital_volumes.csv")}
    kind = {h["ccn"]: h["hospital_type"] for h in hospitals}
    per_bed: dict[str, list[float]] = {}
    totals: dict[str, list[float]] = {}
    for ccn, r in volume.items():
        if r["discharges"]:
            totals.setdefault(kind[ccn], []).append(float(r["discharges"]))
            if r["beds"] and float(r["beds"]) > 0:
                per_bed.setdefault(kind[ccn], []).append(float(r["discharges"]) / float(r["beds"]))
    out = {}
    for ccn, r in volume.items():
        if r["discharges"]:
            out[ccn] = max(1.0, float(r["discharges"]))
        elif r["beds"] and kind[ccn] in per_bed:
            out[ccn] = float(r["beds"]) * statistics.median(per_bed[kind[ccn]])
        elif kind[ccn] in totals:
            out[ccn] = statistics.median(totals[kind[ccn]])
    return out


_COUNTY_SUFFIX = re.compile(
    r"\s+(COUNTY|PARISH|BOROUGH|CENSUS AREA|MUNICIPIO|MUNICIPALITY|CITY AND BOROUGH)$"
)


def county_key(name: str) -> str:
    """CMS ('LOS ANGELES', 'THE DISTRICT') and Census ('Los Angeles County') county names alike."""
    n = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode()
    n = _COUNTY_SUFFIX.sub("", n.upper().replace(".", "").replace("'", "").strip())
    if n in ("THE DISTRICT", "DISTRICT OF COLUMBIA", "WASHINGTON DC"):
        return "DISTRICT OF COLUMBIA"
    return re.sub(r"[^A-Z0-9]", "", n.replace("SAINT ", "ST "))


def hospital_locations(hospitals: Sequence[Mapping[str, str]], zips: Sequence[Zip]) -> list[int]:
    """Each hospital's index into `zips`: its own ZIP, else (PO-box and unique ZIPs such as 37232
    Vanderbilt) the numerically nearest ZIP of the same state and county, else of the same state.
    Ties go to the lower ZIP."""
    by_zip = {z.zip: i for i, z in enumerate(zips)}
    by_state: dict[str, list[int]] = {}
    by_county: dict[tuple[str, str], list[int]] = {}
    for i, z in enumerate(zips):
        by_state.setdefault(z.state, []).append(i)
        by_county.setdefault((z.state, county_key(z.county_name)), []).append(i)
    out = []
    for h in hospitals:
        i = by_zip.get(h["zip"])
        if i is None or zips[i].state != h["state"]:
            pool = by_county.get((h["state"], county_key(h["county"]))) or by_state[h["state"]]
            target = int(h["zip"])
            i = min(pool, key=lambda j: (abs(int(zips[j].zip) - target), zips[j].zip))
        out.append(i)
    return out


def haversine_km(lat1: float, lng1: float, lat2: float, lng2: float) -> float:
    p1, p2 = math.radians(lat1), math.radians(lat2)
    a = (
        math.sin((p2 - p1) / 2) ** 2
        + math.cos(p1) * math.cos(p2) * math.sin(math.radians(lng2 - lng1) / 2) ** 2
    )
    return 2 * EARTH_KM * math.asin(min(1.0, math.sqrt(a)))


@functools.cache
def _ring(r: int) -> tuple[tuple[int, int], ...]:
    """Grid cell offsets at Chebyshev distance r."""
    if r == 0:
        return ((0, 0),)
    out = [(dy, dx) for dy in (-r, r) for dx in range(-r, r + 1)]
    return tuple(out + [(dy, dx) for dx in (-r, r) for dy in range(-r + 1, r)])


class Grid:
    """One state's hospitals in 0.5-degree cells, for an exact k-nearest search ring by ring."""

    CELL = 0.5

    def __init__(self, pts: Sequence[tuple[float, float, int]]) -> None:
        self.cells: dict[tuple[int, int], list[tuple[float, float, int]]] = {}
        for lat, lng, hid in pts:
            key = (math.floor(lat / self.CELL), math.floor(lng / self.CELL))
            self.cells.setdefault(key, []).append((lat, lng, hid))
        ys, xs = [k[0] for k in self.cells], [k[1] for k in self.cells]
        self.box = (min(ys), max(ys), min(xs), max(xs))
        top = min(89.0, max(abs(lat) for lat, _, _ in pts) + self.CELL)  # narrowest longitude
        self.ring_km = self.CELL * math.pi * EARTH_KM / 180.0 * math.cos(math.radians(top))
        self.n = len(pts)

    def nearest(self, lat: float, lng: float, k: int) -> list[tuple[float, int]]:
        """[(km, hospital)] of the k nearest (all if fewer), nearest first, ties by hospital.
        Exact: after ring r every unvisited point is at least r * ring_km away."""
        cy, cx = math.floor(lat / self.CELL), math.floor(lng / self.CELL)
        y0, y1, x0, x1 = self.box
        last = max(abs(cy - y0), abs(cy - y1), abs(cx - x0), abs(cx - x1))
        k, found, r = min(k, self.n), [], 0
        while True:
            for dy, dx in _ring(r):
                for plat, plng, hid in self.cells.get((cy + dy, cx + dx), ()):
                    found.append((haversine_km(lat, lng, plat, plng), hid))
            found.sort()
            if r >= last or (len(found) >= k and found[k - 1][0] <= r * self.ring_km):
                return found[:k]
            r += 1


def weight(size: float, km: float) -> int:
    """The gravity weight on the file's integer scale."""
    return max(1, round(WEIGHT_SCALE * size / (km + D0_KM) ** BETA))


def candidates(zips: Sequence[Zip], hospitals: Sequence[Mapping[str, str]]) -> list[dict[str, str]]:
    """hospital_candidates.csv's rows, one per ZIP of `zips`, in its order."""
    where = hospital_locations(hospitals, zips)
    size = hospital_volumes(hospitals)
    general, children = [], []
    for i, h in enumerate(hospitals):
        z = zips[where[i]]
        if h["hospital_type"] in GENERAL_TYPES:
            general.append((z.lat, z.lng, i))
        elif h["hospital_type"] == CHILDREN_TYPE:
            children.append((z.lat, z.lng, i))
    grid, kid_grid = Grid(general), Grid(children)
    out = []
    for z in zips:
        near = grid.nearest(z.lat, z.lng, K)
        kids = kid_grid.nearest(z.lat, z.lng, 1)
        kid = kids[0] if kids and kids[0][0] <= CHILD_RADIUS_KM else None
        weights = [weight(size[hospitals[i]["ccn"]], d) for d, i in near]
        kid_weight = weight(size[hospitals[kid[1]]["ccn"]], kid[0]) if kid else 0
        if sum(weights) + kid_weight >= 1 << 32:
            raise ValueError(f"ZIP {z.zip}: weights overflow the generator's 32-bit sums")
        out.append({
            "zip": z.zip,
            "hospitals": " ".join(hospitals[i]["ccn"] for _, i in near),
            "weights": " ".join(map(str, weights)),
            "children_hospital": hospitals[kid[1]]["ccn"] if kid else "",
            "children_weight": str(kid_weight) if kid else "",
        })  # fmt: skip
    return out


def render(table: list[dict[str, str]], columns: Sequence[str] = COLUMNS) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, columns, lineterminator="\n")
    w.writeheader()
    w.writerows(table)
    return buf.getvalue()


# -- language_lep.csv: who prefers a language other than English (limited English proficiency)
#
# P(C16001 group g, speaking English less than "very well" | state, age band, Hispanic origin):
#   * the level of each group g by state: ACS 2018 C16001 LEP counts (Wyoming, empty there: its
#     ACS 2017 C16001 speakers, languages_by_state.csv, x the national LEP share of g's speakers);
#   * the age profile within B16004's four groups G (Spanish, other Indo-European, Asian and
#     Pacific Island, other): the state's LEP rate by band (5-17, 18-64, 65+), the national one
#     where B16004 is empty (MT, VT, WY), scaled to the level;
#   * Hispanic origin: an iterative proportional fit of each G's LEP over (Hispanic, band) cells,
#     seeded by the cells' population (B01001, B01001I), to the band totals and to the Hispanic
#     total: B16006's Hispanic Spanish LEP for Spanish; for the others, Hispanics who speak
#     another language (B16006) x the state's LEP share of those languages' speakers;
#   * within G, the groups g in proportion to the state's C16001 LEP counts.
# The US rows pool the states' cells (used where a state has no row: PR).

LANGUAGE_OUT = "language_lep.csv"
LANGUAGE_BANDS = ("5-17", "18-64", "65+")
B16004_GROUPS: Mapping[str, tuple[str, ...]] = {  # B16004 group -> its C16001 groups
    "spanish": ("C16001_003E",),
    "indo_european": ("C16001_006E", "C16001_009E", "C16001_012E", "C16001_015E"),
    "asian_pacific": ("C16001_018E", "C16001_021E", "C16001_024E", "C16001_027E", "C16001_030E"),
    "other": ("C16001_033E", "C16001_036E"),
}
LEP_GROUPS = tuple(g for groups in B16004_GROUPS.values() for g in groups)
LANGUAGE_COLUMNS = ["state", "age_band", "hispanic", "population", *LEP_GROUPS]
LEP_IPF_ROUNDS = 200


def _fit(seed: list[list[float]], rows_: list[float], cols: list[float]) -> list[list[float]]:
    """Iterative proportional fitting of a table to row and column totals (equal sums)."""
    t = [row[:] for row in seed]
    for _ in range(LEP_IPF_ROUNDS):
        for i, target in enumerate(rows_):
            s = sum(t[i])
            t[i] = [x * target / s if s else 0.0 for x in t[i]]
        for j, target in enumerate(cols):
            s = sum(t[i][j] for i in range(len(t)))
            for i in range(len(t)):
                t[i][j] = t[i][j] * target / s if s else 0.0
    return t


def _lep_levels(data: Path) -> dict[str, dict[str, float]]:
    """state -> C16001 group -> LEP people 5+ (Wyoming estimated from its 2017 speakers)."""
    level: dict[str, dict[str, float]] = {}
    speakers: dict[str, list[float]] = {}
    for r in rows(data, "lep_by_language_group_acs2018.csv"):
        level.setdefault(r["state"], {})[r["acs_variable"]] = float(r["lep"])
        pair = speakers.setdefault(r["acs_variable"], [0.0, 0.0])
        pair[0] += float(r["speakers"])
        pair[1] += float(r["lep"])
    published = set(level)
    for r in rows(data, "languages_by_state.csv"):
        if r["state"] not in published and r["acs_variable"] in speakers:
            spoken, lep = speakers[r["acs_variable"]]
            level.setdefault(r["state"], {})[r["acs_variable"]] = (
                float(r["speakers"]) * lep / spoken
            )
    return level


def language_cells(data: Path = DATA) -> dict[str, dict[tuple[str, bool], dict[str, float]]]:
    """state -> (band, Hispanic?) -> {"population": people, C16001 group: LEP people}."""
    level = _lep_levels(data)
    by_age: dict[tuple[str, str, str], tuple[float, float]] = {}  # (state, band, G) -> pop, LEP
    for r in rows(data, "lep_by_age_acs2018.csv"):
        by_age[r["state"], r["age_band"], r["group"]] = (float(r["population"]), float(r["lep"]))
    national = {
        (band, big): sum(v[1] for k, v in by_age.items() if k[1:] == (band, big))
        / sum(v[0] for k, v in by_age.items() if k[1:] == (band, big))
        for band in LANGUAGE_BANDS
        for big in B16004_GROUPS
    }
    out = {}
    for r in rows(data, "hispanic_language_acs2018.csv"):
        st = r["state"]
        pop = [float(r[f"population_{b}"]) for b in ("5_17", "18_64", "65plus")]
        hisp = [float(r[f"hispanic_{b}"]) for b in ("5_17", "18_64", "65plus")]
        seed = [hisp, [p - h for p, h in zip(pop, hisp, strict=True)]]
        cells = {
            (band, h): {"population": seed[1 - h][k]}
            for k, band in enumerate(LANGUAGE_BANDS)
            for h in (True, False)
        }
        other = [g for g in LEP_GROUPS if g != "C16001_003E"]
        other_total = sum(level[st][g] for g in other)
        other_hispanic = float(r["hispanic_other_language"]) * _speaker_share(data, st)
        for big, groups in B16004_GROUPS.items():
            total = sum(level[st][g] for g in groups)
            rate = [
                by_age[st, b, big][1] / by_age[st, b, big][0] if (st, b, big) in by_age
                else national[b, big]
                for b in LANGUAGE_BANDS
            ]  # fmt: skip
            scale = total / sum(p * x for p, x in zip(pop, rate, strict=True))
            bands = [p * x * scale for p, x in zip(pop, rate, strict=True)]
            wanted = (
                float(r["hispanic_spanish_lep"]) if big == "spanish"
                else other_hispanic * total / other_total
            )  # fmt: skip
            hispanic = min(wanted, total)
            fit = _fit(seed, [hispanic, total - hispanic], bands)
            for k, band in enumerate(LANGUAGE_BANDS):
                for h in (True, False):
                    for g in groups:
                        cells[band, h][g] = fit[1 - h][k] * level[st][g] / total if total else 0.0
        out[st] = cells
    out["US"] = {
        key: {c: sum(out[st][key][c] for st in list(out)) for c in ("population", *LEP_GROUPS)}
        for key in out[next(iter(out))]
    }
    return out


@functools.cache
def _speaker_shares(data: Path) -> dict[str, float]:
    """state -> LEP people / speakers over the languages other than English and Spanish
    (C16001 2018; Wyoming: the national share)."""
    spoken: dict[str, list[float]] = {}
    for r in rows(data, "lep_by_language_group_acs2018.csv"):
        if r["acs_variable"] != "C16001_003E":
            pair = spoken.setdefault(r["state"], [0.0, 0.0])
            pair[0] += float(r["speakers"])
            pair[1] += float(r["lep"])
    national = sum(p[1] for p in spoken.values()) / sum(p[0] for p in spoken.values())
    return {st: lep / s for st, (s, lep) in spoken.items()} | {"": national}


def _speaker_share(data: Path, state: str) -> float:
    shares = _speaker_shares(data)
    return shares.get(state, shares[""])


def language_table(data: Path = DATA) -> list[dict[str, str]]:
    """language_lep.csv's rows: per (state, band, Hispanic origin) the cell's ACS people and
    each group's LEP share in parts per 10**9 (English-preferring = the rest)."""
    out = []
    for st, cells in sorted(language_cells(data).items()):
        for (band, h), c in sorted(
            cells.items(), key=lambda kv: (LANGUAGE_BANDS.index(kv[0][0]), not kv[0][1])
        ):
            row = {"state": st, "age_band": band, "hispanic": "Y" if h else "N"}
            row["population"] = str(round(c["population"]))  # ACS people 5+ of the cell
            for g in LEP_GROUPS:
                row[g] = str(round(1e9 * c[g] / c["population"])) if c["population"] else "0"
            out.append(row)
    return out


OUTPUTS = {  # file -> (builder, columns)
    OUT: (lambda: candidates(load_zips(), rows(DATA, "hospitals.csv")), COLUMNS),
    LANGUAGE_OUT: (language_table, LANGUAGE_COLUMNS),
}


# ---------------------------------------------------------------------------------------------
# The joint population (issue 17): state age x sex, state mortality ratios, race x ethnicity by
# state, age and sex. Reads state_age_sex_v2023.csv, age_sex.csv, states.csv,
# life_table_hmd2022_full.csv, population_components_v2025.csv, race_ethnicity_by_state.csv and
# state_age_race_acs2018.csv; docs/population-model.md explains every choice.
# ---------------------------------------------------------------------------------------------

MAX_AGE = 110  # the generator's last age
SEXES = ("male", "female")
CENSUS_SEX = {"M": "male", "F": "female"}
OPEN_AGE = 85  # state_age_sex_v2023.csv: age 85 means 85+
DEATHS_YEAR = "2024"  # population_components_v2025.csv component year July 2023 - June 2024
# ACS B01001A-I age bands (lower bounds); a band runs to the next bound - 1, the last to MAX_AGE
BANDS = (0, 5, 10, 15, 18, 20, 25, 30, 35, 45, 55, 65, 75, 85)
RACE_ITERATION = {  # race_ethnicity_by_state.csv race code -> ACS iteration (race alone)
    "2106-3": "A", "2054-5": "B", "1002-5": "C", "2028-9": "D", "2076-8": "E", "2131-1": "F",
    "": "G",
}  # fmt: skip
IPF_ROUNDS = 60


def band_of(age: int) -> int:
    """The ACS band index of a single year of age."""
    k = 0
    while k + 1 < len(BANDS) and BANDS[k + 1] <= age:
        k += 1
    return k


def national_age_sex(data: Path = DATA) -> dict[str, list[float]]:
    """age_sex.csv by sex for ages 0..MAX_AGE, the 100+ row spread over 100..110 by life-table
    survivors (the generator's own rule, _expand_open_age)."""
    table = rows(data, "age_sex.csv")
    life = rows(data, "life_table_hmd2022_full.csv")
    out = {}
    for sex in SEXES:
        counts = [float(r[sex]) for r in table if r["age"] != "100+"]
        top = float(next(r[sex] for r in table if r["age"] == "100+"))
        alive, survivors = 1.0, []
        for age in range(100, MAX_AGE + 1):
            survivors.append(alive)
            alive *= 1.0 - float(life[age][f"qx_{sex}"])
        counts += [float(round(top * s / sum(survivors))) for s in survivors]
        out[sex] = counts
    return out


def census_states(data: Path = DATA) -> dict[str, list[list[float]]]:
    """state -> [male, female] people by single year 0..MAX_AGE (V2023); 85+ spread over
    85..110 in the national shape of the same ages and sex."""
    nat = national_age_sex(data)
    out: dict[str, list[list[float]]] = {}
    for r in rows(data, "state_age_sex_v2023.csv"):
        sexes = out.setdefault(r["state"], [[0.0] * (MAX_AGE + 1) for _ in SEXES])
        sexes[SEXES.index(CENSUS_SEX[r["sex"]])][int(r["age"])] = float(r["population"])
    for sexes in out.values():
        for k, sex in enumerate(SEXES):
            old = sum(nat[sex][OPEN_AGE:])
            top = sexes[k][OPEN_AGE]
            for age in range(OPEN_AGE, MAX_AGE + 1):
                sexes[k][age] = top * nat[sex][age] / old
    return out


def rake_states(data: Path = DATA) -> dict[str, list[list[float]]]:
    """The living by state x sex x age: V2023's shapes raked (IPF) to states.csv's 2020
    populations (rows) and the national age x sex table (columns), so the states add up to the
    nation exactly and each state keeps its own age structure. Territories (PR, no V2023 rows)
    take the national shape at their population."""
    nat = national_age_sex(data)
    pops = {r["code"]: float(r["population"]) for r in rows(data, "states.csv")}
    territory = {r["code"] for r in rows(data, "states.csv") if r["territory"] == "true"}
    x = census_states(data)
    total = sum(p for s, p in pops.items() if s not in territory)
    scale = total / sum(sum(nat[s]) for s in SEXES)
    target = [[scale * v for v in nat[sex]] for sex in SEXES]
    for _ in range(200):
        for st, sexes in x.items():
            f = pops[st] / sum(map(sum, sexes))
            x[st] = [[v * f for v in ages] for ages in sexes]
        worst = 0.0
        for k in range(len(SEXES)):
            for age in range(MAX_AGE + 1):
                have = sum(sexes[k][age] for sexes in x.values())
                f = target[k][age] / have
                worst = max(worst, abs(f - 1.0))
                for sexes in x.values():
                    sexes[k][age] *= f
        if worst < 1e-12:
            break
    for st in sorted(territory):
        x[st] = [[pops[st] / total * v for v in ages] for ages in target]
    return x


def state_mortality(data: Path = DATA) -> list[dict[str, str]]:
    """Per state: Census V2025 deaths of component year DEATHS_YEAR against the deaths the
    national life table (HMD 2022 m(x)) gives its V2023 age x sex structure: the SMR."""
    life = rows(data, "life_table_hmd2022_full.csv")
    mx = {sex: [float(r[f"mx_{sex}"]) for r in life] for sex in SEXES}
    deaths = {
        r["state"]: (int(r["deaths"]), int(r["popestimate_jul1"]))
        for r in rows(data, "population_components_v2025.csv")
        if r["year"] == DEATHS_YEAR and r["state"] != "US"
    }
    out = []
    for st, sexes in sorted(census_states(data).items()):
        expected = sum(
            sexes[k][a] * mx[sex][a] for k, sex in enumerate(SEXES) for a in range(MAX_AGE + 1)
        )
        observed, population = deaths[st]
        out.append({
            "state": st,
            "deaths": str(observed),
            "population": str(population),
            "expected_deaths": f"{expected:.1f}",
            "smr": f"{observed / expected:.5f}",
        })  # fmt: skip
    return out


def _acs_profiles(data: Path) -> dict[tuple[str, str], list[float] | None]:
    """(state, ACS iteration) -> people by (sex, band) (male bands then female), None where the
    1-year ACS withheld the table."""
    out: dict[tuple[str, str], list[float] | None] = {}
    for r in rows(data, "state_age_race_acs2018.csv"):
        cells = [r[f"{s}{lo}"] for s in "MF" for lo in BANDS]
        out[r["state"], r["race_iteration"]] = None if "" in cells else [float(c) for c in cells]
    return out


def _scale_to(cells: list[float], target: float) -> list[float]:
    have = sum(cells)
    return [target * c / have for c in cells] if have > 0 else [target / len(cells)] * len(cells)


def _margins(
    p2: list[tuple[str, str, float]], tot: list[float], shape: Mapping[str, list[float]]
) -> list[tuple[list[int], list[float]]]:
    """The by-age margins of one state's fit, as (P2 rows, people by age): each race alone
    (A-G) and White non-Hispanic (H) and Hispanic (I) where the ACS publishes them (a missing
    profile imposes nothing), then the state's own age x sex totals."""
    groups = [(it, [j for j, (i, _, _) in enumerate(p2) if i == it]) for it in sorted(shape)]
    groups += [
        ("H", [j for j, (i, h, _) in enumerate(p2) if i == "A" and h == "N"]),
        ("I", [j for j, (_, h, _) in enumerate(p2) if h == "Y"]),
    ]
    out = [
        (js, [sum(p2[j][2] for j in js) * s for s in shape[it]])
        for it, js in groups
        if it in shape and js
    ]
    return [*out, (list(range(len(p2))), tot)]


def _rake(x: list[list[float]], js: list[int], target: list[float]) -> None:
    """Scale rows js of every age a so that they add up to target[a]."""
    for a, row in enumerate(x):
        have = sum(row[j] for j in js)
        if have > 0:
            f = target[a] / have
            for j in js:
                row[j] *= f


def _fit_state(
    p2: list[tuple[str, str, float]],
    totals: list[float],
    profiles: Mapping[str, list[float]],
) -> list[list[float]]:
    """One state's people by (sex x band, race x Hispanic row) by IPF: the seed spreads each
    P2 row over ages by its race's ACS profile (else the state's ages); the margins are the
    _margins by age and the P2 rows over all ages, in turn, IPF_ROUNDS times."""
    tot = _scale_to(totals, sum(c for *_, c in p2))
    shape = {k: _scale_to(v, 1.0) for k, v in profiles.items()}
    fallback = _scale_to(tot, 1.0)
    x = [[count * shape.get(it, fallback)[a] for it, _, count in p2] for a in range(len(totals))]
    margins = _margins(p2, tot, shape)
    for _ in range(IPF_ROUNDS):
        for js, target in margins:
            _rake(x, js, target)
        for j, (_, _, count) in enumerate(p2):  # the P2 rows, all ages
            have = sum(row[j] for row in x)
            if have > 0:
                for row in x:
                    row[j] *= count / have
    return x


def race_by_state_age(data: Path = DATA) -> list[dict[str, str]]:
    """race_by_state_age.csv: per state, sex and ACS band, the fitted living people of each
    race_ethnicity_by_state.csv row (in its order), scaled to the raked living of that state,
    sex and band (the generator tilts them by death-rate ratios for the dead). PR (no ACS rows
    here) takes its P2 shares at every age."""
    living = rake_states(data)
    acs = _acs_profiles(data)
    p2: dict[str, list[tuple[str, str, float]]] = {}
    for r in rows(data, "race_ethnicity_by_state.csv"):
        p2.setdefault(r["state"], []).append(
            (RACE_ITERATION[r["race_code"]], r["hispanic"], float(r["population"]))
        )
    out = []
    for st in sorted(p2):
        totals = [
            sum(living[st][k][a] for a in range(MAX_AGE + 1) if band_of(a) == b)
            for k in range(len(SEXES))
            for b in range(len(BANDS))
        ]
        profiles = {it: v for (s, it), v in acs.items() if s == st and v is not None}
        x = _fit_state(p2[st], totals, profiles)
        for a, people in enumerate(totals):
            fitted = [round(c) for c in _scale_to(x[a], people)]
            out.append({
                "state": st,
                "sex": SEXES[a // len(BANDS)],
                "age": str(BANDS[a % len(BANDS)]),
                "people": " ".join(map(str, fitted)),
            })  # fmt: skip
    return out


def state_age_sex_rows(data: Path = DATA) -> list[dict[str, str]]:
    """state_age_sex.csv: the raked living by state and sex, ages 0..MAX_AGE, whole people."""
    living = rake_states(data)
    return [
        {"state": st, "sex": sex, "people": " ".join(str(round(v)) for v in living[st][k])}
        for st in sorted(living)
        for k, sex in enumerate(SEXES)
    ]


def render_rows(table: list[dict[str, str]]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, list(table[0]), lineterminator="\n")
    w.writeheader()
    w.writerows(table)
    return buf.getvalue()


def population_outputs(data: Path = DATA) -> dict[str, str]:
    """The three population tables as file texts, by file name."""
    return {
        "state_age_sex.csv": render_rows(state_age_sex_rows(data)),
        "state_mortality.csv": render_rows(state_mortality(data)),
        "race_by_state_age.csv": render_rows(race_by_state_age(data)),
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--check", action="store_true", help="compare with the files, write nothing")
    args = p.parse_args()
    texts = {name: render(build(), columns) for name, (build, columns) in OUTPUTS.items()}
    texts.update(population_outputs())
    status = 0
    for name, text in texts.items():
        target = DATA / name
        if args.check:
            same = target.exists() and target.read_text(encoding="utf-8") == text
            print(f"{name}: {'up to date' if same else 'differs from a rebuild'}")
            status |= not same
        else:
            target.write_text(text, encoding="utf-8")
            print(f"wrote {target} ({len(text):,} bytes)")
    return status | reference_cache(DATA, args.check) | stay_cache(DATA, args.check)


def reference_cache(data: Path, check: bool) -> int:
    """reference.marshal: the generator's tables parsed from the CSVs (just written), as marshal
    data keyed by the CSVs' hash, so a run loads them instead of parsing ~8 MB of CSV."""
    names = ("_REFERENCE_CACHE", "_parse_reference", "_cached_reference", "_reference_marshal")
    return marshal_cache(data, check, names)


def stay_cache(data: Path, check: bool) -> int:
    """stays.marshal: the stays' tables that depend on the reference data only (the generator's
    StayBase: parsed CMS tables, per-hospital cuts and rates, the default states' hospital
    factors), keyed like reference.marshal, so a run with --encounters loads them instead of
    computing them (~0.4 s)."""
    names = ("_STAY_CACHE", "_parse_stay_base", "_cached_stay_base", "_stay_marshal")
    return marshal_cache(data, check, names)


def marshal_cache(data: Path, check: bool, names: tuple[str, str, str, str]) -> int:
    """Write one of the generator's marshal caches from a fresh build, or with --check compare
    its content (marshal bytes are not canonical) with one; 1 if it differs. names: the
    generator's file-name constant, then its build, load-from-cache and marshal functions."""
    sys.path.insert(0, str(data.parent))
    import fhir_patient_generator as g  # noqa: PLC0415 (the generator reads the CSVs it wrote)

    file_name, build, cached, dump = (getattr(g, name) for name in names)
    target = data / file_name
    built = build(data)
    if check:
        same = cached(data) == built
        print(f"{target.name}: {'up to date' if same else 'differs from a rebuild'}")
        return int(not same)
    blob = dump(built, data)
    target.write_bytes(blob)
    print(f"wrote {target} ({len(blob):,} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
