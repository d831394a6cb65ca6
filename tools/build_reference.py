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


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--check", action="store_true", help="compare with the file, write nothing")
    args = p.parse_args()
    text = render(candidates(load_zips(), rows(DATA, "hospitals.csv")))
    target = DATA / OUT
    if args.check:
        same = target.read_text(encoding="utf-8") == text
        print(f"{OUT}: {'up to date' if same else 'differs from a rebuild'}")
        return 0 if same else 1
    target.write_text(text, encoding="utf-8")
    print(f"wrote {target} ({len(text):,} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
