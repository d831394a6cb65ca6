"""Workers, shards and --start-index: any split of the work units writes the same bytes."""

from __future__ import annotations

import subprocess
import sys

import orjson
from bronze_util import AS_OF, SCRIPT, records, run_cli, tree

import fhir_patient_generator as g

NDJSON = ("--count", "20000", "--format", "ndjson", "--gzip", "--records-per-file", "1500")


def test_workers_and_the_union_of_shards_write_the_same_files_as_one_process(tmp_path):
    single, workers, shards = tmp_path / "single", tmp_path / "workers", tmp_path / "shards"
    assert run_cli(*NDJSON, "--output", str(single)).returncode == 0
    result = run_cli(*NDJSON, "--output", str(workers), "--workers", "2")
    assert result.returncode == 0, result.stderr
    for k in range(3):
        result = run_cli(*NDJSON, "--output", str(shards), "--shard", f"{k}/3", "--quiet")
        assert result.returncode == 0, result.stderr
        assert f"(shard {k}/3)" in result.stderr
    expected = tree(single)
    assert len(expected) == 14 + 1 + 1  # 14 patient files, 1 organization file, the manifest
    assert tree(workers) == expected
    assert tree(shards) == expected


def test_a_shard_writes_only_its_units_plus_organizations_and_the_manifest(tmp_path):
    root = tmp_path / "b"
    assert run_cli(*NDJSON, "--output", str(root), "--shard", "1/4").returncode == 0
    names = sorted(p.name for p in (root / "patient").iterdir())
    assert names == [f"Patient.{n:06d}.ndjson.gz" for n in (2, 6, 10, 14)]  # units 1, 5, 9, 13
    assert (root / "organization" / "Organization.000001.ndjson.gz").exists()
    assert (root / "_manifest.json").exists()


def test_per_file_json_with_workers_matches_one_process(tmp_path):
    args = ("--count", "3000", "--records-per-file", "500")
    assert run_cli(*args, "--output", str(tmp_path / "a")).returncode == 0
    assert run_cli(*args, "--output", str(tmp_path / "b"), "--workers", "2").returncode == 0
    assert tree(tmp_path / "a") == tree(tmp_path / "b")


def test_start_index_continues_the_same_patients(tmp_path):
    whole, tail = tmp_path / "whole", tmp_path / "tail"
    assert run_cli("--count", "1000", "--output", str(whole)).returncode == 0
    result = run_cli("--count", "400", "--start-index", "600", "--output", str(tail))
    assert result.returncode == 0, result.stderr
    a, b = tree(whole), tree(tail)
    tail_patients = {k: v for k, v in b.items() if k.startswith("patient/")}
    assert len(tail_patients) == 400
    assert all(a[k] == v for k, v in tail_patients.items())  # same files, same bytes
    manifest = orjson.loads((tail / "_manifest.json").read_bytes())
    assert manifest["extension"]["generator"]["start"] == 600
    assert "--start 600" in manifest["request"]

    nd = tmp_path / "nd"
    args = ("--count", "250", "--start-index", "600", "--format", "ndjson")
    assert run_cli(*args, "--records-per-file", "100", "--output", str(nd)).returncode == 0
    plan = g.make_plan(7, AS_OF)
    got = [r for n in (1, 2, 3) for r in records(nd / "patient" / f"Patient.00000{n}.ndjson")]
    assert got == [g.build_record(plan, i) for i in range(600, 850)]


def test_the_manifest_request_reproduces_the_run(tmp_path):
    first = tmp_path / "first"
    args = ("--count", "300", "--format", "ndjson", "--states", "NY,CA", "--min-age", "65")
    assert run_cli(*args, "--output", str(first)).returncode == 0
    request = orjson.loads((first / "_manifest.json").read_bytes())["request"].split()[1:]
    again = tmp_path / "again"
    subprocess.run([sys.executable, str(SCRIPT), *request, "--output", str(again)], check=True)
    assert tree(first) == tree(again)
