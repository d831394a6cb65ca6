"""`pip install .` gives the module, its reference data and the fhir-patient-generator command."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
AS_OF = "2025-10-13T02:22:22Z"


def test_project_dependencies_are_requirements_txt():
    """[project] dependencies carry the same ranges as requirements.txt."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    lines = (ROOT / "requirements.txt").read_text().splitlines()
    required = [re.sub(r"\s+#.*", "", line).strip() for line in lines]
    assert project["dependencies"] == [r for r in required if r and not r.startswith("#")]


def test_a_built_wheel_imports_and_runs_outside_the_repository(tmp_path):
    """Build the wheel from a copy of the sources, install it (no deps: they are in this
    interpreter) into a target folder and use module, data and console script from elsewhere."""
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md", "fhir_patient_generator.py"):
        shutil.copy(ROOT / name, src / name)
    shutil.copytree(ROOT / "reference_data", src / "reference_data")
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    wheels, site, elsewhere = tmp_path / "wheels", tmp_path / "site", tmp_path / "elsewhere"
    elsewhere.mkdir()
    subprocess.run(
        [*pip, "wheel", str(src), "--no-deps", "-w", str(wheels)], check=True, timeout=120
    )
    (wheel,) = wheels.glob("fhir_patient_generator-*.whl")
    subprocess.run([*pip, "install", "--no-deps", "--target", str(site), str(wheel)], check=True)
    env = {**os.environ, "PYTHONPATH": str(site)}
    code = (
        "import fhir_patient_generator as g; print(g.__file__); print(g._DATA_DIR); "
        f"print(g.generate_patient(seed=42, as_of='{AS_OF}').id)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=elsewhere, env=env, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    module, data_dir, patient_id = out.stdout.splitlines()
    assert Path(module).parent == site and Path(data_dir) == site / "fhir_patient_generator_data"
    assert patient_id == "c050f77f-9119-4773-ba9a-23b05f6f260a"  # the clone's seed-42 patient
    script = site / "bin" / "fhir-patient-generator"
    run = subprocess.run(
        [str(script), "--seed", "42", "--as-of", AS_OF, "--count", "3"],
        cwd=elsewhere,
        env=env,
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stderr
    assert len(run.stdout.splitlines()) == 3 and patient_id in run.stdout.splitlines()[0]
