"""--encounters with --epoch (issue 18): the living population's inpatient stays. Each change
batch carries the Encounters and Conditions of the stays delivered in it (discharged, or tied
to a death in it); the epoch layer plus every batch holds exactly the stays of the snapshot at
the last batch's end (DuckDB reads them); no stay falls before a patient joins or after its
death, none overlap, records entered in error have none; bytes do not depend on workers,
shards or the store; an interrupted batch is finished by --continue."""

from __future__ import annotations

import gzip
import subprocess
import sys
from collections import defaultdict
from datetime import datetime

import duckdb
import orjson
import pytest
from bronze_util import ROOT, one_line, tree
from test_living_bronze import cli, ok, one_pool_shards

import fhir_patient_generator as g

# Private names used here (internals this file checks or drives directly): _MAX_STAYS,
# _admission_tables, _batch_name, _identity_bytes, _living_stays, _population_size,
# _window_stays

EPOCH = "2026-01-01T00:00:00Z"
POPULATION = ("--seed", "7", "--count", "4000", "--encounters", "--states", "VT,NH")
ENDS = ("2026-01-02T00:00:00Z", "2026-01-09T00:00:00Z", "2026-02-01T00:00:00Z",
        "2026-05-01T06:30:00Z", "2026-09-01T00:00:00Z")  # fmt: skip


def seconds(text: str) -> int:
    return int(datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp())


def ndjson(paths) -> list[bytes]:
    out = []
    for p in paths:
        data = p.read_bytes()
        out += (gzip.decompress(data) if p.name.endswith(".gz") else data).splitlines()
    return out


def test_the_epoch_layer_and_its_batches_hold_the_snapshots_stays(tmp_path):
    """Epoch layer, then --continue batches: DuckDB's union of the layer's and the batches'
    Encounters (and Conditions) is the snapshot's at the last end, line for line; every
    reference resolves in the layer plus the batches; manifests count the stay files."""
    lake, snap = tmp_path / "lake", tmp_path / "snap"
    ok(cli(*POPULATION, "--as-of", EPOCH, "--format", "ndjson", "--records-per-file", "1500",
           "--output", str(lake)))  # fmt: skip
    for end in ENDS:
        summary = ok(cli("--output", str(lake), "--continue", "--as-of", end))
        assert " stays (" in summary
    ok(cli(*POPULATION, "--epoch", EPOCH, "--as-of", ENDS[-1], "--format", "ndjson",
           "--records-per-file", "1500", "--output", str(snap)))  # fmt: skip
    con = duckdb.connect()
    files: dict[str, list[str]] = defaultdict(list)
    stays_delivered = 0
    for manifest in sorted((lake / "cdc" / "_manifests").iterdir()):
        m = orjson.loads(manifest.read_bytes())
        for e in m["output"]:
            files[e["type"]].append((lake / e["url"]).as_posix())
            assert e["count"] == len((lake / e["url"]).read_bytes().splitlines())
        batch = m["extension"]["batch"]
        assert batch["encounters"] == sum(
            e["count"] for e in m["output"] if e["type"] == "Encounter"
        )
        stays_delivered += batch["encounters"]
    assert stays_delivered > 100  # about 0.1 stays per person-year
    for kind in ("Encounter", "Condition"):
        layer = sorted((lake / kind.lower()).glob("*.ndjson"))
        union = con.execute(
            "SELECT json FROM read_ndjson_objects(?)", [[p.as_posix() for p in layer] + files[kind]]
        ).fetchall()
        got = sorted(orjson.dumps(orjson.loads(r[0])) for r in union)
        expected = sorted(ndjson(sorted((snap / kind.lower()).glob("*.ndjson"))))
        assert len(got) == len(set(got)) and got == expected, kind
    # references: subjects are patients of the layer or a batch, hospitals organizations
    patients = {orjson.loads(x)["id"] for x in ndjson(sorted((lake / "patient").glob("*")))}
    patients |= {orjson.loads(x)["id"] for x in ndjson(map(type(lake), files["Patient"]))}
    orgs = {orjson.loads(x)["id"] for x in ndjson(sorted((lake / "organization").glob("*")))}
    encounters = [orjson.loads(x) for x in ndjson(map(type(lake), files["Encounter"]))]
    ids = {e["id"] for e in encounters}
    for e in encounters:
        assert e["subject"]["reference"].removeprefix("Patient/") in patients
        assert e["serviceProvider"]["reference"].removeprefix("Organization/") in orgs
        assert seconds(EPOCH) < seconds(e["period"]["start"]) < seconds(e["period"]["end"])
        assert seconds(e["meta"]["lastUpdated"]) >= seconds(e["period"]["end"])
    for c in map(orjson.loads, ndjson(map(type(lake), files["Condition"]))):
        assert c["encounter"]["reference"].removeprefix("Encounter/") in ids
    # docs/analytics.sql on the snapshot with stays after the epoch: every section runs, and
    # its integrity checks find no dangling reference and no infection before day 3
    from test_duckdb import statements

    found = {}
    for name, parts in statements(snap).items():
        for statement in parts:
            found[name] = con.execute(statement).fetchall()
    assert found["dangling_references"] == [(0,)] and found["hai_onset_check"] == [(0,)]
    assert found["stay_dangling_references"] == [(0, 0)] and found["alos_per_hospital"]
    # docs/living-population.md's DuckDB script, as printed: silver = the snapshot, stays too
    doc = (ROOT / "docs" / "living-population.md").read_text()
    script = doc.split("### DuckDB (MERGE INTO")[1].split("```python\n")[1].split("```")[0]
    (tmp_path / "silver_duckdb.py").write_text(script)
    db = tmp_path / "silver.duckdb"
    run = subprocess.run(
        [sys.executable, str(tmp_path / "silver_duckdb.py"), str(lake), "infinity", str(db)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr
    silver = duckdb.connect(str(db), read_only=True)
    for kind in ("patient", "encounter", "condition"):
        table = "patient_current" if kind == "patient" else kind
        got = {
            orjson.dumps(orjson.loads(r[0]))
            for r in silver.sql(f"SELECT resource FROM {table}").fetchall()
        }
        assert got == set(ndjson(sorted((snap / kind).glob("*.ndjson")))), kind


def test_no_stay_before_joining_after_death_or_overlapping(tmp_path):
    """Per patient (API): every stay after the epoch begins after its first version and ends
    by its death (a stay that ends in death ends exactly at it, delivered then); stays never
    overlap, nor with the look-back window's; records entered in error and the dead at the
    epoch have none; a batch's stays are exactly those delivered in its window."""
    count, until = 3000, "2028-01-01T00:00:00Z"
    plan = g.make_plan(11, EPOCH, encounters=True, states="PA", min_age=60)
    found = g._window_stays(plan, g.Window(count, until))
    n = g._population_size(plan, count, until)
    deaths_in_hospital = joiners_with_stays = 0
    for i in range(n):
        versions = g.history(plan, count, i, until)
        mine = found.get(i, [])
        if not versions or versions[-1].change == "delete" or versions[0].sample.died >= 0:
            assert mine == [], i
            continue
        joined, died = versions[0].instant, versions[-1].sample.died
        before = g.stays(plan, i) if i < count else []
        assert all(s.discharged < joined for s in before)
        last = -1
        for ls in mine:
            s = ls.stay
            assert joined < s.admitted < s.discharged and s.admitted > last
            tied = s.k < g._MAX_STAYS  # the stay tied to the death (and its readmission)
            assert not tied or ls.delivered == died
            last = s.discharged
            if died >= 0:
                assert s.discharged <= died
                assert (s.disposition < 0) == (s.discharged == died)
                deaths_in_hospital += s.disposition < 0
            assert ls.delivered == (died if tied or s.disposition < 0 else s.discharged)
        joiners_with_stays += i >= count and bool(mine)
        if mine and i % 7 == 0:  # the per-patient helper gives the same
            assert g._living_stays(plan, count, i, until) == mine
    assert deaths_in_hospital > 5 and joiners_with_stays > 0
    # the batch (S, T] holds exactly the stays delivered in it
    since = "2027-03-01T00:00:00Z"
    batch = g._window_stays(plan, g.Window(count, until, since))
    expected = {
        i: [ls for ls in mine if ls.delivered > seconds(since)] for i, mine in found.items()
    }
    assert batch == {i: m for i, m in expected.items() if m}


def test_living_stays_come_at_the_look_back_windows_rate():
    """Thinning by age and sex: the first year after the epoch has about as many stays per
    person-year as the three years before it (the same rates; 4 standard errors of the two
    Poisson counts, plus 10 % for the model's differences: age at the instant, not mid-window)."""
    count = 6000
    plan = g.make_plan(5, EPOCH, encounters=True, states="FL", min_age=65)
    before = sum(len(g.stays(plan, i)) for i in range(count)) / 3  # a year of the window
    after = sum(map(len, g._window_stays(plan, g.Window(count, "2027-01-01T00:00:00Z")).values()))
    se = (before / 3 + after) ** 0.5
    assert abs(after - before) <= 4 * se + 0.10 * before, (after, before)
    assert max(max(cuts) for cuts in g._admission_tables(plan).accept.values()) < 2**32


@pytest.mark.parametrize("fmt", ["ndjson", "json"])
def test_batches_with_stays_do_not_depend_on_workers_or_shards(tmp_path, fmt):
    common = ("--seed", "7", "--count", "3000", "--encounters", "--epoch", EPOCH, "--since",
              EPOCH, "--as-of", "2026-04-01T00:00:00Z", "--format", fmt, "--gzip",
              "--records-per-file", "700")  # fmt: skip
    one = one_pool_shards(tmp_path, common, workers=2)
    assert any(k.startswith("cdc/encounter/ingest_date=2026-04-01/") for k in one)
    assert any(k.startswith("cdc/condition/ingest_date=2026-04-01/") for k in one)


def test_stdout_batch_prints_the_stays_after_the_versions():
    args = ("--seed", "3", "--count", "2000", "--encounters", "--epoch", EPOCH)
    window = ("--since", EPOCH, "--as-of", "2026-03-01T00:00:00Z")
    out = [orjson.loads(x) for x in ok_stdout(cli(*args, *window)).splitlines()]
    plan = g.make_plan(3, EPOCH, encounters=True)
    found = g._window_stays(plan, g.Window(2000, "2026-03-01T00:00:00Z", EPOCH))
    encounters = [r for r in out if r["resourceType"] == "Encounter"]
    assert len(encounters) == sum(map(len, found.values())) > 10
    snapshot = [orjson.loads(x) for x in ok_stdout(cli(*args, "--as-of", EPOCH)).splitlines()]
    plain = cli("--seed", "3", "--count", "2000", "--encounters", "--as-of", EPOCH)
    assert snapshot == [orjson.loads(x) for x in ok_stdout(plain).splitlines()]


def ok_stdout(result) -> str:
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_stays_batches_on_s3_have_the_local_keys_and_bytes(s3_throwaway_server, tmp_path):
    from test_s3 import objects

    server = s3_throwaway_server
    bucket = server.create_bucket()
    url = f"s3://{bucket}/lake/bronze"
    local = tmp_path / "local"
    base = ("--seed", "7", "--count", "1500", "--states", "VT,NH", "--as-of", EPOCH, "--gzip",
            "--encounters")  # fmt: skip
    env = server.endpoint.env()
    endpoint = ("--endpoint-url", server.endpoint.endpoint_url)
    for root, extra in ((str(local), ()), (url, endpoint)):
        ok(cli(*base, "--output", root, *extra, env=env))
        ok(cli("--output", root, "--continue", "--as-of", "2026-03-01T00:00:00Z", *extra, env=env))
    stored = objects(server.client(), bucket, "lake/bronze")
    assert any(k.startswith("cdc/encounter/") for k in stored)
    assert sorted(stored) == sorted(tree(local))
    for key, body in stored.items():
        assert body == (local / key).read_bytes(), key


def test_continue_finishes_an_interrupted_batch_with_stays(tmp_path):
    """A batch that died midway (identity written, a truncated Encounter file, no manifest):
    --continue with its as-of rewrites it whole, the same bytes as an uninterrupted run."""
    args = ("--seed", "7", "--count", "3000", "--encounters", "--as-of", EPOCH, "--format",
            "ndjson", "--records-per-file", "1000")  # fmt: skip
    end = "2026-03-01T00:00:00Z"
    clean, lake = tmp_path / "clean", tmp_path / "lake"
    for root in (clean, lake):
        ok(cli(*args, "--output", str(root)))
    ok(cli("--output", str(clean), "--continue", "--as-of", end))
    plan = g.make_plan(7, EPOCH, encounters=True)
    spec = g.Bronze(root=str(lake), count=g._population_size(plan, 3000, end), format="ndjson",
                    records_per_file=1000, window=g.Window(3000, end, EPOCH))  # fmt: skip
    name = g._batch_name(spec)
    (lake / "cdc" / "_run").mkdir(parents=True)
    (lake / "cdc" / "_run" / f"{name}.json").write_bytes(g._identity_bytes(plan, spec))
    partial = (
        lake / "cdc" / "encounter" / "ingest_date=2026-03-01" / f"{name}.Encounter.000002.ndjson"
    )
    partial.parent.mkdir(parents=True)
    partial.write_bytes(b'{"resourceType":"Encounter","id":')
    refused = cli("--output", str(lake), "--continue", "--as-of", "2026-04-01T00:00:00Z")
    assert refused.returncode == 1 and f"unfinished batch {name}" in one_line(refused)
    ok(cli("--output", str(lake), "--continue", "--as-of", end))
    assert tree(lake) == tree(clean)


def test_the_snapshot_at_the_epoch_is_the_plain_layer_and_validate_changes_no_byte(tmp_path):
    """--epoch E --as-of E --encounters writes the data files of --as-of E --encounters, byte
    for byte; a batch with stays is the same with --validate (every resource through
    fhir.resources) as without."""
    common = ("--seed", "7", "--count", "1200", "--encounters", "--states", "RI", "--format",
              "json", "--gzip")  # fmt: skip
    ok(cli(*common, "--as-of", EPOCH, "--output", str(tmp_path / "plain")))
    ok(cli(*common, "--epoch", EPOCH, "--as-of", EPOCH, "--output", str(tmp_path / "snap")))
    plain, snap = tree(tmp_path / "plain"), tree(tmp_path / "snap")
    data = {k: v for k, v in plain.items() if not k.startswith("_")}
    assert any(k.startswith("encounter/") for k in data)
    assert data == {k: v for k, v in snap.items() if not k.startswith("_")}
    batch = ("--seed", "7", "--count", "1200", "--encounters", "--states", "RI", "--epoch", EPOCH,
             "--since", EPOCH, "--as-of", "2026-06-01T00:00:00Z")  # fmt: skip
    fast, checked = ok_stdout(cli(*batch)), ok_stdout(cli(*batch, "--validate"))
    assert '"Encounter"' in fast and fast == checked
