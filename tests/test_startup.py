"""Start-up: the reference tables load from reference.marshal and the stays' tables from
stays.marshal only while each matches the CSVs beside it, and a one-patient run never imports
numpy (the bulk path's dependency)."""

from __future__ import annotations

import shutil
import subprocess
import sys

from test_places import tool as build_reference  # tools/build_reference.py as a module

import fhir_patient_generator as g

# Private names used here (the start-up caches this file checks): _DATA_DIR, _REFERENCE_CACHE,
# _cached_reference, _parse_reference, _read_reference, _reference_marshal; the stays' cache:
# _STAY_CACHE, _cached_stay_base, _hai_tables, _parse_stay_base, _stay_base, _stay_marshal,
# _stay_tables


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


def test_the_committed_stays_cache_holds_exactly_the_built_tables():
    cached = g._cached_stay_base(g._DATA_DIR)
    assert cached is not None, "stays.marshal is stale: run python tools/build_reference.py"
    built = g._parse_stay_base(g._DATA_DIR)
    assert cached == built
    assert [x.hex() for x in cached.discharges] == [x.hex() for x in built.discharges]
    (states, factors), (again, rebuilt) = *cached.factors.items(), *built.factors.items()
    assert states == again == g.make_plan(1).state_codes  # the default states
    assert [x.hex() for x in factors] == [x.hex() for x in rebuilt]  # bit for bit


def test_build_reference_check_compares_the_stays_cache(tmp_path, capsys):
    data = tmp_path / "data"
    shutil.copytree(g._DATA_DIR, data)
    assert build_reference().stay_cache(data, check=True) == 0
    (data / g._STAY_CACHE).write_bytes(b"")
    assert build_reference().stay_cache(data, check=True) == 1
    assert build_reference().stay_cache(data, check=False) == 0  # rewrites it
    assert g._cached_stay_base(data) == g._cached_stay_base(g._DATA_DIR)
    assert "stays.marshal: differs from a rebuild" in capsys.readouterr().out


def test_an_edited_csv_or_a_broken_stays_cache_is_built_from_the_csvs(tmp_path):
    data = tmp_path / "data"
    shutil.copytree(g._DATA_DIR, data)
    assert g._cached_stay_base(data) == g._cached_stay_base(g._DATA_DIR)
    rates = data / "inpatient_rates.csv"
    text = rates.read_text(encoding="utf-8")
    assert ",105.184," in text
    rates.write_text(text.replace(",105.184,", ",105.185,", 1), encoding="utf-8")
    assert g._cached_stay_base(data) is None  # stale: the key covers every CSV's bytes
    base = g._stay_base(data)
    assert base.rates[0][3] == 0.105185
    (data / g._STAY_CACHE).write_bytes(g._stay_marshal(base, data))
    assert g._cached_stay_base(data) == base
    for broken in (b"", b"\x00garbage", (data / g._STAY_CACHE).read_bytes()[:1000]):
        (data / g._STAY_CACHE).write_bytes(broken)
        assert g._cached_stay_base(data) is None
    (data / g._STAY_CACHE).unlink()
    assert g._cached_stay_base(data) is None


def test_a_plans_stay_tables_are_the_same_with_or_without_the_stays_cache(tmp_path):
    """Without stays.marshal (a copy of the data without it) every table is built from the
    CSVs: the same values, bit for bit, for the default states (whose hospital factors the
    cache holds) and for others (computed for the plan either way)."""
    data = tmp_path / "data"
    shutil.copytree(g._DATA_DIR, data)
    (data / g._STAY_CACHE).unlink()
    for options in ({}, {"states": "CA,NY", "lookback_years": 10}):
        cached = g.make_plan(5, "2025-10-13T02:22:22Z", encounters=True, **options)
        built = g.make_plan(5, "2025-10-13T02:22:22Z", data_dir=data, encounters=True, **options)
        assert g._stay_tables(cached) == g._stay_tables(built)
        factors = (g._stay_tables(p).factors for p in (cached, built))
        assert len({tuple(x.hex() for x in f) for f in factors}) == 1
        assert g._hai_tables(cached) == g._hai_tables(built)
    assert g._cached_stay_base(data) is None  # nothing written at run time
