"""MetricCare FHIR Patient generator: realistic, reproducible, CMS-focused synthetic Patients.

    >>> from fhir_patient_generator import generate_patient
    >>> p = generate_patient(seed=42, as_of="2025-10-13T02:22:22Z")   # a fhir.resources Patient

Patient #i is a pure function of (seed, i, as_of, options): every random bit a record needs comes
from one keyed BLAKE2b hash of its index, so any process, in any order, writes the same bytes.

Read top to bottom (docs/architecture.md draws the map): constants -> reference data -> draws ->
profiles and FHIR versions -> plan -> record -> living population (events after an epoch) ->
inpatient stays -> rendering -> bronze layer (formats, stores, run, change batches) -> CLI. Data
flows one way; nothing below a section is used above it (type hints aside), and no module state
changes after import.
"""

from __future__ import annotations

import argparse
import bisect
import calendar
import contextlib
import csv
import dataclasses
import functools
import hashlib
import heapq
import itertools
import marshal
import math
import operator
import os
import re
import signal
import struct
import sys
import threading
import time
import unicodedata
import zlib
from array import array
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal, localcontext
from pathlib import Path
from typing import Any, NamedTuple, Protocol

import orjson


class _LazyModule:
    """A module imported on first use, then put in its place among the module's globals: numpy
    serves only the bulk path, so a one-patient run or an API call starts without it."""

    def __init__(self, name: str, alias: str) -> None:
        self.name, self.alias = name, alias

    def __getattr__(self, attr: str) -> Any:
        module = __import__(self.name)
        globals()[self.alias] = module
        return getattr(module, attr)


np: Any = _LazyModule("numpy", "np")

__version__ = "1.0.0"

# The public API: exactly the README's API table.
__all__ = [
    "Bronze",
    "BronzeError",
    "Faults",
    "Plan",
    "Version",
    "Window",
    "build_record",
    "changes",
    "continue_layer",
    "generate_patient",
    "generate_patients",
    "history",
    "json_renderer",
    "main",
    "make_plan",
    "ndjson_chunks",
    "organization_record",
    "patient_id",
    "snapshot",
    "stay_json",
    "stays",
    "suggested_s3_key",
    "to_json",
    "version_json",
    "write_bronze",
]

# ---------------------------------------------------------------------------------------------
# Constants: every default is defined here once; the API, argparse and the help text use them
# ---------------------------------------------------------------------------------------------

_MAX_AGE = 110  # the life table's last row; nobody older is generated
_MAX_INDEX = 10**10 - 1  # MRNs are ten digits, one per index
_MAX_SEED = (1 << 64) - 1
_DEFAULT_BUCKET = "metriccare-dev"
_DEFAULT_PREFIX = "bronze/patient"
# Generation options (make_plan's keyword arguments) and their defaults; None = not set.
_OPTION_DEFAULTS: Mapping[str, Any] = {
    "min_age": 0,
    "max_age": _MAX_AGE,
    "states": None,  # the 50 states + DC
    "lookback_years": 3.0,
    "mortality_rate": None,  # the life table
    "profile": "cms",
    "fhir_version": "R4",  # what every written resource is valid in (FHIR_VERSIONS)
    "encounters": False,  # each patient's inpatient stays too (recorded only when on)
}
_DEFAULT_FORMAT = "json"
_DEFAULT_RECORDS_PER_FILE = 100_000  # NDJSON roll-over (~81 MB plain, ~11 MB gzip) and work unit
_DEFAULT_CONCURRENCY = 16  # concurrent S3 uploads per process
_DEFAULT_GZIP_LEVEL = 1  # measured: level 6 halves NDJSON throughput for ~15% smaller files
_DEFAULT_WORKERS = 1

_MRN_SYSTEM = "MetricCare-MRN"  # the seed README's identifier namespace
_ORG_SYSTEM = "urn:metriccare:organization"
# CMS Certification Number: the preferred URI of HL7 Terminology's NamingSystem "CCN" (active
# since 2021-11-01; OID 2.16.840.1.113883.4.336), the system Da Vinci HRex pins for CCNs.
_CCN_SYSTEM = "http://terminology.hl7.org/NamingSystem/CMSCertificationNumber"
# The CMS hospital types patients are managed by (README "Places and hospitals" says why):
# general hospitals for everyone, children's hospitals as one more candidate under CHILD_AGE.
# Psychiatric, VA, DoD, long-term and rural emergency hospitals are never used.
_GENERAL_HOSPITAL_TYPES = ("Acute Care Hospitals", "Critical Access Hospitals")
_CHILDREN_HOSPITAL_TYPE = "Childrens"
_CHILD_AGE = 18  # younger patients may go to a children's hospital
_CANDIDATES = 11  # hospital_candidates.csv slots per ZIP: 10 general hospitals, then the children's
_MAX_ID = 64  # FHIR id length
# US Core Patient (5.0.1 and later; docs/us-core.md cites the pages these facts come from)
_US_CORE_PATIENT = "http://hl7.org/fhir/us/core/StructureDefinition/us-core-patient"
_US_CORE_RACE = "http://hl7.org/fhir/us/core/StructureDefinition/us-core-race"
_US_CORE_ETHNICITY = "http://hl7.org/fhir/us/core/StructureDefinition/us-core-ethnicity"
_US_CORE_BIRTHSEX = "http://hl7.org/fhir/us/core/StructureDefinition/us-core-birthsex"
_CDC_RACE_SYSTEM = "urn:oid:2.16.840.1.113883.6.238"  # CDC Race & Ethnicity (CDCREC)
_HISPANIC_CODE = "2135-2"  # CDCREC "Hispanic or Latino": the preferred language depends on it
# Identifier.system must be a URI under us-core; same namespace scheme as ORG_SYSTEM. The cms
# profile keeps MRN_SYSTEM for backward compatibility; the MRN value is the same in both.
_US_CORE_MRN_SYSTEM = "urn:metriccare:mrn"
_OTHER_RACE_CODE = "2131-1"  # Census "Some Other Race": text only, no ombCategory (docs/us-core.md)
_OTHER_RACE_TEXT = "Other Race"
_TWO_OR_MORE_TEXT = "Two or more races"
# Shares of FHIR gender codes beyond sex. Modelling choices, not Census statistics: the Census
# age x sex table has only male and female. Small, so sex-based metrics stay close to the table.
_GENDER_OTHER_SHARE = 0.003
_GENDER_UNKNOWN_SHARE = 0.001

# load_reference's default: reference_data/ beside the module in a clone, or the folder a wheel
# installs beside it (pyproject.toml maps reference_data/ to fhir_patient_generator_data/).
_DATA_DIR = next(
    (
        folder
        for name in ("reference_data", "fhir_patient_generator_data")
        if (folder := Path(__file__).resolve().with_name(name)).is_dir()
    ),
    Path(__file__).resolve().with_name("reference_data"),
)
_SECONDS_PER_YEAR = 365.2425 * 86400
_SEXES = ("male", "female")  # the Census and life-table sexes, in cell order
_LIFE_TABLE = ("qx", "mx", "ax")  # the life-table columns read, per sex

# ---------------------------------------------------------------------------------------------
# Reference data (reference_data/*.csv; sources and licences in reference_data/SOURCES.md)
# ---------------------------------------------------------------------------------------------


def _cumulative(weights: Iterable[int]) -> tuple[int, ...]:
    """Running totals of integer weights: the tables _pick draws from."""
    return tuple(itertools.accumulate(weights))


_ZipRow = tuple[str, str, str, str]  # (ZIP, city, county, state)


@dataclass(frozen=True)
class _Reference:
    """The US reference tables, read once from a data directory and never changed."""

    states: tuple[tuple[str, str, int, bool], ...]  # (code, name, population, territory)
    zips: tuple[_ZipRow, ...]  # in ZIP order
    state_zips: Mapping[str, tuple[tuple[int, ...], tuple[int, ...]]]  # positions, cum. pop.
    hospitals: tuple[Mapping[str, str], ...]  # every CMS hospital with its "id", CMS order
    hospital_cand: array  # ZIP z's candidates: slots CANDIDATES*z.. (positions in hospitals)
    hospital_cum: array  # their cumulative integer weights, restarting at each ZIP
    state_hospitals: Mapping[str, tuple[int, ...]]  # state -> the hospitals its ZIPs can draw
    age_sex: tuple[tuple[int, int, int], ...]  # (age, male, female) for ages 0..MAX_AGE
    qx: Mapping[str, tuple[float, ...]]  # sex -> probability of dying within a year, by age
    mx: Mapping[str, tuple[float, ...]]  # sex -> central death rate (deaths per person-year)
    ax: Mapping[str, tuple[float, ...]]  # sex -> mean years lived in the year of age at death
    languages: tuple[tuple[str, str, int], ...]  # (bcp47, display, national speakers)
    # state -> cumulative weights over languages, one table per (age band, Hispanic origin) at
    # LANGUAGE_BANDS.index(band) * 2 + hispanic (language_lep.csv: limited English proficiency)
    language_cum: Mapping[str, tuple[tuple[int, ...], ...]]
    race_ethnicity: Mapping[str, tuple[tuple[str, str, str, str, int], ...]]  # state -> rows
    # The joint population (docs/population-model.md; tools/build_reference.py builds the tables)
    state_age_sex: Mapping[str, Mapping[str, tuple[int, ...]]]  # state -> sex -> living by age
    state_mx_ratio: Mapping[str, Mapping[str, tuple[float, ...]]]  # state -> sex -> k(x): m_s = k m
    race_rows: tuple[tuple[str, str, str, str], ...]  # (race, code, ethnicity, code), state order
    race_ratio: tuple[float, ...]  # per race row: death-rate ratio to the total (GBD 2019)
    race_cum: Mapping[str, tuple[tuple[int, ...], ...]]  # state -> [race slot] -> cumulative


def _load_reference(data_dir: str | Path | None = None) -> _Reference:
    """The reference tables in data_dir (default DATA_DIR: reference_data/ next to this module,
    or its installed copy)."""
    return _read_reference(Path(data_dir or _DATA_DIR).resolve())


def _csv_rows(data_dir: Path, name: str) -> list[dict[str, str]]:
    """A CSV file's rows as dicts by header name (as csv.DictReader, at half its cost)."""
    with open(data_dir / name, newline="", encoding="utf-8") as f:
        header, *rows = csv.reader(f)
    return [dict(zip(header, row, strict=True)) for row in rows if row]


def _csv_columns(data_dir: Path, name: str) -> dict[str, list[str]]:
    """A CSV file as header name -> its column. The big generated files (ZIPs, hospital
    candidates) have no quotes: one str.split in C reads them in a fraction of csv's time."""
    text = (data_dir / name).read_text(encoding="utf-8")
    if '"' in text or "\r" in text:
        header, *rows = csv.reader(text.splitlines())
        return {h: list(c) for h, c in zip(header, zip(*rows, strict=True), strict=True)}
    header, _, body = text.partition("\n")
    names = header.split(",")
    fields = body.rstrip("\n").replace("\n", ",").split(",") if body.strip() else []
    if len(fields) % len(names):
        raise ValueError(f"{name}: every row must have {len(names)} fields")
    return {h: fields[k :: len(names)] for k, h in enumerate(names)}


def _ints(texts: Iterable[str]) -> list[int]:
    """The whole numbers in texts (each one or more, space-separated; "" is 0), parsed by one
    orjson.loads in C: a third of the time of int() per number."""
    joined = ",".join(t or "0" for t in texts).replace(" ", ",")
    try:
        numbers = orjson.loads(f"[{joined}]") if joined else []
    except orjson.JSONDecodeError:  # JSON has no leading zeros: "007" is still 7 to int()
        numbers = [int(t) for t in joined.split(",")]
    if not set(map(type, numbers)) <= {int}:
        raise ValueError(f"not whole numbers: {joined[:40]!r}...")
    return numbers


# The tables above as marshal data (a tenth of the CSVs' parse time at start-up), written by
# tools/build_reference.py and used only while its key, the hash of every CSV beside it, holds:
# edited CSVs are read as CSVs. A test rebuilds it from the CSVs and compares (marshal holds
# plain values only: loading it runs no code, unlike pickle).
_REFERENCE_CACHE = "reference.marshal"


def _reference_key(data_dir: Path) -> bytes:
    """The hash of _Reference's field names and every CSV in data_dir (its name, size and
    CRC-32: a staleness check against edits, four times cheaper than hashing 8 MB of bytes)."""
    names = ",".join(f.name for f in dataclasses.fields(_Reference))
    h = hashlib.blake2b(names.encode(), digest_size=32)
    for path in sorted(data_dir.glob("*.csv")):
        data = path.read_bytes()
        h.update(b"%s\0%d\0%d\0" % (path.name.encode(), len(data), zlib.crc32(data)))
    return h.digest()


def _reference_marshal(ref: _Reference, data_dir: Path) -> bytes:
    """ref as marshal data under data_dir's key (arrays as (typecode, bytes))."""
    fields = {
        f.name: (v.typecode, v.tobytes()) if isinstance(v := getattr(ref, f.name), array) else v
        for f in dataclasses.fields(_Reference)
    }
    return marshal.dumps({"key": _reference_key(data_dir), "fields": fields})


def _cached(path: Path, key: bytes, make: Callable[[dict[str, Any]], Any]) -> Any:
    """make(fields) of a marshal cache file written under `key` (the reference tables', the
    stays'), or None if the file is missing, unreadable or stale."""
    try:
        blob = marshal.loads(path.read_bytes())
        return make(blob["fields"]) if blob["key"] == key else None
    except (OSError, EOFError, ValueError, TypeError, KeyError):
        return None


def _reference_of(fields: dict[str, Any]) -> _Reference:
    """_Reference from _reference_marshal's fields (its arrays as (typecode, bytes))."""
    for name in ("hospital_cand", "hospital_cum"):
        fields[name] = array(*fields[name])
    return _Reference(**fields)


def _cached_reference(data_dir: Path) -> _Reference | None:
    """The tables from data_dir's marshal file, or None if it is missing, unreadable or stale."""
    return _cached(data_dir / _REFERENCE_CACHE, _reference_key(data_dir), _reference_of)


@functools.cache
def _read_reference(data_dir: Path) -> _Reference:
    return _cached_reference(data_dir) or _parse_reference(data_dir)


def _parse_reference(data_dir: Path) -> _Reference:
    def rows(name: str) -> list[dict[str, str]]:
        return _csv_rows(data_dir, name)

    states = tuple(
        (r["code"], r["name"], int(r["population"]), r["territory"] == "true")
        for r in rows("states.csv")
    )
    zips, state_zips = _zips(data_dir)
    hospitals = _hospitals(rows("hospitals.csv"))
    life = rows("life_table_hmd2022_full.csv")
    column = {
        c: {s: tuple(float(r[f"{c}_{s}"]) for r in life) for s in _SEXES} for c in _LIFE_TABLE
    }
    national = rows("languages.csv")
    race: dict[str, list[tuple[str, str, str, str, int]]] = {}
    for r in rows("race_ethnicity_by_state.csv"):
        race.setdefault(r["state"], []).append(
            (r["race"], r["race_code"], r["ethnicity"], r["ethnicity_code"], int(r["population"]))
        )
    joint = _joint_population(data_dir, race)
    candidates = _hospital_candidates(data_dir, zips, hospitals)
    return _Reference(
        states=states,
        zips=zips,
        state_zips=state_zips,
        hospitals=hospitals,
        **candidates,
        state_hospitals=_state_hospitals(state_zips, **candidates),
        age_sex=_expand_open_age(rows("age_sex.csv"), column["qx"]),
        **column,
        languages=tuple((r["bcp47"], r["display"], int(r["speakers_age5plus"])) for r in national),
        language_cum=_language_cum(
            rows("languages_by_state.csv"),
            rows("languages_by_state_detail_acs2018.csv"),
            national,
            [code for code, *_ in states],
            rows("language_lep.csv"),
            _language_people(joint),
        ),
        race_ethnicity={k: tuple(v) for k, v in race.items()},
        **joint,
    )


def _zips(data_dir: Path) -> tuple[tuple[_ZipRow, ...], dict[str, tuple[tuple[int, ...], ...]]]:
    """zips.csv with county names (counties.csv), and per state its ZIPs' positions and
    cumulative populations (a ZIP is drawn in proportion to its population within the state)."""
    counties = _csv_columns(data_dir, "counties.csv")
    county = dict(zip(counties["county_fips"], counties["county_name"], strict=True))
    column = _csv_columns(data_dir, "zips.csv")  # column-wise: map and zip run in C
    shared = {}.setdefault  # one str per distinct state or city name (33,000 rows, ~1/3 the names)
    states = [shared(st, st) for st in column["state"]]
    populations = _ints(column["population"])
    counties_ = map(county.__getitem__, column["county_fips"])
    cities = [shared(city, city) for city in column["city"]]
    zips = tuple(zip(column["zip"], cities, counties_, states, strict=True))
    positions: dict[str, list[int]] = {}
    for z, state in enumerate(states):
        positions.setdefault(state, []).append(z)
    state_zips = {
        st: (tuple(at), tuple(itertools.accumulate(map(populations.__getitem__, at))))
        for st, at in positions.items()
    }
    return zips, state_zips


_NOT_SLUG = {c: " " for c in range(128) if not chr(c).isalnum()}  # ASCII but [A-Za-z0-9]


def _slug(text: str) -> str:
    """Lower-case ASCII words joined by '-' ("ST. JOSEPH'S & CO" -> 'st-josephs-and-co')."""
    if not text.isascii():  # ASCII is its own NFKD form
        text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    t = text.lower().replace("'", "").replace("&", " and ")
    return "-".join(t.translate(_NOT_SLUG).split())


def _org_id(state: str, name: str, *suffix: str) -> str:
    """org-<state>-<name slug>[-<suffix>...], the name cut at a word boundary to fit MAX_ID."""
    head, tail = f"org-{state.lower()}-", "".join("-" + _slug(p) for p in suffix)
    room, name = _MAX_ID - len(head) - len(tail), _slug(name)
    if len(name) > room:
        cut = name[:room]
        name = (cut[: cut.rindex("-")] if name[room] != "-" and "-" in cut else cut).rstrip("-")
    return head + name + tail


def _hospitals(rows: list[dict[str, str]]) -> tuple[Mapping[str, str], ...]:
    """The CMS rows with a readable, unique id each: org-<state>-<name>; names shared within a
    state add -<city>, then -<ccn>. Ids come from the whole file, so no option changes them."""
    ids = [_org_id(r["state"], r["name"]) for r in rows]
    for suffix in (("city",), ("city", "ccn")):
        seen: dict[str, int] = {}
        for i in ids:
            seen[i] = seen.get(i, 0) + 1
        ids = [
            i if seen[i] == 1 else _org_id(r["state"], r["name"], *(r[k] for k in suffix))
            for i, r in zip(ids, rows, strict=True)
        ]
    if len(set(ids)) != len(ids):
        raise ValueError("hospitals.csv: organization ids are not unique")
    shared = {}.setdefault  # one str per distinct value (states, types, cities repeat)
    return tuple(
        {"id": i, **{k: shared(v, v) for k, v in r.items()}} for i, r in zip(ids, rows, strict=True)
    )


def _interleave(columns: list[list[int]]) -> list[int]:
    """Row by row: columns [a0 a1 ..], [b0 b1 ..] -> [a0 b0 .. a1 b1 ..] (slice assignments)."""
    out = [0] * sum(map(len, columns))
    for k, column in enumerate(columns):
        out[k :: len(columns)] = column
    return out


def _hospital_candidates(
    data_dir: Path, zips: tuple[_ZipRow, ...], hospitals: tuple[Mapping[str, str], ...]
) -> dict[str, array]:
    """hospital_candidates.csv (tools/build_reference.py) as two flat arrays, CANDIDATES slots
    per ZIP in zips.csv order: the 10 nearest general hospitals in any state, then the
    children's hospital (weight 0, so never drawn, where there is none); weights by discharges
    over distance. Read column-wise (str.split and map in C: a third of csv's time)."""
    columns = _csv_columns(data_dir, "hospital_candidates.csv")
    codes, general, weights, kids, kid_weights = columns.values()
    if codes != [z[0] for z in zips]:
        raise ValueError("hospital_candidates.csv does not list zips.csv's ZIPs: rebuild it")
    by_ccn = {h["ccn"]: i for i, h in enumerate(hospitals)}
    width = _CANDIDATES - 1
    general_slots = list(map(by_ccn.__getitem__, " ".join(general).split()))
    general_weights = _ints(weights)
    if len(general_slots) != width * len(codes) or len(general_weights) != len(general_slots):
        raise ValueError(f"hospital_candidates.csv must list {width} hospitals per ZIP")
    # Column by column (slot k of every ZIP at once, in C), then interleaved ZIP by ZIP: the
    # children's slot repeats the last general one where there is none (its weight 0).
    slots = [general_slots[k::width] for k in range(width)]
    slots.append([by_ccn[kid] if kid else last for kid, last in zip(kids, slots[-1], strict=True)])
    cums = [general_weights[0::width]]
    for k in range(1, width):
        cums.append(list(map(operator.add, cums[-1], general_weights[k::width])))
    cums.append(list(map(operator.add, cums[-1], _ints(kid_weights))))
    return {
        "hospital_cand": array("H", _interleave(slots)),
        "hospital_cum": array("I", _interleave(cums)),
    }


def _state_hospitals(
    state_zips: Mapping[str, tuple[tuple[int, ...], tuple[int, ...]]],
    hospital_cand: array,
    hospital_cum: array,
) -> dict[str, tuple[int, ...]]:
    """state -> the hospitals (positions) its ZIPs can draw: the candidate slots of positive
    weight (cum above the ZIP's previous slot, or above 0 at its first), in any state."""
    out = {}
    for state, (positions, _) in state_zips.items():
        used = set()
        for z in positions:
            lo = z * _CANDIDATES
            cum = hospital_cum[lo : lo + _CANDIDATES]
            used.update(
                hospital_cand[lo + k]
                for k, (c, before) in enumerate(zip(cum, [0, *cum[:-1]], strict=True))
                if c > before
            )
        out[state] = tuple(sorted(used))
    return out


# ACS C16001 language group -> the B16001 variables (languages.csv rows) it is made of; "und"
# (languages.csv's residual of grouped categories) has a part in five of the groups.
_C16001_GROUPS: Mapping[str, tuple[str, ...]] = {
    "C16001_002E": ("B16001_002E",),  # English only
    "C16001_003E": ("B16001_003E",),  # Spanish
    "C16001_006E": ("B16001_006E", "B16001_009E"),  # French (incl. Cajun), Haitian
    "C16001_009E": ("B16001_018E", "und"),  # German + other West Germanic
    "C16001_012E": ("B16001_027E", "B16001_030E", "B16001_033E", "und"),  # Slavic
    "C16001_015E": (  # other Indo-European
        "B16001_012E", "B16001_015E", "B16001_024E", "B16001_039E", "B16001_042E",
        "B16001_045E", "B16001_048E", "B16001_051E", "B16001_054E", "B16001_057E", "und",
    ),
    "C16001_018E": ("B16001_081E",),  # Korean
    "C16001_021E": ("B16001_075E",),  # Chinese
    "C16001_024E": ("B16001_087E",),  # Vietnamese
    "C16001_027E": ("B16001_099E",),  # Tagalog
    "C16001_030E": (  # other Asian and Pacific Island
        "B16001_066E", "B16001_069E", "B16001_078E", "B16001_084E", "B16001_090E", "und",
    ),
    "C16001_033E": ("B16001_105E",),  # Arabic
    "C16001_036E": ("B16001_108E", "B16001_120E", "und"),  # other and unspecified
}  # fmt: skip


def _language_key(row: Mapping[str, str]) -> str:
    """A language row's B16001 variable, or 'und' for the residual."""
    return "und" if row["bcp47"] == "und" else row["acs_variable"]


def _within_group_shares(
    groups: Mapping[str, float], detail: Mapping[str, float]
) -> dict[str, dict[str, float]]:
    """group -> {language key: share within the group} from one B16001 detail table. The
    residual 'und' is shared over its five groups by each group's gap (the group total, rescaled
    to the detail's total, minus its named languages, at least 0)."""
    scale = sum(detail.values()) / sum(groups.values())
    gaps = {
        g: max(0.0, groups[g] * scale - sum(detail.get(v, 0.0) for v in m if v != "und"))
        for g, m in _C16001_GROUPS.items()
        if "und" in m
    }
    if not any(gaps.values()):
        gaps = dict.fromkeys(gaps, 1.0)
    gap_total = sum(gaps.values())
    out = {}
    for g, members in _C16001_GROUPS.items():
        counts = {
            v: detail.get("und", 0.0) * gaps[g] / gap_total if v == "und" else detail.get(v, 0.0)
            for v in members
        }
        total = sum(counts.values())
        out[g] = {v: c / total if total > 0 else 1.0 / len(members) for v, c in counts.items()}
    return out


def _language_group_shares(
    by_state: list[dict[str, str]],
    detail: list[dict[str, str]],
    national: list[dict[str, str]],
    states: list[str],
) -> dict[str, dict[str, dict[str, float]]]:
    """state -> C16001 group -> {language key: share within the group}: from the state's own
    ACS 2018 B16001 where published (38 states + DC), else national (languages.csv); the ACS
    2017 C16001 group sizes place the residual 'und' (_within_group_shares)."""
    nat_detail = {_language_key(r): float(r["speakers_age5plus"]) for r in national}
    groups: dict[str, dict[str, float]] = {}
    for r in by_state:
        groups.setdefault(r["state"], {})[r["acs_variable"]] = float(r["speakers"])
    state_detail: dict[str, dict[str, float]] = {}
    for r in detail:
        state_detail.setdefault(r["state"], {})[_language_key(r)] = float(r["speakers"])
    nat_groups = {g: sum(gs[g] for gs in groups.values()) for g in _C16001_GROUPS}
    nat_shares = _within_group_shares(nat_groups, nat_detail)
    out = {
        st: _within_group_shares(groups[st], state_detail[st])
        if st in groups and st in state_detail
        else nat_shares
        for st in states
    }
    return out | {"US": nat_shares}


# language_lep.csv's age bands (ACS B16004); children under 5 follow 5-17
_LANGUAGE_BANDS = ("5-17", "18-64", "65+")


def _lep_scale(
    lep: list[dict[str, str]], people: Mapping[str, Sequence[float]]
) -> dict[str, float]:
    """state -> the factor on its LEP shares that makes the LEP share of the generator's own
    living 5+ (people: by cell, band * 2 + Hispanic) the ACS one (language_lep.csv's cells
    weighted by their ACS population): the generator's ages (Census V2023) and Hispanic shares
    (2020 P2) are not ACS 2018's, and the target is the state's LEP share."""
    acs: dict[str, list[float]] = {}  # state -> [ACS LEP people, ACS people, ours LEP, ours]
    for r in lep:
        if r["state"] not in people:
            continue
        share = sum(int(r[g]) for g in _C16001_GROUPS if g in r) / 1e9
        ours = people[r["state"]][_LANGUAGE_BANDS.index(r["age_band"]) * 2 + (r["hispanic"] == "Y")]
        t = acs.setdefault(r["state"], [0.0, 0.0, 0.0, 0.0])
        t[0] += share * float(r["population"])
        t[1] += float(r["population"])
        t[2] += share * ours
        t[3] += ours
    return {st: (a / b) / (c / d) for st, (a, b, c, d) in acs.items() if c > 0 and d > 0}


def _language_band(age: int) -> int:
    """A whole age's band in LANGUAGE_BANDS."""
    return 0 if age < 18 else 1 if age < 65 else 2


def _language_cum(
    by_state: list[dict[str, str]],
    detail: list[dict[str, str]],
    national: list[dict[str, str]],
    states: list[str],
    lep: list[dict[str, str]],
    people: Mapping[str, Sequence[float]],
) -> dict[str, tuple[tuple[int, ...], ...]]:
    """state -> per (band, Hispanic origin) cumulative weights over languages.csv's rows. The
    preferred language is English unless the patient speaks English less than "very well"
    (limited English proficiency, LEP): P(language | state, band, Hispanic) = P(LEP in C16001
    group g | ...) x P(language | g, state), the first from language_lep.csv (built by
    tools/build_reference.py from ACS 2018 C16001, B16004, B16006 and B01001I), the second the
    group's speakers (_language_group_shares). States without a row (PR) use the US rows."""
    keys = [_language_key(r) for r in national]
    english = _C16001_GROUPS["C16001_002E"][0]
    shares = _language_group_shares(by_state, detail, national, states)
    scale = _lep_scale(lep, people)
    cells: dict[str, list[tuple[int, ...]]] = {}
    for r in lep:
        if r["state"] not in shares:
            continue
        p, k = dict.fromkeys(keys, 0.0), scale.get(r["state"], 1.0)
        for g, members in _C16001_GROUPS.items():
            if g in r:
                for v in members:
                    p[v] += k * int(r[g]) * shares[r["state"]][g][v]
        p[english] = 1e9 - k * sum(int(r[g]) for g in _C16001_GROUPS if g in r)
        at = _LANGUAGE_BANDS.index(r["age_band"]) * 2 + (r["hispanic"] == "Y")
        cells.setdefault(r["state"], [()] * 2 * len(_LANGUAGE_BANDS))[at] = _cumulative(
            round(p[k]) for k in keys
        )
    return {st: tuple(cells[st] if st in cells else cells["US"]) for st in states}


# mortality_by_race.csv group of a race_ethnicity_by_state.csv row: Hispanic rows are "latino",
# non-Hispanic ones by race code; GBD's "asian" includes Pacific Islanders; Census "Some Other
# Race" and "Two or more races" have no GBD group and keep the total's rate (ratio 1).
_RACE_GROUPS: Mapping[str, str] = {
    "2106-3": "white", "2054-5": "black", "1002-5": "aian", "2028-9": "asian", "2076-8": "asian",
    "2131-1": "total", "": "total",
}  # fmt: skip
_RACE_RATE_YEAR = "2019"  # mortality_by_race.csv's GBD rows: all five groups
_RACE_BANDS = (0, 5, 10, 15, 18, 20, 25, 30, 35, 45, 55, 65, 75, 85)  # ACS B01001A-I age bands


def _race_slot(age: int, sex: str, dead: bool) -> int:
    """The race table of a registry cell: (dead, sex, ACS band) in race_by_state_age.csv order."""
    band = bisect.bisect_right(_RACE_BANDS, age) - 1
    return (dead * len(_SEXES) + _SEXES.index(sex)) * len(_RACE_BANDS) + band


def _joint_population(data_dir: Path, race: Mapping[str, list[Any]]) -> dict[str, Any]:
    """The joint population's compact tables: the living by state, sex and age (raked to the
    national table); each state's mortality ratio k_s(x) = its SMR over the living-weighted
    mean SMR of the 50 states + DC at that age and sex, so that m_s(x) = k_s(x) m(x) averages
    to the national m(x) at every age (territories: k = 1); the race x ethnicity draws per
    state and race slot, the dead's tilted by each row's death-rate ratio (the same deaths per
    state, age and sex, shifted between races)."""
    living: dict[str, dict[str, tuple[int, ...]]] = {}
    for r in _csv_rows(data_dir, "state_age_sex.csv"):
        living.setdefault(r["state"], {})[r["sex"]] = tuple(map(int, r["people"].split()))
    smr = {r["state"]: float(r["smr"]) for r in _csv_rows(data_dir, "state_mortality.csv")}
    ratio_by_state: dict[str, dict[str, tuple[float, ...]]] = {st: {} for st in living}
    for sex in _SEXES:
        people = [sum(ages) for ages in zip(*(living[st][sex] for st in smr), strict=True)]
        weighted = [
            sum(ages)
            for ages in zip(*([p * smr[st] for p in living[st][sex]] for st in smr), strict=True)
        ]
        mean = [w / p if p else 1.0 for w, p in zip(weighted, people, strict=True)]
        for st in living:
            k = smr.get(st, 0.0)
            ratio_by_state[st][sex] = tuple(k / m if k else 1.0 for m in mean)
    rows = tuple(row[:4] for row in next(iter(race.values())))
    rates = {
        r["group"]: float(r["age_standardized_death_rate_per_100k"])
        for r in _csv_rows(data_dir, "mortality_by_race.csv")
        if r["year"] == _RACE_RATE_YEAR
    }
    race_ratio = tuple(
        rates["latino" if eth_code == _HISPANIC_CODE else _RACE_GROUPS[code]] / rates["total"]
        for _, code, _, eth_code in rows
    )
    per_mille = tuple(round(1000 * k) for k in race_ratio)
    with open(data_dir / "race_by_state_age.csv", newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        next(reader)
        states, _, _, people = zip(*reader, strict=True)
    flat, n, accumulate = list(map(int, " ".join(people).split())), len(rows), itertools.accumulate
    living_cum: dict[str, list[tuple[int, ...]]] = {}
    dead_cum: dict[str, list[tuple[int, ...]]] = {}
    for k, st in enumerate(states):  # column-wise: one int() pass over the file
        weights = flat[k * n : k * n + n]
        living_cum.setdefault(st, []).append(tuple(accumulate(weights)))
        dead_cum.setdefault(st, []).append(tuple(accumulate(map(operator.mul, weights, per_mille))))
    slots = len(_SEXES) * len(_RACE_BANDS)  # living tables per state (as many dead ones)
    for st, tables in living_cum.items():
        if tuple(row[:4] for row in race[st]) != rows or len(tables) != slots:
            raise ValueError(f"race tables of {st} do not follow race_ethnicity_by_state.csv")
    return {
        "state_age_sex": living,
        "state_mx_ratio": ratio_by_state,
        "race_rows": rows,
        "race_ratio": race_ratio,
        "race_cum": {st: (*t, *dead_cum[st]) for st, t in living_cum.items()},
    }


def _language_people(joint: Mapping[str, Any]) -> dict[str, list[float]]:
    """state -> the generator's living people 5+ by language cell (band * 2 + Hispanic): its
    state age x sex table and the race rows drawn for each (sex, age band)."""
    hispanic = [row[3] == _HISPANIC_CODE for row in joint["race_rows"]]
    out: dict[str, list[float]] = {}
    for st, by_sex in joint["state_age_sex"].items():
        cells = out.setdefault(st, [0.0] * 2 * len(_LANGUAGE_BANDS))
        for sex in _SEXES:
            for age in range(5, len(by_sex[sex])):
                cum = joint["race_cum"][st][_race_slot(age, sex, False)]
                share = (
                    sum(c - b for c, b, h in zip(cum, (0, *cum), hispanic, strict=False) if h)
                    / cum[-1]
                )
                band = _language_band(age) * 2
                cells[band + 1] += by_sex[sex][age] * share
                cells[band] += by_sex[sex][age] * (1 - share)
    return out


def _expand_open_age(
    rows: list[dict[str, str]], qx: Mapping[str, tuple[float, ...]]
) -> tuple[tuple[int, int, int], ...]:
    """Spread the Census '100+' count over ages 100..110 in proportion to life-table survivors."""
    out = [(int(r["age"]), int(r["male"]), int(r["female"])) for r in rows if r["age"] != "100+"]
    top = next(r for r in rows if r["age"] == "100+")
    split: dict[str, list[int]] = {}
    for sex in _SEXES:
        alive, survivors = 1.0, []
        for age in range(100, _MAX_AGE + 1):
            survivors.append(alive)
            alive *= 1.0 - qx[sex][age]
        total, count = sum(survivors), int(top[sex])
        split[sex] = [round(count * s / total) for s in survivors]
    out += [(100 + k, split["male"][k], split["female"][k]) for k in range(_MAX_AGE - 99)]
    return tuple(out)


# ---------------------------------------------------------------------------------------------
# Draws: one keyed hash per patient gives every random bit; integer weights make picks exact
# ---------------------------------------------------------------------------------------------

_M32 = (1 << 32) - 1
_M122 = (1 << 122) - 1
_M34 = (1 << 34) - 1


class _Draws(NamedTuple):
    """The sixteen 32-bit uniform draws of patient #i (slot k = bits 32k..32k+31 of its hash).

    The one table of which slot feeds what: the record's fields (and which profile reads them)
    and the living population's uses (docs/living-population.md). Every slot is taken; a new
    field takes new bits from a table of its own (MoreDraws, or a _draw_table for draws per
    patient and k), never a slot here: reusing one would make two fields depend on each other.
    Code reads the slots by these names only."""

    state: int  # all profiles: the state, in proportion to its population
    zip: int  # all: the ZIP within the state, in proportion to its population
    cell: int  # all: the (age, sex, living or dead) registry cell; a joiner: a birth's sex,
    # an arrival's living cell
    birth: int  # all, living cells: the birth day within the cell's year of birth (arrivals too)
    gender: int  # all: other / unknown, else the cell's sex (joiners too)
    language: int  # all: the preferred language (joiners too)
    organization: int  # all: the managing hospital among the ZIP's nearest (gravity weights);
    # a joiner: its hospital at its age on joining
    death_age: int  # all, dead cells: the fraction of the year of age lived at death (f); a
    # joiner entered in error: the day of its deletion
    death_time_low: int  # all, dead cells: the death instant in the window (64 bits: low and
    death_time_high: int  # high halves); high half, a joiner: its place within its join slot
    race: int  # all: race x ethnicity row, given state, age, sex and living or dead (joiners too);
    # its Hispanic origin shapes the preferred language
    race_pair: int  # us-core: the pair of races of a "Two or more races" row
    given_name: int  # us-core
    family_name: int  # us-core
    joiner_kind: int  # a joiner: a birth below _Dynamics.birth_cut, else an arrival
    entered_in_error: int  # a joiner: entered in error (deleted later) below _Dynamics.error_cut


_DRAW_BYTES = struct.Struct(f"<{len(_Draws._fields)}I")
assert _DRAW_BYTES.size == 64, "one 512-bit BLAKE2b digest holds the draws"


_raw_draws = _DRAW_BYTES.unpack  # a 64-byte digest as sixteen 32-bit draws, in Draws order
_EPOCH_DAY = 719163  # date(1970, 1, 1).toordinal(): epoch seconds // 86400 + this = an ordinal
_LAST_SECOND = 253402300799  # 9999-12-31T23:59:59Z, the last instant a date can hold
_DRAW_TABLES: dict[bytes, type] = {}  # tag -> its table: filled by @_draw_table at import only


def _draw_table(tag: bytes) -> Callable[[type], type]:
    """Register a NamedTuple of named draws under its own hash tag (class decorator).

    Patient #i's Draws are the keyed hash of i's 8 bytes; a table's draws for (i, k...) are the
    keyed hash of b"<tag>|<i>|<k>..." (ASCII, never 8 bytes long: the tag has 5 bytes or more),
    so every table is independent of Draws and of every other table, and of every other k.
    Fields are filled from slot 0 on: a new field is appended, existing ones never move."""

    def register(table: type) -> type:
        fields = getattr(table, "_fields", None)
        assert fields is not None and len(fields) <= len(_Draws._fields), "16 draws per hash"
        assert len(tag) >= 5 and b"|" not in tag and tag not in _DRAW_TABLES, tag
        _DRAW_TABLES[tag] = table
        table.tag = tag  # type: ignore[attr-defined]
        return table

    return register


def _stream(plan: Plan, table: type[Any], index: int, *k: int) -> Any:
    """`table`'s named draws for patient #index and k (any number of whole numbers: the k-th
    stay, a version number...): an unbounded family of independent draws per patient, each
    one hash, computed only where asked for (the bulk path never asks)."""
    hasher = plan.hasher.copy()
    if len(k) == 1:  # the common case (a stay's k), formatted at once: the same message
        hasher.update(b"%s|%d|%d" % (table.tag, index, k[0]))
    else:
        hasher.update(b"|".join([table.tag, b"%d" % index, *(b"%d" % n for n in k)]))
    return table._make(_raw_draws(hasher.digest())[: len(table._fields)])


@_draw_table(b"patient-2")
class _MoreDraws(NamedTuple):
    """Patient #i's next sixteen draws, for fields added after Draws was full: _stream(plan,
    MoreDraws, i), one more hash computed only for the fields that read it. Append a field
    here (with what it feeds and which profile reads it); never reorder or remove one (retire
    it as unused_<k>), so no existing field's bits move. Empty so far."""


def _digest(plan: Plan, index: int) -> bytes:
    """Patient #index's hash: the plan's keyed state, copied (cheaper than re-keying)."""
    hasher = plan.hasher.copy()
    hasher.update(index.to_bytes(8, "little"))
    return hasher.digest()


def _gender(plan: Plan, u32: int, sex: str) -> str:
    """The gender on the record: other / unknown at their small shares, else the sex."""
    if u32 < plan.gender_other:
        return "other"
    return "unknown" if u32 < plan.gender_unknown else sex


def _pick(cum: tuple[int, ...], u32: int) -> int:
    """Index drawn in proportion to the weights behind `cum`, from 32 uniform bits."""
    return bisect.bisect_right(cum, (u32 * cum[-1]) >> 32)


def _hash_int(key: bytes, data: bytes, size: int = 64) -> int:
    return int.from_bytes(hashlib.blake2b(data, key=key, digest_size=size).digest(), "little")


def _uuid_bytes(index: int, add: int, mul: tuple[int, int, int]) -> bytes:
    """Patient #index's UUID as ASCII bytes (what the writers need): (index + add) through a
    bijection of the 122-bit space (odd multiplies and xorshifts are invertible), its bits laid
    out as an RFC 4122 version-4 UUID by one bytes format (the hot path: no calls, no join)."""
    m1, m2, m3 = mul
    x = ((index + add) & _M122) * m1 & _M122
    x ^= x >> 61
    x = x * m2 & _M122
    x ^= x >> 59
    x = x * m3 & _M122
    x ^= x >> 63
    # 48 bits, the version 4, 12 bits, the variant 0b10 and 62 bits: 8-4-4-4-12 hex digits
    return b"%08x-%04x-4%03x-%04x-%012x" % (
        x >> 90,
        x >> 74 & 0xFFFF,
        x >> 62 & 0xFFF,
        x >> 48 & 0x3FFF | 0x8000,
        x & 0xFFFFFFFFFFFF,
    )


def _mrn_bytes(index: int, add: int, mul: int) -> bytes:
    """Patient #index's MRN as ASCII bytes: a keyed permutation of the ten-digit numbers
    (cycle-walking a 34-bit bijection), so MRNs never collide."""
    x = index
    while True:
        x = (x + add) * mul & _M34
        x ^= x >> 17
        if x < 10**10:
            return b"MC-%010d" % x


def _limbs(value: int) -> tuple[int, int, int, int]:
    """A number below 2**128 as four 32-bit limbs, least significant first."""
    return tuple(value >> 32 * k & _M32 for k in range(4))  # type: ignore[return-value]


def _mul122(a: list[Any], m: tuple[int, int, int, int]) -> list[Any]:
    """a * m mod 2**122 on 32-bit limbs (uint64 arrays): _uuid_bytes's odd multiply, for a block.
    Each limb product is split in its 32-bit halves, so no column sum overflows 64 bits; the top
    limb only needs its product mod 2**64 (its low 26 bits are kept)."""
    a0, a1, a2, a3 = a
    m0, m1, m2, m3 = (np.uint64(v) for v in m)
    mask, w = np.uint64(_M32), np.uint64(32)
    p00, p01, p10 = a0 * m0, a0 * m1, a1 * m0
    p02, p11, p20 = a0 * m2, a1 * m1, a2 * m0
    c0 = p00 & mask
    c1 = (p00 >> w) + (p01 & mask) + (p10 & mask)
    c2 = (p01 >> w) + (p10 >> w) + (p02 & mask) + (p11 & mask) + (p20 & mask) + (c1 >> w)
    c3 = (p02 >> w) + (p11 >> w) + (p20 >> w) + a0 * m3 + a1 * m2 + a2 * m1 + a3 * m0
    c3 = c3 + (c2 >> w) & np.uint64((1 << 26) - 1)
    return [c0, c1 & mask, c2 & mask, c3]


def _xor_shift(a: list[Any], shift: int) -> list[Any]:
    """x ^ (x >> shift) on 32-bit limbs (a 122-bit x)."""
    q, r = divmod(shift, 32)
    out = []
    for k, limb in enumerate(a):
        if k + q > 3:
            out.append(limb)
            continue
        moved = a[k + q] >> np.uint64(r)
        if r and k + q + 1 <= 3:
            moved |= a[k + q + 1] << np.uint64(32 - r) & np.uint64(_M32)
        out.append(limb ^ moved)
    return out


_HEX = b"0123456789abcdef"  # ASCII by value: index a uint8 view with the digits


def _hex_digits(values: Any, digits: int) -> Any:
    """(n, digits) ASCII hex digits of n numbers, most significant first."""
    shifts = np.arange(4 * (digits - 1), -1, -4, dtype=np.uint64)
    return np.frombuffer(_HEX, np.uint8)[(values[:, None] >> shifts) & np.uint64(15)]


def _uuid_block(indexes: Any, add: int, mul: tuple[int, int, int]) -> Any:
    """_uuid_bytes for a block of indexes (uint64): an (n, 36) uint8 array of the UUIDs' ASCII."""
    a = _limbs(add)
    mask, w = np.uint64(_M32), np.uint64(32)
    c0 = (indexes & mask) + np.uint64(a[0])
    c1 = (indexes >> w) + np.uint64(a[1]) + (c0 >> w)
    c2 = np.uint64(a[2]) + (c1 >> w)
    c3 = np.uint64(a[3]) + (c2 >> w) & np.uint64((1 << 26) - 1)
    x = [c0 & mask, c1 & mask, c2 & mask, c3]
    for m, shift in zip(mul, (61, 59, 63), strict=True):
        x = _xor_shift(_mul122(x, _limbs(m)), shift)
    high = x[3] << w | x[2]  # bits 64..121
    low = x[1] << w | x[0]  # bits 0..63
    out = np.empty((len(indexes), 36), np.uint8)
    out[:, [8, 13, 18, 23]] = ord("-")
    out[:, 14] = ord("4")
    out[:, 0:8] = _hex_digits(high >> np.uint64(26), 8)
    out[:, 9:13] = _hex_digits(high >> np.uint64(10) & np.uint64(0xFFFF), 4)
    bits = (high << np.uint64(2) | low >> np.uint64(62)) & np.uint64(0xFFF)
    out[:, 15:18] = _hex_digits(bits, 3)
    out[:, 19:23] = _hex_digits(low >> np.uint64(48) & np.uint64(0x3FFF) | np.uint64(0x8000), 4)
    out[:, 24:36] = _hex_digits(low & np.uint64(0xFFFFFFFFFFFF), 12)
    return out


_DIGITS = b"0123456789"


def _mrn_block(indexes: Any, add: int, mul: int) -> Any:
    """_mrn_bytes for a block of indexes (uint64): an (n, 13) uint8 array of "MC-" and the
    ten digits. The cycle walk repeats for those still at or above 10**10."""
    x, todo = indexes.copy(), np.arange(len(indexes))
    found = np.empty(len(indexes), np.uint64)
    add_, mul_, m34 = np.uint64(add), np.uint64(mul), np.uint64(_M34)
    while len(todo):
        x = (x + add_) * mul_ & m34  # the product wraps at 2**64: its low 34 bits are exact
        x ^= x >> np.uint64(17)
        ok = x < np.uint64(10**10)
        found[todo[ok]] = x[ok]
        todo, x = todo[~ok], x[~ok]
    out = np.empty((len(indexes), 13), np.uint8)
    out[:, :3] = np.frombuffer(b"MC-", np.uint8)
    powers = np.uint64(10) ** np.arange(9, -1, -1, dtype=np.uint64)
    out[:, 3:] = np.frombuffer(_DIGITS, np.uint8)[found[:, None] // powers % np.uint64(10)]
    return out


def _add_years(d: date, years: int) -> date:
    try:
        return d.replace(year=d.year + years)
    except ValueError:  # 29 February in a common year
        return d.replace(year=d.year + years, day=28)


@functools.cache
def _month_days(leap: bool) -> tuple[str, ...]:
    """'-MM-DD' of every day of a leap or a common year, in order."""
    year = 2000 if leap else 2001
    first = date(year, 1, 1).toordinal()
    return tuple(date.fromordinal(o).isoformat()[4:] for o in range(first, first + 365 + leap))


def _iso_dates(first: int, last: int) -> tuple[str, ...]:
    """The ISO dates of the proleptic ordinals first..last, built a year at a time from
    '-MM-DD' tables (date.isoformat per day is several times slower: 40,000 dates a plan)."""
    years = range(date.fromordinal(first).year, date.fromordinal(last).year + 1)
    out: list[str] = []
    for y in years:
        out += map(f"{y:04d}".__add__, _month_days(calendar.isleap(y)))
    start = first - date(years[0], 1, 1).toordinal()
    return tuple(out[start : start + last - first + 1])


def _iso_instant(dt: datetime) -> str:
    """FHIR instant in UTC with a Z; microseconds only when present."""
    fmt = "%Y-%m-%dT%H:%M:%S.%fZ" if dt.microsecond else "%Y-%m-%dT%H:%M:%SZ"
    return dt.astimezone(UTC).strftime(fmt)


def _parse_as_of(value: datetime | str | None) -> datetime:
    """An aware UTC datetime from a datetime or ISO-8601 text (naive means UTC; None means now);
    ValueError outside 2010-01-01 .. 9999-12-31T23:59:59.999999 UTC (the supported range)."""
    if value is None:
        return datetime.now(UTC)
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value.strip())
        except ValueError:
            raise ValueError(f"as-of {value!r} is not an ISO-8601 date-time") from None
    if not isinstance(value, datetime):
        raise ValueError(f"as-of must be a datetime or ISO-8601 text, not {type(value).__name__}")
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    try:
        utc = value.astimezone(UTC)
    except OverflowError:  # the offset moves it past 9999-12-31 or before 0001-01-01
        utc = None
    if utc is None or utc.year < 1900 + _MAX_AGE:
        raise ValueError(
            f"as-of {value.isoformat()} is out of range: in UTC it must fall in "
            f"{1900 + _MAX_AGE}-01-01 .. 9999-12-31"
        )
    return utc


def _draw_seed() -> int:
    """A fresh random seed (report it, so the run can be repeated)."""
    import secrets  # only a run without --seed draws one

    return secrets.randbits(63)


# ---------------------------------------------------------------------------------------------
# Profiles and FHIR versions: what a record looks like (cms, us-core) and what it is valid in
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Profile:
    """A record profile as a value: its own tables and how it turns the cms record into its own.

    The registry _PROFILES (below the profiles' functions) names them; a new profile is one
    entry there plus its two functions."""

    name: str
    tables: Callable[[_Reference], Any]  # built once per plan, kept as plan.tables
    record: Callable[[Plan, dict[str, Any], _Sample], dict[str, Any]]  # cms record -> this one
    rendered: bool  # True: json_renderer writes it from pre-serialised fragments (cms shape)
    fhir_versions: tuple[str, ...]  # the FHIR versions its guide exists for


def _no_tables(ref: _Reference) -> None:
    """The cms profile needs no tables beyond the plan's own."""
    return None


class _RaceTable(NamedTuple):
    """One state's race x ethnicity rows as FHIR parts; sample() draws the row (Sample.race)."""

    rows: tuple[tuple[Any, ...], ...]  # (races|None, text, eth code, eth text, eth index)
    pairs: tuple[tuple[tuple[tuple[str, str], ...], ...], ...]  # by ethnicity index
    pair_cum: tuple[tuple[int, ...], ...]


class _UsCoreTables(NamedTuple):
    """What the us-core profile draws from: race x ethnicity by state, names."""

    race: Mapping[str, _RaceTable]  # state code -> its table
    family_names: tuple[str, ...]
    family_cum: tuple[int, ...]
    given_names: Mapping[str, tuple[str, ...]]  # sex -> names
    given_cum: Mapping[str, tuple[int, ...]]


def _faker_table(names: Mapping[str, float]) -> tuple[tuple[str, ...], tuple[int, ...]]:
    """Names and integer cumulative weights from a Faker name -> frequency table (9 decimals)."""
    return tuple(names), _cumulative(round(w * 1e9) for w in names.values())


def _race_table(race_rows: tuple[tuple[str, str, str, str, int], ...]) -> _RaceTable:
    """One state's race x Hispanic-origin rows as FHIR parts, in race_rows order.

    "Other Race" rows get no ombCategory (text only); "Two or more races" rows draw an unordered
    pair of distinct OMB races with weight w_a * w_b, w being the state's single-race population
    in the same Hispanic-origin group.
    """
    eth_index: dict[str, int] = {}
    omb: list[list[tuple[str, str, int]]] = []  # per ethnicity: (code, display, population)
    rows = []
    for race, race_code, eth, eth_code, pop in race_rows:
        e = eth_index.setdefault(eth_code, len(eth_index))
        if e == len(omb):
            omb.append([])
        if not race_code:  # Two or more races: the pair is drawn per record
            races, text = None, _TWO_OR_MORE_TEXT
        elif race_code == _OTHER_RACE_CODE:
            races, text = (), _OTHER_RACE_TEXT
        else:
            races, text = ((race_code, race),), race
            omb[e].append((race_code, race, pop))
        rows.append((races, text, eth_code, eth, e))
    pairs, pair_cum = [], []
    for cats in omb:
        combos = [(a, b) for i, a in enumerate(cats) for b in cats[i + 1 :]]
        pairs.append(tuple(((a[0], a[1]), (b[0], b[1])) for a, b in combos))
        pair_cum.append(_cumulative(a[2] * b[2] for a, b in combos))
    return _RaceTable(tuple(rows), tuple(pairs), tuple(pair_cum))


def _us_core_tables(ref: _Reference) -> _UsCoreTables:
    """Census race x Hispanic origin by state (race_ethnicity_by_state.csv) and Faker's en_US
    names."""
    from faker.providers.person.en_US import Provider as FakerPerson

    family_names, family_cum = _faker_table(FakerPerson.last_names)
    male, male_cum = _faker_table(FakerPerson.first_names_male)
    female, female_cum = _faker_table(FakerPerson.first_names_female)
    return _UsCoreTables(
        race={state: _race_table(rows) for state, rows in ref.race_ethnicity.items()},
        family_names=family_names,
        family_cum=family_cum,
        given_names={"male": male, "female": female},
        given_cum={"male": male_cum, "female": female_cum},
    )


def _cms_record(plan: Plan, record: dict[str, Any], s: _Sample) -> dict[str, Any]:
    """The cms profile is the seed's record as assembled."""
    return record


def _us_core_record(plan: Plan, record: dict[str, Any], s: _Sample) -> dict[str, Any]:
    """The cms record plus US Core's parts, in FHIR element order (the race row is Sample.race;
    draws race_pair..family_name)."""
    t: _UsCoreTables = plan.tables
    u, race_table = _Draws._make(s.draws), t.race[plan.state_codes[s.state]]
    races, text, eth_code, eth_display, e = race_table.rows[s.race]
    if races is None:  # Two or more races
        races = race_table.pairs[e][_pick(race_table.pair_cum[e], u.race_pair)]
    given = t.given_names[s.sex][_pick(t.given_cum[s.sex], u.given_name)]
    family = t.family_names[_pick(t.family_cum, u.family_name)]
    # Codings carry no display: the required text says it, and records stay nearer 1.5 KB.
    race = [
        {"url": "ombCategory", "valueCoding": {"system": _CDC_RACE_SYSTEM, "code": c}}
        for c, _ in races
    ]
    race.append({"url": "text", "valueString": text})
    identifier = record["identifier"]
    identifier[0]["system"] = _US_CORE_MRN_SYSTEM
    out: dict[str, Any] = {
        "resourceType": "Patient",
        "id": record["id"],
        "meta": {**record["meta"], "profile": [_US_CORE_PATIENT]},
        # Extension's element order is id, extension, url, value[x]: a complex extension's
        # `extension` comes before its `url`, as fhir.resources writes it (same JSON round trip).
        "extension": [
            {"extension": race, "url": _US_CORE_RACE},
            {
                "extension": [
                    {
                        "url": "ombCategory",
                        "valueCoding": {"system": _CDC_RACE_SYSTEM, "code": eth_code},
                    },
                    {"url": "text", "valueString": eth_display},
                ],
                "url": _US_CORE_ETHNICITY,
            },
            {"url": _US_CORE_BIRTHSEX, "valueCode": "F" if s.sex == "female" else "M"},
        ],
        "identifier": identifier,
        "active": True,
        "name": [{"use": "official", "family": family, "given": [given]}],
    }
    out.update(itertools.islice(record.items(), 5, None))  # gender onwards, as in cms
    return out


# The profile registry (--profile): name -> tables, record function, renderer support.
_PROFILES: Mapping[str, _Profile] = {
    "cms": _Profile(
        "cms", tables=_no_tables, record=_cms_record, rendered=True, fhir_versions=("R4", "R5")
    ),
    # US Core 5.0.1 and later are R4 implementation guides
    "us-core": _Profile(
        "us-core",
        tables=_us_core_tables,
        record=_us_core_record,
        rendered=False,
        fhir_versions=("R4",),
    ),
}


def _organization_head(org: Mapping[str, str]) -> dict[str, Any]:
    """The Organization elements that R4 and R5 share, in element order (up to name): the
    readable id, the CMS Certification Number, and the CMS hospital type as the type's text."""
    return {
        "resourceType": "Organization",
        "id": org["id"],
        "identifier": [
            {"system": _ORG_SYSTEM, "value": org["id"]},
            {"system": _CCN_SYSTEM, "value": org["ccn"]},
        ],
        "active": True,
        "type": [
            {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/organization-type",
                        "code": "prov",
                        "display": "Healthcare Provider",
                    }
                ],
                "text": org["hospital_type"],
            }
        ],
        "name": org["name"],
    }


def _organization_address(org: Mapping[str, str]) -> dict[str, Any]:
    """The hospital's CMS address, verbatim (CMS writes it in capitals; county without suffix)."""
    return {
        "line": [org["address"]],
        "city": org["city"],
        "district": org["county"],
        "state": org["state"],
        "postalCode": org["zip"],
        "country": "USA",
    }


def _organization_r4(org: Mapping[str, str]) -> dict[str, Any]:
    """R4 (and R4B): Organization.address."""
    return {**_organization_head(org), "address": [_organization_address(org)]}


def _organization_r5(org: Mapping[str, str]) -> dict[str, Any]:
    """R5 moved the address into Organization.contact (ExtendedContactDetail.address)."""
    return {**_organization_head(org), "contact": [{"address": _organization_address(org)}]}


class _FhirVersion(NamedTuple):
    """A FHIR version a run can declare: its number, fhir.resources models, Organization form."""

    number: str  # as FHIR writes it (CapabilityStatement.fhirVersion)
    models: str  # the fhir.resources package whose models match it (R4B stands in for R4)
    organization: Callable[[Mapping[str, str]], dict[str, Any]]


# --fhir-version: Patient JSON is the same in R4 and R5; Organization differs.
_FHIR_VERSIONS: Mapping[str, _FhirVersion] = {
    "R4": _FhirVersion("4.0.1", "fhir.resources.R4B", _organization_r4),
    "R5": _FhirVersion("5.0.0", "fhir.resources", _organization_r5),
}


def organization_record(
    org: Mapping[str, str], fhir_version: str | _FhirVersion = "R4"
) -> dict[str, Any]:
    """The FHIR Organization of one of the plan's hospitals (plan.organizations), in the given
    FHIR version (a FHIR_VERSIONS name, or plan.fhir_version)."""
    if not isinstance(fhir_version, _FhirVersion):
        fhir_version = _FHIR_VERSIONS[fhir_version]
    return fhir_version.organization(org)


# ---------------------------------------------------------------------------------------------
# Plan: everything fixed for a run, precomputed once so each record is cheap
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class Plan:
    """Everything fixed for one run (seed, as-of, options), precomputed so records are cheap.

    Plans are values: equal (seed, as-of, options, data) means an equal plan, so caches keyed by
    a plan hit for a copy pickled to a worker process or a Spark executor."""

    seed: int
    as_of: datetime
    options: Mapping[str, Any]  # normalised options, as recorded in manifests
    identity: tuple[Any, ...]  # (seed, as_of, options, data_dir): what equality compares
    key: bytes
    hasher: Any  # blake2b keyed with `key`, never updated itself: sample() copies it
    uuid_add: int
    uuid_mul: tuple[int, int, int]
    mrn_add: int
    mrn_mul: int
    last_updated: str
    state_codes: tuple[str, ...]
    state_cum: tuple[int, ...]
    zips: tuple[_ZipRow, ...]  # Reference.zips: (ZIP, city, county, state)
    zip_index: tuple[tuple[int, ...], ...]  # by position in state_codes: positions in zips
    zip_cum: tuple[tuple[int, ...], ...]  # their cumulative populations
    hospitals: tuple[Mapping[str, str], ...]  # Reference.hospitals (all CMS rows)
    hospital_cand: array  # Reference.hospital_cand: CANDIDATES slots per ZIP
    hospital_cum: array
    organization_index: tuple[int, ...]  # positions in hospitals of the run's organizations
    organizations: tuple[Mapping[str, str], ...]  # every organization a patient can reference
    cells: tuple[tuple[int, str, bool], ...]  # (age on the record, sex, dead?) registry cells
    cell_cum: tuple[tuple[int, ...], ...]  # by position in state_codes: the state's cell weights
    race_cum: tuple[tuple[tuple[int, ...], ...], ...]  # [state][cell]: over race_rows
    race_rows: tuple[tuple[str, str, str, str], ...]  # Reference.race_rows
    race_hispanic: tuple[bool, ...]  # per race row: Hispanic or Latino?
    birth_low: tuple[int, ...]  # first possible birth ordinal per cell
    birth_span: tuple[int, ...]  # living cells: their possible birth days (0 for dead cells)
    death_power: tuple[float, ...]  # dead cells: k in f = u**k (0.0 marks a living cell)
    dates: tuple[str, ...]  # ISO dates by ordinal - dates_base
    dates_base: int
    window_start: int  # epoch seconds
    window_span: int  # seconds in the window, as-of included
    hospital_slots: tuple[int, ...]  # per cell: 10 general candidates, 11 under CHILD_AGE
    languages: tuple[tuple[str, str], ...]
    # state position * 6 + language_slot[cell] + hispanic -> cumulative weights over languages
    language_cum: tuple[tuple[int, ...], ...]
    language_slot: tuple[int, ...]  # per cell: 2 * its age band in LANGUAGE_BANDS
    gender_other: int
    gender_unknown: int
    profile: _Profile
    tables: Any  # the profile's own tables (None for cms)
    fhir_version: _FhirVersion  # options["fhir_version"] resolved: its number, models, Organization

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Plan) and self.identity == other.identity

    def __hash__(self) -> int:
        """hash(identity), computed once: per-record caches (version_json) look plans up."""
        cached = self.__dict__.get("_hash")
        if cached is None:
            cached = hash(self.identity)
            object.__setattr__(self, "_hash", cached)
        return cached

    def __getstate__(self) -> dict[str, Any]:
        """Pickle without the hash state (not picklable) or the cached hash (str hashes differ
        between processes): workers and Spark receive plans."""
        state = self.__dict__.copy()
        del state["hasher"]
        state.pop("_hash", None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state, hasher=hashlib.blake2b(key=state["key"], digest_size=64))


def _check_age(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= _MAX_AGE:
        raise ValueError(f"--{name} must be a whole number from 0 to {_MAX_AGE}, not {value!r}")
    return value


def _check_range(name: str, value: Any, low: float, high: float, low_open: bool) -> float:
    """value as a float in (low, high] (low_open) or [low, high]; ValueError naming --name."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"--{name} must be a number, not {value!r}") from None
    if not (low < number if low_open else low <= number) or not number <= high:
        interval = f"({low:g}, {high:g}]" if low_open else f"[{low:g}, {high:g}]"
        raise ValueError(f"--{name} must be in {interval}, not {value}")
    return number


def _check_flag(name: str, value: Any) -> bool:
    """A yes/no option: True or False (None, not set, is False)."""
    if value is None:
        return False
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be True or False, not {value!r}")
    return value


def _normalise_states(states: str | Iterable[str] | None, ref: _Reference) -> tuple[str, ...]:
    known = {code for code, _, _, _ in ref.states}
    if states is None:
        return tuple(code for code, _, _, territory in ref.states if not territory)
    items = states.split(",") if isinstance(states, str) else list(states)
    codes = []
    for item in items:
        code = str(item).strip().upper()
        if code and code not in known:
            raise ValueError(f"unknown state {item.strip()!r} (use USPS codes such as CA,NY,DC,PR)")
        if code and code not in codes:
            codes.append(code)
    if not codes:
        raise ValueError("--states names no state")
    # Reference-table order, as for None: the canonical form must be a fixed point, so a plan
    # rebuilt from plan.options (worker processes, a manifest's request) is the same plan.
    return tuple(code for code, _, _, _ in ref.states if code in codes)


def _normalise_options(*, data_dir: str | Path | None = None, **options: Any) -> dict[str, Any]:
    """Check generation options (OPTION_DEFAULTS names them) and return all of them in canonical
    form, as manifests record them; ValueError says what is wrong."""
    unknown = sorted(set(options) - set(_OPTION_DEFAULTS))
    if unknown:
        raise ValueError(f"unknown option {unknown[0]!r} (known: {', '.join(_OPTION_DEFAULTS)})")
    o = {**_OPTION_DEFAULTS, **options}
    min_age, max_age = _check_age("min-age", o["min_age"]), _check_age("max-age", o["max_age"])
    if min_age > max_age:
        raise ValueError(f"--min-age {min_age} is greater than --max-age {max_age}")
    rate = o["mortality_rate"]
    if o["profile"] not in _PROFILES:
        raise ValueError(f"--profile must be one of {', '.join(_PROFILES)}, not {o['profile']!r}")
    version = _FHIR_VERSIONS.get(o["fhir_version"])
    if version is None:
        choices = ", ".join(_FHIR_VERSIONS)
        raise ValueError(f"--fhir-version must be one of {choices}, not {o['fhir_version']!r}")
    versions = _PROFILES[o["profile"]].fhir_versions
    if o["fhir_version"] not in versions:
        raise ValueError(
            f"--profile {o['profile']} exists for FHIR {', '.join(versions)} only, "
            f"not --fhir-version {o['fhir_version']}"
        )
    return {
        "min_age": min_age,
        "max_age": max_age,
        "states": _normalise_states(o["states"], _load_reference(data_dir)),
        "lookback_years": _check_range("lookback-years", o["lookback_years"], 0, 100, True),
        "mortality_rate": None
        if rate is None
        else _check_range("mortality-rate", rate, 0, 1, False),
        "profile": o["profile"],
        "fhir_version": o["fhir_version"],
        # recorded only when on, so manifests without stays keep their bytes
        **({"encounters": True} if _check_flag("encounters", o["encounters"]) else {}),
    }


def make_plan(
    seed: int,
    as_of: datetime | str | None = None,
    *,
    data_dir: str | Path | None = None,
    **options: Any,
) -> Plan:
    """Check inputs and precompute everything fixed for a run; cached for repeated calls.

    Options are OPTION_DEFAULTS' names; data_dir is the reference data (default: bundled)."""
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= _MAX_SEED:
        raise ValueError(f"seed must be a whole number from 0 to 2**64-1, not {seed!r}")
    opts = _normalise_options(data_dir=data_dir, **options)
    where = None if data_dir is None else str(Path(data_dir).resolve())
    return _make_plan_cached(seed, _parse_as_of(as_of), tuple(opts.items()), where)


# -- the registry: the people alive at as-of (Census) plus those who died in the look-back window
#
# A dead cell (x, sex) holds the people who died in the window at whole age x: its weight D(x)
# makes deaths per person-year measured on the registry itself equal the life table's m(x) at
# every age, whatever the Census age structure and the window length L. Person-years at age x
# come from the living (K_live) and from the dead before they died (K_dead), so
#   D(x) = m(x) * (PYlive(x) + sum_{x' > x} D(x') K_dead(x' - x)) / (1 - m(x) K_dead(0)),
# solved from the oldest age down. The death instant is uniform in the window; the exact age at
# death is x + f, f uniform for x >= 1 (HMD's a(x) = 0.5) and F(f) = f**b, b = a0 / (1 - a0), at
# x = 0 (mean HMD's a(0); deaths cluster after birth).


def _infant_power(a0: float) -> float:
    """k in f = u**k, the inverse of F(f) = f**b with b = a0 / (1 - a0): mean a(0), as HMD's."""
    if not 0.0 < a0 < 1.0:
        raise ValueError(f"the life table's a(0) must be in (0, 1), not {a0}")
    return (1.0 - a0) / a0


def _clamp_area(z: float, top: float) -> float:
    """The integral from 0 to z of clamp(t, 0, top) dt."""
    if z <= 0.0:
        return 0.0
    if z <= top:
        return z * z / 2.0
    return top * top / 2.0 + top * (z - top)


def _live_kernel(j: int, lookback: float) -> float:
    """Expected window years a living person aged a + u at as-of (u ~ U[0, 1)) spent at whole
    age a - j: the mean over u of |[j + u - 1, j + u] & [0, L]| (years before as-of)."""
    if j < 0:
        return 0.0
    c0, c1, c2 = (_clamp_area(z, lookback) for z in (j - 1, j, j + 1))
    return (c2 - c1) - (c1 - c0)


def _min_area(c: float, lookback: float) -> float:
    """The integral over S in [0, L] of min(S, c), for c >= 0."""
    return c * lookback - c * c / 2.0 if c <= lookback else lookback * lookback / 2.0


def _dead_kernel(d: int, lookback: float, power: float = 1.0) -> float:
    """K_dead(d): expected window years at age x - d of one death at whole age x (death instant
    uniform in the window, f = u**power), by the midpoint rule over u."""
    nodes = 64 if power == 1.0 else 4096  # the uniform integrand is piecewise quadratic
    total = 0.0
    for i in range(nodes):
        hi = d + ((i + 0.5) / nodes) ** power
        lo = max(0.0, hi - 1.0)
        total += (_min_area(hi, lookback) - _min_area(lo, lookback)) / lookback
    return total / nodes


def _death_weights(
    living: tuple[int, ...], mx: tuple[float, ...], a0: float, lookback: float
) -> list[float]:
    """D(x): expected deaths in the window by whole age at death x (one sex), in the units of
    `living` (Census people at as-of by age), from the recursion above."""
    reach = int(lookback) + 2
    live = [_live_kernel(j, lookback) for j in range(reach + 1)]
    dead = [_dead_kernel(d, lookback) for d in range(reach + 1)]
    infant = _dead_kernel(0, lookback, _infant_power(a0))
    deaths = [0.0] * (_MAX_AGE + 1)
    for x in range(_MAX_AGE, -1, -1):
        top = min(_MAX_AGE, x + reach)
        exposure = sum(living[a] * live[a - x] for a in range(x, top + 1))
        exposure += sum(deaths[x + d] * dead[d] for d in range(1, top - x + 1))
        deaths[x] = mx[x] * exposure / (1.0 - mx[x] * (infant if x == 0 else dead[0]))
    return deaths


def _state_deaths(ref: _Reference, lookback: float) -> dict[str, dict[str, list[float]]]:
    """state -> sex -> D_s(x): the national D(x) (the recursion on the national table) shared
    among the states in proportion to k_s(x) P_s(x), their living times their mortality ratio.
    The ratios average 1 over the living at every age, so the states' deaths add up to D(x)
    (the national calibration holds exactly) and a state's deaths per person-year at age x
    are m(x) k_s(x), up to the small difference between its and the nation's person-years per
    living person at that age."""
    out: dict[str, dict[str, list[float]]] = {st: {} for st in ref.state_age_sex}
    for k, sex in enumerate(_SEXES):
        national = tuple(row[1 + k] for row in ref.age_sex)
        deaths = _death_weights(national, ref.mx[sex], ref.ax[sex][0], lookback)
        per_person = [d / p if p else 0.0 for d, p in zip(deaths, national, strict=True)]
        for st, by_sex in ref.state_age_sex.items():
            ratio = ref.state_mx_ratio[st][sex]
            out[st][sex] = [
                d * r * p for d, r, p in zip(per_person, ratio, by_sex[sex], strict=True)
            ]
    return out


def _registry_cells(
    ref: _Reference, opts: Mapping[str, Any]
) -> tuple[list[tuple[int, str, bool]], list[list[int]]]:
    """The cells (age on the record, sex, dead?) for ages min..max and, per state of the run,
    their integer weights: the state's living (raked Census, state_age_sex.csv) and its dead
    (_state_deaths, computed on the whole population first). Life table: living P << 32 and
    dead round(D * 2**32), so the living keep the table's ratios exactly and the states add up
    to the national table. --mortality-rate p: within the selected ages the dead take share p
    (over all the run's states) spread by D and the living 1 - p spread by the table (exact to
    2**-32), so p is the probability that a patient of the run is deceased, whatever the age
    filter; the states keep their relative death rates."""
    states, rate = opts["states"], opts["mortality_rate"]
    living = {st: ref.state_age_sex[st] for st in states}
    deaths = _state_deaths(ref, opts["lookback_years"])
    ages = range(opts["min_age"], opts["max_age"] + 1)
    one = 1 << 32
    live_scale, dead_share, dead_total = one, float(one), 1.0  # dead: D * dead_share / dead_total
    if rate is not None:
        live_scale = round((1.0 - rate) * one)
        dead_share = rate * sum(living[st][s][x] for st in states for s in _SEXES for x in ages)
        dead_share *= one
        dead_total = sum(deaths[st][s][x] for st in states for s in _SEXES for x in ages)
    cells = [(age, sex, dead) for age in ages for sex in _SEXES for dead in (False, True)]
    weights = [
        [
            living[st][sex][age] * live_scale
            if not dead
            else round(dead_share * deaths[st][sex][age] / dead_total)
            for age, sex, dead in cells
        ]
        for st in states
    ]
    if not any(map(any, weights)):
        raise ValueError(f"ages {opts['min_age']}..{opts['max_age']} leave no population")
    return cells, weights


def _population(ref: _Reference, opts: Mapping[str, Any], as_of: datetime) -> dict[str, Any]:
    """The registry's cells with their weights per state (and the states' totals, which draw
    the state) and what sample() needs per cell: the birth range of the living, the age-at-death
    exponent of the dead, the race tables; the window; the dates table."""
    cells, weights = _registry_cells(ref, opts)
    today = as_of.date()
    as_of_seconds = int(as_of.timestamp())
    window_start = as_of_seconds - round(opts["lookback_years"] * _SECONDS_PER_YEAR)
    first_death_day = date.fromordinal(window_start // 86400 + _EPOCH_DAY)
    birth_low, birth_span, death_power = [], [], []
    for age, sex, dead in cells:
        born_by = first_death_day if dead else today  # the earliest birth is age + 1 years before
        birth_low.append(_add_years(born_by, -(age + 1)).toordinal() + 1)
        birth_span.append(0 if dead else _add_years(today, -age).toordinal() - birth_low[-1] + 1)
        death_power.append(0.0 if not dead else _infant_power(ref.ax[sex][0]) if age == 0 else 1.0)
    dates_base = min(birth_low)
    slots = [_race_slot(*cell) for cell in cells]
    return {
        "state_cum": _cumulative(map(sum, weights)),
        "cells": tuple(cells),
        "cell_cum": tuple(_cumulative(w) for w in weights),
        "race_cum": tuple(tuple(ref.race_cum[st][k] for k in slots) for st in opts["states"]),
        "birth_low": tuple(birth_low),
        "birth_span": tuple(birth_span),
        "death_power": tuple(death_power),
        "dates": _iso_dates(dates_base, today.toordinal()),
        "dates_base": dates_base,
        "window_start": window_start,
        "window_span": as_of_seconds - window_start + 1,
    }


def _bijection_keys(key: bytes) -> dict[str, Any]:
    """The keyed constants of the id and MRN bijections."""
    return {
        "uuid_add": _hash_int(key, b"uuid-add", 16) & _M122,
        "uuid_mul": (
            _hash_int(key, b"uuid-mul-1", 16) & _M122 | 1,
            _hash_int(key, b"uuid-mul-2", 16) & _M122 | 1,
            _hash_int(key, b"uuid-mul-3", 16) & _M122 | 1,
        ),
        "mrn_add": _hash_int(key, b"mrn-add", 8) & _M34,
        "mrn_mul": _hash_int(key, b"mrn-mul", 8) & _M34 | 1,
    }


@functools.lru_cache(maxsize=32)
def _make_plan_cached(
    seed: int, as_of: datetime, options: tuple[tuple[str, Any], ...], data_dir: str | None
) -> Plan:
    opts = dict(options)
    ref = _load_reference(data_dir)
    master = hashlib.blake2b(
        b"metriccare-fhir-patient/1|" + seed.to_bytes(8, "little"), digest_size=64
    ).digest()
    key = master[:32]
    state_codes = opts["states"]
    profile = _PROFILES[opts["profile"]]
    population = _population(ref, opts, as_of)
    return Plan(
        seed=seed,
        as_of=as_of,
        options=opts,
        identity=(seed, as_of, options, data_dir),
        key=key,
        hasher=hashlib.blake2b(key=key, digest_size=64),
        **_bijection_keys(key),
        last_updated=_iso_instant(as_of),
        state_codes=state_codes,
        zips=ref.zips,
        zip_index=tuple(ref.state_zips[s][0] for s in state_codes),
        zip_cum=tuple(ref.state_zips[s][1] for s in state_codes),
        hospitals=ref.hospitals,
        hospital_cand=ref.hospital_cand,
        hospital_cum=ref.hospital_cum,
        **_organizations(ref, state_codes),
        **population,
        hospital_slots=tuple(
            _CANDIDATES if age < _CHILD_AGE else _CANDIDATES - 1
            for age, _, _ in population["cells"]
        ),
        race_rows=ref.race_rows,
        race_hispanic=tuple(eth_code == _HISPANIC_CODE for *_, eth_code in ref.race_rows),
        languages=tuple((code, display) for code, display, _ in ref.languages),
        language_cum=tuple(t for s in state_codes for t in ref.language_cum[s]),
        language_slot=tuple(2 * _language_band(age) for age, _, _ in population["cells"]),
        gender_other=round(_GENDER_OTHER_SHARE * (1 << 32)),
        gender_unknown=round((_GENDER_OTHER_SHARE + _GENDER_UNKNOWN_SHARE) * (1 << 32)),
        profile=profile,
        tables=profile.tables(ref),
        fhir_version=_FHIR_VERSIONS[opts["fhir_version"]],
    )


def _organizations(ref: _Reference, state_codes: tuple[str, ...]) -> dict[str, tuple[Any, ...]]:
    """The run's organizations, in CMS order: every general and children's hospital of its
    states, and every hospital of another state that is a candidate of one of its ZIPs
    (candidates cross state lines), so every reference resolves."""
    kinds, chosen = (*_GENERAL_HOSPITAL_TYPES, _CHILDREN_HOSPITAL_TYPE), set(state_codes)
    used = set().union(*(ref.state_hospitals[state] for state in state_codes))
    index = tuple(
        i
        for i, h in enumerate(ref.hospitals)
        if i in used or (h["hospital_type"] in kinds and h["state"] in chosen)
    )
    return {"organization_index": index, "organizations": tuple(ref.hospitals[i] for i in index)}


# -- the profiles' tables


# ---------------------------------------------------------------------------------------------
# The record: sample(plan, i) draws patient #i, build_record(plan, i) is it as a plain dict
# ---------------------------------------------------------------------------------------------


class _Sample(NamedTuple):
    """What patient #i is, before any JSON: positions into the plan's tables, by name."""

    state: int  # position in plan.state_codes
    zip: int  # position in plan.zips
    cell: int  # position in plan.cells
    sex: str  # the cell's sex (gender is what the record says)
    birth: int  # birth date as a proleptic Gregorian ordinal
    gender: str
    language: int  # position in plan.languages
    organization: int  # position in plan.hospitals
    died: int  # death instant in epoch seconds, -1 for the living
    race: int  # position in plan.race_rows (race x Hispanic origin)
    draws: tuple[int, ...]  # the sixteen raw draws in Draws order: Draws._make(s.draws) names them


def _death(plan: Plan, cell: int, power: float, raw: tuple[int, ...]) -> tuple[int, int]:
    """A dead cell's (birth ordinal, death instant): the instant uniform in the window, then the
    birth date that makes the calendar age at death exactly the cell's age x and floor(f * span)
    days, f = (u / 2**32)**power the part of year x lived, span = the days of that year of age."""
    u = _Draws._make(raw)
    died = plan.window_start + (
        (u.death_time_low | u.death_time_high << 32) * plan.window_span >> 64
    )
    day = date.fromordinal(died // 86400 + _EPOCH_DAY)  # the UTC death date
    age = plan.cells[cell][0]
    last = _add_years(day, -age).toordinal()  # born that day: exactly `age` years old at death
    span = last - _add_years(day, -age - 1).toordinal()
    if power == 1.0:
        days = u.death_age * span >> 32
    else:
        days = min(int((u.death_age / 4294967296.0) ** power * span), span - 1)
    return last - days, died


_RACE_SLOT = _Draws._fields.index("race")


def _sample_tuple(plan: Plan, index: int) -> tuple[Any, ...]:
    """sample()'s values as a plain tuple in Sample's field order (the renderer's hot path)."""
    if not 0 <= index <= _MAX_INDEX:
        raise ValueError(f"patient index must be from 0 to {_MAX_INDEX}, not {index}")
    raw = _raw_draws(_digest(plan, index))
    # The slots this function reads, named as in Draws (a test keeps the two in step); the
    # death slots are read by _death, the us-core ones by its record function.
    u_state, u_zip, u_cell, u_birth, u_gender, u_language, u_organization = raw[:7]
    u_race = raw[_RACE_SLOT]
    bisect_right = bisect.bisect_right  # _pick, inlined: this is the hot loop
    cum = plan.state_cum
    s = bisect_right(cum, u_state * cum[-1] >> 32)
    cum = plan.zip_cum[s]
    z = plan.zip_index[s][bisect_right(cum, u_zip * cum[-1] >> 32)]
    cum = plan.cell_cum[s]  # the state's own age x sex x living-or-dead table
    cell = bisect_right(cum, u_cell * cum[-1] >> 32)
    cum = plan.race_cum[s][cell]  # race x ethnicity given state, age band, sex, living or dead
    race = bisect_right(cum, u_race * cum[-1] >> 32)
    sex = plan.cells[cell][1]
    power = plan.death_power[cell]
    if power:
        birth, died = _death(plan, cell, power, raw)
    else:
        birth, died = plan.birth_low[cell] + (u_birth * plan.birth_span[cell] >> 32), -1
    gender = _gender(plan, u_gender, sex)
    # the language by state, age band and Hispanic origin (of the race row us-core prints)
    cum = plan.language_cum[s * 6 + plan.language_slot[cell] + plan.race_hispanic[race]]
    language = bisect_right(cum, u_language * cum[-1] >> 32)
    # the ZIP's candidates: slots lo..lo+9 for everyone, lo+10 (children's) under CHILD_AGE
    cum, lo = plan.hospital_cum, z * _CANDIDATES
    hi = lo + plan.hospital_slots[cell]
    org = plan.hospital_cand[bisect_right(cum, u_organization * cum[hi - 1] >> 32, lo, hi)]
    return s, z, cell, sex, birth, gender, language, org, died, race, raw


# _sample_tuple reads its slots by their Draws names (u_<name>): keep the two in step.
assert [n for n in _sample_tuple.__code__.co_varnames if n.startswith("u_")] == [
    "u_" + name for name in (*_Draws._fields[:7], "race")
], "_sample_tuple's u_ names must follow the Draws table"


def _language_at(plan: Plan, state: int, cell: int, race: int, raw: tuple[int, ...]) -> int:
    """The language _sample_tuple draws for a patient of state position `state` in `cell` with
    race row `race` (the living population draws it for a joiner's own state and age)."""
    hispanic = plan.race_hispanic[race]
    cum = plan.language_cum[state * 6 + plan.language_slot[cell] + hispanic]
    return _pick(cum, _Draws._make(raw).language)


def _sample(plan: Plan, index: int) -> _Sample:
    """Patient #index's draws, mapped onto the plan's tables: one hash, no record."""
    return _Sample._make(_sample_tuple(plan, index))


def patient_id(plan: Plan, index: int) -> str:
    """Patient #index's UUID: a keyed bijection of the index, so ids never collide."""
    return _uuid_bytes(index, plan.uuid_add, plan.uuid_mul).decode()


def _patient_mrn(plan: Plan, index: int) -> str:
    """Patient #index's MRN: a keyed permutation of the ten-digit numbers, so MRNs never collide."""
    return _mrn_bytes(index, plan.mrn_add, plan.mrn_mul).decode()


# -- block sampling: the bulk path draws a block of patients at once with numpy, the same
#    values _sample_tuple gives one by one (tests/test_block.py compares them index by index):
#    one hash per patient still, then every table lookup over the whole block


class _BlockTables(NamedTuple):
    """The plan's sampling tables as numpy arrays (built once per plan, only on the bulk path).

    A per-state (or per-row) cumulative table is laid end to end as one non-decreasing uint64
    array, each table shifted by the totals before it (`*_base`): then one searchsorted over the
    block is bisect_right within every patient's own table. Short tables (race, language,
    hospital candidates) are rows of a matrix: the count of entries <= x is bisect_right."""

    state_cum: Any  # uint64, the state weights
    zip_flat: Any  # every state's ZIP cumulative weights, end to end
    zip_base: Any  # per state: the total of the states before it (the shift of its table)
    zip_start: Any  # per state: where its table starts in zip_flat
    zip_total: Any  # per state: its table's total
    zip_index: Any  # int64, zip_flat position -> position in plan.zips
    cell_flat: Any  # every state's cell weights, end to end (as zip_*)
    cell_base: Any
    cell_start: Any
    cell_total: Any
    race_rows: Any  # (states * cells, race rows) cumulative weights, row = state * cells + cell
    race_hispanic: Any  # per race row: 1 for Hispanic or Latino
    language_rows: Any  # (states * 6, languages): Plan.language_cum as a matrix
    language_slot: Any  # per cell
    hospital_cum: Any  # (ZIPs, CANDIDATES): Plan.hospital_cum by ZIP (a view of its array)
    hospital_cand: Any  # (ZIPs, CANDIDATES): Plan.hospital_cand by ZIP (a view)
    hospital_slots: Any  # per cell: 10 or 11 candidates
    birth_low: Any  # int64 per cell
    birth_span: Any  # uint64 per cell
    dead: Any  # bool per cell
    sex_female: Any  # bool per cell


def _end_to_end(tables: Sequence[Sequence[int]]) -> tuple[Any, Any, Any, Any]:
    """Cumulative tables laid end to end, each shifted by the totals before it: (flat array,
    shift per table, start per table, total per table). The grand total must fit 63 bits."""
    totals = [t[-1] for t in tables]
    shift = [0, *itertools.accumulate(totals)][:-1]
    if sum(totals) >= 1 << 63:
        raise ValueError("the weight tables' totals overflow the block's 64-bit searchsorted")
    flat = np.fromiter((v + b for t, b in zip(tables, shift, strict=True) for v in t), np.uint64)
    starts = [0, *itertools.accumulate(len(t) for t in tables)][:-1]
    return (
        flat,
        np.array(shift, np.uint64),
        np.array(starts, np.int64),
        np.array(totals, np.uint64),
    )


def _matrix(rows: Sequence[Sequence[int]]) -> Any:
    """Equal-length cumulative tables as a matrix (one table a row), uint32 where they fit."""
    top = max((row[-1] for row in rows), default=0)
    dtype = np.uint32 if top <= _M32 else np.uint64
    return np.array(rows, dtype).reshape(len(rows), len(rows[0]) if rows else 0)


def _by_zip(slots: array) -> Any:
    """A per-ZIP array of CANDIDATES slots as a (ZIPs, CANDIDATES) matrix: a view, no copy."""
    return np.frombuffer(slots, slots.typecode).reshape(-1, _CANDIDATES)


@functools.lru_cache(maxsize=8)
def _block_tables(plan: Plan) -> _BlockTables:
    zip_flat, zip_base, zip_start, zip_total = _end_to_end(plan.zip_cum)
    cell_flat, cell_base, cell_start, cell_total = _end_to_end(plan.cell_cum)
    cells = plan.cells
    return _BlockTables(
        state_cum=np.array(plan.state_cum, np.uint64),
        zip_flat=zip_flat,
        zip_base=zip_base,
        zip_start=zip_start,
        zip_total=zip_total,
        zip_index=np.fromiter(itertools.chain.from_iterable(plan.zip_index), np.int64),
        cell_flat=cell_flat,
        cell_base=cell_base,
        cell_start=cell_start,
        cell_total=cell_total,
        race_rows=_matrix([row for per_state in plan.race_cum for row in per_state]),
        race_hispanic=np.array(plan.race_hispanic, np.int64),
        language_rows=_matrix(plan.language_cum),
        language_slot=np.array(plan.language_slot, np.int64),
        hospital_cum=_by_zip(plan.hospital_cum),
        hospital_cand=_by_zip(plan.hospital_cand),
        hospital_slots=np.array(plan.hospital_slots, np.int64),
        birth_low=np.array(plan.birth_low, np.int64),
        birth_span=np.array(plan.birth_span, np.uint64),
        dead=np.array([bool(p) for p in plan.death_power]),
        sex_female=np.array([sex == "female" for _, sex, _ in cells]),
    )


def _scaled(u: Any, total: Any) -> Any:
    """(u * total) >> 32 for 32-bit draws u and totals below 2**64, exactly, in uint64: the
    draw's point on [0, total), as _pick computes it with Python integers."""
    total = np.asarray(total, np.uint64)
    high, low = total >> np.uint64(32), total & np.uint64(_M32)
    return u * high + (u * low >> np.uint64(32))


def _bisect_rows(rows: Any, x: Any) -> Any:
    """bisect_right(row, x) for every (row, x) pair: the count of entries <= x."""
    return (rows <= x[:, None]).sum(axis=1)


def _ymd_block(ordinals: Any) -> tuple[Any, Any, Any]:
    """Year, month and day (int64 arrays) of proleptic ordinals, as date.fromordinal gives them."""
    days = (ordinals - _EPOCH_DAY).astype("datetime64[D]")
    months = days.astype("datetime64[M]")
    years = months.astype("datetime64[Y]")
    return (
        years.astype(np.int64) + 1970,
        (months - years).astype(np.int64) + 1,
        (days - months).astype(np.int64) + 1,
    )


class _Block(NamedTuple):
    """Patients #lo..#hi-1 as _Sample's columns (numpy arrays; `died` -1 for the living)."""

    state: Any
    zip: Any
    cell: Any
    female: Any  # the cell's sex is female
    birth: Any
    gender: Any  # 0 the cell's sex, 1 other, 2 unknown
    language: Any
    organization: Any
    died: Any
    race: Any
    draws: Any  # the (hi - lo, 16) uint64 raw draws (_block_draws): a _Sample's draws, by row


def _index_draws(plan: Plan, indexes: Iterable[int]) -> Any:
    """The sixteen raw draws of each patient of `indexes` (_digest's hash): an (n, 16) uint64
    array, a row per patient."""
    copy, digests = plan.hasher.copy, []
    append = digests.append
    for index in indexes:
        h = copy()
        h.update(index.to_bytes(8, "little"))
        append(h.digest())
    raw = np.frombuffer(b"".join(digests), "<u4").reshape(len(digests), len(_Draws._fields))
    return raw.astype(np.uint64)


def _block_draws(plan: Plan, lo: int, hi: int) -> Any:
    """The sixteen raw draws of patients #lo..#hi-1: a (hi - lo, 16) uint64 array."""
    if not 0 <= lo <= hi <= _MAX_INDEX + 1:
        raise ValueError(f"patient indexes must be from 0 to {_MAX_INDEX}, not {lo}..{hi - 1}")
    return _index_draws(plan, range(lo, hi))


def _stream_block(
    plan: Plan, table: type[Any], indexes: Iterable[int], ks: Iterable[int] | None = None
) -> Any:
    """_stream(plan, table, i) for each index, or _stream(plan, table, i, k) for each (index,
    k) pair: an (n, fields) uint64 array, a column per field in its order."""
    copy, digests = plan.hasher.copy, []
    append = digests.append
    if ks is None:
        message = table.tag + b"|%d"
        for index in indexes:
            h = copy()
            h.update(message % index)
            append(h.digest())
    else:
        message = table.tag + b"|%d|%d"  # _stream's message for one k
        for pair in zip(indexes, ks, strict=True):
            h = copy()
            h.update(message % pair)
            append(h.digest())
    raw = np.frombuffer(b"".join(digests), "<u4").reshape(len(digests), len(_Draws._fields))
    return raw[:, : len(table._fields)].astype(np.uint64)


def _sample_block(plan: Plan, lo: int, hi: int) -> _Block:
    """_sample_tuple for patients #lo..#hi-1 at once, as columns: the same values."""
    t, raw = _block_tables(plan), _block_draws(plan, lo, hi)
    u = _Draws._make(raw.T)  # each slot a column, by its Draws name
    s = np.searchsorted(t.state_cum, _scaled(u.state, t.state_cum[-1]), "right")
    at = np.searchsorted(t.zip_flat, t.zip_base[s] + _scaled(u.zip, t.zip_total[s]), "right")
    z = t.zip_index[at]
    x = t.cell_base[s] + _scaled(u.cell, t.cell_total[s])
    cell = np.searchsorted(t.cell_flat, x, "right") - t.cell_start[s]
    rows = t.race_rows[s * len(plan.cells) + cell]
    race = _bisect_rows(rows, _scaled(u.race, rows[:, -1]))
    rows = t.language_rows[s * 6 + t.language_slot[cell] + t.race_hispanic[race]]
    language = _bisect_rows(rows, _scaled(u.language, rows[:, -1]))
    slots = t.hospital_slots[cell]
    cum = t.hospital_cum[z]
    total = cum[np.arange(len(z)), slots - 1]
    within = _bisect_rows(cum, _scaled(u.organization, total))  # never reaches slots: x < total
    org = t.hospital_cand[z, within]
    birth = t.birth_low[cell] + (u.birth * t.birth_span[cell] >> np.uint64(32)).astype(np.int64)
    died = np.full(len(z), -1, np.int64)
    for k in np.flatnonzero(t.dead[cell]).tolist():  # the dead (~3 %): one by one, as _death
        c = int(cell[k])
        birth[k], died[k] = _death(plan, c, plan.death_power[c], tuple(raw[k].tolist()))
    gender = np.where(
        u.gender < plan.gender_other, 1, np.where(u.gender < plan.gender_unknown, 2, 0)
    )
    return _Block(s, z, cell, t.sex_female[cell], birth, gender, language, org, died, race, raw)


class _Fields(NamedTuple):
    """The parts of a cms record that vary between patients, JSON-ready, in record order."""

    id: str
    meta: dict[str, str]  # versionId and lastUpdated: version 1 at as-of, unless it changed since
    mrn: str
    gender: str
    birth_date: str
    deceased: str | None  # None for the living: the element is left out
    address: list[dict[str, str]]
    communication: list[dict[str, Any]]
    organization: dict[str, str]


def _deceased(died: int) -> str:
    return _iso_instant(datetime.fromtimestamp(died, UTC))  # whole seconds: no fraction


def _address(zip_row: _ZipRow) -> list[dict[str, str]]:
    """A real ZIP's address: GeoNames place name, Census county, state, ZIP (no street line)."""
    code, city, county, state = zip_row
    return [
        {"city": city, "district": county, "state": state, "postalCode": code, "country": "USA"}
    ]


def _communication(code: str, display: str) -> list[dict[str, Any]]:
    """The preferred language as BCP-47 coding plus text."""
    return [
        {
            "language": {
                "coding": [{"system": "urn:ietf:bcp:47", "code": code, "display": display}],
                "text": display,
            },
            "preferred": True,
        }
    ]


def _managing_organization(org: Mapping[str, str]) -> dict[str, str]:
    return {"reference": "Organization/" + org["id"], "display": org["name"]}


def _date_text(plan: Plan, ordinal: int) -> str:
    """ISO date of a proleptic ordinal: from the plan's table, else (born after as-of) computed."""
    k = ordinal - plan.dates_base
    return plan.dates[k] if 0 <= k < len(plan.dates) else date.fromordinal(ordinal).isoformat()


def _meta(version: int, last_updated: str) -> dict[str, str]:
    return {"versionId": str(version), "lastUpdated": last_updated}


def _fields(plan: Plan, index: int, s: _Sample, meta: dict[str, str] | None = None) -> _Fields:
    """Patient #index's varying parts from its sample (version 1 at as-of unless `meta`)."""
    return _Fields(
        id=patient_id(plan, index),
        meta=meta or _meta(1, plan.last_updated),
        mrn=_patient_mrn(plan, index),
        gender=s.gender,
        birth_date=_date_text(plan, s.birth),
        deceased=None if s.died < 0 else _deceased(s.died),
        address=_address(plan.zips[s.zip]),
        communication=_communication(*plan.languages[s.language]),
        organization=_managing_organization(plan.hospitals[s.organization]),
    )


def _assemble(plan: Plan, f: _Fields) -> dict[str, Any]:
    """The cms Patient's shape, in FHIR element order: the one place it is written down
    (json_renderer derives its byte template from it, by field name)."""
    record: dict[str, Any] = {
        "resourceType": "Patient",
        "id": f.id,
        "meta": f.meta,
        "identifier": [
            {
                "use": "usual",
                "type": {
                    "coding": [
                        {
                            "system": "http://terminology.hl7.org/CodeSystem/v2-0203",
                            "code": "MR",
                            "display": "Medical Record Number",
                        }
                    ],
                    "text": "Medical Record Number",
                },
                "system": _MRN_SYSTEM,
                "value": f.mrn,
            }
        ],
        "active": True,
        "gender": f.gender,
        "birthDate": f.birth_date,
    }
    if f.deceased is not None:
        record["deceasedDateTime"] = f.deceased
    record["address"] = f.address
    record["communication"] = f.communication
    record["managingOrganization"] = f.organization
    return record


def build_record(plan: Plan, index: int) -> dict[str, Any]:
    """Patient #index of the plan as a plain dict: the canonical form every writer serialises."""
    s = _sample(plan, index)
    return plan.profile.record(plan, _assemble(plan, _fields(plan, index, s)), s)


# ---------------------------------------------------------------------------------------------
# The living population: from the epoch E on, each patient lives on (deaths, moves, hospital
# changes), new patients join and records entered in error are deleted. Every change is the
# patient's next version. Patient #i's history is a pure function of (seed, i, E, options); a
# joiner's also of the epoch count N, whose size sets the joining rate (docs/living-population.md)
# ---------------------------------------------------------------------------------------------

_BLOCK = 64  # indexes per event tile: tile (block, year) holds the candidate events of 64 patients
# Thinning bounds, per person-year: candidates come at these rates and each is accepted with
# probability rate / bound (Lewis-Shedler), so every rate up to its bound is exact and a rate can
# change without moving any other event. The life table's highest m(x) is 0.73 (men, 110).
_DEATH_BOUND, _MOVE_BOUND, _HOSPITAL_BOUND = 0.75, 0.30, 0.05
# Share of people 1+ who moved in a year, CPS ASEC 2021: within the county, to another county of
# the state, to another state (docs/living-population.md); hazards -ln(1 - p), split pro rata,
# then spread over ages by the ACS 2018 B07001 mover rates of each kind (movers_by_age_acs2018.csv)
# so that each kind's total over the B07001 population 1+ stays the CPS one.
_MOVE_SHARES = (0.049, 0.019, 0.014)
_MOVE_KINDS = ("move-zip", "move-county", "move-state")
_HOSPITAL_CHANGE_RATE = 0.03  # per person-year without a move: an assumption (no published rate)
# Deaths, births and arrivals by calendar year and state (issue 17): the life table's m(x) times
# the year's national level (NCHS deaths per person, deaths_by_year_nchs.csv, over the life
# table's year LIFE_TABLE_YEAR's); births and net international migration per person of each
# state (Census V2025 components, population_components_v2025.csv). A calendar year y uses the
# component year ending 30 June y; years outside the tables use the nearest year in them.
_LIFE_TABLE_YEAR = 2022  # HMD's US period life table (life_table_hmd2022_full.csv)
_BIRTH_RATE = 3_596_017 / 334_914_895  # NCHS final births 2023 / Census population 1 July 2023
_NEWCOMER_RATE = 2_800_000 / 340_110_988  # Census net international migration 2023-24 / 2024 pop.
_MALE_AT_BIRTH = 105 / 205  # the sex ratio at birth, about 105 boys per 100 girls
_ERROR_SHARE = 0.01  # new registrations entered in error (an assumption), deleted later:
_ERROR_DAYS = 28  # 1..28 days after they were entered (an assumption)
_LATE_DAYS = 7  # delivery faults: a late version arrives 1..7 whole days after its instant,
_DUPLICATE_DAYS = 3  # a duplicate 0..3 days after the first delivery
_MAX_DELAY = 86400 * (_LATE_DAYS + _DUPLICATE_DAYS)  # how far back a batch looks for deliveries


class Faults(NamedTuple):
    """Delivery faults for pipeline tests, each a rate per version (0 = off): late arrival (in
    a later batch than its instant), duplicate delivery, out of order within a batch."""

    late: float = 0.0
    duplicate: float = 0.0
    out_of_order: float = 0.0


_NO_FAULTS = Faults()


class Version(NamedTuple):
    """One version of patient #index: what it is after `change`, at `instant`."""

    index: int
    number: int  # meta.versionId
    instant: int  # epoch seconds of the change; version 1 of an epoch patient: E (as-of)
    change: str  # epoch, birth, arrival, death, move-zip, move-county, move-state, hospital, delete
    sample: _Sample  # the patient as of this version (after a delete: as it last was)


class _YearRates(NamedTuple):
    """The living population's rates that vary by calendar year, state or age (reference data;
    BIRTH_RATE and NEWCOMER_RATE remain the documented national figures of 2023-24)."""

    years: range  # the component years with data; others use the nearest
    death_level: Mapping[int, float]  # year -> NCHS deaths per person / LIFE_TABLE_YEAR's
    births: Mapping[tuple[str, int], float]  # (state, year) -> births per person-year
    arrivals: Mapping[tuple[str, int], float]  # (state, year) -> net intl. migration per person
    move_factor: tuple[tuple[float, ...], ...]  # by age: each kind's B07001 rate / its mean


@functools.cache
def _year_rates(data_dir: str | None) -> _YearRates:
    """The tables behind _YearRates, read once per data folder."""
    folder = Path(data_dir) if data_dir else _DATA_DIR
    components = [
        r
        for r in _csv_rows(folder, "population_components_v2025.csv")
        if r["period"].startswith(f"{int(r['year']) - 1}-07-01")  # whole years (not 2020)
    ]
    years = sorted({int(r["year"]) for r in components})
    people = {(r["state"], int(r["year"])): int(r["popestimate_jul1"]) for r in components}
    deaths = _csv_rows(folder, "deaths_by_year_nchs.csv")
    crude = {
        int(r["year"]): int(r["us_resident_deaths_registered"]) / people["US", int(r["year"])]
        for r in deaths
        if ("US", int(r["year"])) in people
    }
    return _YearRates(
        years=range(years[0], years[-1] + 1),
        death_level={y: c / crude[_LIFE_TABLE_YEAR] for y, c in crude.items()},
        births={
            (r["state"], int(r["year"])): int(r["births"]) / people[r["state"], int(r["year"])]
            for r in components
        },
        arrivals={
            (r["state"], int(r["year"])): max(0, int(r["net_international_migration"]))
            / people[r["state"], int(r["year"])]
            for r in components
        },
        move_factor=_move_factors(_csv_rows(folder, "movers_by_age_acs2018.csv")),
    )


def _move_factors(rows: list[dict[str, str]]) -> tuple[tuple[float, ...], ...]:
    """By whole age 0..MAX_AGE: each move kind's ACS B07001 rate at that age over its rate in
    the whole population 1+ (age 0 takes the 1-4 rate; "75 years and over" runs to MAX_AGE)."""
    columns = ("moved_within_county", "moved_diff_county_same_state", "moved_from_diff_state")
    people = sum(int(r["population_1plus"]) for r in rows)
    mean = [sum(int(r[c]) for r in rows) / people for c in columns]
    lows = [int(r["age_group"].split()[0]) for r in rows]
    factors = [
        tuple(
            int(r[c]) / int(r["population_1plus"]) / m for c, m in zip(columns, mean, strict=True)
        )
        for r in rows
    ]
    return tuple(factors[bisect.bisect_right(lows, max(x, 1)) - 1] for x in range(_MAX_AGE + 1))


class _Dynamics(NamedTuple):
    """What the events of a plan need, precomputed once (tables; no state)."""

    tile_hash: Any  # SHAKE-256 that has absorbed the plan key: tiles copy it
    poisson: Mapping[int, tuple[int, ...]]  # year length in days -> inverse CDF of candidates
    kind_cut: tuple[int, ...]  # a candidate's kind word below [k] (and not [k-1]): kind k
    cuts: tuple[Any, ...]  # by position in _EVENT_KINDS: that kind's acceptance thresholds
    zip_order: tuple[int, ...]  # the run's ZIP positions sorted by (state, county)
    zip_rank: Mapping[int, int]  # ZIP position -> rank in zip_order
    state_index: Mapping[str, int]  # state code -> position in plan.state_codes
    rank_cum: tuple[int, ...]  # rank_cum[r] = population of ranks < r (len + 1 entries)
    county_span: tuple[tuple[int, int], ...]  # by rank: ranks of its county [lo, hi)
    state_span: tuple[tuple[int, int], ...]  # by rank: ranks of its state
    living_cum: tuple[tuple[int, ...], ...]  # by state: cells with the dead at 0 (newcomers)
    newborn_cell: Mapping[str, int]  # sex -> the living age-0 cell (births), if in the ages
    # The joiners' clock, in segments (the epoch's year, then one per calendar year, the last
    # one open): seconds after E where each begins, joiners per epoch patient before it, and
    # joiners per epoch patient per second within it.
    join_at: tuple[float, ...]
    join_before: tuple[float, ...]
    join_rate: tuple[float, ...]
    birth_cut: tuple[int, ...]  # by segment: a joiner is a birth if Draws.joiner_kind < this
    birth_states: tuple[tuple[int, ...], ...]  # by segment: cumulative births by state position
    arrival_states: tuple[tuple[int, ...], ...]  # by segment: arrivals (net migration) likewise
    error_cut: int  # a joiner was entered in error if Draws.entered_in_error < this
    male_cut: int
    start: int  # E in whole seconds: changes happen after it


def _seconds(dt: datetime) -> int:
    """Whole epoch seconds (floor) of an aware datetime."""
    return (dt - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(seconds=1)


def _poisson_cdf(mean: Decimal) -> tuple[int, ...]:
    """floor(P(K <= k) * 2**32) for K ~ Poisson(mean), in exact decimal arithmetic (the same on
    every machine), until it reaches 2**32 - 1."""
    cdf, p, total, k = [], (-mean).exp(), Decimal(0), 0
    while True:
        total += p
        cdf.append(min(int(total * (1 << 32)), (1 << 32) - 1))
        if cdf[-1] == (1 << 32) - 1:
            return tuple(cdf)
        k += 1
        p = p * mean / k


def _cut(p: float) -> int:
    """A 32-bit threshold: u32 < _cut(p) has probability p."""
    return min(round(p * (1 << 32)), 1 << 32)


def _living_cum(plan: Plan) -> tuple[tuple[int, ...], ...]:
    """Each state's registry cell weights with the dead cells at 0: newcomers are alive."""
    out = []
    for cum in plan.cell_cum:
        weights = (c - b for c, b in zip(cum, (0, *cum), strict=False))
        out.append(
            _cumulative(
                0 if dead else w for (_, _, dead), w in zip(plan.cells, weights, strict=True)
            )
        )
    return tuple(out)


def _state_death_ratio(plan: Plan, ref: _Reference) -> tuple[Mapping[str, tuple[float, ...]], ...]:
    """By state position: sex -> by age, the state's mortality ratio k_s(x) (m_s = k_s m), the
    registry's (Reference.state_mx_ratio); 1 where a state has none."""
    one = {sex: (1.0,) * (_MAX_AGE + 1) for sex in _SEXES}
    return tuple(ref.state_mx_ratio.get(code, one) for code in plan.state_codes)


def _death_tables(
    plan: Plan, ref: _Reference, rates: _YearRates
) -> dict[tuple[int, int], dict[str, tuple[int, ...]]]:
    """(rate year, state position) -> sex -> by age: m(x) x the year's level x the state's
    ratio k_s(x), per bound; state -1: the highest of the states. A rate above DEATH_BOUND (only
    at the oldest ages of a high year or state) is capped at it."""
    ratio, ages = _state_death_ratio(plan, ref), range(_MAX_AGE + 1)
    accept = {}
    for y in rates.years:
        level = rates.death_level[min(rates.death_level, key=lambda k: (abs(k - y), k))]
        for k, r in enumerate(ratio):
            accept[y, k] = {
                sex: tuple(
                    _cut(min(1.0, m * level * kx / _DEATH_BOUND))
                    for m, kx in zip(ref.mx[sex], r[sex], strict=True)
                )
                for sex in _SEXES
            }
        accept[y, -1] = {
            sex: tuple(max(accept[y, k][sex][x] for k in range(len(ratio))) for x in ages)
            for sex in _SEXES
        }
    return accept


def _year_start(year: int) -> int:
    return (date(year, 1, 1).toordinal() - _EPOCH_DAY) * 86400


def _tile_years(lo: int, hi: int) -> Iterator[tuple[int, int, int]]:
    """(year, its first second, its length in seconds) for every calendar year that the window
    lo < instant <= hi touches (none when it is empty): the years whose tiles hold its events."""
    if hi <= lo:
        return
    first = date.fromordinal((lo + 1) // 86400 + _EPOCH_DAY).year
    last = date.fromordinal(hi // 86400 + _EPOCH_DAY).year
    for year in range(first, last + 1):  # lengths from the calendar: no date(10000, 1, 1)
        yield year, _year_start(year), (366 if calendar.isleap(year) else 365) * 86400


_JOIN_FIELDS = (
    "join_at",
    "join_before",
    "join_rate",
    "birth_cut",
    "birth_states",
    "arrival_states",
)


def _join_clock(plan: Plan, rates: _YearRates, start: int) -> dict[str, tuple[Any, ...]]:
    """The joiners' segments (see _Dynamics): per calendar year from the epoch's to the last rate
    year, births and arrivals per epoch patient summed over the run's states, each state
    weighted by its population (states.csv, as the epoch draws it)."""
    births_on = plan.options["min_age"] == 0
    weights = [b - a for a, b in zip((0, *plan.state_cum), plan.state_cum, strict=False)]
    first = date.fromordinal(start // 86400 + _EPOCH_DAY).year
    out: dict[str, list[Any]] = {k: [] for k in _JOIN_FIELDS}
    before, at = 0.0, 0.0
    for year in range(first, max(first, rates.years[-1]) + 1):
        y = min(max(year, rates.years[0]), rates.years[-1])
        born = [
            w * rates.births[code, y] if births_on else 0.0
            for w, code in zip(weights, plan.state_codes, strict=True)
        ]
        came = [
            w * rates.arrivals[code, y] for w, code in zip(weights, plan.state_codes, strict=True)
        ]
        per_year = (sum(born) + sum(came)) / sum(weights)
        out["join_at"].append(at)
        out["join_before"].append(before)
        out["join_rate"].append(per_year / _SECONDS_PER_YEAR)
        out["birth_cut"].append(_cut(sum(born) / (sum(born) + sum(came))))
        out["birth_states"].append(_cumulative(round(b * 1000) for b in born))
        out["arrival_states"].append(_cumulative(round(c * 1000) for c in came))
        end = _year_start(year + 1) - start if year < 9999 else float("inf")
        before += (end - at) * out["join_rate"][-1]
        at = float(end)
    return {k: tuple(v) for k, v in out.items()}


def _age(birth: int, instant: int) -> int:
    """Whole years of age at an instant, for a birth date given as an ordinal. An instant past
    the last date (a readmission after an as-of late in 9999: never kept) counts as that date."""
    day = date.fromordinal(min(instant, _LAST_SECOND) // 86400 + _EPOCH_DAY)
    born = date.fromordinal(birth)
    return day.year - born.year - ((day.month, day.day) < (born.month, born.day))


def _hospital_at(plan: Plan, z: int, age: int, u32: int, exclude: int = -1) -> int | None:
    """A hospital for someone aged `age` in ZIP position z, as sample() draws it (the ZIP's
    nearest, gravity weights; the children's hospital under CHILD_AGE), without `exclude`;
    None if nothing is left."""
    lo, cum, cand = z * _CANDIDATES, plan.hospital_cum, plan.hospital_cand
    slots = range(lo, lo + (_CANDIDATES if age < _CHILD_AGE else _CANDIDATES - 1))
    weights = [0 if cand[k] == exclude else cum[k] - (cum[k - 1] if k > lo else 0) for k in slots]
    return _weighted_slot(cand, slots, weights, u32)


def _weighted_slot(cand: Sequence[int], slots: range, weights: list[int], u32: int) -> int | None:
    """cand[k] for a slot k drawn in proportion to its integer weight from 32 uniform bits;
    None when every weight is 0 (the hospital draws of moves and of stays share it)."""
    total = sum(weights)
    if not total:
        return None
    v = u32 * total >> 32
    for k, w in zip(slots, weights, strict=True):
        if v < w:
            return cand[k]
        v -= w
    raise AssertionError("unreachable: v < total")


def _move_zip(dyn: _Dynamics, z: int, kind: int, u32: int) -> int | None:
    """The new ZIP of a move of `kind` (0 same county, 1 other county, 2 other state) from ZIP
    position z, in proportion to population; None if there is nowhere to go."""
    r = dyn.zip_rank[z]
    lo, hi = (dyn.county_span[r], dyn.state_span[r], (0, len(dyn.zip_order)))[kind]
    a, b = ((r, r + 1), dyn.county_span[r], dyn.state_span[r])[kind]
    cum = dyn.rank_cum
    weight = (cum[hi] - cum[lo]) - (cum[b] - cum[a])
    if weight <= 0:
        return None
    target = cum[lo] + (u32 * weight >> 32)
    if target >= cum[a]:
        target += cum[b] - cum[a]
    return dyn.zip_order[bisect.bisect_right(cum, target) - 1]


class _Candidate(NamedTuple):
    """A candidate event of one patient, from five words of its tile (_tile); sorted, a
    patient's candidates are in time order (ties: tile order). _candidates makes them plain
    tuples in this order (a named one costs a microsecond each, and most are never accepted);
    code reads them by these names, unpacked, or as _Candidate._make once one is accepted."""

    instant: int  # w1: the instant within the tile's year
    position: int  # where its words start in the tile
    kind: int  # w0 >> 6: which kind, by _Dynamics.kind_cut (w0 % BLOCK: whose candidate)
    accept: int  # w2: thinning, against the kind's accept cut (and a move's own kind)
    place: int  # w3: where a move goes
    hospital: int  # w4: the hospital a move or a hospital change gives


class _EventKind(NamedTuple):
    """A kind of event of the living population, the one place it is defined: the replay
    (_apply) and the window pre-check (_window_events) both read the kinds from _EVENT_KINDS.

    Candidates of all kinds come at the sum of the bounds per person-year, each kind taking its
    bound's share of them; a candidate of a kind is accepted when its accept draw is below
    accept(the kind's cuts, the patient, the instant), i.e. with probability rate / bound
    (Lewis-Shedler thinning), then change() applies it."""

    name: str  # what it is (a move's Version.change says which move)
    bound: float  # candidates per person-year: the kind's rate must never exceed it
    cuts: Callable[[Plan, _Reference], Any]  # its acceptance thresholds, computed once per plan
    accept: Callable[[Any, _Sample, int], int]  # (cuts, patient, instant) -> accept below this
    change: Callable[[Plan, _Dynamics, Any, _Sample, _Candidate], tuple[_Sample, str] | None]
    # change: the accepted candidate applied: (the new sample, Version.change), or None when
    # it changes nothing (nowhere to move, no other hospital)


class _DeathCuts(NamedTuple):
    """A death candidate is accepted below table[rate year, state position][sex][age]: m(x) x
    the state's ratio k_s(x) x the year's level, over DEATH_BOUND (_death_tables); state -1
    holds the highest of the states (the window pre-check)."""

    years: range  # the rate years: an instant's calendar year is clamped to them
    table: Mapping[tuple[int, int], Mapping[str, tuple[int, ...]]]


def _death_cuts(plan: Plan, ref: _Reference) -> _DeathCuts:
    """The death cuts by rate year, state, sex and age."""
    top = max(max(ref.mx[s]) for s in _SEXES)
    if top >= _DEATH_BOUND:
        raise ValueError(f"the life table's m(x) reaches {top}: raise DEATH_BOUND above it")
    rates = _year_rates(plan.identity[3])
    return _DeathCuts(rates.years, _death_tables(plan, ref, rates))


def _rate_year(years: range, instant: int) -> int:
    """The rate year of an instant: its UTC calendar year, clamped to the years with rates."""
    year = date.fromordinal(instant // 86400 + _EPOCH_DAY).year
    return min(max(year, years[0]), years[-1])


def _death_accept(cuts: _DeathCuts, s: _Sample, instant: int) -> int:
    """m(x) at the patient's age at the instant, by sex, state and calendar year."""
    age = min(_age(s.birth, instant), _MAX_AGE)
    return cuts.table[_rate_year(cuts.years, instant), s.state][s.sex][age]


def _die(plan: Plan, dyn: _Dynamics, cuts: Any, s: _Sample, c: _Candidate) -> tuple[_Sample, str]:
    return s._replace(died=c.instant), "death"


def _move_cuts(plan: Plan, ref: _Reference) -> tuple[tuple[int, ...], ...]:
    """By age: cumulative accept cuts of the same county, another county of the state, another
    state: the CPS shares as hazards -ln(1 - p) (exact decimals, the same everywhere), split pro
    rata, each times its ACS B07001 factor at that age (_YearRates.move_factor)."""
    with localcontext() as ctx:
        ctx.prec = 40
        moved = float(-(1 - Decimal(str(sum(_MOVE_SHARES)))).ln())
    rates = [moved * share / sum(_MOVE_SHARES) for share in _MOVE_SHARES]
    return tuple(
        tuple(
            _cut(
                min(
                    1.0,
                    sum(r * f for r, f in zip(rates[: k + 1], factor, strict=False)) / _MOVE_BOUND,
                )
            )
            for k in range(len(_MOVE_SHARES))
        )
        for factor in _year_rates(plan.identity[3]).move_factor
    )


def _move_accept(cuts: tuple[tuple[int, ...], ...], s: _Sample, instant: int) -> int:
    return cuts[min(_age(s.birth, instant), _MAX_AGE)][-1]  # any of the three moves at that age


def _move(
    plan: Plan, dyn: _Dynamics, cuts: tuple[tuple[int, ...], ...], s: _Sample, c: _Candidate
) -> tuple[_Sample, str] | None:
    """A move (which one: the accept draw against the cumulative cuts of the age) to a ZIP in
    proportion to population, and a hospital there (the age at the move allows)."""
    age = min(_age(s.birth, c.instant), _MAX_AGE)
    move = bisect.bisect_right(cuts[age], c.accept)
    z = _move_zip(dyn, s.zip, move, c.place)
    if z is None:
        return None
    org = _hospital_at(plan, z, age, c.hospital)
    state = dyn.state_index[plan.zips[z][3]]
    return s._replace(state=state, zip=z, organization=org), _MOVE_KINDS[move]


def _hospital_cuts(plan: Plan, ref: _Reference) -> int:
    return _cut(_HOSPITAL_CHANGE_RATE / _HOSPITAL_BOUND)


def _fixed_accept(cut: int, s: _Sample, instant: int) -> int:
    """A kind whose rate is the same for everyone: its cut is its accept threshold."""
    return cut


def _change_hospital(
    plan: Plan, dyn: _Dynamics, cuts: Any, s: _Sample, c: _Candidate
) -> tuple[_Sample, str] | None:
    """Another hospital among the ZIP's candidates (the age at the instant allows)."""
    org = _hospital_at(plan, s.zip, _age(s.birth, c.instant), c.hospital, s.organization)
    return None if org is None else (s._replace(organization=org), "hospital")


# The event kinds, in the order they share a candidate's kind word. A kind's rate can change
# within its bound without moving any other event; a new kind, a new bound or a new order
# redraws every candidate (their number and kinds follow the bounds' total).
_EVENT_KINDS: tuple[_EventKind, ...] = (
    _EventKind("death", _DEATH_BOUND, _death_cuts, _death_accept, _die),
    _EventKind("move", _MOVE_BOUND, _move_cuts, _move_accept, _move),
    _EventKind("hospital", _HOSPITAL_BOUND, _hospital_cuts, _fixed_accept, _change_hospital),
)


@functools.lru_cache(maxsize=8)
def _dynamics(plan: Plan) -> _Dynamics:
    """The plan's event tables: thinning cuts, ZIP ranks by (state, county), the joiners'
    rates; in exact or integer arithmetic where a draw depends on them."""
    ref = _load_reference(plan.identity[3])
    bound = sum(kind.bound for kind in _EVENT_KINDS)
    with localcontext() as ctx:
        ctx.prec = 40
        poisson = {
            days: _poisson_cdf(Decimal(_BLOCK) * Decimal(str(bound)) * days / Decimal("365.2425"))
            for days in (365, 366)
        }
    # ZIPs by (state, county): a county and a state are contiguous rank ranges
    weights: dict[int, int] = {}
    for positions, cum in zip(plan.zip_index, plan.zip_cum, strict=True):
        for z, c, before in zip(positions, cum, (0, *cum), strict=False):
            weights[z] = c - before
    state_rank = {code: k for k, code in enumerate(plan.state_codes)}
    order = sorted(weights, key=lambda z: (state_rank[plan.zips[z][3]], plan.zips[z][2], z))
    county_span, state_span = [], []
    for key, span in ((2, county_span), (3, state_span)):
        lo = 0
        for r in range(1, len(order) + 1):
            if r == len(order) or plan.zips[order[r]][key:] != plan.zips[order[lo]][key:]:
                span.extend([(lo, r)] * (r - lo))
                lo = r
    newborn = {sex: k for k, (age, sex, dead) in enumerate(plan.cells) if age == 0 and not dead}
    start = _seconds(plan.as_of)
    return _Dynamics(
        tile_hash=hashlib.shake_256(b"metriccare-events/1|" + plan.key),
        poisson=poisson,
        kind_cut=tuple(  # the kinds share the kind word's 26 bits in proportion to their bounds
            round(b / bound * (1 << 26))
            for b in itertools.accumulate(kind.bound for kind in _EVENT_KINDS[:-1])
        ),
        cuts=tuple(kind.cuts(plan, ref) for kind in _EVENT_KINDS),
        zip_order=tuple(order),
        zip_rank={z: r for r, z in enumerate(order)},
        state_index=state_rank,
        rank_cum=(0, *itertools.accumulate(weights[z] for z in order)),
        county_span=tuple(county_span),
        state_span=tuple(state_span),
        living_cum=_living_cum(plan),
        newborn_cell=newborn,
        **_join_clock(plan, _year_rates(plan.identity[3]), start),
        error_cut=_cut(_ERROR_SHARE),
        male_cut=_cut(_MALE_AT_BIRTH),
        start=start,
    )


_TILE_WORDS = 5  # per candidate: offset and kind, instant, accept, place, hospital


def _tile(dyn: _Dynamics, block: int, year: int) -> tuple[int, ...]:
    """The candidate events of indexes block*BLOCK .. +BLOCK-1 in a UTC calendar year: five
    32-bit words each (w0: offset = w0 % BLOCK and kind = w0 >> 6; w1: instant in the year; w2:
    accept; w3: place; w4: hospital). A function of (seed, block, year) only."""
    w = _tile_words(dyn, block, year)
    return struct.unpack(f"<{len(w) // 4}I", w)


def _tile_words(dyn: _Dynamics, block: int, year: int) -> bytes:
    """_tile's words as little-endian bytes (the living stays' pre-check reads them as numpy
    columns)."""
    h = dyn.tile_hash.copy()
    h.update(block.to_bytes(8, "little") + year.to_bytes(2, "little"))
    days = 366 if calendar.isleap(year) else 365
    k = bisect.bisect_right(dyn.poisson[days], int.from_bytes(h.digest(4), "little"))
    return h.digest(4 + 4 * _TILE_WORDS * k)[4:]


def _candidates(dyn: _Dynamics, block: int, lo: int, hi: int) -> dict[int, list[tuple[int, ...]]]:
    """Offset in the block -> its candidates (tuples in _Candidate's order) with lo < instant <=
    hi, in time order (ties: tile order)."""
    out: dict[int, list[tuple[int, ...]]] = {}
    for year, start, length in _tile_years(lo, hi):
        w = _tile(dyn, block, year)
        for k in range(0, len(w), _TILE_WORDS):
            instant = start + (w[k + 1] * length >> 32)
            if lo < instant <= hi:
                out.setdefault(w[k] % _BLOCK, []).append(
                    (instant, k, w[k] >> 6, w[k + 2], w[k + 3], w[k + 4])
                )
    for events in out.values():
        events.sort()
    return out


def _joined(dyn: _Dynamics, seconds: float) -> float:
    """Expected joiners per epoch patient in the first `seconds` after the epoch."""
    k = bisect.bisect_right(dyn.join_at, seconds) - 1
    return dyn.join_before[k] + (seconds - dyn.join_at[k]) * dyn.join_rate[k]


def _join_offset(dyn: _Dynamics, joined: float) -> float:
    """The inverse of _joined: seconds after the epoch by which `joined` are expected."""
    k = bisect.bisect_right(dyn.join_before, joined) - 1
    return dyn.join_at[k] + (joined - dyn.join_before[k]) / dyn.join_rate[k]


def _join_instant(plan: Plan, dyn: _Dynamics, count: int, index: int) -> int:
    """When joiner #index (index >= count) joins: the k-th of a stream whose rate follows each
    calendar year's births and arrivals, k = index - count, jittered within its slot by the
    joiner's own draw, so instants never decrease with k."""
    u = _Draws._make(_raw_draws(_digest(plan, index))).death_time_high
    return dyn.start + 1 + int(_join_offset(dyn, (index - count + u / 4294967296.0) / count))


def _population_size(plan: Plan, count: int, until: datetime | str) -> int:
    """How many indexes exist by `until` (>= the epoch, plan.as_of): the epoch's count plus the
    joiners so far (deleted ones included: indexes are never reused)."""
    dyn, until_s = _dynamics(plan), _seconds(_parse_as_of(until))
    return count + _joiners_by(plan, dyn, count, until_s)


def _joiners_by(plan: Plan, dyn: _Dynamics, count: int, until: int) -> int:
    """The number of joiners k with join instant <= until (instants never decrease with k)."""
    if count <= 0 or until <= dyn.start:
        return 0
    k = max(0, int(count * _joined(dyn, until - dyn.start)) - 1)
    while k > 0 and _join_instant(plan, dyn, count, count + k - 1) > until:
        k -= 1
    while _join_instant(plan, dyn, count, count + k) <= until:
        k += 1
    if count + k - 1 > _MAX_INDEX:
        when = _iso_instant(datetime.fromtimestamp(until, UTC))
        raise ValueError(f"by {when} the population outgrows the index range 0..{_MAX_INDEX}")
    return k


def _joiners_between(plan: Plan, dyn: _Dynamics, count: int, lo: int, hi: int) -> range:
    """Indexes of the joiners whose join instant is in (lo, hi]."""
    return range(
        count + _joiners_by(plan, dyn, count, lo), count + _joiners_by(plan, dyn, count, hi)
    )


class _Start(NamedTuple):
    """How patient #index begins: version 1's sample, change and instant, and its deletion."""

    sample: _Sample
    change: str  # epoch, birth or arrival
    instant: int
    deleted: int | None  # the instant a record entered in error is deleted


def _joiner_cell(
    plan: Plan, dyn: _Dynamics, u: _Draws, instant: int
) -> tuple[str, str, int, int, int]:
    """A joiner's change (birth or arrival), sex, registry cell, birth ordinal and state
    position, from its draws and join instant: a birth is age 0 on its join day; an arrival
    takes a living registry cell of its state (the living stays' pre-check needs no more)."""
    segment = bisect.bisect_right(dyn.join_at, instant - dyn.start) - 1
    if u.joiner_kind < dyn.birth_cut[segment]:
        change, sex = "birth", "male" if u.cell < dyn.male_cut else "female"
        cell, birth = dyn.newborn_cell[sex], instant // 86400 + _EPOCH_DAY
        state = _pick(dyn.birth_states[segment], u.state)
    else:
        change = "arrival"
        state = _pick(dyn.arrival_states[segment], u.state)
        cell = _pick(dyn.living_cum[state], u.cell)  # the living of its state's ages
        sex, birth = (
            plan.cells[cell][1],
            plan.birth_low[cell] + (u.birth * plan.birth_span[cell] >> 32),
        )
    return change, sex, cell, birth, state


def _start(plan: Plan, dyn: _Dynamics, count: int, index: int) -> _Start:
    """Version 1 of patient #index: an epoch patient as sample() has it; a joiner (index >=
    count) drawn from its own hash: a birth (age 0 on its join day) or an arrival (a living
    registry cell), living in the ZIP its draws give, at the hospital its age there allows."""
    s = _sample(plan, index)
    if index < count:
        return _Start(s, "epoch", dyn.start, None)
    u = _Draws._make(s.draws)
    instant = _join_instant(plan, dyn, count, index)
    change, sex, cell, birth, state = _joiner_cell(plan, dyn, u, instant)
    z = plan.zip_index[state][_pick(plan.zip_cum[state], u.zip)]
    gender = _gender(plan, u.gender, sex)
    org = _hospital_at(plan, z, _age(birth, instant), u.organization)
    deleted = None
    if u.entered_in_error < dyn.error_cut:
        deleted = instant + 86400 + (u.death_age * (_ERROR_DAYS - 1) * 86400 >> 32)
    race = _pick(plan.race_cum[state][cell], u.race)
    s = s._replace(
        state=state,
        zip=z,
        cell=cell,
        sex=sex,
        birth=birth,
        gender=gender,
        language=_language_at(plan, state, cell, race, s.draws),
        organization=org,
        died=-1,
        race=race,
    )
    return _Start(s, change, instant, deleted)


def _apply(
    plan: Plan, dyn: _Dynamics, s: _Sample, event: tuple[int, ...]
) -> tuple[_Sample, str] | None:
    """A candidate (_Candidate's fields) applied to the patient as it is: (the new sample, the
    change) if thinning accepts it and it changes something, else None."""
    instant, _, kind_word, accept, _, _ = event
    k = bisect.bisect_right(dyn.kind_cut, kind_word)
    kind, cuts = _EVENT_KINDS[k], dyn.cuts[k]
    if accept >= kind.accept(cuts, s, instant):
        return None
    return kind.change(plan, dyn, cuts, s, _Candidate._make(event))


def _evolve(
    plan: Plan, dyn: _Dynamics, index: int, start: _Start, events: list[tuple[int, ...]], until: int
) -> list[Version]:
    """Patient #index's versions up to `until`: its start, then each accepted candidate event
    (thinning by age and sex at the instant). Nothing happens to the dead, or within the second
    of the previous change. A record entered in error gets no event, only its deletion: it was
    a duplicate, and the person's changes go to their real record."""
    s, last = start.sample, start.instant
    if last > until:
        return []
    versions = [Version(index, 1, last, start.change, s)]
    for event in events if s.died < 0 and start.deleted is None else ():
        instant = event[0]  # _Candidate.instant
        if instant > until:
            break
        changed = _apply(plan, dyn, s, event) if instant > last else None
        if changed:
            s, change = changed
            last = instant
            versions.append(Version(index, len(versions) + 1, instant, change, s))
            if change == "death":
                break
    if start.deleted is not None and start.deleted <= until:
        versions.append(Version(index, len(versions) + 1, start.deleted, "delete", s))
    return versions


def history(plan: Plan, count: int, index: int, until: datetime | str) -> list[Version]:
    """Every version of patient #index up to `until` (>= the epoch, plan.as_of), oldest first;
    empty for a joiner that has not joined yet. `count` is the epoch population."""
    until = _parse_as_of(until)
    _check_window(plan, None, until)
    dyn, until_s = _dynamics(plan), _seconds(until)
    if index >= count and (count <= 0 or index >= count + _joiners_by(plan, dyn, count, until_s)):
        return []  # a joiner yet to come (none without an epoch population)
    start = _start(plan, dyn, count, index)
    events = _candidates(dyn, index // _BLOCK, start.instant, until_s).get(index % _BLOCK, [])
    return _evolve(plan, dyn, index, start, events, until_s)


def _window_events(dyn: _Dynamics, start: _Start, events: list[tuple[int, ...]]) -> bool:
    """Whether any candidate could be accepted (a necessary condition, checked before the
    patient's history is replayed): each by its kind's accept cut for the patient's start (sex
    and birth never change), in state -1: the highest of the states' death rates, as the
    patient may move."""
    s, kind_cut, kinds, cuts = start.sample._replace(state=-1), dyn.kind_cut, _EVENT_KINDS, dyn.cuts
    for instant, _, kind_word, accept, _, _ in events:  # _Candidate's fields
        k = bisect.bisect_right(kind_cut, kind_word)
        if accept < kinds[k].accept(cuts[k], s, instant):
            return True
    return False


def snapshot(
    plan: Plan, count: int, until: datetime | str, lo: int = 0, hi: int | None = None
) -> Iterator[Version]:
    """The population at `until` (>= the epoch, plan.as_of): the latest version of every patient
    with an index in [lo, hi) that exists then and is not deleted, in index order. With until at
    the epoch it is exactly the epoch's patients #0..#count-1, version 1."""
    until = _parse_as_of(until)
    _check_window(plan, None, until)
    dyn, until_s = _dynamics(plan), _seconds(until)
    n = count + _joiners_by(plan, dyn, count, until_s)
    hi = n if hi is None else min(hi, n)
    for block in range(lo // _BLOCK, -(-hi // _BLOCK)):
        events = _candidates(dyn, block, dyn.start, until_s)
        for i in range(max(lo, block * _BLOCK), min(hi, block * _BLOCK + _BLOCK)):
            start = _start(plan, dyn, count, i)
            mine = events.get(i % _BLOCK)
            if mine is None and start.deleted is None:  # most patients: nothing happened
                yield Version(i, 1, start.instant, start.change, start.sample)
                continue
            versions = _evolve(plan, dyn, i, start, mine or [], until_s)
            if versions and versions[-1].change != "delete":
                yield versions[-1]


def _check_window(plan: Plan, since: datetime | None, until: datetime) -> None:
    """ValueError unless epoch (plan.as_of) <= since <= until: the population begins at E."""
    if since is not None and since < plan.as_of:
        raise ValueError("--since must not be before --epoch (the population begins there)")
    if until < (plan.as_of if since is None else since):
        raise ValueError(f"--as-of must not be before --{'epoch' if since is None else 'since'}")


def _check_faults(faults: Faults) -> None:
    """ValueError unless every fault rate is in [0, 1]."""
    for name, rate in faults._asdict().items():
        _check_range(name.replace("_", "-"), rate, 0, 1, False)


@_draw_table(b"delivery")
class _DeliveryDraws(NamedTuple):
    """Delivery faults of version v: _stream(plan, _DeliveryDraws, v.index, v.number)."""

    late: int  # the version arrives late
    delay: int  # by 1..LATE_DAYS whole days
    duplicate: int  # it is delivered twice
    again: int  # the second time 0..DUPLICATE_DAYS days after the first


@_draw_table(b"order")
class _OrderDraws(NamedTuple):
    """Line n of a batch (version v): _stream(plan, _OrderDraws, v.index, v.number, n)."""

    moved: int  # the line is out of order
    place: int  # where it goes in the batch


def _deliveries(plan: Plan, faults: Faults, v: Version) -> tuple[int, ...]:
    """When version v is delivered: at its instant, or (late) 1..LATE_DAYS days later, and
    (duplicate) once more 0..DUPLICATE_DAYS days after that; drawn from (seed, index, version)."""
    if not (faults.late or faults.duplicate):
        return (v.instant,)
    u: _DeliveryDraws = _stream(plan, _DeliveryDraws, v.index, v.number)
    d = v.instant
    if u.late < _cut(faults.late):
        d += 86400 * (1 + (u.delay * _LATE_DAYS >> 32))
    if u.duplicate < _cut(faults.duplicate):
        return (d, d + (u.again * (_DUPLICATE_DAYS * 86400 + 1) >> 32))
    return (d,)


def _out_of_order(plan: Plan, rate: float, versions: list[Version]) -> list[Version]:
    """A share `rate` of the lines moved to a random place in the batch (drawn per version)."""
    cut, keys = _cut(rate), []
    for n, v in enumerate(versions):
        u: _OrderDraws = _stream(plan, _OrderDraws, v.index, v.number, n)
        keys.append((u.place * len(versions) >> 32, 0, n) if u.moved < cut else (n, 1, n))
    return [versions[k[2]] for k in sorted(keys)]


def changes(  # noqa: PLR0913 (the window and lo.. are keyword-only)
    plan: Plan,
    count: int,
    since: datetime | str,
    until: datetime | str,
    *,
    lo: int = 0,
    hi: int | None = None,
    latest: bool = False,
    faults: Faults = _NO_FAULTS,
) -> list[Version]:
    """The change batch (since, until] for indexes in [lo, hi): every version delivered in it
    (with no faults: whose instant is in it), in index then version order, or with latest=True
    only each patient's last one. Deletions are versions whose change is "delete"."""
    since, until = _parse_as_of(since), _parse_as_of(until)
    _check_window(plan, since, until)
    _check_faults(faults)
    dyn, since_s, until_s = _dynamics(plan), _seconds(since), _seconds(until)
    scan = since_s - (_MAX_DELAY if faults.late or faults.duplicate else 0)
    n = count + _joiners_by(plan, dyn, count, until_s)
    hi = n if hi is None else min(hi, n)
    joiners = _joiners_between(plan, dyn, count, scan - _ERROR_DAYS * 86400, until_s)
    out: list[Version] = []
    for block in range(lo // _BLOCK, -(-hi // _BLOCK)):
        a, b = max(lo, block * _BLOCK), min(hi, block * _BLOCK + _BLOCK)
        window = _candidates(dyn, block, max(scan, dyn.start), until_s)
        starts = {}
        for offset, events in sorted(window.items()):
            i = block * _BLOCK + offset
            if a <= i < b:
                start = _start(plan, dyn, count, i)
                if _window_events(dyn, start, events):
                    starts[i] = start
        for i in range(max(a, joiners.start), min(b, joiners.stop)):
            starts.setdefault(i, _start(plan, dyn, count, i))
        history = _candidates(dyn, block, dyn.start, until_s) if starts else {}
        for i in sorted(starts):
            start = starts[i]
            events = history.get(i % _BLOCK, [])  # _evolve skips those before the start
            mine = [
                v
                for v in _evolve(plan, dyn, i, start, events, until_s)
                if v.change != "epoch" and v.instant > scan
                for d in _deliveries(plan, faults, v)
                if since_s < d <= until_s
            ]
            out.extend(mine[-1:] if latest else mine)
    if faults.out_of_order:
        out = _out_of_order(plan, faults.out_of_order, out)
    return out


class _WindowFields(NamedTuple):
    epoch_count: int  # N: the population at the epoch
    until: datetime  # T: the snapshot at T, or the end of the batch (since, until]
    since: datetime | None = None  # S: the change batch (S, T] instead of the snapshot
    latest: bool = False  # a batch holds each patient's last version only
    faults: Faults = _NO_FAULTS


class Window(_WindowFields):
    """A snapshot or a change batch of the living population whose epoch is the plan's as-of:
    what generate_patients(epoch=...) yields, the CLI prints and a Bronze(window=...) run
    writes (its count then covers the indexes that exist at `until`: population_size).

    until and since are given as datetimes or ISO-8601 text and kept as aware UTC datetimes
    (parse_as_of, once, here): nothing downstream parses them again."""

    __slots__ = ()

    def __new__(
        cls,
        epoch_count: int,
        until: datetime | str,
        since: datetime | str | None = None,
        latest: bool = False,
        faults: Faults = _NO_FAULTS,
    ) -> Window:
        since = None if since is None else _parse_as_of(since)
        return super().__new__(cls, epoch_count, _parse_as_of(until), since, latest, faults)


def _window_versions(
    plan: Plan, w: Window, lo: int = 0, hi: int | None = None
) -> Iterable[Version]:
    """The window's versions for indexes in [lo, hi): snapshot() at its until, or changes()
    since its since."""
    if w.since is None:
        return snapshot(plan, w.epoch_count, w.until, lo, hi)
    return changes(
        plan, w.epoch_count, w.since, w.until, lo=lo, hi=hi, latest=w.latest, faults=w.faults
    )


# ---------------------------------------------------------------------------------------------
# Inpatient stays (--encounters): each patient's hospital stays in the look-back window, as an
# Encounter and its principal diagnosis as a Condition, at real hospitals and calibrated to the
# CMS tables of reference_data/ (docs/encounters.md). A patient's stays are a pure function of
# (seed, index, options) and its sample: the Patient's own bytes never depend on them
# ---------------------------------------------------------------------------------------------

_STAY_SYSTEM = "urn:metriccare:stay"  # Encounter.identifier: <MRN>-<stay number k>
_ICD10CM_SYSTEM = "http://hl7.org/fhir/sid/icd-10-cm"
_ACT_CODE_SYSTEM = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
_DISPOSITION_SYSTEM = "http://terminology.hl7.org/CodeSystem/discharge-disposition"
_US_CORE_ENCOUNTER = "http://hl7.org/fhir/us/core/StructureDefinition/us-core-encounter"
_US_CORE_CONDITION = (
    "http://hl7.org/fhir/us/core/StructureDefinition/us-core-condition-encounter-diagnosis"
)
_MAX_STAYS = 128  # stay numbers k per patient: 0..30 the admissions process; k + READMISSION
_READMISSION = 31  # the readmission after stay k (up to 3 in a row: 31..123); 127 the death's
_DEATH_STAY = _MAX_STAYS - 1
_READMISSION_LIMIT = 3 * _READMISSION  # a stay numbered from here on is not readmitted again
_MEDICARE_AGE = 65  # the HRRP cohorts and MORT-30 are measured on patients 65 and older
_COHORTS = ("AMI", "HF", "PN", "COPD", "CABG", "HIP-KNEE")  # HRRP FY2025, hrrp_fy2025.csv
# An assumption (no national figure at hand): half of the 30-day deaths after an admission of a
# MORT_30_COHORTS cohort happen during that stay, half after discharge.
_IN_STAY_OF_30_DAY_DEATHS = 0.5
# The cohorts with a CMS 30-day mortality measure (MORT-30, cms_national.csv: mort30_<cohort>)
_MORT_30_COHORTS = ("AMI", "HF", "PN", "COPD", "CABG")
_OWN_HOSPITAL_SHARE = 0.70  # an assumption: a stay is at the managing organization this often
# Readmissions (issue 19): assumptions where no national figure is at hand
_READMIT_SAME_HOSPITAL = 0.80  # a readmission returns to the index stay's hospital this often
_READMIT_SAME_COHORT = 0.35  # after a cohort stay, its principal diagnosis is the cohort's again
_READMIT_SKEW = 1.5  # the gap is 30 days x u**1.5: front-loaded, 38 % within the first week
# Discharged alive: post-acute care (HCUP Statistical Brief #205, all payers 2013): 41.7 % of
# Medicare stays and 11.7 % of privately insured ones went to post-acute care (65+ and under 65
# here), of which 50 % to home health, 40 % to skilled nursing, the rest to other facilities.
_POST_ACUTE_SHARE = (0.117, 0.417)  # under MEDICARE_AGE, at or over it
_DISPOSITIONS = (  # (code, display, text, share of post-acute discharges); "home" takes the rest
    ("home", "Home", "Home", 0.0),
    ("home", "Home", "Home with home health care", 0.50),
    ("snf", "Skilled nursing facility", "Skilled nursing facility", 0.40),
    ("other-hcf", "Other healthcare facility", "Other post-acute facility", 0.10),
)
_EXPIRED = ("exp", "Expired", "Expired")


@_draw_table(b"stay-k")
class _StayDraws(NamedTuple):
    """The draws of stay k of patient #i: _stream(plan, StayDraws, i, k); k = DEATH_STAY for
    the stay tied to the death. Append new fields; never move one."""

    admitted: int  # the admission instant in the window (the death's stay: its gap to death)
    own: int  # at the managing organization, or another of the ZIP's candidates
    hospital: int  # which other candidate
    cohort: int  # an HRRP cohort (65+, by the hospital's HRRP volumes) or the national mix
    diagnosis: int  # the row of the national mix
    los: int  # length of stay: a lognormal quantile
    disposition: int  # discharged to home, home health, skilled nursing, another facility
    readmitted: int  # (issue 19) an unplanned readmission within 30 days follows this stay
    # a readmission's own draws (k + READMISSION): admitted is its gap after the discharge,
    # own whether it returns to the same hospital, cohort whether it keeps the index cohort


@_draw_table(b"stays")
class _PatientStayDraws(NamedTuple):
    """The draws of patient #i's stays as a whole: _stream(plan, PatientStayDraws, i)."""

    count: int  # candidate admissions in the window (Poisson)
    death: int  # the death: in hospital, after a cohort stay, or away from hospital


class _Stay(NamedTuple):
    """One inpatient stay of patient #index: positions into the plan's and the stay tables."""

    index: int
    k: int  # the stay number: ids and the identifier come from (index, k)
    admitted: int  # epoch seconds
    discharged: int  # epoch seconds; the death instant for a stay that ends in death
    hospital: int  # position in plan.hospitals
    diagnosis: int  # position in StayTables.diagnoses
    disposition: int  # position in DISPOSITIONS, or -1: expired
    # (issue 19) its infections as (kind, onset instant), drawn by _infected; None: not drawn
    # (a stay made outside stays(): _hai_onsets draws them on its bounds, without their effects)
    hais: tuple[tuple[int, int], ...] | None = None


class _Diagnosis(NamedTuple):
    """A principal diagnosis: ICD-10-CM code and text, its MS-DRG and the lognormal of its LOS."""

    code: str
    display: str
    drg: str
    cohort: str  # an HRRP cohort, or ""
    mu: float  # ln(GMLOS in days)
    sigma: float  # sqrt(2 ln(AMLOS / GMLOS)): the lognormal's mean is then AMLOS


class _StayTables(NamedTuple):
    """What a plan's stays draw from, built once per plan (only when --encounters is on)."""

    count_cdf: tuple[tuple[int, ...], ...]  # by cell: the Poisson CDF of candidate admissions
    diagnoses: tuple[_Diagnosis, ...]
    mix_cum: tuple[tuple[int, ...], ...]  # by (age band, sex): weights of the mix's rows
    mix_rows: tuple[tuple[int, ...], ...]  # their positions in diagnoses (65+: no cohort rows)
    cohort_dx: tuple[int, ...]  # by cohort (COHORTS order): its row in diagnoses
    cohort_cuts: Mapping[int, tuple[int, ...]]  # hospital position -> 65+ cumulative 32-bit cuts
    factors: tuple[float, ...]  # per hospital: see _hospital_factors
    readmit: Mapping[int, tuple[float, ...]]  # hospital -> 30-day readmission rate per cohort
    # (65+ cohort stays, COHORTS order), then the hospital-wide rate (every other stay)
    month_chance: tuple[float, ...]  # per registry cell: P(an admission within 30 days)
    death_cuts: tuple[tuple[int, ...], tuple[int, ...]]  # under 65, 65+: see _death_stay
    post_acute: tuple[int, int]  # under 65, 65+: a 32-bit cut
    post_acute_cum: tuple[int, ...]  # over DISPOSITIONS[1:]
    own_cut: int
    encounter_keys: tuple[int, tuple[int, int, int]]  # the id bijections' add and multipliers
    condition_keys: tuple[int, tuple[int, int, int]]


# inpatient_dx.csv's age bands (stays per 100,000 persons a year): first age, column
_AGE_BANDS = (0, 1, 18, 45, _MEDICARE_AGE, 75)
_RATE_COLUMNS = ("rate_0", "rate_1_17", "rate_18_44", "rate_45_64", "rate_65_74", "rate_75_plus")


def _stay_reference(data_dir: Path) -> dict[str, Any]:
    """The CMS tables of reference_data/ the stays read (SOURCES §C): admission rates by age
    and sex, the diagnosis mix, hospital volumes, HRRP cohort volumes, national figures."""
    rates = [
        (int(r["age_lo"]), int(r["age_hi"]), r["sex"], float(r["admissions_per_1000"]) / 1000)
        for r in _csv_rows(data_dir, "inpatient_rates.csv")
    ]
    national = {r["name"]: float(r["value"]) for r in _csv_rows(data_dir, "cms_national.csv")}
    hrrp: dict[str, dict[str, int]] = {}
    readmissions: dict[str, dict[str, tuple[float | None, float | None, float | None]]] = {}
    for r in _csv_rows(data_dir, "hrrp_fy2025.csv"):
        hrrp.setdefault(r["ccn"], {})[r["cohort"]] = int(r["discharges"] or 0)
        readmissions.setdefault(r["ccn"], {})[r["cohort"]] = tuple(  # type: ignore[assignment]
            float(r[k]) if r[k] else None for k in ("observed_rate", "predicted_rate", "err")
        )
    return {
        "readmissions": readmissions,
        "rates": rates,
        "dx": _csv_rows(data_dir, "inpatient_dx.csv"),
        "volumes": {r["ccn"]: r for r in _csv_rows(data_dir, "hospital_volumes.csv")},
        "hrrp": hrrp,
        "national": national,
    }


def _admission_rate(rates: list[tuple[int, int, str, float]], age: int, sex: str) -> float:
    """Admissions per person-year at an age (inpatient_rates.csv: M/F by age band)."""
    code = "M" if sex == "male" else "F"
    for lo, hi, s, rate in rates:
        if s == code and lo <= age <= hi:
            return rate
    raise ValueError(f"inpatient_rates.csv has no {code} row for age {age}")


def _discharges(
    hospitals: tuple[Mapping[str, str], ...], volumes: Mapping[str, Any]
) -> list[float]:
    """Discharges a year per hospital (HCRIS 2021); where HCRIS has none, beds x the median
    discharges per bed of its type, else the median of its type (SOURCES §C1's fallback)."""
    per_bed: dict[str, list[float]] = {}
    each: dict[str, list[float]] = {}
    for h in hospitals:
        v = volumes.get(h["ccn"], {})
        if v.get("discharges"):
            each.setdefault(h["hospital_type"], []).append(float(v["discharges"]))
            if v.get("beds") and int(v["beds"]):
                per_bed.setdefault(h["hospital_type"], []).append(
                    float(v["discharges"]) / int(v["beds"])
                )
    out = []
    for h in hospitals:
        v, kind = volumes.get(h["ccn"], {}), h["hospital_type"]
        if v.get("discharges"):
            out.append(float(v["discharges"]))
        elif v.get("beds") and kind in per_bed:
            out.append(int(v["beds"]) * _median(per_bed[kind]))
        else:
            out.append(_median(each.get(kind, [0.0])))
    return out


def _median(values: list[float]) -> float:
    v = sorted(values)
    n = len(v)
    return (v[(n - 1) // 2] + v[n // 2]) / 2 if n else 0.0


def _hospital_factors(
    ref: _Reference, states: tuple[str, ...], discharges: list[float]
) -> tuple[float, ...]:
    """Per hospital: its HCRIS discharges / the population the gravity weights send it (over
    the ZIPs of the run's states, in their order), so a stay drawn among a ZIP's candidates
    with weights gravity x factor lands at each hospital in proportion to its discharges
    (within what its ZIPs allow)."""
    cand, cum = ref.hospital_cand, ref.hospital_cum
    pull = [0.0] * len(ref.hospitals)
    for positions, zcum in (ref.state_zips[state] for state in states):
        for z, c, before in zip(positions, zcum, (0, *zcum), strict=False):
            lo = z * _CANDIDATES
            share = (c - before) / cum[lo + _CANDIDATES - 1]
            previous = 0
            for k in range(lo, lo + _CANDIDATES):
                pull[cand[k]] += (cum[k] - previous) * share
                previous = cum[k]
    return tuple(d / p if p else 0.0 for d, p in zip(discharges, pull, strict=True))


def _readmission_rates(
    hospitals: Sequence[Mapping[str, str]], ref: Mapping[str, Any]
) -> dict[int, tuple[float, ...]]:
    """Hospital position -> its 30-day readmission rate per HRRP cohort (the observed rate of
    HRRP FY2025, readmissions / discharges; where suppressed its predicted rate; else the
    national pooled rate), then its hospital-wide rate: CMS's national 14.6 % x the mean of its
    excess readmission ratios (1 where it has none)."""
    national = ref["national"]
    pooled = [national[f"hrrp_pooled_observed_{c.lower().replace('-', '_')}"] for c in _COHORTS]
    wide = national["readm30_hosp_wide"]
    out = {}
    for k, hospital in enumerate(hospitals):
        own = ref["readmissions"].get(hospital["ccn"], {})
        rates = [
            next((x for x in own.get(c, (None, None))[:2] if x is not None), pooled[n])
            for n, c in enumerate(_COHORTS)
        ]
        errs = [v[2] for v in own.values() if v[2] is not None]
        out[k] = (*rates, wide * (sum(errs) / len(errs) if errs else 1.0))
    return out


def _cohort_cuts(
    hospitals: Sequence[Mapping[str, str]],
    ref: Mapping[str, Any],
    discharges: list[float],
    shares: Mapping[str, float],
) -> dict[int, tuple[int, ...]]:
    """Hospital position -> cumulative 32-bit cuts over COHORTS for a 65+ stay there: the
    cohort's national 65+ share (inpatient_dx.csv) x the hospital's HRRP discharges per HCRIS
    discharge relative to all HRRP hospitals'. Hospitals outside HRRP (critical access,
    Maryland) take the national shares; children's hospitals none."""
    hrrp = ref["hrrp"]
    positions = {h["ccn"]: k for k, h in enumerate(hospitals)}
    in_hrrp = [positions[c] for c in hrrp if c in positions]
    total = sum(discharges[k] for k in in_hrrp)
    pooled = {c: sum(hrrp[hospitals[k]["ccn"]].get(c, 0) for k in in_hrrp) for c in _COHORTS}
    out = {}
    for k, h in enumerate(hospitals):
        if h["hospital_type"] == _CHILDREN_HOSPITAL_TYPE:
            share = [0.0] * len(_COHORTS)
        elif h["ccn"] in hrrp and discharges[k] > 0:
            own = hrrp[h["ccn"]]
            share = [
                shares[c] * (own.get(c, 0) / discharges[k]) / (pooled[c] / total) for c in _COHORTS
            ]
        else:
            share = [shares[c] for c in _COHORTS]
        scale = min(1.0, 0.95 / sum(share)) if sum(share) else 1.0  # room for the other rows
        out[k] = tuple(_cut(x) for x in itertools.accumulate(s * scale for s in share))
    return out


def _diagnoses(rows: list[dict[str, str]]) -> tuple[_Diagnosis, ...]:
    """inpatient_dx.csv's rows as Diagnosis (the lognormal of LOS from GMLOS and AMLOS)."""
    out = []
    for r in rows:
        gmlos, amlos = float(r["gmlos"]), float(r["amlos"])
        sigma = math.sqrt(2.0 * math.log(amlos / gmlos)) if amlos > gmlos else 0.0
        out.append(
            _Diagnosis(r["icd10"], r["display"], r["drg"], r["cohort"], math.log(gmlos), sigma)
        )
    return tuple(out)


def _mixes(rows: list[dict[str, str]]) -> tuple[list[tuple[int, ...]], list[tuple[int, ...]]]:
    """By (age band, sex): the rows with a rate there (female-only rows for women only; 65+
    without the cohort rows, whose volumes come per hospital) and their integer weights."""
    positions, cums = [], []
    for band, column in enumerate(_RATE_COLUMNS):
        for sex in _SEXES:
            chosen = [
                (k, round(float(r[column]) * 1000))
                for k, r in enumerate(rows)
                if r[column]
                and (r["sex"] != "F" or sex == "female")
                and not (_AGE_BANDS[band] >= _MEDICARE_AGE and r["cohort"])
            ]
            positions.append(tuple(k for k, _ in chosen))
            cums.append(_cumulative(w for _, w in chosen))
    return positions, cums


def _cohort_shares(
    ref: Mapping[str, Any], age_sex: tuple[tuple[int, int, int], ...]
) -> dict[str, float]:
    """Each HRRP cohort's share of all stays of patients 65+: AMI and heart failure together
    from their published rates (inpatient_dx.csv) over all 65+ stays (the Census population x
    inpatient_rates.csv), shared among the six cohorts by their HRRP volumes (COPD, CABG and
    hip/knee have no published age rate)."""
    anchor = ("AMI", "HF")
    stays = together = 0.0
    for age, male, female in age_sex[_MEDICARE_AGE:]:
        column = _RATE_COLUMNS[bisect.bisect_right(_AGE_BANDS, age) - 1]
        for sex, people in zip(_SEXES, (male, female), strict=True):
            stays += people * _admission_rate(ref["rates"], age, sex)
        together += (male + female) * sum(
            float(r[column] or 0) / 1e5 for r in ref["dx"] if r["cohort"] in anchor
        )
    pooled = {c: sum(h.get(c, 0) for h in ref["hrrp"].values()) for c in _COHORTS}
    scale = together / stays / sum(pooled[c] for c in anchor)
    return {c: pooled[c] * scale for c in _COHORTS}


# The share of all stays that the admissions process makes, by age band (first age, share):
# inpatient_rates.csv counts every stay, and readmissions and the stays tied to a death come on
# top of the process, so its rate is the table's x 1 / (1 + rho) - D / B, with rho the
# readmissions per other stay and D / B the death-tied stays per admission of the band as the
# generator made them at the table's rate (seed 7, 1,000,000 patients, main 9a8ddeb: rho 0.166,
# 0.156, 0.155, 0.153, 0.143, 0.118; D / B 0.004, 0.007, 0.020, 0.052, 0.071, 0.144; shares
# 0.853, 0.859, 0.846, 0.816, 0.804, 0.751), then from 18 on x the table's rate / the rate those
# made (seed 7, 300,000 patients; a cell's rate is taken at its middle age, a stay counts at its
# own): under 18 the table's newborn rate reaches the 1-year-olds too, so it stays as measured
_ADMISSION_PROCESS_SHARE = ((0, 0.853), (18, 0.863), (45, 0.850), (65, 0.837), (75, 0.859),
                            (85, 0.795))  # fmt: skip


def _cell_rates(plan: Plan, rates: list[tuple[int, int, str, float]]) -> list[float]:
    """Admissions per person-year per registry cell, at the age the cell's people had in the
    middle of their time in the window (the living L/2 years younger, the dead L/4): the
    table's rate x ADMISSION_PROCESS_SHARE of that age, so that all stays match the table."""
    lookback = plan.options["lookback_years"]
    out = []
    for age, sex, dead in plan.cells:
        at = max(0, round(age - lookback / (4 if dead else 2)))
        share = next(x for first, x in reversed(_ADMISSION_PROCESS_SHARE) if at >= first)
        out.append(_admission_rate(rates, at, sex) * share)
    return out


def _death_kind_cuts(
    plan: Plan, rates: list[float], shares: Mapping[str, float], national: Mapping[str, float]
) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Cumulative 32-bit cuts over a death's kinds, under 65 and 65+: in hospital after an
    admission of a MORT_30_COHORTS cohort (one kind each), in hospital after another admission,
    after discharge within 30 days of such a cohort admission (one kind each); above the last
    cut, away from hospital.

    The cohort kinds make 30-day mortality after those admissions of patients 65+ equal CMS's
    MORT-30: with O_c the expected ordinary admissions of cohort c, C_c those that fall within
    30 days before a death by chance, and m_c the rate, the deaths tied to a cohort-c stay are
    F_c = (m_c O_c - C_c) / (1 - m_c), split IN_STAY_OF_30_DAY_DEATHS in the stay."""
    lookback, month = plan.options["lookback_years"], 30 * 86400 / _SECONDS_PER_YEAR
    weights = [  # the run's cell weights: the states' tables summed
        sum(column)
        for column in zip(
            *(map(operator.sub, cum, (0, *cum)) for cum in plan.cell_cum), strict=True
        )
    ]
    old = [k for k, (age, _, _) in enumerate(plan.cells) if age >= _MEDICARE_AGE]
    deaths = sum(weights[k] for k in old if plan.cells[k][2])
    stays = sum(weights[k] * rates[k] * lookback / (2 if plan.cells[k][2] else 1) for k in old)
    chance = sum(weights[k] * rates[k] * month for k in old if plan.cells[k][2])
    in_hospital = national["inhospital_death_share"]
    tied = []
    for c in _MORT_30_COHORTS:
        m = national[f"mort30_{c.lower()}"]
        tied.append(max(0.0, (m * stays - chance) * shares[c] / (1 - m)) / deaths if deaths else 0)
    in_stay = [_IN_STAY_OF_30_DAY_DEATHS * f for f in tied]
    other = max(0.0, in_hospital - sum(in_stay))
    after = [(1 - _IN_STAY_OF_30_DAY_DEATHS) * f for f in tied]
    young = (*[0.0] * len(tied), in_hospital, *[0.0] * len(tied))
    old_kinds = (*in_stay, other, *after)
    return (
        tuple(_cut(min(1.0, x)) for x in itertools.accumulate(young)),
        tuple(_cut(min(1.0, x)) for x in itertools.accumulate(old_kinds)),
    )


class _StayBase(NamedTuple):
    """The stays' tables that depend on the reference data only, not on a run's options (every
    plan's hospitals are the reference's): built from the CSVs, or loaded from STAY_CACHE."""

    rates: list[tuple[int, int, str, float]]  # inpatient_rates.csv (see _stay_reference)
    national: dict[str, float]  # cms_national.csv
    dx: list[dict[str, str]]  # inpatient_dx.csv's rows
    shares: dict[str, float]  # _cohort_shares
    discharges: list[float]  # per hospital position: _discharges
    cohort_cuts: dict[int, tuple[int, ...]]  # every hospital position: _cohort_cuts
    readmit: dict[int, tuple[float, ...]]  # every hospital position: _readmission_rates
    factors: dict[tuple[str, ...], tuple[float, ...]]  # the default states -> _hospital_factors
    hai_codes: tuple[tuple[str, str], ...]  # per HAI kind (hai_baselines.csv): ICD-10-CM, text
    hai_rows: tuple[tuple[float, ...], ...]  # the distinct rows of _hai_incidence
    hai_row: tuple[int, ...]  # per hospital position: its row in hai_rows


def _hai_incidence(
    data_dir: Path, hospitals: Sequence[Mapping[str, str]]
) -> tuple[tuple[tuple[float, ...], ...], tuple[int, ...]]:
    """Per hospital, per HAI kind: the national incidence per 1,000 patient days at an SIR of 1
    (hai_baselines.csv) x the hospital's SIR (hac_sir_fy2024.csv; blank or absent: 1), as the
    distinct rows (equal to the bit: over half the hospitals have no SIR) and each one's row."""
    kinds = _csv_rows(data_dir, "hai_baselines.csv")
    sirs = {r["ccn"]: r for r in _csv_rows(data_dir, "hac_sir_fy2024.csv")}
    rows: dict[bytes, tuple[int, tuple[float, ...]]] = {}  # marshal bytes -> (position, row)
    row_of = []
    for h in hospitals:
        row = tuple(
            float(kind["per_1000_patient_days_sir1"])
            * float(sirs.get(h["ccn"], {}).get(kind["sir_column"]) or 1.0)
            for kind in kinds
        )
        row_of.append(rows.setdefault(marshal.dumps(row), (len(rows), row))[0])
    return tuple(row for _, row in rows.values()), tuple(row_of)


def _parse_stay_base(data_dir: Path) -> _StayBase:
    """The StayBase of data_dir from its CSVs (~0.4 s: the hospital factors of the default
    states are a loop over every ZIP's candidates)."""
    ref, reference = _stay_reference(data_dir), _read_reference(data_dir)
    hospitals = reference.hospitals
    shares = _cohort_shares(ref, reference.age_sex)
    discharges = _discharges(hospitals, ref["volumes"])
    states = _normalise_states(None, reference)
    hai_rows, hai_row = _hai_incidence(data_dir, hospitals)
    return _StayBase(
        rates=ref["rates"],
        national=ref["national"],
        dx=ref["dx"],
        shares=shares,
        discharges=discharges,
        cohort_cuts=_cohort_cuts(hospitals, ref, discharges, shares),
        readmit=_readmission_rates(hospitals, ref),
        factors={states: _hospital_factors(reference, states, discharges)},
        hai_codes=tuple(
            (r["icd10"], r["display"]) for r in _csv_rows(data_dir, "hai_baselines.csv")
        ),
        hai_rows=hai_rows,
        hai_row=hai_row,
    )


# The StayBase as marshal data (a run with stays loads it in milliseconds instead of ~0.4 s),
# written by tools/build_reference.py beside reference.marshal and used only while its key, the
# StayBase's field names and the hash of every CSV beside it, holds; tests/test_startup.py
# rebuilds it from the CSVs and compares
_STAY_CACHE = "stays.marshal"


def _stay_cache_key(data_dir: Path) -> bytes:
    """StayBase's field names and data_dir's reference key (every CSV's name, size, CRC-32)."""
    names = ",".join(_StayBase._fields).encode()
    return hashlib.blake2b(names + _reference_key(data_dir), digest_size=32).digest()


def _stay_marshal(base: _StayBase, data_dir: Path) -> bytes:
    """base as marshal data under data_dir's key, each distinct tuple and float written once
    (marshal refers back to an object it has written: half the bytes and the load time)."""
    seen: dict[bytes, Any] = {}

    def shared(value: Any) -> Any:  # value with equal tuples and floats made one object
        if isinstance(value, dict):
            return {k: shared(v) for k, v in value.items()}
        if isinstance(value, list):
            return [shared(v) for v in value]
        if isinstance(value, tuple):
            value = tuple(shared(v) for v in value)
        elif not isinstance(value, float):
            return value
        return seen.setdefault(marshal.dumps(value), value)  # the exact bytes: -0.0 is not 0.0

    fields = {name: shared(value) for name, value in base._asdict().items()}
    return marshal.dumps({"key": _stay_cache_key(data_dir), "fields": fields})


def _cached_stay_base(data_dir: Path) -> _StayBase | None:
    """The StayBase from data_dir's marshal file, or None if it is missing, unreadable or stale."""
    return _cached(data_dir / _STAY_CACHE, _stay_cache_key(data_dir), lambda f: _StayBase(**f))


@functools.cache
def _stay_base(data_dir: Path) -> _StayBase:
    """data_dir's StayBase (a resolved path), read once per process."""
    return _cached_stay_base(data_dir) or _parse_stay_base(data_dir)


def _count_cdfs(rates: list[float], lookback: float) -> tuple[tuple[int, ...], ...]:
    """By cell: the Poisson CDF of its candidate admissions over the window (the rate x the
    look-back years, in 40-digit decimals), computed once per distinct rate (the cells of an
    age band share one)."""
    years = Decimal(repr(lookback))
    by_rate: dict[float, tuple[int, ...]] = {}
    with localcontext() as ctx:
        ctx.prec = 40
        for rate in rates:
            if rate not in by_rate:
                by_rate[rate] = _poisson_cdf(Decimal(repr(rate)) * years)
    return tuple(by_rate[rate] for rate in rates)


@functools.lru_cache(maxsize=8)
def _stay_tables(plan: Plan) -> _StayTables:
    """The plan's stay tables, once per plan and process: from the data's StayBase (its
    hospital factors computed here for states other than the default ones) and the plan's
    registry cells."""
    data_dir = Path(plan.identity[3] or _DATA_DIR).resolve()
    base = _stay_base(data_dir)
    factors = base.factors.get(plan.state_codes)
    if factors is None:
        factors = _hospital_factors(_read_reference(data_dir), plan.state_codes, base.discharges)
    diagnoses = _diagnoses(base.dx)
    mix_rows, mix_cum = _mixes(base.dx)
    rates = _cell_rates(plan, base.rates)
    key = plan.key
    return _StayTables(
        count_cdf=_count_cdfs(rates, plan.options["lookback_years"]),
        diagnoses=diagnoses,
        mix_cum=tuple(mix_cum),
        mix_rows=tuple(mix_rows),
        cohort_dx=tuple(
            next(k for k, d in enumerate(diagnoses) if d.cohort == c) for c in _COHORTS
        ),
        cohort_cuts={k: base.cohort_cuts[k] for k in plan.organization_index},
        factors=factors,
        readmit={k: base.readmit[k] for k in plan.organization_index},
        month_chance=tuple(1.0 - math.exp(-r * 30 * 86400 / _SECONDS_PER_YEAR) for r in rates),
        death_cuts=_death_kind_cuts(plan, rates, base.shares, base.national),
        post_acute=tuple(_cut(p) for p in _POST_ACUTE_SHARE),
        post_acute_cum=_cumulative(round(share * 1000) for *_, share in _DISPOSITIONS[1:]),
        own_cut=_cut(_OWN_HOSPITAL_SHARE),
        encounter_keys=_uuid_keys(key, b"encounter"),
        condition_keys=_uuid_keys(key, b"condition"),
    )


def _uuid_keys(key: bytes, tag: bytes) -> tuple[int, tuple[int, int, int]]:
    """A resource type's own keyed UUID bijection (as the patients' in _bijection_keys)."""
    return (
        _hash_int(key, tag + b"-uuid-add", 16) & _M122,
        tuple(_hash_int(key, tag + b"-uuid-mul-%d" % n, 16) & _M122 | 1 for n in (1, 2, 3)),
    )


def _stay_hospital(plan: Plan, t: _StayTables, s: _Sample, age: int, u: _StayDraws) -> int:
    """The stay's hospital: the managing organization OWN_HOSPITAL_SHARE of the time, else
    another of the ZIP's candidates, by gravity weight x t.factors (the children's hospital
    under CHILD_AGE)."""
    if u.own < t.own_cut:
        return s.organization
    return _other_candidate(plan, t, s, age, u.hospital, s.organization) or s.organization


def _other_candidate(
    plan: Plan, t: _StayTables, s: _Sample, age: int, u32: int, exclude: int
) -> int | None:
    """One of the ZIP's candidates but `exclude`, by gravity weight x t.factors; None if none."""
    lo = s.zip * _CANDIDATES
    slots = range(lo, lo + (_CANDIDATES if age < _CHILD_AGE else _CANDIDATES - 1))
    cand, cum, factors = plan.hospital_cand, plan.hospital_cum, t.factors
    weights = [  # integers: the same draw on every machine
        0
        if cand[k] == exclude
        else round((cum[k] - (cum[k - 1] if k > lo else 0)) * factors[cand[k]])
        for k in slots
    ]
    return _weighted_slot(cand, slots, weights, u32)


def _stay_diagnosis(t: _StayTables, s: _Sample, hospital: int, age: int, u: _StayDraws) -> int:
    """The principal diagnosis: for 65+ an HRRP cohort at the hospital's cuts, else a row of
    the national mix of the age band and sex."""
    if age >= _MEDICARE_AGE:
        cuts = t.cohort_cuts.get(hospital, ())
        if cuts and u.cohort < cuts[-1]:
            return t.cohort_dx[bisect.bisect_right(cuts, u.cohort)]
    mix = 2 * (bisect.bisect_right(_AGE_BANDS, age) - 1) + (s.sex == "female")
    return t.mix_rows[mix][_pick(t.mix_cum[mix], u.diagnosis)]


_NORMAL_STEPS = 4096  # the standard normal's quantiles at j / 4096, interpolated between
# (a stay's LOS quantile: the table costs ~1.5 ms once, inv_cdf several microseconds per stay)


@functools.cache
def _normal_z() -> tuple[float, ...]:
    """The quantile table, built on the first stay (a run without stays never pays for it)."""
    import statistics  # stays only

    quantile = statistics.NormalDist().inv_cdf
    return tuple(quantile(j / _NORMAL_STEPS) for j in range(1, _NORMAL_STEPS))


_MAX_LOS = 365 * 86400  # a stay lasts at most a year
_MIN_LOS = 3600  # and at least an hour


def _los(d: _Diagnosis, u: _StayDraws) -> int:
    """Seconds in hospital: lognormal with the DRG's geometric mean (median) and arithmetic
    mean (Table 5 GMLOS and AMLOS); the normal quantile interpolated in _normal_z() (the
    outermost 1/4096 on either side are held at its ends: +-3.4 standard deviations)."""
    x = min(max(u.los * _NORMAL_STEPS / 4294967296.0, 1.0), _NORMAL_STEPS - 1.0) - 1.0
    j = min(int(x), _NORMAL_STEPS - 3)
    table = _normal_z()
    z = table[j] + (x - j) * (table[j + 1] - table[j])
    days = math.exp(d.mu + d.sigma * z)
    return max(_MIN_LOS, min(_MAX_LOS, round(days * 86400)))


@functools.cache
def _normal_z_array() -> Any:
    """_normal_z() as a numpy array (the block paths' copy)."""
    return np.array(_normal_z())


def _los_z_block(u: Any) -> Any:
    """_los's normal quantile z for each LOS draw of `u` (a numpy column), with the same float
    operations in the same order (the bulk path's LOS and the living stays' LOS bounds)."""
    table = _normal_z_array()
    x = np.minimum(np.maximum(u * _NORMAL_STEPS / 4294967296.0, 1.0), _NORMAL_STEPS - 1.0) - 1.0
    j = np.minimum(x.astype(np.int64), _NORMAL_STEPS - 3)
    return table[j] + (x - j) * (table[j + 1] - table[j])


def _disposition(t: _StayTables, age: int, u: _StayDraws) -> int:
    """Where a patient discharged alive goes (DISPOSITIONS), by the post-acute share of the age."""
    cut = t.post_acute[age >= _MEDICARE_AGE]
    if u.disposition >= cut:
        return 0
    return 1 + _pick(t.post_acute_cum, (u.disposition << 32) // cut)  # uniform again below cut


_COUNT_AT = 4 * _PatientStayDraws._fields.index("count")  # its bytes in the table's hash
_STAY_DRAWS = len(_StayDraws._fields)


def _stay_draws(plan: Plan, index: int, k: int) -> _StayDraws:
    """_stream(plan, StayDraws, index, k), with the message formatted at once (a stay's hot
    path; a test keeps the two equal)."""
    hasher = plan.hasher.copy()
    hasher.update(b"stay-k|%d|%d" % (index, k))
    return _StayDraws._make(_raw_draws(hasher.digest())[:_STAY_DRAWS])


def _stay_count_draw(plan: Plan, index: int) -> int:
    """_stream(plan, PatientStayDraws, index).count without building the table (the hot path:
    every patient asks; a test keeps the two equal)."""
    hasher = plan.hasher.copy()
    hasher.update(b"stays|%d" % index)
    return int.from_bytes(hasher.digest()[_COUNT_AT : _COUNT_AT + 4], "little")


def _death_stay(
    plan: Plan, t: _StayTables, index: int, death: int, s: _Sample, lo: int
) -> tuple[_Stay, bool] | None:
    """The stay tied to the patient's death (k = DEATH_STAY), if any: the death's kind from
    t.death_cuts by the age at death. In hospital: the stay ends at the death (expired);
    after a MORT_30_COHORTS stay: admitted within 30 days before the death and
    discharged alive before it, and then perhaps readmitted (the flag) before the death. None
    if the stay would begin before the window (or birth). `death` is PatientStayDraws.death."""
    age = plan.cells[s.cell][0]
    cuts = t.death_cuts[age >= _MEDICARE_AGE]
    kind = bisect.bisect_right(cuts, death)
    if kind >= len(cuts):
        return None  # died away from hospital
    u = _stay_draws(plan, index, _DEATH_STAY)
    n = len(_MORT_30_COHORTS)
    hospital = _stay_hospital(plan, t, s, age, u)
    if kind == n:  # in hospital, another diagnosis: the mix (65+: without the cohorts)
        diagnosis = _stay_diagnosis(t, s, -1, age, u)
    else:
        diagnosis = t.cohort_dx[_COHORTS.index(_MORT_30_COHORTS[kind % (n + 1)])]
    los = _los(t.diagnoses[diagnosis], u)
    if kind <= n:  # dies in the stay
        admitted = s.died - los
        stay = _Stay(index, _DEATH_STAY, admitted, s.died, hospital, diagnosis, -1)
    else:  # discharged alive, dies within 30 days of the admission
        los = min(los, 29 * 86400)
        admitted = s.died - los - 1 - ((30 * 86400 - los - 1) * u.admitted >> 32)
        disposition = _disposition(t, age, u)
        stay = _Stay(index, _DEATH_STAY, admitted, admitted + los, hospital, diagnosis, disposition)
    if stay.admitted < lo:
        return None
    stay = _infected(plan, stay, lo)  # lengthened backwards: it keeps its end
    return stay, stay.disposition >= 0 and _readmitted(t, s, stay, age, u)


def stays(
    plan: Plan, index: int, s: _Sample | None = None, u: _PatientStayDraws | None = None
) -> list[_Stay]:
    """Patient #index's inpatient stays in the look-back window, in time order: candidate
    admissions at the rate of its age and sex (Poisson over the window, kept while the patient
    lives there), plus the stay its death is tied to; no two overlap, none outlives the patient
    or the window. `s` is the patient's sample and `u` its PatientStayDraws (computed if not
    given: the bulk path draws both for a block at once)."""
    t = _stay_tables(plan)
    if s is None:
        s = _sample(plan, index)
    first = t.count_cdf[s.cell][0]
    if s.died < 0 and (u.count if u else _stay_count_draw(plan, index)) < first:
        return []  # most patients: no candidate admission, no death
    u = u or _stream(plan, _PatientStayDraws, index)
    n = bisect.bisect_right(t.count_cdf[s.cell], u.count)
    lo = max(plan.window_start, (s.birth - _EPOCH_DAY) * 86400)
    hi = plan.window_start + plan.window_span - 1 if s.died < 0 else s.died  # as-of or death
    kept, readmitted = [], []
    if s.died >= 0 and (last := _death_stay(plan, t, index, u.death, s, lo)) is not None:
        kept.append(last[0])
        if last[1]:
            readmitted.append(last[0])
    for k in range(min(n, _READMISSION)):
        found = _candidate_stay(plan, t, index, k, s, lo)
        if found is not None:  # lengthened by its infections, if any (issue 19)
            found = _infected(plan, found[0], lo), found[1]
        if found is None or found[0].discharged >= hi:
            continue  # before the window or birth; past the death or as-of
        if _fits(found[0], kept):  # unless it overlaps a stay of a lower number
            kept.append(found[0])
            if found[1]:
                readmitted.append(found[0])
    _add_readmissions(plan, t, s, kept, readmitted, hi)
    return sorted(kept, key=lambda stay: stay.admitted)


def _add_readmissions(
    plan: Plan, t: _StayTables, s: _Sample, kept: list[_Stay], readmitted: list[_Stay], hi: int
) -> None:
    """Add the readmissions of the `readmitted` stays to `kept`, in time order; a readmission
    may be readmitted in turn (up to READMISSION_LIMIT). One that would end after the death
    ends at it (the patient dies in it), also when its infections lengthen it past the death
    (_infected); one after the death or the as-of is not made."""
    while readmitted:
        first = min(readmitted, key=lambda stay: stay.admitted)
        readmitted.remove(first)
        again, more = _readmission(plan, t, s, first)
        if s.died >= 0 and again.admitted < s.died <= again.discharged:
            again, more = again._replace(discharged=s.died, disposition=-1), False
        again = _infected(plan, again, first.discharged + 3600)
        if s.died >= 0 and again.admitted < s.died < again.discharged:  # lengthened past it
            again, more = again._replace(discharged=s.died, disposition=-1), False
        if again.discharged <= hi and again.admitted < hi and _fits(again, kept):
            kept.append(again)
            if more and again.k < _READMISSION_LIMIT:
                readmitted.append(again)


def _fits(stay: _Stay, kept: list[_Stay]) -> bool:
    """Whether the stay overlaps none of `kept` (a patient is in one hospital at a time)."""
    return not any(a <= stay.discharged and stay.admitted <= b for _, _, a, b, *_ in kept)


def _candidate_stay(
    plan: Plan, t: _StayTables, index: int, k: int, s: _Sample, lo: int
) -> tuple[_Stay, bool] | None:
    """Candidate admission k of patient #index: uniform in the window (None before `lo`, the
    window's start or the birth), its hospital, diagnosis, length and disposition; and whether
    a readmission follows it (_readmitted)."""
    u = _stay_draws(plan, index, k)
    admitted = plan.window_start + (u.admitted * plan.window_span >> 32)
    if admitted < lo:
        return None
    return _admitted_stay(plan, t, s, _Stay(index, k, admitted, admitted, -1, -1, -1), u)


def _admitted_stay(
    plan: Plan, t: _StayTables, s: _Sample, stay: _Stay, u: _StayDraws
) -> tuple[_Stay, bool]:
    """A stay of which only the patient, number and admission instant are set, completed: its
    hospital, diagnosis, length and disposition (the patient as `s` has it); and whether a
    readmission follows it (_readmitted). The living population's admissions use it too."""
    admitted = stay.admitted
    age = _age(s.birth, admitted)
    hospital = _stay_hospital(plan, t, s, age, u)
    diagnosis = _stay_diagnosis(t, s, hospital, age, u)
    discharged = admitted + _los(t.diagnoses[diagnosis], u)
    disposition = _disposition(t, age, u)
    stay = _Stay(stay.index, stay.k, admitted, discharged, hospital, diagnosis, disposition)
    return stay, _readmitted(t, s, stay, age, u)


def _readmitted(t: _StayTables, s: _Sample, stay: _Stay, age: int, u: _StayDraws) -> bool:
    """Whether an unplanned readmission within 30 days follows the stay: at the hospital's HRRP
    rate for a cohort stay of a patient 65+, else its hospital-wide rate, less the chance that
    the admissions process readmits the patient anyway (its rate over 30 days)."""
    rates = t.readmit.get(stay.hospital)
    if rates is None:
        return False
    cohort = t.diagnoses[stay.diagnosis].cohort
    rate = rates[_COHORTS.index(cohort)] if cohort and age >= _MEDICARE_AGE else rates[-1]
    chance = t.month_chance[s.cell]
    return u.readmitted < _cut(max(0.0, (rate - chance) / (1.0 - chance)))


def _readmission_number(k: int) -> int:
    """The stay number of the readmission after stay k: k + READMISSION, DEATH_STAY - 1 after
    the death's stay, k + 1 after a living population's stay (k >= MAX_STAYS: its chain)."""
    if k >= _MAX_STAYS:
        return k + 1
    return k + _READMISSION if k < _DEATH_STAY else _DEATH_STAY - 1


def _readmission(
    plan: Plan, t: _StayTables, s: _Sample, first: _Stay, u: _StayDraws | None = None
) -> tuple[_Stay, bool]:
    """The readmission after stay `first` (k + READMISSION): admitted 1 hour to 30 days after its
    discharge (front-loaded), mostly at the same hospital, its principal diagnosis the index
    cohort's again (READMIT_SAME_COHORT) or one of the mix; and whether it is readmitted too
    (an index stay like any other: HRRP counts readmissions as index stays). `u`: its draws
    (default _stay_draws of its number; the living population's come partly from a tile)."""
    k = _readmission_number(first.k)
    u = u or _stay_draws(plan, first.index, k)
    gap = round(30 * 86400 * (u.admitted / 4294967296.0) ** _READMIT_SKEW)
    admitted = first.discharged + max(3600, gap)
    age = _age(s.birth, admitted)
    hospital = first.hospital
    if u.own >= _cut(_READMIT_SAME_HOSPITAL):
        hospital = _other_candidate(plan, t, s, age, u.hospital, first.hospital) or hospital
    diagnosis = first.diagnosis
    if not t.diagnoses[diagnosis].cohort or u.cohort >= _cut(_READMIT_SAME_COHORT):
        diagnosis = _stay_diagnosis(t, s, -1, age, u)  # the mix (65+: not a cohort)
    discharged = admitted + _los(t.diagnoses[diagnosis], u)
    again = _Stay(
        first.index, k, admitted, discharged, hospital, diagnosis, _disposition(t, age, u)
    )
    return again, _readmitted(t, s, again, age, u)


# -- the resources: Encounter and Condition of a stay, in the run's FHIR version and profile

# --profile -> the US Core profiles its stays claim (None: the plain FHIR resources). US Core
# Encounter also requires a type: SNOMED CT 32485007 |Hospital admission (procedure)|.
_STAY_PROFILES: Mapping[str, tuple[str, str] | None] = {
    "cms": None,
    "us-core": (_US_CORE_ENCOUNTER, _US_CORE_CONDITION),
}
_HOSPITAL_ADMISSION = {"system": "http://snomed.info/sct", "code": "32485007"}
_INPATIENT_CLASS = {"system": _ACT_CODE_SYSTEM, "code": "IMP"}  # inpatient encounter
_ENCOUNTER_DIAGNOSIS = {
    "system": "http://terminology.hl7.org/CodeSystem/condition-category",
    "code": "encounter-diagnosis",
    "display": "Encounter Diagnosis",
}
_DISCHARGE_DIAGNOSIS = {
    "system": "http://terminology.hl7.org/CodeSystem/diagnosis-role",
    "code": "DD",
}
_CLINICAL_SYSTEM = "http://terminology.hl7.org/CodeSystem/condition-clinical"
_CONFIRMED = {
    "coding": [
        {
            "system": "http://terminology.hl7.org/CodeSystem/condition-ver-status",
            "code": "confirmed",
        }
    ]
}


# Serials of the living population's stays (k >= MAX_STAYS) start here, above every index x
# MAX_STAYS + k of the look-back window's stays: the two never meet in an id bijection
_LIVE_SERIAL = 1 << 100


def _stay_serial(index: int, k: int) -> int:
    """What a stay's id bijections map: index x MAX_STAYS + k, or for a living population's
    stay (k < 2**40 from _live_stay_number) LIVE_SERIAL + index x 2**40 + k: unique per stay."""
    if k < _MAX_STAYS:
        return index * _MAX_STAYS + k
    return _LIVE_SERIAL + (index << 40) + k


def _stay_uuid(index: int, k: int, keys: tuple[int, tuple[int, int, int]]) -> str:
    add, mul = keys
    return _uuid_bytes(_stay_serial(index, k), add, mul).decode()


def _encounter_id(plan: Plan, index: int, k: int) -> str:
    """Stay k of patient #index's Encounter id: a keyed bijection of index x MAX_STAYS + k, so
    ids never collide (the Condition has its own: condition_id)."""
    return _stay_uuid(index, k, _stay_tables(plan).encounter_keys)


def _condition_id(plan: Plan, index: int, k: int) -> str:
    """The id of stay k's principal-diagnosis Condition (its own keyed bijection)."""
    return _stay_uuid(index, k, _stay_tables(plan).condition_keys)


def _instant(plan: Plan, seconds: int) -> str:
    """A FHIR instant in whole seconds, its date from the plan's table (stays are in it)."""
    k = seconds // 86400 + _EPOCH_DAY - plan.dates_base
    if not 0 <= k < len(plan.dates):
        return _iso_instant(datetime.fromtimestamp(seconds, UTC))
    s = seconds % 86400
    return "%sT%02d:%02d:%02dZ" % (plan.dates[k], s // 3600, s // 60 % 60, s % 60)  # noqa: UP031


def _stay_meta(plan: Plan, profile: str | None) -> dict[str, Any]:
    meta: dict[str, Any] = {"lastUpdated": plan.last_updated}
    if profile:
        meta["profile"] = [profile]
    return meta


class _StayRefs(NamedTuple):
    """The ids a stay's two resources carry (computed once per stay on the bulk path)."""

    patient: str  # patient_id
    mrn: str  # patient_mrn
    encounter: str
    condition: str


def _stay_refs(
    plan: Plan, stay: _Stay, patient: str | None = None, mrn: str | None = None
) -> _StayRefs:
    """A stay's ids; the patient's id and MRN may be given (the same for all its stays)."""
    t = _stay_tables(plan)
    return _StayRefs(
        patient or patient_id(plan, stay.index),
        mrn or _patient_mrn(plan, stay.index),
        _stay_uuid(stay.index, stay.k, t.encounter_keys),
        _stay_uuid(stay.index, stay.k, t.condition_keys),
    )


def _disposition_json(disposition: int) -> dict[str, Any]:
    code, _, text = (_DISPOSITIONS[disposition] if disposition >= 0 else _EXPIRED)[:3]
    return {
        "dischargeDisposition": {
            "coding": [{"system": _DISPOSITION_SYSTEM, "code": code}],
            "text": text,  # tells home health from home (one code)
        }
    }


class _EncounterFields(NamedTuple):
    """The parts of an Encounter that vary between stays, JSON-ready (whole values)."""

    id: str
    identifier: str  # <MRN>-<k + 1>
    subject: str  # Patient/<id>
    start: str
    end: str
    condition: str  # Condition/<id>
    disposition: dict[str, Any]
    provider: str  # Organization/<id>


class _ConditionFields(NamedTuple):
    """The parts of a Condition that vary between stays, JSON-ready (whole values)."""

    id: str
    status: str  # clinicalStatus: active (the stay ended in death) or resolved
    code: dict[str, Any]  # the ICD-10-CM coding
    subject: str
    encounter: str  # Encounter/<id>
    onset: str


def _stay_fields(
    plan: Plan, stay: _Stay, refs: _StayRefs
) -> tuple[_EncounterFields, _ConditionFields]:
    d = _stay_tables(plan).diagnoses[stay.diagnosis]
    start, subject = _instant(plan, stay.admitted), "Patient/" + refs.patient
    encounter = _EncounterFields(
        id=refs.encounter,
        identifier=f"{refs.mrn}-{stay.k + 1:02d}",
        subject=subject,
        start=start,
        end=_instant(plan, stay.discharged),
        condition="Condition/" + refs.condition,
        disposition=_disposition_json(stay.disposition),
        provider="Organization/" + plan.hospitals[stay.hospital]["id"],
    )
    condition = _ConditionFields(
        id=refs.condition,
        status="active" if stay.disposition < 0 else "resolved",
        code={"system": _ICD10CM_SYSTEM, "code": d.code, "display": d.display},
        subject=subject,
        encounter="Encounter/" + refs.encounter,
        onset=start,
    )
    return encounter, condition


def _encounter(plan: Plan, f: _EncounterFields) -> dict[str, Any]:
    """The Encounter's shape in FHIR element order (R4; R5 where declared; US Core's type and
    profile under us-core): the one place it is written down (_stay_writer splits it)."""
    profiles = _STAY_PROFILES[plan.profile.name]
    record: dict[str, Any] = {
        "resourceType": "Encounter",
        "id": f.id,
        "meta": _stay_meta(plan, profiles and profiles[0]),
        "identifier": [{"system": _STAY_SYSTEM, "value": f.identifier}],
    }
    period = {"start": f.start, "end": f.end}
    if plan.options["fhir_version"] == "R5":  # R5 renamed and reshaped these elements
        record.update(
            status="completed",
            **{"class": [{"coding": [_INPATIENT_CLASS]}]},
            subject={"reference": f.subject},
            serviceProvider={"reference": f.provider},
            actualPeriod=period,
            diagnosis=[
                {
                    "condition": [{"reference": {"reference": f.condition}}],
                    "use": [{"coding": [_DISCHARGE_DIAGNOSIS]}],
                }
            ],
            admission=f.disposition,
        )
        return record
    record.update(status="finished", **{"class": _INPATIENT_CLASS})
    if profiles:
        record["type"] = [{"coding": [_HOSPITAL_ADMISSION]}]
    record.update(
        subject={"reference": f.subject},
        period=period,
        diagnosis=[{"condition": {"reference": f.condition}, "rank": 1}],
        hospitalization=f.disposition,
        serviceProvider={"reference": f.provider},
    )
    return record


def _condition(plan: Plan, f: _ConditionFields) -> dict[str, Any]:
    """The Condition's shape in FHIR element order (US Core's profile under us-core)."""
    profiles = _STAY_PROFILES[plan.profile.name]
    return {
        "resourceType": "Condition",
        "id": f.id,
        "meta": _stay_meta(plan, profiles and profiles[1]),
        "clinicalStatus": {"coding": [{"system": _CLINICAL_SYSTEM, "code": f.status}]},
        "verificationStatus": _CONFIRMED,
        "category": [{"coding": [_ENCOUNTER_DIAGNOSIS]}],
        "code": {"coding": [f.code]},
        "subject": {"reference": f.subject},
        "encounter": {"reference": f.encounter},
        "onsetDateTime": f.onset,
    }


def _encounter_record(plan: Plan, stay: _Stay, refs: _StayRefs | None = None) -> dict[str, Any]:
    """A stay's Encounter (R4, or R5 where the run declares it; US Core Encounter under
    --profile us-core): status finished, class IMP, the period, the principal diagnosis, the
    discharge disposition, the hospital."""
    return _encounter(plan, _stay_fields(plan, stay, refs or _stay_refs(plan, stay))[0])


def _condition_record(plan: Plan, stay: _Stay, refs: _StayRefs | None = None) -> dict[str, Any]:
    """A stay's principal diagnosis as a Condition (ICD-10-CM, encounter-diagnosis; US Core
    Condition Encounter Diagnosis under --profile us-core): active if the stay ended in death,
    else resolved; its onset is the admission."""
    return _condition(plan, _stay_fields(plan, stay, refs or _stay_refs(plan, stay))[1])


_MARK_SPLIT_STAYS = re.compile(rb'"\\u0000(\w+)"')  # a marker as orjson writes it


def _split_template(
    record: dict[str, Any], names: tuple[str, ...]
) -> tuple[bytes, list[tuple[int, bytes]]]:
    """A record built with a marker in every field: its head and, in record order, (the
    field's position in `names`, the bytes after it); AssertionError unless every field is
    placed exactly once."""
    head, *rest = _MARK_SPLIT_STAYS.split(orjson.dumps(record))
    found = [name.decode() for name in rest[::2]]
    if sorted(found) != sorted(names) or any(b"\\u0000" in part for part in (head, *rest)):
        raise AssertionError(f"the stay template has fields {found}, not {names}")
    return head, [(names.index(n), after) for n, after in zip(found, rest[1::2], strict=True)]


def _splicer(
    record: Callable[[Plan, Any], dict[str, Any]], fields: Any, plan: Plan
) -> Callable[[tuple[bytes, ...]], bytes]:
    """values (JSON bytes in `fields` order) -> the record's bytes, from its marker template."""
    head, parts = _split_template(
        record(plan, fields._make("\x00" + n for n in fields._fields)), fields._fields
    )
    join = b"".join

    def splice(values: tuple[bytes, ...]) -> bytes:
        out = [head]
        for k, after in parts:
            out.append(values[k])
            out.append(after)
        return join(out)

    return splice


class _StayParts(NamedTuple):
    """A stay's pre-serialised JSON values that come from tables, not ids or instants."""

    dispositions: Mapping[int, bytes]  # by Stay.disposition (-1: expired)
    codes: list[bytes]  # by Stay.diagnosis: the ICD-10-CM coding
    providers: Mapping[int, bytes]  # by hospital position: "Organization/<id>"
    status: tuple[bytes, bytes]  # by disposition >= 0: clinicalStatus


@functools.lru_cache(maxsize=8)
def _stay_parts(plan: Plan) -> _StayParts:
    """The plan's StayParts, serialised once (_stay_writer and the stays' bulk path share them)."""
    dumps = orjson.dumps
    return _StayParts(
        dispositions={k: dumps(_disposition_json(k)) for k in range(-1, len(_DISPOSITIONS))},
        codes=[
            dumps({"system": _ICD10CM_SYSTEM, "code": d.code, "display": d.display})
            for d in _stay_tables(plan).diagnoses
        ],
        providers={
            k: b'"Organization/%s"' % plan.hospitals[k]["id"].encode()
            for k in plan.organization_index
        },
        status=(b'"active"', b'"resolved"'),
    )


@functools.lru_cache(maxsize=8)
def _stay_writer(plan: Plan) -> Callable[[_Stay, _StayRefs], tuple[bytes, bytes]]:
    """(stay, refs) -> the Encounter's and Condition's bytes, equal to orjson.dumps of
    encounter_record / condition_record, spliced from pre-serialised parts (the bulk path);
    checked against the dict path when built."""
    dumps = orjson.dumps
    encounter, condition = (
        _splicer(_encounter, _EncounterFields, plan),
        _splicer(_condition, _ConditionFields, plan),
    )
    dispositions, codes, providers, status = _stay_parts(plan)

    def write(stay: _Stay, refs: _StayRefs) -> tuple[bytes, bytes]:
        # ids, MRNs, org ids and instants are [-.:0-9A-Za-z] text: no escaping, fixed quotes
        eid, cid = refs.encounter.encode(), refs.condition.encode()
        subject = b'"Patient/%s"' % refs.patient.encode()
        start = b'"%s"' % _instant(plan, stay.admitted).encode()
        return encounter(
            (
                b'"%s"' % eid,
                b'"%s-%02d"' % (refs.mrn.encode(), stay.k + 1),
                subject,
                start,
                b'"%s"' % _instant(plan, stay.discharged).encode(),
                b'"Condition/%s"' % cid,
                dispositions[stay.disposition],
                providers[stay.hospital],
            )
        ), condition(
            (
                b'"%s"' % cid,
                status[stay.disposition >= 0],
                codes[stay.diagnosis],
                subject,
                b'"Encounter/%s"' % eid,
                start,
            )
        )

    for index in range(64):  # as json_renderer: a field the template misses fails here
        for stay in stays(plan, index):
            refs = _stay_refs(plan, stay)
            if write(stay, refs) != (
                dumps(_encounter_record(plan, stay, refs)),
                dumps(_condition_record(plan, stay, refs)),
            ):
                raise AssertionError(f"_stay_writer's bytes differ from the dict path (#{index})")
    return write


def stay_json(plan: Plan, stay: _Stay, refs: _StayRefs | None = None) -> tuple[bytes, bytes]:
    """A stay's Encounter and Condition as compact JSON bytes (what every writer writes),
    equal to orjson.dumps of encounter_record and condition_record."""
    return _stay_writer(plan)(stay, refs or _stay_refs(plan, stay))


# Hospital-acquired infections (issue 19): NHSN events during a stay as more Conditions of its
# Encounter, at each hospital's CMS incidence (docs/encounters.md). An infection lengthens its
# stay by the kind's attributable days, and stays that end in death have them more often, by the
# kind's odds ratio of death (the Patient's death is fixed); a stay without one keeps its bytes

_HAI_ONSET_DAY = 3  # NHSN's hospital-onset rule: day 1 is the admission day
_HAI_KEYS = 8  # HAI Condition ids: a keyed bijection of (index x MAX_STAYS + k) x 8 + kind
# CMS's incidences count infections per patient day over every day of a stay, while an onset
# can only fall on day 3 or later: the chance per day at risk is scaled by patient days / days
# at risk of the generator's own stays (1.43 at 80+, 1.47 at all ages, docs/encounters.md), so
# the incidence per patient day is the hospital's
_HAI_AT_RISK_SCALE = 1.45
# Per kind, in hai_baselines.csv's row order (CLABSI, CAUTI, SSI colon, SSI hysterectomy, CDI,
# MRSA bacteremia), from the literature (reference_data/SOURCES.md §C8): the mean extra days in
# hospital of a stay with the infection, and the odds ratio of dying in hospital with it against
# without it. MRSA bacteremia takes the bloodstream infections' figures (CLABSI's meta-analysis)
_HAI_EXTRA_DAYS = (16.14, 21.0, 6.5, 6.5, 2.3, 16.14)
_HAI_DEATH_ODDS = (3.19, 1.99, 2.33, 2.33, 1.70, 3.19)
# The share of all days at risk that fall in stays ending in death (2.8 %: seed 7, 60,000
# patients of all ages; 3.3 % since ADMISSION_PROCESS_SHARE, a 0.4-1.0 % change in incidence
# left as is): the chance of the other stays is scaled by 1 / (1 - e + e x odds ratio) so that
# raising it in the stays that end in death keeps each hospital's incidence
_HAI_EXPIRED_RISK_SHARE = 0.028


@_draw_table(b"hai-k")
class _HaiDraws(NamedTuple):
    """The HAI draws of stay k of patient #i: _stream(plan, HaiDraws, i, k); per kind (in
    hai_baselines.csv order) whether it happens, then when. Append new fields; never move one."""

    clabsi: int
    cauti: int
    ssi_colon: int
    ssi_hyst: int
    cdi: int
    mrsa: int
    clabsi_onset: int
    cauti_onset: int
    ssi_colon_onset: int
    ssi_hyst_onset: int
    cdi_onset: int
    mrsa_onset: int


class _HaiTables(NamedTuple):
    """What a plan's HAIs draw from (built once per plan, only when --encounters is on)."""

    codes: tuple[dict[str, str], ...]  # per kind: the ICD-10-CM coding
    rates: Mapping[int, tuple[float, ...]]  # hospital position -> per kind: per day at risk
    # of a stay discharged alive
    keys: tuple[int, tuple[int, int, int]]  # the HAI Conditions' id bijection
    death_odds: tuple[float, ...]  # per kind: HAI_DEATH_ODDS
    extra: tuple[int, ...]  # per kind: HAI_EXTRA_DAYS in seconds


@functools.lru_cache(maxsize=8)
def _hai_tables(plan: Plan) -> _HaiTables:
    """Per hospital and kind: incidence per patient day = hai_baselines.csv's national incidence
    at an SIR of 1 x the hospital's SIR in hac_sir_fy2024.csv (blank or absent: 1.0); per day
    at risk of a stay discharged alive: x AT_RISK_SCALE / (1 - e + e x the death odds ratio)."""
    base = _stay_base(Path(plan.identity[3] or _DATA_DIR).resolve())
    e = _HAI_EXPIRED_RISK_SHARE
    alive = [_HAI_AT_RISK_SCALE / (1 - e + e * odds) / 1000 for odds in _HAI_DEATH_ODDS]
    scaled = [tuple(x * a for x, a in zip(row, alive, strict=True)) for row in base.hai_rows]
    rates = dict(enumerate(map(scaled.__getitem__, base.hai_row)))
    return _HaiTables(
        codes=tuple(
            {"system": _ICD10CM_SYSTEM, "code": code, "display": display}
            for code, display in base.hai_codes
        ),
        rates=rates,
        keys=_uuid_keys(plan.key, b"hai-condition"),
        death_odds=_HAI_DEATH_ODDS,
        extra=tuple(round(days * 86400) for days in _HAI_EXTRA_DAYS),
    )


def _hai_draw(plan: Plan, stay: _Stay) -> tuple[tuple[int, int], ...]:
    """The infections of a stay as built (before _infected lengthens it), as (kind, onset):
    kind j happens with chance p = the hospital's rate per day at risk x the days at risk
    (from the start of day 3 to the discharge), its onset uniform over them; at most one of
    each kind. In a stay that ends in death the odds p / (1 - p) are the death odds ratio
    times as high: by Bayes, odds(death | HAI) / odds(death | none) = odds(HAI | death) /
    odds(HAI | alive), so the stays with the infection die in hospital with that odds ratio
    against those without, while who dies (the Patient) never changes."""
    at_risk_from = (stay.admitted // 86400 + _HAI_ONSET_DAY - 1) * 86400
    risk = stay.discharged - at_risk_from
    if risk <= 0:
        return ()
    t = _hai_tables(plan)
    u: _HaiDraws = _stream(plan, _HaiDraws, stay.index, stay.k)
    # by name, in hai_baselines.csv's row order (the rates' order): whether, then when
    happens = (u.clabsi, u.cauti, u.ssi_colon, u.ssi_hyst, u.cdi, u.mrsa)
    onsets = (u.clabsi_onset, u.cauti_onset, u.ssi_colon_onset, u.ssi_hyst_onset)
    onsets += (u.cdi_onset, u.mrsa_onset)
    found = []
    for j, rate in enumerate(t.rates[stay.hospital]):
        p = rate * risk / 86400
        if stay.disposition < 0:
            p = t.death_odds[j] * p / (1.0 + (t.death_odds[j] - 1.0) * p)
        if happens[j] < p * 4294967296.0:
            found.append((j, at_risk_from + onsets[j] * risk // 4294967296))
    return tuple(found)


def _infected(plan: Plan, stay: _Stay, lo: int) -> _Stay:
    """The stay with its infections (_hai_draw), lengthened by their attributable days (the
    sum over its kinds): discharged later, or, for a stay that ends in death or is tied to it
    (k = DEATH_STAY), admitted earlier but not before `lo`, so it keeps its end. The onsets
    stay where they were drawn: on day 3 or later and before the discharge still."""
    hais = _hai_draw(plan, stay)
    if not hais:
        return stay._replace(hais=())
    extra = sum(_hai_tables(plan).extra[j] for j, _ in hais)
    if stay.disposition < 0 or stay.k == _DEATH_STAY:
        return stay._replace(admitted=min(stay.admitted, max(lo, stay.admitted - extra)), hais=hais)
    return stay._replace(discharged=stay.discharged + extra, hais=hais)


def _hai_onsets(plan: Plan, stay: _Stay) -> list[tuple[int, int]]:
    """Stay's infections as (kind, onset instant): as stays() drew them (_infected), or, for a
    stay whose infections were never drawn, _hai_draw on its bounds as they are."""
    return list(_hai_draw(plan, stay) if stay.hais is None else stay.hais)


def _hai_id(plan: Plan, stay: _Stay, kind: int) -> str:
    """The id of stay's HAI Condition of `kind` (its own keyed bijection: never collides)."""
    add, mul = _hai_tables(plan).keys
    n = _stay_serial(stay.index, stay.k) * _HAI_KEYS + kind
    return _uuid_bytes(n, add, mul).decode()


def _hai_records(plan: Plan, stay: _Stay, refs: _StayRefs) -> list[dict[str, Any]]:
    """Stay's HAIs as Conditions (encounter-diagnosis of its Encounter, onset on day 3 or
    later, before the discharge; active if the stay ended in death, else resolved)."""
    codes = _hai_tables(plan).codes
    return [
        _condition(
            plan,
            _ConditionFields(
                id=_hai_id(plan, stay, kind),
                status="active" if stay.disposition < 0 else "resolved",
                code=codes[kind],
                subject="Patient/" + refs.patient,
                encounter="Encounter/" + refs.encounter,
                onset=_instant(plan, onset),
            ),
        )
        for kind, onset in _hai_onsets(plan, stay)
    ]


def _with_hais(
    plan: Plan, stay: _Stay, refs: _StayRefs, pair: tuple[bytes, bytes]
) -> tuple[bytes, bytes]:
    """(Encounter, Condition) bytes -> the same with the stay's HAI Conditions' lines joined
    after the principal Condition (the writers split them again where a file is per record)."""
    extra = _hai_records(plan, stay, refs)
    if not extra:
        return pair
    return pair[0], b"\n".join([pair[1], *map(orjson.dumps, extra)])


def _patient_stays_json(plan: Plan, index: int, s: _Sample) -> list[tuple[bytes, bytes]]:
    """Patient #index's stays as (Encounter, Condition) JSON pairs, in time order (sample s)."""
    found = stays(plan, index, s)
    if not found:
        return []
    write, pid, mrn = _stay_writer(plan), patient_id(plan, index), _patient_mrn(plan, index)
    pairs = []
    for stay in found:
        refs = _stay_refs(plan, stay, pid, mrn)
        pairs.append(_with_hais(plan, stay, refs, write(stay, refs)))
    return pairs


# ---------------------------------------------------------------------------------------------
# The living population's stays (--encounters with --epoch, issue 18): after the epoch E an
# admission is an event of the patient like a move, from candidate tiles thinned by the age and
# sex rate of inpatient_rates.csv; each stay is delivered in the change batch that holds its
# discharge (a stay tied to a death: the death's instant). Patient #i's stays are a pure function
# of (seed, i, E, options), like its versions (docs/living-population.md, "Inpatient stays")
# ---------------------------------------------------------------------------------------------

# Candidate admissions per person-year: above the highest rate of inpatient_rates.csv (0.439,
# men 95+), so thinning gives every age's rate exactly (a test checks the bound holds)
_ADMISSION_BOUND = 0.45
# Words per candidate: w0 % BLOCK its offset, w1 its instant in the year, w2 accept; then per
# stay r = 0..3 of its chain (the index stay, its readmissions) the StayDraws admitted (the
# readmission's gap; unused for r = 0), los and readmitted, so that a batch can bound when a
# chain ends from the tile alone
_ADMISSION_WORDS = 15
_CHAIN_WORDS = ("admitted", "los", "readmitted")  # the StayDraws fields a tile holds per stay
_ADMISSION_SLOTS = 256  # candidates per tile at most (the Poisson table ends below; checked)
_CHAIN_DEPTH = 4  # a living stay number holds an index admission and up to 3 readmissions
# A chain (an index stay and its readmissions) ends within this of its index admission: a stay
# that would be discharged later is not made, so a batch looks back only this far for stays.
# Of 13,521 chains of the look-back window (seed 3, 60,000 patients, infections lengthening
# their stays) 43 outlast 60 days, 2 90 days, none 120 (stays last at most a year, rarely weeks)
_CHAIN_SPAN = 120 * 86400
_LOS_SHIFT = 22  # a batch's pre-check bounds a stay's length by its LOS draw's top 10 bits


class _LiveStay(NamedTuple):
    """A stay of the living population and when it is delivered: its discharge, or for a stay
    tied to the death (and one that ends in it) the death's instant."""

    delivered: int
    stay: _Stay


class _AdmissionTables(NamedTuple):
    """What the living population's admissions draw from (built once per plan)."""

    tile_hash: Any  # SHAKE-256 that has absorbed the plan key: tiles copy it
    poisson: Mapping[int, tuple[int, ...]]  # year length in days -> inverse CDF of candidates
    accept: Mapping[str, tuple[int, ...]]  # sex -> by whole age: 32-bit cut of rate / bound
    los_bound: tuple[int, ...]  # by StayDraws.los >> LOS_SHIFT: no diagnosis keeps one longer
    # (the longest of los_range's groups: every diagnosis a stay can have is in one)
    readmit_cut: int  # StayDraws.readmitted at or above this: no hospital readmits the stay
    hai_top: tuple[float, ...]  # per HAI kind: the highest 32-bit cut per second at risk
    hai_extra: tuple[int, ...]  # per HAI kind: the seconds it lengthens a stay (_infected)
    # a window's pre-check (_window_suspects): what no patient, hospital or diagnosis exceeds
    accept_rows: Any  # (2, MAX_AGE + 1) int64: accept by sex (SEXES order) and whole age
    accept_top: int  # the highest accept cut of any sex and age
    cohort_top: int  # StayDraws.cohort at or above this: no hospital makes a 65+ stay a cohort's
    readmit_cells: Any  # (cells, 2) int64: StayDraws.readmitted at or above this, no hospital
    # readmits a stay of a patient of the registry cell: [0] of no 65+ cohort, [1] any stay
    los_range: tuple[Any, Any]  # (groups, 1024) int64 each: _los_range


def _los_range(t: _StayTables) -> tuple[Any, Any]:
    """(shortest, longest): by diagnosis group (the mix's rows of each (age band, sex), in
    mix_cum's order, then the cohorts' diagnoses) and LOS draw >> LOS_SHIFT, how long (seconds)
    any diagnosis of the group keeps a stay whose draw lies in that range, as _los computes it
    (in numpy, 2 seconds wider either way: numpy's exp may differ from math's in the last bit,
    and _los is monotone in the draw but for rounding where its normal table's steps meet)."""
    low = np.arange(1 << (32 - _LOS_SHIFT), dtype=np.float64) * (1 << _LOS_SHIFT)
    mu = np.array([d.mu for d in t.diagnoses])[:, None]
    sigma = np.array([d.sigma for d in t.diagnoses])[:, None]
    out = []
    for u in (low, low + ((1 << _LOS_SHIFT) - 1)):
        days = np.exp(mu + sigma * _los_z_block(u)[None, :])
        out.append(np.clip(np.round(days * 86400), _MIN_LOS, _MAX_LOS).astype(np.int64))
    groups = [*t.mix_rows, t.cohort_dx]
    return (
        np.array([out[0][list(rows)].min(axis=0) - 2 for rows in groups]),
        np.array([out[1][list(rows)].max(axis=0) + 2 for rows in groups]),
    )


@functools.lru_cache(maxsize=8)
def _admission_tables(plan: Plan) -> _AdmissionTables:
    """The admission tiles' Poisson tables and the thinning cuts by sex and age."""
    rates = _stay_base(Path(plan.identity[3] or _DATA_DIR).resolve()).rates
    top = max(rate for *_, rate in rates)
    if top >= _ADMISSION_BOUND:
        raise ValueError(f"an admission rate reaches {top}: raise ADMISSION_BOUND above it")
    with localcontext() as ctx:
        ctx.prec = 40
        poisson = {
            days: _poisson_cdf(
                Decimal(_BLOCK) * Decimal(str(_ADMISSION_BOUND)) * days / Decimal("365.2425")
            )
            for days in (365, 366)
        }
    if max(map(len, poisson.values())) > _ADMISSION_SLOTS:
        raise AssertionError("an admission tile may outgrow ADMISSION_SLOTS")
    t = _stay_tables(plan)
    los_range = _los_range(t)
    hai = _hai_tables(plan)
    accept = {
        sex: tuple(
            _cut(_admission_rate(rates, age, sex) * _process_share(age) / _ADMISSION_BOUND)
            for age in range(_MAX_AGE + 1)
        )
        for sex in _SEXES
    }
    readmit_top = max((max(by_cohort) for by_cohort in t.readmit.values()), default=0.0)
    wide = max((by_cohort[-1] for by_cohort in t.readmit.values()), default=0.0)
    return _AdmissionTables(
        tile_hash=hashlib.shake_256(b"metriccare-admissions/1|" + plan.key),
        poisson=poisson,
        accept=accept,
        los_bound=tuple(los_range[1].max(axis=0).tolist()),
        readmit_cut=_cut(readmit_top),
        hai_top=tuple(
            max(rates[j] for rates in hai.rates.values()) / 86400 * 4294967296.0
            for j in range(len(hai.extra))
        ),
        hai_extra=hai.extra,
        accept_rows=np.array([accept[sex] for sex in _SEXES], np.int64),
        accept_top=max(max(cuts) for cuts in accept.values()),
        cohort_top=max((cuts[-1] for cuts in t.cohort_cuts.values() if cuts), default=0),
        readmit_cells=np.array(
            [
                [_cut(max(0.0, (rate - chance) / (1.0 - chance))) for rate in (wide, readmit_top)]
                for chance in t.month_chance
            ],
            np.int64,
        ).reshape(-1, 2),
        los_range=los_range,
    )


def _process_share(age: int) -> float:
    """ADMISSION_PROCESS_SHARE at an age: the admissions process's part of the table's rate
    (readmissions make the rest), as the look-back window's _cell_rates takes it."""
    return next(x for first, x in reversed(_ADMISSION_PROCESS_SHARE) if age >= first)


def _live_stay_number(year: int, slot: int) -> int:
    """The stay number k of candidate `slot` of a tile of `year` (its readmissions k + 1, ...):
    from MAX_STAYS up, below 2**40, unique per patient (_stay_serial makes the ids)."""
    return _MAX_STAYS + (year * _ADMISSION_SLOTS + slot) * _CHAIN_DEPTH


def _admission_tile(a: _AdmissionTables, block: int, year: int) -> tuple[int, ...]:
    """The candidate admissions of indexes block*BLOCK .. +BLOCK-1 in a UTC calendar year:
    ADMISSION_WORDS 32-bit words each (w0 % BLOCK: whose; w1: the instant in the year; w2:
    accept; then its chain's CHAIN_WORDS). A function of (seed, block, year) only, as the
    events' tiles (_tile)."""
    w = _admission_words(a, block, year)
    return struct.unpack(f"<{len(w) // 4}I", w)


def _admission_words(a: _AdmissionTables, block: int, year: int) -> bytes:
    """_admission_tile's words as little-endian bytes (read as numpy columns by a window)."""
    h = a.tile_hash.copy()
    h.update(block.to_bytes(8, "little") + year.to_bytes(2, "little"))
    days = 366 if calendar.isleap(year) else 365
    k = bisect.bisect_right(a.poisson[days], int.from_bytes(h.digest(4), "little"))
    return h.digest(4 + 4 * _ADMISSION_WORDS * k)[4:]


_Admission = tuple[int, int, int, tuple[int, ...]]  # instant, stay number, accept, chain words


def _admissions(a: _AdmissionTables, block: int, lo: int, hi: int) -> dict[int, list[_Admission]]:
    """Offset in the block -> its candidate admissions (instant, stay number, accept word, the
    chain's words) with lo < instant <= hi, in time order."""
    out: dict[int, list[_Admission]] = {}
    for year, start, length in _tile_years(lo, hi):
        w = _admission_tile(a, block, year)
        for j in range(0, len(w), _ADMISSION_WORDS):
            instant = start + (w[j + 1] * length >> 32)
            if lo < instant <= hi:
                k = _live_stay_number(year, j // _ADMISSION_WORDS)
                chain = w[j + 3 : j + _ADMISSION_WORDS]
                out.setdefault(w[j] % _BLOCK, []).append((instant, k, w[j + 2], chain))
    for found in out.values():
        found.sort()
    return out


def _hai_bound(plan: Plan, a: _AdmissionTables, index: int, k: int, longest: int) -> int:
    """At most how much stay k's infections lengthen it (_infected), its length before them at
    most `longest`: kind j can happen only while its draw is below the highest rate of any
    hospital x the days at risk (fewer than the stay's), as _hai_draw has it (alive)."""
    u: _HaiDraws = _stream(plan, _HaiDraws, index, k)
    happens = (u.clabsi, u.cauti, u.ssi_colon, u.ssi_hyst, u.cdi, u.mrsa)  # _hai_draw's order
    return sum(
        extra
        for draw, top, extra in zip(happens, a.hai_top, a.hai_extra, strict=True)
        if draw < top * longest
    )


def _hai_bound_column(plan: Plan, a: _AdmissionTables, stays: tuple[Any, Any], longest: Any) -> Any:
    """_hai_bound for each stay (stays: index and stay number columns) and longest (a column):
    one hash each, then the comparisons at once (the same float products)."""
    draws = _stream_block(plan, _HaiDraws, *(column.tolist() for column in stays))
    happens = draws[:, : len(a.hai_top)]  # HaiDraws' first fields: whether, per kind
    possible = happens < np.array(a.hai_top)[None, :] * longest[:, None].astype(np.float64)
    return (possible * np.array(a.hai_extra, np.int64)).sum(axis=1)


_HAI_HAPPENS = ("clabsi", "cauti", "ssi_colon", "ssi_hyst", "cdi", "mrsa")  # _hai_draw's order
assert _HaiDraws._fields[: len(_HAI_HAPPENS)] == _HAI_HAPPENS, "_hai_bound_column reads them"


def _diagnosis_range(
    t: _StayTables, a: _AdmissionTables, draws: tuple[int, range, _StayDraws], index_dx: Any
) -> set[int]:
    """The principal diagnoses a living stay can have at any hospital (draws: the patient is
    female or not, its age at the admission is one of `ages`, u its StayDraws): the mix's row
    of its age band and sex; an index stay (index_dx None) 65+ any cohort while its cohort
    draw is below cohort_top (_stay_diagnosis); a readmission its index stay's diagnosis (one
    of index_dx) again while that is a cohort's and the draw is below READMIT_SAME_COHORT
    (_readmission)."""
    female, ages, u = draws
    out = set()
    for age in ages:
        mix = 2 * (bisect.bisect_right(_AGE_BANDS, age) - 1) + female
        out.add(t.mix_rows[mix][_pick(t.mix_cum[mix], u.diagnosis)])
    if index_dx is None:
        if ages[-1] >= _MEDICARE_AGE and u.cohort < a.cohort_top:
            out.update(t.cohort_dx)
    elif u.cohort < _cut(_READMIT_SAME_COHORT):
        out.update(d for d in index_dx if t.diagnoses[d].cohort)
    return out


def _readmit_top_cut(
    t: _StayTables, a: _AdmissionTables, cell: int, dx: set[int], top_age: int
) -> int:
    """The readmitted draw at or above which no hospital readmits a stay of one of diagnoses
    `dx`, aged at most top_age, of a patient of registry `cell` (_readmitted: its rate less
    the month chance of the cell; monotone in the rate, so the highest rate gives the cut)."""
    cohort = top_age >= _MEDICARE_AGE and any(t.diagnoses[d].cohort for d in dx)
    return int(a.readmit_cells[cell, int(cohort)])


def _los_between(
    t: _StayTables, a: _AdmissionTables, dx: set[int], u: _StayDraws
) -> tuple[int, int]:
    """The shortest and longest stay (before infections) any of diagnoses `dx` gives LOS draw
    u.los: _los of each, but the cohorts' (65+, any of them at some hospital) by los_range."""
    lengths = [_los(t.diagnoses[d], u) for d in dx if d not in t.cohort_dx]
    shortest, longest = min(lengths, default=_MAX_LOS), max(lengths, default=_MIN_LOS)
    if len(lengths) < len(dx):
        j = u.los >> _LOS_SHIFT
        shortest = min(shortest, int(a.los_range[0][-1, j]))
        longest = max(longest, int(a.los_range[1][-1, j]))
    return shortest, longest


def _chain_window(
    plan: Plan,
    who: tuple[int, int, int],
    key: tuple[int, int, int],
    chain: tuple[int, ...],
    window: tuple[int, int],
) -> bool:
    """Whether the chain of an accepted candidate admission (who: the patient is female or not,
    its birth ordinal and registry cell; key: index, stay number, admission; chain: its tile's
    chain words) might hold a stay discharged in the window (since, until]: a necessary
    condition, checked before the patient is replayed, that knows all but its hospital. Each
    stay's admission lies in a range (exact for the index stay; a readmission's gap is its
    tile's); its diagnosis is one _diagnosis_range allows, so its length lies between theirs,
    plus at most _hai_bound for its infections; a readmission is possible while its draw is
    below _readmit_top_cut. A stay that ends past `until` or CHAIN_SPAN after the index
    admission ends the chain (those after it end later still)."""
    a, t = _admission_tables(plan), _stay_tables(plan)
    (female, birth, cell), (index, k, admitted), (since, until) = who, key, window
    lo = hi = admitted
    dx = None
    for r in range(_CHAIN_DEPTH):
        gap_draw, los_draw, again = chain[3 * r : 3 * r + 3]
        if r:  # the readmission's gap, as _readmission computes it
            gap = max(3600, round(30 * 86400 * (gap_draw / 4294967296.0) ** _READMIT_SKEW))
            lo, hi = lo + gap, hi + gap
        u = _stay_draws(plan, index, k + r)._replace(los=los_draw)
        ages = range(_age(birth, lo), _age(birth, hi) + 1)
        dx = _diagnosis_range(t, a, (female, ages, u), dx)
        shortest, longest = _los_between(t, a, dx, u)
        lo, hi = lo + shortest, hi + longest
        if lo > until or lo - admitted > _CHAIN_SPAN:
            return False
        if hi + sum(a.hai_extra) > since:  # its infections might carry it into the window
            hi += _hai_bound(plan, a, index, k + r, longest)
        if hi > since:
            return True
        if again >= _readmit_top_cut(t, a, cell, dx, ages[-1]):
            return False
    return False


def _live_draws(plan: Plan, index: int, k: int, chain: tuple[int, ...]) -> _StayDraws:
    """Living stay k's draws: _stay_draws(plan, index, k) with its chain's words from the tile
    (k's place in the chain: r = (k - MAX_STAYS) % CHAIN_DEPTH)."""
    r = 3 * ((k - _MAX_STAYS) % _CHAIN_DEPTH)
    words = dict(zip(_CHAIN_WORDS, chain[r : r + 3], strict=True))
    return _stay_draws(plan, index, k)._replace(**words)


def _sample_at(versions: list[Version], instant: int) -> _Sample:
    """The patient as it is at `instant` (>= its first version): its last version by then."""
    k = bisect.bisect_right([v.instant for v in versions], instant) - 1
    return versions[max(k, 0)].sample


def _readmit_at(
    plan: Plan, versions: list[Version], stay: _Stay, chain: tuple[int, ...]
) -> tuple[_Stay, bool]:
    """The readmission after living stay `stay` (its chain's words from the tile) for the
    patient as it is at the readmission's admission."""
    t, s = _stay_tables(plan), _sample_at(versions, stay.discharged)
    u = _live_draws(plan, stay.index, _readmission_number(stay.k), chain)
    again, more = _readmission(plan, t, s, stay, u)
    later = _sample_at(versions, again.admitted)
    if later is not s:
        again, more = _readmission(plan, t, later, stay, u)
    return _infected(plan, again, stay.discharged + 3600), more  # lengthened (issue 19)


def _admission_chain(
    plan: Plan, versions: list[Version], admissions: list[_Admission], end: int
) -> list[_Stay]:
    """The stays a patient is admitted to before `end` (the death, or just past the window),
    in time order: the accepted candidates after it joins (thinning by the age at the instant
    and the sex) and their readmissions, each made for the patient as it is at its admission;
    a stay that begins while an earlier one lasts is not made (nor its readmissions), nor one
    discharged more than CHAIN_SPAN after its chain's index admission. Earlier stays alone
    decide a stay's fate, so the list up to any instant never depends on how far the window
    reaches."""
    t, first, index = _stay_tables(plan), versions[0].sample, versions[0].index
    cut = _admission_tables(plan).accept[first.sex]
    # (admission, stay number, the stay once made, its chain's index admission, whether it is
    # readmitted, the chain's words): (admission, number) is unique, so tuples never tie
    heap: list[tuple[int, int, _Stay | None, int, bool, tuple[int, ...]]] = [
        (instant, k, None, instant, False, chain)
        for instant, k, accept, chain in admissions
        if versions[0].instant < instant < end
        and accept < cut[min(_age(first.birth, instant), _MAX_AGE)]
    ]
    heapq.heapify(heap)
    kept: list[_Stay] = []
    while heap:
        admitted, k, stay, start, more, chain = heapq.heappop(heap)
        if kept and admitted <= kept[-1].discharged:
            continue  # in hospital already
        if stay is None:
            partial = _Stay(index, k, admitted, admitted, -1, -1, -1)
            s, u = _sample_at(versions, admitted), _live_draws(plan, index, k, chain)
            stay, more = _admitted_stay(plan, t, s, partial, u)
            stay = _infected(plan, stay, versions[0].instant)  # lengthened (issue 19)
        if stay.discharged - start > _CHAIN_SPAN:
            continue
        kept.append(stay)
        if more and (stay.k - _MAX_STAYS) % _CHAIN_DEPTH < _CHAIN_DEPTH - 1:
            again, again_more = _readmit_at(plan, versions, stay, chain)
            if again.admitted < end:
                heapq.heappush(heap, (again.admitted, again.k, again, start, again_more, chain))
    return kept


def _death_stays(plan: Plan, versions: list[Version], kept: list[_Stay]) -> list[_Stay]:
    """The stays tied to a death after the epoch (the look-back window's rule, _death_stay: in
    hospital, or after a MORT-30 cohort stay and perhaps its readmission), kept if they overlap
    none of the patient's other stays (those were delivered before the death was known)."""
    t, s, index = _stay_tables(plan), versions[-1].sample, versions[0].index
    u: _PatientStayDraws = _stream(plan, _PatientStayDraws, index)
    found = _death_stay(plan, t, index, u.death, s, versions[0].instant)
    if found is None or not _fits(found[0], kept):
        return []
    out = [found[0]]
    if found[1]:
        again, _ = _readmission(plan, t, s, found[0])
        if again.admitted < s.died <= again.discharged:
            again = again._replace(discharged=s.died, disposition=-1)
        again = _infected(plan, again, found[0].discharged + 3600)  # lengthened (issue 19)
        if again.admitted < s.died < again.discharged:  # past the death: it ends there
            again = again._replace(discharged=s.died, disposition=-1)
        if again.admitted < s.died and again.discharged <= s.died and _fits(again, kept):
            out.append(again)
    return out


def _live_stays(
    plan: Plan,
    start: _Start,
    versions: list[Version],
    admissions: list[_Admission],
    until: int,
) -> list[_LiveStay]:
    """A patient's stays after the epoch delivered by `until`, in time order, from its
    history up to `until` and its candidate admissions up to it. None for a record entered in
    error (a duplicate: the person's stays go to their real record) or a patient dead at the
    epoch. A stay that would outlast the death is not made, except a readmission, which ends in
    the death (expired), as in the look-back window."""
    if not versions or start.deleted is not None or versions[0].sample.died >= 0:
        return []
    died = versions[-1].sample.died if versions[-1].sample.died >= 0 else None
    end = until + 1 if died is None else died
    out = []
    for stay in _admission_chain(plan, versions, admissions, end):
        if died is None or stay.discharged < died:
            if stay.discharged <= until:
                out.append(_LiveStay(stay.discharged, stay))
        elif (stay.k - _MAX_STAYS) % _CHAIN_DEPTH:  # a readmission: the patient dies in it
            out.append(_LiveStay(died, stay._replace(discharged=died, disposition=-1)))
    if died is not None:
        kept = [ls.stay for ls in out]
        out += [_LiveStay(died, stay) for stay in _death_stays(plan, versions, kept)]
    return sorted(out, key=lambda ls: ls.stay.admitted)


def _living_stays(plan: Plan, count: int, index: int, until: datetime | str) -> list[_LiveStay]:
    """Patient #index's inpatient stays after the epoch (plan.as_of) delivered by `until`, in
    time order, each with its delivery instant (the discharge, or the death a stay is tied
    to). `count` is the epoch population. Its stays in the look-back window before the epoch
    are stays(plan, index), as the epoch's registry has them. The plan needs encounters=True."""
    w = Window(count, until)
    return _window_stays(plan, w, index, index + 1).get(index, [])


class _TileColumns(NamedTuple):
    """Candidates of several blocks' tiles in a window, one row each (numpy columns)."""

    block: Any  # int64: the tile's block
    slot: Any  # int64: the candidate's place in its tile
    year: Any  # int64: the tile's year
    instant: Any  # int64 epoch seconds
    words: Any  # (rows, words per candidate) int64: the candidate's words


def _tile_columns(
    read: Callable[[int, int], bytes], blocks: range, window: tuple[int, int], width: int
) -> _TileColumns:
    """The candidates with lo < instant <= hi (window) in the tiles of `blocks` (read(block,
    year): a tile's words as bytes, `width` words a candidate): what _admissions and
    _candidates find one block at a time, for many blocks at once."""
    lo, hi = window
    parts = []
    for year, start, length in _tile_years(lo, hi):
        raw = [read(block, year) for block in blocks]
        counts = np.array([len(w) // (4 * width) for w in raw], np.int64)
        words = np.frombuffer(b"".join(raw), "<u4").reshape(-1, width).astype(np.int64)
        slot = np.arange(len(words)) - np.repeat(np.cumsum(counts) - counts, counts)
        instant = start + (words[:, 1] * length >> 32)
        keep = (lo < instant) & (instant <= hi)
        block = np.repeat(np.arange(blocks.start, blocks.stop), counts)
        year_column = np.full(int(keep.sum()), year, np.int64)
        parts.append(_TileColumns(block[keep], slot[keep], year_column, instant[keep], words[keep]))
    if not parts:
        return _TileColumns(*(np.zeros(0, np.int64),) * 4, np.zeros((0, width), np.int64))
    return _TileColumns(*(np.concatenate(column) for column in zip(*parts, strict=True)))


def _tile_rows(c: _TileColumns, keep: Any) -> _TileColumns:
    """The candidates of `c` where `keep` (a boolean column) holds."""
    return _TileColumns(*(column[keep] for column in c))


class _Tiles:
    """A window's tiles (kind 0: admission tiles, _admission_words; kind 1: event tiles,
    _tile_words), each hashed once and, for the replays, split by patient once: the pre-check
    and the replays of a chunk of blocks read the same tiles."""

    def __init__(self, plan: Plan, dyn: _Dynamics) -> None:
        self.admissions, self.dyn = _admission_tables(plan), dyn
        self.raw: dict[tuple[int, int, int], bytes] = {}
        self.split: dict[tuple[int, int, int], bytes] = {}

    def words(self, kind: int, block: int, year: int) -> bytes:
        """The tile's words as little-endian bytes."""
        key = (kind, block, year)
        found = self.raw.get(key)
        if found is None:
            if kind:
                found = _tile_words(self.dyn, block, year)
            else:
                found = _admission_words(self.admissions, block, year)
            self.raw[key] = found
        return found

    def offsets(self, kind: int, block: int, year: int) -> bytes:
        """Each candidate's offset in the block, one byte each in tile order (bytes.find finds
        a patient's candidates)."""
        key = (kind, block, year)
        found = self.split.get(key)
        if found is None:
            w = np.frombuffer(self.words(kind, block, year), "<u4")
            found = (w[:: _TILE_WORDS if kind else _ADMISSION_WORDS] % _BLOCK).astype(np.uint8)
            found = self.split[key] = found.tobytes()
        return found


def _chain_free(a: _AdmissionTables, c: _TileColumns, window: tuple[int, int]) -> Any:
    """Per candidate admission (columns), whether its chain might hold a stay discharged in the
    window (since, until] by its tile's words alone (no hash, no patient): each stay at least
    MIN_LOS long and at most los_bound plus every infection's extra days (a readmission's gap
    given a second's margin either way, as numpy's power may differ), a readmission possible
    below readmit_cut, nothing made past CHAIN_SPAN. Looser than _chain_window: a prefilter."""
    since, until = window
    lo = hi = c.instant
    hit, alive = np.zeros(len(lo), bool), np.ones(len(lo), bool)
    los_bound, extra = np.array(a.los_bound, np.int64), sum(a.hai_extra)
    for r in range(3, 3 + 3 * _CHAIN_DEPTH, 3):
        if r > 3:  # the readmission's gap (numpy's power may differ in the last bit)
            gap = 30 * 86400 * (c.words[:, r] / 4294967296.0) ** _READMIT_SKEW
            lo = lo + np.maximum(3600, np.floor(gap).astype(np.int64) - 1)
            hi = hi + np.maximum(3600, np.ceil(gap).astype(np.int64) + 1)
        lo = lo + _MIN_LOS
        hi = hi + los_bound[c.words[:, r + 1] >> _LOS_SHIFT] + extra
        hi = np.minimum(hi, c.instant + _CHAIN_SPAN)
        hit |= alive & (lo <= until) & (hi > since)
        alive &= (lo <= until) & (c.words[:, r + 2] < a.readmit_cut)
    return hit


class _Who(NamedTuple):
    """Patients a window's pre-check concerns, sorted by index (numpy columns): what never
    changes after their first version."""

    index: Any  # int64, sorted, unique
    first: Any  # int64: the first version's instant (the epoch, or the join)
    female: Any  # bool: the registry cell's sex
    birth: Any  # int64: birth ordinal
    cell: Any  # int64: registry cell
    gone: Any  # bool: dead at the epoch or entered in error (no stays after the epoch)


def _who(plan: Plan, dyn: _Dynamics, count: int, indexes: Any) -> _Who:
    """_Who of these indexes (sorted, unique): an epoch patient's from its draws as
    _sample_block maps them (one hash each, no record); a joiner's from _start."""
    t, epoch = _block_tables(plan), int(np.searchsorted(indexes, count))
    u = _Draws._make(_index_draws(plan, indexes[:epoch].tolist()).T)
    s = np.searchsorted(t.state_cum, _scaled(u.state, t.state_cum[-1]), "right")
    x = t.cell_base[s] + _scaled(u.cell, t.cell_total[s])
    cell = np.searchsorted(t.cell_flat, x, "right") - t.cell_start[s]
    birth = t.birth_low[cell] + (u.birth * t.birth_span[cell] >> np.uint64(32)).astype(np.int64)
    joiners = [_joiner_who(plan, dyn, count, i) for i in indexes[epoch:].tolist()]
    first, female, born, cells, gone = zip(*joiners, strict=True) if joiners else ((),) * 5
    return _Who(
        index=indexes,
        first=np.array([dyn.start] * epoch + list(first), np.int64),
        female=np.append(t.sex_female[cell], female) > 0,
        birth=np.append(birth, born).astype(np.int64),
        cell=np.append(cell, cells).astype(np.int64),
        gone=np.append(t.dead[cell], gone) > 0,
    )


def _joiner_who(plan: Plan, dyn: _Dynamics, count: int, index: int) -> tuple[int, ...]:
    """Joiner #index's row of _Who (first instant, female, birth, cell, entered in error) as
    _start makes them (_joiner_cell), without the rest of its record."""
    u = _Draws._make(_raw_draws(_digest(plan, index)))
    instant = _join_instant(plan, dyn, count, index)
    _, sex, cell, birth, _ = _joiner_cell(plan, dyn, u, instant)
    return instant, sex == "female", birth, cell, u.entered_in_error < dyn.error_cut


def _age_column(birth: Any, instants: Any) -> Any:
    """_age for each (birth ordinal, epoch-seconds instant) pair (int64 columns)."""
    year, month, day = _ymd_block(np.minimum(instants, _LAST_SECOND) // 86400 + _EPOCH_DAY)
    born_year, born_month, born_day = _ymd_block(birth)
    return year - born_year - (month * 32 + day < born_month * 32 + born_day)


def _chain_known(plan: Plan, who: _Who, c: _TileColumns, window: tuple[int, int]) -> Any:
    """Per accepted candidate admission (columns c, its patient's row of `who`), whether its
    chain might hold a stay discharged in the window by what is known without its stays'
    draws: the patient's sex, age (one more at most for a readmission: a chain ends within
    CHAIN_SPAN) and cell; so each stay's length lies in los_range of its mix rows (and of the
    cohorts' from 65), a readmission is possible below the cell's readmit_cells, infections
    add at most _hai_bound (hashed only where that decides). Looser than _chain_window (a
    prefilter), tighter than _chain_free."""
    a, (since, until) = _admission_tables(plan), window
    index = c.block * _BLOCK + c.words[:, 0] % _BLOCK
    k = (c.year * _ADMISSION_SLOTS + c.slot) * _CHAIN_DEPTH + _MAX_STAYS  # _live_stay_number
    rows = np.searchsorted(who.index, index)
    age, female = _age_column(who.birth[rows], c.instant), who.female[rows].astype(np.int64)
    mixes = [2 * (np.searchsorted(_AGE_BANDS, x, "right") - 1) + female for x in (age, age + 1)]
    senior = age + 1 >= _MEDICARE_AGE
    cohorts = len(a.los_range[0]) - 1
    readmit = a.readmit_cells[who.cell[rows], senior.astype(np.int64)]
    lo = hi = c.instant
    hit, alive = np.zeros(len(lo), bool), np.ones(len(lo), bool)
    extra = sum(a.hai_extra)
    for r in range(_CHAIN_DEPTH):
        w = c.words[:, 3 + 3 * r : 6 + 3 * r]
        if r:  # the readmission's gap (numpy's power may differ in the last bit)
            gap = 30 * 86400 * (w[:, 0] / 4294967296.0) ** _READMIT_SKEW
            lo = lo + np.maximum(3600, np.floor(gap).astype(np.int64) - 1)
            hi = hi + np.maximum(3600, np.ceil(gap).astype(np.int64) + 1)
        j = w[:, 1] >> _LOS_SHIFT
        shortest = np.minimum(a.los_range[0][mixes[0], j], a.los_range[0][mixes[1], j])
        longest = np.maximum(a.los_range[1][mixes[0], j], a.los_range[1][mixes[1], j])
        shortest = np.where(senior, np.minimum(shortest, a.los_range[0][cohorts, j]), shortest)
        longest = np.where(senior, np.maximum(longest, a.los_range[1][cohorts, j]), longest)
        lo, hi = lo + shortest, hi + longest
        alive &= (lo <= until) & (lo - c.instant <= _CHAIN_SPAN)
        n = np.flatnonzero(alive & (hi <= since) & (hi + extra > since))
        hi[n] += _hai_bound_column(plan, a, (index[n], k[n] + r), longest[n])
        hit |= alive & (hi > since)
        alive &= w[:, 2] < readmit
    return hit


def _admission_suspects(
    plan: Plan, who: _Who, c: _TileColumns, window: tuple[int, int]
) -> set[int]:
    """The indexes with a candidate admission (columns c) that thinning accepts (by the sex
    and the age at its instant, after the first version, as _admission_chain takes it) and
    whose chain might reach the window (_chain_window)."""
    a, index = _admission_tables(plan), c.block * _BLOCK + c.words[:, 0] % _BLOCK
    rows = np.searchsorted(who.index, index)
    age = np.clip(_age_column(who.birth[rows], c.instant), 0, _MAX_AGE)
    cut = a.accept_rows[who.female[rows].astype(np.int64), age]
    accepted = ~who.gone[rows] & (c.instant > who.first[rows]) & (c.words[:, 2] < cut)
    c = _tile_rows(c, accepted)
    c = _tile_rows(c, _chain_known(plan, who, c, window))
    index = c.block * _BLOCK + c.words[:, 0] % _BLOCK
    rows = np.searchsorted(who.index, index)
    out: set[int] = set()
    for j in range(len(index)):
        i, r = int(index[j]), int(rows[j])
        if i in out:
            continue
        key = (i, _live_stay_number(int(c.year[j]), int(c.slot[j])), int(c.instant[j]))
        patient = (int(who.female[r]), int(who.birth[r]), int(who.cell[r]))
        if _chain_window(plan, patient, key, tuple(c.words[j, 3:].tolist()), window):
            out.add(i)
    return out


def _death_suspects(dyn: _Dynamics, who: _Who, c: _TileColumns) -> set[int]:
    """The indexes with a death candidate (columns c, kind 0) that thinning might accept: by
    the sex and age at its instant in state -1 (the highest of the states' rates: the patient
    may move), after the first version, as _window_events checks a patient's events."""
    kind, cuts, index = _EVENT_KINDS[0], dyn.cuts[0], c.block * _BLOCK + c.words[:, 0] % _BLOCK
    out: set[int] = set()
    for j, r in enumerate(np.searchsorted(who.index, index).tolist()):
        i, instant = int(index[j]), int(c.instant[j])
        if i in out or who.gone[r] or instant <= who.first[r]:
            continue
        sex, birth = _SEXES[int(who.female[r])], int(who.birth[r])
        probe = _Sample(-1, -1, int(who.cell[r]), sex, birth, "", -1, -1, -1, -1, ())
        if c.words[j, 2] < kind.accept(cuts, probe, instant):
            out.add(i)
    return out


class _WindowScope(NamedTuple):
    """What a window's stays are asked for: the epoch population, the indexes [lo, hi) and the
    window (since, until] in epoch seconds."""

    count: int
    lo: int
    hi: int
    since: int
    until: int


def _window_suspects(
    plan: Plan, dyn: _Dynamics, scope: _WindowScope, blocks: range, tiles: _Tiles
) -> list[int]:
    """The indexes of `blocks` whose stays the window may hold, sorted (necessary conditions
    only, cheapest first, so the replay finds exactly the stays it would find replaying all):
    a candidate admission since CHAIN_SPAN before the window that thinning might accept
    (accept_top, then the patient's sex and age) and whose chain might reach the window
    (_chain_free, then _chain_window); or a death candidate in the window that thinning might
    accept (a stay may be tied to it, or end in it). Read as numpy columns."""
    a, window = _admission_tables(plan), (scope.since, scope.until)
    since = max(dyn.start, scope.since - _CHAIN_SPAN)
    read = functools.partial(tiles.words, 0)
    adm = _tile_columns(read, blocks, (since, scope.until), _ADMISSION_WORDS)
    index = adm.block * _BLOCK + adm.words[:, 0] % _BLOCK
    keep = (scope.lo <= index) & (index < scope.hi) & (adm.words[:, 2] < a.accept_top)
    adm = _tile_rows(adm, keep & _chain_free(a, adm, window))
    events = _tile_columns(functools.partial(tiles.words, 1), blocks, window, _TILE_WORDS)
    index = events.block * _BLOCK + events.words[:, 0] % _BLOCK
    death = (events.words[:, 0] >> 6) < dyn.kind_cut[0]  # kind 0: death
    events = _tile_rows(events, death & (scope.lo <= index) & (index < scope.hi))
    indexes = [c.block * _BLOCK + c.words[:, 0] % _BLOCK for c in (adm, events)]
    who = _who(plan, dyn, scope.count, np.unique(np.concatenate(indexes)))
    found = _admission_suspects(plan, who, adm, window) | _death_suspects(dyn, who, events)
    return sorted(found)


def _offset_rows(
    tiles: _Tiles, kind: int, key: tuple[int, int], window: tuple[int, int]
) -> list[tuple[int, int, int, tuple[int, ...]]]:
    """(instant, year, where its words start in the tile, its words) of the candidates of
    patient `offset` of `block` (key) in tiles of `kind` with lo < instant <= hi (window)."""
    (block, offset), (lo, hi) = key, window
    width, mine = (_TILE_WORDS if kind else _ADMISSION_WORDS), bytes((offset,))
    unpack = struct.Struct(f"<{width}I").unpack_from
    out = []
    for year, start, length in _tile_years(lo, hi):
        raw, offsets = tiles.words(kind, block, year), tiles.offsets(kind, block, year)
        n = offsets.find(mine)
        while n >= 0:
            w = unpack(raw, 4 * width * n)
            instant = start + (w[1] * length >> 32)
            if lo < instant <= hi:
                out.append((instant, year, n * width, w))
            n = offsets.find(mine, n + 1)
    return out


def _replayed_stays(
    plan: Plan, dyn: _Dynamics, scope: _WindowScope, index: int, tiles: _Tiles
) -> list[_LiveStay]:
    """Patient #index's stays delivered in the window, from its history since the epoch: its
    events (as _candidates(...)[offset]) and candidate admissions (as _admissions(...)[offset])
    read from its block's tiles."""
    start, key = _start(plan, dyn, scope.count, index), divmod(index, _BLOCK)
    history = (dyn.start, scope.until)
    events = sorted(
        (instant, j, w[0] >> 6, w[2], w[3], w[4])
        for instant, _, j, w in _offset_rows(tiles, 1, key, history)
    )
    admissions = sorted(
        (instant, _live_stay_number(year, j // _ADMISSION_WORDS), w[2], w[3:])
        for instant, year, j, w in _offset_rows(tiles, 0, key, history)
    )
    versions = _evolve(plan, dyn, index, start, events, scope.until)
    found = _live_stays(plan, start, versions, admissions, scope.until)
    return [ls for ls in found if scope.since < ls.delivered]


_SCAN_BLOCKS = 1024  # blocks a window's pre-check reads as numpy columns at once


def _window_stays(
    plan: Plan, w: Window, lo: int = 0, hi: int | None = None
) -> dict[int, list[_LiveStay]]:
    """Index in [lo, hi) -> its stays after the epoch in the window, in time order: a batch's
    delivered in (since, until], a snapshot's delivered by until. Only the patients of
    _window_suspects are replayed (necessary conditions: the same stays as replaying all), a
    few hundred a day in a million."""
    _check_window(plan, w.since, w.until)
    dyn, until = _dynamics(plan), _seconds(w.until)
    since = dyn.start if w.since is None else _seconds(w.since)
    count = w.epoch_count
    n = count + _joiners_by(plan, dyn, count, until)
    scope = _WindowScope(count, lo, n if hi is None else min(hi, n), since, until)
    last = -(-scope.hi // _BLOCK)
    out: dict[int, list[_LiveStay]] = {}
    for first in range(lo // _BLOCK, last, _SCAN_BLOCKS):
        tiles = _Tiles(plan, dyn)  # one chunk's tiles, then let go
        blocks = range(first, min(first + _SCAN_BLOCKS, last))
        for i in _window_suspects(plan, dyn, scope, blocks, tiles):
            mine = _replayed_stays(plan, dyn, scope, i, tiles)
            if mine:
                out[i] = mine
    return out


# ---------------------------------------------------------------------------------------------
# Rendering: the FHIR model, JSON bytes (a fast renderer for the bulk path) and S3 keys
# ---------------------------------------------------------------------------------------------


def generate_patient(
    seed: int | None = None, index: int = 0, as_of: datetime | str | None = None, **options: Any
) -> Any:
    """Patient #index as a validated fhir.resources Patient of the run's FHIR version (R4B models
    for R4, the default; R5 models for fhir_version="R5"); a random seed when None.

    Options are those of make_plan, e.g. profile="us-core" for a US Core Patient.
    """
    plan = make_plan(_draw_seed() if seed is None else seed, as_of, **options)
    return _model(plan.fhir_version.models, "Patient").model_validate(build_record(plan, index))


def generate_patients(  # noqa: PLR0913 (the living population's arguments are keyword-only)
    count: int,
    seed: int | None = None,
    start: int = 0,
    as_of: datetime | str | None = None,
    *,
    epoch: datetime | str | None = None,
    since: datetime | str | None = None,
    latest: bool = False,
    faults: Faults = _NO_FAULTS,
    **options: Any,
) -> Iterator[dict[str, Any]]:
    """Patients #start .. #start+count-1 as plain dicts, lazily (constant memory).

    With epoch=E the population of `count` patients is defined at E and lives on: the result is
    the snapshot at as_of (every patient's latest version), or with since=S the change batch
    (S, as_of]: new versions, and deletions as Bundle dicts (see changes())."""
    _check_index_range(start, count)
    if epoch is None and since is None:
        plan = make_plan(_draw_seed() if seed is None else seed, as_of, **options)
        for index in range(start, start + count):
            yield build_record(plan, index)
        return
    if epoch is None:
        raise ValueError("since needs epoch (the time the population is defined at)")
    if start:
        raise ValueError("a living population begins at #0: start must be 0 with epoch")
    plan = make_plan(_draw_seed() if seed is None else seed, epoch, **options)
    for v in _window_versions(plan, Window(count, as_of, since, latest, faults)):
        yield _version_record(plan, v)


def _check_index_range(start: Any, count: Any) -> None:
    """ValueError unless patients #start .. #start+count-1 all exist (count >= 0)."""
    for name, value in (("count", count), ("start", start)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"{name} must be a whole number >= 0, not {value!r}")
    if start + count - 1 > _MAX_INDEX:
        raise ValueError(f"--start and --count must keep indexes within 0..{_MAX_INDEX}")


@functools.cache
def _model(package: str, resource_type: str) -> Any:
    """The fhir.resources model class of a resource type in a package (FhirVersion.models)."""
    import importlib

    return getattr(importlib.import_module(f"{package}.{resource_type.lower()}"), resource_type)


def _as_dict(resource: Any) -> dict[str, Any]:
    if isinstance(resource, dict):
        return resource
    return resource.model_dump(mode="json", by_alias=True, exclude_none=True)


def to_json(resource: Any, pretty: bool = False) -> str:
    """Compact (or indented) JSON of a Patient model or dict, in FHIR element order."""
    option = orjson.OPT_INDENT_2 if pretty else 0
    return orjson.dumps(_as_dict(resource), option=option).decode()


def _patient_file_name(patient_id: str) -> str:
    """The bronze-layer name of one patient's file (per-file JSON and the suggested key)."""
    return f"patient_{patient_id}.json"


def suggested_s3_key(
    patient: Any, bucket: str = _DEFAULT_BUCKET, prefix: str = _DEFAULT_PREFIX
) -> str:
    """The bronze-layer object URL for a Patient model or dict: s3://bucket/prefix/patient_<id>.json."""
    pid = patient["id"] if isinstance(patient, dict) else patient.id
    prefix = prefix.strip("/")
    return f"s3://{bucket}/{prefix + '/' if prefix else ''}{_patient_file_name(pid)}"


_MARK = "\x00"  # no record holds it: the marker "\x00<field>" stands where a field goes
_MARK_SPLIT = re.compile(rb'"\\u0000(\w+)"')  # how orjson writes a marker


def _template(plan: Plan, deceased: bool) -> tuple[bytes, dict[str, bytes]]:
    """The cms record's bytes around its fields: (head, {field: the bytes after it})."""
    marks = _Fields._make(_MARK + name for name in _Fields._fields)
    if not deceased:
        marks = marks._replace(deceased=None)
    head, *rest = _MARK_SPLIT.split(orjson.dumps(_assemble(plan, marks)))
    names = [name.decode() for name in rest[::2]]
    expected = [n for n in _Fields._fields if deceased or n != "deceased"]
    if names != expected or any(b"\\u0000" in part for part in (head, *rest)):
        raise AssertionError(f"the record template has fields {names}, not {expected}")
    return head, dict(zip(names, rest[1::2], strict=True))


class _Memo(dict):  # type: ignore[type-arg]
    """key -> make(key), made on first use and kept: a run pre-serialises the ZIPs and the
    hospitals it meets, not all 33,000 up front (what `--count 1` would wait for)."""

    def __init__(self, make: Callable[[Any], Any]) -> None:
        super().__init__()
        self.make = make

    def __missing__(self, key: Any) -> Any:
        value = self[key] = self.make(key)
        return value


class _Fragments(NamedTuple):
    """The cms record's bytes, pre-serialised once per plan: everything but ids and dates."""

    head: bytes  # up to the id's opening quote
    after_id: bytes  # the id's closing quote up to the meta element's value
    after_meta: bytes  # after meta, up to the MRN's opening quote
    meta_v1: bytes  # version 1's meta at as-of
    after_mrn: bytes
    genders: Mapping[str, bytes]
    dates: Mapping[int, bytes]  # quoted ISO dates by ordinal - plan.dates_base, made on first use
    alive: bytes  # what follows birthDate for the living
    to_deceased: bytes  # birthDate's closing quote up to the deceasedDateTime's opening quote
    to_address: bytes
    addresses: Mapping[int, bytes]  # by ZIP position, made on first use
    languages: list[bytes]
    organizations: Mapping[int, bytes]  # by hospital position, made on first use


@functools.lru_cache(maxsize=8)
def _fragments(plan: Plan) -> _Fragments:
    """The record's fixed parts (from _assemble) and every language, serialised once per plan;
    a ZIP's address and a hospital's reference the first time a record needs them."""
    dumps = orjson.dumps
    head, after = _template(plan, deceased=True)
    alive_head, alive_after = _template(plan, deceased=False)
    if alive_head != head or {**after, "birth_date": after["deceased"]} != {
        **alive_after,
        "deceased": after["deceased"],
    }:
        raise AssertionError("the living and the deceased records differ beyond deceasedDateTime")
    to_language, to_tail = after["address"], after["organization"]
    # The id, MRN and dates are [-0-9a-zA-Z] text that needs no escaping: quotes are fixed.
    return _Fragments(
        head=head + b'"',
        after_id=b'"' + after["id"],
        after_meta=after["meta"] + b'"',
        meta_v1=dumps(_meta(1, plan.last_updated)),
        after_mrn=b'"' + after["mrn"],
        genders={g: dumps(g) + after["gender"] for g in ("male", "female", "other", "unknown")},
        dates=_Memo(lambda k: b'"%s"' % plan.dates[k].encode()),
        alive=alive_after["birth_date"],
        to_deceased=after["birth_date"] + b'"',
        to_address=b'"' + after["deceased"],
        addresses=_Memo(lambda z: dumps(_address(plan.zips[z])) + to_language),
        languages=[
            dumps(_communication(*lang)) + after["communication"] for lang in plan.languages
        ],
        organizations=_Memo(lambda h: dumps(_managing_organization(plan.hospitals[h])) + to_tail),
    )


_Writer = Callable[[Iterable[int], Iterable[tuple[Any, ...]], Iterable[bytes]], list[bytes]]


@functools.lru_cache(maxsize=8)
def _patient_writer(plan: Plan) -> _Writer:
    """(indexes, samples, metas) -> the cms records' bytes, joined from _fragments: what
    json_renderer, the bulk NDJSON blocks and the version writer all use; per patient only ids,
    dates and meta vary. A block at a time: one call per block, not one per patient."""
    f = _fragments(plan)
    head, after_id, after_meta, after_mrn = f.head, f.after_id, f.after_meta, f.after_mrn
    genders, dates, alive, to_deceased, to_address = (
        f.genders,
        f.dates,
        f.alive,
        f.to_deceased,
        f.to_address,
    )
    addresses, languages, organizations = f.addresses, f.languages, f.organizations
    n_dates, base, join = len(plan.dates), plan.dates_base, b"".join
    uuid_add, uuid_mul, mrn_add, mrn_mul = plan.uuid_add, plan.uuid_mul, plan.mrn_add, plan.mrn_mul
    uuid_bytes, mrn_bytes = _uuid_bytes, _mrn_bytes

    def write(
        indexes: Iterable[int], samples: Iterable[tuple[Any, ...]], metas: Iterable[bytes]
    ) -> list[bytes]:
        out = []
        append = out.append
        for index, s, meta in zip(indexes, samples, metas, strict=False):  # metas may repeat
            # Sample's fields, unpacked by position: the hot path skips the named tuple
            _, zip_, _, _, birth, gender, language, organization, died, _, _ = s
            k = birth - base
            born = dates[k] if 0 <= k < n_dates else b'"%s"' % _date_text(plan, birth).encode()
            if died < 0:
                death = alive
            else:
                death = join((to_deceased, _deceased(died).encode(), to_address))
            append(
                join(
                    (
                        head,
                        uuid_bytes(index, uuid_add, uuid_mul),  # patient_id
                        after_id,
                        meta,
                        after_meta,
                        mrn_bytes(index, mrn_add, mrn_mul),  # patient_mrn
                        after_mrn,
                        genders[gender],
                        born,
                        death,
                        addresses[zip_],
                        languages[language],
                        organizations[organization],
                    )
                )
            )
        return out

    return write


def _rendered_block(plan: Plan) -> Callable[[int, int], list[bytes]]:
    """(lo, hi) -> patients #lo..#hi-1 as json_renderer renders them, one writer call a block."""
    write, meta_v1 = _patient_writer(plan), _fragments(plan).meta_v1
    sample_of = functools.partial(_sample_tuple, plan)

    def block(lo: int, hi: int) -> list[bytes]:
        indexes = range(lo, hi)
        return write(indexes, map(sample_of, indexes), itertools.repeat(meta_v1))

    return block


def _iso_date_block(ordinals: Any) -> Any:
    """(n, 10) ASCII of the ISO dates of proleptic ordinals (years 1 to 9999, as isoformat)."""
    fields = zip(_ymd_block(ordinals), (4, 2, 2), strict=True)
    out = np.empty((len(ordinals), 10), np.uint8)
    out[:, [4, 7]] = ord("-")
    at = 0
    for values, width in fields:
        powers = 10 ** np.arange(width - 1, -1, -1, dtype=np.int64)
        out[:, at : at + width] = np.frombuffer(_DIGITS, np.uint8)[values[:, None] // powers % 10]
        at += width + 1
    return out


def _iso_instant_block(seconds: Any) -> Any:
    """(n, 20) ASCII of whole-second UTC instants as _deceased writes them, for years 1000-9999
    (deaths fall after as-of, at least 2010, less a look-back of at most 100 years)."""
    days, rest = np.divmod(seconds, 86400)
    out = np.empty((len(seconds), 20), np.uint8)
    out[:, :10] = _iso_date_block(days + _EPOCH_DAY)
    out[:, [10, 13, 16, 19]] = np.frombuffer(b"T::Z", np.uint8)
    digits = np.frombuffer(_DIGITS, np.uint8)
    for at, value in ((11, rest // 3600), (14, rest // 60 % 60), (17, rest % 60)):
        out[:, at], out[:, at + 1] = digits[value // 10], digits[value % 10]
    return out


@functools.lru_cache(maxsize=8)
def _ndjson_rows(plan: Plan) -> Callable[[_Block, int], bytes]:
    """(block, lo) -> the block's patients (#lo on) as NDJSON, each line as json_renderer renders
    it (the stays' bulk path samples the block itself: one sample serves both). Each record up
    to its address (ids, meta, MRN, gender, birth date and death) is the start of a row of one
    uint8 matrix: the fixed part at the same place in every row, then the gender, date and
    death bytes of the row's kind (gender x living or dead), so per patient only a slice of it
    and three pre-serialised fragments (ZIP, language, hospital) remain, the whole block in one
    join (the bulk path; tests/test_block.py compares it with json_renderer)."""
    f = _fragments(plan)
    fixed = (f.head, 36, f.after_id + f.meta_v1 + f.after_meta, 13, f.after_mrn)
    at = list(itertools.accumulate([0, *(p if isinstance(p, int) else len(p) for p in fixed)]))
    genders = [f.genders[g] for g in ("male", "female", "other", "unknown")]
    instant = b"\0" * 20
    deaths = (f.alive, f.to_deceased + instant + f.to_address)
    # a row's kind k = gender * 2 + dead: its bytes after the fixed part, with room for the
    # birth date (and the death instant), which each row fills in
    kinds = [g + b'"' + b"\0" * 10 + b'"' + d for g in genders for d in deaths]
    width = at[-1] + max(map(len, kinds))
    template = np.zeros(width, np.uint8)
    for start, part in zip(at, fixed, strict=False):
        if not isinstance(part, int):
            template[start : start + len(part)] = np.frombuffer(part, np.uint8)
    tails = np.zeros((len(kinds), width - at[-1]), np.uint8)
    for k, tail in enumerate(kinds):
        tails[k, : len(tail)] = np.frombuffer(tail, np.uint8)
    lengths = np.array([at[-1] + len(tail) for tail in kinds], np.int64)
    date_at = [at[-1] + len(g) + 1 for g in genders]  # the birth date's first digit, by gender
    instant_at = [d + 11 + len(f.to_deceased) for d in date_at]
    addresses, languages = f.addresses, f.languages
    organizations = _Memo(lambda h: f.organizations[h] + b"\n")

    def block(b: _Block, lo: int) -> bytes:
        n = len(b.zip)
        indexes = np.arange(lo, lo + n, dtype=np.uint64)
        gender = np.where(b.gender == 0, b.female, b.gender + 1)
        dead = b.died >= 0
        kind = gender * 2 + dead
        rows = np.empty((n, width), np.uint8)
        rows[:] = template
        rows[:, at[1] : at[2]] = _uuid_block(indexes, plan.uuid_add, plan.uuid_mul)
        rows[:, at[3] : at[4]] = _mrn_block(indexes, plan.mrn_add, plan.mrn_mul)
        rows[:, at[-1] :] = tails[kind]
        born, died = _iso_date_block(b.birth), _iso_instant_block(b.died[dead])
        died_kind = kind[dead]
        for g, start in enumerate(date_at):  # the dates sit after the gender: by gender
            of = gender == g
            if of.any():
                rows[of, start : start + 10] = born[of]
                at_died = died_kind // 2 == g
                rows[dead & of, instant_at[g] : instant_at[g] + 20] = died[at_died]
        ends = (np.arange(0, n * width, width) + lengths[kind]).tolist()
        flat = memoryview(rows.reshape(-1))  # sliced without a copy; join reads the views
        parts: list[Any] = [b""] * (4 * n)
        parts[0::4] = map(flat.__getitem__, map(slice, range(0, n * width, width), ends))
        parts[1::4] = map(addresses.__getitem__, b.zip.tolist())
        parts[2::4] = map(languages.__getitem__, b.language.tolist())
        parts[3::4] = map(organizations.__getitem__, b.organization.tolist())
        return b"".join(parts)

    return block


@functools.lru_cache(maxsize=8)
def _ndjson_block(plan: Plan) -> Callable[[int, int], bytes]:
    """(lo, hi) -> patients #lo..#hi-1 as NDJSON (each line as json_renderer renders it), from
    one _sample_block (_ndjson_rows renders it)."""
    rows = _ndjson_rows(plan)

    def block(lo: int, hi: int) -> bytes:
        return rows(_sample_block(plan, lo, hi), lo)

    # a field the block misses (or places wrong) fails here, when the block is built
    if block(0, 256) != b"".join(line + b"\n" for line in _rendered_block(plan)(0, 256)):
        raise AssertionError("_ndjson_block's bytes differ from json_renderer's (#0..#255)")
    return block


@functools.lru_cache(maxsize=8)
def json_renderer(plan: Plan) -> Callable[[int], bytes]:
    """A function i -> patient #i as compact JSON bytes, equal to orjson.dumps(build_record(plan,
    i)) but with no dict built: _patient_writer joins pre-serialised fragments. Profiles that
    are not `rendered` are dumped from their dict."""
    dumps = orjson.dumps
    if not plan.profile.rendered:
        return lambda index: dumps(build_record(plan, index))
    block = _rendered_block(plan)

    def render(index: int) -> bytes:
        return block(index, index + 1)[0]

    for index in range(8):  # a field or profile the fragments miss fails here, not in the data
        if render(index) != dumps(build_record(plan, index)):
            raise AssertionError(f"json_renderer's bytes differ from build_record's (#{index})")
    return render


def _version_updated(plan: Plan, v: Version) -> str:
    """meta.lastUpdated of a version: the as-of of the epoch's own, else the change instant."""
    return (
        plan.last_updated
        if v.change == "epoch"
        else _iso_instant(datetime.fromtimestamp(v.instant, UTC))
    )


def _delete_bundle(plan: Plan, v: Version) -> dict[str, Any]:
    """A deletion as FHIR Bulk Data writes it for _since exports: a transaction Bundle with one
    DELETE entry; meta.lastUpdated is the instant, ifMatch the last live version (so the delete
    sorts as version v.number)."""
    return {
        "resourceType": "Bundle",
        "meta": {"lastUpdated": _version_updated(plan, v)},
        "type": "transaction",
        "entry": [
            {
                "request": {
                    "method": "DELETE",
                    "url": "Patient/" + patient_id(plan, v.index),
                    "ifMatch": f'W/"{v.number - 1}"',
                }
            }
        ],
    }


def _version_record(plan: Plan, v: Version) -> dict[str, Any]:
    """A version as a plain dict: the Patient as it then was, or a deletion's Bundle."""
    if v.change == "delete":
        return _delete_bundle(plan, v)
    fields = _fields(plan, v.index, v.sample, _meta(v.number, _version_updated(plan, v)))
    return plan.profile.record(plan, _assemble(plan, fields), v.sample)


def version_json(plan: Plan, v: Version) -> bytes:
    """A version as compact JSON bytes, equal to orjson.dumps(version_record(plan, v))."""
    return _version_writer(plan)(v)


@functools.lru_cache(maxsize=8)
def _version_writer(plan: Plan) -> Callable[[Version], bytes]:
    """A function v -> version_json(plan, v) for the bulk paths: _patient_writer with the
    version's own sample and meta; checked against the dict path when built."""
    dumps = orjson.dumps
    if not plan.profile.rendered:
        return lambda v: dumps(_version_record(plan, v))
    write, meta_v1 = _patient_writer(plan), _fragments(plan).meta_v1

    def write_version(v: Version) -> bytes:
        if v.change == "delete":
            return dumps(_delete_bundle(plan, v))
        meta = meta_v1 if v.change == "epoch" else dumps(_meta(v.number, _version_updated(plan, v)))
        return write((v.index,), (v.sample,), (meta,))[0]

    render = json_renderer(plan)
    for index in range(8):  # as json_renderer: a field the fragments miss fails here
        s = _sample(plan, index)
        epoch = Version(index, 1, 0, "epoch", s)
        born = min(s.birth + 36500, date.max.toordinal())  # past the date table, and valid
        later = Version(index, 2, 4102444800, "move-zip", s._replace(birth=born))
        if write_version(epoch) != render(index) or write_version(later) != dumps(
            _version_record(plan, later)
        ):
            raise AssertionError(f"_version_writer's bytes differ from the dict path (#{index})")
    return write_version


class BronzeError(RuntimeError):
    """A runtime failure while writing records (validation, a store), one line for the CLI."""


def _validated(plan: Plan, record: dict[str, Any], index: int) -> dict[str, Any]:
    """The record, after fhir.resources accepted it; BronzeError naming the index if not."""
    try:
        _model(plan.fhir_version.models, record["resourceType"]).model_validate(record)
    except Exception as e:  # pydantic's ValidationError, or anything the model raises
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise BronzeError(f"patient #{index} failed FHIR validation: {first}") from None
    return record


def _patient_line(plan: Plan, validate: bool) -> Callable[[int], bytes]:
    """i -> patient #i's JSON as every writer writes it; through fhir.resources first if asked."""
    if validate:
        return lambda i: orjson.dumps(_validated(plan, build_record(plan, i), i))
    return json_renderer(plan)


def _version_line(plan: Plan, validate: bool) -> Callable[[Version], bytes]:
    """v -> a version's JSON as every writer writes it; through fhir.resources first if asked."""
    if validate:
        return lambda v: orjson.dumps(_validated(plan, _version_record(plan, v), v.index))
    return _version_writer(plan)


_StayLines = list[tuple[bytes, bytes]]  # a patient's stays: (Encounter, Condition) JSON pairs


def _stays_line(plan: Plan, validate: bool) -> Callable[[int], tuple[bytes, _StayLines]]:
    """i -> (patient #i's JSON, its stays' JSON pairs) as every writer writes them, from one
    sample; every resource through fhir.resources first if asked (--encounters runs)."""
    if validate:

        def checked(i: int) -> tuple[bytes, _StayLines]:
            s, pairs = _sample(plan, i), []
            for stay in stays(plan, i, s):
                refs = _stay_refs(plan, stay)
                encounter, *conditions = (
                    orjson.dumps(_validated(plan, record, i))
                    for record in (
                        _encounter_record(plan, stay, refs),
                        _condition_record(plan, stay, refs),
                        *_hai_records(plan, stay, refs),
                    )
                )
                pairs.append((encounter, b"\n".join(conditions)))
            return orjson.dumps(_validated(plan, build_record(plan, i), i)), pairs

        return checked
    line = json_renderer(plan)
    if not plan.profile.rendered:
        return lambda i: (line(i), _patient_stays_json(plan, i, _sample(plan, i)))
    write, meta_v1 = _patient_writer(plan), _fragments(plan).meta_v1

    count_cdf, hasher, at = _stay_tables(plan).count_cdf, plan.hasher, _COUNT_AT
    at_cell, at_died = _Sample._fields.index("cell"), _Sample._fields.index("died")

    def render(i: int) -> tuple[bytes, _StayLines]:
        s = _sample_tuple(plan, i)  # one sample for the patient and its stays
        patient = write((i,), (s,), (meta_v1,))[0]  # type: ignore[arg-type]
        cell, died = s[at_cell], s[at_died]  # Sample's fields by position (the hot path)
        if died < 0:  # stays()'s own first test, inlined (_stay_count_draw): most patients
            h = hasher.copy()
            h.update(b"stays|%d" % i)
            if int.from_bytes(h.digest()[at : at + 4], "little") < count_cdf[cell][0]:
                return patient, []
        return patient, _patient_stays_json(plan, i, _Sample._make(s))

    return render


def _patient_and_stays(plan: Plan, validate: bool) -> Callable[[int], bytes]:
    """i -> patient #i's line followed by its stays' lines (Encounter, Condition, ...): what
    stdout prints with --encounters."""
    both = _stays_line(plan, validate)

    def lines(i: int) -> bytes:
        patient, pairs = both(i)
        return b"\n".join([patient, *itertools.chain.from_iterable(pairs)])

    return lines


def _live_stay_pairs(plan: Plan, found: list[_LiveStay], validate: bool) -> _StayLines:
    """A patient's living stays as (Encounter, Condition and its HAIs) JSON, as the look-back
    window's stays are written but with meta.lastUpdated the delivery instant."""
    if not found:
        return []
    index = found[0].stay.index
    write, pid, mrn = _stay_writer(plan), patient_id(plan, index), _patient_mrn(plan, index)
    epoch = b'"lastUpdated":"%s"' % plan.last_updated.encode()
    pairs = []
    for ls in found:
        refs = _stay_refs(plan, ls.stay, pid, mrn)
        stamp = _instant(plan, ls.delivered)
        if validate:
            encounter, *conditions = (
                orjson.dumps(
                    _validated(plan, {**r, "meta": {**r["meta"], "lastUpdated": stamp}}, index)
                )
                for r in (
                    _encounter_record(plan, ls.stay, refs),
                    _condition_record(plan, ls.stay, refs),
                    *_hai_records(plan, ls.stay, refs),
                )
            )
            pairs.append((encounter, b"\n".join(conditions)))
            continue
        new = b'"lastUpdated":"%s"' % stamp.encode()
        pair = _with_hais(plan, ls.stay, refs, write(ls.stay, refs))
        pairs.append((pair[0].replace(epoch, new, 1), pair[1].replace(epoch, new)))
    return pairs


def _living_stay_json(plan: Plan, found: _LiveStay) -> tuple[bytes, bytes]:
    """A stay of _living_stays() as a change batch writes it: its Encounter's JSON bytes, and its
    Condition's followed by its HAI Conditions' lines; meta.lastUpdated is the delivery."""
    return _live_stay_pairs(plan, [found], False)[0]


_BATCH = 1_000  # records serialised by one b"\n".join and written by one write()
_BLOCK_MIN = 10_000  # fewer patients render one by one: numpy and its tables would cost more
_NUMPY_BLOCK = 2_000  # patients per numpy block (and chunk) on the bulk path: ~1.1 MB of NDJSON
# with --encounters: a block's ~3,000 stays keep numpy's per-call overhead small (callgrind:
# 3.6 % fewer instructions than 2,000 patients a block), ~5.5 MB of patients' NDJSON a chunk
_STAYS_BLOCK = 10_000


def _ndjson(lines: Iterable[bytes]) -> Iterator[bytes]:
    """Lines as NDJSON chunks of BATCH lines (one join and one write each)."""
    lines = iter(lines)
    while chunk := list(itertools.islice(lines, _BATCH)):
        chunk.append(b"")
        yield b"\n".join(chunk)


def ndjson_chunks(
    plan: Plan,
    lo: int,
    hi: int,
    validate: bool = False,
    tick: Callable[[int], None] | None = None,
) -> Iterator[bytes]:
    """Patients #lo..#hi-1 as NDJSON, BATCH records per chunk (one join, one write each), or
    NUMPY_BLOCK records per chunk sampled and rendered as one numpy block (_ndjson_block) when there
    are BLOCK_MIN or more: the same bytes either way."""
    if validate or not plan.profile.rendered or hi - lo < _BLOCK_MIN:
        line, step = _patient_line(plan, validate), _BATCH
        chunk = lambda a, b: b"".join([line(i) + b"\n" for i in range(a, b)])  # noqa: E731
    else:
        json_renderer(plan)  # its self-check, once
        chunk, step = _ndjson_block(plan), _NUMPY_BLOCK
    for a in range(lo, hi, step):
        b = min(a + step, hi)
        yield chunk(a, b)
        if tick:
            tick(b - a)


# -- the stays' bulk path (--encounters): a block's patients and their stays from one
#    _sample_block. The stays' own draws (one hash per patient) come for the whole block; stays()
#    runs only for the patients who can have one (a candidate admission, or dead); their ids,
#    MRNs and instants are numpy matrices, each resource one bytes format of its template. The
#    same bytes as the one-at-a-time path (tests/test_block.py compares them)


def _stay_count_block(plan: Plan, lo: int, hi: int) -> Any:
    """PatientStayDraws of patients #lo..#hi-1 (as _stream draws them; _stay_count_draw's hash):
    an (hi - lo, fields) uint64 array, a column per field in its order."""
    return _stream_block(plan, _PatientStayDraws, range(lo, hi))


def _block_samples(plan: Plan, b: _Block, rows: Any) -> list[_Sample]:
    """The block's patients at positions `rows` as _Sample (the values _sample gives them)."""
    columns = (b.state, b.zip, b.cell, b.birth, b.gender, b.language, b.organization, b.died)
    values = [c[rows].tolist() for c in (*columns, b.race)]
    cells, out = plan.cells, []
    for state, z, cell, birth, gender, language, org, died, race, draws in zip(
        *values, b.draws[rows].tolist(), strict=True
    ):
        sex = cells[cell][1]
        gender_text = (sex, "other", "unknown")[gender]
        out.append(
            _Sample(
                state, z, cell, sex, birth, gender_text, language, org, died, race, tuple(draws)
            )
        )
    return out


class _CandidateTables(NamedTuple):
    """The stay and HAI tables as numpy arrays, for a block's candidate admissions at once."""

    count_cdf: Any  # (cells, longest) uint64: StayTables.count_cdf, padded above every draw
    death_last: Any  # (2,) uint64, under 65 and 65+: a death draw below it is tied to a stay
    cell_old: Any  # per cell: its age is 65+ (the row of death_last)
    factors: Any  # per hospital: StayTables.factors
    cohort_cuts: Any  # (hospitals, COHORTS) uint64: StayTables.cohort_cuts, 0 where none
    cohort_dx: Any
    mix_cum: Any  # (mixes, longest) uint64: StayTables.mix_cum, padded above every total
    mix_total: Any
    mix_rows: Any  # (mixes, longest) int64
    mu: Any  # per diagnosis
    sigma: Any
    dx_cohort: Any  # per diagnosis: its position in COHORTS, -1 for none
    post_acute: Any  # (2,) uint64
    post_acute_cum: Any
    readmit: Any  # (hospitals, COHORTS + 1) float64: StayTables.readmit, 0 where none
    has_readmit: Any  # per hospital
    month_chance: Any  # per cell
    hai_rates: Any  # (hospitals, HAI kinds) float64: HaiTables.rates


def _padded(rows: Sequence[Sequence[int]], fill: int, dtype: Any) -> Any:
    """Rows of different lengths as one matrix, each row filled out with `fill`."""
    out = np.full((len(rows), max(map(len, rows))), fill, dtype)
    for k, row in enumerate(rows):
        out[k, : len(row)] = row
    return out


@functools.lru_cache(maxsize=8)
def _candidate_tables(plan: Plan) -> _CandidateTables:
    """The plan's CandidateTables (built once per plan, on the stays' bulk path only)."""
    t, hai, hospitals = _stay_tables(plan), _hai_tables(plan), len(plan.hospitals)
    cuts = np.zeros((hospitals, len(_COHORTS)), np.uint64)
    readmit = np.zeros((hospitals, len(_COHORTS) + 1))
    for k, row in t.cohort_cuts.items():
        cuts[k, : len(row)] = row
    for k, rates in t.readmit.items():
        readmit[k] = rates
    has_readmit = np.zeros(hospitals, bool)
    has_readmit[list(t.readmit)] = True
    return _CandidateTables(
        count_cdf=_padded(t.count_cdf, 1 << 32, np.uint64),
        death_last=np.array([cuts[-1] for cuts in t.death_cuts], np.uint64),
        cell_old=np.array([age >= _MEDICARE_AGE for age, _, _ in plan.cells], np.intp),
        factors=np.array(t.factors),
        cohort_cuts=cuts,
        cohort_dx=np.array(t.cohort_dx, np.int64),
        mix_cum=_padded(t.mix_cum, 1 << 63, np.uint64),
        mix_total=np.array([cum[-1] for cum in t.mix_cum], np.uint64),
        mix_rows=_padded(t.mix_rows, 0, np.int64),
        mu=np.array([d.mu for d in t.diagnoses]),
        sigma=np.array([d.sigma for d in t.diagnoses]),
        dx_cohort=np.array([_COHORTS.index(d.cohort) if d.cohort else -1 for d in t.diagnoses]),
        post_acute=np.array(t.post_acute, np.uint64),
        post_acute_cum=np.array(t.post_acute_cum, np.uint64),
        readmit=readmit,
        has_readmit=has_readmit,
        month_chance=np.array(t.month_chance),
        hai_rates=np.array([hai.rates[k] for k in range(hospitals)]),
    )


def _other_block(plan: Plan, c: _CandidateTables, z: Any, age: Any, u32: Any, exclude: Any) -> Any:
    """_other_candidate(...) or exclude, for each candidate (z: its patient's ZIP): another of
    the ZIP's candidates but `exclude`, by weight; `exclude` where none can be drawn or where
    position 0 is (as the `or` of its callers does)."""
    bt = _block_tables(plan)
    cand = bt.hospital_cand[z].astype(np.int64)
    weights = np.diff(bt.hospital_cum[z].astype(np.int64), axis=1, prepend=0)
    weights = np.rint(weights * c.factors[cand]).astype(np.int64)  # round(), half to even
    weights[cand == exclude[:, None]] = 0
    weights[age >= _CHILD_AGE, _CANDIDATES - 1] = 0  # the children's hospital's slot
    running = np.cumsum(weights, axis=1)
    v = _scaled(u32, running[:, -1].astype(np.uint64))
    other = cand[np.arange(len(z)), np.minimum(_bisect_rows(running, v), _CANDIDATES - 1)]
    return np.where((running[:, -1] > 0) & (other != 0), other, exclude)


def _mix_block(c: _CandidateTables, age: Any, female: Any, u: Any) -> Any:
    """_stay_diagnosis from the national mix of the age band and sex, for each candidate."""
    mix = 2 * (np.searchsorted(np.array(_AGE_BANDS), age, "right") - 1) + female
    at = _bisect_rows(c.mix_cum[mix], _scaled(u.diagnosis, c.mix_total[mix]))
    return c.mix_rows[mix, at]


def _diagnosis_block(c: _CandidateTables, hospital: Any, age: Any, female: Any, u: Any) -> Any:
    """_stay_diagnosis for each candidate: an HRRP cohort at the hospital's cuts (65+), else a
    row of the national mix of the age band and sex."""
    cuts = c.cohort_cuts[hospital]
    cohort = (age >= _MEDICARE_AGE) & (u.cohort < cuts[:, -1])
    in_cohort = c.cohort_dx[np.minimum(_bisect_rows(cuts, u.cohort), len(_COHORTS) - 1)]
    return np.where(cohort, in_cohort, _mix_block(c, age, female, u))


def _los_block(c: _CandidateTables, diagnosis: Any, u: Any) -> Any:
    """_los for each candidate: the same float operations in the same order (math.exp itself,
    whose last bit numpy's exp need not share)."""
    exponent = c.mu[diagnosis] + c.sigma[diagnosis] * _los_z_block(u.los)
    days = np.array([math.exp(e) for e in exponent.tolist()])
    return np.clip(np.rint(days * 86400), _MIN_LOS, _MAX_LOS).astype(np.int64)


def _disposition_block(c: _CandidateTables, old: Any, u: Any) -> Any:
    """_disposition for each candidate (old: 65+)."""
    cut = c.post_acute[old.astype(np.intp)]
    below = u.disposition < cut
    again = np.where(below, (u.disposition << np.uint64(32)) // np.maximum(cut, 1), 0)
    at = np.searchsorted(c.post_acute_cum, _scaled(again, c.post_acute_cum[-1]), "right")
    return np.where(below, 1 + at, 0)


def _readmitted_block(
    c: _CandidateTables, cell: Any, hospital: Any, dx: Any, old: Any, u: Any
) -> Any:
    """_readmitted for each candidate: the same float operations in the same order."""
    cohort = c.dx_cohort[dx]
    rate = c.readmit[hospital, np.where((cohort >= 0) & old, cohort, len(_COHORTS))]
    chance = c.month_chance[cell]
    p = np.maximum(0.0, (rate - chance) / (1.0 - chance))
    return c.has_readmit[hospital] & (u.readmitted < np.minimum(np.rint(p * 4294967296.0), 1 << 32))


def _infected_block(plan: Plan, c: _CandidateTables, stays: _Stay) -> Any:
    """Whether _hai_draw finds an infection in each candidate stay (`stays`: columns, all
    discharged alive), with the same float operations in the same order."""
    at_risk_from = (stays.admitted // 86400 + _HAI_ONSET_DAY - 1) * 86400
    risk = stays.discharged - at_risk_from
    kinds = c.hai_rates.shape[1]
    happens = _stream_block(plan, _HaiDraws, stays.index.tolist(), stays.k.tolist())[:, :kinds]
    p = c.hai_rates[stays.hospital] * risk[:, None] / 86400
    return (risk > 0) & (happens < p * 4294967296.0).any(axis=1)


def _tied(c: _CandidateTables, b: _Block, u: Any) -> Any:
    """Which of a block's patients (u: their PatientStayDraws) die with a stay tied to the
    death (in hospital, or after a cohort stay: _death_stay's kinds below the last cut)."""
    return (b.died >= 0) & (u[:, 1] < c.death_last[c.cell_old[b.cell]])


def _candidate_columns(
    plan: Plan, c: _CandidateTables, b: _Block, u: Any, lo: int
) -> tuple[Any, _Stay, Any]:
    """The candidate admissions in the window (from the birth) of a block's patients (#lo on)
    whose death is tied to no stay, as stays() draws them: (their block positions, the stays as
    columns, and which of them may change in stays(): readmitted, or infected)."""
    n = np.minimum(_bisect_rows(c.count_cdf[b.cell], u[:, 0]), _READMISSION)
    n[_tied(c, b, u)] = 0  # their stays come from stays()
    rows = np.repeat(np.arange(len(n)), n)
    k = np.arange(len(rows)) - np.repeat(np.cumsum(n) - n, n)
    d = _stream_block(plan, _StayDraws, (rows + lo).tolist(), k.tolist())
    span = (d[:, 0] * np.uint64(plan.window_span) >> np.uint64(32)).astype(np.int64)
    admitted = plan.window_start + span
    valid = admitted >= np.maximum(plan.window_start, (b.birth[rows] - _EPOCH_DAY) * 86400)
    rows, k, admitted, d = rows[valid], k[valid], admitted[valid], d[valid]
    u = _StayDraws._make(d.T)
    age = _age_column(b.birth[rows], admitted)
    org = b.organization[rows].astype(np.int64)
    other = _other_block(plan, c, b.zip[rows], age, u.hospital, org)
    hospital = np.where(u.own < _stay_tables(plan).own_cut, org, other)
    dx = _diagnosis_block(c, hospital, age, b.female[rows], u)
    return rows, *_stay_columns(
        plan, c, b, rows, _Stay(rows + lo, k, admitted, -1, hospital, dx, -1), u
    )


def _stay_columns(
    plan: Plan, c: _CandidateTables, b: _Block, rows: Any, stays: _Stay, u: Any
) -> tuple[_Stay, Any, Any]:
    """Stays whose patient, number, admission, hospital and diagnosis are set (columns; rows:
    block positions), completed as _admitted_stay does with the stays' draws `u`; with whether
    each is readmitted, and whether it has an infection (_hai_draw)."""
    age = _age_column(b.birth[rows], stays.admitted)
    old = age >= _MEDICARE_AGE
    stays = stays._replace(
        discharged=stays.admitted + _los_block(c, stays.diagnosis, u),
        disposition=_disposition_block(c, old, u),
    )
    readmitted = _readmitted_block(c, b.cell[rows], stays.hospital, stays.diagnosis, old, u)
    return stays, readmitted, _infected_block(plan, c, stays)


def _readmission_columns(
    plan: Plan, c: _CandidateTables, b: _Block, rows: Any, first: _Stay
) -> tuple[_Stay, Any, Any]:
    """_readmission of each stay of `first` (columns of living patients' stays numbered below
    DEATH_STAY; rows: block positions), with the same float operations in the same order: the
    readmissions, whether each is readmitted in turn, and whether it has an infection."""
    k = first.k + _READMISSION
    u = _StayDraws._make(_stream_block(plan, _StayDraws, first.index.tolist(), k.tolist()).T)
    gap = [round(30 * 86400 * (x / 4294967296.0) ** _READMIT_SKEW) for x in u.admitted.tolist()]
    admitted = first.discharged + np.maximum(3600, np.array(gap, np.int64))
    age = _age_column(b.birth[rows], admitted)
    other = _other_block(plan, c, b.zip[rows], age, u.hospital, first.hospital)
    hospital = np.where(u.own >= _cut(_READMIT_SAME_HOSPITAL), other, first.hospital)
    same = (c.dx_cohort[first.diagnosis] >= 0) & (u.cohort < _cut(_READMIT_SAME_COHORT))
    dx = np.where(same, first.diagnosis, _mix_block(c, age, b.female[rows], u))
    return _stay_columns(plan, c, b, rows, _Stay(first.index, k, admitted, -1, hospital, dx, -1), u)


def _take(stays: _Stay, which: Any) -> _Stay:
    """The stays (columns) at `which` (a mask or positions)."""
    return _Stay(*(column[which] for column in stays[:-1]))


def _block_stays(plan: Plan, b: _Block, u: Any, lo: int) -> list[_Stay]:
    """The stays of a block's patients (#lo on; u: their PatientStayDraws), in patient and time
    order, as stays() makes them. From numpy columns for a patient whose death (if any) is tied
    to no stay and whose stays are its candidate admissions and (alive) their readmissions, none
    infected, no two overlapping: most; stays() for the others with a candidate or a death."""
    c = _candidate_tables(plan)
    rows, found, readmitted, infected = _candidate_columns(plan, c, b, u, lo)
    hi = np.where(b.died < 0, plan.window_start + plan.window_span - 1, b.died)
    kept = found.discharged < hi[rows]
    by_stays = _tied(c, b, u)
    by_stays[rows[kept & (infected | (readmitted & (b.died[rows] >= 0)))]] = True
    rows, found, readmitted = rows[kept], _take(found, kept), readmitted[kept]
    parts = [(rows, found)]
    chain = readmitted & ~by_stays[rows]
    while chain.any():  # the readmissions of the living, up to READMISSION_LIMIT
        rows, first = rows[chain], _take(found, chain)
        found, readmitted, infected = _readmission_columns(plan, c, b, rows, first)
        by_stays[rows[infected]] = True
        kept = (found.discharged <= hi[rows]) & (found.admitted < hi[rows])
        chain = kept & readmitted & (found.k < _READMISSION_LIMIT)
        parts.append((rows[kept], _take(found, kept)))
    rows = np.concatenate([r for r, _ in parts])
    found = _Stay(
        *(np.concatenate(columns) for columns in zip(*(f[:-1] for _, f in parts), strict=True))
    )
    order = np.lexsort((found.admitted, rows))
    at, start, end = rows[order], found.admitted[order], found.discharged[order]
    by_stays[at[1:][(at[1:] == at[:-1]) & (start[1:] <= end[:-1])]] = True  # an overlap
    mine = order[~by_stays[at]]
    return _merged(plan, b, u, lo, (rows[mine].tolist(), _take(found, mine)), by_stays)


def _merged(
    plan: Plan, b: _Block, u: Any, lo: int, mine: tuple[list[int], _Stay], by_stays: Any
) -> list[_Stay]:
    """The stays of `mine` (their block positions, and columns, in patient and time order)
    with those of stays() for the block's patients marked in by_stays, in patient order."""
    whose, found = mine
    numbered = list(zip(*(column.tolist() for column in found[:-1]), itertools.repeat(())))
    out, done, make = [], 0, _PatientStayDraws._make
    others = np.flatnonzero(by_stays)
    for r, s, draws in zip(
        others.tolist(), _block_samples(plan, b, others), u[others].tolist(), strict=True
    ):
        while done < len(whose) and whose[done] < r:
            out.append(_Stay._make(numbered[done]))
            done += 1
        out += stays(plan, lo + r, s, make(draws))
    out += map(_Stay._make, numbered[done:])
    return out


def _stay_format(
    record: Callable[[Plan, Any], dict[str, Any]], fields: Any, plan: Plan
) -> tuple[bytes, Callable[[tuple[bytes, ...]], tuple[bytes, ...]]]:
    """A stay resource's bytes as one %-format (_splicer's template, %s where each field's JSON
    goes) and the getter that orders values given in `fields` order as the template needs."""
    marks = fields._make("\x00" + n for n in fields._fields)
    head, parts = _split_template(record(plan, marks), fields._fields)
    escaped = [after.replace(b"%", b"%%") for _, after in parts]
    fmt = head.replace(b"%", b"%%") + b"".join(b"%s" + after for after in escaped)
    return fmt, operator.itemgetter(*(k for k, _ in parts))


def _quoted(prefix: bytes, body: Any, suffix: bytes) -> list[bytes]:
    """Each row of an (n, w) ASCII uint8 matrix between prefix and suffix, as bytes."""
    n, w = body.shape
    out = np.empty((n, len(prefix) + w + len(suffix)), np.uint8)
    out[:, : len(prefix)] = np.frombuffer(prefix, np.uint8)
    out[:, len(prefix) : len(prefix) + w] = body
    out[:, len(prefix) + w :] = np.frombuffer(suffix, np.uint8)
    return out.view(f"S{out.shape[1]}").ravel().tolist()  # no NUL in ASCII text: none stripped


@functools.lru_cache(maxsize=8)
def _stays_json_block(plan: Plan) -> Callable[[list[_Stay]], _StayLines]:
    """stays (of any patients) -> their (Encounter, Condition and its HAIs) JSON pairs, as
    _patient_stays_json writes them: the ids, MRNs and instants of all at once (numpy), then
    per stay one bytes format a resource."""
    t, parts = _stay_tables(plan), _stay_parts(plan)
    encounter, in_encounter = _stay_format(_encounter, _EncounterFields, plan)
    condition, in_condition = _stay_format(_condition, _ConditionFields, plan)
    numbers = [b'-%02d"' % (k + 1) for k in range(_MAX_STAYS)]  # the identifier's <MRN>-<k + 1>
    dispositions, codes, providers, status = parts

    def write(found: list[_Stay]) -> _StayLines:
        if not found:
            return []
        index = np.array([stay.index for stay in found], np.uint64)
        # what _stay_uuid maps: index x MAX_STAYS + k (k < MAX_STAYS in the look-back window)
        serial = index * np.uint64(_MAX_STAYS) + np.array([stay.k for stay in found], np.uint64)
        eids, cids = _uuid_block(serial, *t.encounter_keys), _uuid_block(serial, *t.condition_keys)
        pids = _uuid_block(index, plan.uuid_add, plan.uuid_mul)
        mrns = _quoted(b'"', _mrn_block(index, plan.mrn_add, plan.mrn_mul), b"")
        e_ids, c_ids = _quoted(b'"', eids, b'"'), _quoted(b'"', cids, b'"')
        e_refs, c_refs = _quoted(b'"Encounter/', eids, b'"'), _quoted(b'"Condition/', cids, b'"')
        subjects = _quoted(b'"Patient/', pids, b'"')
        starts, ends = (
            _quoted(b'"', _iso_instant_block(np.array(column, np.int64)), b'"')
            for column in ([s.admitted for s in found], [s.discharged for s in found])
        )
        pairs = []
        for j, stay in enumerate(found):
            k, disposition = stay.k, stay.disposition
            pair = (
                encounter
                % in_encounter(
                    (
                        e_ids[j],
                        mrns[j] + numbers[k],
                        subjects[j],
                        starts[j],
                        ends[j],
                        c_refs[j],
                        dispositions[disposition],
                        providers[stay.hospital],
                    )
                ),
                condition
                % in_condition(
                    (c_ids[j], status[disposition >= 0], codes[stay.diagnosis])
                    + (subjects[j], e_refs[j], starts[j])
                ),
            )
            if _hai_onsets(plan, stay):  # a few: their Conditions after the principal one
                ids = (pids[j], mrns[j][1:], eids[j], cids[j])
                refs = _StayRefs(*(bytes(x).decode() for x in ids))
                pair = _with_hais(plan, stay, refs, pair)
            pairs.append(pair)
        return pairs

    return write


@functools.lru_cache(maxsize=8)
def _stays_block(plan: Plan) -> Callable[[int, int], tuple[bytes, _StayLines]]:
    """(lo, hi) -> (patients #lo..#hi-1 as NDJSON, their stays' JSON pairs in patient and time
    order), as _stays_line gives them one by one: one _sample_block serves the patients and
    their stays; stays() runs for the patients with a candidate admission, or dead."""
    _ndjson_block(plan)  # its self-check, once
    rows, write = _ndjson_rows(plan), _stays_json_block(plan)

    def block(lo: int, hi: int) -> tuple[bytes, _StayLines]:
        b, u = _sample_block(plan, lo, hi), _stay_count_block(plan, lo, hi)
        return rows(b, lo), write(_block_stays(plan, b, u, lo))

    return block


def _stays_batches(
    plan: Plan, lo: int, hi: int, validate: bool = False
) -> Iterator[tuple[range, bytes, _StayLines]]:
    """Patients #lo..#hi-1 with their stays, a batch at a time: (its indexes, the patients as
    NDJSON, their stays' JSON pairs). BATCH patients one by one (_stays_line), or STAYS_BLOCK as
    one block (_stays_block) when there are BLOCK_MIN or more: the same bytes either way."""
    if validate or not plan.profile.rendered or hi - lo < _BLOCK_MIN:
        both, step = _stays_line(plan, validate), _BATCH

        def chunk(a: int, b: int) -> tuple[bytes, _StayLines]:
            lines, pairs = [], []
            for i in range(a, b):
                patient, mine = both(i)
                lines.append(patient + b"\n")
                pairs.extend(mine)
            return b"".join(lines), pairs

    else:
        json_renderer(plan)  # the self-checks, once
        _stay_writer(plan)
        chunk, step = _stays_block(plan), _STAYS_BLOCK
    for a in range(lo, hi, step):
        b = min(a + step, hi)
        yield range(a, b), *chunk(a, b)


# ---------------------------------------------------------------------------------------------
# The bronze layer: formats (how records become files) x stores (where bytes go), and the run
# ---------------------------------------------------------------------------------------------

_MANIFEST = "_manifest.json"  # Athena and Glue skip names starting with "_" or "."
_FOLDERS = ("patient", "organization")  # the layer's data folders, one per resource type
# An unfinished run's bookkeeping (identity, done markers, local temp files); readers skip "_"
# names, and the run that completes the layer removes it.
_RUN_DIR = "_run"
_RUN_IDENTITY = f"{_RUN_DIR}/identity.json"  # the run's generator block, written before any data
_RUN_DONE = f"{_RUN_DIR}/done"  # one marker per finished unit: _run/done/<unit:06d>
_RUN_TMP = f"{_RUN_DIR}/tmp"  # local temp files: never inside a folder that readers glob
_S3_MAX_ATTEMPTS = 5  # botocore "standard" retries of transient errors per request
_S3_PROBE_ATTEMPTS = 2  # the bucket probe before any work fails faster
# A silent endpoint (stalled, SIGSTOPped) costs a request at most attempts x (connect + read)
# plus the retry back-off: 5 x (5 + 15) + <1 s ~ 101 s, so a stall ends a run within ~2 min
# (the probe: 2 x 20 + <1 s). docs/bronze.md derives it; tests lower these module constants.
_S3_CONNECT_TIMEOUT = 5  # seconds to open a connection
_S3_READ_TIMEOUT = 15  # seconds any socket read (or write) may wait; a PUT's reply comes in ~1 s
# A server that ignores If-None-Match (rclone serve s3 1.75 does; AWS S3 and MinIO honour it) gets
# a write-then-read-back claim instead: racing claims are told apart if each run's check and its
# PUT lie closer together than this (docs/bronze.md, "Two runs, one folder").
_S3_CLAIM_SETTLE = 1.0  # seconds between the claim's PUT and its read-back
_GZIP_CONTENT_TYPE = "application/gzip"
_Tick = Callable[[int], None] | None  # progress callback: n more patients done
_PLAIN_RUN, _SNAPSHOT_RUN, _BATCH_RUN = (
    "plain",
    "snapshot",
    "batch",
)  # what a run writes: Bronze.mode


@dataclass(frozen=True)
class Bronze:
    """Where and how a run writes (not what: that is the Plan); picklable for worker processes."""

    root: str  # a local directory or s3://bucket/prefix: the layer root
    count: int
    start: int = 0
    format: str = _DEFAULT_FORMAT
    gzip: bool = False
    gzip_level: int = _DEFAULT_GZIP_LEVEL
    records_per_file: int = _DEFAULT_RECORDS_PER_FILE
    validate: bool = False
    concurrency: int = _DEFAULT_CONCURRENCY
    endpoint_url: str | None = None
    token: str = ""  # tags this run's temp files, so an interrupted run can remove them
    window: Window | None = None  # a living population: count becomes the indexes at its until

    @property
    def mode(self) -> str:
        """What the run writes, decided here only: PLAIN_RUN (no window), SNAPSHOT_RUN (a window's
        state at its until, a layer like a plain one) or BATCH_RUN (a window's changes since)."""
        if self.window is None:
            return _PLAIN_RUN
        return _SNAPSHOT_RUN if self.window.since is None else _BATCH_RUN


@dataclass(frozen=True)
class _UnitResult:
    """What writing one unit (an index range) produced."""

    unit: int
    records: int
    files: int
    bytes: int
    failed: int = 0
    first_failure: str | None = None
    deleted: int = 0  # a change batch's deletions
    stays: tuple[int, ...] = (0, 0)  # a change batch's Encounters and Conditions


def _covering(plan: Plan, spec: Bronze) -> Bronze:
    """The spec as a run writes it: with a window, its count is the indexes that exist at the
    window's until (population_size) and it starts at #0; without, unchanged."""
    w = spec.window
    if w is None:
        return spec
    return replace(spec, count=_population_size(plan, w.epoch_count, w.until), start=0)


def _unit_count(spec: Bronze) -> int:
    """How many work units the run has: ceil(count / records_per_file)."""
    return -(-spec.count // spec.records_per_file)


def _unit_range(spec: Bronze, unit: int) -> range:
    """The indexes of unit #unit (0-based); NDJSON file n = unit + 1 holds exactly these."""
    lo = spec.start + unit * spec.records_per_file
    return range(lo, min(lo + spec.records_per_file, spec.start + spec.count))


def _shard_units(spec: Bronze, shard: tuple[int, int]) -> range:
    """Units of shard K/N: every N-th unit from K (round robin keeps shards within one unit)."""
    k, n = shard
    return range(k, _unit_count(spec), n)


def _suffix(spec: Bronze) -> str:
    return ".gz" if spec.gzip else ""


def _gzip_chunks(chunks: Iterable[bytes], level: int) -> Iterator[bytes]:
    """Stream gzip (mtime 0, no name: the same input gives the same bytes)."""
    z = zlib.compressobj(level, zlib.DEFLATED, 31)
    for chunk in chunks:
        out = z.compress(chunk)
        if out:
            yield out
    yield z.flush()


# -- formats: one entry per --format; nothing else compares format names


@dataclass(frozen=True)
class _Format:
    """An output format: its content type, how a unit of patients and the organizations
    become files, and what the manifest lists."""

    name: str
    content_type: str  # of an uncompressed file
    write_unit: Callable[[Plan, Bronze, _Store, int, _Tick], tuple[int, int]]  # -> files, bytes
    organization_files: Callable[[Plan, Bronze], list[tuple[str, bytes]]]
    manifest_output: Callable[[Plan, Bronze], list[dict[str, Any]]]  # url: relative key
    rolls_over: bool  # records_per_file splits files (it always splits work units)
    batch_files: Callable[[Plan, Bronze, int, list[Version]], list[_BatchFile]]
    batch_output: Callable[[Bronze, Mapping[int, Any]], dict[str, list[Any]]]  # _BatchCounts


def _content_type(spec: Bronze) -> str:
    return _GZIP_CONTENT_TYPE if spec.gzip else _FORMATS[spec.format].content_type


def _ndjson_key(spec: Bronze, resource_type: str, n: int) -> str:
    """FHIR Bulk Data naming: <folder>/<Type>.<n>.ndjson[.gz], n from 1."""
    return f"{resource_type.lower()}/{resource_type}.{n:06d}.ndjson{_suffix(spec)}"


def _organization_lines(plan: Plan) -> list[bytes]:
    version = plan.fhir_version.organization
    return [orjson.dumps(version(org)) + b"\n" for org in plan.organizations]


def _unit_patients(plan: Plan, spec: Bronze, indexes: range) -> Iterator[tuple[int, bytes]]:
    """(index, JSON) of a unit's patients: the plan's records, or with a window each patient's
    latest version at its until (the deleted left out)."""
    w = spec.window
    if w is None:
        line = _patient_line(plan, spec.validate)
        return ((i, line(i)) for i in indexes)
    versions = _window_versions(plan, w, indexes.start, indexes.stop)
    line = _version_line(plan, spec.validate)
    return ((v.index, line(v)) for v in versions)


def _unit_chunks(plan: Plan, spec: Bronze, indexes: range, tick: _Tick) -> Iterator[bytes]:
    """A unit's patients as NDJSON chunks of BATCH lines."""
    if spec.window is None:  # the hot path
        yield from ndjson_chunks(plan, indexes.start, indexes.stop, spec.validate, tick)
        return
    yield from _ndjson(line for _, line in _unit_patients(plan, spec, indexes))
    if tick:
        tick(len(indexes))


def _unit_records(plan: Plan, spec: Bronze, unit: int) -> int:
    """How many patients unit #unit writes: its indexes, less a window's deleted joiners."""
    indexes, w = _unit_range(spec, unit), spec.window
    if w is None:
        return len(indexes)
    dyn, until = _dynamics(plan), _seconds(w.until)
    gone = 0
    for i in range(max(indexes.start, w.epoch_count), indexes.stop):
        deleted = _start(plan, dyn, w.epoch_count, i).deleted
        gone += deleted is not None and deleted <= until
    return len(indexes) - gone


# -- inpatient stays (--encounters): a unit's stays go to encounter/ and condition/ beside its
#    patients, in the same format; the run, the stores and the resume logic are unchanged

_STAY_TYPES = ("Encounter", "Condition")  # resource types of a stay, in StayLines order
_STAY_FOLDERS = tuple(kind.lower() for kind in _STAY_TYPES)


def _stays_on(plan: Plan) -> bool:
    return bool(plan.options.get("encounters"))


def _window_patients_and_stays(
    plan: Plan, w: Window, indexes: range, validate: bool
) -> Iterator[tuple[int, bytes, _StayLines]]:
    """A snapshot's patients in [indexes): (index, its latest version's JSON, its stays: those
    of the epoch's look-back window as the epoch layer has them, then those after the epoch
    delivered by the snapshot's until)."""
    line, both = _version_line(plan, validate), _stays_line(plan, validate)
    live = _window_stays(plan, w, indexes.start, indexes.stop)
    for v in snapshot(plan, w.epoch_count, w.until, indexes.start, indexes.stop):
        pairs = both(v.index)[1] if v.index < w.epoch_count else []
        yield v.index, line(v), pairs + _live_stay_pairs(plan, live.get(v.index, []), validate)


def _unit_with_stays(
    plan: Plan, spec: Bronze, indexes: range, tick: _Tick
) -> tuple[Iterator[tuple[Sequence[int], bytes]], _StayLines]:
    """A unit's patients in batches, each (their indexes, their lines as an NDJSON chunk), and
    the list their stays fill as the batches are consumed (one sample per patient serves both;
    _stays_batches); with a window, its snapshot's patients and stays."""
    pairs: _StayLines = []
    if spec.window is not None:
        found = _window_patients_and_stays(plan, spec.window, indexes, spec.validate)

        def window_batches() -> Iterator[tuple[Sequence[int], bytes]]:
            while chunk := list(itertools.islice(found, _BATCH)):
                pairs.extend(itertools.chain.from_iterable(mine for *_, mine in chunk))
                yield [i for i, *_ in chunk], b"".join(line + b"\n" for _, line, _ in chunk)
            if tick:
                tick(len(indexes))

        return window_batches(), pairs

    def batches() -> Iterator[tuple[Sequence[int], bytes]]:
        for ids, chunk, mine in _stays_batches(plan, indexes.start, indexes.stop, spec.validate):
            pairs.extend(mine)
            yield ids, chunk
            if tick:
                tick(len(ids))

    return batches(), pairs


def _ndjson_stays_unit(
    plan: Plan, spec: Bronze, store: _Store, unit: int, tick: _Tick
) -> tuple[int, int]:
    """Unit u with stays: patient/Patient.<u+1>.ndjson, then encounter/Encounter.<u+1>.ndjson
    and condition/Condition.<u+1>.ndjson (written even when empty: the manifest lists them)."""
    batches, pairs = _unit_with_stays(plan, spec, _unit_range(spec, unit), tick)
    chunks: Iterable[bytes] = (chunk for _, chunk in batches)
    if spec.gzip:
        chunks = _gzip_chunks(chunks, spec.gzip_level)
    size = store.write(_ndjson_key(spec, "Patient", unit + 1), chunks, _content_type(spec))
    for n, kind in enumerate(_STAY_TYPES):  # in chunks: no copy of the whole file at once
        chunks = _ndjson(pair[n] for pair in pairs)
        if spec.gzip:
            chunks = _gzip_chunks(chunks, spec.gzip_level)
        size += store.write(_ndjson_key(spec, kind, unit + 1), chunks, _content_type(spec))
    return 1 + len(_STAY_TYPES), size


def _json_stays_unit(
    plan: Plan, spec: Bronze, store: _Store, unit: int, tick: _Tick
) -> tuple[int, int]:
    """Unit u with stays: a file per patient, then one per Encounter and per Condition
    (encounter/encounter_<id>.json, condition/condition_<id>.json)."""
    batches, pairs = _unit_with_stays(plan, spec, _unit_range(spec, unit), tick)
    suffix, content_type, files, size = _suffix(spec), _content_type(spec), 0, 0
    for indexes, chunk in batches:
        for i, line in zip(indexes, chunk.split(b"\n")[:-1], strict=True):
            files += 1
            key = f"patient/{_patient_file_name(patient_id(plan, i))}{suffix}"
            size += store.write(key, _json_file(spec, line), content_type)
        for pair in pairs:
            for lines, folder in zip(pair, _STAY_FOLDERS, strict=True):
                for data in lines.split(b"\n"):  # a Condition and its stay's HAIs
                    files += 1
                    rid = data[data.index(b'"id":"') + 6 :].split(b'"', 1)[0].decode()
                    key = f"{folder}/{folder}_{rid}.json{suffix}"
                    size += store.write(key, _json_file(spec, data), content_type)
        pairs.clear()
    return files, size


def _json_file(spec: Bronze, line: bytes) -> bytes:
    data = line + b"\n"
    return zlib.compress(data, spec.gzip_level, wbits=31) if spec.gzip else data


def _stays_manifest(spec: Bronze, per_unit: bool) -> list[dict[str, Any]]:
    """The manifest's stay entries: per NDJSON file (like the patients'), or per folder. They
    carry no count (optional in Bulk Data): counting would take a second pass over the run."""
    if not per_unit:
        return [{"type": kind, "url": f"{kind.lower()}/"} for kind in _STAY_TYPES]
    return [
        {"type": kind, "url": _ndjson_key(spec, kind, u + 1)}
        for kind in _STAY_TYPES
        for u in range(_unit_count(spec))
    ]


def _ndjson_unit(
    plan: Plan, spec: Bronze, store: _Store, unit: int, tick: _Tick
) -> tuple[int, int]:
    """Unit u is the file patient/Patient.<u+1>.ndjson, one resource per line."""
    if _stays_on(plan):
        return _ndjson_stays_unit(plan, spec, store, unit, tick)
    chunks: Iterable[bytes] = _unit_chunks(plan, spec, _unit_range(spec, unit), tick)
    if spec.gzip:
        chunks = _gzip_chunks(chunks, spec.gzip_level)
    return 1, store.write(_ndjson_key(spec, "Patient", unit + 1), chunks, _content_type(spec))


def _ndjson_organizations(plan: Plan, spec: Bronze) -> list[tuple[str, bytes]]:
    return [(_ndjson_key(spec, "Organization", 1), b"".join(_organization_lines(plan)))]


def _ndjson_manifest(plan: Plan, spec: Bronze) -> list[dict[str, Any]]:
    """One entry per file, as the Bulk Data manifest has it (url relative to the manifest)."""
    output = [
        {
            "type": "Patient",
            "url": _ndjson_key(spec, "Patient", u + 1),
            "count": _unit_records(plan, spec, u),
        }
        for u in range(_unit_count(spec))
    ]
    output.append(
        {
            "type": "Organization",
            "url": _ndjson_key(spec, "Organization", 1),
            "count": len(plan.organizations),
        }
    )
    return output + (_stays_manifest(spec, per_unit=True) if _stays_on(plan) else [])


def _json_unit(plan: Plan, spec: Bronze, store: _Store, unit: int, tick: _Tick) -> tuple[int, int]:
    """One compact single-line file per patient, named exactly as suggested_s3_key() names it."""
    if _stays_on(plan):
        return _json_stays_unit(plan, spec, store, unit, tick)
    indexes = _unit_range(spec, unit)
    suffix, total, files = _suffix(spec), 0, 0
    content_type = _content_type(spec)
    for files, (i, line) in enumerate(_unit_patients(plan, spec, indexes), 1):  # noqa: B007
        data = line + b"\n"
        if spec.gzip:
            data = zlib.compress(data, spec.gzip_level, wbits=31)
        key = f"patient/{_patient_file_name(patient_id(plan, i))}{suffix}"
        total += store.write(key, data, content_type)
        if tick and files % _BATCH == 0:
            tick(_BATCH)
    if tick:
        tick(len(indexes) - files + files % _BATCH)
    return files, total


def _json_organizations(plan: Plan, spec: Bronze) -> list[tuple[str, bytes]]:
    return [
        (f"organization/organization_{org['id']}.json{_suffix(spec)}", data)
        for org, data in zip(plan.organizations, _organization_lines(plan), strict=True)
    ]


def _json_manifest(plan: Plan, spec: Bronze) -> list[dict[str, Any]]:
    """Deviation from Bulk Data: one entry per resource type, whose url is its folder."""
    return [
        {
            "type": "Patient",
            "url": "patient/",
            "count": sum(_unit_records(plan, spec, u) for u in range(_unit_count(spec)))
            if spec.window
            else spec.count,
        },
        {
            "type": "Organization",
            "url": "organization/",
            "count": len(plan.organizations),
        },
        *(_stays_manifest(spec, per_unit=False) if _stays_on(plan) else []),
    ]


# -- change batches (a window with since): appended under cdc/, never over an earlier object

_CDC_MANIFESTS = "cdc/_manifests"  # one manifest per batch: <since>_<until>.json, written last
_CDC_RUN = "cdc/_run"  # a batch's identity while it is being written


def _stamp(dt: datetime) -> str:
    """A compact UTC time for keys: 20260301T000000Z (with .ffffff when it has a fraction)."""
    fraction = f".{dt.microsecond:06d}" if dt.microsecond else ""
    return dt.strftime("%Y%m%dT%H%M%S") + fraction + "Z"


def _from_stamp(stamp: str) -> datetime:
    """The time of a _stamp(); ValueError if it is not one."""
    fmt = "%Y%m%dT%H%M%S.%fZ" if "." in stamp else "%Y%m%dT%H%M%SZ"
    return datetime.strptime(stamp, fmt).replace(tzinfo=UTC)


def _batch_window(name: str) -> tuple[datetime, datetime]:
    """(since, until) of a batch named <since>_<until>[.json]; ValueError if it is not one."""
    since, sep, until = name.removesuffix(".json").partition("_")
    if not sep:
        raise ValueError(f"{name!r} is not <since>_<until>.json")
    return _from_stamp(since), _from_stamp(until)


def _batch_name(spec: Bronze) -> str:
    """The batch's name, <since>_<until>: every key of the batch starts with it in its folder."""
    w = spec.window
    assert w is not None and w.since is not None
    return f"{_stamp(w.since)}_{_stamp(w.until)}"


def _batch_folder(spec: Bronze, deleted: bool) -> str:
    """cdc/patient/ or cdc/patient_deleted/, Hive-partitioned by the delivery (until) date."""
    assert spec.window is not None
    day = spec.window.until.date().isoformat()
    return f"cdc/patient{'_deleted' if deleted else ''}/ingest_date={day}"


def _batch_key(spec: Bronze, deleted: bool, name: str) -> str:
    return f"{_batch_folder(spec, deleted)}/{_batch_name(spec)}.{name}{_suffix(spec)}"


class _BatchFile(NamedTuple):
    """One file of a change batch: its key, bytes (uncompressed), lines, and whether it holds
    deletions; and its resource type (Encounter, Condition: a batch's stays)."""

    key: str
    data: bytes
    lines: int
    deleted: bool
    resource: str = "Patient"


def _ndjson_batch_files(
    plan: Plan, spec: Bronze, unit: int, versions: list[Version]
) -> list[_BatchFile]:
    """A unit's new versions as <name>.Patient.<u+1>.ndjson, its deletions (Bulk Data: one
    transaction Bundle per line) as <name>.Bundle.<u+1>.ndjson; no file for none."""
    files, line = [], _version_line(plan, spec.validate)
    for deleted, kind in ((False, "Patient"), (True, "Bundle")):
        lines = [line(v) for v in versions if (v.change == "delete") == deleted]
        if lines:
            key = _batch_key(spec, deleted, f"{kind}.{unit + 1:06d}.ndjson")
            files.append(_BatchFile(key, b"\n".join([*lines, b""]), len(lines), deleted))
    return files


def _json_batch_files(
    plan: Plan, spec: Bronze, unit: int, versions: list[Version]
) -> list[_BatchFile]:
    """A file per version: <name>.patient_<id>_v<k>.json, deletions <name>.delete_<id>_v<k>.json
    (a duplicate delivery within one batch is the same object)."""
    files, line = {}, _version_line(plan, spec.validate)
    for v in versions:
        deleted = v.change == "delete"
        name = f"{'delete' if deleted else 'patient'}_{patient_id(plan, v.index)}_v{v.number}.json"
        key = _batch_key(spec, deleted, name)
        files[key] = _BatchFile(key, line(v) + b"\n", 1, deleted)
    return list(files.values())


def _stay_batch_key(spec: Bronze, kind: str, name: str) -> str:
    """cdc/encounter/ or cdc/condition/ (kind: Encounter, Condition), as _batch_key."""
    assert spec.window is not None
    day = spec.window.until.date().isoformat()
    return f"cdc/{kind.lower()}/ingest_date={day}/{_batch_name(spec)}.{name}{_suffix(spec)}"


def _batch_stay_files(spec: Bronze, unit: int, pairs: _StayLines) -> list[_BatchFile]:
    """A unit's stays delivered in the batch: NDJSON <name>.Encounter.<u+1>.ndjson and
    <name>.Condition.<u+1>.ndjson (principal Conditions and HAIs; no file for none), or per-file
    JSON <name>.encounter_<id>.json and <name>.condition_<id>.json."""
    files = []
    for n, kind in enumerate(_STAY_TYPES):
        lines = [line for pair in pairs for line in pair[n].split(b"\n")]
        if not lines:
            continue
        if _FORMATS[spec.format].rolls_over:
            key = _stay_batch_key(spec, kind, f"{kind}.{unit + 1:06d}.ndjson")
            files.append(_BatchFile(key, b"\n".join([*lines, b""]), len(lines), False, kind))
            continue
        for line in lines:
            rid = line[line.index(b'"id":"') + 6 :].split(b'"', 1)[0].decode()
            key = _stay_batch_key(spec, kind, f"{kind.lower()}_{rid}.json")
            files.append(_BatchFile(key, line + b"\n", 1, False, kind))
    return files


_BatchCounts = tuple[int, int, int, int]  # a unit's versions, deletions, Encounters, Conditions


def _ndjson_batch_output(spec: Bronze, counts: Mapping[int, _BatchCounts]) -> dict[str, list[Any]]:
    """The manifest's output and deleted: one entry per file, url relative to the layer root
    (the Patient files, then the Encounter and Condition files of a batch with stays)."""
    out: dict[str, list[Any]] = {"output": [], "deleted": []}
    for unit in sorted(counts):
        for n, deleted, kind in (
            (counts[unit][0], False, "Patient"),
            (counts[unit][1], True, "Bundle"),
        ):
            if n:
                key = _batch_key(spec, deleted, f"{kind}.{unit + 1:06d}.ndjson")
                out["deleted" if deleted else "output"].append(
                    {"type": kind, "url": key, "count": n}
                )
    for k, kind in enumerate(_STAY_TYPES, 2):
        for unit in sorted(counts):
            if counts[unit][k]:
                key = _stay_batch_key(spec, kind, f"{kind}.{unit + 1:06d}.ndjson")
                out["output"].append({"type": kind, "url": key, "count": counts[unit][k]})
    return out


def _json_batch_output(spec: Bronze, counts: Mapping[int, _BatchCounts]) -> dict[str, list[Any]]:
    """Per-file JSON: one entry per resource type, whose url is the key prefix of its files."""
    name = _batch_name(spec)
    out: dict[str, list[Any]] = {"output": [], "deleted": []}
    for k, deleted, kind in ((0, False, "Patient"), (1, True, "Bundle")):
        n = sum(c[k] for c in counts.values())
        if n:
            url = f"{_batch_folder(spec, deleted)}/{name}."
            out["deleted" if deleted else "output"].append({"type": kind, "url": url, "count": n})
    for k, kind in enumerate(_STAY_TYPES, 2):
        n = sum(c[k] for c in counts.values())
        if n:
            url = _stay_batch_key(replace(spec, gzip=False), kind, "")
            out["output"].append({"type": kind, "url": url, "count": n})
    return out


_FORMATS: Mapping[str, _Format] = {
    "json": _Format(
        "json",
        content_type="application/fhir+json",
        write_unit=_json_unit,
        organization_files=_json_organizations,
        manifest_output=_json_manifest,
        rolls_over=False,
        batch_files=_json_batch_files,
        batch_output=_json_batch_output,
    ),
    "ndjson": _Format(
        "ndjson",
        content_type="application/fhir+ndjson",
        write_unit=_ndjson_unit,
        organization_files=_ndjson_organizations,
        manifest_output=_ndjson_manifest,
        rolls_over=True,
        batch_files=_ndjson_batch_files,
        batch_output=_ndjson_batch_output,
    ),
}


def _organization_files(plan: Plan, spec: Bronze) -> list[tuple[str, bytes]]:
    """(key, bytes) of every organization of the plan, in the run's format: the same for all
    shards and workers, so every managingOrganization.reference resolves."""
    files = _FORMATS[spec.format].organization_files(plan, spec)
    if spec.gzip:
        files = [(key, zlib.compress(data, spec.gzip_level, wbits=31)) for key, data in files]
    return files


# -- stores: where bytes go. One interface (write, read, list, delete, drain, ...), keys are
#    relative to the layer root; every failure of a store is a BronzeError.


class _Store(Protocol):
    """Where a layer's bytes go: what the run, the resume logic and the batches call, and all a
    new store implements (then one entry in STORES). Keys are relative to the layer root."""

    def __init__(self, spec: Bronze) -> None: ...

    @staticmethod
    def check_root(root: str) -> None:
        """ValueError (a usage error) unless root is a valid root for this store."""

    def display(self) -> str: ...  # the root as the run's summary line shows it

    def url(self, key: str) -> str: ...  # a key as an absolute URL (manifests list them)

    def prepare(self) -> None: ...  # reach the root (create it, probe the bucket) before work

    def write(self, key: str, data: bytes | Iterable[bytes], content_type: str = "") -> int:
        """Write key whole (readers never see part of it); the bytes written."""

    def create(self, key: str, data: bytes, content_type: str = "") -> bool:
        """Write key only if it does not exist yet (the run's claim); False if it did."""

    def read(self, key: str) -> bytes | None: ...  # None if the key does not exist

    def size(self, key: str) -> int | None: ...  # None if the key does not exist

    def list(self, folder: str) -> Iterator[str]: ...  # the keys under folder/

    def delete(self, keys: Iterable[str]) -> None: ...

    def remove_temp_files(self) -> None: ...  # dead writers' leftovers (local stores)

    def remove_run_folder(self) -> None: ...  # the emptied _run/ bookkeeping folder

    def drain(self) -> tuple[int, str | None]: ...  # wait for background writes: (bytes, error)

    def close(self) -> None: ...


class _UploadFailed(BronzeError):
    """A store's earlier background write failed: stop the unit, drain() reports it."""


def _process_start(pid: int) -> str | None:
    """When process pid started (clock ticks since boot, /proc/<pid>/stat field 22), or None
    if it is not running (gone, or a zombie: os.kill(pid, 0) succeeds on those) or there is
    no /proc (not Linux)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return None if fields[0] in ("Z", "X") else fields[19]


@functools.cache
def _writer(pid: int) -> str:
    """This process as a temp file names it: <pid>+<start time>, or <pid> without /proc."""
    start = _process_start(pid)
    return f"{pid}+{start}" if start is not None else str(pid)


class _LocalStore:
    """A local directory; every file is written to a temp file in _run/tmp/, then renamed into
    place (atomic: the same file system). Readers' globs (patient/*) never see a temp file."""

    def __init__(self, spec: Bronze) -> None:
        self.root = Path(spec.root)
        self.token = spec.token or str(os.getpid())
        import socket  # here: a run that writes no layer never needs it

        self.host = socket.gethostname()

    @staticmethod
    def check_root(root: str) -> None:
        if not root.strip():
            raise ValueError("--output is empty")

    def display(self) -> str:
        return str(self.root)

    def url(self, key: str) -> str:
        return key  # manifest URLs of a local run are relative to its root

    def prepare(self) -> None:
        """Create the folders and remove stale temp files (those of dead writers)."""
        if self.root.exists() and not self.root.is_dir():
            raise BronzeError(f"--output {self.root} exists and is not a directory")
        for folder in (*_FOLDERS, _RUN_TMP):
            (self.root / folder).mkdir(parents=True, exist_ok=True)
        self._remove_temp_files(self._is_stale)

    def _temp_path(self, key: str) -> Path:
        """_run/tmp/<key with / as .>.tmp-<token>-<pid>[+<start>]@<host>: whose it is (the
        writer's start time, where known, tells a recycled pid apart), for the sweeps."""
        name = f"{key.replace('/', '.')}.tmp-{self.token}-{_writer(os.getpid())}@{self.host}"
        return self.root / _RUN_TMP / name

    def write(self, key: str, data: bytes | Iterable[bytes], content_type: str = "") -> int:
        """Write all chunks to a temp file, then os.replace (no fsync: atomic against crashes
        and Ctrl-C of this process, not against power loss)."""
        path, tmp = self.root / key, self._temp_path(key)
        size = 0
        try:
            try:
                f = open(tmp, "wb")
            except FileNotFoundError:  # a sibling shard that finished the run removed _run/
                tmp.parent.mkdir(parents=True, exist_ok=True)
                f = open(tmp, "wb")
            with f:
                if isinstance(data, bytes):
                    size = f.write(data)
                else:
                    for chunk in data:
                        size += f.write(chunk)
            try:
                os.replace(tmp, path)
            except FileNotFoundError:  # _run/done/ on a unit's first marker
                path.parent.mkdir(parents=True, exist_ok=True)
                os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        return size

    def create(self, key: str, data: bytes, content_type: str = "") -> bool:
        """Write key only if it does not exist yet: False if it does. Atomic, so of runs racing
        for one key exactly one creates it: a hard link of a complete temp file (a reader never
        sees half of it), or O_EXCL where the file system has no hard links."""
        path, tmp = self.root / key, self._temp_path(key)
        for folder in (path.parent, tmp.parent):
            folder.mkdir(parents=True, exist_ok=True)
        tmp.write_bytes(data)
        try:
            os.link(tmp, path)
        except FileExistsError:
            return False
        except OSError:  # no hard links here (e.g. some network or FAT file systems)
            try:
                with open(path, "xb") as f:
                    f.write(data)
            except FileExistsError:
                return False
        finally:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        return True

    def read(self, key: str) -> bytes | None:
        try:
            return (self.root / key).read_bytes()
        except FileNotFoundError:
            return None

    def size(self, key: str) -> int | None:
        """The size of key in bytes, None if it does not exist."""
        try:
            return (self.root / key).stat().st_size
        except (FileNotFoundError, NotADirectoryError):
            return None

    def list(self, folder: str) -> Iterator[str]:
        """Keys of every file in folder, streamed (a folder may hold millions)."""
        try:
            with os.scandir(self.root / folder) as entries:
                for entry in entries:
                    yield f"{folder}/{entry.name}"
        except (FileNotFoundError, NotADirectoryError):
            return

    def delete(self, keys: Iterable[str]) -> None:
        for key in keys:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.root / key)

    def _is_stale(self, token: str, writer: str, host: str) -> bool:
        """A temp file of a dead writer on this host: its pid is gone, a zombie, or now another
        process's (another start time). A sibling shard's live one is kept; so are other
        hosts', which cannot be checked: they stay in _run/, unseen by readers."""
        pid, _, start = writer.partition("+")
        if host != self.host or int(pid) == os.getpid():
            return False
        if _process_start(int(pid)) is not None:  # /proc: running, and since when
            return bool(start) and start != _process_start(int(pid))
        if Path("/proc/self/stat").exists():
            return True  # /proc has no running process of that pid (gone or a zombie)
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False  # alive, another user's
        return False

    def _remove_temp_files(self, which: Callable[[str, str, str], bool]) -> None:
        """Remove the temp files in _run/tmp/ for which which(token, writer, host) holds."""
        for key in list(self.list(_RUN_TMP)):
            match = re.search(r"\.tmp-(.+)-(\d+(?:\+\d+)?)@([^@/]+)$", key)
            if match and which(match[1], match[2], match[3]):
                self.delete([key])

    def remove_temp_files(self) -> None:
        """Remove temp files of this run's processes (workers killed by Ctrl-C leave them)."""
        self._remove_temp_files(lambda token, _, host: token == self.token and host == self.host)

    def remove_run_folder(self) -> None:
        """Remove _run/ if it is empty (a sibling's temp file keeps it; it removes it later)."""
        for folder in (_RUN_TMP, _RUN_DONE, _RUN_DIR):
            with contextlib.suppress(OSError):
                (self.root / folder).rmdir()

    def drain(self) -> tuple[int, str | None]:
        return 0, None  # writes are synchronous

    def close(self) -> None:
        pass


# S3's general purpose bucket naming rules (docs.aws.amazon.com/AmazonS3/latest/userguide/
# bucketnamingrules.html): 3-63 lowercase letters, digits, dots and hyphens, a letter or digit
# at both ends, no "..", not an IPv4 address, no reserved prefix or suffix. botocore would
# otherwise answer a bad name with a dump of its own regex.
_BUCKET_NAME = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
_BUCKET_RESERVED = (
    ("xn--", "sthree-", "amzn-s3-demo-"),
    ("-s3alias", "--ol-s3", ".mrap", "--x-s3"),
)


def _bad_bucket_name(name: str) -> bool:
    """Whether name breaks S3's bucket naming rules."""
    return (
        not _BUCKET_NAME.fullmatch(name)
        or ".." in name
        or re.fullmatch(r"\d+\.\d+\.\d+\.\d+", name) is not None
        or name.startswith(_BUCKET_RESERVED[0])
        or name.endswith(_BUCKET_RESERVED[1])
    )


def _parse_s3_url(url: str) -> tuple[str, str]:
    """(bucket, prefix) of s3://bucket/prefix; ValueError if there is no bucket or its name
    breaks S3's naming rules."""
    bucket, _, prefix = url.removeprefix("s3://").partition("/")
    if not bucket:
        raise ValueError(f"{url!r} names no bucket (use s3://bucket/prefix)")
    if _bad_bucket_name(bucket):
        raise ValueError(
            f"{bucket!r} is not a valid S3 bucket name (3-63 lowercase letters, digits, dots "
            "and hyphens, a letter or digit at both ends, not an IP address)"
        )
    return bucket, prefix.strip("/")


def _s3_endpoint(endpoint_url: str | None) -> str | None:
    """The custom S3 endpoint: endpoint_url, else $AWS_ENDPOINT_URL_S3, else $AWS_ENDPOINT_URL
    (None: AWS itself); ValueError unless it is http(s)://host[:port] (boto3 would trace back)."""
    if endpoint_url is not None and not endpoint_url.strip():
        raise ValueError("--endpoint-url is empty (leave it out for AWS S3)")
    given = (
        ("--endpoint-url", endpoint_url),
        ("AWS_ENDPOINT_URL_S3", os.environ.get("AWS_ENDPOINT_URL_S3")),
        ("AWS_ENDPOINT_URL", os.environ.get("AWS_ENDPOINT_URL")),
    )
    name, url = next(((n, u) for n, u in given if u), ("", None))
    if url is None:
        return None
    import urllib.parse  # S3 only

    parts = urllib.parse.urlsplit(url)
    try:
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        parts = parts._replace(scheme="")
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        raise ValueError(
            f"{name} {url!r} is not an http(s) URL, e.g. http://127.0.0.1:9000 "
            "(a scheme and a host are required)"
        )
    return url


def _s3_client(endpoint_url: str | None, pool: int, attempts: int) -> Any:
    """A boto3 S3 client with bounded timeouts and retries (see S3_READ_TIMEOUT)."""
    try:
        import boto3
        from botocore.config import Config
    except ImportError:
        raise BronzeError("s3:// output needs boto3: pip install boto3") from None
    custom = _s3_endpoint(endpoint_url)
    config = Config(
        retries={"total_max_attempts": attempts, "mode": "standard"},
        max_pool_connections=max(10, pool),
        connect_timeout=_S3_CONNECT_TIMEOUT,
        read_timeout=_S3_READ_TIMEOUT,
        s3={"addressing_style": "path"} if custom else {},  # S3-compatible stores want paths
        # Validate response checksums only when asked (ChecksumMode): botocore 1.44 wraps a 5xx
        # reply that carries a checksum header and then fails parsing it (AttributeError, not a
        # ClientError: a traceback, not a retry), as rclone's replies to a racing read showed.
        response_checksum_validation="when_required",
    )
    # endpoint_url=None lets boto3 read AWS_ENDPOINT_URL(_S3) itself.
    return boto3.session.Session().client("s3", endpoint_url=endpoint_url, config=config)


def _s3_error_code(e: BaseException) -> str:
    response = getattr(e, "response", None)
    error = response.get("Error") if isinstance(response, dict) else None
    return str(error.get("Code", "")) if isinstance(error, dict) else ""


def _s3_reason(e: BaseException) -> str:
    """A short reason for a botocore error: 'Code: message' or the error's own text."""
    code = _s3_error_code(e)
    if code:
        message = e.response["Error"].get("Message") or {  # type: ignore[attr-defined]
            "403": "Forbidden",
            "404": "Not Found",
        }.get(code, "")
        return f"{code}: {message}" if message else code
    return str(e) or type(e).__name__


class _S3Store:
    """An S3 (or S3-compatible) prefix; PUTs run on a thread pool and are atomic by nature."""

    def __init__(self, spec: Bronze) -> None:
        self.bucket, self.prefix = _parse_s3_url(spec.root)
        self.endpoint_url = spec.endpoint_url
        self.endpoint = _s3_endpoint(spec.endpoint_url) or "AWS S3"  # ValueError if malformed
        self.client = _s3_client(spec.endpoint_url, spec.concurrency, _S3_MAX_ATTEMPTS)
        from concurrent.futures import ThreadPoolExecutor  # S3 only: start-up of other runs

        self.pool = ThreadPoolExecutor(spec.concurrency, thread_name_prefix="s3-put")
        self.slots = threading.BoundedSemaphore(2 * spec.concurrency)  # bounds memory in flight
        self.lock = threading.Lock()
        self.idle = threading.Condition(self.lock)
        self.pending = 0
        self.failed = 0
        self.first_failure: str | None = None

    @staticmethod
    def check_root(root: str) -> None:
        _parse_s3_url(root)

    def key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def url(self, key: str) -> str:
        return f"s3://{self.bucket}/{self.key(key)}"

    def display(self) -> str:
        return self.url("").rstrip("/")

    def _fail_line(self, e: BaseException) -> str:
        """One line for a botocore error, saying what to check."""
        endpoint = self.endpoint
        name, code, where = type(e).__name__, _s3_error_code(e), f"s3://{self.bucket}"
        if code in ("NoSuchBucket", "404"):
            return f"bucket {where} does not exist (endpoint {endpoint})"
        if code in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "403"):
            return f"S3 refused the credentials for {where} ({_s3_reason(e)})"
        if name == "NoCredentialsError":
            return "no AWS credentials found (set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY)"
        if name in ("EndpointConnectionError", "ConnectTimeoutError", "ConnectionClosedError"):
            return f"cannot reach the S3 endpoint {endpoint} ({e})"
        if name == "ReadTimeoutError":
            return f"the S3 endpoint {endpoint} stopped answering ({e})"
        return f"S3 error on {where}: {_s3_reason(e)}"

    @contextlib.contextmanager
    def _errors(self) -> Iterator[None]:
        """botocore's exceptions become one-line BronzeErrors."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            yield
        except (BotoCoreError, ClientError) as e:
            raise BronzeError(self._fail_line(e)) from None

    def prepare(self) -> None:
        """Fail fast, with one line, on a missing bucket, bad credentials or a dead endpoint."""
        probe = _s3_client(self.endpoint_url, 1, _S3_PROBE_ATTEMPTS)
        with self._errors():
            probe.list_objects_v2(Bucket=self.bucket, Prefix=self.key(""), MaxKeys=1)

    def _put(self, key: str, body: Any, content_type: str) -> None:
        try:
            if self.first_failure is None:  # after a failure, skip what is queued: fail fast
                self.client.put_object(
                    Bucket=self.bucket, Key=self.key(key), Body=body, ContentType=content_type
                )
        except Exception as e:
            with self.lock:
                self.failed += 1
                if self.first_failure is None:
                    self.first_failure = f"{self.url(key)} ({_s3_reason(e)})"
        finally:
            if not isinstance(body, bytes):
                body.close()
            self.slots.release()
            with self.lock:
                self.pending -= 1
                self.idle.notify_all()

    def write(self, key: str, data: bytes | Iterable[bytes], content_type: str = "") -> int:
        """Queue one PUT; a streamed body is spooled (to disk beyond 16 MB) first."""
        if self.first_failure is not None:
            raise _UploadFailed(self.first_failure)
        if isinstance(data, bytes):
            body: Any = data
            size = len(data)
        else:
            import tempfile  # S3 only

            body = tempfile.SpooledTemporaryFile(max_size=16 << 20)
            size = sum(body.write(chunk) for chunk in data)
            body.seek(0)
        self.slots.acquire()
        with self.lock:
            self.pending += 1
        self.pool.submit(self._put, key, body, content_type or "application/octet-stream")
        return size

    def create(self, key: str, data: bytes, content_type: str = "") -> bool:
        """PUT key only if it does not exist (If-None-Match: *): False if it does. A server
        that ignores the condition accepts a second such PUT too; then the claim is checked by
        reading it back after S3_CLAIM_SETTLE seconds (a racing PUT would have replaced it)."""
        from botocore.exceptions import ClientError

        def put() -> bool:
            try:
                self.client.put_object(
                    Bucket=self.bucket,
                    Key=self.key(key),
                    Body=data,
                    ContentType=content_type or "application/octet-stream",
                    IfNoneMatch="*",
                )
            except ClientError as e:  # 412: it exists; 409: a concurrent conditional PUT won
                if _s3_error_code(e) in ("PreconditionFailed", "412", "ConditionalRequestConflict"):
                    return False
                raise
            return True

        with self._errors():
            if not put():
                return False
            if not put():
                return True  # the server honours If-None-Match: the first PUT was exclusive
            time.sleep(_S3_CLAIM_SETTLE)
            return self.read(key) == data

    def drain(self) -> tuple[int, str | None]:
        """Wait for queued PUTs; (failures, first failure) since the last drain."""
        with self.lock:
            self.idle.wait_for(lambda: self.pending == 0)
            out = (self.failed, self.first_failure)
            self.failed, self.first_failure = 0, None
        return out

    def read(self, key: str) -> bytes | None:
        with self._errors():
            try:
                return self.client.get_object(Bucket=self.bucket, Key=self.key(key))["Body"].read()
            except self.client.exceptions.NoSuchKey:
                return None

    def size(self, key: str) -> int | None:
        """The size of key in bytes (a HEAD request), None if it does not exist."""
        from botocore.exceptions import ClientError

        with self._errors():
            try:
                return int(
                    self.client.head_object(Bucket=self.bucket, Key=self.key(key))["ContentLength"]
                )
            except ClientError as e:
                if _s3_error_code(e) in ("404", "NoSuchKey", "NotFound"):
                    return None
                raise

    def list(self, folder: str) -> Iterator[str]:
        """Keys (relative to the root) of every object under folder/."""
        pages = self.client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=self.key(folder + "/")
        )
        cut = len(self.key(""))
        with self._errors():
            for page in pages:
                for item in page.get("Contents", ()):
                    yield item["Key"][cut:]

    def delete(self, keys: Iterable[str]) -> None:
        """Delete in batches of 1,000 (the DeleteObjects limit)."""
        keys = iter(keys)
        while batch := list(itertools.islice(keys, 1000)):
            objects = [{"Key": self.key(k)} for k in batch]
            with self._errors():
                self.client.delete_objects(
                    Bucket=self.bucket, Delete={"Objects": objects, "Quiet": True}
                )

    def remove_temp_files(self) -> None:
        pass  # a PUT is all or nothing

    def remove_run_folder(self) -> None:
        pass  # S3 has no folders

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)


# The store registry: URL scheme -> store; a root without a scheme is a local directory.
_STORES: Mapping[str, type[_Store]] = {"file": _LocalStore, "s3": _S3Store}


def _scheme(root: str) -> str:
    match = re.match(r"([A-Za-z][A-Za-z0-9+.-]*)://", root)
    return match[1].lower() if match else "file"


def _check_root(root: str) -> None:
    """ValueError unless root is a directory or a URL of a known store (s3://bucket/prefix)."""
    store = _STORES.get(_scheme(root))
    if store is None:
        raise ValueError(f"--output must be a directory or s3://bucket/prefix, not {root!r}")
    store.check_root(root)


def _open_store(spec: Bronze) -> _Store:
    """The store for spec.root (boto3 is imported only for s3://)."""
    _check_root(spec.root)
    return _STORES[_scheme(spec.root)](spec)


# -- the run: manifest, overwrite policy, units in this process or on worker processes


def _generator_block(plan: Plan, spec: Bronze) -> dict[str, Any]:
    """Everything the bytes depend on: equal blocks mean the same run (re-runs are allowed)."""
    return {
        "name": "fhir_patient_generator",
        "version": __version__,
        "seed": plan.seed,
        "as_of": plan.last_updated,
        "options": dict(plan.options),
        "format": spec.format,
        "gzip": spec.gzip,
        "gzip_level": spec.gzip_level if spec.gzip else None,
        "records_per_file": spec.records_per_file if _FORMATS[spec.format].rolls_over else None,
        "count": spec.count,
        "start": spec.start,
        **_window_block(plan, spec.count, spec.window),
    }


def _window_block(plan: Plan, indexes: int, w: Window | None) -> dict[str, Any]:
    """A living population's part of the generator block: its epoch (the plan's as-of), the
    snapshot's or batch's as-of, the epoch count, the indexes covered, the batch's window."""
    if w is None:
        return {}
    return {
        "as_of": _iso_instant(w.until),
        "count": w.epoch_count,
        "epoch": plan.last_updated,
        "indexes": indexes,
        "since": None if w.since is None else _iso_instant(w.since),
        "versions": "latest" if w.latest else "all",
        "faults": w.faults._asdict(),
    }


def _window_words(plan: Plan, w: Window) -> list[str]:
    words = ["--epoch", plan.last_updated, "--as-of", _iso_instant(w.until)]
    if w.since is not None:
        words += ["--since", _iso_instant(w.since), "--versions", "latest" if w.latest else "all"]
        for name, rate in w.faults._asdict().items():
            words += [f"--{name.replace('_', '-')}", f"{rate:g}"] if rate else []
    return words


def _request_line(plan: Plan, spec: Bronze) -> str:
    """The CLI command that reproduces the run, all options spelled out; add --output ROOT."""
    w = spec.window
    count = spec.count if w is None else w.epoch_count
    words = ["fhir_patient_generator.py", "--count", str(count), "--seed", str(plan.seed)]
    if w is None:
        words += ["--as-of", plan.last_updated, "--start", str(spec.start)]
    else:
        words += _window_words(plan, w)
    for name, value in plan.options.items():
        if value is None:
            continue
        if value is True:  # a flag (--encounters)
            words.append(f"--{name.replace('_', '-')}")
            continue
        if isinstance(value, tuple | list):
            value = ",".join(map(str, value))
        words += [f"--{name.replace('_', '-')}", str(value)]
    words += ["--format", spec.format]  # no --output: the same run may live anywhere
    if _FORMATS[spec.format].rolls_over:
        words += ["--records-per-file", str(spec.records_per_file)]
    if spec.gzip:
        words += ["--gzip", "--gzip-level", str(spec.gzip_level)]
    return " ".join(words)


def _manifest(
    plan: Plan, spec: Bronze, output: list[Any], deleted: list[Any] | None = None, **extension: Any
) -> bytes:
    """A Bulk Data style manifest's bytes: transactionTime (the as-of, or a window's until),
    the reproducing request, output (and a batch's deleted), extension.fhirVersion, the
    generator block and any further extension."""
    manifest: dict[str, Any] = {
        "transactionTime": _iso_instant(spec.window.until) if spec.window else plan.last_updated,
        "request": _request_line(plan, spec),
        "requiresAccessToken": False,
        "output": output,
    }
    if deleted is not None:
        manifest["deleted"] = deleted
    manifest["error"] = []
    manifest["extension"] = {
        "fhirVersion": plan.fhir_version.number,
        "generator": _generator_block(plan, spec),
        **extension,
    }
    return orjson.dumps(manifest, option=orjson.OPT_INDENT_2) + b"\n"


def _manifest_bytes(plan: Plan, spec: Bronze) -> bytes:
    """A layer's manifest: the same bytes from every shard, every re-run and every store
    (output urls are relative to the manifest)."""
    return _manifest(plan, spec, _FORMATS[spec.format].manifest_output(plan, spec))


def _batch_manifest_bytes(plan: Plan, spec: Bronze, counts: Mapping[int, tuple[int, ...]]) -> bytes:
    """A change batch's manifest (as for a Bulk Data _since export): output its new versions
    (and with --encounters the stays delivered in it), deleted its DELETE Bundles, urls
    relative to the layer root; `counts` is _BatchCounts for every unit."""
    w = spec.window
    assert w is not None
    files = _FORMATS[spec.format].batch_output(spec, counts)
    batch = {
        "since": _iso_instant(w.since),
        "until": _iso_instant(w.until),
        "ingestDate": w.until.date().isoformat(),
        "versions": sum(c[0] for c in counts.values()),
        "deletions": sum(c[1] for c in counts.values()),
        "urlsRelativeTo": "the layer root",
    }
    if _stays_on(plan):
        batch["encounters"] = sum(c[2] for c in counts.values())
        batch["conditions"] = sum(c[3] for c in counts.values())
    return _manifest(plan, spec, files["output"], files["deleted"], batch=batch)


def _describe(block: Any) -> str:
    if not isinstance(block, dict):
        return "unknown generator"
    keys = ("version", "seed", "as_of", "count", "start", "format", "gzip")
    return ", ".join(f"{k} {block.get(k)}" for k in keys)


def _read_json(store: _Store, key: str) -> tuple[bool, Any]:
    """(whether key exists, its parsed JSON or None if unreadable)."""
    data = store.read(key)
    if data is None:
        return False, None
    try:
        return True, orjson.loads(data)
    except orjson.JSONDecodeError:
        return True, None


def _manifest_generator(store: _Store) -> tuple[bool, Any]:
    """(whether a manifest exists, its generator block or None if unreadable)."""
    found, manifest = _read_json(store, _MANIFEST)
    try:
        return found, manifest["extension"]["generator"] if found else None
    except (KeyError, TypeError):
        return True, None


def _identity_bytes(plan: Plan, spec: Bronze) -> bytes:
    """_run/identity.json: the generator block, so a re-run recognises its own unfinished run."""
    return orjson.dumps(_generator_block(plan, spec), option=orjson.OPT_INDENT_2) + b"\n"


def _done_key(unit: int) -> str:
    return f"{_RUN_DONE}/{unit:06d}"


def _done_units(store: _Store) -> frozenset[int]:
    """Units with a done marker (at most count / records_per_file keys to list)."""
    names = (key.rsplit("/", 1)[-1] for key in store.list(_RUN_DONE))
    return frozenset(int(name) for name in names if name.isdigit())


def _done_marker(records: int, written: Sequence[tuple[str, int]]) -> bytes:
    """A unit's done marker: its patients, its files, and the key and size of its first and
    last file, the evidence a resumed run checks (cheaply: one stat or HEAD each)."""
    check = dict([written[0], written[-1]]) if written else {}
    marker = {"records": records, "files": len(written), "check": check}
    return orjson.dumps(marker) + b"\n"


def _is_done(store: _Store, unit: int) -> bool:
    """Whether unit's marker is one we wrote and the files it names are there, with their
    sizes: a forged or older marker, or a deleted or truncated file, makes the unit redone
    (a unit without files, all of whose joiners were deleted, is simply redone: nothing)."""
    _, marker = _read_json(store, _done_key(unit))
    marker = marker if isinstance(marker, dict) else {}
    check, files = marker.get("check"), marker.get("files")
    if not isinstance(check, dict) or type(files) is not int or files < 1:
        return False
    if len(check) != min(files, 2):
        return False
    return all(isinstance(k, str) and store.size(k) == size for k, size in check.items())


def _resumable_units(store: _Store) -> frozenset[int]:
    """The units of an interrupted run that a re-run may skip: a marker and its files."""
    return frozenset(u for u in _done_units(store) if _is_done(store, u))


def _delete_run_markers(store: _Store) -> None:
    """Delete _run/identity.json, then the done markers: a crash midway leaves only markers,
    which nothing resumes into and the next run removes too."""
    store.delete([_RUN_IDENTITY])
    store.delete(list(store.list(_RUN_DONE)))


def _delete_run(store: _Store) -> None:
    """Delete the manifest first (no manifest may describe half-deleted files), then the run's
    identity and markers (nothing may resume into half-deleted files), then the data."""
    store.delete([_MANIFEST])
    _delete_run_markers(store)
    for folder in (*_FOLDERS, *_STAY_FOLDERS):
        store.delete(store.list(folder))
    store.prepare()


def _refusal(store: _Store, what: str) -> BronzeError:
    return BronzeError(
        f"{store.display()} {what}; use --overwrite to replace it, or another --output"
    )


def _overwrite_policy(
    store: _Store, keys: tuple[str, str], ours: Any, overwrite: bool, delete: Callable[[], None]
) -> tuple[bool, bool]:
    """The one overwrite policy of layers and batches, over a (manifest, identity) key pair:
    our own run (the same generator block in either) is kept; another run's (or an unreadable
    one) is refused, or deleted first with overwrite. Returns whether (manifest, identity) of
    ours are there."""
    found, manifest = _read_json(store, keys[0])
    try:
        theirs = manifest["extension"]["generator"]
    except (KeyError, TypeError):  # unreadable, or not one of our manifests
        theirs = None
    started, identity = _read_json(store, keys[1])
    foreign = None
    if found and theirs != ours:
        foreign = ("another run", theirs)
    elif started and identity != ours:
        foreign = ("another run's unfinished data", identity)
    if foreign is None:
        return found, started
    if not overwrite:
        what = "an unreadable file" if foreign[1] is None else _describe(foreign[1])
        label = keys[0].rsplit("/", 1)[-1].removesuffix(".json")
        label = "" if keys[0] == _MANIFEST else f"batch {label} of "
        raise _refusal(store, f"already holds {label}{foreign[0]} ({what})")
    delete()
    return False, False


def _check_existing(plan: Plan, spec: Bronze, store: _Store, overwrite: bool) -> frozenset[int]:
    """The overwrite policy (_overwrite_policy) for a layer. Our own run is resumed: returns
    the units its done markers say are finished. Another run, or data with neither manifest
    nor identity, is refused unless --overwrite, which deletes it first."""
    ours = orjson.loads(orjson.dumps(_generator_block(plan, spec)))
    keys = (_MANIFEST, _RUN_IDENTITY)
    found, started = _overwrite_policy(store, keys, ours, overwrite, lambda: _delete_run(store))
    if found or started:
        return _resumable_units(store) if started else frozenset()
    if not any(next(store.list(f), None) for f in (*_FOLDERS, *_STAY_FOLDERS)):
        return frozenset()
    if not overwrite:
        raise _refusal(
            store,
            f"holds patient/ or organization/ files without {_MANIFEST} or {_RUN_IDENTITY} "
            "(a foreign run, or one of an older version)",
        )
    _delete_run(store)
    return frozenset()


def _claim(store: _Store, key: str, data: bytes) -> None:
    """Claim the folder for this run by creating key (its identity), atomically: of runs racing
    into one folder, one creates it and the others find another run's identity and refuse.
    Our own identity (a re-run, a sibling shard) is kept; BronzeError for another run's."""
    ours = orjson.loads(data)
    if _read_json(store, key)[1] == ours or store.create(key, data, "application/json"):
        return
    found, theirs = _read_json(store, key)
    if theirs != ours:
        what = _describe(theirs) if found else "its identity is being written"
        raise _refusal(store, f"was claimed at the same time by another run ({what})")


def _claim_layer(plan: Plan, spec: Bronze, store: _Store) -> None:
    """Claim the layer (unless it is finished): _run/identity.json, then a second look for a
    manifest, in case another run finished (and removed its identity) since the first."""
    if store.read(_MANIFEST) is not None:
        return
    _claim(store, _RUN_IDENTITY, _identity_bytes(plan, spec))
    found, theirs = _manifest_generator(store)
    if found and theirs != orjson.loads(_identity_bytes(plan, spec)):
        store.delete([_RUN_IDENTITY])
        what = "an unreadable file" if theirs is None else _describe(theirs)
        raise _refusal(store, f"was finished just now by another run ({what})")


def _finish_run(spec: Bronze, store: _Store) -> None:
    """After the manifest: remove this process's temp files; if every unit is done (or a
    sibling shard already began this), remove _run/ — identity first, so a crash midway leaves
    only markers, which the next run removes too."""
    store.remove_temp_files()
    if store.read(_RUN_IDENTITY) is not None and not _done_units(store).issuperset(
        range(_unit_count(spec))
    ):
        return  # sibling shards are still writing units: the last one to finish removes _run/
    _delete_run_markers(store)
    store.remove_run_folder()


class _Written:
    """A store whose writes are noted: (key, size) of the first and last, for the marker."""

    def __init__(self, store: _Store) -> None:
        self.store = store
        self.files: list[tuple[str, int]] = []

    def write(self, key: str, data: bytes | Iterable[bytes], content_type: str = "") -> int:
        size = self.store.write(key, data, content_type)
        if self.files:
            self.files[1:] = [(key, size)]
        else:
            self.files.append((key, size))
        return size


def _write_unit(
    plan: Plan, spec: Bronze, store: _Store, unit: int, tick: _Tick = None
) -> _UnitResult:
    """Write unit #unit, wait for its uploads, then its done marker; failed uploads are
    counted, not raised."""
    if spec.mode == _BATCH_RUN:
        return _write_batch_unit(plan, spec, store, unit, tick)
    files = size = 0
    written = _Written(store)
    try:
        files, size = _FORMATS[spec.format].write_unit(plan, spec, written, unit, tick)  # type: ignore[arg-type]
    except _UploadFailed:
        pass  # drain() below counts it
    failed, first = store.drain()
    records = _unit_records(plan, spec, unit)  # a window leaves its deleted joiners out
    if not failed:  # only a fully written, drained unit may be skipped by a resumed run
        store.write(_done_key(unit), _done_marker(records, written.files), "application/json")
        failed, first = store.drain()
    return _UnitResult(unit, records, files, size, failed, first)


def _batch_unit_files(plan: Plan, spec: Bronze, unit: int) -> list[_BatchFile]:
    """A change batch's unit as files: its indexes' versions delivered in the window."""
    w, indexes = spec.window, _unit_range(spec, unit)
    assert w is not None and w.since is not None
    versions = list(_window_versions(plan, w, indexes.start, indexes.stop))
    files = _FORMATS[spec.format].batch_files(plan, spec, unit, versions)
    if _stays_on(plan):
        found = _window_stays(plan, w, indexes.start, indexes.stop)
        pairs = [p for i in sorted(found) for p in _live_stay_pairs(plan, found[i], spec.validate)]
        files += _batch_stay_files(spec, unit, pairs)
    return files


def _write_batch_unit(
    plan: Plan, spec: Bronze, store: _Store, unit: int, tick: _Tick
) -> _UnitResult:
    """A change batch's unit: its files (none if nothing changed); a re-run writes the same
    bytes, so it needs no done marker."""
    files = _batch_unit_files(plan, spec, unit)
    size = 0
    try:
        for key, data, *_ in files:
            if spec.gzip:
                data = zlib.compress(data, spec.gzip_level, wbits=31)
            size += store.write(key, data, _content_type(spec))
    except _UploadFailed:
        pass  # drain() below counts it
    failed, first = store.drain()
    if tick:
        tick(len(_unit_range(spec, unit)))
    records, deleted, *stays = _batch_counts(files)
    return _UnitResult(unit, records, len(files), size, failed, first, deleted, tuple(stays))


def _batch_counts(files: list[_BatchFile]) -> _BatchCounts:
    """(versions, deletions, Encounters, Conditions) in a unit's files."""
    n = {(f.resource, f.deleted): 0 for f in files}
    for f in files:
        n[f.resource, f.deleted] += f.lines
    return (
        n.get(("Patient", False), 0),
        n.get(("Patient", True), 0),
        n.get(("Encounter", False), 0),
        n.get(("Condition", False), 0),
    )


_EXIT_ORPHANED = 1  # a worker whose main process died


@functools.cache
def _worker_store(spec: Bronze) -> _Store:
    return _open_store(spec)  # one per worker process, kept for all its units


_PARENT_POLL = 0.5  # seconds between a worker's checks that the main process still lives


def _exit_with_parent() -> None:
    """End this worker when the main process dies (kill -9, the OOM killer), so no worker runs
    on unowned and a pipe reading the output ends: on Linux the kernel sends SIGKILL
    (PR_SET_PDEATHSIG); everywhere a daemon thread polls os.getppid(), which changes when the
    parent is gone (the orphan is re-parented)."""
    parent = os.getppid()
    if sys.platform.startswith("linux"):
        import ctypes

        with contextlib.suppress(OSError, AttributeError):
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # 1 = PR_SET_PDEATHSIG

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(_PARENT_POLL)
        os._exit(_EXIT_ORPHANED)

    if os.getppid() != parent:  # the parent died before the signal was armed
        os._exit(_EXIT_ORPHANED)
    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def _worker_init() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the main process handles Ctrl-C for all
    _exit_with_parent()


def _worker_unit(plan: Plan, spec: Bronze, unit: int) -> _UnitResult:
    """A worker process's task: write one unit (the plan arrives pickled; equal plans share
    json_renderer's cache, so fragments are built once per process)."""
    return _write_unit(plan, spec, _worker_store(spec), unit)


def _run_pool(
    plan: Plan,
    spec: Bronze,
    units: Sequence[int],
    workers: int,
    done: Callable[[_UnitResult], bool],
) -> None:
    """Units on `workers` spawned processes, a few queued each; done() False stops the run."""
    import multiprocessing  # imported here: multiprocessing costs start-up of every other run
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    pool = ProcessPoolExecutor(
        workers, mp_context=multiprocessing.get_context("spawn"), initializer=_worker_init
    )
    todo, running = iter(units), set()
    try:
        while True:
            while len(running) < 2 * workers and (u := next(todo, None)) is not None:
                running.add(pool.submit(_worker_unit, plan, spec, u))
            if not running:
                break
            finished, running = wait(running, return_when=FIRST_COMPLETED)
            for future in finished:
                if not done(future.result()):
                    todo = iter(())
        pool.shutdown()
    except BaseException:
        for proc in list(getattr(pool, "_processes", {}).values()):
            with contextlib.suppress(OSError):
                proc.terminate()
        pool.shutdown(wait=True, cancel_futures=True)
        raise


def _drain_or_raise(store: _Store) -> None:
    """Wait for queued uploads; any failure ends the run with the count and the first key."""
    failed, first = store.drain()
    if failed:
        raise BronzeError(f"{failed} objects failed; first: {first}")


@dataclass
class _Totals:
    """The counts of a run's summary line, added up as units finish."""

    records: int = 0
    files: int = 0
    bytes: int = 0
    failed: int = 0
    first_failure: str | None = None
    units: dict[int, tuple[int, ...]] = field(default_factory=dict)  # _BatchCounts

    def add(self, result: _UnitResult) -> bool:
        """Count a finished unit; False when it failed (the run stops)."""
        self.units[result.unit] = (result.records, result.deleted, *result.stays)
        self.records += result.records
        self.files += result.files
        self.bytes += result.bytes
        self.failed += result.failed
        self.first_failure = self.first_failure or result.first_failure
        return not result.failed

    def summary(self, started: float, store: _Store, **extra: Any) -> dict[str, Any]:
        """The counts a run returns for its summary line, with the run's own extras."""
        return {
            "records": self.records,
            "files": self.files,
            "bytes": self.bytes,
            "failed": self.failed,
            "seconds": time.perf_counter() - started,
            "root": store.display(),
            **extra,
        }


def _write_units(
    plan: Plan, spec: Bronze, store: _Store, units: Sequence[int], workers: int, progress: _Tick
) -> _Totals:
    """The patient units, here or on a pool; temp files of killed workers are removed."""
    totals = _Totals()
    try:
        if workers > 1 and len(units) > 1:

            def done(result: _UnitResult) -> bool:
                if progress:  # pooled: ticks come per unit, not per batch
                    progress(result.records)
                return totals.add(result)

            _run_pool(plan, spec, units, min(workers, len(units)), done)
        else:
            for u in units:
                if not totals.add(_write_unit(plan, spec, store, u, progress)):
                    break
    finally:
        store.remove_temp_files()
    if totals.failed:
        raise BronzeError(f"{totals.failed} objects failed; first: {totals.first_failure}")
    return totals


def write_bronze(
    plan: Plan,
    spec: Bronze,
    *,
    workers: int = _DEFAULT_WORKERS,
    shard: tuple[int, int] = (0, 1),
    overwrite: bool = False,
    progress: _Tick = None,
) -> dict[str, Any]:
    """Write shard K/N of the run: its identity, all organizations, its patient units (those
    an interrupted run of ours did not finish), then the manifest; then remove _run/.

    Returns counts for the summary; raises BronzeError (one line) on a failure. With a window,
    spec.count is set to the indexes that exist at its until (the epoch count is the window's),
    and a window with a since writes that change batch instead (write_batch)."""
    if spec.format not in _FORMATS:
        raise ValueError(f"format must be one of {', '.join(_FORMATS)}, not {spec.format!r}")
    spec = _covering(plan, spec)
    if spec.mode == _BATCH_RUN:
        return _write_batch(
            plan, spec, workers=workers, shard=shard, overwrite=overwrite, progress=progress
        )
    started = time.perf_counter()
    store = _open_store(spec)
    try:
        store.prepare()
        done = _check_existing(plan, spec, store, overwrite)
        _claim_layer(plan, spec, store)  # before any data: re-runs resume, other runs refuse
        orgs = _organization_files(plan, spec)
        org_bytes = sum(store.write(key, data, _content_type(spec)) for key, data in orgs)
        _drain_or_raise(store)
        units = [u for u in _shard_units(spec, shard) if u not in done]
        kept_units = [u for u in _shard_units(spec, shard) if u in done]
        if progress and kept_units:  # the bar counts indexes
            progress(sum(len(_unit_range(spec, u)) for u in kept_units))
        kept = sum(_unit_records(plan, spec, u) for u in kept_units)  # the summary, patients
        totals = _write_units(plan, spec, store, units, workers, progress)
        manifest = _manifest_bytes(plan, spec)
        totals.bytes += org_bytes + store.write(_MANIFEST, manifest, "application/json")
        totals.files += len(orgs) + 1
        _drain_or_raise(store)
        _finish_run(spec, store)
    finally:
        store.close()
    return totals.summary(started, store, kept=kept, organizations=len(plan.organizations))


def _same_population(block: Any, plan: Plan, epoch_count: int) -> bool:
    """Whether a layer's generator block describes this living population (seed, options,
    epoch and epoch count), whatever its as-of or format."""
    if not isinstance(block, dict):
        return False
    ours = orjson.loads(orjson.dumps({"seed": plan.seed, "options": dict(plan.options)}))
    return (
        {"seed": block.get("seed"), "options": block.get("options")} == ours
        and block.get("epoch", block.get("as_of")) == plan.last_updated
        and block.get("count") == epoch_count
        and not block.get("start")
    )


def _delete_batch_files(store: _Store, spec: Bronze) -> None:
    """Delete one batch: its manifest first, then its identity and files (by their name)."""
    name = _batch_name(spec)
    store.delete([f"{_CDC_MANIFESTS}/{name}.json"])
    store.delete([f"{_CDC_RUN}/{name}.json"])
    folders = [_batch_folder(spec, deleted) for deleted in (False, True)]
    folders += [_stay_batch_key(spec, kind, "").rsplit("/", 1)[0] for kind in _STAY_TYPES]
    for folder in folders:  # the stays' folders too (a batch written with --encounters)
        store.delete([k for k in store.list(folder) if k.rsplit("/", 1)[-1].startswith(name + ".")])


def _write_batch(
    plan: Plan,
    spec: Bronze,
    *,
    workers: int = _DEFAULT_WORKERS,
    shard: tuple[int, int] = (0, 1),
    overwrite: bool = False,
    progress: _Tick = None,
) -> dict[str, Any]:
    """Append the change batch (since, until] of spec.window to the layer: its identity, its
    units' files, then its manifest. Refused if the layer holds another population, or (unless
    overwrite) the same batch name from another run; our own batch is rewritten, same bytes."""
    w = spec.window
    assert w is not None and w.since is not None
    started = time.perf_counter()
    name = _batch_name(spec)
    manifest_key, identity_key = f"{_CDC_MANIFESTS}/{name}.json", f"{_CDC_RUN}/{name}.json"
    store = _open_store(spec)
    try:
        store.prepare()
        found, layer = _manifest_generator(store)
        if found and not _same_population(layer, plan, w.epoch_count):
            raise BronzeError(
                f"{store.display()} holds another population ({_describe(layer)}): a change "
                "batch belongs with the layer of its seed, count, epoch and options"
            )
        ours = orjson.loads(orjson.dumps(_generator_block(plan, spec)))
        keys = (manifest_key, identity_key)
        delete = functools.partial(_delete_batch_files, store, spec)
        found, _ = _overwrite_policy(store, keys, ours, overwrite, delete)
        if not found:
            _claim(store, identity_key, _identity_bytes(plan, spec))
        totals = _write_units(plan, spec, store, list(_shard_units(spec, shard)), workers, progress)
        counts = dict(totals.units)
        for u in range(_unit_count(spec)):  # other shards' units: counted, not written
            if u not in counts:
                counts[u] = _batch_counts(_batch_unit_files(plan, spec, u))
        manifest = _batch_manifest_bytes(plan, spec, counts)
        totals.bytes += store.write(manifest_key, manifest, "application/json")
        totals.files += 1
        _drain_or_raise(store)
        store.delete([identity_key])
        store.remove_temp_files()
        store.remove_run_folder()
    finally:
        store.close()
    deleted = sum(c[1] for c in totals.units.values())
    stays = sum(c[2] for c in totals.units.values())  # Encounters written by this shard
    return totals.summary(
        started, store, kept=0, organizations=0, deleted=deleted, batch=name, stays=stays
    )


# -- layer continuation: a layer's next change batch, from its manifests (--continue)


def _whole(low: int, high: int) -> Callable[[Any], bool]:
    return lambda v: type(v) is int and low <= v <= high


def _is_instant(value: Any) -> bool:
    try:
        return isinstance(value, str) and _parse_as_of(value) is not None
    except ValueError:
        return False


def _bad_layer_field(block: Mapping[str, Any]) -> tuple[str, str] | None:
    """The first field of a layer's generator block that --continue cannot use, with what it
    must be; None if every field it reads is sound."""
    gz, fmt = block.get("gzip"), block.get("format")
    rolls = fmt in _FORMATS and _FORMATS[fmt].rolls_over
    checks: tuple[tuple[str, Callable[[Any], bool], str], ...] = (
        ("seed", _whole(0, _MAX_SEED), f"a whole number from 0 to {_MAX_SEED}"),
        ("count", _whole(1, _MAX_INDEX + 1), "a whole number of patients, at least 1"),
        ("start", lambda v: v is None or (type(v) is int and v == 0), "0: a population"),
        ("format", lambda v: isinstance(v, str) and v in _FORMATS, f"one of {', '.join(_FORMATS)}"),
        ("gzip", lambda v: type(v) is bool, "true or false"),
        ("gzip_level", _whole(0, 9) if gz is True else (lambda v: v is None), "0-9 with gzip"),
        ("records_per_file", _whole(1, _MAX_INDEX + 1) if rolls else (lambda v: v is None), "≥ 1"),
        ("as_of", _is_instant, "an ISO-8601 instant"),
        ("epoch", lambda v: v is None or _is_instant(v), "an ISO-8601 instant"),
    )
    for name, ok, what in checks:
        if not ok(block.get(name)):
            return name, f"it must be {what}"
    return None


def _layer_options(options: Any) -> dict[str, Any]:
    """A layer's options as its manifest holds them, if they are the canonical set this version
    writes (make_plan takes them as they are); ValueError saying what is wrong otherwise."""
    optional = {"encounters"}  # recorded only when on (normalise_options leaves it out)
    if not isinstance(options, dict) or not set(_OPTION_DEFAULTS) - optional <= set(options):
        raise ValueError(f"it must be an object of {', '.join(_OPTION_DEFAULTS)}")
    try:
        canonical = _normalise_options(**options)
    except (ValueError, TypeError) as e:
        message = str(e)
        for name in _OPTION_DEFAULTS:  # the manifest's field, not a flag the user never gave
            message = message.replace(f"--{name.replace('_', '-')}", f"options.{name}")
        raise ValueError(message) from None
    if orjson.loads(orjson.dumps(canonical)) != options:
        raise ValueError("it is not in the form this version writes")
    return options


def _layer_block(store: _Store) -> dict[str, Any]:
    """The layer's generator block, every field --continue reads checked: BronzeError naming
    the file and the field if one is missing, of another type or out of range."""
    found, block = _manifest_generator(store)
    where = f"{store.display()}/{_MANIFEST}"
    if not found:
        raise BronzeError(f"{store.display()} has no {_MANIFEST} of a population to continue")
    if not isinstance(block, dict):
        raise BronzeError(f"{where} has no readable extension.generator: it cannot be continued")
    bad = _bad_layer_field(block)
    if bad is None:
        try:
            block = {**block, "options": _layer_options(block.get("options"))}
        except ValueError as e:
            bad = ("options", str(e))
    if bad is None and _parse_as_of(block["as_of"]) < _parse_as_of(
        block.get("epoch") or block["as_of"]
    ):
        bad = ("as_of", "it must not be before extension.generator.epoch")
    if bad is not None:
        value = orjson.dumps(block.get(bad[0])).decode()
        value = value if len(value) <= 40 else value[:37] + "..."
        raise BronzeError(
            f"{where}: extension.generator.{bad[0]} = {value} cannot be continued ({bad[1]})"
        )
    return block


def _batches(store: _Store) -> tuple[list[datetime], list[str]]:
    """The untils of the layer's finished batches and the names of its unfinished ones;
    BronzeError for a name this version did not write."""
    names = [k.rsplit("/", 1)[-1] for k in store.list(_CDC_MANIFESTS)]
    unfinished = [k.rsplit("/", 1)[-1].removesuffix(".json") for k in store.list(_CDC_RUN)]
    try:
        for name in unfinished:
            _batch_window(name)
        return [_batch_window(n)[1] for n in names], unfinished
    except ValueError as e:
        raise BronzeError(f"{store.display()} has a batch this run cannot read: {e}") from None


def _delete_batch(spec: Bronze, name: str) -> None:
    """Delete the batch <since>_<until> of the layer at spec.root (an unfinished one: its
    files and identity); ValueError if name is not a batch name."""
    since, until = _batch_window(name)
    window = Window(0, until, since)
    spec = replace(spec, window=window)
    store = _open_store(spec)
    try:
        _delete_batch_files(store, spec)
    finally:
        store.close()


def _clear_unfinished(spec: Bronze, unfinished: list[str], ours: str, overwrite: bool) -> None:
    """Unfinished batches other than ours (one that failed midway: its files are in a partition
    already) are refused, or deleted with overwrite."""
    for name in unfinished:
        if name == ours:
            continue
        if not overwrite:
            until = _iso_instant(_batch_window(name)[1])
            raise BronzeError(
                f"{spec.root} holds the unfinished batch {name}: finish it with the same "
                f"command and --as-of {until}, or add --overwrite to delete it"
            )
        _delete_batch(spec, name)


def continue_layer(spec: Bronze, *, overwrite: bool = False) -> tuple[Plan, Bronze] | None:
    """The next change batch of the layer at spec.root, as write_bronze takes it: the plan
    (seed, epoch, options) and spec (format, gzip, records per file, epoch count) from the
    layer's _manifest.json, the window's since from its newest batch (or its as-of); from spec
    only the root, store settings and the window's until, versions and faults are used.

    None if the layer is already at until. Unfinished batches of other windows are refused
    (deleted with overwrite). ValueError for a window that cannot follow the layer;
    BronzeError, naming the file and field, for a layer that cannot be continued."""
    w = spec.window
    if w is None:
        raise ValueError("continue_layer needs spec.window (its until)")
    until = w.until
    store = _open_store(spec)
    try:
        block = _layer_block(store)
        ends, unfinished = _batches(store)
    finally:
        store.close()
    since = max([_parse_as_of(block["as_of"]), *ends])
    if until < since:
        raise ValueError(
            f"--as-of {_iso_instant(until)} is before the layer's end, {_iso_instant(since)}"
        )
    ours = f"{_stamp(since)}_{_stamp(until)}"
    _clear_unfinished(spec, unfinished, ours, overwrite)
    if until == since:
        return None
    plan = make_plan(block["seed"], block.get("epoch") or block["as_of"], **block["options"])
    window = w._replace(epoch_count=block["count"], since=since)
    _check_faults(window.faults)
    _population_size(plan, window.epoch_count, until)  # within the index range by then
    continued = replace(
        spec,
        count=block["count"],
        start=0,
        format=block["format"],
        gzip=block["gzip"],
        gzip_level=_DEFAULT_GZIP_LEVEL if block["gzip_level"] is None else block["gzip_level"],
        records_per_file=block["records_per_file"] or _DEFAULT_RECORDS_PER_FILE,  # None: json
        window=window,
    )
    return plan, _covering(plan, continued)


# ---------------------------------------------------------------------------------------------
# CLI: a thin argparse layer over the API above; main() only maps exceptions to exit codes
# ---------------------------------------------------------------------------------------------

_EPILOG = """examples:
  python fhir_patient_generator.py                         one patient, pretty JSON + S3 key
  python fhir_patient_generator.py --seed 42 --as-of 2025-10-13T02:22:22Z
  python fhir_patient_generator.py --count 1000 --seed 7 > patients.ndjson
  python fhir_patient_generator.py --count 500 --min-age 65 --states CA,NY --seed 1
  python fhir_patient_generator.py --count 100 --profile us-core --seed 1   US Core Patients
  python fhir_patient_generator.py --count 100000 --seed 7 --format ndjson --output ./lake/bronze
  python fhir_patient_generator.py --count 100000 --seed 7 --output s3://my-bucket/bronze \\
      --format ndjson --gzip --workers 4
  a living population (docs/living-population.md):
  python fhir_patient_generator.py --count 1000 --seed 7 --epoch 2026-01-01T00:00:00Z \\
      --as-of 2026-03-01T00:00:00Z                          the snapshot at as-of, NDJSON
  python fhir_patient_generator.py --count 1000 --seed 7 --epoch 2026-01-01T00:00:00Z \\
      --since 2026-02-28T00:00:00Z --as-of 2026-03-01T00:00:00Z     one day's change batch
  python fhir_patient_generator.py --count 1000 --seed 7 --as-of 2026-01-01T00:00:00Z \\
      --format ndjson --output ./lake/living        a layer at the epoch: its own root
  python fhir_patient_generator.py --output ./lake/living --continue \\
      --as-of 2026-03-02T00:00:00Z                 the next batch of the layer (a daily job)
"""
_EXIT_USAGE, _EXIT_RUNTIME, _EXIT_INTERRUPTED = 2, 1, 130
# The bronze options: each needs --output (a None or False value means "not given").
_BRONZE_FLAGS = ("format", "gzip", "gzip_level", "records_per_file", "overwrite", "workers")
_BRONZE_FLAGS += ("shard", "concurrency", "endpoint_url", "quiet")


class _UsageError(ValueError):
    """Bad command-line input: one line on stderr, exit 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # argparse's own errors are usage errors too
        raise _UsageError(message)


def _int_in(low: int, high: int | None = None) -> Callable[[str], int]:
    """An argparse type: a whole number in [low, high] (no upper bound when high is None)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < low or (high is not None and value > high):
            bound = f"from {low} to {high}" if high is not None else f"at least {low}"
            raise argparse.ArgumentTypeError(f"must be {bound}, not {value}")
        return value

    return parse


def _shard(text: str) -> tuple[int, int]:
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
    if not match or not int(match[1]) < int(match[2]):
        raise argparse.ArgumentTypeError(f"{text!r} is not K/N with 0 <= K < N, e.g. 0/4")
    return int(match[1]), int(match[2])


def _build_parser() -> argparse.ArgumentParser:
    """The command-line interface (defaults come from OPTION_DEFAULTS and the DEFAULT_ names)."""
    p = _Parser(
        prog="fhir_patient_generator.py",
        description="Generate realistic, reproducible FHIR Patient resources for CMS metrics.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    d = _OPTION_DEFAULTS
    add = p.add_argument
    add("--version", action="version", version=f"%(prog)s {__version__}")
    add(
        "--seed", type=_int_in(0, _MAX_SEED), metavar="INT", help="seed (default: random, reported)"
    )
    add(
        "--as-of",
        metavar="ISO",
        help="ISO-8601 time that ages, dates and meta.lastUpdated refer to "
        "(default: now, UTC), e.g. 2025-10-13T02:22:22Z",
    )
    add("--count", type=_int_in(1), metavar="N", help="N compact patients, NDJSON on stdout")
    add(
        "--start",
        "--start-index",
        type=_int_in(0, _MAX_INDEX),
        default=0,
        metavar="I",
        help="index of the first patient (default %(default)s)",
    )
    age = _int_in(0, _MAX_AGE)
    add(
        "--min-age",
        type=age,
        default=d["min_age"],
        metavar="A",
        help="youngest age on the record: at as-of, or at death (default %(default)s)",
    )
    add(
        "--max-age",
        type=age,
        default=d["max_age"],
        metavar="A",
        help="oldest (default %(default)s)",
    )
    add("--states", metavar="CA,NY,...", help="only these USPS codes (default: 50 states + DC)")
    add(
        "--lookback-years",
        type=float,
        default=d["lookback_years"],
        metavar="Y",
        help="deaths fall within this many years before as-of (default %(default)g)",
    )
    add(
        "--mortality-rate",
        type=float,
        metavar="P",
        help="fixed probability that a patient died in the window, instead of the life table",
    )
    add(
        "--profile",
        choices=_PROFILES,
        default=d["profile"],
        help="cms: the compact seed record (default); us-core: adds name, race, ethnicity and "
        "birth sex as a US Core Patient",
    )
    add(
        "--fhir-version",
        choices=_FHIR_VERSIONS,
        default=d["fhir_version"],
        help="the FHIR version every written resource is valid in (default %(default)s; "
        "the API returns the matching fhir.resources models)",
    )
    add(
        "--encounters",
        action="store_true",
        help="also each patient's inpatient stays in the look-back window: an Encounter and "
        "its principal-diagnosis Condition per stay (docs/encounters.md); with --epoch also "
        "those after it, each in the change batch of its discharge",
    )
    add("--bucket", default=_DEFAULT_BUCKET, help="bucket of the suggested key (%(default)s)")
    add("--prefix", default=_DEFAULT_PREFIX, help="prefix of the suggested key (%(default)s)")
    add(
        "--validate",
        action="store_true",
        help="re-validate every Patient with fhir.resources (slow); exit 1 naming the bad one",
    )
    _add_living_arguments(p)
    _add_bronze_arguments(p)
    return p


def _add_living_arguments(p: argparse.ArgumentParser) -> None:
    b = p.add_argument_group("a living population (see docs/living-population.md)")
    add = b.add_argument
    add(
        "--epoch",
        metavar="ISO",
        help="the population of --count patients is defined at this time and lives on: "
        "write it as of --as-of (default: the epoch is --as-of)",
    )
    add("--since", metavar="ISO", help="write the change batch (since, as-of] instead")
    add(
        "--versions",
        choices=("all", "latest"),
        help="a batch holds every version (all, default, like _history) or each patient's "
        "last one (latest, like a Bulk Data _since export)",
    )
    for name, what in (
        ("late", "delivered 1..7 days after its instant"),
        ("duplicate", "delivered twice"),
        ("out-of-order", "moved to a random place in its file"),
    ):
        add(f"--{name}", type=float, metavar="P", help=f"delivery fault: share of versions {what}")
    add(
        "--continue",
        dest="continue_",
        action="store_true",
        help="with --output: the layer's next batch, from its manifests (seed, count, epoch, "
        "options, format, and --since = the newest batch's as-of); give --as-of",
    )


def _add_bronze_arguments(p: argparse.ArgumentParser) -> None:
    b = p.add_argument_group("bronze layer (with --output; see docs/bronze.md)")
    add = b.add_argument
    add(
        "--output",
        metavar="DIR|s3://BUCKET/PREFIX",
        help="layer root: a directory or s3://bucket/prefix (needs --count)",
    )
    add(
        "--format",
        choices=_FORMATS,
        help=f"json: a file per patient (default {_DEFAULT_FORMAT}); ndjson",
    )
    add("--gzip", action="store_true", help="gzip every file (.json.gz, .ndjson.gz)")
    add("--gzip-level", type=_int_in(0, 9), help=f"zlib level 0-9 (default {_DEFAULT_GZIP_LEVEL})")
    add(
        "--records-per-file",
        type=_int_in(1),
        help=f"patients per NDJSON file and per work unit (default {_DEFAULT_RECORDS_PER_FILE:,})",
    )
    add("--overwrite", action="store_true", help="replace another run found at --output")
    add("--workers", type=_int_in(1), metavar="N", help=f"processes (default {_DEFAULT_WORKERS})")
    add("--shard", type=_shard, metavar="K/N", help="write only shard K of N, e.g. 0/4 (of units)")
    add(
        "--concurrency",
        type=_int_in(1),
        help=f"concurrent S3 uploads per process (default {_DEFAULT_CONCURRENCY})",
    )
    add("--endpoint-url", metavar="URL", help="S3-compatible endpoint (else $AWS_ENDPOINT_URL)")
    add("--quiet", action="store_true", help="no progress bar (the summary stays)")


def _check_bronze_args(args: argparse.Namespace) -> None:
    """Bad combinations of the bronze options are usage errors."""
    if args.output is None:
        given = [n for n in _BRONZE_FLAGS if getattr(args, n) not in (None, False)]
        if given:
            raise _UsageError(f"--{given[0].replace('_', '-')} needs --output")
        return
    if args.count is None:
        raise _UsageError("--output needs --count")
    _check_output_args(args)


def _check_output_args(args: argparse.Namespace) -> None:
    """--output, its store's flags and --overwrite: usage errors before any work."""
    try:
        _check_root(args.output)
        if _scheme(args.output) == "s3":
            _s3_endpoint(args.endpoint_url)  # a URL without a scheme: before any work
    except ValueError as e:
        raise _UsageError(str(e)) from None
    if args.overwrite and args.shard and args.shard[1] > 1:
        raise _UsageError(
            "--overwrite cannot be combined with --shard (clear the output once first)"
        )
    if args.gzip_level is not None and not args.gzip:
        raise _UsageError("--gzip-level needs --gzip")


_FAULT_FLAGS = ("late", "duplicate", "out_of_order")


def _check_living_args(args: argparse.Namespace) -> None:
    """Bad combinations of the living population's options are usage errors."""
    batch = [n for n in ("versions", *_FAULT_FLAGS) if getattr(args, n) is not None]
    if args.since is not None and args.epoch is None:
        raise _UsageError("--since needs --epoch (the time the population is defined at)")
    if batch and args.since is None:
        raise _UsageError(f"--{batch[0].replace('_', '-')} needs --since (it shapes a batch)")
    if args.epoch is not None and args.count is None:
        raise _UsageError("--epoch needs --count (the population at the epoch)")
    if args.epoch is not None and args.start:
        raise _UsageError("--start cannot be combined with --epoch: a population begins at #0")


def _time_arg(flag: str, value: str) -> datetime:
    """parse_as_of for --epoch or --since: its message names the flag."""
    try:
        return _parse_as_of(value)
    except ValueError as e:
        raise ValueError(f"--{flag}: {e}") from None


def _plan_from_args(args: argparse.Namespace) -> Plan:
    """The run's plan (at --epoch if given, else at --as-of); bad values are usage errors."""
    options = {name: getattr(args, name) for name in _OPTION_DEFAULTS}
    try:
        _check_index_range(args.start, args.count or 1)
        return make_plan(
            _draw_seed() if args.seed is None else args.seed,
            _parse_as_of(args.as_of) if args.epoch is None else _time_arg("epoch", args.epoch),
            **options,
        )
    except ValueError as e:
        raise _UsageError(str(e)) from None


def _window_from_args(args: argparse.Namespace, plan: Plan) -> Window | None:
    """The snapshot or batch asked for; None without --epoch. Usage errors for bad times."""
    if args.epoch is None:
        return None
    try:
        until = _parse_as_of(args.as_of)
        since = None if args.since is None else _time_arg("since", args.since)
        faults = Faults(*(getattr(args, n) or 0.0 for n in _FAULT_FLAGS))
        _check_faults(faults)
        _check_window(plan, since, until)
        _population_size(plan, args.count, until)  # within the index range by then
    except ValueError as e:
        raise _UsageError(str(e)) from None
    return Window(
        epoch_count=args.count,
        until=until,
        since=since,
        latest=args.versions == "latest",
        faults=faults,
    )


_CONTINUED = ("seed", "count", "epoch", "since", *_OPTION_DEFAULTS, "format", "gzip")
_CONTINUED += ("gzip_level", "records_per_file", "start")


def _continued(
    args: argparse.Namespace, parser: argparse.ArgumentParser
) -> tuple[Plan, Bronze] | None:
    """--continue: the plan and spec of the layer's next batch (continue_layer), or None when
    the layer is already at --as-of; usage errors for flags the layer decides."""
    if args.output is None or args.as_of is None:
        raise _UsageError("--continue needs --output (the layer) and --as-of (the batch's end)")
    given = [n for n in _CONTINUED if getattr(args, n) != parser.get_default(n)]
    if given:
        raise _UsageError(f"--continue takes --{given[0].replace('_', '-')} from the layer")
    _check_output_args(args)
    try:
        faults = Faults(*(getattr(args, n) or 0.0 for n in _FAULT_FLAGS))
        window = Window(0, args.as_of, None, args.versions == "latest", faults)
        return continue_layer(
            replace(_bronze_from_args(args, None), window=window), overwrite=args.overwrite
        )
    except ValueError as e:
        raise _UsageError(str(e)) from None


def _bronze_from_args(
    args: argparse.Namespace, plan: Plan | None, window: Window | None = None
) -> Bronze:
    """The spec --output and the bronze flags ask for (with a plan: covering its window)."""

    def given(value: Any, default: Any) -> Any:
        return default if value is None else value

    spec = Bronze(
        root=args.output.rstrip("/") or "/",
        count=args.count or 1,
        start=args.start,
        format=given(args.format, _DEFAULT_FORMAT),
        gzip=args.gzip,
        gzip_level=given(args.gzip_level, _DEFAULT_GZIP_LEVEL),
        records_per_file=given(args.records_per_file, _DEFAULT_RECORDS_PER_FILE),
        validate=args.validate,
        concurrency=given(args.concurrency, _DEFAULT_CONCURRENCY),
        endpoint_url=args.endpoint_url,
        token=str(os.getpid()),
        window=window,
    )
    return spec if plan is None else _covering(plan, spec)  # the bar counts a window's indexes


def _progress_bar(total: int) -> tuple[Callable[[int], None], Callable[[], None]]:
    """A one-line progress bar on stderr, redrawn at most 4 times a second."""
    state = {"done": 0, "drawn": 0.0}
    started = time.perf_counter()

    def tick(n: int) -> None:
        state["done"] += n
        now = time.perf_counter()
        if now - state["drawn"] < 0.25:
            return
        state["drawn"] = now
        done = min(state["done"], total)
        rate = done / max(now - started, 1e-9)
        bar = "#" * (30 * done // total)
        eta = (total - done) / rate if rate else 0
        sys.stderr.write(
            f"\r[{bar:<30}] {100 * done // total:3d}% {done:,}/{total:,} patients, "
            f"{rate:,.0f}/s, ETA {eta:,.0f} s\x1b[K"
        )
        sys.stderr.flush()

    def close() -> None:
        if state["drawn"]:
            sys.stderr.write("\r\x1b[K")
            sys.stderr.flush()

    return tick, close


def _run_bronze(args: argparse.Namespace, plan: Plan, spec: Bronze) -> None:
    """--output: write the bronze layer (or a change batch), then one summary line on stderr."""
    shard = args.shard or (0, 1)
    tick, close = None, None
    if not args.quiet and sys.stderr.isatty():
        shard_records = sum(len(_unit_range(spec, u)) for u in _shard_units(spec, shard))
        tick, close = _progress_bar(max(shard_records, 1))
    try:
        summary = write_bronze(
            plan,
            spec,
            workers=args.workers or _DEFAULT_WORKERS,
            shard=shard,
            overwrite=args.overwrite,
            progress=tick,
        )
    except KeyboardInterrupt:
        raise KeyboardInterrupt(
            "interrupted; no partial file was left (run the same command again to resume)"
        ) from None
    finally:
        if close:
            close()
    seconds = summary["seconds"]
    part = f" (shard {shard[0]}/{shard[1]})" if shard[1] > 1 else ""
    if spec.mode == _BATCH_RUN:
        stays = f" + {summary['stays']:,} stays" if _stays_on(plan) else ""
        print(
            f"wrote batch {summary['batch']}{part}: {summary['records']:,} versions + "
            f"{summary['deleted']:,} deletions{stays} ({summary['files']:,} files, "
            f"{summary['bytes'] / 1e6:,.1f} MB) to {summary['root']} in {seconds:.2f} s",
            file=sys.stderr,
        )
        return
    if summary["kept"]:
        part += f" (resumed: {summary['kept']:,} kept from the interrupted run)"
    print(
        f"wrote {summary['records']:,} patients{part} + {summary['organizations']:,} "
        f"organizations ({summary['files']:,} files, {summary['bytes'] / 1e6:,.1f} MB) to "
        f"{summary['root']} in {seconds:.2f} s ({summary['records'] / seconds:,.0f} patients/s)",
        file=sys.stderr,
    )


def _window_chunks(plan: Plan, w: Window, validate: bool) -> Iterator[bytes]:
    """A snapshot or batch as NDJSON chunks, computed DEFAULT_RECORDS_PER_FILE indexes at a
    time (as a bronze run's units: --out-of-order moves lines within such a range)."""
    n, line = _population_size(plan, w.epoch_count, w.until), _version_line(plan, validate)
    for lo in range(0, n, _DEFAULT_RECORDS_PER_FILE):
        hi = min(lo + _DEFAULT_RECORDS_PER_FILE, n)
        if _stays_on(plan):
            yield from _ndjson(_window_lines_with_stays(plan, w, range(lo, hi), validate))
            continue
        yield from _ndjson(map(line, _window_versions(plan, w, lo, hi)))


def _window_lines_with_stays(
    plan: Plan, w: Window, indexes: range, validate: bool
) -> Iterator[bytes]:
    """--encounters on stdout: a snapshot's patients each followed by its stays' lines; a
    batch's versions of the range, then the range's stays delivered in it, in index order."""
    if w.since is None:
        for _, patient, pairs in _window_patients_and_stays(plan, w, indexes, validate):
            yield patient
            yield from itertools.chain.from_iterable(pairs)
        return
    versions = _window_versions(plan, w, indexes.start, indexes.stop)
    yield from map(_version_line(plan, validate), versions)
    found = _window_stays(plan, w, indexes.start, indexes.stop)
    for i in sorted(found):
        for pair in _live_stay_pairs(plan, found[i], validate):
            yield from pair


def _run_stdout(args: argparse.Namespace, plan: Plan, window: Window | None) -> None:
    """Without --output: one pretty patient and its key, or --count patients as NDJSON (with
    --epoch: the snapshot at --as-of, or the batch since --since)."""
    if window is not None:
        out = sys.stdout.buffer
        for chunk in _window_chunks(plan, window, args.validate):
            out.write(chunk)
    elif args.count is None:
        record = build_record(plan, args.start)
        sys.stdout.write(to_json(record, pretty=True) + "\n")
        sys.stdout.write(
            f"Suggested S3 Path: {suggested_s3_key(record, args.bucket, args.prefix)}\n"
        )
        for pair in (
            _patient_stays_json(plan, args.start, _sample(plan, args.start))
            if _stays_on(plan)
            else ()
        ):
            for data in b"\n".join(pair).split(b"\n"):  # HAIs follow their Condition
                sys.stdout.write(to_json(orjson.loads(data), pretty=True) + "\n")
    elif _stays_on(plan):  # each patient's line, then its stays' (Encounter, Condition, ...)
        lines = _patient_and_stays(plan, args.validate)
        out = sys.stdout.buffer
        for chunk in _ndjson(map(lines, range(args.start, args.start + args.count))):
            out.write(chunk)
    else:
        out = sys.stdout.buffer
        for chunk in ndjson_chunks(plan, args.start, args.start + args.count, args.validate):
            out.write(chunk)
    sys.stdout.flush()


def _run(argv: list[str] | None = None) -> None:
    """The whole command: parse, plan, write; raises UsageError, BronzeError, OSError."""
    parser = _build_parser()
    args = parser.parse_args(argv)
    if args.continue_:
        continued = _continued(args, parser)
        if continued is None:
            print(
                f"{args.output} is already at --as-of {args.as_of}: nothing to write",
                file=sys.stderr,
            )
        else:
            _run_bronze(args, *continued)
        return
    _check_bronze_args(args)
    _check_living_args(args)
    plan = _plan_from_args(args)
    window = _window_from_args(args, plan)
    if args.seed is None:
        at = "as-of" if window is None else "epoch"
        print(
            f"seed {plan.seed}, {at} {plan.last_updated} (repeat with --seed {plan.seed} "
            f"--{at} {plan.last_updated})",
            file=sys.stderr,
        )
    if args.output is None:
        _run_stdout(args, plan, window)
    else:
        _run_bronze(args, plan, _bronze_from_args(args, plan, window))


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt  # SIGTERM cleans up like Ctrl-C


def main(argv: list[str] | None = None) -> int:
    """Run the CLI and return its exit status: 0, 2 bad input, 1 runtime failure, 130 interrupt."""
    prog = "fhir_patient_generator.py"
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _interrupt) if in_main_thread else None
    try:
        _run(argv)
    except _UsageError as e:
        print(f"{prog}: error: {e} (see --help)", file=sys.stderr)
        return _EXIT_USAGE
    except BrokenPipeError:  # e.g. piped into `head`: not an error of ours
        sys.stderr.close()
        return 0
    except (BronzeError, OSError) as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return _EXIT_RUNTIME
    except KeyboardInterrupt as e:
        # KeyboardInterrupt() is truthy but prints as "": say what happened
        print(f"{prog}: error: {str(e) or 'interrupted'}", file=sys.stderr)
        return _EXIT_INTERRUPTED
    finally:
        if in_main_thread:
            signal.signal(signal.SIGTERM, previous)
    return 0


if __name__ == "__main__":
    sys.exit(main())
