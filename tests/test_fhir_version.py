"""--fhir-version: every resource a run writes is valid in the declared version, checked by
fhir.resources and by an independent validator per version (fhirkit-rs for R4,
fhirpy-types-r5 for R5); the manifest and the API declare it."""

from __future__ import annotations

import fhirkit
import fhirpy_types_r5
import orjson
import pytest
from bronze_util import AS_OF, records, run_cli
from fhir.resources.organization import Organization as OrganizationR5
from fhir.resources.patient import Patient as PatientR5
from fhir.resources.R4B.organization import Organization as OrganizationR4B
from fhir.resources.R4B.patient import Patient as PatientR4B

import fhir_patient_generator as g

# Private names used here (internals this file checks or drives directly): _normalise_options


def r4_issues(resource: dict) -> list[str]:
    """fhirkit-rs (FHIR 4.0.1, Rust, not built on fhir.resources): error messages."""
    return [f"{i.path}: {i.message}" for i in fhirkit.validate(resource) if i.severity == "error"]


def r5_issues(resource: dict) -> list[str]:
    """fhirpy-types-r5 (pydantic models of R5, extra elements forbidden): error messages."""
    model = getattr(fhirpy_types_r5, resource["resourceType"])
    try:
        model.model_validate(resource)
    except Exception as e:  # pydantic's ValidationError
        return [str(e)]
    return []


VALIDATORS = {
    "R4": ((PatientR4B, OrganizationR4B), r4_issues),
    "R5": ((PatientR5, OrganizationR5), r5_issues),
}


@pytest.mark.parametrize("version", ["R4", "R5"])
def test_every_written_resource_is_valid_in_the_declared_version(tmp_path, version):
    root = tmp_path / "bronze"
    result = run_cli(
        "--count", "300", "--output", str(root), "--format", "ndjson", "--fhir-version", version,
        "--min-age", "80",  # many deceased patients
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    (patient_model, org_model), independent = VALIDATORS[version]
    patients = records(root / "patient" / "Patient.000001.ndjson")
    orgs = records(root / "organization" / "Organization.000001.ndjson")
    assert len(patients) == 300 and len(orgs) > 50
    assert any("deceasedDateTime" in p for p in patients)
    for model, resources in ((patient_model, patients), (org_model, orgs)):
        for resource in resources:
            text = orjson.dumps(resource).decode()
            assert model.model_validate_json(text).model_dump_json() == text
            assert independent(resource) == [], resource
    manifest = orjson.loads((root / "_manifest.json").read_bytes())
    assert manifest["extension"]["fhirVersion"] == {"R4": "4.0.1", "R5": "5.0.0"}[version]
    assert manifest["extension"]["generator"]["options"]["fhir_version"] == version
    assert f"--fhir-version {version}" in manifest["request"]


def test_the_independent_validators_tell_the_organization_forms_apart():
    """R4's Organization.address is not an R5 element, so the R4 form fails R5 (as it did
    before runs declared a version) and each version's own form passes its own validator."""
    org = g.make_plan(1, AS_OF).organizations[0]
    r4, r5 = g.organization_record(org, "R4"), g.organization_record(org, "R5")
    assert r4_issues(r4) == [] and r5_issues(r5) == []
    assert r5_issues(r4)  # address is not an R5 Organization element
    with pytest.raises(ValueError):
        OrganizationR5.model_validate(r4)
    assert r4["address"] == [r5["contact"][0]["address"]]


def test_the_patient_bytes_do_not_depend_on_the_version():
    r4, r5 = (g.make_plan(5, AS_OF, fhir_version=v) for v in ("R4", "R5"))
    assert [g.json_renderer(r4)(i) for i in range(2000)] == [
        g.json_renderer(r5)(i) for i in range(2000)
    ]


def test_the_api_returns_the_models_of_the_declared_version():
    assert isinstance(g.generate_patient(3, 0, AS_OF), PatientR4B)  # R4 is the default
    assert isinstance(g.generate_patient(3, 0, AS_OF, fhir_version="R5"), PatientR5)
    assert g._normalise_options()["fhir_version"] == "R4"


def test_us_core_is_an_r4_guide_and_a_bad_version_is_usage_error():
    with pytest.raises(ValueError, match="R4 only"):
        g.make_plan(1, AS_OF, profile="us-core", fhir_version="R5")
    with pytest.raises(ValueError, match="--fhir-version"):
        g.make_plan(1, AS_OF, fhir_version="R6")
    for args in (["--profile", "us-core", "--fhir-version", "R5"], ["--fhir-version", "DSTU2"]):
        result = run_cli(*args)
        assert result.returncode == 2 and result.stdout == ""
        assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
