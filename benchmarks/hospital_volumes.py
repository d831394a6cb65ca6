"""Patients per hospital for N patients of the default run (the README's volume figures).

python benchmarks/hospital_volumes.py [N]      # default 1,000,000 (~10 s)
"""

from __future__ import annotations

import statistics
import sys
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import fhir_patient_generator as g  # noqa: E402


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000
    plan = g.make_plan(2025, "2025-10-13T02:22:22Z")
    counts = Counter(g.sample(plan, i).organization for i in range(n))
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


if __name__ == "__main__":
    main()
