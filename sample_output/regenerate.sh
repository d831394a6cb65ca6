#!/usr/bin/env bash
# Regenerates every file in sample_output/ (or in the folder given as $1) from fixed inputs.
# tests/test_samples.py runs this into a temporary folder and compares the bytes.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
out="${1:-$here}"
gen=("${PYTHON:-python}" "$here/../fhir_patient_generator.py" --seed 42 --as-of 2025-10-13T02:22:22Z)
mkdir -p "$out"
"${gen[@]}" > "$out/patient.txt"
"${gen[@]}" --count 20 > "$out/patients.ndjson"
"${gen[@]}" --count 5 --min-age 65 --mortality-rate 0.5 --states CA,NY > "$out/medicare_cohort.ndjson"
# A tiny bronze layer (Vermont: 3 patients, the 48 hospitals its ZIPs may use, 34 of them across
# the state line): per-file JSON, organizations, manifest.
"${gen[@]}" --count 3 --states VT --output "$out/bronze" --quiet --overwrite
# A living population (docs/living-population.md): the 2,000 patients of that as-of live on for
# a year; the change batch of the year, every version (deaths, moves, joiners, one deletion).
"${gen[@]}" --count 2000 --epoch 2025-10-13T02:22:22Z --since 2025-10-13T02:22:22Z \
    --as-of 2026-10-13T02:22:22Z > "$out/changes.ndjson"
