"""The living stays' window pre-check (issue 18 speed): _window_stays replays only the patients
whose candidates pass necessary conditions (read as numpy columns, cheapest first), so it must
find exactly the stays that replaying every patient finds. Checked against that brute force
for whole populations and several windows, and at the bounds' tightest: every real stay is
found by the one-second window that delivers it. The numpy helpers equal their one-by-one
counterparts."""

from __future__ import annotations

import random
from datetime import UTC, datetime

import numpy as np
import pytest

import fhir_patient_generator as g

# Private names used here (internals this file checks or drives directly): _BLOCK,
# _LOS_SHIFT, _MAX_STAYS, _StayDraws, _Tiles, _WindowScope, _admission_tables,
# _admission_words, _admissions, _age, _age_column, _candidates, _dynamics, _evolve,
# _hai_bound, _hai_bound_column, _joiners_by, _live_stays, _los, _seconds, _stay_tables,
# _start, _tile_columns, _tile_words, _who, _window_stays, _window_suspects

EPOCH = "2026-01-01T00:00:00Z"
DAY = 86400


def iso(seconds: int) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def brute(plan, count: int, since: int, until: int) -> dict[int, list]:
    """Every index's stays delivered in (since, until], each patient replayed from the epoch
    (no pre-check): the reference the window's stays must equal."""
    dyn, a = g._dynamics(plan), g._admission_tables(plan)
    n = count + g._joiners_by(plan, dyn, count, until)
    out = {}
    for block in range(-(-n // g._BLOCK)):
        events = g._candidates(dyn, block, dyn.start, until)
        admissions = g._admissions(a, block, dyn.start, until)
        for i in range(block * g._BLOCK, min(n, block * g._BLOCK + g._BLOCK)):
            start = g._start(plan, dyn, count, i)
            versions = g._evolve(plan, dyn, i, start, events.get(i % g._BLOCK, []), until)
            found = g._live_stays(plan, start, versions, admissions.get(i % g._BLOCK, []), until)
            mine = [ls for ls in found if since < ls.delivered]
            if mine:
                out[i] = mine
    return out


PLANS = [  # (seed, options, epoch population)
    (5, {}, 5000),
    (8, {"min_age": 65}, 3000),  # old patients: many stays, cohorts, readmission chains
    (9, {"states": ["VT", "NH"]}, 4000),
]


@pytest.mark.parametrize(("seed", "options", "count"), PLANS)
def test_window_stays_equal_replaying_every_patient(seed, options, count):
    """For a day at the epoch, a month, a week a year on, a window across a new year and a
    snapshot, the window's stays are the brute force's, patient for patient."""
    plan = g.make_plan(seed, EPOCH, encounters=True, **options)
    e = g._seconds(plan.as_of)
    windows = [
        (e, e + DAY),
        (e + 100 * DAY, e + 130 * DAY),
        (e + 365 * DAY + 3 * DAY + 3600, e + 365 * DAY + 10 * DAY),
        (e + 350 * DAY, e + 372 * DAY),
        (None, e + 200 * DAY),
    ]
    found = 0
    for since, until in windows:
        w = g.Window(count, iso(until), None if since is None else iso(since))
        expected = brute(plan, count, e if since is None else since, until)
        assert g._window_stays(plan, w) == expected
        found += sum(map(len, expected.values()))
    assert found > 100  # not vacuous


def test_every_stay_is_found_by_the_second_that_delivers_it():
    """Every stay delivered in two years (brute force) is found by the one-second window
    (d - 1, d] at its delivery d, for its patient: no bound of the pre-check (hash-free,
    by the patient, by the stay's draws) ever rejects a real stay, even where they are
    tightest. The readmissions and infected stays among them are counted, so the check
    covers the chains and the infections' bound."""
    count = 3000
    plan = g.make_plan(8, EPOCH, encounters=True, min_age=65)
    e = g._seconds(plan.as_of)
    everything = brute(plan, count, e, e + 730 * DAY)
    readmissions = infected = 0
    for i, found in everything.items():
        for ls in found:
            d = ls.delivered
            w = g.Window(count, iso(d), iso(d - 1))
            assert ls in g._window_stays(plan, w, i, i + 1).get(i, []), (i, ls)
            readmissions += (ls.stay.k - g._MAX_STAYS) % 4 > 0
            infected += bool(ls.stay.hais)
    assert sum(map(len, everything.values())) > 400
    assert readmissions > 30 and infected > 3


def test_a_one_day_window_replays_few_patients():
    """The pre-check's point: of 20,000 patients, a one-day window a year on replays well
    under 1 % (the patients with a stay delivered that day among them)."""
    count = 20_000
    plan = g.make_plan(5, EPOCH, encounters=True)
    dyn, e = g._dynamics(plan), g._seconds(plan.as_of)
    since, until = e + 400 * DAY, e + 401 * DAY
    n = count + g._joiners_by(plan, dyn, count, until)
    scope = g._WindowScope(count, 0, n, since, until)
    blocks = range(-(-n // g._BLOCK))
    suspects = g._window_suspects(plan, dyn, scope, blocks, g._Tiles(plan, dyn))
    found = brute(plan, count, since, until)
    assert set(found) <= set(suspects)
    assert len(suspects) < n / 100


def test_numpy_helpers_equal_their_one_by_one_counterparts():
    """_age_column is _age; _tile_columns finds what _admissions and _candidates find; _who
    gives _start's sex, birth, cell and first instant (epoch patients, joiners, the dead)."""
    rng = random.Random(4)
    births = [rng.randrange(693596, 740000) for _ in range(3000)]  # 1900 .. 2027
    instants = [rng.randrange(0, 4_102_444_800) for _ in births]  # 1970 .. 2100
    ages = g._age_column(np.array(births), np.array(instants))
    assert ages.tolist() == [g._age(b, t) for b, t in zip(births, instants, strict=True)]

    plan = g.make_plan(5, EPOCH, encounters=True)
    dyn, a = g._dynamics(plan), g._admission_tables(plan)
    lo, hi = dyn.start + 200 * DAY, dyn.start + 420 * DAY  # across a new year
    blocks = range(10, 14)
    for read, width, whole in (
        (lambda b, y: g._admission_words(a, b, y), 15, lambda b: g._admissions(a, b, lo, hi)),
        (lambda b, y: g._tile_words(dyn, b, y), 5, lambda b: g._candidates(dyn, b, lo, hi)),
    ):
        c = g._tile_columns(read, blocks, (lo, hi), width)
        got = sorted(
            (int(b), int(w[0]) % g._BLOCK, int(t))
            for b, w, t in zip(c.block, c.words, c.instant, strict=True)
        )
        expected = sorted(
            (b, offset, found[0]) for b in blocks for offset, rows in whole(b).items()
            for found in rows
        )  # fmt: skip
        assert got == expected and len(got) > 50

    count = 2000
    indexes = np.array([*range(0, 2000, 7), *range(2000, 2000 + 3000)], np.int64)
    who = g._who(plan, dyn, count, indexes)
    changes = set()
    for row, i in enumerate(indexes.tolist()):
        start = g._start(plan, dyn, count, i)
        s = start.sample
        changes.add((start.change, start.deleted is not None))
        assert bool(who.female[row]) == (s.sex == "female")
        assert int(who.cell[row]) == s.cell and int(who.first[row]) == start.instant
        assert bool(who.gone[row]) == (s.died >= 0 or start.deleted is not None)
        if not who.gone[row]:
            assert int(who.birth[row]) == s.birth
    assert who.gone.any() and not who.gone.all()
    assert {("epoch", False), ("birth", False), ("arrival", False)} <= changes
    assert ("arrival", True) in changes or ("birth", True) in changes  # entered in error


def test_los_range_holds_every_diagnosis_of_its_group():
    """_los_range's shortest and longest bound _los for every diagnosis of a group and any
    draw in the range (random draws and the ranges' edges)."""
    plan = g.make_plan(5, EPOCH, encounters=True)
    t, a = g._stay_tables(plan), g._admission_tables(plan)
    shortest, longest = a.los_range
    groups = [*t.mix_rows, t.cohort_dx]
    rng = random.Random(6)
    draws = [rng.randrange(1 << 32) for _ in range(1500)]
    draws += [j << g._LOS_SHIFT for j in range(0, 1 << 10, 7)]
    draws += [((j + 1) << g._LOS_SHIFT) - 1 for j in range(0, 1 << 10, 7)]
    zero = g._StayDraws._make([0] * len(g._StayDraws._fields))
    for u32 in draws:
        j, u = u32 >> g._LOS_SHIFT, zero._replace(los=u32)
        for n, rows in enumerate(groups):
            for d in rows:
                assert shortest[n, j] <= g._los(t.diagnoses[d], u) <= longest[n, j]


def test_hai_bound_column_is_hai_bound():
    """_hai_bound_column gives _hai_bound for each stay and longest, over many stays and
    lengths (short to long: the kinds' cuts are crossed both ways)."""
    plan = g.make_plan(5, EPOCH, encounters=True)
    a = g._admission_tables(plan)
    rng = random.Random(8)
    stays = [(rng.randrange(10**6), g._MAX_STAYS + rng.randrange(10**7)) for _ in range(3000)]
    longest = [rng.choice((3600, DAY, 10 * DAY, 60 * DAY, 365 * DAY)) for _ in stays]
    columns = (np.array([i for i, _ in stays]), np.array([k for _, k in stays]))
    got = g._hai_bound_column(plan, a, columns, np.array(longest, np.int64)).tolist()
    expected = [g._hai_bound(plan, a, i, k, n) for (i, k), n in zip(stays, longest, strict=True)]
    assert got == expected and sum(map(bool, expected)) > 300
