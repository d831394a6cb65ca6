"""Distributions against the reference tables, on large fixed-seed samples.

Each expected share p is computed here from the CSVs, independently of the generator's own tables;
a count is accepted within Z standard deviations of N*p (binomial). With fixed seeds nothing can
flake, and Z = 4.5 keeps the family of ~100 comparisons honest (a real bias of a few tenths of a
percentage point on a 200k sample fails).
"""

from __future__ import annotations

import csv
import math
from collections import Counter
from datetime import date
from pathlib import Path

import pytest

import fhir_patient_generator as g

DATA = Path(__file__).resolve().parents[1] / "reference_data"
AS_OF = "2025-10-13T02:22:22Z"
N = 200_000
Z = 4.5


def table(name: str) -> list[dict[str, str]]:
    with open(DATA / name, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def assert_share(observed: int, n: int, p: float, label: str) -> None:
    tolerance = Z * math.sqrt(n * p * (1 - p)) + 1
    assert abs(observed - n * p) <= tolerance, (
        f"{label}: {observed} of {n} (expected {n * p:.0f} +/- {tolerance:.0f})"
    )


def age_on(born: date, today: date) -> int:
    return today.year - born.year - ((today.month, today.day) < (born.month, born.day))


@pytest.fixture(scope="module")
def sample() -> list[dict]:
    plan = g.make_plan(2025, AS_OF)
    return [g.build_record(plan, i) for i in range(N)]


def test_states_follow_2020_census_population(sample):
    pops = {
        r["code"]: int(r["population"]) for r in table("states.csv") if r["territory"] != "true"
    }
    total = sum(pops.values())
    counts = Counter(r["address"][0]["state"] for r in sample)
    assert set(counts) == set(pops)  # 50 states + DC, no Puerto Rico by default
    for code, pop in pops.items():
        assert_share(counts[code], N, pop / total, code)


def test_cities_follow_place_population_within_a_state(sample):
    places = [(r["city"], int(r["population"])) for r in table("cities.csv") if r["state"] == "TX"]
    total = sum(p for _, p in places)
    texans = [r["address"][0]["city"] for r in sample if r["address"][0]["state"] == "TX"]
    counts = Counter(texans)
    assert set(counts) <= {c for c, _ in places}
    for city, pop in places:
        assert_share(counts[city], len(texans), pop / total, f"TX/{city}")


def test_sex_and_gender_shares(sample):
    rows = table("age_sex.csv")
    male = sum(int(r["male"]) for r in rows)
    female = sum(int(r["female"]) for r in rows)
    counts = Counter(r["gender"] for r in sample)
    binary = 1 - g.GENDER_OTHER_SHARE - g.GENDER_UNKNOWN_SHARE
    assert_share(counts["male"], N, binary * male / (male + female), "male")
    assert_share(counts["female"], N, binary * female / (male + female), "female")
    assert_share(counts["other"], N, g.GENDER_OTHER_SHARE, "other")
    assert_share(counts["unknown"], N, g.GENDER_UNKNOWN_SHARE, "unknown")


def test_ages_follow_the_census_age_table(sample):
    rows = table("age_sex.csv")
    bands = [(0, 17), (18, 44), (45, 64), (65, 84), (85, 200)]

    def band(age: int) -> int:
        return next(i for i, (lo, hi) in enumerate(bands) if lo <= age <= hi)

    expected = Counter()
    for r in rows:
        age = 100 if r["age"] == "100+" else int(r["age"])
        expected[band(age)] += int(r["total"])
    total = sum(expected.values())
    today = date(2025, 10, 13)
    alive = [r for r in sample if "deceasedDateTime" not in r]  # ages refer to the living
    counts = Counter(band(age_on(date.fromisoformat(r["birthDate"]), today)) for r in alive)
    # The deceased (about 3%, mostly old) are excluded above, which shifts shares slightly: allow
    # for it with the observed number of deaths per band.
    deaths = Counter(
        band(age_on(date.fromisoformat(r["birthDate"]), today))
        for r in sample
        if "deceasedDateTime" in r
    )
    for i, (lo, hi) in enumerate(bands):
        assert_share(counts[i] + deaths[i], N, expected[i] / total, f"ages {lo}-{hi}")


def test_languages_follow_acs_shares(sample):
    rows = table("languages.csv")
    total = sum(int(r["speakers_age5plus"]) for r in rows)
    counts = Counter(r["communication"][0]["language"]["coding"][0]["code"] for r in sample)
    for r in rows:
        assert_share(counts[r["bcp47"]], N, int(r["speakers_age5plus"]) / total, r["bcp47"])
    texts = {r["communication"][0]["language"]["text"] for r in sample}
    assert {"English", "Spanish", "Chinese"} <= texts


def qx(sex: str) -> list[float]:
    return [float(r[f"qx_{sex}"]) for r in table("life_table_hmd2022_full.csv")]


def test_mortality_of_an_80_year_old_cohort_matches_the_life_table():
    """Three years back from 80: ages 79, 78 and 77 were lived in the window."""
    plan = g.make_plan(80, AS_OF, min_age=80, max_age=80)
    records = [g.build_record(plan, i) for i in range(N)]
    row = next(r for r in table("age_sex.csv") if r["age"] == "80")
    for sex in ("male", "female"):
        q = qx(sex)
        p = 1 - (1 - q[79]) * (1 - q[78]) * (1 - q[77])
        cohort = [r for r in records if r["gender"] == sex]
        died = sum("deceasedDateTime" in r for r in cohort)
        assert_share(died, len(cohort), p, f"80-year-old {sex}s")
        assert 0.05 < p < 0.2 and int(row[sex]) > 0  # the table says what a real cohort does


def test_overall_mortality_matches_the_population_expectation(sample):
    rows = [r for r in table("age_sex.csv") if r["age"] != "100+"]
    qm, qf = qx("male"), qx("female")

    def p_die(q: list[float], age: int) -> float:
        alive = 1.0
        for k in range(1, 4):
            if age - k + 1 >= 0:
                alive *= 1 - q[max(age - k, 0)]
        return 1 - alive

    # Ages 0-99 only (the open 100+ row is spread over 100-110 by the generator).
    total = sum(int(r["male"]) + int(r["female"]) for r in rows)
    expected = (
        sum(
            int(r["male"]) * p_die(qm, int(r["age"])) + int(r["female"]) * p_die(qf, int(r["age"]))
            for r in rows
        )
        / total
    )
    under_100 = [
        r for r in sample if age_on(date.fromisoformat(r["birthDate"]), date(2025, 10, 13)) < 100
    ]
    died = sum("deceasedDateTime" in r for r in under_100)
    assert 0.02 < expected < 0.04  # ~0.9% a year over a three-year window
    assert_share(died, len(under_100), expected, "deaths under 100")


def test_mortality_rate_option_overrides_the_life_table():
    plan = g.make_plan(4, AS_OF, mortality_rate=0.25)
    died = sum("deceasedDateTime" in g.build_record(plan, i) for i in range(40_000))
    assert_share(died, 40_000, 0.25, "fixed rate")
    plan = g.make_plan(4, AS_OF, mortality_rate=0.0)
    assert not any("deceasedDateTime" in g.build_record(plan, i) for i in range(5_000))


def test_death_dates_spread_over_the_lookback_window():
    plan = g.make_plan(6, AS_OF, min_age=30, mortality_rate=1.0, lookback_years=2)
    years = Counter(g.build_record(plan, i)["deceasedDateTime"][:7] for i in range(24_000))
    # 2023-10 .. 2025-10: 25 calendar months, the two ends partly covered.
    assert min(years) >= "2023-10" and max(years) <= "2025-10"
    inner = [m for m in years if "2023-10" < m < "2025-10"]
    assert len(inner) == 23
    for month in inner:
        assert_share(years[month], 24_000, 1 / 24, month)


def test_min_and_max_age_restrict_the_cohort():
    plan = g.make_plan(65, AS_OF, min_age=65, max_age=74)
    today = date(2025, 10, 13)
    ages = Counter(
        age_on(date.fromisoformat(g.build_record(plan, i)["birthDate"]), today)
        for i in range(20_000)
    )
    assert set(ages) == set(range(65, 75))


def test_each_patient_is_managed_by_a_hospital_in_their_state(sample):
    plan = g.make_plan(2025, AS_OF)
    by_state = Counter(o["state"] for o in plan.organizations)
    assert set(by_state) == set(plan.state_codes)  # every state has at least one hospital
    assert by_state["CA"] > by_state["WY"]  # hospitals scale with population
    states = {o["id"]: o["state"] for o in plan.organizations}
    used = Counter()
    for r in sample:
        org_id = r["managingOrganization"]["reference"].split("/", 1)[1]
        assert states[org_id] == r["address"][0]["state"]
        used[org_id] += 1
    assert len(used) == len(states)  # 200k patients reach every hospital
