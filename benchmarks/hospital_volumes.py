"""Patients per hospital for N patients of the default run (the README's volume figures), and
against HCRIS 2021 total discharges (reference_data/hospital_volumes.csv; issue 17's targets).

python benchmarks/hospital_volumes.py [N]      # default 1,000,000 (~15 s)
"""

from __future__ import annotations

import csv
import statistics
import sys
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import fhir_patient_generator as g  # noqa: E402


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000
    plan = g.make_plan(2025, "2025-10-13T02:22:22Z")
    counts: Counter = Counter()
    crossed = 0
    for i in range(n):
        s = g._sample(plan, i)
        counts[s.organization] += 1
        crossed += plan.hospitals[s.organization]["state"] != plan.zips[s.zip][3]
    hospitals = plan.organization_index
    volumes = sorted(counts.get(h, 0) for h in hospitals)
    mean = statistics.fmean(volumes)

    def q(p: float) -> int:
        return volumes[min(len(volumes) - 1, int(p * len(volumes)))]

    cv = statistics.pstdev(volumes) / mean
    print(f"{n:,} patients, {len(hospitals):,} hospitals ({sum(1 for v in volumes if v):,} used)")
    print(f"min {volumes[0]}  p10 {q(0.1)}  median {q(0.5)}  p90 {q(0.9)}  p99 {q(0.99)}  ", end="")
    print(f"max {volumes[-1]}  mean {mean:.1f}  CV {cv:.2f} (equal volumes: {mean**-0.5:.2f})")
    by_type: dict[str, list[int]] = {}
    for h in hospitals:
        by_type.setdefault(plan.hospitals[h]["hospital_type"], []).append(counts.get(h, 0))
    for kind, v in sorted(by_type.items()):
        v.sort()
        share = 100 * sum(v) / n
        print(f"  {kind:28} n={len(v):5,}  {share:4.1f}% of patients  median {v[len(v) // 2]}")
    for h, c in counts.most_common(3):
        print(f"  top: {plan.hospitals[h]['name']} ({plan.hospitals[h]['state']}) {c:,}")
    hcris(plan, counts, crossed / n)


def hcris(plan: g.Plan, counts: Counter, crossed: float) -> None:
    """Our patients per general hospital against its HCRIS 2021 total discharges."""
    path = Path(g._DATA_DIR) / "hospital_volumes.csv"
    with open(path, newline="", encoding="utf-8") as f:
        volume = {r["ccn"]: r["discharges"] for r in csv.DictReader(f)}
    real = {
        h: int(volume[plan.hospitals[h]["ccn"]])
        for h in plan.organization_index
        if plan.hospitals[h]["hospital_type"] in g._GENERAL_HOSPITAL_TYPES
        and volume[plan.hospitals[h]["ccn"]]
    }
    r = statistics.correlation([real[h] for h in real], [counts.get(h, 0) for h in real])
    top = sorted(real, key=lambda h: -real[h])[: len(real) // 10]
    ours = sum(counts.get(h, 0) for h in top) / sum(counts.get(h, 0) for h in real)
    theirs = sum(real[h] for h in top) / sum(real.values())
    print(f"HCRIS 2021, {len(real):,} general hospitals with discharges:")
    print(f"  Pearson(patients, discharges) {r:.3f}   (target >= 0.85)")
    print(f"  top tenth by discharges: {100 * ours:.1f} % of patients, {100 * theirs:.1f} % of "
          "discharges (target: within 5 points)")  # fmt: skip
    print(f"  patients whose hospital is in another state: {100 * crossed:.2f} %")


if __name__ == "__main__":
    main()
