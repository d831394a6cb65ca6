"""MetricCare FHIR Patient generator: realistic, reproducible, CMS-focused synthetic Patients.

    >>> from fhir_patient_generator import generate_patient
    >>> p = generate_patient(seed=42, as_of="2025-10-13T02:22:22Z")   # a fhir.resources Patient

Patient #i is a pure function of (seed, i, as_of, options): every random bit a record needs comes
from one keyed BLAKE2b hash of its index, so any process, in any order, writes the same bytes.

Read top to bottom: reference tables -> sampling -> the record -> the FHIR model -> writers -> CLI.
"""

from __future__ import annotations

import argparse
import bisect
import contextlib
import csv
import functools
import hashlib
import itertools
import os
import re
import secrets
import shutil
import signal
import struct
import sys
import tempfile
import threading
import time
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import orjson

__version__ = "1.0.0"

DEFAULT_BUCKET = "metriccare-dev"
DEFAULT_PREFIX = "bronze/patient"
DEFAULT_LOOKBACK_YEARS = 3.0
DEFAULT_HOSPITALS_PER_MILLION = 1.0
MAX_AGE = 110  # the life table's last row; nobody older is generated
MAX_INDEX = 10**10 - 1  # MRNs are ten digits, one per index
MRN_SYSTEM = "MetricCare-MRN"  # the seed README's identifier namespace
ORG_SYSTEM = "urn:metriccare:organization"
PROFILES = ("cms", "us-core")  # --profile: cms is the seed contract; us-core adds US Core Patient
# US Core Patient (5.0.1 and later; docs/us-core.md cites the pages these facts come from)
US_CORE_PATIENT = "http://hl7.org/fhir/us/core/StructureDefinition/us-core-patient"
US_CORE_RACE = "http://hl7.org/fhir/us/core/StructureDefinition/us-core-race"
US_CORE_ETHNICITY = "http://hl7.org/fhir/us/core/StructureDefinition/us-core-ethnicity"
US_CORE_BIRTHSEX = "http://hl7.org/fhir/us/core/StructureDefinition/us-core-birthsex"
CDC_RACE_SYSTEM = "urn:oid:2.16.840.1.113883.6.238"  # CDC Race & Ethnicity (CDCREC)
# Identifier.system must be a URI under us-core; same namespace scheme as ORG_SYSTEM. The cms
# profile keeps MRN_SYSTEM for backward compatibility; the MRN value is the same in both.
US_CORE_MRN_SYSTEM = "urn:metriccare:mrn"
OTHER_RACE_CODE = "2131-1"  # Census "Some Other Race": text only, no ombCategory (docs/us-core.md)
OTHER_RACE_TEXT = "Other Race"
TWO_OR_MORE_TEXT = "Two or more races"
# Shares of FHIR gender codes beyond sex. Modelling choices, not Census statistics: the Census
# age x sex table has only male and female. Small, so sex-based metrics stay close to the table.
GENDER_OTHER_SHARE = 0.003
GENDER_UNKNOWN_SHARE = 0.001

DATA_DIR = Path(__file__).resolve().with_name("reference_data")
SECONDS_PER_YEAR = 365.2425 * 86400

# ---------------------------------------------------------------------------------------------
# Reference tables (reference_data/*.csv; sources and licences in reference_data/SOURCES.md)
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Reference:
    """The US reference tables, read once from reference_data/ and never changed."""

    states: tuple[tuple[str, str, int, bool], ...]  # (code, name, population, territory)
    cities: Mapping[str, tuple[tuple[str, int], ...]]  # state -> ((city, population), ...)
    age_sex: tuple[tuple[int, int, int], ...]  # (age, male, female) for ages 0..MAX_AGE
    qx: Mapping[str, tuple[float, ...]]  # sex -> probability of dying within a year, by age
    languages: tuple[tuple[str, str, int], ...]  # (bcp47, display, speakers)
    race_ethnicity: tuple[tuple[str, str, str, str, int], ...]  # race, code, eth, code, pop


def _read_csv(name: str) -> list[dict[str, str]]:
    with open(DATA_DIR / name, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


@functools.cache
def load_reference() -> Reference:
    """Read the bundled reference tables (cached: they never change at run time)."""
    states = tuple(
        (r["code"], r["name"], int(r["population"]), r["territory"] == "true")
        for r in _read_csv("states.csv")
    )
    cities: dict[str, list[tuple[str, int]]] = {}
    for r in _read_csv("cities.csv"):
        cities.setdefault(r["state"], []).append((r["city"], int(r["population"])))
    qx: dict[str, list[float]] = {"male": [], "female": []}
    for r in _read_csv("life_table_hmd2022_full.csv"):
        qx["male"].append(float(r["qx_male"]))
        qx["female"].append(float(r["qx_female"]))
    age_sex = _expand_open_age(_read_csv("age_sex.csv"), qx)
    languages = tuple(
        (r["bcp47"], r["display"], int(r["speakers_age5plus"])) for r in _read_csv("languages.csv")
    )
    race_ethnicity = tuple(
        (r["race"], r["race_code"], r["ethnicity"], r["ethnicity_code"], int(r["population"]))
        for r in _read_csv("race_ethnicity_joint.csv")
    )
    return Reference(
        states=states,
        cities={k: tuple(v) for k, v in cities.items()},
        age_sex=age_sex,
        qx={k: tuple(v) for k, v in qx.items()},
        languages=languages,
        race_ethnicity=race_ethnicity,
    )


def _expand_open_age(
    rows: list[dict[str, str]], qx: Mapping[str, list[float]]
) -> tuple[tuple[int, int, int], ...]:
    """Spread the Census '100+' count over ages 100..110 in proportion to life-table survivors."""
    out = [(int(r["age"]), int(r["male"]), int(r["female"])) for r in rows if r["age"] != "100+"]
    top = next(r for r in rows if r["age"] == "100+")
    split: dict[str, list[int]] = {}
    for sex in ("male", "female"):
        alive, survivors = 1.0, []
        for age in range(100, MAX_AGE + 1):
            survivors.append(alive)
            alive *= 1.0 - qx[sex][age]
        total, count = sum(survivors), int(top[sex])
        split[sex] = [round(count * s / total) for s in survivors]
    out += [(100 + k, split["male"][k], split["female"][k]) for k in range(MAX_AGE - 99)]
    return tuple(out)


# ---------------------------------------------------------------------------------------------
# Sampling: keyed hashes give every random bit; integer cumulative weights make draws exact
# ---------------------------------------------------------------------------------------------

M32 = (1 << 32) - 1
M122 = (1 << 122) - 1
M34 = (1 << 34) - 1
_U32X16 = struct.Struct("<16I").unpack  # a 64-byte digest as sixteen little-endian 32-bit draws


def _cumulative(weights: Iterable[int]) -> tuple[int, ...]:
    total, out = 0, []
    for w in weights:
        total += w
        out.append(total)
    return tuple(out)


def _pick(cum: tuple[int, ...], u32: int) -> int:
    """Index drawn in proportion to the weights behind `cum`, from 32 uniform bits."""
    return bisect.bisect_right(cum, (u32 * cum[-1]) >> 32)


def _hash_int(key: bytes, data: bytes, size: int = 64) -> int:
    return int.from_bytes(hashlib.blake2b(data, key=key, digest_size=size).digest(), "little")


def _mix_uuid(x: int, mul: tuple[int, int, int]) -> int:
    """A bijection of the 122-bit space (odd multiplies and xorshifts are invertible)."""
    x = (x * mul[0]) & M122
    x ^= x >> 61
    x = (x * mul[1]) & M122
    x ^= x >> 59
    x = (x * mul[2]) & M122
    return x ^ (x >> 63)


def _uuid_text(x: int) -> str:
    """Lay 122 bits out as an RFC 4122 version-4 UUID string."""
    v = (x >> 74) << 80 | 4 << 76 | ((x >> 62) & 0xFFF) << 64 | 2 << 62 | (x & ((1 << 62) - 1))
    h = "%032x" % v  # noqa: UP031 - measured faster than an f-string here
    return "-".join((h[:8], h[8:12], h[12:16], h[16:20], h[20:]))


def _mrn_number(index: int, add: int, mul: int) -> int:
    """A keyed permutation of 0..10**10-1 (cycle-walking a 34-bit bijection): unique MRNs."""
    x = index
    while True:
        x = ((x + add) * mul) & M34
        x ^= x >> 17
        if x < 10**10:
            return x


def _add_years(d: date, years: int) -> date:
    try:
        return d.replace(year=d.year + years)
    except ValueError:  # 29 February in a common year
        return d.replace(year=d.year + years, day=28)


def _iso_instant(dt: datetime) -> str:
    """FHIR instant in UTC with a Z; microseconds only when present."""
    fmt = "%Y-%m-%dT%H:%M:%S.%fZ" if dt.microsecond else "%Y-%m-%dT%H:%M:%SZ"
    return dt.astimezone(UTC).strftime(fmt)


def parse_as_of(value: datetime | str | None) -> datetime:
    """An aware UTC datetime from a datetime or ISO-8601 text (naive means UTC; None means now)."""
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
    value = value.astimezone(UTC)
    if value.year < 1900 + MAX_AGE:
        raise ValueError(f"as-of {value.date()} is too early (the earliest is {1900 + MAX_AGE})")
    return value


# ---------------------------------------------------------------------------------------------
# The record: a Plan holds everything fixed for a run; build_record(plan, i) is patient #i
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)  # compared and hashed by identity: plans are cached
class Plan:
    """Everything fixed for one run (seed, as-of, options), precomputed so records are cheap."""

    seed: int
    as_of: datetime
    options: Mapping[str, Any]  # normalised options, as recorded in manifests
    key: bytes
    hasher: Any  # blake2b keyed with `key`, never updated itself: build_record copies it
    uuid_add: int
    uuid_mul: tuple[int, int, int]
    mrn_add: int
    mrn_mul: int
    last_updated: str
    state_codes: tuple[str, ...]
    state_cum: tuple[int, ...]
    city_names: tuple[tuple[str, ...], ...]  # by position in state_codes
    city_cum: tuple[tuple[int, ...], ...]
    state_orgs: tuple[tuple[Mapping[str, str], ...], ...]  # organizations per selected state
    organizations: tuple[Mapping[str, str], ...]  # every organization a patient can reference
    cells: tuple[tuple[int, str], ...]  # (age, sex) cells of the population
    cell_cum: tuple[int, ...]
    death_threshold: tuple[int, ...]  # P(died in the window) per cell, scaled to 2**32
    birth_low: tuple[int, ...]  # first possible birth ordinal per cell
    birth_span: tuple[int, ...]
    dates: tuple[str, ...]  # ISO dates by ordinal - dates_base
    dates_base: int
    window_start: int  # epoch seconds
    as_of_seconds: int
    languages: tuple[tuple[str, str], ...]
    language_cum: tuple[int, ...]
    gender_other: int
    gender_unknown: int
    # us-core profile only (empty for cms): race x ethnicity rows, two-race pairs, names
    profile: str = "cms"
    race_rows: tuple[tuple[Any, ...], ...] = ()  # (races|None, text, eth code, eth text, eth index)
    race_cum: tuple[int, ...] = ()
    race_pairs: tuple[tuple[tuple[tuple[str, str], ...], ...], ...] = ()  # by ethnicity index
    race_pair_cum: tuple[tuple[int, ...], ...] = ()
    family_names: tuple[str, ...] = ()
    family_cum: tuple[int, ...] = ()
    given_names: Mapping[str, tuple[str, ...]] = field(default_factory=dict)  # sex -> names
    given_cum: Mapping[str, tuple[int, ...]] = field(default_factory=dict)

    def __getstate__(self) -> dict[str, Any]:
        """Pickle without the hash state (not picklable); Spark broadcasts plans."""
        state = self.__dict__.copy()
        del state["hasher"]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state, hasher=hashlib.blake2b(key=state["key"], digest_size=64))


def _normalise_states(states: str | Iterable[str] | None, ref: Reference) -> tuple[str, ...]:
    known = {code for code, _, _, _ in ref.states}
    if states is None:
        return tuple(code for code, _, _, territory in ref.states if not territory)
    items = states.split(",") if isinstance(states, str) else list(states)
    codes = []
    for item in items:
        code = str(item).strip().upper()
        if not code:
            continue
        if code not in known:
            raise ValueError(f"unknown state {item.strip()!r} (use USPS codes such as CA,NY,DC,PR)")
        if code not in codes:
            codes.append(code)
    if not codes:
        raise ValueError("--states names no state")
    # Reference-table order, as for None: the canonical form must be a fixed point, so a plan
    # rebuilt from plan.options (worker processes, a manifest's request) is the same plan.
    return tuple(code for code, _, _, _ in ref.states if code in codes)


def _organizations(
    ref: Reference, key: bytes, per_million: float
) -> dict[str, list[dict[str, str]]]:
    """A deterministic set of hospitals per state, each in one of the state's real places."""
    from faker.providers.person.en_US import Provider as FakerPerson

    surnames = list(FakerPerson.last_names)
    patterns = (
        "{city} General Hospital",
        "{city} Medical Center",
        "{city} Regional Medical Center",
        "{city} Community Hospital",
        "{surname} Memorial Hospital",
        "{surname} Health",
    )
    out: dict[str, list[dict[str, str]]] = {}
    for code, _, population, _ in ref.states:
        places = ref.cities[code]
        cum = _cumulative(p for _, p in places)
        count = max(1, round(population / 1e6 * per_million))
        orgs, taken = [], set()
        attempt = 0
        while len(orgs) < count:
            if attempt > 100 * count:  # a guard: names run out only far beyond the allowed density
                raise ValueError(f"cannot name {count} distinct hospitals in {code}")
            r = _hash_int(key, f"organization|{code}|{attempt}".encode())
            attempt += 1
            city = places[_pick(cum, r & M32)][0]
            pattern = patterns[((r >> 32) & M32) * len(patterns) >> 32]
            surname = surnames[((r >> 64) & M32) * len(surnames) >> 32]
            name = pattern.format(city=city, surname=surname)
            slug = "".join(ch if ch.isalnum() else "-" for ch in name.lower())
            slug = "-".join(part for part in slug.split("-") if part)
            org_id = f"org-{code.lower()}-{slug}"
            if org_id in taken or len(org_id) > 64:
                continue
            taken.add(org_id)
            orgs.append({"id": org_id, "name": name, "city": city, "state": code})
        out[code] = orgs
    return out


def _death_probability(qx: tuple[float, ...], age: int, years: float) -> float:
    """P(died within `years` before as-of) for someone who would be `age` now (life table)."""
    alive, k = 1.0, 0
    while k < years and age - k >= 0:
        fraction = min(1.0, years - k)
        alive *= 1.0 - qx[max(age - k - 1, 0)] * fraction
        k += 1
    return 1.0 - alive


def _faker_table(names: Mapping[str, float]) -> tuple[tuple[str, ...], tuple[int, ...]]:
    """Names and integer cumulative weights from a Faker name -> frequency table (9 decimals)."""
    return tuple(names), _cumulative(round(w * 1e9) for w in names.values())


def _us_core_tables(ref: Reference) -> dict[str, Any]:
    """The us-core Plan fields: Census race x Hispanic-origin draws and Faker's en_US names.

    Rows are race_ethnicity_joint.csv as is. "Other Race" rows get no ombCategory (text only);
    "Two or more races" rows draw an unordered pair of distinct OMB races with weight
    w_a * w_b, w being the single-race population in the same Hispanic-origin group.
    """
    from faker.providers.person.en_US import Provider as FakerPerson

    eth_index: dict[str, int] = {}
    omb: list[list[tuple[str, str, int]]] = []  # per ethnicity: (code, display, population)
    rows, weights = [], []
    for race, race_code, eth, eth_code, pop in ref.race_ethnicity:
        e = eth_index.setdefault(eth_code, len(eth_index))
        if e == len(omb):
            omb.append([])
        if not race_code:  # Two or more races: the pair is drawn per record
            races, text = None, TWO_OR_MORE_TEXT
        elif race_code == OTHER_RACE_CODE:
            races, text = (), OTHER_RACE_TEXT
        else:
            races, text = ((race_code, race),), race
            omb[e].append((race_code, race, pop))
        rows.append((races, text, eth_code, eth, e))
        weights.append(pop)
    pairs, pair_cum = [], []
    for cats in omb:
        combos = [(a, b) for i, a in enumerate(cats) for b in cats[i + 1 :]]
        pairs.append(tuple(((a[0], a[1]), (b[0], b[1])) for a, b in combos))
        pair_cum.append(_cumulative(a[2] * b[2] for a, b in combos))
    family_names, family_cum = _faker_table(FakerPerson.last_names)
    male, male_cum = _faker_table(FakerPerson.first_names_male)
    female, female_cum = _faker_table(FakerPerson.first_names_female)
    return {
        "race_rows": tuple(rows),
        "race_cum": _cumulative(weights),
        "race_pairs": tuple(pairs),
        "race_pair_cum": tuple(pair_cum),
        "family_names": family_names,
        "family_cum": family_cum,
        "given_names": {"male": male, "female": female},
        "given_cum": {"male": male_cum, "female": female_cum},
    }


@functools.lru_cache(maxsize=32)
def _make_plan_cached(seed: int, as_of: datetime, options: tuple[tuple[str, Any], ...]) -> Plan:
    opts = dict(options)
    ref = load_reference()
    master = hashlib.blake2b(
        b"metriccare-fhir-patient/1|" + seed.to_bytes(8, "little"), digest_size=64
    ).digest()
    key = master[:32]

    state_codes = opts["states"]
    pops = {code: pop for code, _, pop, _ in ref.states}
    orgs_by_state = _organizations(ref, key, opts["hospitals_per_million"])
    city_names = tuple(tuple(c for c, _ in ref.cities[s]) for s in state_codes)
    city_cum = tuple(_cumulative(p for _, p in ref.cities[s]) for s in state_codes)
    state_orgs = tuple(tuple(orgs_by_state[s]) for s in state_codes)

    cells, weights = [], []
    for age, male, female in ref.age_sex:
        if opts["min_age"] <= age <= opts["max_age"]:
            cells += [(age, "male"), (age, "female")]
            weights += [male, female]
    if not any(weights):
        raise ValueError(f"ages {opts['min_age']}..{opts['max_age']} leave no population")
    today = as_of.date()
    birth_low, birth_span, thresholds = [], [], []
    for age, sex in cells:
        low = _add_years(today, -(age + 1)).toordinal() + 1
        high = _add_years(today, -age).toordinal()
        birth_low.append(low)
        birth_span.append(high - low + 1)
        rate = opts["mortality_rate"]
        if rate is None:
            rate = _death_probability(ref.qx[sex], age, opts["lookback_years"])
        thresholds.append(round(rate * (1 << 32)))
    dates_base = min(birth_low)
    dates = tuple(date.fromordinal(o).isoformat() for o in range(dates_base, today.toordinal() + 1))
    as_of_seconds = int(as_of.timestamp())
    us_core = _us_core_tables(ref) if opts["profile"] == "us-core" else {}

    return Plan(
        seed=seed,
        as_of=as_of,
        options=opts,
        key=key,
        hasher=hashlib.blake2b(key=key, digest_size=64),
        uuid_add=_hash_int(key, b"uuid-add", 16) & M122,
        uuid_mul=(
            _hash_int(key, b"uuid-mul-1", 16) & M122 | 1,
            _hash_int(key, b"uuid-mul-2", 16) & M122 | 1,
            _hash_int(key, b"uuid-mul-3", 16) & M122 | 1,
        ),
        mrn_add=_hash_int(key, b"mrn-add", 8) & M34,
        mrn_mul=_hash_int(key, b"mrn-mul", 8) & M34 | 1,
        last_updated=_iso_instant(as_of),
        state_codes=state_codes,
        state_cum=_cumulative(pops[s] for s in state_codes),
        city_names=city_names,
        city_cum=city_cum,
        state_orgs=state_orgs,
        organizations=tuple(o for orgs in state_orgs for o in orgs),
        cells=tuple(cells),
        cell_cum=_cumulative(weights),
        death_threshold=tuple(thresholds),
        birth_low=tuple(birth_low),
        birth_span=tuple(birth_span),
        dates=dates,
        dates_base=dates_base,
        window_start=as_of_seconds - round(opts["lookback_years"] * SECONDS_PER_YEAR),
        as_of_seconds=as_of_seconds,
        languages=tuple((code, display) for code, display, _ in ref.languages),
        language_cum=_cumulative(n for _, _, n in ref.languages),
        gender_other=round(GENDER_OTHER_SHARE * (1 << 32)),
        gender_unknown=round((GENDER_OTHER_SHARE + GENDER_UNKNOWN_SHARE) * (1 << 32)),
        profile=opts["profile"],
        **us_core,
    )


def normalise_options(
    min_age: int = 0,
    max_age: int = MAX_AGE,
    states: str | Iterable[str] | None = None,
    lookback_years: float = DEFAULT_LOOKBACK_YEARS,
    mortality_rate: float | None = None,
    hospitals_per_million: float = DEFAULT_HOSPITALS_PER_MILLION,
    profile: str = "cms",
) -> dict[str, Any]:
    """Check generation options and return them in canonical form; ValueError says what is wrong."""
    ref = load_reference()
    for name, value in (("min-age", min_age), ("max-age", max_age)):
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_AGE:
            raise ValueError(f"--{name} must be a whole number from 0 to {MAX_AGE}, not {value!r}")
    if min_age > max_age:
        raise ValueError(f"--min-age {min_age} is greater than --max-age {max_age}")
    if not 0 < float(lookback_years) <= 100:
        raise ValueError(f"--lookback-years must be in (0, 100], not {lookback_years}")
    if mortality_rate is not None and not 0.0 <= float(mortality_rate) <= 1.0:
        raise ValueError(f"--mortality-rate must be between 0 and 1, not {mortality_rate}")
    if not 0 < float(hospitals_per_million) <= 20:  # the US has ~18 hospitals per million
        raise ValueError(f"--hospitals-per-million must be in (0, 20], not {hospitals_per_million}")
    if profile not in PROFILES:
        raise ValueError(f"--profile must be one of {', '.join(PROFILES)}, not {profile!r}")
    return {
        "min_age": min_age,
        "max_age": max_age,
        "states": _normalise_states(states, ref),
        "lookback_years": float(lookback_years),
        "mortality_rate": None if mortality_rate is None else float(mortality_rate),
        "hospitals_per_million": float(hospitals_per_million),
        "profile": profile,
    }


def make_plan(seed: int, as_of: datetime | str | None = None, **options: Any) -> Plan:
    """Check inputs and precompute everything fixed for a run; cached for repeated calls."""
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 1 << 64:
        raise ValueError(f"seed must be a whole number from 0 to 2**64-1, not {seed!r}")
    opts = normalise_options(**options)
    return _make_plan_cached(seed, parse_as_of(as_of), tuple(opts.items()))


def _sample(plan: Plan, index: int) -> tuple[Any, ...]:
    """The draws that make patient #index: (state, city, cell, birth ordinal, gender, language,
    organization, death time in epoch seconds or -1, the sixteen u32s). One hash, no records."""
    if not 0 <= index <= MAX_INDEX:
        raise ValueError(f"patient index must be from 0 to {MAX_INDEX}, not {index}")
    hasher = plan.hasher.copy()  # the keyed state, copied: cheaper than re-keying per record
    hasher.update(index.to_bytes(8, "little"))
    u = _U32X16(hasher.digest())  # sixteen 32-bit draws: u[k] is bits 32k..32k+31 of the hash
    bisect_right = bisect.bisect_right
    cum = plan.state_cum  # _pick, inlined: this is the hot loop
    s = bisect_right(cum, u[0] * cum[-1] >> 32)
    cum = plan.city_cum[s]
    city = bisect_right(cum, u[1] * cum[-1] >> 32)
    cum = plan.cell_cum
    cell = bisect_right(cum, u[2] * cum[-1] >> 32)
    sex = plan.cells[cell][1]
    birth = plan.birth_low[cell] + (u[3] * plan.birth_span[cell] >> 32)
    g = u[4]
    gender = "other" if g < plan.gender_other else "unknown" if g < plan.gender_unknown else sex
    cum = plan.language_cum
    language = bisect_right(cum, u[5] * cum[-1] >> 32)
    org = u[6] * len(plan.state_orgs[s]) >> 32
    died = -1
    if u[7] < plan.death_threshold[cell]:
        born = (birth - 719163) * 86400  # 719163 = date(1970, 1, 1).toordinal()
        low = max(plan.window_start, born)
        died = low + ((u[8] | u[9] << 32) * (plan.as_of_seconds - low + 1) >> 64)
    return s, city, cell, birth, gender, language, org, died, u


def _patient_id(plan: Plan, index: int) -> str:
    """Patient #index's UUID: a keyed bijection of the index, so ids never collide."""
    return _uuid_text(_mix_uuid((index + plan.uuid_add) & M122, plan.uuid_mul))


def _mrn(plan: Plan, index: int) -> str:
    """Patient #index's MRN: a keyed permutation of the ten-digit numbers, so MRNs never collide."""
    return "MC-%010d" % _mrn_number(index, plan.mrn_add, plan.mrn_mul)  # noqa: UP031


def _deceased(died: int) -> str:
    return _iso_instant(datetime.fromtimestamp(died, UTC))  # whole seconds: no fraction


def _address(city: str, state: str) -> list[dict[str, str]]:
    return [{"city": city, "state": state, "country": "USA"}]


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


def _assemble(
    plan: Plan,
    patient_id: Any,
    mrn: Any,
    gender: Any,
    birth_date: Any,
    deceased: Any,
    address: Any,
    communication: Any,
    organization: Any,
) -> dict[str, Any]:
    """The cms Patient's shape, in FHIR element order: the one place it is written down (the
    NDJSON writer derives its byte template from it). `deceased` is None for the living."""
    record: dict[str, Any] = {
        "resourceType": "Patient",
        "id": patient_id,
        "meta": {"versionId": "1", "lastUpdated": plan.last_updated},
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
                "system": MRN_SYSTEM,
                "value": mrn,
            }
        ],
        "active": True,
        "gender": gender,
        "birthDate": birth_date,
    }
    if deceased is not None:
        record["deceasedDateTime"] = deceased
    record["address"] = address
    record["communication"] = communication
    record["managingOrganization"] = organization
    return record


def build_record(plan: Plan, index: int) -> dict[str, Any]:
    """Patient #index of the plan as a plain dict: the canonical form every writer serialises."""
    s, city, cell, birth, gender, language, org, died, u = _sample(plan, index)
    record = _assemble(
        plan,
        _patient_id(plan, index),
        _mrn(plan, index),
        gender,
        plan.dates[birth - plan.dates_base],
        None if died < 0 else _deceased(died),
        _address(plan.city_names[s][city], plan.state_codes[s]),
        _communication(*plan.languages[language]),
        _managing_organization(plan.state_orgs[s][org]),
    )
    if plan.profile == "us-core":
        return _us_core_record(plan, record, u, plan.cells[cell][1])
    return record


def _us_core_record(
    plan: Plan, record: dict[str, Any], u: tuple[int, ...], sex: str
) -> dict[str, Any]:
    """The cms record plus US Core's parts, in FHIR element order; only draws u[10..13] used."""
    races, text, eth_code, eth_display, e = plan.race_rows[_pick(plan.race_cum, u[10])]
    if races is None:  # Two or more races
        races = plan.race_pairs[e][_pick(plan.race_pair_cum[e], u[11])]
    given = plan.given_names[sex][_pick(plan.given_cum[sex], u[12])]
    family = plan.family_names[_pick(plan.family_cum, u[13])]
    # Codings carry no display: the required text says it, and records stay nearer 1.5 KB.
    race = [
        {"url": "ombCategory", "valueCoding": {"system": CDC_RACE_SYSTEM, "code": c}}
        for c, _ in races
    ]
    race.append({"url": "text", "valueString": text})
    identifier = record["identifier"]
    identifier[0]["system"] = US_CORE_MRN_SYSTEM
    out: dict[str, Any] = {
        "resourceType": "Patient",
        "id": record["id"],
        "meta": {"versionId": "1", "lastUpdated": plan.last_updated, "profile": [US_CORE_PATIENT]},
        # Extension's element order is id, extension, url, value[x]: a complex extension's
        # `extension` comes before its `url`, as fhir.resources writes it (same JSON round trip).
        "extension": [
            {"extension": race, "url": US_CORE_RACE},
            {
                "extension": [
                    {
                        "url": "ombCategory",
                        "valueCoding": {"system": CDC_RACE_SYSTEM, "code": eth_code},
                    },
                    {"url": "text", "valueString": eth_display},
                ],
                "url": US_CORE_ETHNICITY,
            },
            {"url": US_CORE_BIRTHSEX, "valueCode": "F" if sex == "female" else "M"},
        ],
        "identifier": identifier,
        "active": True,
        "name": [{"use": "official", "family": family, "given": [given]}],
    }
    out.update(itertools.islice(record.items(), 5, None))  # gender onwards, as in cms
    return out


def organization_record(org: Mapping[str, str]) -> dict[str, Any]:
    """A FHIR R4/R4B Organization for one of the plan's hospitals (R5 moved address to contact)."""
    return {
        "resourceType": "Organization",
        "id": org["id"],
        "identifier": [{"system": ORG_SYSTEM, "value": org["id"]}],
        "active": True,
        "type": [
            {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/organization-type",
                        "code": "prov",
                        "display": "Healthcare Provider",
                    }
                ]
            }
        ],
        "name": org["name"],
        "address": [{"city": org["city"], "state": org["state"], "country": "USA"}],
    }


# ---------------------------------------------------------------------------------------------
# Public API: the FHIR model, lazy streams, JSON and S3 keys
# ---------------------------------------------------------------------------------------------


def generate_patient(
    seed: int | None = None, index: int = 0, as_of: datetime | str | None = None, **options: Any
) -> Any:
    """Patient #index as a validated fhir.resources (R5) Patient; a random seed when None.

    Options are those of make_plan, e.g. profile="us-core" for a US Core Patient.
    """
    from fhir.resources.patient import Patient

    if seed is None:
        seed = draw_seed()
    return Patient.model_validate(build_record(make_plan(seed, as_of, **options), index))


def generate_patients(
    count: int,
    seed: int | None = None,
    start: int = 0,
    as_of: datetime | str | None = None,
    **options: Any,
) -> Iterator[dict[str, Any]]:
    """Patients #start .. #start+count-1 as plain dicts, lazily (constant memory)."""
    if isinstance(count, bool) or not isinstance(count, int) or count < 0:
        raise ValueError(f"count must be a whole number >= 0, not {count!r}")
    if not 0 <= start or start + count - 1 > MAX_INDEX:
        raise ValueError(f"indexes must lie in 0..{MAX_INDEX}")
    plan = make_plan(draw_seed() if seed is None else seed, as_of, **options)
    for index in range(start, start + count):
        yield build_record(plan, index)


def draw_seed() -> int:
    """A fresh random seed (report it, so the run can be repeated)."""
    return secrets.randbits(63)


def _as_dict(resource: Any) -> dict[str, Any]:
    if isinstance(resource, dict):
        return resource
    return resource.model_dump(mode="json", by_alias=True, exclude_none=True)


def to_json(resource: Any, pretty: bool = False) -> str:
    """Compact (or indented) JSON of a Patient model or dict, in FHIR element order."""
    option = orjson.OPT_INDENT_2 if pretty else 0
    return orjson.dumps(_as_dict(resource), option=option).decode()


def suggested_s3_key(
    patient: Any, bucket: str = DEFAULT_BUCKET, prefix: str = DEFAULT_PREFIX
) -> str:
    """The bronze-layer object URL for a Patient model or dict: s3://bucket/prefix/patient_<id>.json."""
    patient_id = patient["id"] if isinstance(patient, dict) else patient.id
    prefix = prefix.strip("/")
    return f"s3://{bucket}/{prefix + '/' if prefix else ''}patient_{patient_id}.json"


# ---------------------------------------------------------------------------------------------
# Writers: the bronze layer. One exporter per format (json, ndjson) over one store per place
# (local directory, S3); generation above knows nothing about either.
# ---------------------------------------------------------------------------------------------

DEFAULT_RECORDS_PER_FILE = 100_000  # NDJSON roll-over (~75 MB plain, ~8 MB gzip) and work unit
DEFAULT_CONCURRENCY = 16  # concurrent S3 uploads per process
DEFAULT_GZIP_LEVEL = 1  # measured: level 6 halves NDJSON throughput for ~15% smaller files
BATCH = 1_000  # records serialised by one b"\n".join and written by one write()
S3_MAX_ATTEMPTS = 5  # botocore "standard" retries of transient errors per request
MANIFEST = "_manifest.json"  # Athena and Glue skip names starting with "_" or "."
FORMATS = ("json", "ndjson")


class BronzeError(RuntimeError):
    """A runtime failure of a bronze run, reported by the CLI as one line (exit 1)."""


@dataclass(frozen=True)
class Bronze:
    """Where and how a run writes (not what: that is the Plan); picklable for worker processes."""

    root: str  # a local directory or s3://bucket/prefix: the layer root
    count: int
    start: int = 0
    format: str = "json"
    gzip: bool = False
    gzip_level: int = DEFAULT_GZIP_LEVEL
    records_per_file: int = DEFAULT_RECORDS_PER_FILE
    validate: bool = False
    concurrency: int = DEFAULT_CONCURRENCY
    endpoint_url: str | None = None
    token: str = ""  # tags this run's temp files, so an interrupted run can remove them


@dataclass(frozen=True)
class UnitResult:
    """What writing one unit (an index range) produced."""

    unit: int
    records: int
    files: int
    bytes: int
    failed: int = 0
    first_failure: str | None = None


def unit_count(spec: Bronze) -> int:
    """How many work units (NDJSON files) the run has: ceil(count / records_per_file)."""
    return -(-spec.count // spec.records_per_file)


def unit_range(spec: Bronze, unit: int) -> tuple[int, int]:
    """Indexes [lo, hi) of unit #unit (0-based); NDJSON file n = unit + 1 holds exactly these."""
    lo = spec.start + unit * spec.records_per_file
    return lo, min(lo + spec.records_per_file, spec.start + spec.count)


def unit_size(spec: Bronze, unit: int) -> int:
    """How many patients unit #unit holds (the last one may be short)."""
    lo, hi = unit_range(spec, unit)
    return hi - lo


def shard_units(spec: Bronze, shard: tuple[int, int]) -> range:
    """Units of shard K/N: every N-th unit from K (round robin keeps shards within one unit)."""
    k, n = shard
    return range(k, unit_count(spec), n)


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


@functools.cache
def _patient_model() -> Any:
    from fhir.resources.patient import Patient

    return Patient


def _validated(record: dict[str, Any], index: int) -> dict[str, Any]:
    """The record, after fhir.resources accepted it; BronzeError naming the index if not."""
    try:
        _patient_model().model_validate(record)
    except Exception as e:  # pydantic's ValidationError, or anything the model raises
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise BronzeError(f"patient #{index} failed FHIR validation: {first}") from None
    return record


_SLOT = "\x00"  # a value no record holds: where _assemble gets it, the template has a gap
_SLOT_JSON = orjson.dumps(_SLOT)


@functools.lru_cache(maxsize=8)
def json_renderer(plan: Plan) -> Callable[[int], bytes]:
    """A function i -> patient #i as compact JSON bytes, equal to orjson.dumps(build_record(plan,
    i)) but with no dict built: the record's fixed parts (from _assemble) and every address,
    language and hospital are serialised once per plan; per patient only ids and dates vary.
    The us-core profile is dumped from its dict."""
    dumps = orjson.dumps
    if plan.profile != "cms":
        return lambda index: dumps(build_record(plan, index))
    x = _SLOT
    alive = dumps(_assemble(plan, x, x, x, x, None, x, x, x)).split(_SLOT_JSON)
    dead = dumps(_assemble(plan, x, x, x, x, x, x, x, x)).split(_SLOT_JSON)
    if len(alive) != 8 or dead[:4] + dead[5:] != alive or b"\\u0000" in b"".join(dead):
        raise AssertionError("the record template does not split into its value slots")
    head, after_id, after_mrn, after_gender, to_address, after_address, after_language, tail = alive
    # The id and MRN are [-0-9a-zA-Z] text that needs no escaping: their quotes go in the template.
    head, after_id, after_mrn = head + b'"', b'"' + after_id + b'"', b'"' + after_mrn
    to_deceased = dead[4]
    genders = {g: dumps(g) + after_gender for g in ("male", "female", "other", "unknown")}
    dates = [b'"%s"' % d.encode() for d in plan.dates]  # ISO dates need no escaping
    addresses = [
        [dumps(_address(c, st)) + after_address for c in cities]
        for st, cities in zip(plan.state_codes, plan.city_names, strict=True)
    ]
    languages = [dumps(_communication(*lang)) + after_language for lang in plan.languages]
    organizations = [
        [dumps(_managing_organization(o)) + tail for o in os] for os in plan.state_orgs
    ]
    base = plan.dates_base
    join = b"".join

    def render(index: int) -> bytes:
        s, city, _, birth, gender, language, org, died, _ = _sample(plan, index)
        if died < 0:
            death = to_address
        else:
            death = b'%s"%s"%s' % (to_deceased, _deceased(died).encode(), to_address)
        return join(
            (
                head,
                _patient_id(plan, index).encode(),
                after_id,
                _mrn(plan, index).encode(),
                after_mrn,
                genders[gender],
                dates[birth - base],
                death,
                addresses[s][city],
                languages[language],
                organizations[s][org],
            )
        )

    return render


def _patient_line(plan: Plan, validate: bool) -> Callable[[int], bytes]:
    """i -> patient #i's JSON as every writer writes it; through fhir.resources first if asked."""
    if validate:
        return lambda i: orjson.dumps(_validated(build_record(plan, i), i))
    return json_renderer(plan)


def ndjson_chunks(
    plan: Plan,
    lo: int,
    hi: int,
    validate: bool = False,
    tick: Callable[[int], None] | None = None,
) -> Iterator[bytes]:
    """Patients #lo..#hi-1 as NDJSON, BATCH records per chunk (one join, one write each)."""
    line = _patient_line(plan, validate)
    for a in range(lo, hi, BATCH):
        b = min(a + BATCH, hi)
        lines = [line(i) for i in range(a, b)]
        lines.append(b"")
        yield b"\n".join(lines)
        if tick:
            tick(b - a)


# -- stores: where bytes go. Both have the same few methods; keys are relative to the root.


class LocalStore:
    """A local directory; every file is written to a temp name, then renamed (atomic)."""

    def __init__(self, root: str, token: str = "") -> None:
        self.root = Path(root)
        self.token = token or str(os.getpid())

    def display(self) -> str:
        return str(self.root)

    def url(self, key: str) -> str:
        return key  # manifest URLs of a local run are relative to its root

    def prepare(self) -> None:
        if self.root.exists() and not self.root.is_dir():
            raise BronzeError(f"--output {self.root} exists and is not a directory")
        for folder in ("patient", "organization"):
            (self.root / folder).mkdir(parents=True, exist_ok=True)

    def write(self, key: str, data: bytes | Iterable[bytes]) -> int:
        """Write all chunks to `.name.tmp-<token>-<pid>`, then os.replace (no fsync: atomic
        against crashes and Ctrl-C of this process, not against power loss)."""
        path = self.root / key
        tmp = path.with_name(f".{path.name}.tmp-{self.token}-{os.getpid()}")
        size = 0
        try:
            with open(tmp, "wb") as f:
                if isinstance(data, bytes):
                    size = f.write(data)
                else:
                    for chunk in data:
                        size += f.write(chunk)
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        return size

    def read(self, key: str) -> bytes | None:
        try:
            return (self.root / key).read_bytes()
        except FileNotFoundError:
            return None

    def has_files(self, folder: str) -> bool:
        try:
            with os.scandir(self.root / folder) as entries:
                return any(True for _ in entries)
        except (FileNotFoundError, NotADirectoryError):
            return False

    def delete_run(self) -> None:
        """Delete the manifest first (no manifest may describe half-deleted files), then data."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.root / MANIFEST)
        for folder in ("patient", "organization"):
            shutil.rmtree(self.root / folder, ignore_errors=True)
        self.prepare()

    def remove_temp_files(self) -> None:
        """Remove temp files of this run's processes (workers killed by Ctrl-C leave them)."""
        for folder in ("patient", "organization", ""):
            for tmp in (self.root / folder).glob(f".*.tmp-{self.token}-*"):
                with contextlib.suppress(OSError):
                    tmp.unlink()

    def drain(self) -> tuple[int, str | None]:
        return 0, None

    def close(self) -> None:
        pass


def parse_s3_url(url: str) -> tuple[str, str]:
    """(bucket, prefix) of s3://bucket/prefix; ValueError if there is no bucket."""
    bucket, _, prefix = url.removeprefix("s3://").partition("/")
    if not bucket:
        raise ValueError(f"{url!r} names no bucket (use s3://bucket/prefix)")
    return bucket, prefix.strip("/")


def _s3_client(endpoint_url: str | None, pool: int, attempts: int) -> Any:
    try:
        import boto3
        from botocore.config import Config
    except ImportError:
        raise BronzeError("s3:// output needs boto3: pip install boto3") from None
    custom = (
        endpoint_url or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    )
    config = Config(
        retries={"max_attempts": attempts, "mode": "standard"},
        max_pool_connections=max(10, pool),
        connect_timeout=5,
        read_timeout=60,
        s3={"addressing_style": "path"} if custom else {},  # S3-compatible stores want paths
    )
    # endpoint_url=None lets boto3 read AWS_ENDPOINT_URL(_S3) itself.
    return boto3.session.Session().client("s3", endpoint_url=endpoint_url, config=config)


def _s3_reason(e: BaseException) -> str:
    """A short reason for a botocore error: 'Code: message' or the error's own text."""
    response = getattr(e, "response", None)
    if isinstance(response, dict) and "Error" in response:
        err = response["Error"]
        code = err.get("Code", "?")
        message = err.get("Message") or {"403": "Forbidden", "404": "Not Found"}.get(code, "")
        return f"{code}: {message}" if message else code
    return str(e) or type(e).__name__


class S3Store:
    """An S3 (or S3-compatible) prefix; PUTs run on a thread pool and are atomic by nature."""

    def __init__(self, root: str, endpoint_url: str | None, concurrency: int) -> None:
        self.bucket, self.prefix = parse_s3_url(root)
        self.endpoint_url = endpoint_url
        self.client = _s3_client(endpoint_url, concurrency, S3_MAX_ATTEMPTS)
        self.pool = ThreadPoolExecutor(concurrency, thread_name_prefix="s3-put")
        self.slots = threading.BoundedSemaphore(2 * concurrency)  # bounds memory in flight
        self.lock = threading.Lock()
        self.idle = threading.Condition(self.lock)
        self.pending = 0
        self.failed = 0
        self.first_failure: str | None = None

    def key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def url(self, key: str) -> str:
        return f"s3://{self.bucket}/{self.key(key)}"

    def display(self) -> str:
        return self.url("").rstrip("/")

    def _fail_line(self, e: BaseException) -> str:
        endpoint = self.endpoint_url or os.environ.get("AWS_ENDPOINT_URL") or "AWS S3"
        name = type(e).__name__
        code = getattr(e, "response", {}).get("Error", {}).get("Code", "")
        where = f"s3://{self.bucket}"
        if code in ("NoSuchBucket", "404"):
            return f"bucket {where} does not exist (endpoint {endpoint})"
        if code in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "403"):
            return f"S3 refused the credentials for {where} ({_s3_reason(e)})"
        if name == "NoCredentialsError":
            return "no AWS credentials found (set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY)"
        if name in ("EndpointConnectionError", "ConnectTimeoutError", "ConnectionClosedError"):
            return f"cannot reach the S3 endpoint {endpoint} ({e})"
        return f"S3 error on {where}: {_s3_reason(e)}"

    def prepare(self) -> None:
        """Fail fast, with one line, on a missing bucket, bad credentials or a dead endpoint."""
        from botocore.exceptions import BotoCoreError, ClientError

        probe = _s3_client(self.endpoint_url, 1, 2)
        try:
            probe.list_objects_v2(Bucket=self.bucket, Prefix=self.key(""), MaxKeys=1)
        except (BotoCoreError, ClientError) as e:
            raise BronzeError(self._fail_line(e)) from None

    def _put(self, key: str, body: Any) -> None:
        try:
            if self.first_failure is None:  # after a failure, skip what is queued: fail fast
                content = "application/gzip" if key.endswith(".gz") else "application/fhir+json"
                self.client.put_object(
                    Bucket=self.bucket, Key=self.key(key), Body=body, ContentType=content
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

    def write(self, key: str, data: bytes | Iterable[bytes]) -> int:
        """Queue one PUT; a streamed body is spooled (to disk beyond 16 MB) first."""
        if self.first_failure is not None:
            raise BronzeError(self.first_failure)  # stops the unit; drain() reports it
        if isinstance(data, bytes):
            body: Any = data
            size = len(data)
        else:
            body = tempfile.SpooledTemporaryFile(max_size=16 << 20)
            size = sum(body.write(chunk) for chunk in data)
            body.seek(0)
        self.slots.acquire()
        with self.lock:
            self.pending += 1
        self.pool.submit(self._put, key, body)
        return size

    def drain(self) -> tuple[int, str | None]:
        """Wait for queued PUTs; (failures, first failure) since the last drain."""
        with self.lock:
            self.idle.wait_for(lambda: self.pending == 0)
            out = (self.failed, self.first_failure)
            self.failed, self.first_failure = 0, None
        return out

    def read(self, key: str) -> bytes | None:
        try:
            return self.client.get_object(Bucket=self.bucket, Key=self.key(key))["Body"].read()
        except self.client.exceptions.NoSuchKey:
            return None

    def _keys(self, folder: str, limit: int | None = None) -> Iterator[str]:
        pages = self.client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket,
            Prefix=self.key(folder + "/"),
            PaginationConfig={"MaxItems": limit} if limit else {},
        )
        for page in pages:
            for item in page.get("Contents", ()):
                yield item["Key"]

    def has_files(self, folder: str) -> bool:
        return any(True for _ in self._keys(folder, 1))

    def delete_run(self) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=self.key(MANIFEST))
        for folder in ("patient", "organization"):
            batch: list[str] = []
            for key in self._keys(folder):
                batch.append(key)
                if len(batch) == 1000:
                    self._delete(batch)
                    batch = []
            if batch:
                self._delete(batch)

    def _delete(self, keys: list[str]) -> None:
        objects = [{"Key": k} for k in keys]
        self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": objects, "Quiet": True})

    def remove_temp_files(self) -> None:
        pass  # a PUT is all or nothing

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)


Store = LocalStore | S3Store


def open_store(spec: Bronze) -> Store:
    """The store for spec.root: S3 for s3:// URLs (boto3 imported only then), else local."""
    if spec.root.startswith("s3://"):
        return S3Store(spec.root, spec.endpoint_url, spec.concurrency)
    return LocalStore(spec.root, spec.token)


# -- formats: how records become files. One exporter per format; units are index ranges.


def _patient_ndjson(
    plan: Plan, spec: Bronze, store: Store, unit: int, tick: Any
) -> tuple[int, int]:
    """Unit u is the FHIR Bulk Data file patient/Patient.<u+1>.ndjson, one resource per line."""
    lo, hi = unit_range(spec, unit)
    chunks: Iterable[bytes] = ndjson_chunks(plan, lo, hi, spec.validate, tick)
    if spec.gzip:
        chunks = _gzip_chunks(chunks, spec.gzip_level)
    return 1, store.write(f"patient/Patient.{unit + 1:06d}.ndjson{_suffix(spec)}", chunks)


def _patient_json(plan: Plan, spec: Bronze, store: Store, unit: int, tick: Any) -> tuple[int, int]:
    """One compact single-line file per patient, named exactly as suggested_s3_key() names it."""
    lo, hi = unit_range(spec, unit)
    suffix, total, line = _suffix(spec), 0, _patient_line(plan, spec.validate)
    for i in range(lo, hi):
        data = line(i) + b"\n"
        if spec.gzip:
            data = zlib.compress(data, spec.gzip_level, wbits=31)
        name = suggested_s3_key({"id": _patient_id(plan, i)}, "_", "patient").removeprefix(
            "s3://_/"
        )
        total += store.write(name + suffix, data)
        if tick and (i - lo) % BATCH == BATCH - 1:
            tick(BATCH)
    if tick:
        tick((hi - lo) % BATCH)
    return hi - lo, total


PATIENT_WRITERS = {"json": _patient_json, "ndjson": _patient_ndjson}


def organization_files(plan: Plan, spec: Bronze) -> list[tuple[str, bytes]]:
    """(key, bytes) of every organization of the plan, in the run's format: the same for all
    shards and workers, so every managingOrganization.reference resolves."""
    records = [orjson.dumps(organization_record(org)) + b"\n" for org in plan.organizations]
    if spec.format == "ndjson":
        files = [(f"organization/Organization.000001.ndjson{_suffix(spec)}", b"".join(records))]
    else:
        files = [
            (f"organization/organization_{org['id']}.json{_suffix(spec)}", data)
            for org, data in zip(plan.organizations, records, strict=True)
        ]
    if spec.gzip:
        files = [(key, zlib.compress(data, spec.gzip_level, wbits=31)) for key, data in files]
    return files


def generator_block(plan: Plan, spec: Bronze) -> dict[str, Any]:
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
        "records_per_file": spec.records_per_file if spec.format == "ndjson" else None,
        "count": spec.count,
        "start": spec.start,
    }


def request_line(plan: Plan, spec: Bronze) -> str:
    """The CLI command that reproduces the run, all options spelled out; add --output ROOT."""
    words = ["fhir_patient_generator.py", "--count", str(spec.count), "--seed", str(plan.seed)]
    words += ["--as-of", plan.last_updated, "--start", str(spec.start)]
    for name, value in plan.options.items():
        if value is None:
            continue
        if isinstance(value, tuple | list):
            value = ",".join(map(str, value))
        words += [f"--{name.replace('_', '-')}", str(value)]
    words += ["--format", spec.format]  # no --output: the same run may live anywhere
    if spec.format == "ndjson":
        words += ["--records-per-file", str(spec.records_per_file)]
    if spec.gzip:
        words += ["--gzip", "--gzip-level", str(spec.gzip_level)]
    return " ".join(words)


def manifest_bytes(plan: Plan, spec: Bronze, store: Store) -> bytes:
    """A Bulk Data style manifest: the same bytes from every shard and every re-run.

    Deviation: per-file JSON lists one entry per type whose url is the folder."""
    n_orgs = len(plan.organizations)
    if spec.format == "ndjson":
        output = [
            {
                "type": "Patient",
                "url": store.url(f"patient/Patient.{u + 1:06d}.ndjson{_suffix(spec)}"),
                "count": unit_size(spec, u),
            }
            for u in range(unit_count(spec))
        ]
        output.append(
            {
                "type": "Organization",
                "url": store.url(f"organization/Organization.000001.ndjson{_suffix(spec)}"),
                "count": n_orgs,
            }
        )
    else:
        output = [
            {"type": "Patient", "url": store.url("patient/"), "count": spec.count},
            {"type": "Organization", "url": store.url("organization/"), "count": n_orgs},
        ]
    manifest = {
        "transactionTime": plan.last_updated,
        "request": request_line(plan, spec),
        "requiresAccessToken": False,
        "output": output,
        "error": [],
        "extension": {"generator": generator_block(plan, spec)},
    }
    return orjson.dumps(manifest, option=orjson.OPT_INDENT_2) + b"\n"


def check_existing(plan: Plan, spec: Bronze, store: Store, overwrite: bool, sharded: bool) -> None:
    """The overwrite policy: the same run may be re-written; another run is refused unless
    --overwrite, which deletes its manifest, patient/ and organization/ first."""
    ours = orjson.loads(orjson.dumps(generator_block(plan, spec)))
    old = store.read(MANIFEST)
    if old is not None:
        try:
            theirs = orjson.loads(old)["extension"]["generator"]
        except (orjson.JSONDecodeError, KeyError, TypeError):
            theirs = None
        if theirs == ours:
            return
        what = "an unreadable manifest" if theirs is None else _describe(theirs)
        if not overwrite:
            raise BronzeError(
                f"{store.display()} already holds another run ({what}); "
                "use --overwrite to replace it, or another --output"
            )
    elif not any(store.has_files(f) for f in ("patient", "organization")):
        return
    elif sharded:
        return  # sibling shards of this run may be writing; they finish with the same manifest
    elif not overwrite:
        raise BronzeError(
            f"{store.display()} holds patient/ or organization/ files without {MANIFEST} "
            "(an unfinished or foreign run); use --overwrite to replace them"
        )
    store.delete_run()


def _describe(block: Any) -> str:
    if not isinstance(block, dict):
        return "unknown generator"
    keys = ("version", "seed", "as_of", "count", "start", "format", "gzip")
    return ", ".join(f"{k} {block.get(k)}" for k in keys)


# -- running units: in this process, or on a pool of spawned worker processes


def write_unit(plan: Plan, spec: Bronze, store: Store, unit: int, tick: Any = None) -> UnitResult:
    """Write unit #unit and wait for its uploads; failures are counted, not raised."""
    lo, hi = unit_range(spec, unit)
    files = size = 0
    try:
        files, size = PATIENT_WRITERS[spec.format](plan, spec, store, unit, tick)
    except BronzeError as e:
        if not isinstance(store, S3Store) or str(e) != store.first_failure:
            raise
    failed, first = store.drain()
    return UnitResult(unit, hi - lo, files, size, failed, first)


@functools.cache
def _worker_store(spec: Bronze) -> Store:
    return open_store(spec)  # one per worker process, kept for all its units


def _worker_init() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the main process handles Ctrl-C for all


def _worker_unit(seed: int, as_of: str, options: tuple, spec: Bronze, unit: int) -> UnitResult:
    """A worker process's task: rebuild the (cached) plan, write one unit."""
    plan = make_plan(seed, as_of, **dict(options))
    return write_unit(plan, spec, _worker_store(spec), unit)


def _run_pool(
    plan: Plan, spec: Bronze, units: range, workers: int, done: Callable[[UnitResult], bool]
) -> None:
    """Units on `workers` spawned processes, a few queued each; done() False stops the run."""
    import multiprocessing

    pool = ProcessPoolExecutor(
        workers, mp_context=multiprocessing.get_context("spawn"), initializer=_worker_init
    )
    args = (plan.seed, plan.last_updated, tuple(plan.options.items()), spec)
    todo, running = iter(units), set()
    try:
        while True:
            while len(running) < 2 * workers and (u := next(todo, None)) is not None:
                running.add(pool.submit(_worker_unit, *args, u))
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


def _drain_or_raise(store: Store) -> None:
    """Wait for queued uploads; any failure ends the run with the count and the first key."""
    failed, first = store.drain()
    if failed:
        raise BronzeError(f"{failed} objects failed; first: {first}")


def write_bronze(
    plan: Plan,
    spec: Bronze,
    *,
    workers: int = 1,
    shard: tuple[int, int] = (0, 1),
    overwrite: bool = False,
    progress: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Write shard K/N of the run: its patient units, all organizations, then the manifest.

    Returns counts for the summary; raises BronzeError (one line) on a failure."""
    if spec.format not in FORMATS:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}, not {spec.format!r}")
    started = time.perf_counter()
    store = open_store(spec)
    try:
        store.prepare()
        check_existing(plan, spec, store, overwrite, sharded=shard[1] > 1)
        totals = {"records": 0, "files": 0, "bytes": 0, "failed": 0}
        units = shard_units(spec, shard)
        pooled = workers > 1 and len(units) > 1
        first_failure: list[str] = []

        def done(result: UnitResult) -> bool:
            for name in ("records", "files", "bytes", "failed"):
                totals[name] += getattr(result, name)
            if result.first_failure and not first_failure:
                first_failure.append(result.first_failure)
            if progress and pooled:  # in this process, ticks come per batch instead
                progress(result.records)
            return not result.failed

        orgs = organization_files(plan, spec)
        for key, data in orgs:
            totals["bytes"] += store.write(key, data)
        totals["files"] += len(orgs)
        _drain_or_raise(store)

        try:
            if pooled:
                _run_pool(plan, spec, units, min(workers, len(units)), done)
            else:
                for u in units:
                    if not done(write_unit(plan, spec, store, u, progress)):
                        break
        finally:
            store.remove_temp_files()  # what killed workers left behind (nothing otherwise)
        if totals["failed"]:
            raise BronzeError(f"{totals['failed']} objects failed; first: {first_failure[0]}")

        totals["bytes"] += store.write(MANIFEST, manifest_bytes(plan, spec, store))
        totals["files"] += 1
        _drain_or_raise(store)
    finally:
        store.close()
    return {
        **totals,
        "organizations": len(plan.organizations),
        "seconds": time.perf_counter() - started,
        "root": store.display(),
    }


# ---------------------------------------------------------------------------------------------
# CLI: a thin argparse layer over the API above
# ---------------------------------------------------------------------------------------------

EPILOG = """examples:
  python fhir_patient_generator.py                         one patient, pretty JSON + S3 key
  python fhir_patient_generator.py --seed 42 --as-of 2025-10-13T02:22:22Z
  python fhir_patient_generator.py --count 1000 --seed 7 > patients.ndjson
  python fhir_patient_generator.py --count 500 --min-age 65 --states CA,NY --seed 1
  python fhir_patient_generator.py --count 100 --profile us-core --seed 1   US Core Patients
  python fhir_patient_generator.py --count 100000 --seed 7 --output ./lake/bronze
  python fhir_patient_generator.py --count 100000 --seed 7 --output s3://my-bucket/bronze \\
      --format ndjson --gzip --workers 4
"""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line on stderr, exit 2
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def _seed_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if not 0 <= value < 1 << 64:
        raise argparse.ArgumentTypeError("must be from 0 to 2**64-1")
    return value


def _age(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface."""
    p = _Parser(
        prog="fhir_patient_generator.py",
        description="Generate realistic, reproducible FHIR Patient resources for CMS metrics.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    p.add_argument(
        "--seed", type=_seed_int, metavar="INT", help="seed (default: random, reported on stderr)"
    )
    p.add_argument(
        "--as-of",
        metavar="ISO",
        help="ISO-8601 time that ages, dates and meta.lastUpdated refer to "
        "(default: now, UTC), e.g. 2025-10-13T02:22:22Z",
    )
    p.add_argument(
        "--count", type=_positive_int, metavar="N", help="N compact patients, NDJSON on stdout"
    )
    p.add_argument(
        "--start",
        "--start-index",
        dest="start",
        metavar="I",
        type=int,
        default=0,
        help="index of the first patient (default 0)",
    )
    p.add_argument("--min-age", type=_age, default=0, metavar="A", help="youngest age (default 0)")
    p.add_argument(
        "--max-age", type=_age, default=MAX_AGE, metavar="A", help=f"oldest age (default {MAX_AGE})"
    )
    p.add_argument(
        "--states",
        metavar="CA,NY,...",
        help="only these USPS codes, e.g. CA,NY (default: 50 states + DC)",
    )
    p.add_argument(
        "--lookback-years",
        type=float,
        metavar="Y",
        default=DEFAULT_LOOKBACK_YEARS,
        help="deaths fall within this many years before as-of (default 3)",
    )
    p.add_argument(
        "--mortality-rate",
        type=float,
        metavar="P",
        help="fixed probability of death in the window, overriding the life table",
    )
    p.add_argument(
        "--hospitals-per-million",
        type=float,
        metavar="H",
        default=DEFAULT_HOSPITALS_PER_MILLION,
        help="organizations per million residents of a state, at least one (default 1)",
    )
    p.add_argument(
        "--profile",
        choices=PROFILES,
        default="cms",
        help="cms: the compact seed record (default); us-core: adds name, race, ethnicity and "
        "birth sex as a US Core Patient",
    )
    p.add_argument("--bucket", default=DEFAULT_BUCKET, help="bucket of the suggested key")
    p.add_argument("--prefix", default=DEFAULT_PREFIX, help="prefix of the suggested key")
    _add_bronze_arguments(p)
    return p


def _shard(text: str) -> tuple[int, int]:
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
    if not match or not int(match[1]) < int(match[2]):
        raise argparse.ArgumentTypeError(f"{text!r} is not K/N with 0 <= K < N, e.g. 0/4")
    return int(match[1]), int(match[2])


def _gzip_level(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if not 0 <= value <= 9:
        raise argparse.ArgumentTypeError(f"must be from 0 to 9, not {value}")
    return value


def _add_bronze_arguments(p: argparse.ArgumentParser) -> None:
    b = p.add_argument_group("bronze layer (with --output; see docs/bronze.md)")
    b.add_argument(
        "--output",
        metavar="DIR|s3://BUCKET/PREFIX",
        help="layer root: a directory or s3://bucket/prefix (needs --count)",
    )
    b.add_argument("--format", choices=FORMATS, help="json: a file per patient (default); ndjson")
    b.add_argument("--gzip", action="store_true", help="gzip every file (.json.gz, .ndjson.gz)")
    b.add_argument(
        "--gzip-level", type=_gzip_level, help=f"zlib level 0-9 (default {DEFAULT_GZIP_LEVEL})"
    )
    b.add_argument(
        "--records-per-file",
        type=_positive_int,
        help=f"patients per NDJSON file and per work unit (default {DEFAULT_RECORDS_PER_FILE:,})",
    )
    b.add_argument("--overwrite", action="store_true", help="replace another run found at --output")
    b.add_argument(
        "--workers", type=_positive_int, metavar="N", help="worker processes (default 1)"
    )
    b.add_argument(
        "--shard", type=_shard, metavar="K/N", help="write only shard K of N, e.g. 0/4 (of units)"
    )
    b.add_argument(
        "--concurrency",
        type=_positive_int,
        help=f"concurrent S3 uploads per process (default {DEFAULT_CONCURRENCY})",
    )
    b.add_argument(
        "--endpoint-url", metavar="URL", help="S3-compatible endpoint (else $AWS_ENDPOINT_URL)"
    )
    b.add_argument("--quiet", action="store_true", help="no progress bar (the summary stays)")
    p.add_argument(
        "--validate",
        action="store_true",
        help="re-validate every Patient with fhir.resources (slow); exit 1 naming the bad one",
    )


def _check_bronze_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Bad combinations of the bronze options are bad input: one line, exit 2."""
    flags = ("format", "gzip", "gzip_level", "records_per_file", "overwrite", "workers", "shard")
    flags += ("concurrency", "endpoint_url", "quiet")
    if args.output is None:
        for name in flags:
            if getattr(args, name) not in (None, False):
                parser.error(f"--{name.replace('_', '-')} needs --output")
        return
    if args.count is None:
        parser.error("--output needs --count")
    if re.match(r"[A-Za-z][A-Za-z0-9+.-]*://", args.output) and not args.output.startswith("s3://"):
        parser.error(f"--output must be a directory or s3://bucket/prefix, not {args.output!r}")
    if args.output.startswith("s3://"):
        try:
            parse_s3_url(args.output)
        except ValueError as e:
            parser.error(str(e))
    elif not args.output.strip():
        parser.error("--output is empty")
    if args.overwrite and args.shard and args.shard[1] > 1:
        parser.error("--overwrite cannot be combined with --shard (clear the output once first)")
    if args.gzip_level is not None and not args.gzip:
        parser.error("--gzip-level needs --gzip")


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


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt  # SIGTERM cleans up like Ctrl-C


def _run_bronze(args: argparse.Namespace, plan: Plan, prog: str) -> int:
    """--output: write the bronze layer; one summary line, or one error line and exit 1."""
    spec = Bronze(
        root=args.output.rstrip("/") or "/",
        count=args.count,
        start=args.start,
        format=args.format or "json",
        gzip=args.gzip,
        gzip_level=DEFAULT_GZIP_LEVEL if args.gzip_level is None else args.gzip_level,
        records_per_file=args.records_per_file or DEFAULT_RECORDS_PER_FILE,
        validate=args.validate,
        concurrency=args.concurrency or DEFAULT_CONCURRENCY,
        endpoint_url=args.endpoint_url,
        token=str(os.getpid()),
    )
    shard = args.shard or (0, 1)
    tick, close = None, None
    if not args.quiet and sys.stderr.isatty():
        shard_records = sum(unit_size(spec, u) for u in shard_units(spec, shard))
        tick, close = _progress_bar(max(shard_records, 1))
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        summary = write_bronze(
            plan,
            spec,
            workers=args.workers or 1,
            shard=shard,
            overwrite=args.overwrite,
            progress=tick,
        )
    except KeyboardInterrupt:
        print(f"{prog}: error: interrupted; no partial file was left", file=sys.stderr)
        return 1
    except (BronzeError, OSError) as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 1
    except Exception as e:
        if not type(e).__module__.startswith(("botocore", "boto3", "s3transfer")):
            raise
        print(f"{prog}: error: S3: {e}", file=sys.stderr)
        return 1
    finally:
        signal.signal(signal.SIGTERM, previous)
        if close:
            close()
    seconds = summary["seconds"]
    part = f" (shard {shard[0]}/{shard[1]})" if shard[1] > 1 else ""
    print(
        f"wrote {summary['records']:,} patients{part} + {summary['organizations']:,} "
        f"organizations ({summary['files']:,} files, {summary['bytes'] / 1e6:,.1f} MB) to "
        f"{summary['root']} in {seconds:.2f} s ({summary['records'] / seconds:,.0f} patients/s)",
        file=sys.stderr,
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the exit status (2 for bad input, 1 for runtime failures)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    _check_bronze_args(parser, args)
    seed = args.seed
    try:
        as_of = parse_as_of(args.as_of)
        plan = make_plan(
            draw_seed() if seed is None else seed,
            as_of,
            min_age=args.min_age,
            max_age=args.max_age,
            states=args.states,
            lookback_years=args.lookback_years,
            mortality_rate=args.mortality_rate,
            hospitals_per_million=args.hospitals_per_million,
            profile=args.profile,
        )
        if args.start < 0 or args.start + (args.count or 1) - 1 > MAX_INDEX:
            raise ValueError(f"--start and --count must keep indexes within 0..{MAX_INDEX}")
    except ValueError as e:
        parser.error(str(e))
    if seed is None:
        print(
            f"seed {plan.seed}, as-of {plan.last_updated} (repeat with --seed {plan.seed} "
            f"--as-of {plan.last_updated})",
            file=sys.stderr,
        )
    if args.output is not None:
        return _run_bronze(args, plan, parser.prog)
    try:
        if args.count is None:
            record = build_record(plan, args.start)
            sys.stdout.write(to_json(record, pretty=True) + "\n")
            key = suggested_s3_key(record, args.bucket, args.prefix)
            sys.stdout.write(f"Suggested S3 Path: {key}\n")
        else:
            out = sys.stdout.buffer
            for chunk in ndjson_chunks(plan, args.start, args.start + args.count, args.validate):
                out.write(chunk)
        sys.stdout.flush()
    except BrokenPipeError:  # e.g. piped into `head`: not an error of ours
        sys.stderr.close()
        return 0
    except (OSError, KeyboardInterrupt, BronzeError) as e:
        print(f"{parser.prog}: error: {e or 'interrupted'}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
