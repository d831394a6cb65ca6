"""The core generator: record shape, validity, size, identity, reproducibility and the CLI."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import uuid
from datetime import UTC, date, datetime
from pathlib import Path

import fhirkit
import orjson
import pytest
from fhir.resources.patient import Patient as PatientR5
from fhir.resources.R4B.patient import Patient as PatientR4B
from record_shapes import PATIENT_KEYS, hospital_shares, maximise_cms_fields

import fhir_patient_generator as g

# Private names used here (internals this file checks or drives directly): _MAX_AGE, _MAX_INDEX,
# _PROFILES, _load_reference, _parse_as_of, _patient_mrn

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "fhir_patient_generator.py"
AS_OF = "2025-10-13T02:22:22Z"
# Required bindings that neither fhir.resources nor fhirkit checks (both accept "gender": "bogus").
GENDER_CODES = {"male", "female", "other", "unknown"}
IDENTIFIER_USES = {"usual", "official", "temp", "secondary", "old"}
# sha256 of Faker 40.x's en_US last_names, newline-joined (read from the installed Faker 40.63).
FAKER_SURNAMES_SHA256 = "939040917645553d783afc9e91d12610c5438d11e9f6eb88588d2a3a39084b7b"
BCP47 = re.compile(r"^[a-z]{2,3}(-[A-Za-z0-9]{2,8})*$")


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        timeout=120,
    )


def check_bindings(record: dict) -> None:
    """What FHIR's required bindings demand of the codes we emit."""
    assert record["gender"] in GENDER_CODES
    for ident in record["identifier"]:
        assert ident["use"] in IDENTIFIER_USES
        assert ident["type"]["coding"][0]["code"] == "MR"
    lang = record["communication"][0]["language"]["coding"][0]
    assert lang["system"] == "urn:ietf:bcp:47" and BCP47.match(lang["code"])


# --- shape and validity ------------------------------------------------------------------------


def test_record_has_the_seed_fields_in_fhir_element_order():
    plan = g.make_plan(3, AS_OF, mortality_rate=1.0)
    record = g.build_record(plan, 0)
    assert list(record) == PATIENT_KEYS
    assert record["meta"] == {"versionId": "1", "lastUpdated": AS_OF}
    ident = record["identifier"][0]
    assert list(ident) == ["use", "type", "system", "value"]
    assert ident["type"]["text"] == "Medical Record Number"
    assert ident["type"]["coding"][0]["system"] == "http://terminology.hl7.org/CodeSystem/v2-0203"
    assert re.fullmatch(r"MC-\d{10}", ident["value"])
    assert record["active"] is True
    assert record["address"][0]["country"] == "USA"
    assert record["communication"][0]["preferred"] is True
    org = record["managingOrganization"]
    assert org["reference"].startswith("Organization/org-") and org["display"]


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"min_age": 65},
        {"max_age": 4},
        {"mortality_rate": 1.0},
        {"states": "PR,AK,DC", "lookback_years": 0.5},
        {"min_age": 100, "mortality_rate": 1.0, "states": "NY"},
    ],
)
def test_records_are_valid_fhir_by_three_checks(options):
    plan = g.make_plan(11, AS_OF, **options)
    for index in range(300):
        record = g.build_record(plan, index)
        text = orjson.dumps(record).decode()
        for model in (PatientR5, PatientR4B):
            assert model.model_validate_json(text).model_dump_json() == text
        issues = fhirkit.validate(text)
        assert issues == [], [str(i) for i in issues]
        check_bindings(record)


def test_the_binding_check_and_fhirkit_catch_what_fhir_resources_lets_through():
    record = g.build_record(g.make_plan(1, AS_OF), 0)
    bogus = {**record, "gender": "bogus"}
    PatientR5.model_validate(bogus)  # fhir.resources accepts it ...
    with pytest.raises(AssertionError):
        check_bindings(bogus)  # ... our binding check does not
    bad_date = {**record, "birthDate": "1985-13-01"}
    assert fhirkit.validate(bad_date)


def test_generate_patient_returns_a_model_with_the_same_json_as_the_dict():
    patient = g.generate_patient(seed=42, index=5, as_of=AS_OF)
    assert isinstance(patient, PatientR4B)  # R4 is the default
    record = g.build_record(g.make_plan(42, AS_OF), 5)
    assert g.to_json(patient) == g.to_json(record) == orjson.dumps(record).decode()
    assert json.loads(g.to_json(patient, pretty=True)) == record


def test_generate_patient_without_a_seed_still_gives_a_valid_patient():
    a, b = g.generate_patient(), g.generate_patient()
    assert isinstance(a, PatientR4B) and a.id != b.id


def test_as_of_accepts_datetimes_and_iso_text_alike():
    text = g.to_json(g.generate_patient(seed=9, as_of="2025-10-13T02:22:22+00:00"))
    dt = datetime(2025, 10, 13, 2, 22, 22, tzinfo=UTC)
    assert g.to_json(g.generate_patient(seed=9, as_of=dt)) == text
    naive = datetime(2025, 10, 13, 2, 22, 22)  # naive means UTC
    assert g.to_json(g.generate_patient(seed=9, as_of=naive)) == text
    micro = g.build_record(g.make_plan(9, "2025-10-13T02:22:22.245910Z"), 0)
    assert micro["meta"]["lastUpdated"] == "2025-10-13T02:22:22.245910Z"


# --- size ----------------------------------------------------------------------------------------


def test_worst_case_record_is_under_1_kb():
    """Longest city, county, hospital, language and gender, deceased, microsecond timestamp:
    still < 1,024 B (976 B)."""
    plan = g.make_plan(0, "2025-10-13T02:22:22.245910Z")
    record = maximise_cms_fields(g.build_record(plan, g._MAX_INDEX), plan)
    size = len(orjson.dumps(record))
    assert size < 1024, size


def test_sampled_records_are_under_1_kb():
    plan = g.make_plan(5, "2025-10-13T02:22:22.245910Z", mortality_rate=0.5)
    assert max(len(orjson.dumps(g.build_record(plan, i))) for i in range(20_000)) < 1024


# --- identity ------------------------------------------------------------------------------------


def test_ids_are_version_4_uuids_and_ids_and_mrns_never_repeat():
    plan = g.make_plan(123, AS_OF)
    indexes = list(range(100_000)) + list(range(g._MAX_INDEX - 50_000, g._MAX_INDEX + 1))
    ids, mrns = set(), set()
    for index in indexes:
        record = g.build_record(plan, index)
        u = uuid.UUID(record["id"])
        assert u.version == 4 and u.variant == uuid.RFC_4122 and str(u) == record["id"]
        ids.add(record["id"])
        mrns.add(record["identifier"][0]["value"])
    assert len(ids) == len(mrns) == len(indexes)


def test_the_mrn_map_is_a_permutation_of_ten_digit_numbers():
    # The same cycle-walking construction on a small domain can be checked exhaustively.
    plan = g.make_plan(8, AS_OF)
    numbers = [int(g._patient_mrn(plan, i).removeprefix("MC-")) for i in range(200_000)]
    assert len(set(numbers)) == len(numbers) and all(0 <= n < 10**10 for n in numbers)


def test_the_uuid_is_an_invertible_mix_of_the_index():
    # Each step (odd multiply, xorshift) has an inverse: undo them on the id's 122 random bits
    # and get the index (plus the plan's offset) back, so ids cannot collide.
    plan = g.make_plan(8, AS_OF)
    m1, m2, m3 = plan.uuid_mul
    mask = (1 << 122) - 1

    def unxorshift(y: int, s: int) -> int:
        x = y
        for _ in range(122 // s + 1):
            x = y ^ (x >> s)
        return x

    for index in [0, 1, 2, 12345, 2**32 + 7, g._MAX_INDEX]:
        v = uuid.UUID(g.patient_id(plan, index)).int
        y = (v >> 80) << 74 | ((v >> 64) & 0xFFF) << 62 | (v & ((1 << 62) - 1))
        y = unxorshift(y, 63) * pow(m3, -1, 2**122) & mask
        y = unxorshift(y, 59) * pow(m2, -1, 2**122) & mask
        y = unxorshift(y, 61) * pow(m1, -1, 2**122) & mask
        assert y == (index + plan.uuid_add) & mask


# --- reproducibility ---------------------------------------------------------------------------


def test_same_inputs_give_the_same_bytes_in_any_order():
    plan = g.make_plan(77, AS_OF, min_age=18)
    forward = [orjson.dumps(g.build_record(plan, i)) for i in range(500)]
    backward = [orjson.dumps(g.build_record(plan, i)) for i in reversed(range(500))]
    assert forward == backward[::-1]
    streamed = [
        orjson.dumps(r)
        for r in g.generate_patients(100, seed=77, start=200, as_of=AS_OF, min_age=18)
    ]
    assert streamed == forward[200:300]


def test_different_seeds_and_as_of_give_different_patients():
    a = g.build_record(g.make_plan(1, AS_OF), 0)
    b = g.build_record(g.make_plan(2, AS_OF), 0)
    c = g.build_record(g.make_plan(1, "2026-10-13T02:22:22Z"), 0)
    assert a["id"] != b["id"]
    assert a["birthDate"] != c["birthDate"] and a["meta"] != c["meta"]


def test_output_is_byte_identical_across_processes_and_hash_seeds():
    outputs = {
        run_cli(
            "--seed", "5", "--as-of", AS_OF, "--count", "200", env={"PYTHONHASHSEED": seed}
        ).stdout
        for seed in ("0", "1", "random")
    }
    assert len(outputs) == 1
    lines = outputs.pop().splitlines()
    plan = g.make_plan(5, AS_OF)
    assert lines == [orjson.dumps(g.build_record(plan, i)).decode() for i in range(200)]


def test_generate_patients_is_lazy():
    stream = g.generate_patients(10**9, seed=1, as_of=AS_OF)
    assert next(stream)["resourceType"] == "Patient"  # a list of 10**9 would never return


# --- impossible records -------------------------------------------------------------------------


def test_no_record_is_impossible():
    as_of = datetime(2025, 10, 13, 2, 22, 22, tzinfo=UTC)
    plan = g.make_plan(21, as_of, mortality_rate=0.3, lookback_years=2.5)
    zips = set(g._load_reference().zips)
    org_by_id = {o["id"]: o for o in plan.organizations}
    window_start = as_of.timestamp() - 2.5 * 365.2425 * 86400
    for index in range(20_000):
        r = g.build_record(plan, index)
        born = date.fromisoformat(r["birthDate"])
        died = datetime.fromisoformat(r.get("deceasedDateTime", as_of.isoformat()))
        age = (died.date() - born).days / 365.2425  # at as-of, or at death for the deceased
        assert 0 <= age < g._MAX_AGE + 1
        assert born <= died.date() <= as_of.date()
        state, a = r["address"][0]["state"], r["address"][0]
        assert (a["postalCode"], a["city"], a["district"], state) in zips
        org = org_by_id[r["managingOrganization"]["reference"].removeprefix("Organization/")]
        assert org["name"] == r["managingOrganization"]["display"]  # any state (issue 17)
        if "deceasedDateTime" in r:
            died = datetime.fromisoformat(r["deceasedDateTime"])
            assert died <= as_of
            assert died.timestamp() >= window_start - 1
            assert died.date() >= born


# --- API helpers ---------------------------------------------------------------------------------


def test_suggested_s3_key_for_models_and_dicts():
    patient = g.generate_patient(seed=1, as_of=AS_OF)
    expected = f"s3://metriccare-dev/bronze/patient/patient_{patient.id}.json"
    assert g.suggested_s3_key(patient) == expected
    assert g.suggested_s3_key(json.loads(g.to_json(patient))) == expected
    assert (
        g.suggested_s3_key(patient, bucket="lake", prefix="/raw/fhir/patient/")
        == f"s3://lake/raw/fhir/patient/patient_{patient.id}.json"
    )


@pytest.mark.parametrize(
    "options, message",
    [
        ({"min_age": 70, "max_age": 60}, "greater than"),
        ({"min_age": -1}, "min-age"),
        ({"max_age": 111}, "max-age"),
        ({"states": "CA,ZZ"}, "unknown state"),
        ({"states": ","}, "no state"),
        ({"mortality_rate": 1.5}, "mortality-rate"),
        ({"lookback_years": 0}, "lookback-years"),
        ({"hospitals_per_million": 1}, "unknown option"),  # gone: hospitals are real
    ],
)
def test_bad_options_raise_value_error(options, message):
    with pytest.raises(ValueError, match=message):
        g.make_plan(1, AS_OF, **options)


def test_bad_seed_index_and_as_of_raise_value_error():
    with pytest.raises(ValueError):
        g.make_plan(-1, AS_OF)
    with pytest.raises(ValueError):
        g.make_plan(1, "yesterday")
    with pytest.raises(ValueError):
        g.build_record(g.make_plan(1, AS_OF), g._MAX_INDEX + 1)


@pytest.mark.parametrize(
    "as_of",
    ["9999-12-31T23:59:59-05:00", "0001-01-01T00:00:00+01:00", "2009-12-31T23:59:59Z"],
)
def test_as_of_outside_the_supported_range_is_a_value_error(as_of):
    """Offsets that overflow datetime in UTC raise ValueError (not OverflowError), API and CLI."""
    with pytest.raises(ValueError, match="out of range"):
        g._parse_as_of(as_of)
    with pytest.raises(ValueError, match="out of range"):
        g.make_plan(1, datetime.fromisoformat(as_of))
    result = run_cli("--as-of", as_of, "--seed", "1")
    assert result.returncode == 2 and result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "out of range" in lines[0] and "Traceback" not in result.stderr


def test_the_last_supported_as_of_builds_patients():
    """As-of 9999-12-31T23:59:59.999999Z: birth and death tables and the window still work."""
    as_of = "9999-12-31T23:59:59.999999Z"
    for profile in g._PROFILES:
        plan = g.make_plan(5, as_of, profile=profile, mortality_rate=0.5)
        records = [g.build_record(plan, i) for i in range(500)]
        assert b"".join(g.ndjson_chunks(plan, 0, 500)) == b"".join(
            orjson.dumps(r) + b"\n" for r in records
        )
        assert any("deceasedDateTime" in r for r in records)
        assert all("9889-" <= r["birthDate"] <= "9999-12-31" for r in records)
    PatientR5.model_validate(g.generate_patient(seed=5, as_of=as_of).model_dump())


# --- CLI -----------------------------------------------------------------------------------------


def test_cli_without_arguments_prints_a_patient_and_its_s3_path():
    result = run_cli()
    assert result.returncode == 0, result.stderr
    body, _, last = result.stdout.rstrip("\n").rpartition("\n")
    record = json.loads(body)
    assert (
        last == f"Suggested S3 Path: s3://metriccare-dev/bronze/patient/patient_{record['id']}.json"
    )
    PatientR5.model_validate(record)
    seed = re.search(r"--seed (\d+) --as-of (\S+)\)", result.stderr)
    assert seed, result.stderr  # the drawn seed is reported so the run can be repeated
    again = run_cli("--seed", seed.group(1), "--as-of", seed.group(2))
    assert again.stdout == result.stdout and again.stderr == ""


def test_cli_seed_and_as_of_reproduce_generate_patient():
    result = run_cli("--seed", "42", "--as-of", AS_OF, "--bucket", "b", "--prefix", "p/q")
    patient = g.generate_patient(seed=42, as_of=AS_OF)
    assert result.stdout == g.to_json(patient, pretty=True) + (
        f"\nSuggested S3 Path: s3://b/p/q/patient_{patient.id}.json\n"
    )


def test_cli_count_writes_only_ndjson_on_stdout():
    result = run_cli(
        "--count", "50", "--seed", "3", "--as-of", AS_OF, "--min-age", "65", "--states", "ca,ny"
    )
    assert result.returncode == 0 and result.stderr == ""
    lines = result.stdout.splitlines()
    assert len(lines) == 50
    for line in lines:
        record = json.loads(line)
        assert record["address"][0]["state"] in {"CA", "NY"}
        assert date.fromisoformat(record["birthDate"]) <= date(1960, 10, 13)


@pytest.mark.parametrize(
    "args",
    [
        ["--count", "0"],
        ["--count", "-5"],
        ["--count", "ten"],
        ["--as-of", "not-a-date"],
        ["--min-age", "70", "--max-age", "60"],
        ["--states", "CA,XX"],
        ["--min-age", "200"],
        ["--seed", "abc"],
        ["--mortality-rate", "2"],
        ["--start", "-1"],
        ["--no-such-flag"],
    ],
)
def test_cli_bad_input_is_one_line_and_exit_2(args):
    result = run_cli(*args)
    assert result.returncode == 2
    assert result.stdout == ""
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "Traceback" not in result.stderr and "error:" in result.stderr


def test_cli_version_and_help():
    assert run_cli("--version").stdout.strip() == f"fhir_patient_generator.py {g.__version__}"
    help_text = run_cli("--help").stdout
    assert "examples:" in help_text and "--as-of" in help_text and "--count" in help_text


def test_cli_survives_a_closed_pipe():
    shell = f"{sys.executable} {SCRIPT} --count 100000 --seed 1 --as-of {AS_OF} | head -n 1"
    result = subprocess.run(
        ["bash", "-o", "pipefail", "-c", shell], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0 and "Traceback" not in result.stderr
    assert json.loads(result.stdout)["resourceType"] == "Patient"


def test_cli_ctrl_c_while_streaming_ndjson_says_interrupted_and_exits_130():
    """SIGINT during --count N to a pipe: one line 'error: interrupted', exit 130."""
    import signal
    import threading

    args = [sys.executable, str(SCRIPT), "--count", "50000000", "--seed", "1", "--as-of", AS_OF]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    started = threading.Event()

    def drain() -> None:
        while chunk := proc.stdout.read(1 << 16):
            started.set()
            del chunk

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    try:
        assert started.wait(60), "no output within 60 s"
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 130
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    reader.join(10)
    err = proc.stderr.read().decode()
    proc.stderr.close()
    proc.stdout.close()
    assert err.strip().splitlines() == ["fhir_patient_generator.py: error: interrupted"], err


def test_faker_surname_table_is_the_one_the_outputs_were_made_with():
    """Hospital names come from Faker's en_US surnames: a changed table would change outputs."""
    import hashlib

    from faker.providers.person.en_US import Provider

    digest = hashlib.sha256("\n".join(Provider.last_names).encode()).hexdigest()
    assert len(Provider.last_names) == 1000
    assert digest == FAKER_SURNAMES_SHA256, "Faker's surname table changed: outputs would change"


def test_a_pickled_plan_builds_the_same_records():
    """Spark broadcasts plans to executors: the copy must build identical bytes."""
    import pickle

    plan = g.make_plan(31, AS_OF, profile="us-core", states="TX")
    copy = pickle.loads(pickle.dumps(plan))
    for index in (0, 1, 999, g._MAX_INDEX):
        assert orjson.dumps(g.build_record(copy, index)) == orjson.dumps(
            g.build_record(plan, index)
        )


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"min_age": 65, "states": "FL,AZ"},
        {"mortality_rate": 0.5, "lookback_years": 10},
        {"profile": "us-core", "max_age": 17},
    ],
)
def test_the_bulk_path_writes_exactly_what_generate_patient_validates(options):
    """ndjson_chunks (CLI, writers, Spark) vs the validated fhir.resources model, byte for byte."""
    for seed in (0, 1, 2**63 + 12345):
        plan = g.make_plan(seed, AS_OF, **options)
        start = seed % 1_000_000
        bulk = b"".join(g.ndjson_chunks(plan, start, start + 250)).decode().splitlines()
        models = [
            g.to_json(g.generate_patient(seed, i, AS_OF, **options))
            for i in range(start, start + 250)
        ]
        assert bulk == models


@pytest.mark.parametrize(
    "options, as_of",
    [
        ({}, AS_OF),
        ({"mortality_rate": 1.0, "min_age": 0, "max_age": 0}, AS_OF),  # all dead, born in window
        ({"mortality_rate": 1.0, "lookback_years": 100}, "2025-10-13T02:22:22.245910Z"),
        ({"profile": "us-core"}, AS_OF),
    ],
)
def test_the_json_renderer_writes_the_bytes_orjson_writes_for_the_dict(options, as_of):
    """json_renderer pre-serialises the fixed parts; it must still be orjson.dumps(build_record)."""
    for seed in (0, 2**64 - 1):
        plan = g.make_plan(seed, as_of, **options)
        render = g.json_renderer(plan)
        for i in [*range(3000), g._MAX_INDEX - 1, g._MAX_INDEX]:
            assert render(i) == orjson.dumps(g.build_record(plan, i)), (seed, i)


def test_the_json_renderer_matches_across_every_state_zip_and_hospital():
    """Each state alone, 3,000 patients each: every ZIP expected 20+ times, and every hospital
    so expected, is rendered and compared at least once (a miss has probability below e**-20)."""
    zips, hospitals, genders = set(), set(), set()
    expected_zips, expected_hospitals = set(), set()
    for state in g.make_plan(1, AS_OF).state_codes:
        plan = g.make_plan(1, AS_OF, states=state)
        render = g.json_renderer(plan)
        for i in range(3000):
            record = g.build_record(plan, i)
            assert render(i) == orjson.dumps(record), (state, i)
            zips.add(record["address"][0]["postalCode"])
            hospitals.add(record["managingOrganization"]["reference"])
            genders.add(record["gender"])
        cum = plan.zip_cum[0]
        shares = [(b - a) / cum[-1] for a, b in zip((0, *cum), cum, strict=False)]
        expected_zips |= {
            plan.zips[z][0]
            for z, p in zip(plan.zip_index[0], shares, strict=True)
            if p * 3000 >= 20
        }
        expected_hospitals |= {
            "Organization/" + plan.hospitals[h]["id"]
            for h, p in hospital_shares(plan).items()
            if p * 3000 >= 20
        }
    assert zips >= expected_zips and len(expected_zips) > 500
    assert hospitals >= expected_hospitals and len(expected_hospitals) > 300
    assert genders == GENDER_CODES


# --- the stated public API ---------------------------------------------------------------------


def test_all_is_exactly_the_readme_api_table():
    """__all__ names what the README's API table documents, no more and no less."""
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    table = readme[readme.index("| Name | What it is |") :].split("\n\n", 1)[0]
    documented = set()
    for row in table.splitlines()[2:]:
        first_cell = row.split(" | ")[0]
        documented |= set(re.findall(r"`([A-Za-z_]\w*)", first_cell))
    assert documented == set(g.__all__)
    assert all(hasattr(g, name) for name in g.__all__)
