"""The Spark job (examples/spark_generate.py): its core without Spark, and under local[2] (slow).

The slow tests run the real `spark-submit --master local[2]` with the module shipped only as the
--py-files zip (the job script is copied away from the repository), and compare the part files,
concatenated in order, byte for byte with the CLI's stdout. Without Java or pyspark they skip
locally and fail under CI.
"""

from __future__ import annotations

import gzip
import importlib.util
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path
from types import ModuleType

import orjson
import pytest
from s3server import ci_is_set

import fhir_patient_generator as g

ROOT = Path(__file__).resolve().parents[1]
JOB = ROOT / "examples" / "spark_generate.py"
AS_OF = "2025-10-13T02:22:22Z"
LOG4J2 = """rootLogger.level = warn
rootLogger.appenderRef.stderr.ref = stderr
appender.console.type = Console
appender.console.name = stderr
appender.console.target = SYSTEM_ERR
appender.console.layout.type = PatternLayout
appender.console.layout.pattern = %d{HH:mm:ss} %p %c{1}: %m%n
"""


def load_job() -> ModuleType:
    spec = importlib.util.spec_from_file_location("spark_generate", JOB)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


job = load_job()


def cli_stdout(*args: str) -> bytes:
    result = subprocess.run(
        [sys.executable, "fhir_patient_generator.py", *args],
        capture_output=True,
        cwd=ROOT,
        timeout=300,
        check=True,
    )
    return result.stdout


# ---------------------------------------------------------------------------------------------
# The core, without Spark
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("count", "partitions"), [(1, 1), (3, 7), (20_000, 7), (10, 3), (1_000_001, 16)]
)
def test_partitions_cover_every_index_once_in_order(count: int, partitions: int):
    ranges = [job.partition_range(count, partitions, p, start=5) for p in range(partitions)]
    assert [i for r in ranges for i in r] == list(range(5, 5 + count))
    sizes = {len(r) for r in ranges}
    assert max(sizes) - min(sizes) <= 1  # balanced
    with pytest.raises(ValueError):
        job.partition_range(count, partitions, partitions)


def test_partition_lines_concatenate_to_the_cli_output():
    options = ["--states", "CA,NY", "--min-age", "65", "--mortality-rate", "0.2"]
    plan = job.make_plan(
        7, AS_OF, {"states": "CA,NY", "min_age": 65, "mortality_rate": 0.2, "max_age": None}
    )
    lines = [
        line + b"\n" for p in range(5) for line in job.partition_lines(plan, 1234, 5, p, start=99)
    ]
    expected = cli_stdout(
        "--count", "1234", "--start", "99", "--seed", "7", "--as-of", AS_OF, *options
    )
    assert b"".join(lines) == expected


def test_unknown_generation_options_are_reported_not_crashing():
    with pytest.raises(ValueError, match="unknown option 'no_such_option'"):
        job.make_plan(1, AS_OF, {"no_such_option": "x"})
    with pytest.raises(ValueError):
        job.make_plan(1, AS_OF, {"min_age": 200})


def test_arguments_are_strict_except_under_glue():
    base = ["--count", "5", "--seed", "1", "--as-of", AS_OF, "--output", "/tmp/x"]
    assert job.parse_args(base).count == 5
    with pytest.raises(SystemExit):
        job.parse_args([*base, "--mortality_rate", "0.5"])  # a typo must not pass silently
    with pytest.raises(SystemExit):
        job.parse_args(["--count", "5", "--output", "/tmp/x"])  # seed and as-of are required
    assert job.parse_args([*base, "--gzip"]).gzip is True
    assert job.parse_args([*base, "--gzip", "--overwrite"]).overwrite is True
    assert job.parse_args(base).gzip is False
    glue = [*base, "--JOB_ID", "j_1", "--JOB_RUN_ID", "jr_1", "--TempDir", "s3://b/t"]
    args = job.parse_args([*glue, "--gzip", "true", "--overwrite", "false"])
    assert (args.seed, args.as_of, args.output) == (1, AS_OF, "/tmp/x")
    assert (args.gzip, args.overwrite) == (True, False)
    assert job.generation_options(args) == {
        "min_age": None,
        "max_age": None,
        "states": None,
        "lookback_years": None,
        "mortality_rate": None,
        "profile": None,
    }


def test_bundle_holds_the_module_and_reference_data(tmp_path: Path):
    bundle = job.build_bundle(tmp_path / "dist" / "metriccare_fhir.zip")
    names = set(zipfile.ZipFile(bundle).namelist())
    csvs = {f"reference_data/{p.name}" for p in (ROOT / "reference_data").glob("*.csv")}
    assert "fhir_patient_generator.py" in names and csvs and csvs <= names


def test_module_imported_from_the_zip_reads_its_reference_data(tmp_path: Path):
    """What the Spark driver does with --py-files (and Glue with --extra-py-files)."""
    bundle = job.build_bundle(tmp_path / "metriccare_fhir.zip")
    code = (
        "import importlib.util, sys, orjson\n"
        f"spec = importlib.util.spec_from_file_location('job', {str(JOB)!r})\n"
        "job = importlib.util.module_from_spec(spec); spec.loader.exec_module(job)\n"
        "g = job.import_generator()\n"
        "assert '.zip' in g.__file__, g.__file__\n"
        f"plan = job.make_plan(3, {AS_OF!r}, {{'states': 'TX'}})\n"
        "sys.stdout.buffer.write(orjson.dumps(g.build_record(plan, 17)))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(bundle)}
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, cwd=tmp_path, env=env, timeout=60
    )
    assert result.returncode == 0, result.stderr.decode()
    assert result.stdout == orjson.dumps(g.build_record(g.make_plan(3, AS_OF, states="TX"), 17))


# ---------------------------------------------------------------------------------------------
# The job under spark-submit --master local[2] (slow; CI runs it)
# ---------------------------------------------------------------------------------------------


def require_spark() -> Path:
    """spark-submit's path; skips locally, fails under CI, without pyspark or Java."""
    why = None
    try:
        import pyspark
    except ImportError:
        why = "pyspark is not installed: `pip install -r requirements-dev.txt`"
    else:
        if not (shutil.which("java") or os.environ.get("JAVA_HOME")):
            why = "Java (17) is not installed: no java on PATH and no JAVA_HOME"
    if why:
        if ci_is_set():
            pytest.fail(f"CI is set, so the Spark tests may not be skipped: {why}", pytrace=False)
        pytest.skip(why)
    return Path(pyspark.__file__).parent / "bin" / "spark-submit"


@pytest.fixture(scope="module")
def spark_submit(tmp_path_factory: pytest.TempPathFactory):
    """Run the job copied out of the repository, with the module only in the --py-files zip."""
    submit = require_spark()
    work = tmp_path_factory.mktemp("spark")
    bundle = job.build_bundle(work / "metriccare_fhir.zip")
    script = work / "job" / "spark_generate.py"
    script.parent.mkdir()
    shutil.copy(JOB, script)
    (work / "log4j2.properties").write_text(LOG4J2)
    env = {
        **os.environ,
        "PYSPARK_PYTHON": sys.executable,
        "PYSPARK_DRIVER_PYTHON": sys.executable,
        "SPARK_LOCAL_IP": "127.0.0.1",
    }
    env.pop("PYTHONPATH", None)

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        command = [
            str(submit),
            "--master",
            "local[2]",
            "--conf",
            "spark.ui.enabled=false",
            "--conf",
            "spark.driver.host=127.0.0.1",
            "--conf",
            "spark.driver.bindAddress=127.0.0.1",
            "--conf",
            "spark.sql.shuffle.partitions=2",
            "--driver-java-options",
            f"-Dlog4j2.configurationFile=file:{work / 'log4j2.properties'}",
            "--py-files",
            str(bundle),
            str(script),
            *args,
        ]
        result = subprocess.run(
            command, capture_output=True, text=True, cwd=work, env=env, timeout=300
        )
        assert result.returncode == 0, result.stderr[-5000:]
        return result

    run.work = work  # type: ignore[attr-defined]
    return run


def part_files(folder: Path, suffix: str = "") -> list[Path]:
    assert (folder / "_SUCCESS").exists()
    return sorted(folder.glob(f"part-*{suffix}"))


@pytest.mark.slow
def test_spark_output_equals_the_cli(spark_submit):
    args = ["--seed", "42", "--as-of", AS_OF]
    out = spark_submit.work / "plain"
    spark_submit("--count", "20000", "--partitions", "7", "--output", str(out), *args)
    parts = part_files(out)
    assert [p.name for p in parts] == [f"part-{i:05d}" for i in range(7)]
    expected = cli_stdout("--count", "20000", *args)
    assert b"".join(p.read_bytes() for p in parts) == expected
    assert [len(p.read_bytes().splitlines()) for p in parts] == [
        len(job.partition_range(20000, 7, i)) for i in range(7)
    ]


@pytest.mark.slow
def test_spark_gzip_output_with_options_equals_the_cli(spark_submit):
    args = ["--seed", "9", "--as-of", AS_OF, "--states", "CA,NY,PR", "--min-age", "65"]
    args += ["--mortality-rate", "0.1", "--max-age", "90"]
    out = spark_submit.work / "gzip"
    out.mkdir()
    (out / "part-99999.gz").write_bytes(b"stale output of an earlier run")  # --overwrite clears it
    spark_submit(
        "--count",
        "20000",
        "--partitions",
        "7",
        "--start",
        "500",
        "--gzip",
        "--overwrite",
        "--output",
        str(out),
        *args,
    )
    parts = part_files(out, ".gz")
    assert len(parts) == 7
    expected = cli_stdout("--count", "20000", "--start", "500", *args)
    assert b"".join(gzip.decompress(p.read_bytes()) for p in parts) == expected
