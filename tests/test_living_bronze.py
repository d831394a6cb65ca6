"""The living population through the CLI and the bronze layer: a daily job (--continue) appends
change batches under cdc/, DuckDB merges them onto the epoch layer, and the result is the
snapshot written by --epoch E --as-of T, record for record; batches are append-only and their
bytes do not depend on workers or shards."""

from __future__ import annotations

import gzip
import os
import subprocess
import sys
from pathlib import Path

import duckdb
import orjson
import pytest
from bronze_util import AS_OF, ROOT, SCRIPT, one_line, tree

import fhir_patient_generator as g

# Private names used here (internals this file checks or drives directly): _MAX_INDEX,
# _batch_name, _identity_bytes, _population_size

COUNT = "20000"
POPULATION = ("--seed", "7", "--count", COUNT)
ENDS = ("2025-11-01T00:00:00Z", "2026-01-01T00:00:00Z", "2026-04-01T00:00:00Z")
ENDS += ("2026-07-01T06:30:00Z", "2026-10-13T00:00:00Z")


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """The CLI with exactly these arguments (no seed or as-of added)."""
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args, "--quiet"]
        if "--output" in args
        else [sys.executable, str(SCRIPT), *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "NO_PROXY": "127.0.0.1,localhost", **(env or {})},
        timeout=300,
    )


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, result.stderr
    return result.stderr


def one_pool_shards(tmp_path: Path, common: tuple[str, ...], workers: int) -> dict[str, str]:
    """The layer of `common` written by one process, by `workers` processes and as two shards:
    the three trees must be equal; the first of them."""
    ok(cli(*common, "--output", str(tmp_path / "one")))
    ok(cli(*common, "--workers", str(workers), "--output", str(tmp_path / "pool")))
    for k in range(2):
        ok(cli(*common, "--shard", f"{k}/2", "--output", str(tmp_path / "shards")))
    one = tree(tmp_path / "one")
    assert one == tree(tmp_path / "pool") == tree(tmp_path / "shards")
    return one


def lines(root: Path, pattern: str) -> list[bytes]:
    """Every line of the files under root matching pattern (gunzipped)."""
    out = []
    for path in sorted(root.glob(pattern)):
        data = path.read_bytes()
        out += (gzip.decompress(data) if path.name.endswith(".gz") else data).splitlines()
    return out


MERGE = """
CREATE TABLE t AS
  SELECT json_extract_string(line, '$.id') AS id,
         CAST(json_extract_string(line, '$.meta.versionId') AS BIGINT) AS version,
         false AS deleted, line
  FROM read_csv('{base}', columns = {{'line': 'VARCHAR'}}, header = false, delim = '\\x01',
                quote = '', escape = '', auto_detect = false);
"""
STAGE = """
CREATE OR REPLACE TABLE s AS
  WITH v AS (
    SELECT json_extract_string(line, '$.id') AS id,
           CAST(json_extract_string(line, '$.meta.versionId') AS BIGINT) AS version,
           false AS deleted, line
    FROM read_csv({patients}, columns = {{'line': 'VARCHAR'}}, header = false,
                  delim = '\\x01', quote = '', escape = '', auto_detect = false)
    UNION ALL
    SELECT regexp_extract(json_extract_string(line, '$.entry[0].request.url'),
                          '^Patient/(.+)$', 1) AS id,
           CAST(regexp_extract(json_extract_string(line, '$.entry[0].request.ifMatch'),
                               '^W/"([0-9]+)"$', 1) AS BIGINT) + 1 AS version,
           true AS deleted, NULL AS line
    FROM read_csv({deletions}, columns = {{'line': 'VARCHAR'}}, header = false,
                  delim = '\\x01', quote = '', escape = '', auto_detect = false)
  )
  SELECT * FROM v QUALIFY row_number() OVER (PARTITION BY id ORDER BY version DESC) = 1;
MERGE INTO t USING s ON t.id = s.id
  WHEN MATCHED AND s.version > t.version THEN UPDATE SET
    version = s.version, deleted = s.deleted, line = s.line
  WHEN NOT MATCHED THEN INSERT (id, version, deleted, line)
    VALUES (s.id, s.version, s.deleted, s.line);
"""


def sql_list(paths: list[Path]) -> str:
    return "[" + ", ".join(f"'{p.as_posix()}'" for p in paths) + "]"


def test_a_daily_job_merged_by_duckdb_ends_in_the_snapshot_byte_for_byte(tmp_path):
    """Epoch layer, then --continue batches (no --seed, --count or --since: all from the
    layer's manifests), merged with DuckDB MERGE INTO on id with the version as precombine:
    the live rows are exactly the lines of the snapshot at the last batch's as-of."""
    lake, snap = tmp_path / "lake", tmp_path / "snap"
    ok(cli(*POPULATION, "--as-of", AS_OF, "--format", "ndjson", "--records-per-file", "7000",
           "--output", str(lake)))  # fmt: skip
    for end in ENDS:
        summary = ok(cli("--output", str(lake), "--continue", "--as-of", end))
        assert "wrote batch" in summary and "versions" in summary
    again = cli("--output", str(lake), "--continue", "--as-of", ENDS[-1])
    assert again.returncode == 0 and "nothing to write" in again.stderr
    snap_summary = ok(cli(*POPULATION, "--epoch", AS_OF, "--as-of", ENDS[-1], "--format",
                          "ndjson", "--output", str(snap)))  # fmt: skip

    manifests = sorted((lake / "cdc" / "_manifests").iterdir())
    assert [orjson.loads(p.read_bytes())["transactionTime"] for p in manifests] == list(ENDS)
    con = duckdb.connect()
    con.execute(MERGE.format(base=(lake / "patient" / "*.ndjson").as_posix()))
    deletions = 0
    for manifest in manifests:
        m = orjson.loads(manifest.read_bytes())
        assert m["request"].split(" --since ")[1].split()[0] == m["extension"]["batch"]["since"]
        patients = [lake / e["url"] for e in m["output"]]
        deleted = [lake / e["url"] for e in m["deleted"]]
        assert sum(e["count"] for e in m["output"]) == len(
            [x for p in patients for x in p.read_bytes().splitlines()]
        )
        deletions += sum(e["count"] for e in m["deleted"])
        if not deleted:  # read_csv needs a file: an empty one stands in
            deleted = [tmp_path / "empty.ndjson"]
            deleted[0].write_bytes(b"")
        con.execute(STAGE.format(patients=sql_list(patients), deletions=sql_list(deleted)))
    assert deletions > 0  # records entered in error were deleted along the way
    live = {r[0].encode() for r in con.execute("SELECT line FROM t WHERE NOT deleted").fetchall()}
    expected = lines(snap, "patient/*.ndjson")
    assert len(live) == len(expected) and live == set(expected)
    gone = con.execute("SELECT count(*) FROM t WHERE deleted").fetchone()[0]
    assert gone == deletions
    # the snapshot layer's manifest counts what it holds; its transactionTime is the as-of
    sm = orjson.loads((snap / "_manifest.json").read_bytes())
    assert sm["transactionTime"] == ENDS[-1]
    assert sum(e["count"] for e in sm["output"] if e["type"] == "Patient") == len(expected)
    assert f"wrote {len(expected):,} patients" in snap_summary


BATCH = ("--epoch", AS_OF, "--since", AS_OF, "--as-of", "2026-04-01T00:00:00Z")
FAULTS = ("--late", "0.1", "--duplicate", "0.1", "--out-of-order", "0.2")


@pytest.mark.parametrize("fmt", ["ndjson", "json"])
def test_batch_bytes_do_not_depend_on_workers_or_shards(tmp_path, fmt):
    common = (*POPULATION[:2], "--count", "6000", *BATCH, *FAULTS, "--format", fmt, "--gzip",
              "--records-per-file", "1500")  # fmt: skip
    one = one_pool_shards(tmp_path, common, workers=3)
    assert any(k.startswith("cdc/patient/ingest_date=2026-04-01/") for k in one)


def test_stdout_batch_matches_the_api_and_deletions_are_bulk_data_bundles():
    args = ("--seed", "3", "--count", COUNT, "--epoch", AS_OF, "--since", AS_OF)
    args += ("--as-of", "2026-10-13T00:00:00Z", "--versions", "latest")
    out = subprocess.run(
        [sys.executable, str(SCRIPT), *args], capture_output=True, cwd=ROOT, timeout=300
    )
    assert out.returncode == 0, out.stderr
    plan = g.make_plan(3, AS_OF)
    versions = g.changes(plan, int(COUNT), AS_OF, "2026-10-13T00:00:00Z", latest=True)
    assert out.stdout.splitlines() == [g.version_json(plan, v) for v in versions]
    bundles = [
        orjson.loads(x)
        for x in out.stdout.splitlines()
        if x.startswith(b'{"resourceType":"Bundle"')
    ]
    assert bundles, "a year of 20,000 patients deletes some records entered in error"
    from fhir.resources.R4B.bundle import Bundle

    for b in bundles:
        Bundle.model_validate(b)
        (entry,) = b["entry"]
        assert b["type"] == "transaction" and entry["request"]["method"] == "DELETE"
        assert entry["request"]["url"].startswith("Patient/") and "resource" not in entry
    ids = [orjson.loads(x).get("id") for x in out.stdout.splitlines()]
    patients = [i for i in ids if i]
    assert len(patients) == len(set(patients))  # latest: one line per patient


def test_batches_are_append_only_and_belong_to_their_population(tmp_path):
    lake = tmp_path / "lake"
    ok(cli(*POPULATION[:2], "--count", "3000", "--as-of", AS_OF, "--format", "ndjson",
           "--output", str(lake)))  # fmt: skip
    ok(cli("--output", str(lake), "--continue", "--as-of", "2026-01-01T00:00:00Z"))
    before = tree(lake)
    ok(cli("--output", str(lake), "--continue", "--as-of", "2026-02-01T00:00:00Z"))
    after = tree(lake)
    assert {k: v for k, v in after.items() if k in before} == before  # nothing rewritten
    assert len(after) > len(before)
    same = ("--seed", "7", "--count", "3000", "--epoch", AS_OF, "--format", "ndjson")
    batch = (*same, "--since", "2026-01-01T00:00:00Z", "--as-of", "2026-02-01T00:00:00Z")
    ok(cli(*batch, "--output", str(lake)))  # our own batch again: the same bytes
    assert tree(lake) == after
    other = cli(*batch, "--late", "0.5", "--output", str(lake))
    assert other.returncode == 1 and "already holds batch" in one_line(other)
    assert tree(lake) == after
    ok(cli(*batch, "--late", "0.5", "--output", str(lake), "--overwrite"))
    foreign = cli("--seed", "8", *batch[2:], "--output", str(lake))
    assert foreign.returncode == 1 and "another population" in one_line(foreign)


@pytest.mark.parametrize(
    "args, message",
    [
        (("--count", "5", "--since", AS_OF), "--since needs --epoch"),
        (("--count", "5", "--epoch", AS_OF, "--late", "0.1"), "--late needs --since"),
        (("--epoch", AS_OF), "--epoch needs --count"),
        (("--count", "5", "--epoch", AS_OF, "--start", "3"), "--start cannot be combined"),
        (("--count", "5", "--epoch", AS_OF, "--since", AS_OF, "--late", "2"), "--late must be"),
        (("--count", "5", "--epoch", AS_OF, "--as-of", "2020-01-01T00:00:00Z"), "before --epoch"),
        (
            ("--count", "5", "--epoch", AS_OF, "--since", "2026-02-01", "--as-of", "2026-01-01"),
            "before --since",
        ),
        (("--continue", "--as-of", AS_OF), "--continue needs --output"),
        (("--continue", "--as-of", AS_OF, "--seed", "1", "--output", "x"), "takes --seed"),
    ],
)
def test_bad_living_arguments_are_one_line_usage_errors(args, message):
    result = cli(*args)
    assert result.returncode == 2 and message in one_line(result), result.stderr


def test_continue_without_a_layer_is_one_line_exit_1(tmp_path):
    result = cli("--output", str(tmp_path / "nothing"), "--continue", "--as-of", AS_OF)
    assert result.returncode == 1 and "to continue" in one_line(result)


def test_batches_on_s3_have_the_local_keys_and_bytes(s3_throwaway_server, tmp_path):
    """The same daily job on a real S3 server (rclone) and on disk: the same keys and bytes,
    gzip and per-file JSON included; --continue reads the layer's manifests from S3."""
    from test_s3 import objects

    server = s3_throwaway_server
    bucket = server.create_bucket()
    url = f"s3://{bucket}/lake/bronze"
    local = tmp_path / "local"
    base = ("--seed", "7", "--count", "1500", "--states", "VT,NH", "--as-of", AS_OF, "--gzip")
    env = server.endpoint.env()
    endpoint = ("--endpoint-url", server.endpoint.endpoint_url)
    for root, extra in ((str(local), ()), (url, endpoint)):
        ok(cli(*base, "--output", root, *extra, env=env))
        for end in ENDS[:2]:
            ok(cli("--output", root, "--continue", "--as-of", end, *extra, env=env))
    stored = objects(server.client(), bucket, "lake/bronze")
    on_disk = tree(local)
    batch = [k for k in stored if k.startswith("cdc/")]
    assert batch and sorted(stored) == sorted(on_disk)
    assert all(k.endswith(".json.gz") for k in batch if k.startswith("cdc/patient"))
    for key, body in stored.items():
        assert body == (local / key).read_bytes(), key


def test_worst_case_version_is_under_1_kb():
    """A changed patient's record is an epoch record with another ZIP, hospital or death and a
    longer versionId: the worst case (longest city, county, hospital, language, deceased) with a
    six-digit versionId still stays under 1,024 bytes (the epoch's worst case has a microsecond
    lastUpdated; a change's instant has whole seconds)."""
    from record_shapes import maximise_cms_fields

    plan = g.make_plan(0, "2025-10-13T02:22:22.245910Z")
    record = maximise_cms_fields(g.build_record(plan, g._MAX_INDEX), plan)
    record["meta"] = {"versionId": "999999", "lastUpdated": "2099-12-31T23:59:59Z"}
    assert len(orjson.dumps(record)) < 1024


def test_continue_finishes_or_refuses_an_interrupted_batch(tmp_path):
    """A batch that died midway left its identity (cdc/_run/) and some files but no manifest:
    --continue with its as-of finishes it; with another as-of it is one line and exit 1;
    --overwrite deletes the unfinished batch and writes the new one."""
    lake = tmp_path / "lake"
    ok(cli("--seed", "7", "--count", "3000", "--as-of", AS_OF, "--format", "ndjson",
           "--output", str(lake)))  # fmt: skip
    end = "2026-01-01T00:00:00Z"
    plan = g.make_plan(7, AS_OF)
    window = g.Window(3000, end, AS_OF)
    spec = g.Bronze(root=str(lake), count=g._population_size(plan, 3000, end), format="ndjson",
                    window=window)  # fmt: skip
    name = g._batch_name(spec)
    (lake / "cdc" / "_run").mkdir(parents=True)
    (lake / "cdc" / "_run" / f"{name}.json").write_bytes(g._identity_bytes(plan, spec))
    partial = lake / "cdc" / "patient" / "ingest_date=2026-01-01" / f"{name}.Patient.000001.ndjson"
    partial.parent.mkdir(parents=True)
    partial.write_bytes(b'{"truncated"')
    refused = cli("--output", str(lake), "--continue", "--as-of", "2026-02-01T00:00:00Z")
    assert refused.returncode == 1 and f"unfinished batch {name}" in one_line(refused)
    ok(cli("--output", str(lake), "--continue", "--as-of", end))  # finishes it
    assert not (lake / "cdc" / "_run" / f"{name}.json").exists()
    assert partial.read_bytes().startswith(b'{"resourceType":"Patient"')
    finished = tree(lake)
    (lake / "cdc" / "_run" / "20260101T000000Z_20260115T000000Z.json").write_bytes(b"{}")
    ok(cli("--output", str(lake), "--continue", "--as-of", "2026-02-01T00:00:00Z", "--overwrite"))
    after = tree(lake)
    assert {k: v for k, v in after.items() if k in finished} == finished
    assert not (lake / "cdc" / "_run").exists() or not any((lake / "cdc" / "_run").iterdir())
