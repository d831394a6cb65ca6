"""Draws by name: every slot of a patient's hash is named and read by its name, and new fields
take their bits from tagged tables of their own (_stream), so no existing bit ever moves."""

from __future__ import annotations

import hashlib
import inspect
import re
import struct
from typing import NamedTuple

import pytest

import fhir_patient_generator as g

# Private names used here (internals this file checks or drives directly): _DRAW_TABLES,
# _DeliveryDraws, _Draws, _draw_table, _sample, _stream

SOURCE = inspect.getsource(g)
PLAN = g.make_plan(11, "2025-01-01T00:00:00Z")


def test_every_draws_slot_is_read_by_its_name_and_none_by_number():
    # _sample_tuple unpacks its slots as u_<name> (an import-time assert ties them to Draws),
    # the others read u.<name> from Draws._make.
    body = SOURCE[SOURCE.index("_DRAW_BYTES = ") :]
    for name in g._Draws._fields:
        assert re.search(rf"\bu(_|\.){name}\b", body), f"Draws.{name} is read nowhere"
    assert not re.search(r"_raw_draws\([^)]*\)\)?\[\s*:?\s*\d", SOURCE), "a slot read by number"
    assert not re.search(r"\bspare_\d", SOURCE), "a spare slot left in the code"


def test_every_draw_table_field_is_read_by_its_name():
    body = SOURCE[SOURCE.index("_DRAW_BYTES = ") :]
    for table in g._DRAW_TABLES.values():
        for name in table._fields:
            assert re.search(rf"\bu\.{name}\b", body), f"{table.__name__}.{name} is read nowhere"


def _words(message: bytes) -> tuple[int, ...]:
    digest = hashlib.blake2b(message, key=PLAN.key, digest_size=64).digest()
    return struct.unpack("<16I", digest)


class Wide(NamedTuple):
    a: int
    b: int
    c: int


class Narrow(NamedTuple):
    a: int
    b: int


Wide.tag = Narrow.tag = b"test-table"  # not registered: the registry is filled at import only


def test_a_stream_is_the_keyed_hash_of_tag_index_and_k():
    assert g._stream(PLAN, Wide, 5) == _words(b"test-table|5")[:3]
    assert g._stream(PLAN, Wide, 5, 2) == _words(b"test-table|5|2")[:3]
    assert g._stream(PLAN, Wide, 5, 2, 7) == _words(b"test-table|5|2|7")[:3]
    # the deliveries' message as it was before the tables had names: the batches keep their bytes
    assert g._stream(PLAN, g._DeliveryDraws, 42, 3) == _words(b"delivery|42|3")[:4]


def test_appending_a_field_moves_no_existing_draw():
    for k in range(50):
        wide, narrow = g._stream(PLAN, Wide, 9, k), g._stream(PLAN, Narrow, 9, k)
        assert (wide.a, wide.b) == (narrow.a, narrow.b)


def test_streams_are_independent_of_each_other_and_of_the_patients_draws():
    index = 3
    draws = set(g._sample(PLAN, index).draws)
    seen: set[int] = set()
    for k in range(1000):
        u = g._stream(PLAN, Wide, index, k)
        assert not draws & set(u)
        seen.update(u)
    # 3000 draws of 32 bits: a repeat has probability about 3000**2 / 2**33 = 0.001
    assert len(seen) >= 2999
    # uniform: the mean of 3000 uniforms on [0, 1) is 1/2 within 4 standard errors
    mean = sum(seen) / len(seen) / 2**32
    assert abs(mean - 0.5) < 4 * (1 / 12 / len(seen)) ** 0.5


@pytest.mark.parametrize(
    ("tag", "table"),
    [
        (b"delivery", Narrow),  # taken
        (b"with|bar", Narrow),  # the separator
        (b"shrt", Narrow),  # under 5 bytes: could be as long as a patient's own message
        (b"too-wide", NamedTuple("TooWide", [(f"f{k}", int) for k in range(17)])),
    ],
)
def test_draw_tables_refuse_a_taken_or_bad_tag_and_more_than_sixteen_draws(tag, table):
    with pytest.raises(AssertionError):
        g._draw_table(tag)(table)
    assert g._DRAW_TABLES.get(tag) is not table
