"""CMS metrics of the inpatient stays, beside CMS's own figures (issues 18 and 19).

python benchmarks/cms_metrics.py [--count N] [--seed S] [--workers W] [--layer DIR]

Writes an NDJSON layer with --encounters for N patients (default 1,000,000) into a temporary
folder (or reads the bronze layer DIR as it is), runs docs/analytics.sql's stay sections with
DuckDB, and prints each metric beside its real value and source (reference_data/SOURCES.md §C),
then the per-hospital comparisons: stays vs HCRIS discharges, readmission rates vs HRRP FY2025
(Pearson over hospitals with at least --min-index index stays; HRRP's top vs bottom third) and
C. difficile incidence vs the hospitals' CDI SIRs.
"""

from __future__ import annotations

import argparse
import csv
import math
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path

import duckdb

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import fhir_patient_generator as g  # noqa: E402 (the attributable days and odds ratios)

DATA = ROOT / "reference_data"
AS_OF = "2025-10-13T02:22:22Z"
COHORTS = ("AMI", "HF", "PN", "COPD", "CABG", "HIP-KNEE")
# hai_baselines.csv's rows (the generator's HAI kinds) -> the SQL's kinds (SSI: both rows)
HAI_SQL_KINDS = ("CLABSI", "CAUTI", "SSI", "SSI", "CDI", "MRSA")


def table(name: str) -> list[dict[str, str]]:
    with open(DATA / name, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


NATIONAL = {r["name"]: float(r["value"]) for r in table("cms_national.csv")}


def line(metric: str, ours: object, real: object, source: str) -> None:
    print(f"  {metric:44} {ours!s:>12}  {real!s:>12}  {source}")


def pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.2f} %"


def generate(count: int, seed: int, workers: int, out: Path) -> None:
    """The CLI, as a user runs it: an NDJSON bronze layer with stays."""
    cmd = [
        sys.executable, str(ROOT / "fhir_patient_generator.py"), "--count", str(count),
        "--seed", str(seed), "--as-of", AS_OF, "--format", "ndjson", "--encounters",
        "--output", str(out), *(["--workers", str(workers)] if workers > 1 else []),
    ]  # fmt: skip
    start = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    print(f"generated {count:,} patients with stays in {time.perf_counter() - start:.1f} s")


def connect(layer: Path) -> tuple[duckdb.DuckDBPyConnection, dict[str, str]]:
    """DuckDB with docs/analytics.sql's views and stay table over the layer; its named queries."""
    sql = (ROOT / "docs" / "analytics.sql").read_text(encoding="utf-8")
    sql = sql.replace("./lake/bronze/", layer.as_posix().rstrip("/") + "/")
    con = duckdb.connect()
    named = {}
    for part in sql.split("-- name: ")[1:]:
        name, _, body = part.partition("\n")
        named[name.strip()] = body
    start = time.perf_counter()
    for name in ("views", "stay_views"):
        for statement in named[name].split(";"):
            if statement.strip():
                con.execute(statement).fetchall()
    print(f"DuckDB: stay table in {time.perf_counter() - start:.1f} s")
    return con, named


def rows(con: duckdb.DuckDBPyConnection, query: str) -> list[tuple]:
    return con.execute(query).fetchall()


def population_total() -> int:
    return sum(int(r["total"]) for r in table("age_sex.csv"))


def national_rates(con: duckdb.DuckDBPyConnection, named: dict[str, str]) -> None:
    """Stays, ALOS, admissions by age, mortality, readmission: ours, real, source."""
    (n, days, years, old, expired, old_expired) = rows(
        con,
        "SELECT count(*), sum(days), date_diff('day', min(admitted), max(discharged)) / 365.25,"
        " count(*) FILTER (age >= 65), count(*) FILTER (died_in_hospital),"
        " count(*) FILTER (died_in_hospital AND age >= 65) FROM stay",
    )[0]
    (patients,) = rows(con, "SELECT count(*) FROM patient")[0]
    print(f"\n{n:,} stays over {years:.2f} years, {patients:,} patients")
    line("metric", "ours", "real", "source")
    by_band = rows(con, named["admissions_per_1000"])
    person_years = sum(r[3] for r in by_band)
    real = NATIONAL["hcris_discharges_generator_hospitals"] / population_total() * 1000
    line("stays per 1,000 person-years", f"{1000 * n / person_years:.1f}", f"{real:.1f}",
         "HCRIS 2021 discharges / age_sex.csv (SOURCES §C4)")  # fmt: skip
    line("ALOS, days", f"{days / n:.2f}", "4.6 / 5.26",
         "HCUP 2009 / HCRIS 2021 short-term hospitals")  # fmt: skip
    line(
        "share of stays 65+", pct(old / n), pct(NATIONAL_65_SHARE), "inpatient_rates.csv x age_sex"
    )
    line("65+ stays ending in death", pct(old_expired / old),
         pct(NATIONAL["medicare_65_ipps_died_in_hospital"]), "Medicare 2021 table 6")  # fmt: skip
    (deaths,) = rows(
        con,
        "SELECT count(*) FROM patient WHERE deceasedDateTime >= (SELECT min(admitted) FROM stay)",
    )[0]
    line("deaths in hospital / deaths in window", pct(expired / deaths if deaths else None),
         pct(NATIONAL["inhospital_death_share"]), "NCHS Data Brief 118 (2010)")  # fmt: skip
    for band in ("0-17", "18-44", "45-64", "65-74", "75-84", "85+"):
        for gender, sex in (("female", "F"), ("male", "M")):
            got = [r[4] for r in by_band if r[0] == band and r[1] == gender]
            line(f"admissions per 1,000, {band} {gender}", got[0] if got else "-",
                 f"{band_rate(band, sex):.1f}", "inpatient_rates.csv (SOURCES §C4)")  # fmt: skip


def band_rate(band: str, sex: str) -> float:
    """inpatient_rates.csv's person-weighted rate over an age band of the SQL."""
    lo, hi = (int(x) for x in band.replace("+", "-120").split("-"))
    pop = {}
    for r in table("age_sex.csv"):
        age = 100 if r["age"] == "100+" else int(r["age"])
        pop[age] = int(r["male" if sex == "M" else "female"])
    stays = persons = 0.0
    for r in table("inpatient_rates.csv"):
        if r["sex"] != sex:
            continue
        for age in range(max(lo, int(r["age_lo"])), min(hi, int(r["age_hi"])) + 1):
            stays += pop.get(age, 0) * float(r["admissions_per_1000"])
            persons += pop.get(age, 0)
    return stays / persons


def _share_65() -> float:
    pop = {}
    for r in table("age_sex.csv"):
        age = 100 if r["age"] == "100+" else int(r["age"])
        pop[age, "M"], pop[age, "F"] = int(r["male"]), int(r["female"])
    old = total = 0.0
    for r in table("inpatient_rates.csv"):
        for age in range(int(r["age_lo"]), min(100, int(r["age_hi"])) + 1):
            n = pop.get((age, r["sex"]), 0) * float(r["admissions_per_1000"])
            total += n
            old += n * (age >= 65)
    return old / total


NATIONAL_65_SHARE = _share_65()


def cohort_rates(con: duckdb.DuckDBPyConnection, named: dict[str, str]) -> None:
    """MORT-30 and 30-day readmission per HRRP cohort, hospital-wide readmission."""
    print("\nper HRRP cohort (65+)")
    line("metric", "ours", "real", "source")
    for cohort, n, in_hospital, mort30 in rows(con, named["mortality_per_cohort"]):
        key = f"mort30_{cohort.lower().replace('-', '_')}"
        real = pct(NATIONAL[key]) if key in NATIONAL else "-"
        line(f"{cohort} 30-day mortality ({n:,} stays)", f"{mort30:.2f} %", real,
             "Care Compare MORT-30, 07/2020-06/2023")  # fmt: skip
        line(f"{cohort} in-hospital mortality", f"{in_hospital:.2f} %", "-", "")
    for cohort, n, _k, rate in rows(con, named["readmission_per_cohort"]):
        key = f"hrrp_pooled_observed_{cohort.lower().replace('-', '_')}"
        line(f"{cohort} 30-day readmission ({n:,} index)", f"{rate:.2f} %", pct(NATIONAL[key]),
             "HRRP FY2025 pooled observed")  # fmt: skip
    for old, n, _k, rate in rows(con, named["readmission_hospital_wide"]):
        line(f"hospital-wide readmission, {'65+' if old else 'under 65'} ({n:,})",
             f"{rate:.2f} %", pct(NATIONAL["readm30_hosp_wide"]) if old else "-",
             "Care Compare HWR 07/2022-06/2023" if old else "")  # fmt: skip


def diagnosis_los(con: duckdb.DuckDBPyConnection, named: dict[str, str]) -> None:
    """ALOS of the ten most frequent principal diagnoses vs the MS-DRG's Table 5 means."""
    dx: dict[tuple[str, bool], dict[str, str]] = {}
    for r in table("inpatient_dx.csv"):
        old = bool(r["weight_65"] and float(r["weight_65"]) > 0) or bool(r["cohort"])
        young = any(float(r[f"weight_{g}"] or 0) > 0 for g in ("0_17", "18_64"))
        for flag in (
            {True} if old and not young else {False} if young and not old else {True, False}
        ):
            dx.setdefault((r["icd10"], flag), r)
    print("\nALOS per principal diagnosis (ten most frequent) vs its MS-DRG, Table 5 FY2026")
    line("diagnosis (stays)", "ours ALOS/GM", "AMLOS/GMLOS", "MS-DRG")
    for icd, old, n, alos, glos in rows(con, named["alos_per_diagnosis"])[:10]:
        r = dx.get((icd, old), {})
        line(f"{icd} {'65+' if old else '<65'} ({n:,})", f"{alos:.2f}/{glos:.2f}",
             f"{r.get('amlos', '-')}/{r.get('gmlos', '-')}", r.get("drg", "-"))  # fmt: skip


def hai_rates(con: duckdb.DuckDBPyConnection, named: dict[str, str]) -> list[tuple]:
    """National HAI incidence per 1,000 patient days vs the 2019 baseline; the per-hospital rows."""
    per_hospital = rows(con, named["hai_per_hospital"])
    baseline = {r["hai"]: r for r in table("hai_baselines.csv")}
    print("\nhospital-acquired infections per 1,000 patient days")
    line("metric", "ours", "real", "source")
    totals: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])
    for _ccn, hai, days, infections, *_ in per_hospital:
        totals[hai][0] += infections
        totals[hai][1] += days
    for hai, (k, days) in sorted(totals.items()):
        real = (
            sum(float(baseline[h]["per_1000_patient_days"]) for h in ("SSI_COLON", "SSI_HYST"))
            if hai == "SSI"
            else float(baseline[hai]["per_1000_patient_days"])
        )
        line(f"{hai} ({k:,.0f} infections)", f"{1000 * k / days:.4f}" if days else "-",
             f"{real:.4f}", "CMS HAI-Hospital 2019 (SOURCES §C7)")  # fmt: skip
    early = rows(con, named["hai_onset_check"])[0][0]
    line("HAIs with onset before day 3", early, 0, "NHSN hospital-onset rule")
    return per_hospital


def hai_outcomes(con: duckdb.DuckDBPyConnection, named: dict[str, str]) -> None:
    """In-hospital mortality and ALOS of stays with each kind of HAI against stays with none:
    the odds ratio and the mortality ratio beside the generator's death odds ratio, the ALOS
    difference beside its attributable days (docs/encounters.md; the infected stays are longer
    before their extra days too: the chance of an infection grows with the days at risk)."""
    got = {hai: (n, died, alos) for hai, n, died, _pct, alos in rows(con, named["hai_outcomes"])}
    if "none" not in got:
        return
    documented = dict(zip(HAI_SQL_KINDS, zip(g._HAI_DEATH_ODDS, g._HAI_EXTRA_DAYS, strict=True),
                          strict=True))  # fmt: skip
    n0, d0, alos0 = got["none"]
    print("\nstays with a hospital-acquired infection vs without (in-hospital death, ALOS)")
    line("kind (stays)", "ours", "model", "what")
    line(f"none ({n0:,} stays)", f"{pct(d0 / n0)} / {alos0:.2f} d", "-",
         "in-hospital mortality / ALOS")  # fmt: skip
    for hai in ("CLABSI", "CAUTI", "SSI", "CDI", "MRSA", "any"):
        if hai not in got:
            continue
        n, died, alos = got[hai]
        odds = (died / (n - died)) / (d0 / (n0 - d0)) if 0 < died < n and d0 else None
        se = (1 / died + 1 / (n - died) + 1 / d0 + 1 / (n0 - d0)) ** 0.5 if odds else None
        model = documented.get(hai, ("-", "-"))
        line(f"{hai} ({n:,} stays, {died:,} died)", f"{pct(died / n)} / {alos:.2f} d", "-",
             "in-hospital mortality / ALOS")  # fmt: skip
        line(f"  {hai} odds ratio of death (+-1 SE, log)",
             f"{odds:.2f} x/ {math.exp(se):.2f}" if odds and se else "-", model[0],
             f"mortality ratio {died / n / (d0 / n0):.2f}")  # fmt: skip
        added = f"+{model[1]} d" if model[1] != "-" else "-"
        line(f"  {hai} ALOS minus ALOS without", f"{alos - alos0:+.2f} d", added,
             "model: attributable days added")  # fmt: skip


def pearson(xs: Sequence[float], ys: Sequence[float]) -> str:
    if len(xs) < 3 or len(set(xs)) < 2 or len(set(ys)) < 2:
        return "-"
    return f"{statistics.correlation(xs, ys):.3f}"


def hospital_volumes(con: duckdb.DuckDBPyConnection, named: dict[str, str]) -> None:
    """Stays per hospital vs HCRIS 2021 discharges; ALOS per hospital vs HCRIS days/discharges."""
    hcris = {r["ccn"]: r for r in table("hospital_volumes.csv") if r["discharges"]}
    ours = {ccn: (n, alos) for ccn, n, _days, alos in rows(con, named["alos_per_hospital"])}
    both = [c for c in hcris if c in ours]
    print("\nper hospital")
    x = [float(hcris[c]["discharges"]) for c in both]
    y = [float(ours[c][0]) for c in both]
    line(f"Pearson stays vs HCRIS discharges ({len(both):,})", pearson(y, x), "-",
         "hospital_volumes.csv (SOURCES §C1)")  # fmt: skip
    counts = sorted((n for n, _ in ours.values()), reverse=True)
    real = sorted(
        (float(r["discharges"]) for r in hcris.values() if r["ccn"] in ours), reverse=True
    )
    line("top tenth of hospitals' share of stays", pct(top_share(counts)), pct(top_share(real)),
         "HCRIS 2021, same hospitals")  # fmt: skip
    los = [c for c in both if ours[c][0] >= 100 and hcris[c]["inpatient_days"]]
    line(f"Pearson ALOS vs HCRIS days/discharges ({len(los):,})",
         pearson([ours[c][1] for c in los],
                 [float(hcris[c]["inpatient_days"]) / float(hcris[c]["discharges"]) for c in los]),
         "-", "hospitals with >= 100 stays")  # fmt: skip


def top_share(values: Sequence[float]) -> float | None:
    return sum(values[: len(values) // 10]) / sum(values) if values and sum(values) else None


def hrrp_cohorts() -> dict[str, dict[str, tuple[int, int]]]:
    """CCN -> cohort -> (readmissions, discharges) of HRRP FY2025 where not suppressed."""
    out: dict[str, dict[str, tuple[int, int]]] = defaultdict(dict)
    for r in table("hrrp_fy2025.csv"):
        if r["readmissions"] and r["discharges"]:
            out[r["ccn"]][r["cohort"]] = (int(r["readmissions"]), int(r["discharges"]))
    return out


def hrrp_rates() -> dict[str, float]:
    """Each hospital's HRRP observed rate pooled over its published cohorts (readm / disch)."""
    return {
        ccn: sum(k for k, _ in own.values()) / sum(n for _, n in own.values())
        for ccn, own in hrrp_cohorts().items()
    }


def readmission_by_hospital(
    con: duckdb.DuckDBPyConnection, named: dict[str, str], least: int
) -> None:
    """Synthetic vs HRRP readmission per hospital: Pearson (>= least, 100, 25 index stays) of
    (a) the readmission rate of its 65+ index stays of the HRRP cohorts HRRP publishes for it
    (not suppressed) against HRRP's observed rate pooled over the same cohorts (sum of
    readmissions / sum of discharges); (b) its hospital-wide rate (every index stay, any age
    and diagnosis) against HRRP's observed rate pooled over all its published cohorts. Then
    readmission of the cohort index stays in HRRP's bottom and top thirds."""
    published = hrrp_cohorts()
    ours: dict[str, list[int]] = defaultdict(lambda: [0, 0])  # cohorts HRRP publishes there
    pooled_same: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for ccn, cohort, n, k in rows(con, named["readmission_per_hospital"]):
        if cohort in published.get(ccn, {}):
            ours[ccn][0] += n
            ours[ccn][1] += k
            pooled_same[ccn][0] += published[ccn][cohort][1]
            pooled_same[ccn][1] += published[ccn][cohort][0]
    wide = {ccn: (n, k) for ccn, n, k in rows(con, named["readmission_per_hospital_wide"])}
    hrrp = hrrp_rates()
    for at_least in sorted({least, 100, 25}, reverse=True):  # 250: issue 19, at 3 M patients
        big = [c for c in ours if ours[c][0] >= at_least]
        line(f"Pearson cohort readmission vs HRRP ({len(big):,} >= {at_least})",
             pearson([ours[c][1] / ours[c][0] for c in big],
                     [pooled_same[c][1] / pooled_same[c][0] for c in big]), "-",
             "65+ cohort index stays; HRRP observed, same cohorts")  # fmt: skip
    for at_least in sorted({least, 100, 25}, reverse=True):
        big = [c for c in wide if c in hrrp and wide[c][0] >= at_least]
        line(f"Pearson hospital-wide readm. vs HRRP ({len(big):,} >= {at_least})",
             pearson([wide[c][1] / wide[c][0] for c in big], [hrrp[c] for c in big]), "-",
             "all index stays; HRRP observed, all cohorts")  # fmt: skip
    # What bounds it: the model's rate for the non-cohort stays (CMS's 14.6 % x the hospital's
    # mean excess readmission ratio) against HRRP's observed rates, and the synthetic rates
    # against that model rate (the sampling noise of a few hundred index stays)
    plan = g.make_plan(7, AS_OF, encounters=True)
    model = {plan.hospitals[k]["ccn"]: r[-1] for k, r in g._stay_tables(plan).readmit.items()}
    big = [c for c in wide if c in hrrp and c in model and wide[c][0] >= least]
    line(f"  model hospital-wide rate vs HRRP ({len(big):,})",
         pearson([model[c] for c in big], [hrrp[c] for c in big]), "-",
         "14.6 % x mean ERR vs HRRP observed: the ceiling")  # fmt: skip
    line(f"  hospital-wide readm. vs model rate ({len(big):,})",
         pearson([wide[c][1] / wide[c][0] for c in big], [model[c] for c in big]), "-",
         "sampling noise of the index stays")  # fmt: skip
    both = [c for c in ours if c in hrrp]
    ranked = sorted(both, key=lambda c: hrrp[c])
    third = len(ranked) // 3
    if third:
        low, high = (pooled(ours, ranked[:third]), pooled(ours, ranked[-third:]))
        line("readmission, HRRP bottom / top third", f"{pct(low)} / {pct(high)}",
             f"{pct(mean(hrrp, ranked[:third]))} / {pct(mean(hrrp, ranked[-third:]))}",
             f"{third:,} hospitals each")  # fmt: skip


def pooled(ours: dict[str, list[int]], ccns: Iterable[str]) -> float | None:
    n = sum(ours[c][0] for c in ccns)
    return sum(ours[c][1] for c in ccns) / n if n else None


def mean(values: dict[str, float], ccns: Sequence[str]) -> float:
    return statistics.fmean(values[c] for c in ccns)


def cdi_by_sir(per_hospital: Sequence[tuple]) -> None:
    """C. difficile per 1,000 patient days in the top fifth of CDI SIRs vs the rest."""
    sir = {r["ccn"]: float(r["sir_cdi"]) for r in table("hac_sir_fy2024.csv") if r["sir_cdi"]}
    cdi = {ccn: (k, days) for ccn, hai, days, k, *_ in per_hospital if hai == "CDI" and ccn in sir}
    ranked = sorted(cdi, key=lambda c: sir[c])
    cut = len(ranked) * 4 // 5
    for label, group in (("CDI, hospitals in the top fifth of SIR", ranked[cut:]),
                         ("CDI, the other hospitals", ranked[:cut])):  # fmt: skip
        k = sum(cdi[c][0] for c in group)
        days = sum(cdi[c][1] for c in group)
        line(label, f"{1000 * k / days:.4f}" if days else "-",
             f"SIR {statistics.fmean(sir[c] for c in group):.2f}" if group else "-",
             "per 1,000 patient days / mean SIR (hac_sir_fy2024.csv)")  # fmt: skip


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--count", type=int, default=1_000_000)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--min-index", type=int, default=250, help="index stays for the Pearson")
    ap.add_argument("--layer", type=Path, help="an existing bronze layer (no generation)")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="cms_metrics_") as tmp:
        layer = args.layer
        if layer is None:
            layer = Path(tmp) / "bronze"
            generate(args.count, args.seed, args.workers, layer)
        con, named = connect(layer)
        national_rates(con, named)
        cohort_rates(con, named)
        diagnosis_los(con, named)
        per_hospital = hai_rates(con, named)
        hai_outcomes(con, named)
        hospital_volumes(con, named)
        readmission_by_hospital(con, named, args.min_index)
        cdi_by_sir(per_hospital)


if __name__ == "__main__":
    main()
