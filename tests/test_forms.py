"""One form per value: window times are parsed once (Window keeps aware UTC datetimes, from
datetimes or ISO text alike) and the FHIR version is resolved once into the plan."""

from __future__ import annotations

import pickle
from datetime import UTC, datetime, timedelta, timezone

import fhir_patient_generator as g

# Private names used here (internals this file checks or drives directly): _FHIR_VERSIONS,
# _window_versions

E = "2024-01-01T00:00:00Z"


def test_a_window_keeps_its_times_as_utc_datetimes_from_text_or_datetimes():
    plus2 = timezone(timedelta(hours=2))
    text = g.Window(10, "2025-01-01T02:00:00+02:00", "2024-06-01T00:00:00Z")
    dt = g.Window(10, datetime(2025, 1, 1, 2, tzinfo=plus2), datetime(2024, 6, 1))  # naive: UTC
    assert text == dt
    assert text.until == datetime(2025, 1, 1, tzinfo=UTC) and text.until.tzinfo is UTC
    assert text.since == datetime(2024, 6, 1, tzinfo=UTC)
    assert g.Window(10, "2025-01-01T00:00:00Z").since is None
    assert pickle.loads(pickle.dumps(text)) == text  # workers receive specs with windows
    assert text._replace(latest=True).until == text.until


def test_a_window_from_text_or_datetimes_writes_the_same_batch():
    plan = g.make_plan(3, E)
    a = g.Window(2_000, "2024-09-01T00:00:00Z", "2024-03-01T00:00:00Z")
    b = g.Window(2_000, datetime(2024, 9, 1, tzinfo=UTC), datetime(2024, 3, 1, tzinfo=UTC))
    versions = list(g._window_versions(plan, a))
    assert versions and versions == list(g._window_versions(plan, b))
    assert g.changes(plan, 2_000, "2024-03-01T00:00:00Z", "2024-09-01T00:00:00Z") == versions


def test_a_bad_window_time_is_a_value_error_when_the_window_is_made():
    for bad in ("yesterday", "2024-13-01T00:00:00Z", 5):
        try:
            g.Window(10, bad)
        except ValueError:
            continue
        raise AssertionError(f"{bad!r} was accepted")


def test_the_fhir_version_is_resolved_once_into_the_plan():
    for name, version in g._FHIR_VERSIONS.items():
        plan = g.make_plan(1, E, fhir_version=name)
        assert plan.fhir_version is version
        org = plan.organizations[0]
        assert g.organization_record(org, plan.fhir_version) == g.organization_record(org, name)
    r4, r5 = (g.organization_record(org, v) for v in ("R4", "R5"))
    assert "address" in r4 and "contact" in r5
