"""Interrupted runs resume: the same command finishes the run with the bytes of an
uninterrupted one (locally and on S3); another run's unfinished data is refused; temp files
never show up where readers glob (patient/*)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from bronze_util import AS_OF, BASE, SCRIPT, one_line, run_cli, tree
from s3server import S3Server
from test_s3 import objects, s3_cli

import fhir_patient_generator as g

# Private names used here (internals this file checks or drives directly): _done_marker,
# _identity_bytes


def start(args: list[str], env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    """The CLI with BASE seed and as-of, running in the background."""
    return subprocess.Popen(
        [sys.executable, str(SCRIPT), *BASE, *args, "--quiet"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "NO_PROXY": "127.0.0.1,localhost", **(env or {})},
    )


def wait_until(ready, proc: subprocess.Popen[str], what: str) -> None:
    """Poll ready() until it holds; fail if the run ended first (the test would prove nothing)."""
    deadline = time.monotonic() + 120
    while not ready():
        assert proc.poll() is None, f"the run ended before {what}: {proc.stderr.read()}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def done_markers(root: Path) -> int:
    folder = root / "_run" / "done"
    return sum(1 for _ in os.scandir(folder)) if folder.exists() else 0


def hidden_in_patient(root: Path) -> list[str]:
    folder = root / "patient"
    return [e.name for e in os.scandir(folder) if e.name.startswith(".")] if folder.exists() else []


VARIANTS = {
    "ndjson": ["--count", "200000", "--format", "ndjson", "--records-per-file", "10000"],
    "ndjson-gzip-workers": [
        *("--count", "200000", "--format", "ndjson", "--records-per-file", "10000"),
        *("--gzip", "--workers", "2"),
    ],
    "json": ["--count", "12000", "--records-per-file", "400"],
}


@pytest.mark.parametrize("variant", VARIANTS)
def test_interrupted_run_resumes_to_the_bytes_of_an_uninterrupted_run(tmp_path, variant):
    args, root = VARIANTS[variant], tmp_path / "bronze"
    proc = start([*args, "--output", str(root)])
    wait_until(lambda: done_markers(root) >= 3, proc, "three units were done")
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "run the same command again to resume" in err
    assert not (root / "_manifest.json").exists() and done_markers(root) >= 3
    assert not hidden_in_patient(root)

    resumed = run_cli(*args, "--output", str(root), "--quiet")
    assert resumed.returncode == 0, resumed.stderr
    assert "(resumed: " in one_line(resumed) and "kept from the interrupted run)" in resumed.stderr
    assert run_cli(*args, "--output", str(tmp_path / "fresh")).returncode == 0
    assert tree(root) == tree(tmp_path / "fresh")  # _run/ is gone too


@pytest.mark.parametrize("variant", ["ndjson", "json"])
def test_sigkill_leaves_no_temp_file_under_patient_and_a_rerun_resumes(tmp_path, variant):
    args = VARIANTS[variant]
    if variant == "ndjson":  # large files: the kill lands while one is being written
        args = ["--count", "300000", "--format", "ndjson", "--records-per-file", "60000"]
    root = tmp_path / "bronze"
    proc = start([*args, "--output", str(root)])
    wait_until(lambda: done_markers(root) >= 2, proc, "two units were done")
    proc.kill()
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert not hidden_in_patient(root)
    stale = list((root / "_run" / "tmp").iterdir())  # the killed writer's, if any, is here

    rerun = start([*args, "--output", str(root)])
    while rerun.poll() is None:  # never a temp file where readers glob, while it resumes
        assert not hidden_in_patient(root)
        time.sleep(0.01)
    assert rerun.returncode == 0, rerun.stderr.read()
    assert not any(p.exists() for p in stale)  # the dead writer's temp file was removed
    assert run_cli(*args, "--output", str(tmp_path / "fresh")).returncode == 0
    assert tree(root) == tree(tmp_path / "fresh")


def test_another_runs_unfinished_data_is_refused_ours_resumes_overwrite_replaces(tmp_path):
    """The state a killed run leaves (no manifest, its identity, a done marker), built directly."""
    args = ["--count", "1000", "--format", "ndjson", "--records-per-file", "300"]
    root, full = tmp_path / "bronze", tmp_path / "full"
    assert run_cli(*args, "--output", str(full)).returncode == 0
    assert run_cli(*args, "--output", str(root)).returncode == 0
    (root / "_manifest.json").unlink()
    spec = g.Bronze(root=str(root), count=1000, format="ndjson", records_per_file=300)
    (root / "_run" / "done").mkdir(parents=True)
    (root / "_run" / "identity.json").write_bytes(g._identity_bytes(g.make_plan(7, AS_OF), spec))
    key = "patient/Patient.000002.ndjson"  # unit 1's file, as its marker names it (private)
    marker = g._done_marker(300, [(key, (root / key).stat().st_size)])
    (root / "_run" / "done" / "000001").write_bytes(marker)
    unfinished = tree(root)

    other = run_cli("--count", "1000", "--format", "ndjson", "--seed", "8", "--output", str(root))
    assert other.returncode == 1
    assert "already holds another run's unfinished data (" in one_line(other)
    assert "seed 7" in other.stderr and "--overwrite" in other.stderr
    assert tree(root) == unfinished  # nothing written

    ours = run_cli(*args, "--output", str(root))
    assert ours.returncode == 0, ours.stderr
    assert "(resumed: 300 kept" in ours.stderr and tree(root) == tree(full)

    (root / "_manifest.json").unlink()  # unfinished again, then replaced by another run
    (root / "_run").mkdir()
    (root / "_run" / "identity.json").write_bytes(g._identity_bytes(g.make_plan(7, AS_OF), spec))
    new = ("--count", "50", "--seed", "8")
    replaced = run_cli(*new, "--output", str(root), "--overwrite")
    assert replaced.returncode == 0, replaced.stderr
    assert run_cli(*new, "--output", str(tmp_path / "fresh")).returncode == 0
    assert tree(root) == tree(tmp_path / "fresh")


def test_shards_share_run_and_the_last_one_to_finish_removes_it(tmp_path):
    args = ["--count", "5000", "--format", "ndjson", "--records-per-file", "1000"]
    root = tmp_path / "bronze"
    for k in (0, 1):
        assert run_cli(*args, "--output", str(root), "--shard", f"{k}/3").returncode == 0
        assert (root / "_run" / "identity.json").exists()  # shard 2 has not run yet
    assert sorted(p.name for p in (root / "_run" / "done").iterdir()) == [
        "000000",
        "000001",
        "000003",
        "000004",
    ]
    again = run_cli(*args, "--output", str(root), "--shard", "0/3")  # re-run: nothing to do
    assert again.returncode == 0 and "(resumed: 2,000 kept" in again.stderr
    assert run_cli(*args, "--output", str(root), "--shard", "2/3").returncode == 0
    assert not (root / "_run").exists()
    assert run_cli(*args, "--output", str(tmp_path / "one")).returncode == 0
    assert tree(root) == tree(tmp_path / "one")


def test_a_run_that_died_on_s3_resumes_to_the_same_objects(s3_throwaway_server: S3Server):
    server = s3_throwaway_server
    bucket, reference = server.create_bucket(), server.create_bucket()
    args = ["--count", "150000", "--format", "ndjson", "--records-per-file", "10000"]
    client = server.client()

    def markers() -> int:
        listing = client.list_objects_v2(Bucket=bucket, Prefix="bronze/_run/done/")
        return listing.get("KeyCount", 0)

    proc = start(
        [*args, "--output", f"s3://{bucket}/bronze", "--endpoint-url", server.endpoint_url],
        env=server.endpoint.env(),
    )
    wait_until(lambda: markers() >= 2, proc, "two units were uploaded")
    server.stop()  # the server dies mid-run: uploads fail, no manifest
    _, err = proc.communicate(timeout=180)
    assert proc.returncode == 1 and "error:" in err, err

    server.start()  # back, on a new port
    client = server.client()
    url = f"s3://{bucket}/bronze"
    resumed = s3_cli(server.endpoint, *args, "--output", url)
    assert resumed.returncode == 0, resumed.stderr
    assert "(resumed: " in one_line(resumed)
    fresh = s3_cli(server.endpoint, *args, "--output", f"s3://{reference}/bronze")
    assert fresh.returncode == 0, fresh.stderr
    got, want = objects(client, bucket, "bronze"), objects(client, reference, "bronze")
    got["_manifest.json"] = got["_manifest.json"].replace(bucket.encode(), reference.encode())
    assert got == want and not [k for k in got if k.startswith("_run/")]
