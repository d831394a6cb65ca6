"""The joint population against the real figures it is built to reproduce (issue 17).

    python benchmarks/realism.py [--count N] [--seed S]      (defaults 1,000,000 and 20251013)

Patients are drawn with sample() (no JSON) at as-of 2025-10-13T02:22:22Z, 3-year window, and
measured as an analyst would: deaths in the window over window person-years (birth at 00:00 UTC,
years of 365.2425 days), ages of the living at as-of. Each line prints our figure beside the real
one and the issue's target:

  * state crude death rates vs Census V2025 (component year July 2023 - June 2024: deaths /
    population July 1 2024): Pearson r (target >= 0.9) and highest/lowest (target >= 1.8);
  * median age ME - UT vs the Census V2023 table's (target within 2 years of 12.5);
  * Hispanic share of children (< 18) and of people 65+ vs ACS 2018 B01001I / B01001A-G
    (target within 15 %);
  * age-adjusted death rates by race and ethnicity (2000 US standard, 11 age groups: Anderson &
    Rosenberg, NVSR 47(3), 1998) as ratios to all races, vs mortality_by_race.csv's GBD 2019
    ratios (target within 10 %);
  * the national living age x sex (10-year bands) vs age_sex.csv and the crude death rate vs
    Census V2025's US rate.
"""

from __future__ import annotations

import argparse
import csv
import math
import sys
from collections import Counter
from datetime import date
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import fhir_patient_generator as g  # noqa: E402

AS_OF = "2025-10-13T02:22:22Z"
YEAR = 365.2425 * 86400
EPOCH = date(1970, 1, 1).toordinal()
DATA = Path(__file__).resolve().parents[1] / "reference_data"
# 2000 US standard million, 11 age groups (lower bounds): NCHS, Anderson RN, Rosenberg HM, Age
# standardization of death rates: implementation of the year 2000 standard, NVSR 47(3), 1998,
# Table I (stored copy: https://www.ncbi.nlm.nih.gov/books/NBK20750/table/A652/).
STANDARD = ((0, 13818), (1, 55317), (5, 145565), (15, 138646), (25, 135573), (35, 162613),
            (45, 134834), (55, 87247), (65, 66037), (75, 44842), (85, 15508))  # fmt: skip
GROUPS = ("white", "black", "latino", "asian", "aian")  # mortality_by_race.csv's GBD groups
RACE_GROUP = {
    "2106-3": "white",
    "2054-5": "black",
    "1002-5": "aian",
    "2028-9": "asian",
    "2076-8": "asian",
}  # fmt: skip  (Other and Two or more: no GBD group)
DEATHS_YEAR = "2024"


def table(name: str) -> list[dict[str, str]]:
    with open(DATA / name, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def group_of(row: tuple[str, str, str, str]) -> str | None:
    """The GBD group of a race row: Hispanic rows are latino, others by race (or none)."""
    _, code, _, eth_code = row
    return "latino" if eth_code == g.HISPANIC_CODE else RACE_GROUP.get(code)


def std_group(age: int) -> int:
    return max(k for k, (lo, _) in enumerate(STANDARD) if lo <= age)


def pearson(xs: list[float], ys: list[float]) -> float:
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    sxy = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True))
    sxx = sum((x - mx) ** 2 for x in xs)
    syy = sum((y - my) ** 2 for y in ys)
    return sxy / math.sqrt(sxx * syy)


def median(values: list[float]) -> float:
    v = sorted(values)
    n = len(v)
    return v[n // 2] if n % 2 else (v[n // 2 - 1] + v[n // 2]) / 2


def census_median(state: str) -> float:
    """Median age of a state's V2023 table (single years, interpolated within the year)."""
    counts = Counter()
    for r in table("state_age_sex_v2023.csv"):
        if r["state"] == state:
            counts[int(r["age"])] += int(r["population"])
    half, seen = sum(counts.values()) / 2, 0
    for age in sorted(counts):
        if seen + counts[age] >= half:
            return age + (half - seen) / counts[age]
        seen += counts[age]
    raise AssertionError("unreachable")


def measure(n: int, seed: int) -> dict:
    """One pass over n patients: deaths and person-years by state and by (group, standard age
    group), ages of the living by state, Hispanic counts, the living by (sex, band)."""
    plan = g.make_plan(seed, AS_OF)
    as_of = plan.window_start + plan.window_span - 1
    start = plan.window_start
    groups = [group_of(row) for row in plan.race_rows]
    hispanic = plan.race_hispanic
    m = {
        "deaths": Counter(), "py": Counter(), "gdeaths": Counter(), "gpy": Counter(),
        "ages": {"ME": [], "UT": []}, "kids": [0, 0], "old": [0, 0], "living": Counter(),
    }  # fmt: skip
    for i in range(n):
        s = g.sample(plan, i)
        state = plan.state_codes[s.state]
        age, sex, dead = plan.cells[s.cell]
        birth = (s.birth - EPOCH) * 86400
        end = s.died if dead else as_of
        lo = max(birth, start)
        m["py"][state] += (end - lo) / YEAR
        group = groups[s.race]
        # window person-years by whole age, for the age-adjusted rates
        a, t = int((lo - birth) / YEAR), lo
        while t < end:
            top = min(end, birth + (a + 1) * YEAR)
            k = std_group(min(a, g.MAX_AGE))
            m["gpy"]["all", k] += (top - t) / YEAR
            if group:
                m["gpy"][group, k] += (top - t) / YEAR
            t, a = top, a + 1
        if dead:
            m["deaths"][state] += 1
            m["gdeaths"]["all", std_group(age)] += 1
            if group:
                m["gdeaths"][group, std_group(age)] += 1
            continue
        m["living"][sex, min(age // 10, 10)] += 1
        if state in m["ages"]:
            m["ages"][state].append((as_of - birth) / YEAR)
        for key, inside in (("kids", age < 18), ("old", age >= 65)):
            if inside:
                m[key][0] += hispanic[s.race]
                m[key][1] += 1
    return m


def report_states(m: dict) -> None:
    real = {
        r["state"]: 1e5 * int(r["deaths"]) / int(r["popestimate_jul1"])
        for r in table("population_components_v2025.csv")
        if r["year"] == DEATHS_YEAR
    }
    states = sorted(s for s in m["py"] if s in real)
    ours = [1e5 * m["deaths"][s] / m["py"][s] for s in states]
    theirs = [real[s] for s in states]
    r = pearson(ours, theirs)
    hi, lo = max(zip(ours, states, strict=True)), min(zip(ours, states, strict=True))
    rhi, rlo = max(zip(theirs, states, strict=True)), min(zip(theirs, states, strict=True))
    print(f"state crude death rates: Pearson r with Census V2025 {r:.3f}   (target >= 0.9)")
    print(
        f"  highest/lowest: ours {hi[0] / lo[0]:.2f} ({hi[1]} {hi[0]:.0f} / {lo[1]} {lo[0]:.0f})"
        f"   real {rhi[0] / rlo[0]:.2f} ({rhi[1]} {rhi[0]:.0f} / {rlo[1]} {rlo[0]:.0f})"
        f"   (target >= 1.8)"
    )
    total = 1e5 * sum(m["deaths"].values()) / sum(m["py"].values())
    us = real["US"]
    print(f"crude death rate: ours {total:.0f} per 100,000 person-years   Census V2025 US {us:.0f}")


def report_ages(m: dict) -> None:
    me, ut = median(m["ages"]["ME"]), median(m["ages"]["UT"])
    cme, cut = census_median("ME"), census_median("UT")
    print(
        f"median age ME - UT: ours {me - ut:.1f} ({me:.1f} - {ut:.1f})   "
        f"Census V2023 {cme - cut:.1f} ({cme:.1f} - {cut:.1f})   (target within 2 of 12.5)"
    )


def acs_hispanic_shares() -> tuple[float, float]:
    """Hispanic (B01001I) share of B01001A-G's people under 18 and 65+, summed over states."""
    kids, old = Counter(), Counter()
    for r in table("state_age_race_acs2018.csv"):
        for sex in "MF":
            for col, total in ((f"{sex}{a}", kids) for a in (0, 5, 10, 15)):
                total[r["race_iteration"]] += float(r[col] or 0)
            for col, total in ((f"{sex}{a}", old) for a in (65, 75, 85)):
                total[r["race_iteration"]] += float(r[col] or 0)
    share = [c["I"] / sum(c[k] for k in "ABCDEFG") for c in (kids, old)]
    return share[0], share[1]


def report_hispanic(m: dict) -> None:
    kids, old = acs_hispanic_shares()
    for label, (h, n), real in (("children", m["kids"], kids), ("65+", m["old"], old)):
        print(
            f"Hispanic share of {label:8}: ours {h / n:.3f}   ACS 2018 {real:.3f}   "
            f"ratio {h / n / real:.3f}   (target within 15 %)"
        )


def report_race(m: dict) -> None:
    rates = {r["group"]: float(r["age_standardized_death_rate_per_100k"]) for r in
             table("mortality_by_race.csv") if r["year"] == "2019"}  # fmt: skip
    weight = sum(w for _, w in STANDARD)

    def adjusted(group: str) -> float:
        return (
            sum(
                w * m["gdeaths"][group, k] / m["gpy"][group, k]
                for k, (_, w) in enumerate(STANDARD)
                if m["gpy"][group, k]
            )
            / weight
        )

    total = adjusted("all")
    print(f"age-adjusted death rates (2000 US standard), per 100,000: all {1e5 * total:.0f}")
    for group in GROUPS:
        ours = adjusted(group) / total
        real = rates[group] / rates["total"]
        print(
            f"  {group:7} ours {1e5 * adjusted(group):5.0f}  ratio {ours:.3f}   GBD 2019 ratio "
            f"{real:.3f}   ours/real {ours / real:.3f}   (target within 10 %)"
        )


def report_age_sex(m: dict) -> None:
    census = Counter()
    for r in table("age_sex.csv"):
        age = 100 if r["age"] == "100+" else int(r["age"])
        for sex in g.SEXES:
            census[sex, min(age // 10, 10)] += int(r[sex])
    n, total = sum(m["living"].values()), sum(census.values())
    chi2 = sum((m["living"][k] - n * c / total) ** 2 / (n * c / total) for k, c in census.items())
    worst = max(abs(m["living"][k] / n - c / total) for k, c in census.items())
    print(
        f"national living age x sex (22 cells of 10-year band x sex) vs age_sex.csv: chi2 "
        f"{chi2:.1f} on 21 df (p = 0.001 at 46.8), largest share gap {100 * worst:.3f} points"
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--count", type=int, default=1_000_000)
    p.add_argument("--seed", type=int, default=20251013)
    args = p.parse_args()
    m = measure(args.count, args.seed)
    print(f"N = {args.count:,}, seed {args.seed}, as-of {AS_OF}, 3-year window")
    report_states(m)
    report_ages(m)
    report_hispanic(m)
    report_race(m)
    report_age_sex(m)


if __name__ == "__main__":
    main()
