"""The analytics proof: DuckDB runs docs/analytics.sql (the README's query) over written layers."""

from __future__ import annotations

from collections import Counter
from datetime import date, datetime, timedelta
from pathlib import Path

import duckdb
import pytest
from bronze_util import AS_OF, ROOT

import fhir_patient_generator as g

# Private names used here (internals this file checks or drives directly): _condition_record,
# _encounter_record

SQL = (ROOT / "docs" / "analytics.sql").read_text()
PLAN = g.make_plan(7, AS_OF, mortality_rate=0.05)


def statements(root: Path) -> dict[str, list[str]]:
    """docs/analytics.sql by '-- name:' section, pointed at root instead of ./lake/bronze."""
    sql = SQL.replace("./lake/bronze/", root.as_posix() + "/")
    out = {}
    for part in sql.split("-- name: ")[1:]:
        name, _, body = part.partition("\n")
        out[name.strip()] = [s for s in body.split(";") if s.strip()]
    return out


@pytest.mark.parametrize(
    "fmt, gz, count",
    [
        ("json", False, 1500),
        ("json", True, 1500),
        ("ndjson", False, 20000),
        ("ndjson", True, 20000),
    ],
)
def test_mortality_by_state_and_county_patients_per_hospital_and_no_dangling_reference(
    tmp_path, fmt, gz, count
):
    spec = g.Bronze(root=str(tmp_path), count=count, format=fmt, gzip=gz, records_per_file=7000)
    g.write_bronze(PLAN, spec)
    expected_state, expected_dead, expected_org = Counter(), Counter(), Counter()
    expected_county = Counter()
    for i in range(count):
        r = g.build_record(PLAN, i)
        state = r["address"][0]["state"]
        expected_state[state] += 1
        expected_dead[state] += "deceasedDateTime" in r
        county = (state, r["address"][0]["district"])
        expected_county[county] += 1 + 1_000_000 * ("deceasedDateTime" in r)
        expected_org[r["managingOrganization"]["reference"].removeprefix("Organization/")] += 1
    ccn = {o["id"]: o["ccn"] for o in PLAN.organizations}

    sql = statements(tmp_path)
    con = duckdb.connect()
    for statement in sql["views"]:
        con.execute(statement)
    (mortality,) = sql["mortality_by_state"]
    rows = con.execute(mortality).fetchall()
    assert {s: (n, d) for s, n, d, _ in rows} == {
        s: (n, expected_dead[s]) for s, n in expected_state.items()
    }
    assert sum(d for _, _, d, _ in rows) > 0  # deaths exist, so the column was read
    for state, n, d, pct in rows:
        assert pct == round(100.0 * d / n, 2), state

    (by_county,) = sql["mortality_by_county"]
    rows = con.execute(by_county).fetchall()
    assert {(s, c): n + 1_000_000 * d for s, c, n, d, _ in rows} == dict(expected_county)
    assert len(rows) > 100  # counties, not states

    (per_hospital,) = sql["patients_per_hospital"]
    rows = con.execute(per_hospital).fetchall()
    assert len(rows) == len(PLAN.organizations)  # every hospital, with or without patients
    assert {c: n for c, _, _, n in rows if n} == {ccn[o]: n for o, n in expected_org.items()}
    assert sum(n for *_, n in rows) == count

    (dangling,) = sql["dangling_references"]
    assert con.execute(dangling).fetchall() == [(0,)]
    if fmt == "json":  # the check can fail: drop one referenced organization, count again
        referenced = expected_org.most_common(1)[0][0]
        victim = next((tmp_path / "organization").glob(f"organization_{referenced}.json*"))
        victim.unlink()
        assert con.execute(dangling).fetchall() == [(expected_org[referenced],)]


def test_the_readme_shows_the_tested_query():
    """The README's analytics queries are docs/analytics.sql's, the ones these tests run: the
    patient part whole, and the stays' mortality query."""
    root = Path(__file__).resolve().parents[1]
    sql = (root / "docs" / "analytics.sql").read_text(encoding="utf-8")
    readme = (root / "README.md").read_text(encoding="utf-8")
    body = sql[sql.index("CREATE OR REPLACE VIEW patient") : sql.index(STAYS)].strip()
    assert body in readme
    stays = statements(root)
    assert stays["mortality_per_cohort"][0].strip() in readme


# -- inpatient stays (--encounters): the sections from "-- name: stay_views" on

STAYS = "-- name: stay_views"
STAY_PLAN = g.make_plan(7, AS_OF, encounters=True)
COHORTS = {  # the SQL's cohort rule, written again in Python: ICD-10-CM prefix at 65+
    "AMI": ("I21",), "HF": ("I50", "I11.0", "I13.0", "I13.2"),
    "PN": ("J12", "J13", "J14", "J15", "J16", "J17", "J18"), "COPD": ("J41", "J42", "J43", "J44"),
    "CABG": ("I25.1",), "HIP-KNEE": ("M16", "M17"),
}  # fmt: skip
DAY = 86400


def _years(born: date, on: date) -> int:
    return on.year - born.year - ((on.month, on.day) < (born.month, born.day))


HAI_KINDS = ("CLABSI", "CAUTI", "SSI", "SSI", "CDI", "MRSA")  # hai_baselines.csv order -> SQL


def _expected_stays(plan: g.Plan, count: int) -> list[dict]:
    """Every stay of patients 0..count-1 as the SQL's stay view should see it, from the API."""
    ccn = {o["id"]: o["ccn"] for o in plan.organizations}
    out = []
    for i in range(count):
        record = g.build_record(plan, i)
        born = date.fromisoformat(record["birthDate"])
        died = record.get("deceasedDateTime")
        for stay in g.stays(plan, i):
            e, c = g._encounter_record(plan, stay), g._condition_record(plan, stay)
            start = datetime.fromisoformat(e["period"]["start"])
            end = datetime.fromisoformat(e["period"]["end"])
            code = c["code"]["coding"][0]["code"]
            age = _years(born, start.date())
            cohort = next((k for k, v in COHORTS.items() if code.startswith(v)), None)
            code_ = e["hospitalization"]["dischargeDisposition"]["coding"][0]["code"]
            hais = [HAI_KINDS[j] for j, _ in g._hai_onsets(plan, stay)]  # issue 19
            out.append({
                "patient": i, "ccn": ccn[e["serviceProvider"]["reference"][13:]], "age": age,
                "hais": hais, "admitted": start, "discharged": end,
                "days": max(1, (end.date() - start.date()).days),
                "cohort": cohort if age >= 65 else None, "died_in_hospital": code_ == "exp",
                "died": died and datetime.fromisoformat(died),
            })  # fmt: skip
    return out


def _readmissions(stays: list[dict], group: str = "cohort") -> Counter:
    """(group, readmitted) of every index stay: discharged alive 30+ days before the data end,
    group = its cohort (65+, None: not an index stay) or, for "age", whether it is 65+."""
    end = max(s["discharged"] for s in stays)
    by_patient: dict[int, list[dict]] = {}
    for s in sorted(stays, key=lambda s: s["admitted"]):
        by_patient.setdefault(s["patient"], []).append(s)
    out = Counter()
    for own in by_patient.values():
        for s, nxt in zip(own, [*own[1:], None], strict=True):
            key = s["cohort"] if group == "cohort" else s["age"] >= 65
            if key is None or s["died_in_hospital"] or s["discharged"] > end - timedelta(30):
                continue
            soon = nxt is not None and nxt["admitted"] <= s["discharged"] + timedelta(30)
            out[key, soon] += 1
    return out


def _check_issue_19_sections(run, expected: list[dict], wide: Counter) -> None:
    """hai_outcomes: stays and deaths in hospital per HAI kind, 'any' and 'none', as the API's
    stays have them; readmission_per_hospital_wide: the hospital-wide index stays, per CCN."""
    outcomes = Counter()
    for s in expected:
        for kind in {*s["hais"], "any"} if s["hais"] else {"none"}:
            outcomes[kind, s["died_in_hospital"]] += 1
    assert {k: (n, d) for k, n, d, *_ in run("hai_outcomes")} == {
        k: (outcomes[k, False] + outcomes[k, True], outcomes[k, True]) for k, _ in outcomes
    }
    per_hospital = run("readmission_per_hospital_wide")
    assert sum(n for _, n, _ in per_hospital) == sum(wide.values())
    assert sum(k for _, _, k in per_hospital) == wide[False, True] + wide[True, True]


@pytest.mark.parametrize("fmt, gz, count", [("json", True, 600), ("ndjson", False, 12000)])
def test_stay_queries_match_the_generated_stays(tmp_path, fmt, gz, count):
    """ALOS per hospital, readmissions and mortality per cohort, admissions by age band, HAI
    onset and references, computed by DuckDB from the written layer, equal the same figures
    computed in Python from the API's stays."""
    spec = g.Bronze(root=str(tmp_path), count=count, format=fmt, gzip=gz, records_per_file=7000)
    g.write_bronze(STAY_PLAN, spec)
    expected = _expected_stays(STAY_PLAN, count)
    assert len(expected) > count // 20  # stays exist at the configured rates
    sql = statements(tmp_path)
    con = duckdb.connect()
    for name in ("views", "stay_views"):
        for statement in sql[name]:
            con.execute(statement)

    def run(name: str) -> list[tuple]:
        (query,) = sql[name]
        return con.execute(query).fetchall()

    per_hospital = Counter()
    for s in expected:
        per_hospital[s["ccn"], "stays"] += 1
        per_hospital[s["ccn"], "days"] += s["days"]
    rows = run("alos_per_hospital")
    assert {c: (n, d) for c, n, d, _ in rows} == {
        c: (n, per_hospital[c, "days"]) for (c, kind), n in per_hospital.items() if kind == "stays"
    }
    assert all(abs(alos - d / n) <= 0.005 + 1e-9 for _, n, d, alos in rows)  # round(avg, 2)

    readmitted = _readmissions(expected)
    rows = run("readmission_per_cohort")
    assert {c: (n, k) for c, n, k, _ in rows} == {
        c: (readmitted[c, False] + readmitted[c, True], readmitted[c, True])
        for c in {c for c, _ in readmitted}
    }
    wide = _readmissions(expected, "age")
    rows = run("readmission_hospital_wide")
    assert {a: (n, k) for a, n, k, _ in rows} == {
        a: (wide[a, False] + wide[a, True], wide[a, True]) for a in (False, True)
    }
    assert sum(k for _, _, k, _ in rows) > 0  # the window reaches the next admission

    end = max(s["discharged"] for s in expected)
    first: dict[tuple, dict] = {}
    for s in sorted(expected, key=lambda s: s["admitted"]):
        if s["cohort"] and s["admitted"] <= end - timedelta(30):
            first.setdefault((s["patient"], s["cohort"]), s)
    dead30 = Counter(
        s["cohort"]
        for s in first.values()
        if s["died"] and s["died"] <= s["admitted"] + timedelta(30)
    )
    rows = run("mortality_per_cohort")
    assert {c: n for c, n, *_ in rows} == Counter(c for _, c in first)
    in_hospital = Counter(s["cohort"] for s in first.values() if s["died_in_hospital"])
    for cohort, n, pct, pct30 in rows:
        assert pct == pytest.approx(100.0 * in_hospital[cohort] / n, abs=0.0051), cohort
        assert pct30 == pytest.approx(100.0 * dead30[cohort] / n, abs=0.0051), cohort

    assert sum(n for _, _, n, *_ in run("admissions_per_1000")) == len(expected)
    assert run("hai_onset_check") == [(0,)]
    hai = run("hai_per_hospital")
    assert {r[0] for r in hai} == set(c for c, _ in per_hospital)
    infections = Counter((s["ccn"], kind) for s in expected for kind in s["hais"])
    assert {(c, kind): n for c, kind, _, n, *_ in hai if n} == infections
    assert fmt == "json" or sum(infections.values()) > 0  # 12,000 patients: some HAIs
    assert all(days == per_hospital[c, "days"] for c, _, days, *_ in hai)
    _check_issue_19_sections(run, expected, wide)
    assert run("stay_dangling_references") == [(0, 0)]
    if fmt == "json":  # the check can fail: drop one Encounter file, rebuild the stay table
        next((tmp_path / "encounter").glob("encounter_*.json*")).unlink()
        for statement in sql["stay_views"]:
            con.execute(statement)
        assert run("stay_dangling_references") == [(0, 1)]


def test_hai_baselines_in_the_sql_are_the_reference_table():
    """hai_per_hospital's SIR-1 incidences are reference_data/hai_baselines.csv's (SSI: colon +
    hysterectomy), so the SQL and the table cannot drift apart."""
    import csv
    import re

    with open(ROOT / "reference_data" / "hai_baselines.csv", newline="", encoding="utf-8") as f:
        table = {r["hai"]: float(r["per_1000_patient_days_sir1"]) for r in csv.DictReader(f)}
    (query,) = statements(ROOT)["hai_per_hospital"]
    found = dict(re.findall(r"\('([A-Z]+)', '[^']+', ([0-9.+ ]+)\)", query))
    assert {k: sum(float(x) for x in v.split("+")) for k, v in found.items()} == pytest.approx({
        "CLABSI": table["CLABSI"], "CAUTI": table["CAUTI"], "CDI": table["CDI"],
        "MRSA": table["MRSA"], "SSI": table["SSI_COLON"] + table["SSI_HYST"],
    })  # fmt: skip
