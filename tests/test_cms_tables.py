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
