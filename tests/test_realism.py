"""Distributions against the reference tables, on large fixed-seed samples.

Each expected share p is computed here from the CSVs, independently of the generator's own tables;
a count is accepted within Z standard deviations of N*p (binomial). With fixed seeds nothing can
flake, and Z = 4.5 keeps the family of ~100 comparisons honest (a real bias of a few tenths of a
percentage point on a 200k sample fails).

Mortality: the registry is the people alive at as-of (the Census table) plus those who died in
the look-back window. It is audited as a demographer would: deaths per person-year by age band
against the life table's central death rate m(x) (indirect standardisation on the registry's own
person-years), the living against the Census table, and the infant deaths against HMD's a(0).
"""

from __future__ import annotations

import csv
import math
from collections import Counter
from datetime import UTC, date, datetime
from pathlib import Path

import pytest

import fhir_patient_generator as g

# Private names used here (internals this file checks or drives directly): _GENDER_OTHER_SHARE,
# _GENDER_UNKNOWN_SHARE, _MAX_AGE, _sample

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
    living = [r for r in sample if "deceasedDateTime" not in r]  # the dead follow state deaths
    counts = Counter(r["address"][0]["state"] for r in living)
    assert set(counts) == set(pops)  # 50 states + DC, no Puerto Rico by default
    for code, pop in pops.items():
        assert_share(counts[code], len(living), pop / total, code)


def test_sex_and_gender_shares(sample):
    rows = table("age_sex.csv")
    male = sum(int(r["male"]) for r in rows)
    female = sum(int(r["female"]) for r in rows)
    counts = Counter(r["gender"] for r in sample if "deceasedDateTime" not in r)
    n = counts.total()  # the living (the Census table); the dead are more often men
    binary = 1 - g._GENDER_OTHER_SHARE - g._GENDER_UNKNOWN_SHARE
    assert_share(counts["male"], n, binary * male / (male + female), "male")
    assert_share(counts["female"], n, binary * female / (male + female), "female")
    assert_share(counts["other"], n, g._GENDER_OTHER_SHARE, "other")
    assert_share(counts["unknown"], n, g._GENDER_UNKNOWN_SHARE, "unknown")


def test_ages_of_the_living_follow_the_census_age_table(sample):
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
    alive = [r for r in sample if "deceasedDateTime" not in r]  # exactly the Census table
    counts = Counter(band(age_on(date.fromisoformat(r["birthDate"]), today)) for r in alive)
    for i, (lo, hi) in enumerate(bands):
        assert_share(counts[i], len(alive), expected[i] / total, f"ages {lo}-{hi}")


def test_preferred_language_is_limited_english_proficiency_nationally():
    """Issue 17's targets: the share of people 5+ preferring a language other than English is
    within 1 point of the ACS LEP share (C16001 2018, summed over the states), and >= 90 % of the
    Spanish-preferring are Hispanic (B16006: 97 % of Spanish LEP). By state and cell:
    tests/test_places.py."""
    lep = sum(int(r["lep"]) for r in table("lep_by_language_group_acs2018.csv"))
    people = sum(
        int(r[f"population_{b}"])
        for r in table("hispanic_language_acs2018.csv")
        if r["state"] != "WY"  # no C16001 row in the copy
        for b in ("5_17", "18_64", "65plus")
    )
    plan = g.make_plan(2025, AS_OF, profile="us-core")
    today, five, other, spanish, hispanic = date(2025, 10, 13), 0, 0, 0, 0
    for i in range(N // 2):
        r = g.build_record(plan, i)
        code = r["communication"][0]["language"]["coding"][0]["code"]
        if code == "es":
            spanish += 1
            hispanic += r["extension"][1]["extension"][0]["valueCoding"]["code"] == "2135-2"
        if "deceasedDateTime" not in r and age_on(date.fromisoformat(r["birthDate"]), today) >= 5:
            five += 1
            other += code != "en"
    assert abs(other / five - lep / people) <= 0.01, (other / five, lep / people)
    assert hispanic / spanish >= 0.90, hispanic / spanish
    assert spanish > 2000  # enough to tell


# --- mortality: the registry of the living and the dead of the window ----------------------------

SEXES = ("male", "female")
BANDS = [(lo, lo + 9) for lo in range(0, 100, 10)] + [(100, g._MAX_AGE)]
YEAR = 365.2425 * 86400  # seconds; the auditor's year
REGISTRY_N = 1_000_000  # sample() is ~3 us: a few seconds
LOOKBACK = 3.0
# The model's expected deceased share at a 3-year window: sum D / (sum D + sum P), computed by the
# design's own stdlib model (scratch/mortality/RESULTS.md, section 2), not by the generator.
DECEASED_SHARE_3Y = 0.02857


def life_table(column: str, sex: str) -> list[float]:
    return [float(r[f"{column}_{sex}"]) for r in table("life_table_hmd2022_full.csv")]


def census_by_band() -> dict[tuple[str, int], int]:
    """Census people by (sex, band); the '100+' row is the last band."""
    out: Counter = Counter()
    for r in table("age_sex.csv"):
        age = 100 if r["age"] == "100+" else int(r["age"])
        b = next(i for i, (lo, hi) in enumerate(BANDS) if lo <= age <= hi)
        for sex in SEXES:
            out[sex, b] += int(r[sex])
    return out


def add_exposure(py: list[float], birth: float, start: float, end: float) -> None:
    """Add the years between instants start and end to py[whole age], ages from birth."""
    lo, hi = (start - birth) / YEAR, (end - birth) / YEAR
    age = int(lo)
    while age < hi:
        top = hi if age >= g._MAX_AGE else min(hi, age + 1.0)
        py[min(age, g._MAX_AGE)] += top - max(lo, float(age))
        age += 1


@pytest.fixture(scope="module")
def registry() -> dict:
    """Deaths by age at death, window person-years by age, the living by age, per sex: what an
    auditor measures on 1M registry members (birth at 00:00 UTC of the birth date)."""
    plan = g.make_plan(2026, AS_OF)
    as_of = plan.window_start + plan.window_span - 1
    deaths = {s: [0] * (g._MAX_AGE + 1) for s in SEXES}
    living = {s: [0] * (g._MAX_AGE + 1) for s in SEXES}
    py = {s: [0.0] * (g._MAX_AGE + 1) for s in SEXES}
    for i in range(REGISTRY_N):
        s = g._sample(plan, i)
        age, sex, dead = plan.cells[s.cell]
        birth = (s.birth - 719163) * 86400
        end = s.died if dead else as_of
        add_exposure(py[sex], birth, max(birth, plan.window_start), end)
        (deaths if dead else living)[sex][age] += 1
    assert plan.window_span - 1 == round(LOOKBACK * YEAR)
    return {"deaths": deaths, "living": living, "py": py}


def band_z(registry: dict, sexes: tuple[str, ...], lo: int, hi: int) -> float:
    """(O - E) / sqrt(E): observed deaths in ages lo..hi against E = sum m(x) PY(x)."""
    observed = sum(registry["deaths"][s][x] for s in sexes for x in range(lo, hi + 1))
    expected = sum(
        life_table("mx", s)[x] * registry["py"][s][x] for s in sexes for x in range(lo, hi + 1)
    )
    assert expected > 30, (sexes, lo, hi)  # Poisson sd is then a fair yardstick
    return (observed - expected) / math.sqrt(expected)


def test_deaths_per_person_year_match_the_life_table_by_age_band(registry):
    """Indirect standardisation on the registry's own person-years: |z| < 4 in every 10-year band,
    both sexes pooled and each sex, and sum z**2 under chi2(11) at p = 0.001 (31.3)."""
    pooled = [band_z(registry, SEXES, lo, hi) for lo, hi in BANDS]
    assert max(map(abs, pooled)) < 4, pooled
    assert sum(z * z for z in pooled) < 31.3, pooled
    for sex in SEXES:
        by_sex = [band_z(registry, (sex,), lo, hi) for lo, hi in BANDS]
        assert max(map(abs, by_sex)) < 4, (sex, by_sex)


def test_the_living_are_the_census_age_sex_table(registry):
    """10-year band x sex: chi2 on 21 df under 46.8 (p = 0.001); the 65+ share within 4 sd."""
    census = census_by_band()
    total = sum(census.values())
    counts = {
        (s, b): sum(registry["living"][s][lo : hi + 1])
        for s in SEXES
        for b, (lo, hi) in enumerate(BANDS)
    }
    n = sum(counts.values())
    chi2 = sum((counts[k] - n * census[k] / total) ** 2 / (n * census[k] / total) for k in census)
    assert chi2 < 46.8, chi2
    rows = table("age_sex.csv")
    old = sum(int(r["total"]) for r in rows if r["age"] == "100+" or int(r["age"]) >= 65)
    older = sum(registry["living"][s][x] for s in SEXES for x in range(65, g._MAX_AGE + 1))
    p = old / sum(int(r["total"]) for r in rows)
    assert abs(older / n - p) < 4 * math.sqrt(p * (1 - p) / n), (older / n, p)


def test_the_deceased_share_is_the_models_outcome(registry):
    dead = sum(sum(registry["deaths"][s]) for s in SEXES)
    p = DECEASED_SHARE_3Y
    assert abs(dead / REGISTRY_N - p) < 4 * math.sqrt(p * (1 - p) / REGISTRY_N) + 1e-5


def test_infant_deaths_cluster_after_birth_as_hmd_a0_says():
    """Every record an infant death (100k): the share dying before 28 days is (28 / 365.2425)**b,
    b = a0 / (1 - a0) (F(f) = f**b has mean a(0)); the mean age at death is a(0). Dates agree."""
    plan = g.make_plan(28, AS_OF, mortality_rate=1.0, max_age=0)
    as_of = datetime.fromisoformat(AS_OF)
    start = as_of.timestamp() - LOOKBACK * YEAR
    n, neonatal, years = 100_000, 0, 0.0
    for i in range(n):
        r = g.build_record(plan, i)
        born = date.fromisoformat(r["birthDate"])
        died = datetime.fromisoformat(r["deceasedDateTime"])
        assert start - 1 <= died.timestamp() <= as_of.timestamp()
        days = (died.date() - born).days
        assert 0 <= days and age_on(born, died.date()) == 0
        neonatal += days < 28
        years += (days + 0.5) / 365.2425  # mid-day: the dates keep whole days
    a0 = life_table("ax", "male")[0]
    assert a0 == life_table("ax", "female")[0]
    b = a0 / (1 - a0)
    share = (28 / 365.2425) ** b
    assert 0.6 < share < 0.7  # NCHS 2022: 3.59 neonatal of 5.61 infant deaths per 1,000 = 0.640
    assert abs(neonatal / n - share) < 4 * math.sqrt(share * (1 - share) / n), neonatal / n
    sd = math.sqrt(b / ((b + 1) ** 2 * (b + 2)))  # of Beta(b, 1)
    assert abs(years / n - a0) < 4 * sd / math.sqrt(n) + 0.002, years / n


def test_mortality_rate_option_is_the_deceased_share():
    for p, n in ((0.25, 40_000), (0.03, 40_000)):
        plan = g.make_plan(4, AS_OF, mortality_rate=p)
        died = sum("deceasedDateTime" in g.build_record(plan, i) for i in range(n))
        assert_share(died, n, p, f"fixed rate {p}")
    plan = g.make_plan(4, AS_OF, mortality_rate=0.25, min_age=65)  # p whatever the age filter
    died = sum("deceasedDateTime" in g.build_record(plan, i) for i in range(20_000))
    assert_share(died, 20_000, 0.25, "fixed rate 0.25 at 65+")
    plan = g.make_plan(4, AS_OF, mortality_rate=0.0)
    assert not any("deceasedDateTime" in g.build_record(plan, i) for i in range(5_000))
    plan = g.make_plan(4, AS_OF, mortality_rate=1.0)
    assert all("deceasedDateTime" in g.build_record(plan, i) for i in range(5_000))


def test_death_dates_spread_over_the_lookback_window():
    plan = g.make_plan(6, AS_OF, min_age=30, mortality_rate=1.0, lookback_years=2)
    years = Counter(g.build_record(plan, i)["deceasedDateTime"][:7] for i in range(24_000))
    # 2023-10 .. 2025-10: 25 calendar months, the two ends partly covered.
    assert min(years) >= "2023-10" and max(years) <= "2025-10"
    inner = [m for m in years if "2023-10" < m < "2025-10"]
    assert len(inner) == 23
    for month in inner:
        assert_share(years[month], 24_000, 1 / 24, month)


def record_age(r: dict) -> int:
    """The age a record shows: at as-of for the living, at death for the deceased."""
    died = r.get("deceasedDateTime")
    on = datetime.fromisoformat(died).astimezone(UTC).date() if died else date(2025, 10, 13)
    return age_on(date.fromisoformat(r["birthDate"]), on)


def test_min_and_max_age_restrict_the_age_on_the_record():
    plan = g.make_plan(65, AS_OF, min_age=65, max_age=74)
    records = [g.build_record(plan, i) for i in range(20_000)]
    assert set(map(record_age, records)) == set(range(65, 75))
    dead = [record_age(r) for r in records if "deceasedDateTime" in r]
    assert len(dead) > 200 and set(dead) == set(range(65, 75))


def test_each_patient_is_managed_by_a_hospital_of_the_run_mostly_in_their_state(sample):
    """Where (ZIP, distance) and which hospital types: tests/test_places.py. Candidates cross
    state lines (issue 17): some patients, not most, use a hospital of another state."""
    plan = g.make_plan(2025, AS_OF)
    by_state = Counter(o["state"] for o in plan.organizations)
    assert set(by_state) == set(plan.state_codes)  # every state has hospitals
    assert by_state["CA"] > by_state["WY"]
    states = {o["id"]: o["state"] for o in plan.organizations}
    crossed = 0
    for r in sample:
        org_id = r["managingOrganization"]["reference"].split("/", 1)[1]
        crossed += states[org_id] != r["address"][0]["state"]
    assert 0.01 * N < crossed < 0.15 * N, crossed
