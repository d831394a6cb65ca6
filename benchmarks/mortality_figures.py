"""Measure the registry's mortality outcomes on generated patients, as an auditor would.

    python benchmarks/mortality_figures.py [N] [SEED]        (defaults 1,000,000 and 1)

Default run (as-of 2025-10-13T02:22:22Z, 3-year window): the crude death rate per 100,000
person-years (deaths in the window / window person-years, birth at 00:00 UTC, years of
365.2425 days), the living 65+ share, the deceased share; then the neonatal share (< 28 days) of
infant deaths from a run of 100,000 infant deaths (--mortality-rate 1 --max-age 0).
"""

from __future__ import annotations

import math
import sys
from datetime import date
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import fhir_patient_generator as g  # noqa: E402

AS_OF = "2025-10-13T02:22:22Z"
YEAR = 365.2425 * 86400
EPOCH = date(1970, 1, 1).toordinal()


def registry(n: int, seed: int) -> None:
    """Deaths, person-years and the living 65+ over n patients of the default run."""
    plan = g.make_plan(seed, AS_OF)
    as_of = plan.window_start + plan.window_span - 1
    dead = living = older = 0
    years = 0.0
    for i in range(n):
        s = g._sample(plan, i)
        age, _, is_dead = plan.cells[s.cell]
        birth = (s.birth - EPOCH) * 86400
        years += ((s.died if is_dead else as_of) - max(birth, plan.window_start)) / YEAR
        dead += is_dead
        living += not is_dead
        older += not is_dead and age >= 65
    p = dead / n
    print(f"N = {n:,}, seed {seed}, as-of {AS_OF}, look-back {plan.options['lookback_years']} y")
    print(f"crude death rate       {1e5 * dead / years:8.1f} per 100,000 person-years")
    print(f"deceased share         {p:8.5f}  (sd {math.sqrt(p * (1 - p) / n):.5f})")
    print(f"living 65+ share       {older / living:8.5f}")


def neonatal(n: int, seed: int) -> None:
    """Share of infant deaths before 28 days, from dates on the records."""
    plan = g.make_plan(seed, AS_OF, mortality_rate=1.0, max_age=0)
    early = 0
    for i in range(n):
        s = g._sample(plan, i)
        days = (s.died // 86400 + EPOCH) - s.birth
        early += days < 28
    p = early / n
    print(
        f"neonatal share         {p:8.4f}  (sd {math.sqrt(p * (1 - p) / n):.4f}; "
        f"{n:,} infant deaths, --mortality-rate 1 --max-age 0)"
    )


if __name__ == "__main__":
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000
    seed = int(sys.argv[2]) if len(sys.argv) > 2 else 1
    registry(count, seed)
    neonatal(100_000, seed)
