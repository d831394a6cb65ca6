"""Issue 20: two runs never mix, no orphans after kill -9, a clean re-run, one-line errors."""

from __future__ import annotations

import contextlib
import io
import multiprocessing
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import orjson
import pytest
from bronze_util import AS_OF, BASE, SCRIPT, one_line, run_cli, tree
from s3server import S3Server
from test_s3 import objects

import fhir_patient_generator as g

RACE = ["--as-of", AS_OF, "--count", "40", "--format", "ndjson", "--records-per-file", "10"]


def _racer(barrier, seed: int, root: str, queue, env: dict[str, str]) -> None:
    """One run of main() into root, released by the barrier together with its rival."""
    os.environ.update(env)
    err = io.StringIO()
    barrier.wait()
    with contextlib.redirect_stderr(err):
        code = g.main([*RACE, "--seed", str(seed), "--output", root, "--quiet"])
    queue.put((seed, code, err.getvalue()))


def race(root: str, env: dict[str, str] | None = None) -> list[tuple[int, int, str]]:
    """Two runs (seeds 7 and 8) into one root, released at the same instant by a barrier
    (fork: both have imported the module; only main() is raced)."""
    ctx = multiprocessing.get_context("fork")
    barrier, queue = ctx.Barrier(2), ctx.Queue()
    procs = [ctx.Process(target=_racer, args=(barrier, s, root, queue, env or {})) for s in (7, 8)]
    for p in procs:
        p.start()
    results = sorted(queue.get(timeout=60) for _ in procs)
    for p in procs:
        p.join(timeout=60)
    return results


def test_two_runs_racing_into_one_empty_folder_never_both_succeed(tmp_path):
    """Exactly one run wins each of 30 races; the loser says why in one line, exit 1; the
    folder holds exactly the winner's layer (the bytes of the winner's run on its own)."""
    reference = {}
    for seed in (7, 8):
        ref = tmp_path / f"ref{seed}"
        assert g.main([*RACE, "--seed", str(seed), "--output", str(ref), "--quiet"]) == 0
        reference[seed] = tree(ref)
    for trial in range(30):
        root = tmp_path / f"race{trial}"
        results = race(str(root))
        winners = [seed for seed, code, _ in results if code == 0]
        assert len(winners) == 1, (trial, results)
        (loser,) = [r for r in results if r[1] != 0]
        assert loser[1] == 1 and len(loser[2].strip().splitlines()) == 1, loser
        assert "Traceback" not in loser[2] and "--overwrite" in loser[2], loser
        assert tree(root) == reference[winners[0]], trial


def test_s3_server_ignores_if_none_match_so_the_claim_reads_back(s3_server: S3Server):
    """What the S3 claim relies on, checked on the test server: rclone serve s3 (1.75) accepts a
    second PUT with If-None-Match: * (AWS S3 answers 412 PreconditionFailed), so S3Store.create
    falls back to a read-back after S3_CLAIM_SETTLE; if rclone starts to honour it, this fails
    and the fallback is no longer exercised here."""
    client, bucket = s3_server.client(), s3_server.create_bucket()
    client.put_object(Bucket=bucket, Key="k", Body=b"1", IfNoneMatch="*")
    client.put_object(Bucket=bucket, Key="k", Body=b"2", IfNoneMatch="*")
    assert client.get_object(Bucket=bucket, Key="k")["Body"].read() == b"2"


def test_two_runs_racing_into_one_s3_prefix_never_both_succeed(s3_server: S3Server):
    """The race on the real rclone server (which ignores If-None-Match: the read-back claim)."""
    env = s3_server.endpoint.env()
    client = s3_server.client()
    ref = {}
    for seed in (7, 8):
        bucket = s3_server.create_bucket()
        with pytest.MonkeyPatch.context() as mp:
            for k, v in env.items():
                mp.setenv(k, v)
            code = g.main([*RACE, "--seed", str(seed), "--output", f"s3://{bucket}/b", "--quiet"])
        assert code == 0
        ref[seed] = objects(client, bucket, "b")
    for trial in range(8):
        bucket = s3_server.create_bucket()
        results = race(f"s3://{bucket}/b", env)
        winners = [seed for seed, code, _ in results if code == 0]
        assert len(winners) == 1, (trial, results)
        (loser,) = [r for r in results if r[1] != 0]
        assert loser[1] == 1 and len(loser[2].strip().splitlines()) == 1, loser
        got = objects(client, bucket, "b")
        want = ref[winners[0]]
        strip = {k: v for k, v in got.items() if k != "_manifest.json"}
        assert strip == {k: v for k, v in want.items() if k != "_manifest.json"}, trial
        assert (
            orjson.loads(got["_manifest.json"])["extension"]
            == orjson.loads(want["_manifest.json"])["extension"]
        )


def children(pid: int) -> set[int]:
    """PIDs whose parent is pid (from /proc)."""
    out = set()
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                stat = Path(f"/proc/{entry.name}/stat").read_text()
                if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                    out.add(int(entry.name))
    return out


def alive(pid: int) -> bool:
    """Running (not gone, not a zombie waiting for a reaper)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


WORKERS_RUN = ["--count", "200000", "--format", "ndjson", "--records-per-file", "5000"]


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc (Linux)")
def test_kill_9_of_the_main_process_ends_its_workers_and_the_pipe(tmp_path):
    """kill -9 of a --workers run's main process (as the OOM killer does): its workers and the
    resource tracker exit within seconds, so a pipe reading the output (`2>&1 | cat`) ends;
    a re-run right after resumes the run and removes _run/ (issue 20.2 and 20.3)."""
    root = tmp_path / "bronze"
    proc = subprocess.Popen(
        [sys.executable, str(SCRIPT), *BASE, *WORKERS_RUN, "--workers", "2"]
        + ["--gzip", "--output", str(root), "--quiet"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 120
    while len(kids := children(proc.pid)) < 3 or not (root / "_run" / "done").exists():
        assert proc.poll() is None, proc.stdout.read()
        assert time.monotonic() < deadline, "the workers never started"
        time.sleep(0.05)
    kids = children(proc.pid)  # two workers and the resource tracker
    proc.kill()
    proc.wait(timeout=30)
    eof = threading.Event()
    reader = threading.Thread(target=lambda: (proc.stdout.read(), eof.set()), daemon=True)
    reader.start()
    deadline = time.monotonic() + 30
    while any(alive(k) for k in kids) and time.monotonic() < deadline:
        time.sleep(0.1)
    left = [k for k in kids if alive(k)]
    for k in left:  # never leave them behind, even when the test fails
        with contextlib.suppress(OSError):
            os.kill(k, signal.SIGKILL)
    assert not left, f"{len(left)} of {len(kids)} children outlived the main process by 30 s"
    assert eof.wait(10), "the pipe did not end"
    # ... and a re-run right away resumes it and leaves nothing behind (the killed workers'
    # partial .gz temp files included: zombies count as dead writers)
    rerun = run_cli(*WORKERS_RUN, "--workers", "2", "--gzip", "--output", str(root), "--quiet")
    assert rerun.returncode == 0, rerun.stderr
    assert not (root / "_run").exists()


def test_a_zombie_writers_temp_file_is_stale(tmp_path):
    """A killed worker stays a zombie until its reaper waits for it, and os.kill(pid, 0)
    succeeds on a zombie: its temp file must still count as stale, so the re-run removes it
    and _run/ (it used to keep both)."""
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    try:
        while alive(pid):  # not reaped: a zombie
            time.sleep(0.01)
        root = tmp_path / "bronze"
        args = [*RACE, "--seed", "7", "--output", str(root), "--quiet"]
        assert g.main(args) == 0
        stale = root / "_run" / "tmp" / f"patient.x.ndjson.gz.tmp-1-{pid}@{socket.gethostname()}"
        stale.parent.mkdir(parents=True)
        stale.write_bytes(b"partial")
        assert g.main(args) == 0
        assert not (root / "_run").exists()
    finally:
        os.waitpid(pid, 0)


def test_a_recycled_pid_does_not_keep_a_stale_temp_file(tmp_path):
    """The temp file's name records its writer's start time: a live process that now has the
    writer's pid (pid reuse) does not keep the dead writer's file."""
    root = tmp_path / "bronze"
    args = [*RACE, "--seed", "7", "--output", str(root), "--quiet"]
    assert g.main(args) == 0
    parent = os.getppid()  # alive, not us, started at another time than the name says
    name = f"patient.x.ndjson.tmp-1-{parent}+1@{socket.gethostname()}"
    stale = root / "_run" / "tmp" / name
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"partial")
    assert g.main(args) == 0
    assert not (root / "_run").exists()


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--output", "s3://bucket/x", "--endpoint-url", ""], "--endpoint-url is empty"),
        (["--output", "s3://Bad_Bucket!/x"], "not a valid S3 bucket name"),
        (["--output", "s3://ab/x"], "not a valid S3 bucket name"),
        (["--output", "s3://my..bucket/x"], "not a valid S3 bucket name"),
        (["--output", "s3://192.168.1.1/x"], "not a valid S3 bucket name"),
        (["--output", "s3://-bucket/x"], "not a valid S3 bucket name"),
        (["--output", "s3://" + "a" * 64 + "/x"], "not a valid S3 bucket name"),
    ],
)
def test_a_bad_endpoint_or_bucket_name_is_a_usage_error(args, says):
    """Both used to reach botocore: a 45-line traceback, a regex dump with exit 1."""
    result = run_cli("--count", "5", *args)
    assert result.returncode == 2 and says in one_line(result), result.stderr


def test_the_api_refuses_a_bad_bucket_name_with_value_error():
    with pytest.raises(ValueError, match="not a valid S3 bucket name"):
        g.write_bronze(g.make_plan(7, AS_OF), g.Bronze(root="s3://Bad_Bucket!/x", count=1))
