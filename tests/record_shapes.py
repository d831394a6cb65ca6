"""Shared facts about records for the tests of both profiles: key order, the worst case and the
exact hospital shares a plan implies."""

from __future__ import annotations

from collections import Counter
from typing import Any

import fhir_patient_generator as g

# Private names used here (internals this file checks or drives directly): _CANDIDATES,
# _CHILDREN_HOSPITAL_TYPE, _CHILD_AGE, _GENERAL_HOSPITAL_TYPES, _load_reference

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
    """Longest ZIP city, county, hospital (id + name), language and gender, and a death date,
    set into `record` (the longest of each, even where no real ZIP has them all at once)."""
    ref = g._load_reference()
    longest_city = max((z[1] for z in ref.zips), key=len)
    longest_county = max((z[2] for z in ref.zips), key=len)
    used = [
        h
        for h in ref.hospitals
        if h["hospital_type"] in (*g._GENERAL_HOSPITAL_TYPES, g._CHILDREN_HOSPITAL_TYPE)
    ]
    longest_org = max(used, key=lambda o: len(o["id"]) + len(o["name"].encode()))
    code, display, _ = max(ref.languages, key=lambda lang: 2 * len(lang[1]) + len(lang[0]))
    record["gender"] = "unknown"
    record["deceasedDateTime"] = "2025-10-13T02:22:22Z"
    record["address"][0].update(city=longest_city, district=longest_county, postalCode="99999")
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


def hospital_shares(plan: g.Plan) -> dict[int, float]:
    """hospital position -> the exact probability that a patient of the plan is managed by it:
    state x ZIP x (under CHILD_AGE or not, by the state's own cells) x the ZIP's candidate
    weights."""
    out: Counter = Counter()
    states = plan.state_cum
    for s, (zips, zcum) in enumerate(zip(plan.zip_index, plan.zip_cum, strict=True)):
        cum = plan.cell_cum[s]
        child = (
            sum(
                b - a
                for (age, _, _), a, b in zip(plan.cells, (0, *cum), cum, strict=False)
                if age < g._CHILD_AGE
            )
            / cum[-1]
        )
        p_state = (states[s] - (states[s - 1] if s else 0)) / states[-1]
        for k, z in enumerate(zips):
            p_zip = p_state * (zcum[k] - (zcum[k - 1] if k else 0)) / zcum[-1]
            lo = z * g._CANDIDATES
            w = [plan.hospital_cum[lo]] + [
                plan.hospital_cum[lo + j] - plan.hospital_cum[lo + j - 1]
                for j in range(1, g._CANDIDATES)
            ]
            adult, kid = sum(w[:-1]), sum(w)
            for j in range(g._CANDIDATES):
                h = plan.hospital_cand[lo + j]
                share = (1 - child) * (w[j] / adult if j < g._CANDIDATES - 1 else 0.0)
                out[h] += p_zip * (share + child * w[j] / kid)
    return {h: p for h, p in out.items() if p > 0}
