"""The bronze layer on a real S3-compatible server (rclone serve s3, see conftest.py)."""

from __future__ import annotations

import contextlib
import gzip
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from types import SimpleNamespace

import orjson
import pytest
from bronze_util import AS_OF, BASE, ROOT, one_line, run_cli, tree
from s3server import S3Endpoint, S3Server

import fhir_patient_generator as g

# Private names used here (internals this file checks or drives directly): _S3_CONNECT_TIMEOUT,
# _S3_MAX_ATTEMPTS, _S3_READ_TIMEOUT, _s3_client

NDJSON = ("--count", "5000", "--format", "ndjson", "--gzip", "--records-per-file", "2000")


def objects(client, bucket: str, prefix: str) -> dict[str, bytes]:
    """{key relative to prefix: body} of every object under prefix/."""
    out = {}
    for page in client.get_paginator("list_objects_v2").paginate(
        Bucket=bucket, Prefix=prefix + "/"
    ):
        for item in page.get("Contents", ()):
            body = client.get_object(Bucket=bucket, Key=item["Key"])["Body"].read()
            out[item["Key"].removeprefix(prefix + "/")] = body
    return out


def s3_cli(endpoint: S3Endpoint, *args: str, flag: bool = True):
    extra = ("--endpoint-url", endpoint.endpoint_url) if flag else ()
    return run_cli(*args, *extra, "--quiet", env=endpoint.env())


def test_ndjson_gzip_on_s3_has_the_local_keys_and_bytes(s3_throwaway_server: S3Server, tmp_path):
    """On its own server: a finished run deletes its _run/ objects, and rclone's VFS then
    misses buckets made on disk (test_s3server_smoke) on the shared one."""
    s3_server, s3_bucket = s3_throwaway_server, s3_throwaway_server.create_bucket()
    local = tmp_path / "local"
    assert run_cli(*NDJSON, "--output", str(local)).returncode == 0
    url = f"s3://{s3_bucket}/lake/bronze"
    result = s3_cli(s3_server.endpoint, *NDJSON, "--output", url)
    assert result.returncode == 0, result.stderr
    assert one_line(result).endswith("patients/s)") and url in result.stderr
    stored = objects(s3_server.client(), s3_bucket, "lake/bronze")
    local_files = {k: (local / k).read_bytes() for k in tree(local)}
    assert (
        sorted(stored)
        == sorted(local_files)
        == [
            "_manifest.json",
            "organization/Organization.000001.ndjson.gz",
            "patient/Patient.000001.ndjson.gz",
            "patient/Patient.000002.ndjson.gz",
            "patient/Patient.000003.ndjson.gz",
        ]
    )
    for key, body in stored.items():  # the manifest too: its urls are relative
        assert body == local_files[key], key
    lines = b"".join(
        gzip.decompress(stored[f"patient/Patient.00000{n}.ndjson.gz"]) for n in (1, 2, 3)
    )
    plan = g.make_plan(7, AS_OF)
    assert lines.splitlines() == [orjson.dumps(g.build_record(plan, i)) for i in range(5000)]

    manifest = orjson.loads(stored["_manifest.json"])
    assert [e["url"] for e in manifest["output"]][:3] == [
        f"patient/Patient.00000{n}.ndjson.gz" for n in (1, 2, 3)
    ]

    again = s3_cli(s3_server.endpoint, *NDJSON, "--output", url, flag=False)  # AWS_ENDPOINT_URL
    assert again.returncode == 0, again.stderr
    assert objects(s3_server.client(), s3_bucket, "lake/bronze") == stored  # same keys, bytes
    other = s3_cli(s3_server.endpoint, "--count", "10", "--output", url)
    assert other.returncode == 1 and "already holds another run" in one_line(other)


def test_per_file_json_on_s3_uses_suggested_s3_keys_and_overwrite_clears(
    s3_throwaway_server: S3Server,
):
    """Hundreds of PUTs and deletes: on its own server, so the shared one stays quiet."""
    server = s3_throwaway_server
    bucket = server.create_bucket()
    url = f"s3://{bucket}/bronze"
    states = ("--states", "DE,RI,VT")
    result = s3_cli(server.endpoint, "--count", "200", *states, "--output", url)
    assert result.returncode == 0, result.stderr
    client = server.client()
    plan = g.make_plan(7, AS_OF, states="DE,RI,VT")
    stored = objects(client, bucket, "bronze")
    for i in range(200):
        record = g.build_record(plan, i)
        key = g.suggested_s3_key(record, bucket, "bronze/patient")
        assert stored[key.removeprefix(f"s3://{bucket}/bronze/")] == orjson.dumps(record) + b"\n"
    orgs = {k for k in stored if k.startswith("organization/")}
    assert orgs == {f"organization/organization_{o['id']}.json" for o in plan.organizations}
    assert len(stored) == 200 + len(plan.organizations) + 1

    args = ("--count", "20", "--seed", "8", *states, "--output", url, "--overwrite")
    replaced = s3_cli(server.endpoint, *args)
    assert replaced.returncode == 0, replaced.stderr
    after = objects(client, bucket, "bronze")
    assert len([k for k in after if k.startswith("patient/")]) == 20
    assert not {k for k in stored if k.startswith("patient/")} & set(after)


def test_missing_bucket_is_one_line_exit_1(s3_server, s3_missing_bucket):
    result = s3_cli(s3_server.endpoint, "--count", "5", "--output", f"s3://{s3_missing_bucket}/x")
    assert result.returncode == 1
    assert "does not exist" in one_line(result) and s3_missing_bucket in result.stderr


@pytest.mark.parametrize("code", ["SignatureDoesNotMatch", "InvalidAccessKeyId"])
def test_wrong_credentials_are_one_line_exit_1(
    s3_bad_credentials, s3_unknown_key_credentials, s3_server, s3_bucket, code
):
    endpoint = s3_bad_credentials if code == "SignatureDoesNotMatch" else s3_unknown_key_credentials
    result = s3_cli(endpoint, "--count", "5", "--output", f"s3://{s3_bucket}/x")
    assert result.returncode == 1
    assert "refused the credentials" in one_line(result) and code in result.stderr
    assert objects(s3_server.client(), s3_bucket, "x") == {}


def test_stopped_server_is_one_line_exit_1(s3_throwaway_server: S3Server):
    endpoint = s3_throwaway_server.endpoint
    bucket = s3_throwaway_server.create_bucket()
    s3_throwaway_server.stop()
    result = s3_cli(endpoint, "--count", "5", "--output", f"s3://{bucket}/x")
    assert result.returncode == 1
    assert "cannot reach the S3 endpoint" in one_line(result)


def test_failed_uploads_end_with_the_count_and_the_first_failing_key(
    s3_server, s3_bucket, monkeypatch
):
    """A PUT that fails mid-run (injected by a botocore hook): one line, no manifest."""
    for name, value in s3_server.endpoint.env().items():
        monkeypatch.setenv(name, value)
    real = g._s3_client

    def failing_client(*args, **kwargs):
        client = real(*args, **kwargs)

        def fail(params, **_):
            if "Patient.000002" in params["url_path"]:  # the serialised request
                error = {"Code": "InternalError", "Message": "injected"}
                return SimpleNamespace(status_code=500), {"Error": error}
            return None

        client.meta.events.register("before-call.s3.PutObject", fail)
        return client

    monkeypatch.setattr(g, "_s3_client", failing_client)
    url = f"s3://{s3_bucket}/b"
    spec = g.Bronze(root=url, count=3000, format="ndjson", records_per_file=1000)
    with pytest.raises(g.BronzeError) as raised:
        g.write_bronze(g.make_plan(7, AS_OF), spec)
    message = str(raised.value)
    assert (
        message
        == f"1 objects failed; first: {url}/patient/Patient.000002.ndjson (InternalError: injected)"
    )
    stored = objects(s3_server.client(), s3_bucket, "b")
    assert "_manifest.json" not in stored and "patient/Patient.000001.ndjson" in stored


def test_s3_output_without_boto3_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "boto3", None)  # import boto3 now raises ImportError
    spec = g.Bronze(root="s3://bucket/x", count=1)
    with pytest.raises(g.BronzeError, match="pip install boto3"):
        g.write_bronze(g.make_plan(7, AS_OF), spec)


# --- endpoints that stall, drop connections, or are not URLs --------------------------------

# Timeouts for CLI runs in these tests (the defaults, 5 s / 15 s x 5 attempts, would take ~75 s).
FAST = {"_S3_CONNECT_TIMEOUT": 1, "_S3_READ_TIMEOUT": 2, "_S3_MAX_ATTEMPTS": 2}
FAST_BOUND = FAST["_S3_MAX_ATTEMPTS"] * (FAST["_S3_CONNECT_TIMEOUT"] + FAST["_S3_READ_TIMEOUT"]) + 1


def fast_cli(env: dict[str, str], *args: str) -> subprocess.Popen[str]:
    """The CLI (BASE seed and as-of, --quiet) with FAST's timeouts set on the module."""
    settings = "; ".join(f"g.{name} = {value}" for name, value in FAST.items())
    code = f"import sys, fhir_patient_generator as g; {settings}; sys.exit(g.main(sys.argv[1:]))"
    return subprocess.Popen(
        [sys.executable, "-c", code, *BASE, *args, "--quiet"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env={**os.environ, "NO_PROXY": "127.0.0.1,localhost", **env},
    )


def finish(proc: subprocess.Popen[str], timeout: float) -> subprocess.CompletedProcess[str]:
    """Wait (bounded) for proc; kill it and fail if it overruns."""
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        pytest.fail(f"still running after {timeout} s: {err}")
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


@contextlib.contextmanager
def bad_listener(mode: str) -> Iterator[str]:
    """http://127.0.0.1:PORT of a TCP listener that closes each connection at once ("close")
    or keeps it open without a byte ("stall"); stopped (and its sockets closed) on exit."""
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0.1)
    stop, held = threading.Event(), []

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            if mode == "close":
                conn.close()
            else:
                held.append(conn)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.getsockname()[1]}"
    finally:
        stop.set()
        thread.join(5)
        for conn in held:
            conn.close()
        server.close()


def test_default_s3_timeouts_bound_a_stall_to_about_two_minutes():
    """The documented bound (docs/bronze.md): attempts x (connect + read) + back-off < 2 min."""
    config = g._s3_client("http://127.0.0.1:9", 1, g._S3_MAX_ATTEMPTS).meta.config
    assert (config.connect_timeout, config.read_timeout) == (5, 15)
    assert config.retries["total_max_attempts"] == g._S3_MAX_ATTEMPTS == 5
    assert g._S3_MAX_ATTEMPTS * (g._S3_CONNECT_TIMEOUT + g._S3_READ_TIMEOUT) + 1 <= 120
    assert "101 s" in (ROOT / "docs" / "bronze.md").read_text()


@pytest.mark.parametrize("mode", ["close", "stall"])
def test_an_endpoint_that_drops_or_stalls_is_one_line_exit_1_in_bounded_time(mode):
    with bad_listener(mode) as url:
        env = S3Endpoint(url, "test-key", "test-secret").env()
        started = time.monotonic()
        result = finish(fast_cli(env, "--count", "5", "--output", "s3://bucket/x"), 60)
        elapsed = time.monotonic() - started
    assert result.returncode == 1
    line = one_line(result)
    want = "cannot reach the S3 endpoint" if mode == "close" else "stopped answering"
    assert want in line and url in line
    assert elapsed < FAST_BOUND + 10  # interpreter start-up and boto3 import included


def test_a_server_stopped_mid_run_ends_in_one_line_and_no_manifest(s3_throwaway_server):
    """SIGSTOP rclone while patient files are uploading: the PUTs time out, the run ends with
    the failure summary (no traceback) within the bound, and no manifest is written."""
    server = s3_throwaway_server
    bucket = server.create_bucket()
    patients = server.root / bucket / "x" / "patient"
    args = ("--count", "2000000", "--format", "ndjson", "--records-per-file", "10000")
    proc = fast_cli(server.endpoint.env(), *args, "--output", f"s3://{bucket}/x")
    try:
        deadline = time.monotonic() + 60
        while not (patients.is_dir() and any(patients.iterdir())):
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()
            time.sleep(0.02)
        os.kill(server.pid, signal.SIGSTOP)
        stopped = time.monotonic()
        result = finish(proc, 60)
        elapsed = time.monotonic() - stopped
    finally:
        os.kill(server.pid, signal.SIGCONT)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert result.returncode == 1
    line = one_line(result)
    # a PUT stuck sending its body reports a closed connection, one waiting for the reply a timeout
    assert f"objects failed; first: s3://{bucket}/x/patient/Patient." in line
    assert elapsed < FAST_BOUND + 10
    assert not (server.root / bucket / "x" / "_manifest.json").exists()
    assert "_manifest.json" not in objects(server.client(), bucket, "x")


@pytest.mark.parametrize("where", ["--endpoint-url", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"])
def test_an_endpoint_without_a_scheme_is_a_usage_error(where, tmp_path):
    bad = "127.0.0.1:9000"
    env = {"AWS_ENDPOINT_URL": "", "AWS_ENDPOINT_URL_S3": ""}
    args = ["--count", "5", "--output", "s3://bucket/x"]
    if where == "--endpoint-url":
        args += ["--endpoint-url", bad]
    else:
        env[where] = bad
    result = run_cli(*args, env=env, timeout=60)
    assert result.returncode == 2
    assert f"{where} '{bad}' is not an http(s) URL" in one_line(result)
    with pytest.raises(ValueError, match="not an http"):
        g.write_bronze(
            g.make_plan(7, AS_OF), g.Bronze(root="s3://bucket/x", count=1, endpoint_url=bad)
        )
