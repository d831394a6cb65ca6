"""The joint population (issue 17 items 1-3): age x sex by state, state mortality, race x
ethnicity by state, age and sex, and the dead's races.

Table-level checks are exact (the plan's own integer weights against the sources); sampled
checks use fixed seeds and accept a count within Z standard deviations of its expectation.
The 1,000,000-patient figures against the real ones are in benchmarks/realism.py.
"""

from __future__ import annotations

import csv
import math
from collections import Counter
from pathlib import Path

import pytest
from test_places import tool as build_reference  # tools/build_reference.py as a module

import fhir_patient_generator as g

# Private names used here (internals this file checks or drives directly): _HISPANIC_CODE, _SEXES,
# _death_weights, _load_reference, _sample

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "reference_data"
AS_OF = "2025-10-13T02:22:22Z"
N = 200_000
Z = 4.5
# 2000 US standard million, 11 age groups (benchmarks/realism.py names the source)
STANDARD = ((0, 13818), (1, 55317), (5, 145565), (15, 138646), (25, 135573), (35, 162613),
            (45, 134834), (55, 87247), (65, 66037), (75, 44842), (85, 15508))  # fmt: skip
GBD = {"2106-3": "white", "2054-5": "black", "1002-5": "aian", "2028-9": "asian",
       "2076-8": "asian"}  # fmt: skip


def table(name: str) -> list[dict[str, str]]:
    with open(DATA / name, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def weights(cum: tuple[int, ...]) -> list[int]:
    return [c - b for c, b in zip(cum, (0, *cum), strict=False)]


@pytest.fixture(scope="module")
def plan() -> g.Plan:
    return g.make_plan(17, AS_OF)


def test_the_population_tables_are_a_fresh_build(tmp_path):
    """state_age_sex.csv, state_mortality.csv and race_by_state_age.csv equal a rebuild."""
    for name, text in build_reference().population_outputs(DATA).items():
        assert (DATA / name).read_text(encoding="utf-8") == text, f"{name}: rebuild it"


def test_the_states_add_up_to_the_national_table_and_keep_their_populations(plan):
    """Living weights summed over the states are the national age x sex table (one scale, up
    to rounding of the raked people); each state's living total is its 2020 population."""
    national = {sex: [row[1 + k] for row in g._load_reference().age_sex] for k, sex in
                enumerate(g._SEXES)}  # fmt: skip
    pops = {r["code"]: int(r["population"]) for r in table("states.csv")}
    total = {(age, sex): 0 for age, sex, _ in plan.cells}
    for s, cum in enumerate(plan.cell_cum):
        living = [w >> 32 for w, (_, _, dead) in zip(weights(cum), plan.cells, strict=True)
                  if not dead]  # fmt: skip
        assert abs(sum(living) - pops[plan.state_codes[s]]) <= len(living)  # rounding
        for (age, sex, dead), w in zip(plan.cells, weights(cum), strict=True):
            if not dead:
                total[age, sex] += w >> 32
    scale = sum(total.values()) / sum(map(sum, national.values()))
    for (age, sex), people in total.items():
        assert abs(people - scale * national[sex][age]) <= 51, (age, sex)


def test_the_dead_keep_the_national_calibration_at_every_age(plan):
    """Deaths per living person summed over the states are the national model's D(x) / P(x):
    state ratios average 1 over the living at every age and sex."""
    ref = g._load_reference()
    dead, living = Counter(), Counter()
    for cum in plan.cell_cum:
        for (age, sex, is_dead), w in zip(plan.cells, weights(cum), strict=True):
            (dead if is_dead else living)[age, sex] += w
    for k, sex in enumerate(g._SEXES):
        people = tuple(row[1 + k] for row in ref.age_sex)
        d = g._death_weights(people, ref.mx[sex], ref.ax[sex][0], 3.0)
        for age in range(0, 100):
            expected = d[age] / people[age]
            assert math.isclose(dead[age, sex] / living[age, sex], expected, rel_tol=1e-4), (
                sex,
                age,
            )


def test_state_death_rates_follow_census_v2025(plan):
    """The plan's deaths per living person by state (no sampling noise) against Census V2025
    crude death rates of July 2023 - June 2024: r >= 0.95, highest/lowest >= 1.8."""
    real = {r["state"]: int(r["deaths"]) / int(r["popestimate_jul1"])
            for r in table("population_components_v2025.csv") if r["year"] == "2024"}  # fmt: skip
    ours, theirs = [], []
    for s, cum in enumerate(plan.cell_cum):
        w = weights(cum)
        dead = sum(x for x, (_, _, d) in zip(w, plan.cells, strict=True) if d)
        ours.append(dead / (sum(w) - dead))
        theirs.append(real[plan.state_codes[s]])
    mo, mt = sum(ours) / len(ours), sum(theirs) / len(theirs)
    cov = sum((a - mo) * (b - mt) for a, b in zip(ours, theirs, strict=True))
    r = cov / math.sqrt(sum((a - mo) ** 2 for a in ours) * sum((b - mt) ** 2 for b in theirs))
    assert r >= 0.95, r
    assert max(ours) / min(ours) >= 1.8


def test_age_structure_follows_each_states_table(plan):
    """Per state, the share of the living aged 65+: the plan's (exact) within 0.006 of the
    state's V2023 table (the rake to the national V2022 ages moves it a little), and a sample's
    against the plan's: sum of z**2 over the 51 states under chi2(51) at p = 0.001 (87.97)."""
    census: dict[str, Counter] = {}
    for r in table("state_age_sex_v2023.csv"):
        census.setdefault(r["state"], Counter())[int(r["age"]) >= 65] += int(r["population"])
    expected = []
    for s, cum in enumerate(plan.cell_cum):
        live = [(age, w) for (age, _, d), w in zip(plan.cells, weights(cum), strict=True) if not d]
        p = sum(w for age, w in live if age >= 65) / sum(w for _, w in live)
        c = census[plan.state_codes[s]]
        assert abs(p - c[True] / (c[True] + c[False])) <= 0.006, plan.state_codes[s]
        expected.append(p)
    old, alive = Counter(), Counter()
    for i in range(N):
        s = g._sample(plan, i)
        age, _, dead = plan.cells[s.cell]
        if not dead:
            alive[s.state] += 1
            old[s.state] += age >= 65
    z2 = [(old[k] - alive[k] * p) ** 2 / (alive[k] * p * (1 - p)) for k, p in enumerate(expected)]
    assert sum(z2) < 87.97, max(zip(z2, plan.state_codes, strict=True))
    me, ut = (plan.state_codes.index(s) for s in ("ME", "UT"))
    assert expected[me] > 1.8 * expected[ut]  # V2023: ME 23 %, UT 12 % are 65+


def expected_shares(plan: g.Plan, select) -> dict[int, float]:
    """Exact probabilities of each race row over the plan's (state, cell) pairs that `select`
    (age, dead) keeps, normalised within them."""
    out: Counter = Counter()
    states = weights(plan.state_cum)
    for s, cum in enumerate(plan.cell_cum):
        w = weights(cum)
        for cell, ((age, _, dead), wc) in enumerate(zip(plan.cells, w, strict=True)):
            if wc and select(age, dead):
                race = weights(plan.race_cum[s][cell])
                for j, wr in enumerate(race):
                    out[j] += states[s] / plan.state_cum[-1] * wc / cum[-1] * wr / sum(race)
    total = sum(out.values())
    return {j: v / total for j, v in out.items()}


def test_hispanic_shares_of_children_and_65_plus_follow_acs(plan):
    """Sampled: the Hispanic share of living children and of the living 65+ within Z sd of
    the plan's expectation, and that within 15 % of ACS 2018 (25.4 % and 8.4 %)."""
    acs: dict[str, Counter] = {"kids": Counter(), "old": Counter()}
    for r in table("state_age_race_acs2018.csv"):
        for sex in "MF":
            for lo in (0, 5, 10, 15, 65, 75, 85):
                acs["kids" if lo < 18 else "old"][r["race_iteration"]] += float(
                    r[f"{sex}{lo}"] or 0
                )
    counts = {"kids": [0, 0], "old": [0, 0]}
    for i in range(N):
        s = g._sample(plan, i)
        age, _, dead = plan.cells[s.cell]
        key = "kids" if age < 18 else "old" if age >= 65 else None
        if key and not dead:
            counts[key][0] += plan.race_hispanic[s.race]
            counts[key][1] += 1
    for key, keep in (
        ("kids", lambda a, d: a < 18 and not d),
        ("old", lambda a, d: a >= 65 and not d),
    ):
        shares = expected_shares(plan, keep)
        p = sum(v for j, v in shares.items() if plan.race_hispanic[j])
        h, n = counts[key]
        assert abs(h - n * p) <= Z * math.sqrt(n * p * (1 - p)) + 1, (key, h / n, p)
        real = acs[key]["I"] / sum(acs[key][k] for k in "ABCDEFG")
        assert abs(p / real - 1) <= 0.15, (key, p, real)


def test_age_adjusted_death_rates_by_race_follow_gbd_ratios(plan):
    """From the plan's tables (no noise): deaths per living person by GBD group and standard
    age group, age-adjusted with the 2000 US standard, as ratios to all races: within 10 % of
    mortality_by_race.csv's 2019 ratios."""
    rates = {r["group"]: float(r["age_standardized_death_rate_per_100k"])
             for r in table("mortality_by_race.csv") if r["year"] == "2019"}  # fmt: skip
    groups = [
        "latino" if eth == g._HISPANIC_CODE else GBD.get(code) for _, code, _, eth in plan.race_rows
    ]
    dead, living = Counter(), Counter()
    for s, cum in enumerate(plan.cell_cum):
        for cell, ((age, _, is_dead), w) in enumerate(zip(plan.cells, weights(cum), strict=True)):
            k = max(j for j, (lo, _) in enumerate(STANDARD) if lo <= age)
            race = weights(plan.race_cum[s][cell])
            for j, wr in enumerate(race):
                share = w * wr / sum(race)
                for group in ("all", groups[j]):
                    (dead if is_dead else living)[group, k] += share

    def adjusted(group: str) -> float:
        return sum(w * dead[group, k] / living[group, k] for k, (_, w) in enumerate(STANDARD))

    for group in ("white", "black", "latino", "asian", "aian"):
        ours = adjusted(group) / adjusted("all")
        real = rates[group] / rates["total"]
        assert abs(ours / real - 1) <= 0.10, (group, ours, real)


def test_the_dead_draw_their_race_from_the_tilted_tables():
    """Sampled, everyone dead (--mortality-rate 1): each race row's count within Z sd of the
    plan's expectation; Black non-Hispanic people are a larger share of the dead than of the
    living at the same ages (55-64, one ACS band: ratio 1.22), Asian ones a smaller (0.56)."""
    plan = g.make_plan(3, AS_OF, mortality_rate=1.0, min_age=55, max_age=64)
    n = 50_000
    counts = Counter(g._sample(plan, i).race for i in range(n))
    shares = expected_shares(plan, lambda a, d: d)
    for j, p in shares.items():
        assert abs(counts[j] - n * p) <= Z * math.sqrt(n * p * (1 - p)) + 1, plan.race_rows[j]
    live_plan = g.make_plan(3, AS_OF, mortality_rate=0.0, min_age=55, max_age=64)
    alive = expected_shares(live_plan, lambda a, d: not d)
    row = {(code, eth): j for j, (_, code, _, eth) in enumerate(plan.race_rows)}
    black, asian = row["2054-5", "2186-5"], row["2028-9", "2186-5"]
    assert shares[black] > 1.1 * alive[black]
    assert shares[asian] < 0.7 * alive[asian]
