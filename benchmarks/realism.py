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
    Census V2025's US rate;
  * preferred language: the non-English share of the living 5+ vs the ACS 2018 C16001 limited-
    English-proficient share (target within 1 point; by state: chi-square over the states) and
    the Hispanic share of Spanish-preferring patients (target >= 90 %; B16006: 97.1 %);
  * hospitals: patients per general hospital vs HCRIS 2021 total discharges (Pearson, target
    >= 0.85; top tenth's share, target within 5 points of HCRIS's), patients across a state line;
  * the living population, a one-year change batch of --living-count epoch patients (E = as-of):
    births by state per epoch patient vs Census V2025 births per person (Pearson), movers by age
    band per person-year relative to all ages vs ACS 2018 B07001's profile, deaths per person-
    year vs the national level of the year.
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
    return "latino" if eth_code == g._HISPANIC_CODE else RACE_GROUP.get(code)


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
        "five": Counter(), "other": Counter(), "spanish": [0, 0], "org": Counter(), "crossed": 0,
    }  # fmt: skip
    english = next(k for k, (code, _) in enumerate(plan.languages) if code == "en")
    spanish = next(k for k, (code, _) in enumerate(plan.languages) if code == "es")
    for i in range(n):
        s = g._sample(plan, i)
        state = plan.state_codes[s.state]
        age, sex, dead = plan.cells[s.cell]
        count_language_and_hospital(m, plan, s, (english, spanish))
        birth = (s.birth - EPOCH) * 86400
        end = s.died if dead else as_of
        lo = max(birth, start)
        m["py"][state] += (end - lo) / YEAR
        group = groups[s.race]
        # window person-years by whole age, for the age-adjusted rates
        a, t = int((lo - birth) / YEAR), lo
        while t < end:
            top = min(end, birth + (a + 1) * YEAR)
            k = std_group(min(a, g._MAX_AGE))
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


def count_language_and_hospital(
    m: dict, plan: g.Plan, s: g._Sample, languages: tuple[int, int]
) -> None:
    """One patient's part of the language and hospital figures (languages: en, es positions)."""
    english, spanish = languages
    state = plan.state_codes[s.state]
    age, _, dead = plan.cells[s.cell]
    m["org"][s.organization] += 1
    m["crossed"] += plan.hospitals[s.organization]["state"] != state
    if s.language == spanish:
        m["spanish"][0] += plan.race_hispanic[s.race]
        m["spanish"][1] += 1
    if not dead and age >= 5:
        m["five"][state] += 1
        m["other"][state] += s.language != english


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
        for sex in g._SEXES:
            census[sex, min(age // 10, 10)] += int(r[sex])
    n, total = sum(m["living"].values()), sum(census.values())
    chi2 = sum((m["living"][k] - n * c / total) ** 2 / (n * c / total) for k, c in census.items())
    worst = max(abs(m["living"][k] / n - c / total) for k, c in census.items())
    print(
        f"national living age x sex (22 cells of 10-year band x sex) vs age_sex.csv: chi2 "
        f"{chi2:.1f} on 21 df (p = 0.001 at 46.8), largest share gap {100 * worst:.3f} points"
    )


def report_language(m: dict) -> None:
    """Non-English preferred among the living 5+ vs the ACS LEP share, nationally and by state."""
    lep, people = Counter(), Counter()
    for r in table("lep_by_language_group_acs2018.csv"):
        lep[r["state"]] += int(r["lep"])
    for r in table("hispanic_language_acs2018.csv"):
        people[r["state"]] = sum(int(r[f"population_{b}"]) for b in ("5_17", "18_64", "65plus"))
    states = sorted(lep)  # WY has no C16001 row in the copy
    ours = sum(m["other"].values()) / sum(m["five"].values())
    real = sum(lep[s] for s in states) / sum(people[s] for s in states)
    print(f"preferred language other than English, living 5+: {100 * ours:.2f} %   ACS 2018 LEP "
          f"{100 * real:.2f} %   (target within 1 point)")  # fmt: skip
    chi2 = 0.0
    for s in states:
        p, n = lep[s] / people[s], m["five"][s]
        chi2 += (m["other"][s] - n * p) ** 2 / (n * p * (1 - p))
    ours = [m["other"][s] / m["five"][s] for s in states]
    r = pearson(ours, [lep[s] / people[s] for s in states])
    print(f"  by state: Pearson r {r:.3f}, chi-square {chi2:.0f} on {len(states) - 1} d.f. (noise)")
    hispanic, spanish = m["spanish"]
    print(
        f"Spanish-preferring patients who are Hispanic: {100 * hispanic / spanish:.1f} %   "
        "(target >= 90 %; ACS B16006: 97.1 % of Spanish LEP)"
    )


def report_hospitals(m: dict, plan: g.Plan, n: int) -> None:
    """Patients per general hospital against HCRIS 2021 total discharges."""
    volume = {r["ccn"]: r["discharges"] for r in table("hospital_volumes.csv")}
    real = {
        h: int(volume[plan.hospitals[h]["ccn"]])
        for h in plan.organization_index
        if plan.hospitals[h]["hospital_type"] in g._GENERAL_HOSPITAL_TYPES
        and volume[plan.hospitals[h]["ccn"]]
    }
    r = pearson([real[h] for h in real], [m["org"][h] for h in real])
    top = sorted(real, key=lambda h: -real[h])[: len(real) // 10]
    ours = sum(m["org"][h] for h in top) / sum(m["org"][h] for h in real)
    theirs = sum(real[h] for h in top) / sum(real.values())
    print(f"patients per general hospital vs HCRIS 2021 discharges ({len(real):,} hospitals): "
          f"Pearson r {r:.3f}   (target >= 0.85)")  # fmt: skip
    print(f"  top tenth by discharges: {100 * ours:.1f} % of patients   HCRIS {100 * theirs:.1f} "
          "% of discharges   (target within 5 points)")  # fmt: skip
    print(f"  patients whose hospital is in another state: {100 * m['crossed'] / n:.2f} %")


def b07001_profile() -> dict[tuple[int, int], float]:
    """ACS 2018 B07001 movers (within county, other county, other state) per person in our
    age bands, relative to all ages 1+."""
    bands = {}
    for r in table("movers_by_age_acs2018.csv"):
        lo = int(r["age_group"].split()[0])
        band = next(b for b in LIVING_BANDS if b[0] <= max(lo, 1) < b[1])
        moved = sum(int(r[c]) for c in ("moved_within_county", "moved_diff_county_same_state",
                                        "moved_from_diff_state"))  # fmt: skip
        people, m = bands.get(band, (0, 0))
        bands[band] = (people + int(r["population_1plus"]), m + moved)
    total = sum(m for _, m in bands.values()) / sum(p for p, _ in bands.values())
    return {b: m / p / total for b, (p, m) in bands.items()}


LIVING_BANDS = ((0, 18), (18, 25), (25, 35), (35, 45), (45, 65), (65, 75), (75, 999))


def report_living(n: int, seed: int) -> None:
    """A one-year change batch of n epoch patients: births by state, movers by age, deaths."""
    plan = g.make_plan(seed, AS_OF)
    start = g._parse_as_of(AS_OF).timestamp()
    until = g._parse_as_of("2026-10-13T02:22:22Z")
    births, py, moves, deaths = Counter(), Counter(), Counter(), 0
    epoch_py = 0.0
    for v in g.snapshot(plan, n, until, 0, n):  # the epoch patients' exposure, to a fair degree:
        s = g._sample(plan, v.index)  # age at E, alive at E
        age, _, dead = plan.cells[s.cell]
        if not dead:
            band = next(b for b in LIVING_BANDS if b[0] <= age < b[1])
            years = ((v.sample.died if v.sample.died >= 0 else until.timestamp()) - start) / YEAR
            py[band] += years
            epoch_py += years
    for v in g.changes(plan, n, AS_OF, until):
        state = plan.zips[v.sample.zip][3]
        if v.change == "birth":
            births[state] += 1
        elif v.change in g._MOVE_KINDS:
            age = (v.instant // 86400 + EPOCH - v.sample.birth) / 365.2425
            moves[next(b for b in LIVING_BANDS if b[0] <= age < b[1])] += 1
        elif v.change == "death" and v.index < n:
            deaths += 1
    pops = {r["code"]: int(r["population"]) for r in table("states.csv")}
    comp = {r["state"]: r for r in table("population_components_v2025.csv") if r["year"] == "2025"}
    states = list(plan.state_codes)
    ours = [births[s] / (n * pops[s] / sum(pops[x] for x in states)) for s in states]
    real = [int(comp[s]["births"]) / int(comp[s]["popestimate_jul1"]) for s in states]
    print(f"one-year change batch, {n:,} epoch patients (E = as-of):")
    print(
        f"  births per person by state vs Census V2025 (July 2024 - June 2025): Pearson r "
        f"{pearson(ours, real):.3f}; US {1e3 * sum(births.values()) / n:.2f} per 1,000   "
        f"V2025 {1e3 * int(comp['US']['births']) / int(comp['US']['popestimate_jul1']):.2f}"
    )
    total = sum(moves.values()) / sum(py.values())
    profile = b07001_profile()
    print("  movers per person-year by age band, relative to all ages (ours / ACS B07001): "
          + ", ".join(f"{lo}-{min(hi, 99)} {moves[(lo, hi)] / py[(lo, hi)] / total:.2f}/"
                      f"{profile[(lo, hi)]:.2f}" for lo, hi in LIVING_BANDS))  # fmt: skip
    nchs = {
        r["year"]: int(r["us_resident_deaths_registered"]) for r in table("deaths_by_year_nchs.csv")
    }
    us = {
        r["year"]: int(r["popestimate_jul1"])
        for r in table("population_components_v2025.csv")
        if r["state"] == "US"
    }
    print(
        f"  deaths of the epoch patients: {1e5 * deaths / epoch_py:.0f} per 100,000 person-years"
        f"   NCHS 2024 {1e5 * nchs['2024'] / us['2024']:.0f} (the latest year: 2025-26 use it)"
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--count", type=int, default=1_000_000)
    p.add_argument("--seed", type=int, default=20251013)
    p.add_argument("--living-count", type=int, default=200_000)
    args = p.parse_args()
    m = measure(args.count, args.seed)
    print(f"N = {args.count:,}, seed {args.seed}, as-of {AS_OF}, 3-year window")
    report_states(m)
    report_ages(m)
    report_hispanic(m)
    report_race(m)
    report_age_sex(m)
    report_language(m)
    report_hospitals(m, g.make_plan(args.seed, AS_OF), args.count)
    report_living(args.living_count, args.seed)


if __name__ == "__main__":
    main()
