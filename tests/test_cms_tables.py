"""The CMS tables in reference_data/ (built by tools/extract_cms.py) are internally consistent.

Reads only the committed files: keys are 6-character CCNs with their leading zeros, one row per
key, every CCN is a hospital of hospitals.csv, rates are fractions in [0, 1], suppressed cells
are blank (never zero), and the national figures reference_data/SOURCES.md quotes are the ones
the tables give.
"""

from __future__ import annotations

import csv
import re
from collections import Counter
from pathlib import Path

import pytest

DATA = Path(__file__).resolve().parents[1] / "reference_data"
CCN = re.compile(r"^[0-9]{6}$|^[0-9]{5}F$")


def rows(name: str) -> list[dict[str, str]]:
    with open(DATA / name, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def hospitals() -> dict[str, str]:
    return {r["ccn"]: r["hospital_type"] for r in rows("hospitals.csv")}


def test_hospital_volumes_cover_every_hospital_once(hospitals: dict[str, str]) -> None:
    volumes = rows("hospital_volumes.csv")
    assert list(volumes[0]) == ["ccn", "discharges", "beds", "inpatient_days"]
    assert [r["ccn"] for r in volumes] == list(hospitals)  # same order, no duplicates
    assert all(CCN.match(r["ccn"]) for r in volumes)
    assert sum(r["ccn"].startswith("0") for r in volumes) > 100  # leading zeros kept
    for r in volumes:
        for column in ("discharges", "beds", "inpatient_days"):
            assert r[column] == "" or int(r[column]) > 0, (r, column)
        if r["discharges"] and r["inpatient_days"]:
            assert int(r["inpatient_days"]) >= int(r["discharges"]) / 2, r  # state psych: 470 d


def test_hospital_volumes_match_the_documented_figures(hospitals: dict[str, str]) -> None:
    """SOURCES.md: general hospitals 29.6 M discharges, top tenth 44 %, these blanks by type."""
    volumes = {r["ccn"]: r for r in rows("hospital_volumes.csv")}
    blank = Counter(hospitals[c] for c, r in volumes.items() if not r["discharges"])
    assert blank == {
        "Acute Care Hospitals": 84, "Critical Access Hospitals": 52, "Childrens": 33,
        "Psychiatric": 79, "Acute Care - Veterans Administration": 132,
        "Rural Emergency Hospital": 41, "Acute Care - Department of Defense": 32,
    }  # fmt: skip
    kinds = ("Acute Care Hospitals", "Critical Access Hospitals")
    general = sorted(
        (
            int(r["discharges"])
            for c, r in volumes.items()
            if r["discharges"] and hospitals[c] in kinds
        ),
        reverse=True,
    )
    assert sum(general) == 29_617_130
    assert round(sum(general[: len(general) // 10]) / sum(general), 3) == 0.445


HRRP_COHORTS = ["AMI", "HF", "PN", "COPD", "CABG", "HIP-KNEE"]


def test_hrrp_rows_are_keyed_and_rates_are_fractions(hospitals: dict[str, str]) -> None:
    hrrp = rows("hrrp_fy2025.csv")
    keys = [(r["ccn"], r["cohort"]) for r in hrrp]
    assert len(keys) == len(set(keys))
    assert {c for _, c in keys} == set(HRRP_COHORTS)
    assert {r["ccn"] for r in hrrp} <= set(hospitals)
    assert all(CCN.match(r["ccn"]) for r in hrrp)
    for r in hrrp:
        for column in ("observed_rate", "predicted_rate", "expected_rate"):
            assert r[column] == "" or 0.0 <= float(r[column]) <= 1.0, (r, column)
        assert r["err"] == "" or 0.2 < float(r["err"]) < 3.0, r
        if r["readmissions"]:
            n, k = int(r["discharges"]), int(r["readmissions"])
            assert k >= 11 and n >= k  # CMS suppresses counts below 11
            assert r["observed_rate"] == f"{k / n:.6f}"
        else:
            assert r["observed_rate"] == ""
        assert r["discharges"] or r["readmissions"] or r["err"] or r["predicted_rate"]


def test_hrrp_pooled_observed_rates_are_the_documented_ones() -> None:
    """Issue 19's targets: AMI 13.6, HF 19.7 (19.75), PN 16.6, COPD 19.5 %."""
    num: Counter[str] = Counter()
    den: Counter[str] = Counter()
    for r in rows("hrrp_fy2025.csv"):
        if r["readmissions"]:
            num[r["cohort"]] += int(r["readmissions"])
            den[r["cohort"]] += int(r["discharges"])
    pooled = {c: round(100 * num[c] / den[c], 2) for c in HRRP_COHORTS}
    assert pooled == {
        "AMI": 13.56, "HF": 19.75, "PN": 16.57, "COPD": 19.51, "CABG": 11.11, "HIP-KNEE": 4.34,
    }  # fmt: skip


def test_hac_sirs_are_keyed_and_published_only(hospitals: dict[str, str]) -> None:
    """One row per hospital with at least one SIR; counts as SOURCES.md §C3 gives them."""
    hac = rows("hac_sir_fy2024.csv")
    columns = ["sir_clabsi", "sir_cauti", "sir_ssi", "sir_ssi_colon", "sir_ssi_hyst", "sir_cdi"]
    assert list(hac[0]) == ["ccn", *columns, "sir_mrsa"]
    ccns = [r["ccn"] for r in hac]
    assert ccns == sorted(set(ccns)) and set(ccns) <= set(hospitals)
    assert all(CCN.match(c) for c in ccns)
    published = Counter()
    for r in hac:
        values = [v for k, v in r.items() if k != "ccn" and v]
        assert values, r
        assert all(0.0 <= float(v) < 10.0 for v in values), r
        published.update(k for k, v in r.items() if k != "ccn" and v)
    assert published == {
        "sir_clabsi": 1962, "sir_cauti": 2123, "sir_ssi": 1946, "sir_ssi_colon": 1704,
        "sir_ssi_hyst": 606, "sir_cdi": 2629, "sir_mrsa": 1732,
    }  # fmt: skip


def population() -> dict[tuple[int, str], int]:
    out = {}
    for r in rows("age_sex.csv"):
        age = 100 if r["age"] == "100+" else int(r["age"])
        out[age, "M"], out[age, "F"] = int(r["male"]), int(r["female"])
    return out


def national() -> dict[str, str]:
    table = rows("cms_national.csv")
    assert len({r["name"] for r in table}) == len(table)
    return {r["name"]: r["value"] for r in table}


def test_inpatient_rates_cover_every_age_and_give_the_hcris_total() -> None:
    """Bands tile ages 0-120 for each sex; the age_sex.csv population x rates = HCRIS 2021's
    discharges at the generator's hospitals; 65+ are admitted ~3x as often (issue 18)."""
    rates = rows("inpatient_rates.csv")
    pop = population()
    stays = {True: 0.0, False: 0.0}
    people = {True: 0, False: 0}
    for sex in "MF":
        bands = sorted((int(r["age_lo"]), int(r["age_hi"])) for r in rates if r["sex"] == sex)
        assert bands[0][0] == 0 and bands[-1][1] == 120
        assert all(b[0] == a[1] + 1 for a, b in zip(bands, bands[1:], strict=False))
    for r in rates:
        assert float(r["admissions_per_1000"]) > 0 and r["source"] in ("medicare", "hcris-hcup")
        n = sum(pop.get((a, r["sex"]), 0) for a in range(int(r["age_lo"]), int(r["age_hi"]) + 1))
        stays[int(r["age_lo"]) >= 65] += n * float(r["admissions_per_1000"]) / 1000
        people[int(r["age_lo"]) >= 65] += n
    total = stays[True] + stays[False]
    assert total == pytest.approx(int(national()["hcris_discharges_generator_hospitals"]), rel=1e-5)
    ratio = (stays[True] / people[True]) / (stays[False] / people[False])
    assert 2.5 < ratio < 3.5


DX_GROUPS = ("0", "1_17", "18_44", "45_64", "65_74", "75_plus")
WEIGHT_OF = {"0_17": ("0", "1_17"), "18_64": ("18_44", "45_64"), "65": ("65_74", "75_plus")}


def test_inpatient_dx_rows_are_codes_with_their_drg_los() -> None:
    dx = rows("inpatient_dx.csv")
    assert sorted(r["cohort"] for r in dx if r["cohort"]) == sorted(HRRP_COHORTS)
    assert len({(r["icd10"], r["drg"]) for r in dx}) == len(dx)
    for r in dx:
        assert re.fullmatch(r"[A-Z][0-9][0-9A-Z](\.[0-9A-Z]{1,4})?", r["icd10"]), r
        assert re.fullmatch(r"[0-9]{3}", r["drg"]) and r["drg_title"] and r["display"]
        assert 0 < float(r["gmlos"]) <= float(r["amlos"]) < 15
        assert r["sex"] in ("", "F")
        assert r["cohort"] and r["source"] == "hrrp" or any(r[f"rate_{g}"] for g in DX_GROUPS)
    for g in DX_GROUPS:
        assert any(r[f"rate_{g}"] for r in dx if not r["sex"]), g  # every age group, both sexes
    for g in ("0_17", "18_64", "65"):  # the broad groups' shares of the listed rows' stays
        assert sum(float(r[f"weight_{g}"]) for r in dx) == pytest.approx(1, abs=1e-5)
        assert all(
            (float(r[f"weight_{g}"]) > 0) == any(r[f"rate_{a}"] for a in WEIGHT_OF[g]) for r in dx
        )


def test_national_constants_are_the_published_ones() -> None:
    """Issue 18/19's targets, as fractions: MORT-30 12.6 / 11.9 / 17.9 %, hospital-wide 14.6 %."""
    values = national()
    assert [values[f"mort30_{c}"] for c in ("ami", "hf", "pn")] == ["0.126", "0.119", "0.179"]
    assert values["readm30_hosp_wide"] == "0.146"
    assert 0.25 <= float(values["inhospital_death_share"]) <= 0.35
    assert values["hrrp_pooled_observed_hf"] == "0.1975"


def test_hai_baselines_are_consistent_with_their_counts() -> None:
    """rate = infections / exposure as published; SIR-1 incidence = incidence / pooled SIR (both
    columns rounded to 4 decimals);
    device-utilisation ratios 0.115 and 0.110 (issue 19's per-1,000-patient-day baseline)."""
    hai = {r["hai"]: r for r in rows("hai_baselines.csv")}
    assert set(hai) == {"CLABSI", "CAUTI", "SSI_COLON", "SSI_HYST", "CDI", "MRSA"}
    columns = set(list(rows("hac_sir_fy2024.csv")[0])[1:])
    patient_days = float(hai["MRSA"]["exposure"])
    for r in hai.values():
        scale = 100 if r["rate_per"] == "100 procedures" else 1000
        k, n = int(r["infections"]), float(r["exposure"])
        assert scale * k / n == pytest.approx(float(r["rate"]), abs=0.006), r
        assert r["sir_column"] in columns
        per_days = float(r["per_1000_patient_days"])
        assert per_days == pytest.approx(
            1000 * k / (n if "patient" in r["exposure_unit"] else patient_days), abs=5.1e-5
        )
        assert float(r["per_1000_patient_days_sir1"]) == pytest.approx(
            per_days / float(r["national_sir"]), abs=1.2e-4
        )
    for kind, ratio in (("CLABSI", 0.115), ("CAUTI", 0.110)):
        assert float(hai[kind]["exposure"]) / patient_days == pytest.approx(ratio, abs=0.0015)


# -- tools/extract_cms.py on tiny raw files (the real ones stay outside the repository)


def _extract_cms():
    import importlib.util
    import sys

    spec = importlib.util.spec_from_file_location(
        "extract_cms", DATA.parent / "tools" / "extract_cms.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules["extract_cms"] = module
    spec.loader.exec_module(module)
    return module


def _write(path: Path, header: list[str], body: list[list[str]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows([header, *body])


def test_extract_annualises_hcris_and_keeps_leading_zeros(tmp_path: Path) -> None:
    """Two reports of one CCN (a fiscal-year change) are summed and scaled to 365 days; a CCN
    written as a number gets its leading zero back; no report -> blanks."""
    x = _extract_cms()
    header = ["rpt_rec_num", "Provider CCN", "Fiscal Year Begin Date", "Fiscal Year End Date",
              x.HCRIS_DISCHARGES, x.HCRIS_DAYS, x.HCRIS_BEDS]  # fmt: skip
    _write(tmp_path / "cms" / "hcris_cost_report_2021.csv", header, [
        ["1", "30147", "11/17/2020", "12/31/2020", "345", "1000", "90"],
        ["2", "30147", "1/1/2021", "12/31/2021", "3510", "20000", "94"],
        ["3", "450001", "1/1/2021", "6/30/2021", "181", "", ""],
    ])  # fmt: skip
    ccns = {"030147": "Acute Care Hospitals", "450001": "Acute Care Hospitals", "010001": "x"}
    rows = x.hospital_volumes(tmp_path, ccns)
    days = 45 + 365  # 11/17-12/31 is 45 days
    assert rows[0] == ("030147", round(3855 * 365 / days), 94, round(21000 * 365 / days))
    assert rows[1] == ("450001", round(181 * 365 / 181), None, None)
    assert rows[2] == ("010001", None, None, None)


def test_extract_hrrp_blanks_suppressed_cells_and_converts_percents(tmp_path: Path) -> None:
    x = _extract_cms()
    header = ["Facility ID", "Measure Name", "Number of Discharges", "Footnote",
              "Excess Readmission Ratio", "Predicted Readmission Rate",
              "Expected Readmission Rate", "Number of Readmissions"]  # fmt: skip
    _write(tmp_path / "cms" / "hrrp_fy2025.csv", header, [
        ["010001", "READM-30-HF-HRRP", "681", "", "1.0597", "21.5645", "20.3495", "151"],
        ["010001", "READM-30-AMI-HRRP", "N/A", "", "0.9654", "4.268", "4.4211",
         "Too Few to Report"],
        ["010001", "READM-30-CABG-HRRP", "N/A", "5", "N/A", "N/A", "N/A", "N/A"],
        ["999999", "READM-30-HF-HRRP", "100", "", "1.0", "20", "20", "20"],
    ])  # fmt: skip
    rows = x.hrrp(tmp_path, {"010001": "Acute Care Hospitals"})
    assert rows == [
        ("010001", "AMI", None, None, None, "0.04268", "0.044211", "0.9654", None),
        ("010001", "HF", 681, 151, "0.221733", "0.215645", "0.203495", "1.0597", None),
    ]
