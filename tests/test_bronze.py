"""The bronze layer on local disk: layout, formats, gzip, manifest, overwrite policy, atomicity."""

from __future__ import annotations

import inspect
import os
import pty
import signal
import subprocess
import sys
import time
from pathlib import Path

import fhirkit
import orjson
import pytest
from bronze_util import AS_OF, BASE, SCRIPT, one_line, raw, records, run_cli, tree
from fhir.resources.R4B.organization import Organization as OrganizationR4B

import fhir_patient_generator as g

# Private names used here (the store interface this file checks): _STORES, _Store

PLAN = g.make_plan(7, AS_OF)


def check_organizations(root: Path, gz: bool, ndjson: bool) -> dict[str, dict]:
    """Every organization file is valid FHIR R4B and R4 (fhirkit); returns them by id."""
    folder = root / "organization"
    suffix = ".gz" if gz else ""
    if ndjson:
        assert [p.name for p in folder.iterdir()] == [f"Organization.000001.ndjson{suffix}"]
    else:
        expected = {f"organization_{o['id']}.json{suffix}" for o in PLAN.organizations}
        assert {p.name for p in folder.iterdir()} == expected
    orgs = {}
    for path in folder.iterdir():
        for org in records(path):
            text = orjson.dumps(org).decode()
            assert OrganizationR4B.model_validate_json(text).model_dump_json() == text
            assert fhirkit.validate(text) == []
            assert org["address"][0]["city"] and org["address"][0]["state"]
            orgs[org["id"]] = org
    assert orgs == {o["id"]: g.organization_record(o) for o in PLAN.organizations}
    return orgs


def check_manifest(root: Path, fmt: str, gz: bool, count: int) -> dict:
    manifest = orjson.loads((root / "_manifest.json").read_bytes())
    assert manifest["transactionTime"] == AS_OF
    assert manifest["requiresAccessToken"] is False and manifest["error"] == []
    gen = manifest["extension"]["generator"]
    assert gen["seed"] == 7 and gen["count"] == count and gen["start"] == 0
    assert gen["format"] == fmt and gen["gzip"] is gz and gen["version"] == g.__version__
    assert gen["options"]["states"] == list(PLAN.options["states"])
    assert manifest["request"].startswith(f"fhir_patient_generator.py --count {count} --seed 7")
    by_type: dict[str, int] = {}
    for entry in manifest["output"]:
        by_type[entry["type"]] = by_type.get(entry["type"], 0) + entry["count"]
    assert by_type == {"Patient": count, "Organization": len(PLAN.organizations)}
    return manifest


@pytest.mark.parametrize("gz", [False, True], ids=["plain", "gzip"])
def test_per_file_json_is_one_compact_line_per_patient_named_like_suggested_s3_key(tmp_path, gz):
    root = tmp_path / "bronze"
    result = run_cli("--count", "1500", "--output", str(root), *(["--gzip"] if gz else []))
    assert result.returncode == 0, result.stderr
    summary = one_line(result)
    assert summary.startswith("wrote 1,500 patients + 4,526 organizations (")
    assert "patients/s)" in summary and str(root) in summary
    suffix = ".gz" if gz else ""
    expected = {}
    for i in range(1500):
        record = g.build_record(PLAN, i)
        key = g.suggested_s3_key(record, "b", "bronze/patient").removeprefix("s3://b/bronze/")
        expected[key + suffix] = orjson.dumps(record) + b"\n"
    files = {p.relative_to(root).as_posix(): p for p in (root / "patient").iterdir()}
    assert set(files) == set(expected)
    for key, path in files.items():
        data = raw(path.read_bytes(), key)
        assert data == expected[key] and data.count(b"\n") == 1  # one line: Athena's SerDe
    orgs = check_organizations(root, gz, ndjson=False)
    for data in expected.values():
        ref = orjson.loads(data)["managingOrganization"]["reference"]
        assert ref.removeprefix("Organization/") in orgs
    manifest = check_manifest(root, "json", gz, 1500)
    assert [e["url"] for e in manifest["output"]] == ["patient/", "organization/"]


@pytest.mark.parametrize("gz", [False, True], ids=["plain", "gzip"])
def test_ndjson_rolls_over_at_records_per_file(tmp_path, gz):
    root = tmp_path / "bronze"
    args = ["--count", "2000", "--format", "ndjson", "--records-per-file", "700"]
    result = run_cli(*args, "--output", str(root), *(["--gzip"] if gz else []))
    assert result.returncode == 0, result.stderr
    suffix = ".gz" if gz else ""
    names = [f"Patient.00000{n}.ndjson{suffix}" for n in (1, 2, 3)]
    assert sorted(p.name for p in (root / "patient").iterdir()) == names
    lines = []
    for name, size in zip(names, (700, 700, 600), strict=True):
        data = (root / "patient" / name).read_bytes()
        if gz:
            assert data[:2] == b"\x1f\x8b"
        text = raw(data, name)
        assert text.endswith(b"\n") and text.count(b"\n") == size
        lines += text.splitlines()
    assert lines == [orjson.dumps(g.build_record(PLAN, i)) for i in range(2000)]
    orgs = check_organizations(root, gz, ndjson=True)
    assert all(orjson.loads(x)["managingOrganization"]["reference"][13:] in orgs for x in lines)
    manifest = check_manifest(root, "ndjson", gz, 2000)
    assert manifest["output"] == [
        *(
            {"type": "Patient", "url": f"patient/{n}", "count": c}
            for n, c in zip(names, (700, 700, 600), strict=True)
        ),
        {
            "type": "Organization",
            "url": f"organization/Organization.000001.ndjson{suffix}",
            "count": 4526,
        },
    ]
    assert manifest["extension"]["generator"]["records_per_file"] == 700


def test_rerun_rewrites_the_same_bytes_another_run_is_refused_and_overwrite_replaces(tmp_path):
    root = tmp_path / "bronze"
    args = ("--count", "1000", "--format", "ndjson", "--records-per-file", "300", "--gzip")
    assert run_cli(*args, "--output", str(root)).returncode == 0
    first = tree(root)
    again = run_cli(*args, "--output", str(root))
    assert again.returncode == 0, again.stderr
    assert tree(root) == first

    other = run_cli("--count", "500", "--output", str(root))  # another run: refused
    assert other.returncode == 1
    assert "already holds another run" in one_line(other) and "--overwrite" in other.stderr
    assert tree(root) == first

    replaced = run_cli("--count", "500", "--output", str(root), "--overwrite")
    assert replaced.returncode == 0, replaced.stderr
    fresh = tmp_path / "fresh"
    assert run_cli("--count", "500", "--output", str(fresh)).returncode == 0
    assert tree(root) == tree(fresh)  # nothing of the old run is left


def test_files_without_a_manifest_or_identity_are_refused_unless_overwrite(tmp_path):
    """Every run (each shard too) writes _run/identity.json before any data, so data with
    neither that nor a manifest is foreign: refused, also for a shard."""
    root = tmp_path / "bronze"
    (root / "patient").mkdir(parents=True)
    (root / "patient" / "patient_stray.json").write_text("{}\n")
    refused = run_cli("--count", "50", "--output", str(root))
    assert refused.returncode == 1 and "without _manifest.json" in one_line(refused)
    shard = run_cli("--count", "50", "--output", str(root), "--shard", "0/2")
    assert shard.returncode == 1 and "without _manifest.json" in one_line(shard)
    assert (root / "patient" / "patient_stray.json").exists()
    replaced = run_cli("--count", "50", "--output", str(root), "--overwrite")
    assert replaced.returncode == 0, replaced.stderr
    assert not (root / "patient" / "patient_stray.json").exists()
    assert len(list((root / "patient").iterdir())) == 50
    assert not (root / "_run").exists()


@pytest.mark.parametrize(
    "args",
    [
        ["--count", "5", "--format", "ndjson"],
        ["--count", "5", "--gzip"],
        ["--count", "5", "--workers", "2"],
        ["--output", "x"],
        ["--count", "5", "--output", "gs://bucket/x"],
        ["--count", "5", "--output", "s3://"],
        ["--count", "5", "--output", "x", "--format", "parquet"],
        ["--count", "5", "--output", "x", "--shard", "3/3"],
        ["--count", "5", "--output", "x", "--shard", "1-3"],
        ["--count", "5", "--output", "x", "--workers", "0"],
        ["--count", "5", "--output", "x", "--records-per-file", "0"],
        ["--count", "5", "--output", "x", "--concurrency", "0"],
        ["--count", "5", "--output", "x", "--gzip", "--gzip-level", "10"],
        ["--count", "5", "--output", "x", "--gzip-level", "5"],
        ["--count", "5", "--output", "x", "--shard", "0/2", "--overwrite"],
    ],
)
def test_bad_bronze_input_is_one_line_and_exit_2(tmp_path, args):
    result = run_cli(*args)
    assert result.returncode == 2 and result.stdout == ""
    assert "error:" in one_line(result)
    assert not (Path(g.__file__).parent / "x").exists()


def test_output_that_is_a_file_is_one_line_exit_1(tmp_path):
    (tmp_path / "file").write_text("")
    result = run_cli("--count", "5", "--output", str(tmp_path / "file"))
    assert result.returncode == 1 and "not a directory" in one_line(result)


@pytest.mark.parametrize("fmt", ["json", "ndjson"])
def test_validate_writes_the_same_bytes_in_both_formats(tmp_path, fmt):
    """--validate writes the validated dict's JSON; without it, json_renderer's: the same."""
    for name, extra in (("plain", []), ("checked", ["--validate"])):
        args = ["--count", "200", "--mortality-rate", "0.5", "--format", fmt, *extra]
        assert g.main([*BASE, *args, "--quiet", "--output", str(tmp_path / name)]) == 0
    plain, checked = tree(tmp_path / "plain" / "patient"), tree(tmp_path / "checked" / "patient")
    assert plain == checked and len(plain) == (200 if fmt == "json" else 1)


def test_validate_accepts_good_records_and_names_the_index_of_a_bad_one(
    tmp_path, monkeypatch, capsys
):
    ok = run_cli(
        "--count", "300", "--format", "ndjson", "--validate", "--output", str(tmp_path / "a")
    )
    assert ok.returncode == 0, ok.stderr
    real = g.build_record

    def broken(plan, index):
        record = real(plan, index)
        if index == 123:
            record["birthDate"] = "1985-13-01"
        return record

    monkeypatch.setattr(g, "build_record", broken)
    args = [*BASE, "--count", "300", "--format", "ndjson", "--validate", "--quiet"]
    assert g.main([*args, "--output", str(tmp_path / "b")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "patient #123 failed FHIR validation" in err
    assert not (tmp_path / "b" / "_manifest.json").exists()
    assert not list((tmp_path / "b" / "patient").iterdir())  # nothing partial
    with pytest.raises(g.BronzeError, match="patient #123"):  # and the stdout stream
        list(g.ndjson_chunks(g.make_plan(7, AS_OF), 0, 300, validate=True))


def test_count_on_stdout_is_unchanged_and_can_validate():
    plain = run_cli("--count", "50")
    checked = run_cli("--count", "50", "--validate")
    assert plain.stdout == checked.stdout and checked.stderr == ""
    assert plain.stdout.splitlines() == [
        orjson.dumps(g.build_record(PLAN, i)).decode() for i in range(50)
    ]


@pytest.mark.parametrize(
    "extra",
    [["--format", "ndjson"], ["--format", "ndjson", "--gzip", "--workers", "2"], []],
    ids=["ndjson", "ndjson-gzip-workers", "json"],
)
def test_interrupted_run_leaves_no_partial_or_temp_file(tmp_path, extra):
    root = tmp_path / "bronze"
    per_file = "--format" not in extra
    args = [*BASE, "--count", "5000000", "--records-per-file", "20000", *extra]
    proc = subprocess.Popen(
        [sys.executable, str(SCRIPT), *args, "--output", str(root)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 60
    want = 500 if per_file else 2
    while time.monotonic() < deadline:
        folder = root / "patient"
        if folder.exists() and sum(1 for _ in os.scandir(folder)) >= want:
            break
        time.sleep(0.05)
    time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err  # interrupted
    assert "interrupted; no partial file was left" in err.strip().splitlines()[-1]
    assert "Traceback" not in err
    files = [p for p in root.rglob("*") if p.is_file()]
    assert not [p for p in files if ".tmp-" in p.name]
    assert not (root / "_manifest.json").exists()  # the run did not finish
    assert (root / "_run" / "identity.json").exists()  # ... and a re-run resumes it
    for path in files:
        if path.parent.name == "patient":
            data = raw(path.read_bytes(), path.name)  # a truncated gzip stream would raise
            assert data.endswith(b"\n") and data.count(b"\n") == (1 if per_file else 20000)
            for line in data.splitlines():
                orjson.loads(line)


def test_progress_bar_only_on_a_terminal_and_quiet_silences_it(tmp_path):
    def stderr_on_a_tty(*extra: str) -> str:
        leader, follower = pty.openpty()
        args = [*BASE, "--count", "5000", "--format", "ndjson", "--records-per-file", "2000"]
        proc = subprocess.Popen(
            [sys.executable, str(SCRIPT), *args, *extra], stderr=follower, stdout=subprocess.DEVNULL
        )
        os.close(follower)
        chunks = []
        while True:
            try:
                chunk = os.read(leader, 4096)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            chunks.append(chunk)
        os.close(leader)
        assert proc.wait(timeout=60) == 0
        return b"".join(chunks).decode()

    shown = stderr_on_a_tty("--output", str(tmp_path / "a"))
    assert "\r[" in shown and "patients, " in shown and "/s, ETA" in shown
    assert (
        shown.rstrip().splitlines()[-1].split("\r")[-1].lstrip("\x1b[K").startswith("wrote 5,000")
    )
    quiet = stderr_on_a_tty("--output", str(tmp_path / "b"), "--quiet")
    assert "\r[" not in quiet and quiet.startswith("wrote 5,000 patients")
    piped = run_cli("--count", "5000", "--format", "ndjson", "--output", str(tmp_path / "c"))
    assert "\r" not in piped.stderr and one_line(piped).startswith("wrote 5,000")


def test_every_registered_store_implements_the_store_protocol():
    # a new store is a class with _Store's members plus one _STORES entry (docs/architecture.md)
    members = [n for n in vars(g._Store) if not n.startswith("_") or n == "__init__"]
    assert {"write", "create", "read", "list", "delete", "drain", "check_root"} <= set(members)
    for scheme, store in g._STORES.items():
        for name in members:
            want = inspect.signature(getattr(g._Store, name))
            got = inspect.signature(getattr(store, name))
            assert list(got.parameters) == list(want.parameters), (scheme, name)
