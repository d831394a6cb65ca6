"""Issue 20: two runs never mix, no orphans after kill -9, a clean re-run, one-line errors."""

from __future__ import annotations

import contextlib
import http.server
import io
import multiprocessing
import os
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import orjson
import pytest
from bronze_util import AS_OF, BASE, ROOT, SCRIPT, one_line, run_cli, tree
from s3server import S3Server
from test_s3 import objects

import fhir_patient_generator as g

# Private names used here (internals this file checks or drives directly): _S3Store,
# _bronze_from_args, _build_parser, _identity_bytes, _open_store, _plan_from_args, _write_unit

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


def test_two_runs_racing_into_one_s3_prefix_never_both_succeed(s3_throwaway_server: S3Server):
    """The race on the real rclone server (which ignores If-None-Match: the read-back claim).
    On its own server: finished runs delete their _run/ objects, after which rclone's VFS
    misses buckets made on disk (test_s3server_smoke) on the shared one."""
    s3_server = s3_throwaway_server
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


@pytest.mark.parametrize(
    "args",
    [
        ["--epoch", "9999-01-01", "--as-of", "9999-12-31"],
        ["--epoch", "9999-01-01", "--as-of", "9999-12-31T23:59:59.999999Z"],
        ["--epoch", "9999-01-01", "--since", "9999-06-01", "--as-of", "9999-12-31T23:59:59Z"]
        + ["--late", "1", "--duplicate", "1", "--out-of-order", "0.5"],
        ["--as-of", "9999-12-31T23:59:59.999999Z", "--profile", "us-core"],
    ],
)
def test_the_last_days_of_the_date_range_work(args):
    """The renderer's self-check moved a birth 100 years on: past 9999-12-31 (year 10036)."""
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--seed", "1", "--count", "30", *args],
        capture_output=True,
        timeout=120,
    )
    assert result.returncode == 0 and not result.stderr, result.stderr
    for line in result.stdout.splitlines():
        assert orjson.loads(line)["resourceType"] in ("Patient", "Bundle")


def test_a_change_batch_at_the_end_of_the_date_range_is_written_and_continued(tmp_path):
    root = str(tmp_path / "far")
    base = ["--seed", "1", "--count", "30", "--epoch", "9999-01-01", "--output", root, "--quiet"]
    assert g.main([*base, "--as-of", "9999-06-01", "--format", "ndjson", "--gzip"]) == 0
    end = "9999-12-31T23:59:59.999999Z"
    assert g.main(["--output", root, "--continue", "--as-of", end, "--quiet"]) == 0
    assert (tmp_path / "far/cdc/_manifests/99990601T000000Z_99991231T235959.999999Z.json").exists()


def unfinished(root: Path, seed: int = 7) -> None:
    """The state a run killed before its first unit leaves: its identity only."""
    args = g._build_parser().parse_args([*RACE, "--seed", str(seed), "--output", str(root)])
    plan = g._plan_from_args(args)  # private: the CLI's own plan and spec for these flags
    spec = g._bronze_from_args(args, plan, None)
    (root / "_run" / "done").mkdir(parents=True)
    (root / "_run" / "identity.json").write_bytes(g._identity_bytes(plan, spec))


@pytest.mark.parametrize(
    "marker",
    [
        b"10\n",  # the old marker: a count only
        b'{"records": 10, "files": 1, "check": {}}\n',
        b'{"records": 10, "files": 1, "check": {"patient/Patient.000002.ndjson": 12345}}\n',
        b"not json",
    ],
)
def test_a_forged_done_marker_does_not_skip_a_unit_never_written(tmp_path, marker):
    """A unit counts as done only if the files its marker names are there with their sizes."""
    root, fresh = tmp_path / "bronze", tmp_path / "fresh"
    unfinished(root)
    (root / "_run" / "done" / "000001").write_bytes(marker)
    args = [*RACE, "--seed", "7", "--quiet"]
    assert g.main([*args, "--output", str(root)]) == 0
    assert g.main([*args, "--output", str(fresh)]) == 0
    assert tree(root) == tree(fresh)


def test_a_real_done_marker_still_resumes(tmp_path):
    """A marker written by a unit whose file is intact is kept (the unit is not rewritten)."""
    root = tmp_path / "bronze"
    args = [*RACE, "--seed", "7", "--quiet", "--output", str(root)]
    unfinished(root)
    plan = g.make_plan(7, AS_OF)
    spec = g.Bronze(root=str(root), count=40, format="ndjson", records_per_file=10)
    store = g._open_store(spec)
    g._write_unit(plan, spec, store, 1)
    unit = root / "patient" / "Patient.000002.ndjson"
    before = unit.stat().st_mtime_ns
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        assert g.main(args) == 0
    assert "(resumed: 10 kept" in err.getvalue() and unit.stat().st_mtime_ns == before


def one_liner(doc: Path) -> str:
    """The DuckDB one-line Python command of a document (the `python -c "import duckdb ..."`)."""
    (line,) = [s for s in doc.read_text().splitlines() if s.startswith('python -c "import duckdb')]
    return line


def test_the_readmes_duckdb_one_liner_runs_as_written(tmp_path):
    """Run README.md's command itself (and check bronze.md shows the same), in a folder laid
    out as the README says: ./lake/bronze from the first command, docs/analytics.sql."""
    readme = one_liner(ROOT / "README.md")
    assert one_liner(ROOT / "docs" / "bronze.md") == readme
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "analytics.sql").write_bytes((ROOT / "docs/analytics.sql").read_bytes())
    layer = str(tmp_path / "lake" / "bronze")
    assert g.main([*RACE, "--seed", "7", "--output", layer, "--quiet"]) == 0
    command = shlex.split(readme)
    assert command[0] == "python"
    result = subprocess.run(
        [sys.executable, *command[1:]], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    for column in ("state", "county", "ccn", "dangling"):  # every query's table was shown
        assert column in result.stdout


EPOCH = ["--seed", "7", "--count", "30", "--epoch", "2026-01-01", "--quiet"]


def continued(tmp_path: Path, edit) -> tuple[int, str]:
    """A layer whose _manifest.json edit(generator block) changed, then --continue over it."""
    root = tmp_path / "layer"
    assert (
        g.main([*EPOCH, "--as-of", "2026-02-01", "--format", "ndjson", "--output", str(root)]) == 0
    )
    path = root / "_manifest.json"
    manifest = orjson.loads(path.read_bytes())
    edit(manifest["extension"]["generator"])
    path.write_bytes(orjson.dumps(manifest))
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = g.main(["--output", str(root), "--continue", "--as-of", "2026-03-01", "--quiet"])
    return code, err.getvalue()


def setter(name: str, value):
    """An edit setting the generator block's field name (dotted: options.min_age) to value."""

    def edit(block: dict) -> None:
        keys = name.split(".")
        for k in keys[:-1]:
            block = block[k]
        block[keys[-1]] = value

    return edit


def dropper(name: str):
    """An edit removing the generator block's field name."""

    def edit(block: dict) -> None:
        del block[name]

    return edit


TAMPERED = {
    "format csv": (setter("format", "csv"), "format"),
    "records_per_file 0": (setter("records_per_file", 0), "records_per_file"),
    "records_per_file x": (setter("records_per_file", "x"), "records_per_file"),
    "records_per_file null": (setter("records_per_file", None), "records_per_file"),
    "options null": (setter("options", None), "options"),
    "options list": (setter("options", [1]), "options"),
    "options.min_age -1": (setter("options.min_age", -1), "options"),
    "options.min_age > max_age": (lambda b: b["options"].update(min_age=60, max_age=50), "options"),
    "options.profile x": (setter("options.profile", "x"), "options"),
    "options.states x": (setter("options.states", ["XX"]), "options"),
    "options missing key": (lambda b: b["options"].pop("profile"), "options"),
    "options extra key": (setter("options.colour", "red"), "options"),
    "seed x": (setter("seed", "x"), "seed"),
    "seed -1": (setter("seed", -1), "seed"),
    "seed true": (setter("seed", True), "seed"),
    "count 0": (setter("count", 0), "count"),
    "count 1.5": (setter("count", 1.5), "count"),
    "gzip 1": (setter("gzip", 1), "gzip"),
    "gzip_level with gzip false": (setter("gzip_level", 3), "gzip_level"),
    "epoch x": (setter("epoch", "x"), "epoch"),
    "epoch 5": (setter("epoch", 5), "epoch"),
    "as_of null": (setter("as_of", None), "as_of"),
    "as_of before epoch": (setter("as_of", "2025-01-01T00:00:00Z"), "as_of"),
    "start 5": (setter("start", 5), "start"),
    "no seed": (dropper("seed"), "seed"),
    "no format": (dropper("format"), "format"),
    "generator a list": (lambda b: b.clear() or b.update({"x": 1}), "seed"),
}


@pytest.mark.parametrize("case", TAMPERED)
def test_continue_over_a_tampered_manifest_is_one_line_naming_the_file_and_field(tmp_path, case):
    edit, field_name = TAMPERED[case]
    code, err = continued(tmp_path, edit)
    assert code == 1 and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert "_manifest.json" in err and f"extension.generator.{field_name}" in err, err
    assert "cannot be continued" in err, err
    for flag in ("--min-age", "--profile", "--states", "--records-per-file", "--format"):
        assert flag not in err, err  # flags the user never passed


def test_continue_over_an_untouched_manifest_still_works(tmp_path):
    code, err = continued(tmp_path, lambda block: None)
    assert code == 0 and err.startswith("wrote batch 20260201T000000Z_20260301T000000Z"), err


def test_the_readmes_api_example_runs_with_the_dev_requirements_only():
    """README.md's API example, as written (it used pandas, which nothing installs)."""
    text = (ROOT / "README.md").read_text()
    start = text.index("```python\nfrom fhir_patient_generator import generate_patient,")
    code = text[start + len("```python\n") : text.index("```", start + 10)]
    assert "pandas" not in code
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)  # noqa: S102 - the README's own code
    assert 0 < namespace["dead"]["CA"] < namespace["alive"]["CA"]


STUB_PYTHON3 = """#!/bin/sh
# a stand-in for `python3 -m venv DIR`: DIR/bin/python, ruff and pip all succeed at once
mkdir -p "$3/bin"
for tool in python ruff; do printf '#!/bin/sh\\nexit 0\\n' > "$3/bin/$tool"; done
chmod +x "$3/bin/python" "$3/bin/ruff"
"""


@pytest.mark.parametrize("keep", [False, True])
def test_ci_run_removes_its_throwaway_virtualenv_and_keeps_ci_venv(tmp_path, keep):
    """.ci/run with stand-ins for python3/pip/ruff/pytest: its mktemp virtualenv is gone after
    the run (it used to leave ~1.2 GB in /tmp every time); a CI_VENV is kept for reuse."""
    stubs, scratch = tmp_path / "stubs", tmp_path / "tmp"
    stubs.mkdir()
    scratch.mkdir()
    (stubs / "python3").write_text(STUB_PYTHON3)
    (stubs / "python3").chmod(0o755)
    env = {**os.environ, "PATH": f"{stubs}:/usr/bin:/bin", "TMPDIR": str(scratch)}
    env.pop("CI_VENV", None)
    if keep:
        env["CI_VENV"] = str(tmp_path / "kept")
    result = subprocess.run(
        ["bash", str(ROOT / ".ci" / "run")], env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert list(scratch.iterdir()) == []
    assert (tmp_path / "kept" / "bin" / "python").exists() == keep


class _ChecksummedError(http.server.BaseHTTPRequestHandler):
    """An S3 endpoint that answers every GET with a 500 carrying a checksum header, as rclone
    answered a read racing a write: botocore's default response validation failed parsing it
    (AttributeError, a traceback) instead of raising a ClientError."""

    def do_GET(self) -> None:
        body = b"internal error"
        self.send_response(500)
        self.send_header("x-amz-checksum-crc32", "AAAAAA==")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


def test_a_server_error_with_a_checksum_header_is_one_line_not_a_traceback(monkeypatch):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _ChecksummedError)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        for name, value in {"AWS_ACCESS_KEY_ID": "a", "AWS_SECRET_ACCESS_KEY": "b"}.items():
            monkeypatch.setenv(name, value)
        monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
        spec = g.Bronze(root="s3://bucket/b", count=1, endpoint_url=server_url(server))
        store = g._S3Store(spec)
        with pytest.raises(g.BronzeError) as failed:
            store.read("_run/identity.json")
        assert "500" in str(failed.value) and "\n" not in str(failed.value)
    finally:
        server.shutdown()


def server_url(server: http.server.HTTPServer) -> str:
    return f"http://127.0.0.1:{server.server_address[1]}"
