"""Build reference_data/hospital_candidates.csv: each ZIP's nearest hospitals and their weights.

    python tools/build_reference.py            # rewrite the file (deterministic, ~1.5 s)
    python tools/build_reference.py --check    # exit 1 if the file differs from a rebuild

Offline, so a plan never pays for the nearest-hospital search (1.3 s for 33,187 ZIPs). Reads only
reference_data/zips.csv and hospitals.csv; stdlib only. tests/test_places.py recomputes a sample
of rows with these functions and compares them with the committed file.

Model (docs and README "Places and hospitals"):
  * general hospitals = CMS "Acute Care Hospitals" and "Critical Access Hospitals"; "Childrens"
    are an extra candidate for patients under 18; Psychiatric, VA, DoD, Long-term and Rural
    Emergency Hospitals are never used;
  * a ZIP's candidates are the K = 5 nearest general hospitals in its own state (great-circle
    distance between ZIP internal points; a hospital sits at its ZIP's point), weighted by a
    gravity model w = size / (d_km + 5)**2, size 4 for an acute care hospital with an emergency
    department, 1 for one without and for a critical access hospital (25 beds at most by law);
  * the children's candidate is the nearest in-state children's hospital within 100 km (size 8);
  * weights are integers on one scale, round(1e9 * w), at least 1, so a children's weight adds
    to the general ones without renormalising.
"""

from __future__ import annotations

import argparse
import csv
import functools
import io
import math
import re
import sys
import unicodedata
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import NamedTuple

DATA = Path(__file__).resolve().parents[1] / "reference_data"
OUT = "hospital_candidates.csv"
K = 5  # general-hospital candidates per ZIP
D0_KM = 5.0  # gravity-model distance offset: a hospital in the patient's own ZIP stays finite
CHILD_RADIUS_KM = 100.0
CHILD_SIZE = 8
WEIGHT_SCALE = 1e9
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


def hospital_size(h: Mapping[str, str]) -> int:
    """The gravity model's size proxy (CMS publishes no bed count)."""
    if h["hospital_type"] == CHILDREN_TYPE:
        return CHILD_SIZE
    if h["hospital_type"] == "Acute Care Hospitals" and h["emergency_services"] == "Yes":
        return 4
    return 1


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


def weight(size: int, km: float) -> int:
    """The gravity weight on the file's integer scale."""
    return max(1, round(WEIGHT_SCALE * size / (km + D0_KM) ** 2))


def candidates(zips: Sequence[Zip], hospitals: Sequence[Mapping[str, str]]) -> list[dict[str, str]]:
    """hospital_candidates.csv's rows, one per ZIP of `zips`, in its order."""
    where = hospital_locations(hospitals, zips)
    general: dict[str, list[tuple[float, float, int]]] = {}
    children: dict[str, list[tuple[float, float, int]]] = {}
    for i, h in enumerate(hospitals):
        z = zips[where[i]]
        if h["hospital_type"] in GENERAL_TYPES:
            general.setdefault(h["state"], []).append((z.lat, z.lng, i))
        elif h["hospital_type"] == CHILDREN_TYPE:
            children.setdefault(h["state"], []).append((z.lat, z.lng, i))
    grids = {state: Grid(pts) for state, pts in general.items()}
    out = []
    for z in zips:
        near = grids[z.state].nearest(z.lat, z.lng, K)
        kids = sorted(
            (haversine_km(z.lat, z.lng, la, ln), i) for la, ln, i in children.get(z.state, ())
        )
        kid = kids[0] if kids and kids[0][0] <= CHILD_RADIUS_KM else None
        out.append({
            "zip": z.zip,
            "hospitals": " ".join(hospitals[i]["ccn"] for _, i in near),
            "weights": " ".join(str(weight(hospital_size(hospitals[i]), d)) for d, i in near),
            "children_hospital": hospitals[kid[1]]["ccn"] if kid else "",
            "children_weight": str(weight(CHILD_SIZE, kid[0])) if kid else "",
        })  # fmt: skip
    return out


def render(table: list[dict[str, str]]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, COLUMNS, lineterminator="\n")
    w.writeheader()
    w.writerows(table)
    return buf.getvalue()


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
    texts = {OUT: render(candidates(load_zips(), rows(DATA, "hospitals.csv")))}
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
    return status


if __name__ == "__main__":
    sys.exit(main())
