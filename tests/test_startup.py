"""Start-up: the reference tables load from reference.marshal only while it matches the CSVs
beside it, and a one-patient run never imports numpy (the bulk path's dependency)."""

from __future__ import annotations

import shutil
import subprocess
import sys

import fhir_patient_generator as g

# Private names used here (the start-up cache this file checks): _DATA_DIR, _REFERENCE_CACHE,
# _cached_reference, _parse_reference, _read_reference, _reference_marshal


def test_the_committed_cache_holds_exactly_the_parsed_csvs():
    cached = g._cached_reference(g._DATA_DIR)
    assert cached is not None, "reference.marshal is stale: run python tools/build_reference.py"
    assert cached == g._parse_reference(g._DATA_DIR)


def test_an_edited_csv_or_a_broken_cache_is_read_from_the_csvs(tmp_path):
    data = tmp_path / "data"
    shutil.copytree(g._DATA_DIR, data)
    assert g._cached_reference(data) is not None
    states = data / "states.csv"
    text = states.read_text(encoding="utf-8")
    header, first, rest = text.split("\n", 2)
    code, name, fips, population, *more = first.split(",")
    states.write_text(
        "\n".join([header, ",".join([code, name, fips, str(int(population) + 1), *more]), rest]),
        encoding="utf-8",
    )
    assert g._cached_reference(data) is None  # stale: the key covers every CSV's bytes
    ref = g._read_reference(data)
    assert ref.states[0][2] == int(population) + 1
    (data / g._REFERENCE_CACHE).write_bytes(g._reference_marshal(ref, data))
    assert g._cached_reference(data) == ref
    for broken in (b"", b"\x00garbage", (data / g._REFERENCE_CACHE).read_bytes()[:1000]):
        (data / g._REFERENCE_CACHE).write_bytes(broken)
        assert g._cached_reference(data) is None
    (data / g._REFERENCE_CACHE).unlink()
    assert g._cached_reference(data) is None


def test_a_one_patient_run_does_not_import_numpy():
    code = (
        "import sys, fhir_patient_generator as g; g.main(['--count', '1', '--seed', '3']);"
        "print('numpy' in sys.modules, file=sys.stderr)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stderr.strip() == "False"
    assert done.stdout.startswith('{"resourceType":"Patient"') and done.stdout.count("\n") == 1
