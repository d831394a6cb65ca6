"""Shared fixtures: a real S3-compatible server (``rclone serve s3``) for the S3 tests.

``s3_server`` is session-scoped: starting rclone is cheap (~0.1 s) but one server is enough,
because each test isolates itself in its own bucket (``s3_bucket``); tests that need to break
or stop a server use the function-scoped ``s3_throwaway_server`` instead. Without rclone the
S3 tests are skipped locally and fail under CI=true.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))  # importable under any import mode

from s3server import (  # noqa: E402
    UNKNOWN_ACCESS_KEY,
    WRONG_SECRET_KEY,
    S3Endpoint,
    S3Server,
    require_rclone,
    unique_bucket_name,
)

if TYPE_CHECKING:
    from botocore.client import BaseClient


@pytest.fixture(scope="session")
def rclone_path() -> str:
    """Path of the rclone binary (skips locally, fails under CI, if it is missing)."""
    return require_rclone()


@pytest.fixture(scope="session")
def s3_server(rclone_path: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """The session's S3 server: endpoint_url, access_key, secret_key, region, root, client()."""
    with S3Server(tmp_path_factory.mktemp("s3server"), rclone=rclone_path) as server:
        yield server


@pytest.fixture
def s3_client(s3_server: S3Server) -> BaseClient:
    """A boto3 S3 client for ``s3_server`` with valid credentials."""
    return s3_server.client()


@pytest.fixture
def s3_bucket(s3_server: S3Server) -> str:
    """The name of a new, empty bucket on ``s3_server`` that only this test uses."""
    return s3_server.create_bucket()


@pytest.fixture
def s3_missing_bucket(s3_server: S3Server) -> str:
    """A valid bucket name that does not exist on ``s3_server`` (NoSuchBucket)."""
    name = unique_bucket_name("missing")
    assert not (s3_server.root / name).exists()
    return name


@pytest.fixture
def s3_bad_credentials(s3_server: S3Server) -> S3Endpoint:
    """``s3_server``'s endpoint with the right access key and a wrong secret.

    rclone answers 403 SignatureDoesNotMatch; for 403 InvalidAccessKeyId use
    ``s3_server.endpoint.with_credentials(UNKNOWN_ACCESS_KEY, ...)``.
    """
    return s3_server.endpoint.with_credentials(s3_server.access_key, WRONG_SECRET_KEY)


@pytest.fixture
def s3_unknown_key_credentials(s3_server: S3Server) -> S3Endpoint:
    """``s3_server``'s endpoint with an access key id it does not know."""
    return s3_server.endpoint.with_credentials(UNKNOWN_ACCESS_KEY, s3_server.secret_key)


@pytest.fixture
def s3_throwaway_server(rclone_path: str, tmp_path: Path) -> Iterator[S3Server]:
    """A separate server for this test only, which it may ``stop()`` ("server down" tests)."""
    with S3Server(tmp_path / "s3server", rclone=rclone_path) as server:
        yield server
