"""Event kinds as one table: the replay (history, snapshot) and the window pre-check (changes)
read the same _EVENT_KINDS, so a batch holds exactly the versions the histories have, for
every kind."""

from __future__ import annotations

from collections import Counter
from datetime import datetime

import fhir_patient_generator as g

# Private names used here (internals this file checks or drives directly): _Candidate,
# _EVENT_KINDS, _MOVE_KINDS, _candidates, _dynamics, _population_size

E = "2024-01-01T00:00:00Z"
SINCE, UNTIL = "2024-03-01T00:00:00Z", "2025-06-01T00:00:00Z"
STARTS = {"birth", "arrival", "delete"}  # changes that are not events of the table


def kind_of(change: str) -> str:
    return "move" if change in g._MOVE_KINDS else change


def test_changes_are_the_histories_versions_for_every_event_kind():
    plan, count = g.make_plan(31, E), 4_000
    n = g._population_size(plan, count, UNTIL)
    lo, hi = (datetime.fromisoformat(t).timestamp() for t in (SINCE, UNTIL))
    expected = [
        v
        for i in range(n)
        for v in g.history(plan, count, i, UNTIL)
        if lo < v.instant <= hi and v.change != "epoch"
    ]
    got = g.changes(plan, count, SINCE, UNTIL)
    seen = Counter(kind_of(v.change) for v in expected)
    # the comparison covers every kind of the table (and nothing outside it)
    assert {k.name for k in g._EVENT_KINDS} == set(seen) - STARTS, seen
    assert min(seen[k.name] for k in g._EVENT_KINDS) >= 10, seen
    assert Counter(kind_of(v.change) for v in got) == seen
    assert got == expected


def test_every_kind_is_drawn_in_proportion_to_its_bound():
    """The kind word splits the candidates by the bounds: over 20,000 candidates each kind's
    share is its bound's share of the total within 4 standard errors."""
    dyn = g._dynamics(g.make_plan(32, E))
    kinds = Counter()
    for block in range(300):
        for events in g._candidates(dyn, block, dyn.start, dyn.start + 365 * 86400).values():
            for event in events:
                word = g._Candidate._make(event).kind
                kinds[g.bisect.bisect_right(dyn.kind_cut, word)] += 1
    total = sum(kinds.values())
    bound = sum(k.bound for k in g._EVENT_KINDS)
    assert total > 20_000
    for k, kind in enumerate(g._EVENT_KINDS):
        p = kind.bound / bound
        assert abs(kinds[k] - p * total) < 4 * (total * p * (1 - p)) ** 0.5, (kind.name, kinds)
