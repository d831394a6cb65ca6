"""The analytics proof: DuckDB runs docs/analytics.sql (the README's query) over written layers."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import duckdb
import pytest
from bronze_util import AS_OF, ROOT

import fhir_patient_generator as g

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
    """The README's analytics query is docs/analytics.sql, the one these tests run."""
    root = Path(__file__).resolve().parents[1]
    sql = (root / "docs" / "analytics.sql").read_text(encoding="utf-8")
    body = sql[sql.index("CREATE OR REPLACE VIEW patient") :].strip()
    assert body in (root / "README.md").read_text(encoding="utf-8")
