"""Shared facts about records for the tests of both profiles: key order and the worst case."""

from __future__ import annotations

from typing import Any

import fhir_patient_generator as g

# Top-level keys in FHIR element order (deceasedDateTime only when deceased).
PATIENT_KEYS = [
    "resourceType",
    "id",
    "meta",
    "identifier",
    "active",
    "gender",
    "birthDate",
    "deceasedDateTime",
    "address",
    "communication",
    "managingOrganization",
]
# us-core adds extension (after meta) and name (after active), in element order.
US_CORE_KEYS = PATIENT_KEYS[:3] + ["extension"] + PATIENT_KEYS[3:5] + ["name"] + PATIENT_KEYS[5:]


def maximise_cms_fields(record: dict[str, Any], plan: g.Plan) -> dict[str, Any]:
    """Longest city, hospital, language and gender, and a death date, set into `record`."""
    ref = g.load_reference()
    longest_city = max((c for cities in ref.cities.values() for c, _ in cities), key=len)
    longest_org = max(plan.organizations, key=lambda o: len(o["id"]) + len(o["name"]))
    code, display, _ = max(ref.languages, key=lambda lang: 2 * len(lang[1]) + len(lang[0]))
    record["gender"] = "unknown"
    record["deceasedDateTime"] = "2025-10-13T02:22:22Z"
    record["address"][0]["city"] = longest_city
    record["communication"][0]["language"] = {
        "coding": [{"system": "urn:ietf:bcp:47", "code": code, "display": display}],
        "text": display,
    }
    record["managingOrganization"] = {
        "reference": f"Organization/{longest_org['id']}",
        "display": longest_org["name"],
    }
    assert len(longest_org["id"]) <= 64  # FHIR id limit
    return record
