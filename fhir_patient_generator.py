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
import csv
import functools
import hashlib
import secrets
import sys
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
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
    h = f"{v:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


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


@dataclass(frozen=True)
class Plan:
    """Everything fixed for one run (seed, as-of, options), precomputed so records are cheap."""

    seed: int
    as_of: datetime
    options: Mapping[str, Any]  # normalised options, as recorded in manifests
    key: bytes
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

    return Plan(
        seed=seed,
        as_of=as_of,
        options=opts,
        key=key,
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
    )


def normalise_options(
    min_age: int = 0,
    max_age: int = MAX_AGE,
    states: str | Iterable[str] | None = None,
    lookback_years: float = DEFAULT_LOOKBACK_YEARS,
    mortality_rate: float | None = None,
    hospitals_per_million: float = DEFAULT_HOSPITALS_PER_MILLION,
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
    return {
        "min_age": min_age,
        "max_age": max_age,
        "states": _normalise_states(states, ref),
        "lookback_years": float(lookback_years),
        "mortality_rate": None if mortality_rate is None else float(mortality_rate),
        "hospitals_per_million": float(hospitals_per_million),
    }


def make_plan(seed: int, as_of: datetime | str | None = None, **options: Any) -> Plan:
    """Check inputs and precompute everything fixed for a run; cached for repeated calls."""
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 1 << 64:
        raise ValueError(f"seed must be a whole number from 0 to 2**64-1, not {seed!r}")
    opts = normalise_options(**options)
    return _make_plan_cached(seed, parse_as_of(as_of), tuple(opts.items()))


def build_record(plan: Plan, index: int) -> dict[str, Any]:
    """Patient #index of the plan as a plain dict: the canonical form every writer serialises."""
    if not 0 <= index <= MAX_INDEX:
        raise ValueError(f"patient index must be from 0 to {MAX_INDEX}, not {index}")
    r = _hash_int(plan.key, index.to_bytes(8, "little"))
    s = _pick(plan.state_cum, r & M32)
    cities = plan.city_names[s]
    city = cities[_pick(plan.city_cum[s], (r >> 32) & M32)]
    cell = _pick(plan.cell_cum, (r >> 64) & M32)
    sex = plan.cells[cell][1]
    birth = plan.birth_low[cell] + (((r >> 96) & M32) * plan.birth_span[cell] >> 32)
    g = (r >> 128) & M32
    gender = "other" if g < plan.gender_other else "unknown" if g < plan.gender_unknown else sex
    code, display = plan.languages[_pick(plan.language_cum, (r >> 160) & M32)]
    orgs = plan.state_orgs[s]
    org = orgs[((r >> 192) & M32) * len(orgs) >> 32]
    mrn = _mrn_number(index, plan.mrn_add, plan.mrn_mul)
    record: dict[str, Any] = {
        "resourceType": "Patient",
        "id": _uuid_text(_mix_uuid((index + plan.uuid_add) & M122, plan.uuid_mul)),
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
                "value": f"MC-{mrn:010d}",
            }
        ],
        "active": True,
        "gender": gender,
        "birthDate": plan.dates[birth - plan.dates_base],
    }
    if (r >> 224) & M32 < plan.death_threshold[cell]:
        born = (birth - 719163) * 86400  # 719163 = date(1970, 1, 1).toordinal()
        low = max(plan.window_start, born)
        died = low + (((r >> 256) & ((1 << 64) - 1)) * (plan.as_of_seconds - low + 1) >> 64)
        record["deceasedDateTime"] = datetime.fromtimestamp(died, UTC).strftime(
            "%Y-%m-%dT%H:%M:%SZ"
        )
    record["address"] = [{"city": city, "state": plan.state_codes[s], "country": "USA"}]
    record["communication"] = [
        {
            "language": {
                "coding": [{"system": "urn:ietf:bcp:47", "code": code, "display": display}],
                "text": display,
            },
            "preferred": True,
        }
    ]
    record["managingOrganization"] = {
        "reference": f"Organization/{org['id']}",
        "display": org["name"],
    }
    return record


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
    """Patient #index as a validated fhir.resources (R5) Patient; a random seed when None."""
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
# CLI: a thin argparse layer over the API above
# ---------------------------------------------------------------------------------------------

EPILOG = """examples:
  python fhir_patient_generator.py                         one patient, pretty JSON + S3 key
  python fhir_patient_generator.py --seed 42 --as-of 2025-10-13T02:22:22Z
  python fhir_patient_generator.py --count 1000 --seed 7 > patients.ndjson
  python fhir_patient_generator.py --count 500 --min-age 65 --states CA,NY --seed 1
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
    p.add_argument("--seed", type=_seed_int, help="seed (default: random, reported on stderr)")
    p.add_argument(
        "--as-of",
        help="ISO-8601 time that ages, dates and meta.lastUpdated refer to "
        "(default: now, UTC), e.g. 2025-10-13T02:22:22Z",
    )
    p.add_argument("--count", type=_positive_int, help="N compact patients, NDJSON on stdout")
    p.add_argument("--start", type=int, default=0, help="index of the first patient (default 0)")
    p.add_argument("--min-age", type=_age, default=0, help="youngest age (default 0)")
    p.add_argument("--max-age", type=_age, default=MAX_AGE, help=f"oldest age (default {MAX_AGE})")
    p.add_argument("--states", help="only these USPS codes, e.g. CA,NY (default: 50 states + DC)")
    p.add_argument(
        "--lookback-years",
        type=float,
        default=DEFAULT_LOOKBACK_YEARS,
        help="deaths fall within this many years before as-of (default 3)",
    )
    p.add_argument(
        "--mortality-rate",
        type=float,
        help="fixed probability of death in the window, overriding the life table",
    )
    p.add_argument(
        "--hospitals-per-million",
        type=float,
        default=DEFAULT_HOSPITALS_PER_MILLION,
        help="organizations per million residents of a state, at least one (default 1)",
    )
    p.add_argument("--bucket", default=DEFAULT_BUCKET, help="bucket of the suggested key")
    p.add_argument("--prefix", default=DEFAULT_PREFIX, help="prefix of the suggested key")
    return p


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the exit status (2 for bad input, 1 for runtime failures)."""
    parser = build_parser()
    args = parser.parse_args(argv)
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
    try:
        if args.count is None:
            record = build_record(plan, args.start)
            sys.stdout.write(to_json(record, pretty=True) + "\n")
            key = suggested_s3_key(record, args.bucket, args.prefix)
            sys.stdout.write(f"Suggested S3 Path: {key}\n")
        else:
            out = sys.stdout.buffer
            for index in range(args.start, args.start + args.count):
                out.write(orjson.dumps(build_record(plan, index)) + b"\n")
        sys.stdout.flush()
    except BrokenPipeError:  # e.g. piped into `head`: not an error of ours
        sys.stderr.close()
        return 0
    except (OSError, KeyboardInterrupt) as e:
        print(f"{parser.prog}: error: {e or 'interrupted'}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
