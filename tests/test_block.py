"""The bulk path's block sampling (numpy over a block of indexes) gives every patient exactly the
values and bytes of the one-at-a-time path: same draws, same table lookups, same ids and JSON."""

from __future__ import annotations

import ast
import collections
import inspect
import random
from datetime import date

import numpy as np
import pytest

import fhir_patient_generator as g

# Private names used here (the two paths this file compares): _BATCH, _BLOCK_MIN, _MAX_INDEX,
# _NUMPY_BLOCK, _STAYS_BLOCK,
# _iso_date_block, _mrn_block, _mrn_bytes, _ndjson_block, _rendered_block, _sample_block,
# _sample_tuple, _stays_batches, _stays_block, _stays_line, _uuid_block, _uuid_bytes

PLANS = {
    "default": dict(seed=42, as_of="2025-10-13T02:22:22Z"),
    "few-states-leap-day": dict(seed=7, as_of="2020-02-29T23:59:59Z", states="VT,TX,AK"),
    "old-only-r5": dict(seed=3, as_of="2010-01-01T00:00:00Z", min_age=80, fhir_version="R5"),
    "children-long-lookback": dict(
        seed=2**64 - 1,
        as_of="2024-06-30T12:00:00Z",
        max_age=17,
        lookback_years=10,
        mortality_rate=0.05,
    ),
    "end-of-range": dict(seed=0, as_of="9999-12-31T00:00:00Z"),
}
STARTS = (0, 123_457, g._MAX_INDEX + 1 - 1500)  # a block at each end of the index range


@pytest.fixture(scope="module", params=sorted(PLANS))
def plan(request):
    return g.make_plan(**PLANS[request.param])


def test_every_column_of_a_block_equals_the_one_at_a_time_sample(plan):
    for lo in STARTS:
        block = g._sample_block(plan, lo, lo + 1500)
        for k, index in enumerate(range(lo, lo + 1500)):
            s = g._sample_tuple(plan, index)
            sex = "female" if block.female[k] else "male"
            gender = (sex, "other", "unknown")[int(block.gender[k])]
            got = (
                int(block.state[k]),
                int(block.zip[k]),
                int(block.cell[k]),
                sex,
                int(block.birth[k]),
                gender,
                int(block.language[k]),
                int(block.organization[k]),
                int(block.died[k]),
                int(block.race[k]),
            )
            assert got == s[:-1], f"patient #{index}"


def test_a_block_of_ndjson_is_the_renderer_s_lines_byte_for_byte(plan):
    render, chunk = g.json_renderer(plan), g._ndjson_block(plan)
    for lo in STARTS:
        expected = b"".join(render(i) + b"\n" for i in range(lo, lo + 1500))
        assert chunk(lo, lo + 1500) == expected
    assert chunk(10, 10) == b""
    assert chunk(7, 8) == render(7) + b"\n"


def test_the_bulk_path_writes_what_the_renderer_renders(monkeypatch):
    plan = g.make_plan(**PLANS["default"])
    render = g.json_renderer(plan)
    blocks = []
    block = g._ndjson_block(plan)
    monkeypatch.setattr(g, "_ndjson_block", lambda p: lambda a, b: blocks.append(a) or block(a, b))
    hi = 995 + g._BLOCK_MIN + 2015
    chunks = list(g.ndjson_chunks(plan, 995, hi))
    assert len(chunks) == len(blocks) == -(-(hi - 995) // g._NUMPY_BLOCK)  # a chunk per NUMPY_BLOCK
    assert b"".join(chunks) == b"".join(render(i) + b"\n" for i in range(995, hi))
    small = list(g.ndjson_chunks(plan, 0, g._BLOCK_MIN - 1))  # one by one: no block
    assert len(blocks) == len(chunks) and len(small) == -(-(g._BLOCK_MIN - 1) // g._BATCH)


@pytest.fixture(scope="module", params=sorted(PLANS))
def stays_plan(request):
    return g.make_plan(**PLANS[request.param], encounters=True)


def test_a_block_of_patients_with_stays_is_the_one_at_a_time_path_byte_for_byte(stays_plan):
    # the block draws the stays' count for every patient at once and runs stays() only for
    # those who can have one: the same patients, stays, ids, instants and HAIs as one by one
    one, block = g._stays_line(stays_plan, False), g._stays_block(stays_plan)
    seen = collections.Counter()
    for lo in STARTS:
        chunk, pairs = block(lo, lo + 1500)
        expected = [one(i) for i in range(lo, lo + 1500)]
        assert chunk == b"".join(patient + b"\n" for patient, _ in expected)
        assert pairs == [pair for _, mine in expected for pair in mine]
        seen["stays"] += len(pairs)
        seen["hai"] += sum(b"\n" in condition for _, condition in pairs)
        seen["expired"] += sum(b'"code":"exp"' in encounter for encounter, _ in pairs)
    assert block(10, 10) == (b"", [])
    assert seen["stays"] > 100 and seen["expired"] > 0, seen  # the dead's stays are in the blocks


def test_block_stays_include_infections_and_readmissions():
    plan = g.make_plan(**PLANS["default"], encounters=True)
    one, block = g._stays_line(plan, False), g._stays_block(plan)
    pairs = block(0, 10_000)[1]
    assert pairs == [pair for i in range(10_000) for pair in one(i)[1]]
    assert any(b"\n" in condition for _, condition in pairs)  # a stay with HAI Conditions
    assert any(b'-32"' in encounter for encounter, _ in pairs)  # a readmission (k = 31)


@pytest.mark.parametrize(
    "options",
    [
        dict(PLANS["default"]),
        # old patients over 20 years: several admissions each, overlaps, readmission chains
        dict(seed=9, as_of="2024-03-01T00:00:00Z", min_age=70, lookback_years=20),
        dict(seed=4, as_of="2025-10-13T02:22:22Z", mortality_rate=0.08, lookback_years=2),
    ],
)
def test_block_stays_are_the_stays_of_each_patient(monkeypatch, options):
    # _block_stays takes most patients' stays from numpy columns (candidates, readmission
    # chains) and calls stays() for the rest (a death tied to a stay, an infection, an
    # overlap): the same stays, in the same order, either way
    plan = g.make_plan(**options, encounters=True)
    asked = []
    stays = g.stays
    monkeypatch.setattr(g, "stays", lambda plan, i, *a: asked.append(i) or stays(plan, i, *a))
    lo, hi = 20_000, 26_000
    b, u = g._sample_block(plan, lo, hi), g._stay_count_block(plan, lo, hi)
    got = g._block_stays(plan, b, u, lo)
    by_block = set(asked)
    assert got == [stay for i in range(lo, hi) for stay in stays(plan, i)]
    assert 0 < len(by_block) < len({stay.index for stay in got}) / 2  # columns for most
    assert {stay.k // g._READMISSION for stay in got if stay.index not in by_block} >= {0, 1, 2}


def test_the_stays_bulk_path_writes_what_the_one_at_a_time_path_writes(monkeypatch):
    plan = g.make_plan(**PLANS["default"], encounters=True)
    blocks = []
    block = g._stays_block(plan)
    monkeypatch.setattr(g, "_stays_block", lambda p: lambda a, b: blocks.append(a) or block(a, b))
    hi = 995 + g._BLOCK_MIN + 2015
    batches = list(g._stays_batches(plan, 995, hi))
    assert [ids[0] for ids, *_ in batches] == blocks == list(range(995, hi, g._STAYS_BLOCK))
    assert [i for ids, *_ in batches for i in ids] == list(range(995, hi))
    one = g._stays_line(plan, False)
    expected = [one(i) for i in range(995, hi)]
    assert b"".join(chunk for _, chunk, _ in batches) == b"".join(p + b"\n" for p, _ in expected)
    assert [pair for *_, pairs in batches for pair in pairs] == [
        pair for _, mine in expected for pair in mine
    ]
    small = list(g._stays_batches(plan, 0, g._BLOCK_MIN - 1))  # one by one: no block
    assert len(blocks) == len(batches) and len(small) == -(-(g._BLOCK_MIN - 1) // g._BATCH)
    assert next(g._stays_batches(plan, 0, g._BLOCK_MIN, validate=True))[0] == range(g._BATCH)
    assert len(blocks) == len(batches)  # --validate renders one by one


def test_block_ids_equal_the_one_at_a_time_uuids_and_mrns():
    plan = g.make_plan(**PLANS["default"])
    rng = random.Random(5)
    indexes = [0, 1, 2**32 - 1, 2**32, g._MAX_INDEX, *rng.sample(range(g._MAX_INDEX), 3000)]
    column = np.array(indexes, np.uint64)
    uuids = g._uuid_block(column, plan.uuid_add, plan.uuid_mul)
    mrns = g._mrn_block(column, plan.mrn_add, plan.mrn_mul)
    for k, index in enumerate(indexes):
        assert uuids[k].tobytes() == g._uuid_bytes(index, plan.uuid_add, plan.uuid_mul)
        assert mrns[k].tobytes() == g._mrn_bytes(index, plan.mrn_add, plan.mrn_mul)


def test_block_dates_are_iso_dates_across_the_whole_calendar():
    rng = random.Random(9)
    ordinals = [
        1,
        365,
        366,
        date(1900, 2, 28).toordinal(),
        date(2000, 2, 29).toordinal(),
        date.max.toordinal(),
        *rng.sample(range(1, date.max.toordinal()), 5000),
    ]
    text = g._iso_date_block(np.array(ordinals, np.int64))
    for k, ordinal in enumerate(ordinals):
        assert text[k].tobytes().decode() == date.fromordinal(ordinal).isoformat()


def test_no_module_level_name_is_defined_twice():
    # a second definition silently replaces the first for every later caller (the numpy block
    # size once took the living population's event-tile size, _BLOCK, this way)
    tree = ast.parse(inspect.getsource(g))
    names = collections.Counter()
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.ClassDef):
            names[node.name] += 1
        elif isinstance(node, ast.Assign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                names.update(n.id for n in ast.walk(target) if isinstance(n, ast.Name))
    assert [name for name, count in names.items() if count > 1] == []


def test_a_layer_with_stays_is_the_same_written_by_blocks_or_one_by_one(tmp_path, monkeypatch):
    # --encounters over BLOCK_MIN patients: the numpy blocks write every file byte for byte as
    # the one-at-a-time path does (BLOCK_MIN raised past the run); the json format's consumer
    # reads the same batches (tests/test_encounters.py writes it)
    count = g._BLOCK_MIN + 500
    args = ["--count", str(count), "--seed", "11", "--as-of", "2025-10-13T02:22:22Z"]
    args += ["--format", "ndjson", "--encounters", "--quiet", "--gzip"]
    args += ["--records-per-file", str(g._BLOCK_MIN)]  # a unit by blocks, one of 500 one by one

    def tree(root):
        return {
            p.relative_to(root).as_posix(): p.read_bytes()
            for p in root.rglob("*")
            if p.is_file() and p.name != "_manifest.json"
        }

    blocks = []
    block = g._stays_block(g.make_plan(11, "2025-10-13T02:22:22Z", encounters=True))
    monkeypatch.setattr(g, "_stays_block", lambda p: lambda a, b: blocks.append(a) or block(a, b))
    assert g.main([*args, "--output", str(tmp_path / "blocks")]) == 0
    assert blocks
    monkeypatch.setattr(g, "_BLOCK_MIN", count + 1)
    assert g.main([*args, "--output", str(tmp_path / "one")]) == 0
    fast, slow = tree(tmp_path / "blocks"), tree(tmp_path / "one")
    assert fast == slow
    assert any(name.startswith("encounter/") for name in fast)


def test_the_block_refuses_to_build_when_it_differs_from_the_renderer(monkeypatch):
    plan = g.make_plan(**PLANS["default"])
    one_by_one = g._rendered_block(plan)

    def changed(p):
        return lambda lo, hi: [line.replace(b'"male"', b'"MALE"') for line in one_by_one(lo, hi)]

    monkeypatch.setattr(g, "_rendered_block", changed)
    with pytest.raises(AssertionError, match="differ from json_renderer"):
        g._ndjson_block.__wrapped__(plan)
