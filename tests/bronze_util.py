"""Helpers shared by the bronze-layer tests: run the CLI, hash a tree, read what was written."""

from __future__ import annotations

import gzip
import hashlib
import os
import subprocess
import sys
from pathlib import Path

import orjson

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "fhir_patient_generator.py"
AS_OF = "2025-10-13T02:22:22Z"
BASE = ("--seed", "7", "--as-of", AS_OF)


def run_cli(
    *args: str, env: dict[str, str] | None = None, timeout: float = 180
) -> subprocess.CompletedProcess[str]:
    """The CLI in a subprocess with BASE seed and as-of, plus args."""
    return subprocess.run(
        [sys.executable, str(SCRIPT), *BASE, *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "NO_PROXY": "127.0.0.1,localhost", **(env or {})},
        timeout=timeout,
    )


def one_line(result: subprocess.CompletedProcess[str]) -> str:
    """The single stderr line of a run (asserts there is exactly one and no traceback)."""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    return lines[0]


def tree(root: Path) -> dict[str, str]:
    """{relative path: sha256} of every file under root (hidden ones too)."""
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def raw(data: bytes, name: str) -> bytes:
    """Bytes of a file as written, gunzipped when its name ends in .gz."""
    return gzip.decompress(data) if name.endswith(".gz") else data


def records(path: Path) -> list[dict]:
    """Every JSON record of one file (a single-line JSON file or NDJSON, plain or gz)."""
    return [orjson.loads(line) for line in raw(path.read_bytes(), path.name).splitlines()]
