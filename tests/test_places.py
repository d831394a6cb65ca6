"""Real places and hospitals: ZIPs, counties, hospitals by distance, language by state.

Expected shares are computed here from the CSVs, not from the generator's tables; counts are
accepted within Z = 4.5 binomial standard deviations on fixed-seed samples (test_realism's rule).
The distance bound is checked by brute force over hospital coordinates rebuilt with
tools/build_reference.py (a hospital sits at its ZIP's internal point).
"""

from __future__ import annotations

import functools
import importlib.util
import math
import statistics
import sys
from collections import Counter, defaultdict
from datetime import date
from pathlib import Path

import orjson
from record_shapes import hospital_shares
from test_realism import AS_OF, assert_share, table

import fhir_patient_generator as g

# Private names used here (internals this file checks or drives directly): _CANDIDATES,
# _CCN_SYSTEM, _load_reference, _sample

ROOT = Path(__file__).resolve().parents[1]
AS_OF_DATE = date.fromisoformat(AS_OF[:10])
GENERAL = ("Acute Care Hospitals", "Critical Access Hospitals")


@functools.cache
def tool():
    """tools/build_reference.py as a module."""
    spec = importlib.util.spec_from_file_location(
        "build_reference", ROOT / "tools" / "build_reference.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules["build_reference"] = module
    spec.loader.exec_module(module)
    return module


@functools.cache
def zip_rows() -> dict[str, dict[str, str]]:
    """ZIP -> zips.csv row plus its county name."""
    county = {r["county_fips"]: r["county_name"] for r in table("counties.csv")}
    return {r["zip"]: {**r, "county": county[r["county_fips"]]} for r in table("zips.csv")}


def records(plan: g.Plan, n: int) -> list[dict]:
    return [g.build_record(plan, i) for i in range(n)]


# --- where patients live ------------------------------------------------------------------------


def test_zip_and_county_shares_within_a_state_follow_zcta_populations():
    states = ("VT", "DE", "WY", "RI")
    n = 200_000
    sample = records(g.make_plan(31, AS_OF, states=",".join(states)), n)
    by_state = defaultdict(list)
    for r in sample:
        by_state[r["address"][0]["state"]].append(r["address"][0])
    for st in states:
        rows = [r for r in zip_rows().values() if r["state"] == st]
        total = sum(int(r["population"]) for r in rows)
        got = by_state[st]
        zips = Counter(a["postalCode"] for a in got)
        assert set(zips) <= {r["zip"] for r in rows}
        for r in rows:
            assert_share(zips[r["zip"]], len(got), int(r["population"]) / total, f"{st}/{r['zip']}")
        county_pop = Counter()
        for r in rows:
            county_pop[r["county"]] += int(r["population"])
        counties = Counter(a["district"] for a in got)
        for county, pop in county_pop.items():
            assert_share(counties[county], len(got), pop / total, f"{st}/{county}")


def test_every_address_is_a_real_zip_city_county_state_row():
    real = {(z, r["city"], r["county"], r["state"]) for z, r in zip_rows().items()}
    for plan in (g.make_plan(5, AS_OF), g.make_plan(6, AS_OF, states="PR,AK,HI", min_age=80)):
        for r in records(plan, 20_000):
            a = r["address"][0]
            assert (a["postalCode"], a["city"], a["district"], a["state"]) in real, a
            assert list(a) == ["city", "district", "state", "postalCode", "country"]


# --- hospitals ----------------------------------------------------------------------------------


def test_the_candidate_table_is_what_the_committed_tool_builds():
    """hospital_candidates.csv equals a fresh run of tools/build_reference.py (all 33,187 ZIPs)."""
    t = tool()
    rebuilt = t.render(t.candidates(t.load_zips(), t.rows(t.DATA, "hospitals.csv")))
    assert rebuilt == (ROOT / "reference_data" / "hospital_candidates.csv").read_text()


def test_each_hospital_is_among_the_nearest_whatever_the_state_line():
    """The bound: the managing hospital is a general hospital no farther from the ZIP's internal
    point than the K-th nearest one in any state (great-circle, brute force; K = CANDIDATES - 1),
    or, under 18, the nearest children's hospital, within 100 km. Some patients cross a state
    line for it."""
    t = tool()
    zips = t.load_zips()
    hospitals = t.rows(t.DATA, "hospitals.csv")
    where = t.hospital_locations(hospitals, zips)
    point = {h["ccn"]: (zips[i].lat, zips[i].lng) for h, i in zip(hospitals, where, strict=True)}
    kind = {h["ccn"]: h for h in hospitals}
    ccn_of = {h["id"]: h["ccn"] for h in g._load_reference().hospitals}
    zip_point = {z.zip: (z.lat, z.lng) for z in zips}
    by_type = defaultdict(list)
    for h in hospitals:
        by_type[h["hospital_type"]].append(h["ccn"])
    general = [c for k in GENERAL for c in by_type[k]]
    plan = g.make_plan(17, AS_OF, states="NY,TX,AK,VT,MT,DC,PR")
    children = crossed = 0
    ranked_at = {}
    for i in range(20_000):
        s, r = g._sample(plan, i), g.build_record(plan, i)
        a = r["address"][0]
        ccn = ccn_of[r["managingOrganization"]["reference"].removeprefix("Organization/")]
        here = zip_point[a["postalCode"]]
        dist = functools.partial(lambda p, c: t.haversine_km(*p, *point[c]), here)
        h = kind[ccn]
        crossed += h["state"] != a["state"]
        if h["hospital_type"] == "Childrens":
            children += 1
            assert plan.cells[s.cell][0] < 18
            nearest = min(by_type["Childrens"], key=dist)
            assert dist(ccn) == dist(nearest) and dist(ccn) <= 100
        else:
            assert h["hospital_type"] in GENERAL
            if a["postalCode"] not in ranked_at:
                ranked_at[a["postalCode"]] = sorted(dist(c) for c in general)[g._CANDIDATES - 2]
            assert dist(ccn) <= ranked_at[a["postalCode"]] + 1e-9, (a, ccn)
    assert children > 100
    assert 0 < crossed < 0.2 * 20_000, crossed


def test_patients_per_hospital_follow_hcris_discharges():
    """Issue 17: patients per general hospital correlate with its HCRIS 2021 total discharges
    (Pearson >= 0.85) and the top tenth of hospitals by discharges holds their share of patients
    within 5 points of their share of discharges (44.5 %)."""
    plan = g.make_plan(8, AS_OF)
    n = 300_000
    counts = Counter(g._sample(plan, i).organization for i in range(n))
    volume = {r["ccn"]: r["discharges"] for r in table("hospital_volumes.csv")}
    real = {
        h: int(volume[plan.hospitals[h]["ccn"]])
        for h in plan.organization_index
        if plan.hospitals[h]["hospital_type"] in GENERAL and volume[plan.hospitals[h]["ccn"]]
    }
    assert len(real) > 4000
    r = statistics.correlation([real[h] for h in real], [counts[h] for h in real])
    assert r >= 0.85, r
    top = sorted(real, key=lambda h: -real[h])[: len(real) // 10]
    ours = sum(counts[h] for h in top) / sum(counts[h] for h in real)
    theirs = sum(real[h] for h in top) / sum(real.values())
    assert abs(ours - theirs) <= 0.05, (ours, theirs)


def test_every_reference_resolves_in_the_runs_organization_output(tmp_path):
    plan = g.make_plan(3, AS_OF, states="CT,NH")
    g.write_bronze(plan, g.Bronze(root=str(tmp_path), count=5000, format="ndjson"))
    lines = (tmp_path / "organization" / "Organization.000001.ndjson").read_bytes().splitlines()
    orgs = {o["id"]: o for o in map(orjson.loads, lines)}
    assert len(orgs) == len(plan.organizations)
    crossed = 0  # candidates cross state lines: their hospitals are written too
    for r in map(
        orjson.loads, (tmp_path / "patient" / "Patient.000001.ndjson").read_bytes().splitlines()
    ):
        org = orgs[r["managingOrganization"]["reference"].removeprefix("Organization/")]
        assert org["name"] == r["managingOrganization"]["display"]
        crossed += org["address"][0]["state"] != r["address"][0]["state"]
        ccn = [i["value"] for i in org["identifier"] if i["system"] == g._CCN_SYSTEM]
        assert len(ccn) == 1 and len(ccn[0]) == 6
    assert crossed > 0


def test_organizations_are_the_general_and_childrens_hospitals_with_stable_readable_ids():
    plan = g.make_plan(1, AS_OF)
    kinds = Counter(o["hospital_type"] for o in plan.organizations)
    assert set(kinds) == {*GENERAL, "Childrens"} and sum(kinds.values()) == 4526
    ids = [h["id"] for h in g._load_reference().hospitals]
    assert len(set(ids)) == len(ids) == 5426
    assert all(len(i) <= 64 and i.startswith("org-") for i in ids)
    assert all(c.isascii() and (c.islower() or c.isdigit() or c == "-") for i in ids for c in i)
    # pinned: ids are a function of the CMS file, not of the seed or options
    by_ccn = {h["ccn"]: h["id"] for h in g._load_reference().hospitals}
    assert by_ccn["330194"] == "org-ny-maimonides-medical-center"
    assert next(
        o["id"] for o in g.make_plan(99, AS_OF, states="NY").organizations if o["state"] == "NY"
    ) == next(o["id"] for o in plan.organizations if o["state"] == "NY")


def test_hospital_volumes_are_far_from_uniform():
    """200,000 patients over ~4,500 hospitals: the coefficient of variation of patients per
    hospital is several times what equal volumes would show by sampling noise alone."""
    plan = g.make_plan(8, AS_OF)
    n = 200_000
    counts = Counter(g._sample(plan, i).organization for i in range(n))
    volumes = [counts.get(i, 0) for i in plan.organization_index]
    mean = statistics.fmean(volumes)
    cv = statistics.pstdev(volumes) / mean
    noise = 1 / math.sqrt(mean)  # Poisson CV of equal volumes
    assert cv > 0.6 and cv > 3 * noise, (cv, noise)
    expected = hospital_shares(plan)  # and the counts follow the model's exact shares
    for h, c in counts.most_common(20):
        assert_share(c, n, expected[h], plan.hospitals[h]["name"])


# --- language by state --------------------------------------------------------------------------

# C16001 groups with one language each, and the French group's two (checked within the group)
SINGLE = {"C16001_003E": "es", "C16001_018E": "ko", "C16001_021E": "zh",
          "C16001_024E": "vi", "C16001_027E": "tl", "C16001_033E": "ar"}  # fmt: skip
LANGUAGE_BANDS = ((0, 17, "5-17"), (18, 64, "18-64"), (65, 999, "65+"))  # under 5: as 5-17


def language_band(age: int) -> str:
    return next(band for lo, hi, band in LANGUAGE_BANDS if lo <= age <= hi)


def us_core_language_cells(plan: g.Plan, n: int) -> dict[tuple, Counter]:
    """(state, band, Hispanic?) -> Counter of language codes, read from us-core records (the
    ethnicity extension prints the Hispanic origin the language was drawn with); and under
    (state, "living 5+") the codes of the living aged 5 and over (the ACS universe)."""
    cells = defaultdict(Counter)
    for i in range(n):
        r = g.build_record(plan, i)
        born = date.fromisoformat(r["birthDate"])
        age = (AS_OF_DATE.year - born.year) - (
            (AS_OF_DATE.month, AS_OF_DATE.day) < (born.month, born.day)
        )
        eth = r["extension"][1]["extension"][0]["valueCoding"]["code"]
        state, code = (
            r["address"][0]["state"],
            r["communication"][0]["language"]["coding"][0]["code"],
        )
        cells[state, language_band(age), eth == "2135-2"][code] += 1
        if "deceasedDateTime" not in r and age >= 5:
            cells[state, "living 5+"][code] += 1
    return cells


def test_the_language_table_is_what_the_committed_tool_builds():
    """language_lep.csv equals a fresh run of tools/build_reference.py from the ACS copies."""
    t = tool()
    rebuilt = t.render(t.language_table(), t.LANGUAGE_COLUMNS)
    assert rebuilt == (ROOT / "reference_data" / "language_lep.csv").read_text()


def test_the_language_table_keeps_the_acs_totals():
    """Summed over its cells, the fitted table gives back each state's C16001 LEP count per
    group, B16004's LEP by age band and B16006's Hispanic Spanish LEP (the fit's margins)."""
    cells = tool().language_cells()
    level = {
        (r["state"], r["acs_variable"]): int(r["lep"])
        for r in table("lep_by_language_group_acs2018.csv")
    }
    hispanic = {r["state"]: r for r in table("hispanic_language_acs2018.csv")}
    for (st, var), lep in level.items():
        got = sum(c[var] for c in cells[st].values())
        assert math.isclose(got, lep, rel_tol=1e-6, abs_tol=1e-6), (st, var)
    for st in ("CA", "TX", "NY", "FL", "VT"):
        spanish = sum(c["C16001_003E"] for (_, h), c in cells[st].items() if h)
        assert math.isclose(spanish, int(hispanic[st]["hispanic_spanish_lep"]), rel_tol=1e-6)
    rate = {}  # B16004's Spanish LEP rate by band: the profile the level is spread by
    for r in table("lep_by_age_acs2018.csv"):
        if r["group"] == "spanish":
            rate[r["state"], r["age_band"]] = int(r["lep"]) / int(r["population"])
    for st in ("CA", "TX", "AK", "DC"):
        ratios = []
        for band in ("5-17", "18-64", "65+"):
            c = [cells[st][band, h] for h in (True, False)]
            modelled = sum(x["C16001_003E"] for x in c) / sum(x["population"] for x in c)
            ratios.append(modelled / rate[st, band])
        assert max(ratios) / min(ratios) < 1 + 1e-9, (st, ratios)


def acs_lep_share(state: str) -> float:
    """The state's LEP share of people 5+: C16001 over B01001's 5+ (WY, empty in C16001: its
    language_lep.csv cells weighted by their ACS people)."""
    lep = sum(
        int(r["lep"]) for r in table("lep_by_language_group_acs2018.csv") if r["state"] == state
    )
    if lep:
        row = next(r for r in table("hispanic_language_acs2018.csv") if r["state"] == state)
        return lep / sum(int(row[f"population_{b}"]) for b in ("5_17", "18_64", "65plus"))
    cells = [r for r in table("language_lep.csv") if r["state"] == state]
    people = sum(int(r["population"]) for r in cells)
    return (
        sum(int(r["population"]) * int(r[v]) / 1e9 for r in cells for v in tool().LEP_GROUPS)
        / people
    )


def test_language_follows_english_ability_by_state_age_and_hispanic_origin():
    """The state's share of the living 5+ who prefer a language other than English is its ACS
    LEP share (issue 17: by state within noise). Within each (state, age band, Hispanic origin)
    cell the LEP shares are language_lep.csv's times one factor per state (the generator's ages
    and Hispanic shares are not ACS 2018's: the factor restores the state's LEP share), and the
    languages of the non-English-preferring follow the table's groups. The French group (fr + ht)
    splits by the state's B16001 where published (FL, CA), else nationally (VT, HI)."""
    states = ("CA", "FL", "VT", "HI", "TX", "WY")
    cells = us_core_language_cells(
        g.make_plan(41, AS_OF, states=",".join(states), profile="us-core"), 150_000
    )
    lep = {(r["state"], r["age_band"], r["hispanic"] == "Y"): r for r in table("language_lep.csv")}
    for st in states:
        got = cells[st, "living 5+"]
        assert_share(got.total() - got["en"], got.total(), acs_lep_share(st), f"{st} LEP")
    detail = table("languages_by_state_detail_acs2018.csv")
    national = {r["bcp47"]: int(r["speakers_age5plus"]) for r in table("languages.csv")}
    checked = 0
    for key, got in cells.items():
        if key[1] == "living 5+":
            continue
        row, other = lep[key], got.total() - got["en"]
        total = sum(int(row[v]) for v in tool().LEP_GROUPS)
        for var, code in SINGLE.items():
            assert_share(got[code], other, int(row[var]) / total, f"{key}/{code}")
        assert_share(got["fr"] + got["ht"], other, int(row["C16001_006E"]) / total, f"{key}/fr+ht")
        checked += 1
    assert checked == len(states) * 6
    for st in states:
        french = Counter()
        for key, got in cells.items():
            if key[0] == st and key[1] != "living 5+":
                french.update({c: got[c] for c in ("fr", "ht")})
        own = {r["bcp47"]: int(r["speakers"]) for r in detail if r["state"] == st}
        split = own if own else national
        assert bool(own) == (st in ("CA", "FL", "TX"))
        assert_share(
            french["ht"], french.total(), split["ht"] / (split["fr"] + split["ht"]), f"{st}/ht"
        )


def test_children_under_5_follow_the_5_to_17_year_olds():
    """Under 5 (outside the ACS universe) draws from its state's 5-17 rows: the same Spanish
    share among those preferring another language, the same share preferring one as the 5-17s
    (same state, same Hispanic origin)."""
    plan = g.make_plan(4, AS_OF, states="TX", max_age=17, profile="us-core")
    cells = defaultdict(Counter)
    for i in range(60_000):
        r = g.build_record(plan, i)
        young = date.fromisoformat(r["birthDate"]) > date(
            AS_OF_DATE.year - 5, AS_OF_DATE.month, AS_OF_DATE.day
        )
        eth = r["extension"][1]["extension"][0]["valueCoding"]["code"] == "2135-2"
        cells[young, eth][r["communication"][0]["language"]["coding"][0]["code"]] += 1
    row = {
        r["hispanic"] == "Y": r
        for r in table("language_lep.csv")
        if r["state"] == "TX" and r["age_band"] == "5-17"
    }
    for (young, hispanic), got in cells.items():
        other = got.total() - got["en"]
        total = sum(int(row[hispanic][v]) for v in tool().LEP_GROUPS)
        assert_share(
            got["es"], other, int(row[hispanic]["C16001_003E"]) / total, f"TX {young} {hispanic}"
        )
    for hispanic in (True, False):
        old, young = cells[False, hispanic], cells[True, hispanic]
        p = 1 - old["en"] / old.total()
        assert_share(
            young.total() - young["en"], young.total(), p, f"TX under 5 vs 5-17 {hispanic}"
        )


def test_race_by_state_sums_to_the_national_table():
    """The 50 states + DC of race_ethnicity_by_state.csv add up to race_ethnicity_joint.csv."""
    total = Counter()
    for r in table("race_ethnicity_by_state.csv"):
        if r["state"] != "PR":
            total[(r["race_code"], r["ethnicity_code"])] += int(r["population"])
    national = table("race_ethnicity_joint.csv")
    assert total == {(r["race_code"], r["ethnicity_code"]): int(r["population"]) for r in national}
