"""The rclone S3 test server behaves like S3 for boto3, including the failure cases we rely on."""

from __future__ import annotations

import gzip
import io
import os
import time
from pathlib import Path

import boto3
import pytest
from boto3.s3.transfer import TransferConfig
from botocore.client import BaseClient
from botocore.exceptions import ClientError, EndpointConnectionError
from s3server import S3Endpoint, S3Server, S3ServerError, require_rclone


def _error(exc: pytest.ExceptionInfo[ClientError]) -> tuple[str, int]:
    response = exc.value.response
    return response["Error"]["Code"], response["ResponseMetadata"]["HTTPStatusCode"]


def test_fixture_exposes_connection_details(s3_server: S3Server) -> None:
    assert s3_server.endpoint_url.startswith("http://127.0.0.1:")
    assert s3_server.access_key
    assert s3_server.secret_key
    assert s3_server.region
    assert s3_server.root.is_dir()
    assert s3_server.is_running()
    assert "Buckets" in s3_server.client().list_buckets()


def test_bucket_fixture_is_new_and_empty(s3_server: S3Server, s3_bucket: str) -> None:
    assert (s3_server.root / s3_bucket).is_dir()
    listed = s3_server.client().list_objects_v2(Bucket=s3_bucket)
    assert "Contents" not in listed
    assert listed.get("KeyCount", 0) == 0  # rclone omits KeyCount when 0 (AWS sends 0)


def test_put_get_round_trip_lands_on_disk_at_once(s3_server: S3Server, s3_bucket: str) -> None:
    client = s3_server.client()
    body = os.urandom(800)
    client.put_object(Bucket=s3_bucket, Key="bronze/patient_1.json", Body=body)
    assert client.get_object(Bucket=s3_bucket, Key="bronze/patient_1.json")["Body"].read() == body
    assert (s3_server.root / s3_bucket / "bronze" / "patient_1.json").read_bytes() == body


def test_gzip_body_is_stored_and_returned_unchanged(s3_client: BaseClient, s3_bucket: str) -> None:
    payload = b'{"resourceType":"Patient"}\n' * 50
    body = gzip.compress(payload)
    s3_client.put_object(
        Bucket=s3_bucket, Key="p.ndjson.gz", Body=body, ContentType="application/gzip"
    )
    got = s3_client.get_object(Bucket=s3_bucket, Key="p.ndjson.gz")
    assert "ContentEncoding" not in got  # nothing decompresses it on the way
    assert got["ContentType"] == "application/gzip"
    raw = got["Body"].read()
    assert raw == body
    assert gzip.decompress(raw) == payload


def test_writes_are_immediately_listable_with_prefix(s3_client: BaseClient, s3_bucket: str) -> None:
    for i in range(5):
        s3_client.put_object(Bucket=s3_bucket, Key=f"a/{i}.json", Body=b"{}")
        listed = s3_client.list_objects_v2(Bucket=s3_bucket, Prefix="a/")
        assert [o["Key"] for o in listed["Contents"]] == [f"a/{j}.json" for j in range(i + 1)]
    s3_client.put_object(Bucket=s3_bucket, Key="b/x.json", Body=b"{}")
    s3_client.put_object(Bucket=s3_bucket, Key="a/sub/y.json", Body=b"{}")

    pages = s3_client.get_paginator("list_objects_v2").paginate(
        Bucket=s3_bucket, Prefix="a/", PaginationConfig={"PageSize": 2}
    )
    keys = [o["Key"] for page in pages for o in page.get("Contents", [])]
    assert keys == [f"a/{j}.json" for j in range(5)] + ["a/sub/y.json"]

    nested = s3_client.list_objects_v2(Bucket=s3_bucket, Prefix="a/", Delimiter="/")
    assert nested["CommonPrefixes"] == [{"Prefix": "a/sub/"}]
    assert len(nested["Contents"]) == 5


def test_multipart_upload_fileobj(s3_client: BaseClient, s3_bucket: str) -> None:
    body = os.urandom(6 * 1024 * 1024 + 1)
    five_mib = 5 * 1024 * 1024
    config = TransferConfig(multipart_threshold=five_mib, multipart_chunksize=five_mib)
    s3_client.upload_fileobj(io.BytesIO(body), s3_bucket, "big.bin", Config=config)
    assert s3_client.get_object(Bucket=s3_bucket, Key="big.bin")["Body"].read() == body


def test_bucket_made_on_disk_is_served(s3_server: S3Server) -> None:
    name = s3_server.make_bucket_on_disk()
    client = s3_server.client()
    client.put_object(Bucket=name, Key="k", Body=b"v")
    assert client.get_object(Bucket=name, Key="k")["Body"].read() == b"v"


def test_env_points_a_default_boto3_client_at_the_server(
    s3_server: S3Server, s3_bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    for name, value in s3_server.endpoint.env().items():
        monkeypatch.setenv(name, value)
    client = boto3.session.Session().client("s3")  # as code under test would build it
    client.put_object(Bucket=s3_bucket, Key="from-env.json", Body=b"{}")
    assert (s3_server.root / s3_bucket / "from-env.json").read_bytes() == b"{}"


def test_wrong_secret_is_signature_does_not_match(
    s3_bad_credentials: S3Endpoint, s3_bucket: str
) -> None:
    with pytest.raises(ClientError) as exc:
        s3_bad_credentials.client().put_object(Bucket=s3_bucket, Key="k", Body=b"v")
    assert _error(exc) == ("SignatureDoesNotMatch", 403)


def test_unknown_access_key_is_invalid_access_key_id(
    s3_unknown_key_credentials: S3Endpoint, s3_bucket: str
) -> None:
    with pytest.raises(ClientError) as exc:
        s3_unknown_key_credentials.client().list_objects_v2(Bucket=s3_bucket)
    assert _error(exc) == ("InvalidAccessKeyId", 403)


def test_missing_bucket_is_no_such_bucket(s3_client: BaseClient, s3_missing_bucket: str) -> None:
    with pytest.raises(s3_client.exceptions.NoSuchBucket) as put:
        s3_client.put_object(Bucket=s3_missing_bucket, Key="k", Body=b"v")
    assert _error(put) == ("NoSuchBucket", 404)
    with pytest.raises(s3_client.exceptions.NoSuchBucket):
        s3_client.list_objects_v2(Bucket=s3_missing_bucket)
    with pytest.raises(ClientError) as head:  # HEAD has no body, so no error code either
        s3_client.head_bucket(Bucket=s3_missing_bucket)
    assert _error(head) == ("404", 404)


def test_missing_key_is_no_such_key(s3_client: BaseClient, s3_bucket: str) -> None:
    with pytest.raises(s3_client.exceptions.NoSuchKey):
        s3_client.get_object(Bucket=s3_bucket, Key="absent.json")


def test_stopped_server_is_endpoint_connection_error(s3_throwaway_server: S3Server) -> None:
    client = s3_throwaway_server.client()
    bucket = s3_throwaway_server.create_bucket()
    client.put_object(Bucket=bucket, Key="k", Body=b"v")
    pid = s3_throwaway_server.pid
    assert pid is not None

    s3_throwaway_server.stop()
    assert not s3_throwaway_server.is_running()
    assert not Path(f"/proc/{pid}").exists()  # reaped (trivially true without /proc)
    started = time.monotonic()
    with pytest.raises(EndpointConnectionError):
        client.put_object(Bucket=bucket, Key="k2", Body=b"v")
    assert time.monotonic() - started < 10  # few retries, short timeouts
    s3_throwaway_server.stop()  # idempotent


def test_start_failure_raises_with_log_tail(rclone_path: str, tmp_path: Path) -> None:
    server = S3Server(tmp_path, rclone=rclone_path, extra_args=["--no-such-flag"])
    with pytest.raises(S3ServerError, match="unknown flag"):
        server.start()
    assert not server.is_running()


@pytest.mark.parametrize(("ci", "outcome"), [("true", pytest.fail.Exception), ("", None)])
def test_missing_rclone_fails_under_ci_else_skips(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, ci: str, outcome: type | None
) -> None:
    monkeypatch.setenv("S3SERVER_RCLONE", str(tmp_path / "no-rclone"))
    monkeypatch.setenv("CI", ci)
    with pytest.raises(outcome or pytest.skip.Exception):
        require_rclone()


def test_hung_start_times_out_and_kills_the_process_group(tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    fake = tmp_path / "fake-rclone"
    fake.write_text(
        f"#!/bin/sh\nsleep 300 &\necho $$ $! > {pids}\necho never listening >&2\nwait\n"
    )
    fake.chmod(0o755)
    server = S3Server(tmp_path / "s3", rclone=str(fake), startup_timeout=0.5)
    with pytest.raises(S3ServerError, match=r"(?s)not ready within 0.5 s.*never listening"):
        server.start()
    for pid in pids.read_text().split():  # the server and the child it started
        assert not Path(f"/proc/{pid}").exists() or "Z" in _proc_state(int(pid))


def _proc_state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "gone"
