"""Extract the small CMS tables in reference_data/ from the raw CMS files (a dev tool, run by hand).

    python tools/extract_cms.py --source /path/to/reference            # rewrite the tables
    python tools/extract_cms.py --source /path/to/reference --check    # exit 1 if any differs

`--source` is the folder that holds `hospitals.csv`-era raw files with a `cms/` subfolder
(reference_data/SOURCES.md, "CMS tables", names every file, its origin and vintage). The
generator and the tests never read that folder: they read only the committed outputs, and
tests/test_cms_tables.py checks their internal consistency. Deterministic and stdlib only,
except the Medicare program-statistics workbook (.xlsx), read with openpyxl, a dev-only
dependency (requirements-dev.txt) imported only by that step.

Outputs (all keyed by the CCN, a 6-character string with its leading zeros, restricted to the
CCNs of reference_data/hospitals.csv):
  * hospital_volumes.csv  ccn, discharges, beds, inpatient_days: HCRIS cost reports 2021, every
    hospital of hospitals.csv, blank where no report carries the figure;
  * hrrp_fy2025.csv       ccn, cohort, discharges, readmissions, observed_rate, predicted_rate,
    expected_rate, err, footnote: HRRP FY2025, rates as fractions (the file's percents / 100);
  * hac_sir_fy2024.csv    ccn, sir_clabsi, sir_cauti, sir_ssi, sir_ssi_colon, sir_ssi_hyst,
    sir_cdi, sir_mrsa: HAC Reduction Program FY2024 (+ HVBP FY2024 for the two SSI strata).
"""

from __future__ import annotations

import argparse
import csv
import io
import statistics
import sys
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import date, datetime
from decimal import Decimal
from pathlib import Path

DATA = Path(__file__).resolve().parents[1] / "reference_data"
YEAR_DAYS = 365

Row = dict[str, str]


def read_csv(path: Path) -> list[Row]:
    """All rows of a CSV as dicts (UTF-8, BOM tolerated)."""
    with open(path, newline="", encoding="utf-8-sig") as f:
        return list(csv.DictReader(f))


def render(columns: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    """CSV text with \\n line ends, None as blank: the bytes a --check compares."""
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    w.writerow(columns)
    for r in rows:
        w.writerow(["" if v is None else v for v in r])
    return out.getvalue()


def hospital_ccns(data: Path = DATA) -> dict[str, str]:
    """CCN -> CMS hospital_type for every row of reference_data/hospitals.csv."""
    return {r["ccn"]: r["hospital_type"] for r in read_csv(data / "hospitals.csv")}


def number(text: str) -> float | None:
    """A CMS numeric cell, or None for blank / "N/A" / "Not Available" / "Too Few to Report"."""
    try:
        return float(text)
    except ValueError:
        return None


def percent_to_fraction(text: str) -> str | None:
    """'13.0146' (percent) -> '0.130146', exactly (Decimal, no binary rounding)."""
    if number(text) is None:
        return None
    return format(Decimal(text).scaleb(-2).normalize(), "f")


# ---------------------------------------------------------------- HCRIS 2021: hospital_volumes.csv

HCRIS_DISCHARGES = "Total Discharges (V + XVIII + XIX + Unknown)"
HCRIS_DAYS = "Total Days (V + XVIII + XIX + Unknown)"
HCRIS_BEDS = "Number of Beds"
VOLUME_COLUMNS = ["ccn", "discharges", "beds", "inpatient_days"]


def _day(text: str) -> date:
    return datetime.strptime(text, "%m/%d/%Y").date()


def _annual(reports: Sequence[Row], column: str) -> int | None:
    """The column summed over the reports that have it, scaled to a 365-day year."""
    have = [r for r in reports if number(r[column]) is not None]
    if not have:
        return None
    days = sum(
        (_day(r["Fiscal Year End Date"]) - _day(r["Fiscal Year Begin Date"])).days + 1 for r in have
    )
    total = sum(number(r[column]) or 0.0 for r in have)
    return round(total * YEAR_DAYS / days)


def _beds(reports: Sequence[Row]) -> int | None:
    """Beds of the latest report that states them (the newest bed count)."""
    have = [r for r in reports if number(r[HCRIS_BEDS]) is not None]
    if not have:
        return None
    latest = max(have, key=lambda r: (_day(r["Fiscal Year End Date"]), r["rpt_rec_num"]))
    return round(number(latest[HCRIS_BEDS]) or 0.0)


def hospital_volumes(source: Path, ccns: Mapping[str, str]) -> list[tuple[object, ...]]:
    """One row per CCN of hospitals.csv (file order): annualised HCRIS 2021 volumes or blanks.

    HCRIS writes CCNs as numbers (leading zero lost: '30147' is 030147); a CCN may file
    several reports in the year (a change of fiscal year end), so discharges and days are
    summed over its reports and scaled to 365 days of coverage.
    """
    by_ccn: dict[str, list[Row]] = defaultdict(list)
    for r in read_csv(source / "cms" / "hcris_cost_report_2021.csv"):
        by_ccn[r["Provider CCN"].strip().zfill(6)].append(r)
    out = []
    for ccn in ccns:
        reports = by_ccn.get(ccn, [])
        out.append(
            (ccn, _annual(reports, HCRIS_DISCHARGES), _beds(reports), _annual(reports, HCRIS_DAYS))
        )
    return out


def volume_fallback(rows: Iterable[Sequence[object]], ccns: Mapping[str, str]) -> dict[str, str]:
    """The proposed stand-in for hospitals without HCRIS discharges, per hospital type.

    Median discharges per bed of same-type hospitals with both figures (times the hospital's
    beds where HCRIS has them), else the type's median discharges. Printed, not written: the
    generator owns the choice (reference_data/SOURCES.md documents these numbers).
    """
    per_bed: dict[str, list[float]] = defaultdict(list)
    level: dict[str, list[int]] = defaultdict(list)
    for ccn, discharges, beds, _days in rows:
        if discharges is not None:
            level[ccns[str(ccn)]].append(int(str(discharges)))
            if beds:
                per_bed[ccns[str(ccn)]].append(int(str(discharges)) / int(str(beds)))
    return {
        k: f"median {statistics.median(v):g} discharges, "
        f"{statistics.median(per_bed[k]):.1f} per bed ({len(v):,} hospitals)"
        for k, v in sorted(level.items())
    }


# ---------------------------------------------------------------- HRRP FY2025: hrrp_fy2025.csv

HRRP_COHORTS = ("AMI", "HF", "PN", "COPD", "CABG", "HIP-KNEE")
HRRP_COLUMNS = [
    "ccn", "cohort", "discharges", "readmissions", "observed_rate", "predicted_rate",
    "expected_rate", "err", "footnote",
]  # fmt: skip


HRRP_NUMBERS = (
    "Number of Discharges", "Number of Readmissions", "Excess Readmission Ratio",
    "Predicted Readmission Rate", "Expected Readmission Rate",
)  # fmt: skip


def _count(text: str) -> int | None:
    return int(text) if text.strip().isdigit() else None


def hrrp(source: Path, ccns: Mapping[str, str]) -> list[tuple[object, ...]]:
    """HRRP FY2025 rows of the CCNs in hospitals.csv, sorted by CCN and cohort order.

    Rows with no number at all are left out (a missing (ccn, cohort) = nothing published).
    Suppressed cells ("N/A", "Too Few to Report") are blank, never zero; observed_rate is
    readmissions / discharges where both are published (6 decimals); predicted and expected
    rates are the file's percents as fractions; err is as published.
    """
    out = []
    for r in read_csv(source / "cms" / "hrrp_fy2025.csv"):
        ccn = r["Facility ID"].strip().zfill(6)
        if ccn not in ccns or not any(number(r[c]) is not None for c in HRRP_NUMBERS):
            continue  # not in hospitals.csv, or nothing published (footnote 1, 5 or 7 only)
        cohort = r["Measure Name"].removeprefix("READM-30-").removesuffix("-HRRP")
        n, k = _count(r["Number of Discharges"]), _count(r["Number of Readmissions"])
        observed = f"{k / n:.6f}" if n and k is not None else None
        err = r["Excess Readmission Ratio"] if number(r["Excess Readmission Ratio"]) else None
        out.append(
            (ccn, cohort, n, k, observed, percent_to_fraction(r["Predicted Readmission Rate"]),
             percent_to_fraction(r["Expected Readmission Rate"]), err, r["Footnote"] or None)
        )  # fmt: skip
    out.sort(key=lambda t: (t[0], HRRP_COHORTS.index(str(t[1]))))
    return out


def pooled_rates(rows: Iterable[Sequence[object]]) -> dict[str, float]:
    """Cohort -> sum(readmissions) / sum(discharges) over rows where both are published."""
    num: dict[str, int] = defaultdict(int)
    den: dict[str, int] = defaultdict(int)
    for r in rows:
        if r[2] not in (None, "") and r[3] not in (None, ""):
            num[str(r[1])] += int(str(r[3]))
            den[str(r[1])] += int(str(r[2]))
    return {c: num[c] / den[c] for c in HRRP_COHORTS if den[c]}


# ---------------------------------------------------------------- HAC FY2024: hac_sir_fy2024.csv

HAC_COLUMNS = [
    "ccn", "sir_clabsi", "sir_cauti", "sir_ssi", "sir_ssi_colon", "sir_ssi_hyst", "sir_cdi",
    "sir_mrsa",
]  # fmt: skip
HAC_SIRS = {  # our column -> (file, its column)
    "sir_clabsi": ("hac", "CLABSI SIR"),
    "sir_cauti": ("hac", "CAUTI SIR"),
    "sir_ssi": ("hac", "SSI SIR"),
    "sir_ssi_colon": ("hvbp", "HAI-3 Performance Rate"),
    "sir_ssi_hyst": ("hvbp", "HAI-4 Performance Rate"),
    "sir_cdi": ("hac", "CDI SIR"),
    "sir_mrsa": ("hac", "MRSA SIR"),
}


def hac_sir(source: Path, ccns: Mapping[str, str]) -> list[tuple[object, ...]]:
    """Per-hospital SIRs (NHSN, calendar 2022), one row per CCN with at least one, by CCN.

    CLABSI, CAUTI, SSI (colon and hysterectomy pooled), CDI and MRSA from the HAC Reduction
    Program FY2024; the two SSI strata from the HVBP FY2024 safety domain (HAI-3, HAI-4
    performance rates, the same 2022 SIRs: its HAI-1/2/5/6 equal the HAC file's). Blank =
    not published (too few predicted infections, footnote 13, or no data).
    """
    files = {
        kind: {r["Facility ID"].zfill(6): r for r in read_csv(source / "cms" / name)}
        for kind, name in (("hac", "hac_reduction_fy2024.csv"), ("hvbp", "hvbp_safety_fy2024.csv"))
    }
    out = []
    for ccn in sorted(ccns):
        values = []
        for kind, column in HAC_SIRS.values():
            cell = files[kind].get(ccn, {}).get(column, "")
            values.append(cell if number(cell) is not None else None)
        if any(v is not None for v in values):
            out.append((ccn, *values))
    return out


# ---------------------------------------------------------------- driver

Builder = Callable[[Path, Mapping[str, str]], tuple[Sequence[str], list[tuple[object, ...]]]]
TABLES: dict[str, Builder] = {
    "hospital_volumes.csv": lambda s, c: (VOLUME_COLUMNS, hospital_volumes(s, c)),
    "hrrp_fy2025.csv": lambda s, c: (HRRP_COLUMNS, hrrp(s, c)),
    "hac_sir_fy2024.csv": lambda s, c: (HAC_COLUMNS, hac_sir(s, c)),
}


def summary(name: str, rows: list[tuple[object, ...]], ccns: Mapping[str, str]) -> list[str]:
    """Lines printed after a table is built: what a reader of the table should know."""
    lines = [f"{name}: {len(rows):,} rows"]
    if name == "hospital_volumes.csv":
        missing: dict[str, list[int]] = defaultdict(lambda: [0, 0])
        for r in rows:
            missing[ccns[str(r[0])]][0] += 1
            missing[ccns[str(r[0])]][1] += r[1] is None
        lines += [f"  {k}: {m:,} of {n:,} without discharges" for k, (n, m) in missing.items()]
        lines += [f"  fallback {k}: {v}" for k, v in volume_fallback(rows, ccns).items()]
    if name == "hrrp_fy2025.csv":
        lines += [f"  pooled observed {c}: {100 * v:.2f} %" for c, v in pooled_rates(rows).items()]
    if name == "hac_sir_fy2024.csv":
        for i, column in enumerate(HAC_COLUMNS[1:], 1):
            v = sorted(float(str(r[i])) for r in rows if r[i] is not None)
            lines.append(f"  {column}: {len(v):,} hospitals, median {statistics.median(v):.3f}")
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--source", type=Path, required=True, help="folder holding cms/ (raw files)")
    ap.add_argument("--out", type=Path, default=DATA, help="output folder (reference_data/)")
    ap.add_argument("--check", action="store_true", help="compare with the files, write nothing")
    ap.add_argument("--only", action="append", choices=sorted(TABLES), help="build only these")
    args = ap.parse_args(argv)
    if not (args.source / "cms").is_dir():
        print(f"extract_cms: no cms/ folder in {args.source}", file=sys.stderr)
        return 2
    ccns = hospital_ccns(args.out)
    stale = []
    for name in args.only or TABLES:
        columns, rows = TABLES[name](args.source, ccns)
        text = render(columns, rows)
        path = args.out / name
        if args.check:
            if not path.exists() or path.read_text(encoding="utf-8") != text:
                stale.append(name)
        else:
            path.write_text(text, encoding="utf-8")
        print("\n".join(summary(name, rows, ccns)))
    if stale:
        print(f"extract_cms: differs from a rebuild: {', '.join(stale)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
