"""The living population: snapshots and change batches balance as a ledger (DuckDB MERGE INTO,
Delta Lake merge), with and without delivery faults; batches compose; event rates match the
life table, the CPS move shares and the joining rates; every version keeps the invariants."""

from __future__ import annotations

import functools
import itertools
import math
from collections import Counter, defaultdict
from datetime import UTC, date, datetime, timedelta
from operator import attrgetter
from pathlib import Path

import duckdb
import fhirkit
import orjson
import pyarrow as pa
import pytest
from deltalake import DeltaTable, write_deltalake
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.patient import Patient
from test_realism import table

import fhir_patient_generator as g

# Private names used here (internals this file checks or drives directly): _CANDIDATES,
# _DEATH_BOUND, _DUPLICATE_DAYS, _ERROR_DAYS, _ERROR_SHARE, _HOSPITAL_CHANGE_RATE, _LATE_DAYS,
# _MALE_AT_BIRTH, _MAX_AGE, _MAX_DELAY, _MOVE_KINDS, _MOVE_SHARES, _NO_FAULTS, _SECONDS_PER_YEAR,
# _load_reference, _population_size, _version_record

E = "2024-01-01T00:00:00Z"  # the epoch most tests define the population at (a leap year)
EPOCH = datetime(2024, 1, 1, tzinfo=UTC)
T = "2025-01-01T00:00:00Z"  # one year on
FAULTS = g.Faults(late=0.05, duplicate=0.05, out_of_order=0.2)
HEAVY_FAULTS = g.Faults(late=0.5, duplicate=0.5, out_of_order=1.0)
SIGMAS = 4.5  # tolerance of the rate checks, in standard deviations of the count
DAY = 86400


def iso(dt: datetime) -> str:
    return dt.strftime("%Y-%m-%dT%H:%M:%SZ")


def months(start: datetime, n: int) -> list[str]:
    """start and the first of each of the n months after it (calendar months, UTC)."""
    out = [start]
    for k in range(1, n + 1):
        y, m = divmod(start.month - 1 + k, 12)
        out.append(datetime(start.year + y, m + 1, 1, tzinfo=UTC))
    return [iso(d) for d in out]


def lines(plan: g.Plan, versions) -> list[bytes]:
    return [g.version_json(plan, v) for v in versions]


def write_ndjson(path: Path, rows: list[bytes]) -> Path:
    path.write_bytes(b"".join(r + b"\n" for r in rows))
    return path


def by_index(versions) -> dict[int, list[g.Version]]:
    out: dict[int, list[g.Version]] = defaultdict(list)
    for v in versions:
        out[v.index].append(v)
    return out


def all_versions(plan: g.Plan, count: int, until: str) -> dict[int, list[g.Version]]:
    """Every version of every patient up to `until`: the epoch snapshot plus one change batch."""
    epoch = list(g.snapshot(plan, count, plan.as_of))
    return by_index(itertools.chain(epoch, g.changes(plan, count, plan.as_of, until)))


# --- 1 and 3: the ledger in DuckDB --------------------------------------------------------------

# One NDJSON file of a batch, flattened: a Patient is (id, versionId); a deletion Bundle is (the id
# in request.url, the ifMatch version + 1, deleted). Only lines whose lastUpdated <= cutoff.
FLAT = """
SELECT
    CASE WHEN j->>'$.resourceType' = 'Patient' THEN j->>'$.id'
         ELSE regexp_extract(j->>'$.entry[0].request.url', '^Patient/(.+)$', 1) END AS id,
    CASE WHEN j->>'$.resourceType' = 'Patient' THEN CAST(j->>'$.meta.versionId' AS BIGINT)
         ELSE CAST(regexp_extract(j->>'$.entry[0].request.ifMatch', '^W/"([0-9]+)"$', 1)
                   AS BIGINT) + 1 END AS version,
    j->>'$.resourceType' = 'Bundle' AS deleted,
    CAST(j->>'$.meta.lastUpdated' AS TIMESTAMPTZ) AS updated,
    CAST(j AS VARCHAR) AS json
FROM read_json_objects('{path}', format = 'newline_delimited') AS r(j)
WHERE updated <= CAST('{cutoff}' AS TIMESTAMPTZ)
"""
STAGE = """
CREATE OR REPLACE TEMP TABLE stage AS {flat}
QUALIFY row_number() OVER (PARTITION BY id ORDER BY version DESC) = 1
"""
MERGE = """
MERGE INTO ledger AS t USING stage AS s ON t.id = s.id
WHEN MATCHED AND s.version > t.version THEN
    UPDATE SET version = s.version, deleted = s.deleted, updated = s.updated, json = s.json
WHEN NOT MATCHED THEN
    INSERT (id, version, deleted, updated, json)
    VALUES (s.id, s.version, s.deleted, s.updated, s.json)
"""


def duckdb_ledger(files: list[Path], cutoff: str) -> tuple[list[bytes], list[bytes]]:
    """files[0] is the epoch snapshot, the rest change batches in delivery order. Returns the
    live rows' json of the MERGE ledger and of 'the latest lastUpdated per id wins' over every
    line, after checking that lastUpdated strictly increases with the version per id."""
    con = duckdb.connect()
    con.execute(
        "CREATE TABLE ledger (id VARCHAR, version BIGINT, deleted BOOLEAN, "
        "updated TIMESTAMPTZ, json VARCHAR)"
    )
    con.execute("CREATE TABLE everything AS " + FLAT.format(path=files[0], cutoff=cutoff))
    con.execute("INSERT INTO ledger SELECT * FROM everything")
    for path in files[1:]:
        flat = FLAT.format(path=path, cutoff=cutoff)
        con.execute(STAGE.format(flat=flat))
        con.execute(MERGE)
        con.execute("INSERT INTO everything " + flat)
    (ids,) = con.execute("SELECT count(*) - count(DISTINCT id) FROM ledger").fetchone()
    assert ids == 0
    live = con.execute("SELECT json FROM ledger WHERE NOT deleted").fetchall()
    # one lastUpdated per (id, version), and lastUpdated strictly increasing with the version
    twice = "SELECT id, version FROM everything GROUP BY ALL HAVING count(DISTINCT updated) > 1"
    assert con.execute(twice).fetchall() == []
    back = (
        "SELECT count(*) FROM (SELECT updated, lag(updated) OVER (PARTITION BY id ORDER BY version)"
        " AS before FROM (SELECT DISTINCT id, version, updated FROM everything))"
        " WHERE before >= updated"
    )
    assert con.execute(back).fetchone() == (0,)
    latest = con.execute(
        "SELECT json FROM everything QUALIFY row_number() OVER "
        "(PARTITION BY id ORDER BY updated DESC) = 1 AND NOT deleted"
    ).fetchall()
    return [r[0].encode() for r in live], [r[0].encode() for r in latest]


def assert_ledger_is(got: list[bytes], expected: list[bytes]) -> None:
    assert len(got) == len(set(got)) and len(expected) == len(set(expected))
    assert set(got) - set(expected) == set()
    assert set(expected) - set(got) == set()


def batch_files(tmp_path: Path, plan: g.Plan, count: int, edges: list[str], faults) -> list[Path]:
    """The epoch snapshot and the change batches (edges[k], edges[k + 1]] as NDJSON files."""
    files = [write_ndjson(tmp_path / "epoch.ndjson", lines(plan, g.snapshot(plan, count, E)))]
    for k, (a, b) in enumerate(itertools.pairwise(edges)):
        batch = g.changes(plan, count, a, b, faults=faults)
        files.append(write_ndjson(tmp_path / f"batch-{k:03d}.ndjson", lines(plan, batch)))
    return files


def test_monthly_batches_merged_into_duckdb_balance_with_the_snapshot(tmp_path):
    plan, count = g.make_plan(21, E), 12_000
    files = batch_files(tmp_path, plan, count, months(EPOCH, 12), g._NO_FAULTS)
    merged, latest = duckdb_ledger(files, cutoff=T)
    expected = lines(plan, g.snapshot(plan, count, T))
    assert_ledger_is(merged, expected)
    assert_ledger_is(latest, expected)
    # the year had every kind of change, deletions included, and joiners
    kinds = Counter(v.change for v in g.changes(plan, count, E, T))
    assert set(kinds) == {"birth", "arrival", "death", "hospital", "delete", *g._MOVE_KINDS}
    assert len(expected) == g._population_size(plan, count, T) - kinds["delete"]


# --- 2: the ledger in Delta Lake (delta-rs) ----------------------------------------------------

DELTA_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("version", pa.int64()),
        ("deleted", pa.bool_()),
        ("updated", pa.string()),
        ("json", pa.string()),
    ]
)


def delta_stage(rows: list[bytes]) -> pa.Table:
    """Batch lines flattened in Python (independently of the SQL above), the max version per id."""
    best: dict[str, tuple] = {}
    for line in rows:
        r = orjson.loads(line)
        if r["resourceType"] == "Patient":
            key, version, deleted = r["id"], int(r["meta"]["versionId"]), False
        else:
            (entry,) = r["entry"]
            key = entry["request"]["url"].removeprefix("Patient/")
            version = int(entry["request"]["ifMatch"].removeprefix('W/"').removesuffix('"')) + 1
            deleted = True
        if key not in best or version > best[key][1]:
            best[key] = (key, version, deleted, r["meta"]["lastUpdated"], line.decode())
    return pa.Table.from_pylist(
        [dict(zip(DELTA_SCHEMA.names, row, strict=True)) for row in best.values()],
        schema=DELTA_SCHEMA,
    )


@pytest.mark.parametrize("deletes", ["tombstones", "removed"])
def test_monthly_batches_merged_into_delta_lake_balance_with_the_snapshot(tmp_path, deletes):
    plan, count = g.make_plan(22, E), 8_000
    table = str(tmp_path / "patient")
    write_deltalake(table, delta_stage(lines(plan, g.snapshot(plan, count, E))))
    edges = months(EPOCH, 12)
    for a, b in itertools.pairwise(edges):
        source = delta_stage(lines(plan, g.changes(plan, count, a, b)))
        merge = DeltaTable(table).merge(
            source, predicate="t.id = s.id", source_alias="s", target_alias="t"
        )
        if deletes == "removed":
            merge = merge.when_matched_delete("s.deleted AND s.version > t.version")
        merge = merge.when_matched_update_all("s.version > t.version")
        merge.when_not_matched_insert_all(None if deletes == "tombstones" else "NOT s.deleted")
        merge.execute()
    final = DeltaTable(table)
    assert final.version() == len(edges) - 1  # the first write, then one commit per batch
    rows = final.to_pyarrow_table().to_pylist()
    assert len({r["id"] for r in rows}) == len(rows)
    live = [r["json"].encode() for r in rows if not r["deleted"]]
    assert_ledger_is(live, lines(plan, g.snapshot(plan, count, T)))
    deletions = sum(v.change == "delete" for v in g.changes(plan, count, E, T))
    assert deletions > 0
    assert len(rows) - len(live) == (deletions if deletes == "tombstones" else 0)


# --- 3: delivery faults ------------------------------------------------------------------------


@pytest.mark.parametrize("faults", [FAULTS, HEAVY_FAULTS], ids=["faults", "heavy"])
def test_faulty_deliveries_balance_once_the_delay_has_passed(tmp_path, faults):
    """Weekly batches with late, duplicated and shuffled lines, fed until T + MAX_DELAY and cut
    at lastUpdated <= T: the ledger is the snapshot at T."""
    plan, count = g.make_plan(23, E), 8_000
    cut = EPOCH + timedelta(days=200, seconds=12_345)  # T, not on a batch edge
    end = cut + timedelta(seconds=g._MAX_DELAY)
    edges = [EPOCH + timedelta(weeks=k) for k in range(60) if EPOCH + timedelta(weeks=k) < end]
    edges = [iso(d) for d in [*edges, end]]
    files = batch_files(tmp_path, plan, count, edges, faults)
    expected = lines(plan, g.snapshot(plan, count, iso(cut)))
    merged, latest = duckdb_ledger(files, cutoff=iso(cut))
    assert_ledger_is(merged, expected)
    assert_ledger_is(latest, expected)
    if faults == HEAVY_FAULTS:  # fed only until T, the ledger misses what is still on its way
        (tmp_path / "until-t").mkdir()
        early = [d for d in edges if d < iso(cut)] + [iso(cut)]
        files = batch_files(tmp_path / "until-t", plan, count, early, faults)
        merged, _ = duckdb_ledger(files, iso(cut))
        assert set(expected) - set(merged)


def test_the_faults_really_happen():
    plan, count = g.make_plan(24, E), 6_000
    edges = [EPOCH + timedelta(weeks=k) for k in range(27)]
    windows = [(a.timestamp(), b.timestamp()) for a, b in itertools.pairwise(edges)]
    batches = [
        g.changes(plan, count, iso(a), iso(b), faults=FAULTS) for a, b in itertools.pairwise(edges)
    ]
    deliveries: dict[tuple[int, int], list[float]] = defaultdict(list)  # version -> batch ends
    for (a, b), batch in zip(windows, batches, strict=True):
        for v in batch:
            assert v.instant <= b and v.instant + g._MAX_DELAY > a  # within the delay, never early
            deliveries[v.index, v.number].append(b)
    late = sum(v.instant <= a for (a, _), vs in zip(windows, batches, strict=True) for v in vs)
    settled = g.changes(plan, count, E, iso(edges[-1] - timedelta(seconds=g._MAX_DELAY)))
    assert all(1 <= len(deliveries[v.index, v.number]) <= 2 for v in settled)
    assert late > 0
    check_share(sum(len(deliveries[v.index, v.number]) == 2 for v in settled), len(settled), 0.05)
    # out of order: the lines of one long batch are not in (index, version) order, and some
    # patient's higher version comes before a lower one
    batch = g.changes(plan, count, E, T, faults=FAULTS)
    keys = [(v.index, v.number) for v in batch]
    assert keys != sorted(keys)
    first: dict[int, int] = {}
    assert any(v.number < first.setdefault(v.index, v.number) for v in batch)
    assert sorted(keys) == sorted(
        (v.index, v.number)
        for v in g.changes(plan, count, E, T, faults=FAULTS._replace(out_of_order=0.0))
    )  # the same lines, only moved


def test_late_and_duplicate_deliveries_keep_to_their_delays():
    """Daily batches: a late version comes 1..LATE_DAYS whole days after its instant's day, a
    duplicate 0..DUPLICATE_DAYS days after the first delivery, nothing comes a third time."""
    plan, count, days = g.make_plan(37, E), 10_000, 60
    faults = g.Faults(late=0.5, duplicate=0.5)
    start = int(EPOCH.timestamp())
    first, late, again = {}, Counter(), Counter()
    for day in range(days):
        a, b = (plan_time(start + k * DAY) for k in (day, day + 1))
        for v in g.changes(plan, count, a, b, faults=faults):
            key = v.index, v.number
            if key in first:
                assert first[key] is not None, key  # not a third time
                again[day - first[key]] += 1
                first[key] = None  # seen twice
            else:
                first[key] = day
                late[day - (v.instant - start - 1) // DAY] += 1
    assert set(late) == set(range(g._LATE_DAYS + 1))
    assert set(again) == set(range(g._DUPLICATE_DAYS + 1))
    n = sum(late.values())
    check_share(n - late[0], n, faults.late)
    settled = g.changes(plan, count, E, plan_time(start + days * DAY - g._MAX_DELAY))
    assert all((v.index, v.number) in first for v in settled)  # every version arrives
    check_share(sum(first[v.index, v.number] is None for v in settled), len(settled), 0.5)


def test_without_faults_a_batch_is_the_versions_whose_instant_is_in_it():
    """Checked against history() of every patient, not against changes() itself."""
    plan, count = g.make_plan(25, E), 3_000
    edges = months(EPOCH, 12)
    n = g._population_size(plan, count, T)
    histories = [g.history(plan, count, i, T) for i in range(n)]
    assert not g.history(plan, count, n, T)  # the next joiner has not joined yet
    for a, b in itertools.pairwise(edges):
        lo, hi = (datetime.fromisoformat(x).timestamp() for x in (a, b))
        expected = [v for h in histories for v in h if lo < v.instant <= hi and v.change != "epoch"]
        assert g.changes(plan, count, a, b) == expected
        latest = by_index(expected)
        assert g.changes(plan, count, a, b, latest=True) == [vs[-1] for vs in latest.values()]
    assert [h[-1] for h in histories if h[-1].change != "delete"] == list(
        g.snapshot(plan, count, T)
    )


# --- 4: composition and determinism ------------------------------------------------------------

S = "2024-11-03T07:08:09Z"
U = "2025-02-14T23:59:59Z"  # (S, T] and (T, U] meet at a new year


def test_batches_compose_and_repeat():
    plan, count = g.make_plan(26, E), 5_000
    first, second, both = (g.changes(plan, count, a, b) for a, b in ((S, T), (T, U), (S, U)))
    assert first and second
    key = attrgetter("index", "number")
    assert [key(v) for v in sorted(first + second, key=key)] == [key(v) for v in both]
    assert lines(plan, sorted(first + second, key=key)) == lines(plan, both)
    assert sorted(first + second, key=key) == both  # samples included
    # with late and duplicate deliveries: the same deliveries, however the window is cut
    faults = FAULTS._replace(out_of_order=0.0)
    parts = g.changes(plan, count, S, T, faults=faults) + g.changes(
        plan, count, T, U, faults=faults
    )
    whole = g.changes(plan, count, S, U, faults=faults)
    assert Counter(lines(plan, parts)) == Counter(lines(plan, whole))
    # the same call, the same bytes (out of order too)
    for faults in (g._NO_FAULTS, FAULTS):
        once = lines(plan, g.changes(plan, count, S, U, faults=faults))
        assert once == lines(plan, g.changes(plan, count, S, U, faults=faults))
    assert lines(plan, g.snapshot(plan, count, U)) == lines(plan, g.snapshot(plan, count, U))


def test_index_ranges_concatenate():
    plan, count = g.make_plan(27, E), 5_000
    n = g._population_size(plan, count, U)
    cuts = [0, 1000, 3333, count, count + 7, n + 50]  # not on BLOCK edges; into the joiners
    for faults in (g._NO_FAULTS, FAULTS._replace(out_of_order=0.0)):
        whole = g.changes(plan, count, S, U, faults=faults)
        parts = [
            g.changes(plan, count, S, U, lo=a, hi=b, faults=faults)
            for a, b in itertools.pairwise(cuts)
        ]
        assert lines(plan, itertools.chain(*parts)) == lines(plan, whole)
    parts = [list(g.snapshot(plan, count, U, lo=a, hi=b)) for a, b in itertools.pairwise(cuts)]
    assert list(itertools.chain(*parts)) == list(g.snapshot(plan, count, U))
    assert list(g.snapshot(plan, count, U, lo=n)) == []


def test_the_epoch_patients_events_do_not_depend_on_the_epoch_count():
    plan, count = g.make_plan(28, E), 4_000
    for i in range(0, count, 37):
        assert g.history(plan, count, i, U) == g.history(plan, 2 * count, i, U)
    small = g.changes(plan, count, E, U, hi=count)
    assert small == [v for v in g.changes(plan, 2 * count, E, U) if v.index < count]
    assert any(v.change == "death" for v in small)
    assert list(g.snapshot(plan, count, U, hi=count)) == list(
        g.snapshot(plan, 2 * count, U, hi=count)
    )
    # the joiners do depend on it: twice the epoch, twice the joiners
    j1 = g._population_size(plan, count, U) - count
    j2 = g._population_size(plan, 2 * count, U) - 2 * count
    assert abs(j2 - 2 * j1) <= 3


def test_generate_patients_yields_the_versions_as_dicts():
    plan, count = g.make_plan(29, E), 2_000
    snap = list(g.generate_patients(count, 29, 0, U, epoch=E))
    assert snap == [orjson.loads(b) for b in lines(plan, g.snapshot(plan, count, U))]
    for latest, faults in ((False, g._NO_FAULTS), (True, g._NO_FAULTS), (False, FAULTS)):
        batch = list(
            g.generate_patients(count, 29, 0, U, epoch=E, since=S, latest=latest, faults=faults)
        )
        versions = g.changes(plan, count, S, U, latest=latest, faults=faults)
        assert batch == [g._version_record(plan, v) for v in versions]
        assert [orjson.dumps(r) for r in batch] == lines(plan, versions)


# --- 5: rates ----------------------------------------------------------------------------------


def whole_years(birth: date, day: date) -> int:
    return day.year - birth.year - ((day.month, day.day) < (birth.month, birth.day))


def next_birthday(birth: date, age: int) -> int:
    """Epoch seconds of the midnight (UTC) at which someone born on `birth` turns age + 1."""
    year = birth.year + age + 1
    try:
        day = birth.replace(year=year)
    except ValueError:  # 29 February: the age turns on 1 March
        day = date(year, 3, 1)
    return (day.toordinal() - date(1970, 1, 1).toordinal()) * DAY


def age_pieces(birth_ordinal: int, a: int, b: int):
    """(whole age, seconds) pieces of the time span [a, b)."""
    birth = date.fromordinal(birth_ordinal)
    while a < b:
        age = whole_years(birth, datetime.fromtimestamp(a, UTC).date())
        end = min(b, next_birthday(birth, age))
        yield age, end - a
        a = end


def year_age_pieces(birth_ordinal: int, a: int, b: int):
    """(calendar year, whole age, seconds) pieces of [a, b)."""
    while a < b:
        year = datetime.fromtimestamp(a, UTC).year
        end = min(b, int(datetime(year + 1, 1, 1, tzinfo=UTC).timestamp()))
        for age, seconds in age_pieces(birth_ordinal, a, end):
            yield year, age, seconds
        a = end


# The rates by year, state and age, computed here from the CSVs (not from the generator's tables):
# Census V2025 component years (July to June; calendar year y uses the one ending in June y,
# outside 2021-2025 the nearest), NCHS deaths by year over the life table's year 2022, and the
# ACS B07001 mover rates by age of each kind over their mean.
@functools.cache
def components() -> dict[tuple[str, int], dict[str, str]]:
    return {
        (r["state"], int(r["year"])): r
        for r in table("population_components_v2025.csv")
        if r["period"].startswith(f"{int(r['year']) - 1}-07-01")
    }


def component_year(year: int) -> int:
    return min(max(year, 2021), 2025)


@functools.cache
def death_level(year: int) -> float:
    nchs = {
        int(r["year"]): int(r["us_resident_deaths_registered"])
        for r in table("deaths_by_year_nchs.csv")
    }
    crude = {
        y: d / int(components()["US", y]["popestimate_jul1"])
        for y, d in nchs.items()
        if ("US", y) in components()
    }
    nearest = min(crude, key=lambda y: (abs(y - component_year(year)), y))
    return crude[nearest] / crude[2022]


def per_person(state: str, year: int, column: str) -> float:
    r = components()[state, component_year(year)]
    return max(0, int(r[column])) / int(r["popestimate_jul1"])


@functools.cache
def move_factors() -> dict[int, tuple[float, float, float]]:
    """Whole age -> each move kind's B07001 rate at that age over its mean (ages 1+)."""
    rows = table("movers_by_age_acs2018.csv")
    kinds = ("moved_within_county", "moved_diff_county_same_state", "moved_from_diff_state")
    people = sum(int(r["population_1plus"]) for r in rows)
    mean = [sum(int(r[k]) for r in rows) / people for k in kinds]
    out = {}
    for r in rows:
        lo = int(r["age_group"].split()[0])
        hi = g._MAX_AGE if "over" in r["age_group"] else int(r["age_group"].split()[-2])
        for age in range(0 if lo == 1 else lo, hi + 1):
            out[age] = tuple(
                int(r[k]) / int(r["population_1plus"]) / m for k, m in zip(kinds, mean, strict=True)
            )
    return out


def segments(versions: list[g.Version], until: int):
    """(sample, start, end) of each stretch a patient lived in one state, up to its death,
    deletion or `until`; nothing for those dead at the epoch."""
    if versions[0].sample.died >= 0:
        return
    for v, after in itertools.pairwise([*versions, None]):
        if v.change in ("death", "delete"):
            return
        yield v.sample, v.instant, until if after is None else after.instant


def move_options(plan: g.Plan):
    """ZIP position -> whether a move within the county, to another county of the state and to
    another state has somewhere to go (another ZIP of positive population there)."""
    weight = {}
    for positions, cum in zip(plan.zip_index, plan.zip_cum, strict=True):
        weight.update(
            (z, c - b) for z, c, b in zip(positions, cum, (0, *cum), strict=False) if c > b
        )
    county, state = Counter(), Counter()
    for z, w in weight.items():
        county[plan.zips[z][2:]] += w
        state[plan.zips[z][3]] += w
    total = sum(weight.values())

    def options(z: int) -> tuple[bool, bool, bool]:
        c, s = county[plan.zips[z][2:]], state[plan.zips[z][3]]
        return c > weight[z], s > c, total > s

    return options


def other_general_hospital(plan: g.Plan, z: int, org: int) -> bool:
    """Whether ZIP position z has a general hospital candidate of positive weight besides org:
    then a hospital change can go somewhere at every age."""
    lo, cum = z * g._CANDIDATES, plan.hospital_cum
    return any(
        plan.hospital_cand[k] != org and cum[k] > (cum[k - 1] if k > lo else 0)
        for k in range(lo, lo + g._CANDIDATES - 1)
    )


def within(observed: float, expected: float, sd: float) -> bool:
    return abs(observed - expected) <= SIGMAS * sd + 1e-9


def age_bands(edges: tuple[int, ...]) -> dict[int, tuple[int, int]]:
    """Whole age -> its band (lo, hi), the last band open to MAX_AGE."""
    bands = itertools.pairwise((*edges, g._MAX_AGE + 1))
    return {age: (a, b) for a, b in bands for age in range(a, b)}


def expected_counts(plan: g.Plan, people, until: int, band: dict) -> Counter:
    """Events expected from each patient's exposure: deaths by age band at the life table's
    m(x) times the state's ratio and the year's NCHS level, moves of each kind at its CPS hazard
    times its B07001 age factor where there is somewhere to go (and all kinds by age band: the
    age profile), hospital changes where another general hospital is a candidate (any age)."""
    ref, options = g._load_reference(), move_options(plan)
    mx, ratio = ref.mx, ref.state_mx_ratio  # the state's ratio k_s(x): tests/test_population.py
    moved = -math.log(1 - sum(g._MOVE_SHARES))
    hazards = [moved * share / sum(g._MOVE_SHARES) for share in g._MOVE_SHARES]
    out: Counter = Counter()
    for versions in people.values():
        for s, a, b in segments(versions, until):
            possible = options(s.zip)
            kx = ratio[plan.zips[s.zip][3]][s.sex]
            for year, age, seconds in year_age_pieces(s.birth, a, b):
                m = mx[s.sex][min(age, g._MAX_AGE)] * kx[min(age, g._MAX_AGE)] * death_level(year)
                out["death", band[age]] += min(m, g._DEATH_BOUND) * seconds
                factor = move_factors()[min(age, g._MAX_AGE)]
                for k, kind in enumerate(g._MOVE_KINDS):
                    rate = hazards[k] * factor[k] * seconds
                    out[kind, possible[k]] += rate
                    out["moves", band[age]] += rate if possible[k] else 0.0
            other = other_general_hospital(plan, s.zip, s.organization)
            out["hospital", other] += g._HOSPITAL_CHANGE_RATE * (b - a)
    return Counter({k: x / g._SECONDS_PER_YEAR for k, x in out.items()})


def observed_counts(plan: g.Plan, people, band: dict) -> Counter:
    """The events that happened, keyed as expected_counts keys them (by the state before)."""
    options, out = move_options(plan), Counter()
    for versions in people.values():
        for v, w in itertools.pairwise(versions):
            s = v.sample
            if w.change == "death":
                out["death", band[whole_years(date.fromordinal(s.birth), day_of(w.instant))]] += 1
            elif w.change in g._MOVE_KINDS:
                out[w.change, options(s.zip)[g._MOVE_KINDS.index(w.change)]] += 1
                out["moves", band[whole_years(date.fromordinal(s.birth), day_of(w.instant))]] += 1
            elif w.change == "hospital":
                out["hospital", other_general_hospital(plan, s.zip, s.organization)] += 1
    return out


def day_of(instant: int) -> date:
    return datetime.fromtimestamp(instant, UTC).date()


@pytest.mark.parametrize(
    "options, count, edges",
    [({}, 40_000, (0, 18, 25, 35, 45, 65)), ({"min_age": 65}, 25_000, (65, 75, 85, 95))],
    ids=["all-ages", "65-and-over"],
)
def test_deaths_moves_and_hospital_changes_happen_at_the_published_rates(options, count, edges):
    """Two years: deaths per age band against the life table's m(x) x each year's NCHS level over
    the exposure lived in it, moves of each kind against the CPS hazards spread by age as ACS
    B07001's, moves by age band (the age profile), hospital changes against their rate."""
    plan, until = g.make_plan(31, E, **options), "2026-01-01T00:00:00Z"
    people = all_versions(plan, count, until)
    band = age_bands(edges)
    until_s = int(datetime.fromisoformat(until).timestamp())
    expected, observed = (
        expected_counts(plan, people, until_s, band),
        observed_counts(plan, people, band),
    )
    checked = [(key, b) for b in sorted(set(band.values())) for key in ("death", "moves")]
    checked += [(kind, True) for kind in g._MOVE_KINDS] + [("hospital", True)]
    for key in checked:
        sd = math.sqrt(expected[key])
        assert within(observed[key], expected[key], sd), (key, observed[key], expected[key])
    assert expected["death", band[edges[-1]]] > 100  # enough to see a wrong rate
    # no move where there is nowhere to go (a one-ZIP county, a one-county state)
    assert [observed[kind, False] for kind in g._MOVE_KINDS] == [0, 0, 0]
    assert expected["move-zip", False] > 0  # some live in one-ZIP counties


def joining_rates(plan: g.Plan, year: int) -> tuple[dict[str, float], dict[str, float]]:
    """(births, arrivals) per epoch patient and year, by state: each run state's share of the
    epoch x its V2025 births, resp. net international migration, per person."""
    cum = plan.state_cum  # the epoch's state weights (registry: living and dead of the window)
    pops = {s: b - a for s, a, b in zip(plan.state_codes, (0, *cum), cum, strict=False)}
    total = sum(pops.values())
    births = {
        s: pops[s] / total * per_person(s, year, "births") if plan.options["min_age"] == 0 else 0.0
        for s in plan.state_codes
    }
    arrivals = {
        s: pops[s] / total * per_person(s, year, "net_international_migration")
        for s in plan.state_codes
    }
    return births, arrivals


@pytest.mark.parametrize("min_age", [0, 18])
def test_joiners_arrive_at_the_published_rates(min_age):
    """1,000,000 epoch patients for a year, the joiners alone (lo=count): how many (the year's
    V2025 births and net international migration per person), births among them (none unless
    ages start at 0) and by state (the state's births per person), boys among births, records
    entered in error deleted."""
    plan, count = g.make_plan(36, E, min_age=min_age), 1_000_000
    until = int(datetime.fromisoformat(T).timestamp())
    later = plan_time(until + g._ERROR_DAYS * DAY)  # every error joined by T is deleted by then
    people = by_index(g.changes(plan, count, E, later, lo=count))
    joiners = [people[i] for i in range(count, g._population_size(plan, count, T))]
    born, came = joining_rates(plan, EPOCH.year)  # E..T is the calendar year 2024
    join_rate = sum(born.values()) + sum(came.values())
    years = (until - plan.as_of.timestamp()) / g._SECONDS_PER_YEAR
    assert abs(len(joiners) - count * join_rate * years) <= 2  # a steady stream
    first = [vs[0] for vs in joiners]
    assert all(a.instant <= b.instant for a, b in itertools.pairwise(first))
    assert plan.as_of.timestamp() < first[0].instant and first[-1].instant <= until
    births = [v for v in first if v.change == "birth"]
    arrivals = [v for v in first if v.change == "arrival"]
    assert len(births) + len(arrivals) == len(joiners)
    assert all(v.sample.birth == day_of(v.instant).toordinal() for v in births)
    for v in arrivals:
        age = whole_years(date.fromordinal(v.sample.birth), day_of(v.instant))
        assert min_age <= age <= g._MAX_AGE + 1
    if min_age:
        assert births == []
    else:
        check_share(len(births), len(joiners), sum(born.values()) / join_rate)
        check_share(sum(v.sample.sex == "male" for v in births), len(births), g._MALE_AT_BIRTH)
        by_state = Counter(plan.zips[v.sample.zip][3] for v in births)
        for state, rate in born.items():
            check_share(by_state[state], len(births), rate / sum(born.values()))
    by_state = Counter(plan.zips[v.sample.zip][3] for v in arrivals)
    for state, rate in came.items():
        check_share(by_state[state], len(arrivals), rate / sum(came.values()))
    deleted = [vs for vs in joiners if vs[-1].change == "delete"]
    check_share(len(deleted), len(joiners), g._ERROR_SHARE)
    assert all(DAY <= vs[-1].instant - vs[0].instant <= g._ERROR_DAYS * DAY for vs in deleted)


def plan_time(instant: int) -> str:
    return iso(datetime.fromtimestamp(instant, UTC))


def check_share(k: int, n: int, p: float) -> None:
    assert within(k, p * n, math.sqrt(n * p * (1 - p))), (k, n, p)


# --- 6: invariants of every version ------------------------------------------------------------

E6 = "2024-02-29T12:34:56.789Z"  # an epoch on a leap day, with a fraction of a second
UNTIL6 = "2025-03-01T00:00:00Z"
IDENTITY = ("resourceType", "id", "identifier", "active", "gender", "birthDate", "communication")
# what each change may change, besides meta (and deceasedDateTime for a death)
CHANGED = {
    "move-zip": ("address", "managingOrganization"),
    "move-county": ("address", "managingOrganization"),
    "move-state": ("address", "managingOrganization"),
    "hospital": ("managingOrganization",),
    "death": ("deceasedDateTime",),
}


def updated(record: dict) -> datetime:
    return datetime.fromisoformat(record["meta"]["lastUpdated"])


def check_delete(plan: g.Plan, v: g.Version, record: dict, before: dict) -> None:
    assert record["resourceType"] == "Bundle" and record["type"] == "transaction"
    ((entry),) = record["entry"]
    assert entry == {
        "request": {
            "method": "DELETE",
            "url": f"Patient/{before['id']}",
            "ifMatch": f'W/"{v.number - 1}"',
        }
    }
    assert record["meta"] == {"lastUpdated": iso(datetime.fromtimestamp(v.instant, UTC))}


def check_place(record: dict, zips: dict, orgs: set[str]) -> None:
    (address,) = record["address"]
    row = zips[address["postalCode"]]  # a real ZIP ...
    assert (address["city"], address["district"], address["state"]) == row[1:]  # ... of its state
    assert record["managingOrganization"]["reference"] in orgs


def check_change(change: str, before: dict, after: dict) -> None:
    """What a change changed, and only that."""
    assert {k: v for k, v in before.items() if k not in IDENTITY} != {
        k: v for k, v in after.items() if k not in IDENTITY
    }
    for key in IDENTITY:
        assert before[key] == after[key], key
    for key in set(before) | set(after):
        if key != "meta" and key not in CHANGED[change]:
            assert before.get(key) == after.get(key), (change, key)
    a, b = before["address"][0], after["address"][0]
    if change == "move-zip":
        assert (a["state"], a["district"]) == (b["state"], b["district"])
        assert a["postalCode"] != b["postalCode"]
    elif change == "move-county":
        assert a["state"] == b["state"] and a["district"] != b["district"]
    elif change == "move-state":
        assert a["state"] != b["state"]
    elif change == "hospital":
        assert before["managingOrganization"] != after["managingOrganization"]
    else:
        assert after["deceasedDateTime"] == after["meta"]["lastUpdated"]


def check_patient(plan: g.Plan, count: int, versions: list[g.Version], context) -> None:
    """One patient's versions: 1..k, lastUpdated strictly increasing, each change what it says;
    nothing after a death or a deletion; a record entered in error has nothing but its deletion."""
    zips, orgs = context
    raw = lines(plan, versions)
    assert all(len(b) < 1024 for b in raw)
    records = [orjson.loads(b) for b in raw]
    first = versions[0]
    assert first.change == ("epoch" if first.index < count else first.change)
    assert first.change in (("epoch",) if first.index < count else ("birth", "arrival"))
    assert records[0]["id"] == g.patient_id(plan, first.index)
    for k, (v, r) in enumerate(zip(versions, records, strict=True)):
        assert v.number == k + 1
        assert k == 0 or updated(records[k - 1]) < updated(r)
        if v.change == "delete":
            assert k == len(versions) - 1  # nothing after a deletion
            check_delete(plan, v, r, records[k - 1])
            continue
        assert r["meta"]["versionId"] == str(k + 1)
        check_place(r, zips, orgs)
        if k:
            assert "deceasedDateTime" not in records[k - 1]  # nothing happens to the dead
            check_change(v.change, records[k - 1], r)
    if "deceasedDateTime" in records[0]:
        assert len(versions) == 1  # dead at the epoch: no events
    if versions[-1].change == "delete":  # entered in error: created, then deleted, nothing else
        assert len(versions) == 2
        assert DAY <= versions[-1].instant - first.instant <= g._ERROR_DAYS * DAY


def validation_sample(people: dict[int, list[g.Version]], n: int = 200) -> list[g.Version]:
    """Every kind of change, the deletions among them, then evenly spaced versions: n in all."""
    everything = [v for vs in people.values() for v in vs]
    picked = {}
    for v in everything:
        if v.change not in {p.change for p in picked.values()} or v.change == "delete":
            picked[v[:2]] = v
    step = max(1, len(everything) // (n - len(picked)))
    for v in everything[::step]:
        if len(picked) < n:
            picked.setdefault(v[:2], v)
    return list(picked.values())


def test_every_version_keeps_the_invariants():
    plan, count = g.make_plan(32, E6), 10_000
    people = all_versions(plan, count, UNTIL6)
    zips = {row[0]: row for row in g._load_reference().zips}
    orgs = {"Organization/" + o["id"] for o in plan.organizations}
    for versions in people.values():
        check_patient(plan, count, versions, (zips, orgs))
    kinds = Counter(v.change for vs in people.values() for v in vs)
    assert kinds.keys() == {"epoch", "birth", "arrival", "death", "hospital", "delete"} | set(
        g._MOVE_KINDS
    )
    # deleted ids never come back, however long one waits
    deleted = {i for i, vs in people.items() if vs[-1].change == "delete"}
    later = "2026-06-01T00:00:00Z"
    assert deleted.isdisjoint(v.index for v in g.snapshot(plan, count, later))
    assert deleted.isdisjoint(v.index for v in g.changes(plan, count, UNTIL6, later))
    assert all(g.history(plan, count, i, later) == people[i] for i in sorted(deleted)[:20])
    # a sample validates as FHIR R4 (fhir.resources R4B models and fhirkit, independently)
    sample = validation_sample(people)
    assert len(sample) == 200 and {v.change for v in sample} == kinds.keys()
    for v in sample:
        text = g.version_json(plan, v).decode()
        model = Bundle if v.change == "delete" else Patient
        assert model.model_validate_json(text).model_dump_json() == text
        assert fhirkit.validate(text) == [], v


def test_a_record_entered_in_error_gets_no_event_before_its_deletion():
    """Seed 7, epoch 2024-01-01, 30,000,000 epoch patients: joiner #30,560,386 is entered in
    error and has an accepted death candidate before its deletion (found by search, about 1 in
    10**5 joiners). The death goes to the person's real record, not to the duplicate: its
    history is its birth, then its deletion, and a batch holds exactly that."""
    plan, count, index = g.make_plan(7, E), 30_000_000, 30_560_386
    versions = g.history(plan, count, index, "2025-03-01T00:00:00Z")
    assert [v.change for v in versions] == ["birth", "delete"]
    zips = {row[0]: row for row in g._load_reference().zips}
    orgs = {"Organization/" + o["id"] for o in plan.organizations}
    check_patient(plan, count, versions, (zips, orgs))
    batch = g.changes(plan, count, E, "2025-03-01T00:00:00Z", lo=index, hi=index + 1)
    assert batch == versions


# --- 7: edge cases -----------------------------------------------------------------------------


def test_the_snapshot_at_the_epoch_is_todays_records():
    plan, count = g.make_plan(33, E), 3_000
    snap = list(g.snapshot(plan, count, E))
    assert [(v.index, v.number, v.change) for v in snap] == [(i, 1, "epoch") for i in range(count)]
    render = g.json_renderer(plan)
    assert lines(plan, snap) == [render(i) for i in range(count)]
    assert g._population_size(plan, count, E) == count
    assert g.changes(plan, count, E, E) == []
    assert list(g.generate_patients(count, 33, 0, E, epoch=E)) == [
        g.build_record(plan, i) for i in range(count)
    ]


def test_windows_outside_the_population_are_refused():
    plan, count = g.make_plan(34, E), 100
    before = "2023-12-31T23:59:59Z"
    with pytest.raises(ValueError, match="since"):
        g.changes(plan, count, before, T)
    with pytest.raises(ValueError, match="since"):
        g.changes(plan, count, T, "2024-06-01T00:00:00Z")  # until < since
    with pytest.raises(ValueError):
        list(g.snapshot(plan, count, before))
    with pytest.raises(ValueError, match="epoch"):
        list(g.generate_patients(count, 34, 0, T, since=E))
    with pytest.raises(ValueError, match="start"):
        list(g.generate_patients(count, 34, 5, T, epoch=E))
    with pytest.raises(ValueError, match="late"):
        g.changes(plan, count, E, T, faults=g.Faults(late=1.5))


@pytest.mark.parametrize("state, county_moves", [("RI", True), ("DC", False)])
def test_a_one_state_run_never_moves_out(state, county_moves):
    plan, count = g.make_plan(35, E, states=state), 15_000
    batch = g.changes(plan, count, E, "2026-01-01T00:00:00Z")
    kinds = Counter(v.change for v in batch)
    assert kinds["move-state"] == 0
    assert kinds["move-zip"] > 0
    assert (kinds["move-county"] > 0) == county_moves  # DC is one county
    assert {plan.zips[v.sample.zip][3] for v in batch} == {state}
