"""Generate N FHIR Patients over P Spark partitions as NDJSON, byte-identical to the CLI's output.

    spark-submit --master 'local[2]' --py-files dist/metriccare_fhir.zip \\
        examples/spark_generate.py --count 1000000 --partitions 16 \\
        --seed 42 --as-of 2025-10-13T02:22:22Z --output /tmp/patients [--gzip]

Partition p writes patients [p*N//P, (p+1)*N//P) (offset by --start), one part file per
partition, so `cat part-*` in name order equals
`python fhir_patient_generator.py --count N --seed S --as-of T`. The Plan (seed, as-of, options)
is made once on the driver and broadcast; executors only call json_renderer(plan)(index), so they
need the module and orjson but not reference_data/ or Faker.

Build the zip that ships the module and its reference_data/ with
`python examples/spark_generate.py --bundle dist/metriccare_fhir.zip`; docs/spark.md covers
spark-submit, EMR and AWS Glue.
"""

from __future__ import annotations

import argparse
import functools
import sys
import tempfile
import zipfile
import zipimport
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

MODULE = "fhir_patient_generator"
REFERENCE_DIR = "reference_data"
GZIP_CODEC = "org.apache.hadoop.io.compress.GzipCodec"
REPO_ROOT = Path(__file__).resolve().parents[1]
# Arguments AWS Glue passes to every job script; their presence means "ignore what Glue adds".
GLUE_MARKERS = ("--JOB_ID", "--JOB_RUN_ID", "--JOB_NAME")
FROM_CHECKOUT = False  # whether import_generator() fell back to the repository's module


# ---------------------------------------------------------------------------------------------
# Finding the module and its reference data (a plain file, a --py-files zip, or the repo)
# ---------------------------------------------------------------------------------------------


def import_generator() -> ModuleType:
    """Import fhir_patient_generator with its reference_data/ readable, wherever it came from.

    Two private names of the module are used here, as a deployment helper must: _DATA_DIR (where
    its reference data lies) and _MAX_INDEX (the highest patient index)."""
    try:
        import fhir_patient_generator as g
    except ImportError:  # run from a checkout without --py-files: use the repository's module
        sys.path.append(str(REPO_ROOT))
        import fhir_patient_generator as g

        global FROM_CHECKOUT
        FROM_CHECKOUT = True  # main() ships the module to the executors itself
    return g


@functools.cache
def reference_data_dir(g: ModuleType) -> Path:
    """A real folder holding the module's reference_data/: extracted once when g came from a zip.

    The module reads reference_data/*.csv next to its own file by default; inside a zip
    (--py-files, Glue --extra-py-files) that path is not a folder, so the CSVs are extracted
    once per process and passed to make_plan(data_dir=...). The module is never patched.
    """
    data_dir = Path(g._DATA_DIR)
    if data_dir.is_dir():
        return data_dir
    loader = getattr(g, "__loader__", None)
    if not isinstance(loader, zipimport.zipimporter):
        raise FileNotFoundError(
            f"{data_dir} not found: ship reference_data/ next to {MODULE}.py "
            "(e.g. the zip from `spark_generate.py --bundle`)"
        )
    member_prefix = f"{loader.prefix}{REFERENCE_DIR}/"
    target = Path(tempfile.mkdtemp(prefix="metriccare-reference-"))
    with zipfile.ZipFile(loader.archive) as zf:
        members = [n for n in zf.namelist() if n.startswith(member_prefix) and not n.endswith("/")]
        if not members:
            raise FileNotFoundError(f"{loader.archive} has no {member_prefix}*: rebuild the zip")
        for name in members:
            out = target / REFERENCE_DIR / name[len(member_prefix) :]
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_bytes(zf.read(name))
    return target / REFERENCE_DIR


def build_bundle(dest: str | Path) -> Path:
    """Write a zip of fhir_patient_generator.py and reference_data/ for --py-files."""
    g = import_generator()
    source = Path(g.__file__)
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(dest, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(f"{MODULE}.py", source.read_bytes())
        for path in sorted(reference_data_dir(g).iterdir()):
            if path.is_file():
                zf.write(path, f"{REFERENCE_DIR}/{path.name}")
    return dest


# ---------------------------------------------------------------------------------------------
# The core: index ranges per partition and their NDJSON lines (plain functions, no Spark)
# ---------------------------------------------------------------------------------------------


def partition_range(count: int, partitions: int, p: int, start: int = 0) -> range:
    """Indexes of partition p: [start + p*N//P, start + (p+1)*N//P); together, in order, all N."""
    if not 0 <= p < partitions:
        raise ValueError(f"partition {p} is not in 0..{partitions - 1}")
    return range(start + p * count // partitions, start + (p + 1) * count // partitions)


def partition_lines(
    plan: Any, count: int, partitions: int, p: int, start: int = 0
) -> Iterator[bytes]:
    """Compact JSON of partition p's patients, one per item, without the newline: the bytes
    json_renderer writes for the CLI (orjson.dumps(build_record(plan, i)), made faster)."""
    import fhir_patient_generator as g

    render = g.json_renderer(plan)  # fragments built once per plan per Python worker
    for index in partition_range(count, partitions, p, start):
        yield render(index)


def make_plan(seed: int, as_of: str, options: dict[str, Any]) -> Any:
    """The module's Plan; options left as None are not passed, so the module's defaults apply."""
    g = import_generator()
    given = {k: v for k, v in options.items() if v is not None}
    try:
        return g.make_plan(seed, as_of, data_dir=reference_data_dir(g), **given)
    except TypeError as e:  # a module older than these options
        raise ValueError(f"{MODULE} {g.__version__} does not accept these options: {e}") from None


# ---------------------------------------------------------------------------------------------
# The Spark job
# ---------------------------------------------------------------------------------------------


def run(  # noqa: PLR0913 - the last three are keyword-only options
    sc: Any,
    plan: Any,
    count: int,
    partitions: int,
    output: str,
    *,
    gzip: bool = False,
    start: int = 0,
    overwrite: bool = False,
) -> None:
    """Write patients start..start+count-1 to `output` as P part files of NDJSON, in order."""
    if overwrite:
        jvm = sc._jvm
        path = jvm.org.apache.hadoop.fs.Path(output)
        path.getFileSystem(sc._jsc.hadoopConfiguration()).delete(path, True)
    shared = sc.broadcast(plan)

    def lines(p: int, _items: Any) -> Iterator[bytes]:
        return partition_lines(shared.value, count, partitions, p, start)

    rdd = sc.parallelize(range(partitions), partitions).mapPartitionsWithIndex(lines)
    rdd.saveAsTextFile(output, GZIP_CODEC if gzip else None)


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def _boolean(text: str) -> bool:
    """A flag's optional value (Glue job parameters always have one): true/false, 1/0, yes/no."""
    value = text.strip().lower()
    if value in ("true", "1", "yes", ""):
        return True
    if value in ("false", "0", "no"):
        return False
    raise argparse.ArgumentTypeError(f"{text!r} is not true or false")


def build_parser() -> argparse.ArgumentParser:
    """Arguments: the CLI's generation options plus --partitions, --output and --gzip."""
    p = argparse.ArgumentParser(
        prog="spark_generate.py",
        description="Generate FHIR Patients with Spark as NDJSON (identical to the CLI's output).",
        allow_abbrev=False,
    )
    p.add_argument("--count", type=_positive_int, help="number of patients N")
    p.add_argument("--partitions", type=_positive_int, help="P part files (default: Spark's)")
    p.add_argument("--seed", type=int, help="seed (required: the job must be reproducible)")
    p.add_argument("--as-of", help="ISO-8601 time, e.g. 2025-10-13T02:22:22Z (required)")
    p.add_argument("--start", type=int, default=0, help="index of the first patient (default 0)")
    p.add_argument("--output", help="output folder: a path, hdfs:// or s3:// URI (must not exist)")
    flag: dict[str, Any] = {"nargs": "?", "const": True, "default": False, "type": _boolean}
    p.add_argument("--gzip", **flag, help="gzip each part file (part-NNNNN.gz); or --gzip true")
    p.add_argument("--overwrite", **flag, help="delete --output first; or --overwrite true")
    p.add_argument("--min-age", type=int)
    p.add_argument("--max-age", type=int)
    p.add_argument("--states", help="only these USPS codes, e.g. CA,NY")
    p.add_argument("--lookback-years", type=float)
    p.add_argument("--mortality-rate", type=float)
    p.add_argument("--profile", help="passed to make_plan when given (newer module versions)")
    p.add_argument("--bundle", metavar="ZIP", help="only write the --py-files zip and exit")
    return p


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse arguments; under AWS Glue (which adds --JOB_ID etc.) unknown ones are ignored."""
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else argv
    if any(a.split("=")[0] in GLUE_MARKERS for a in argv):
        args, _ = parser.parse_known_args(argv)
    else:
        args = parser.parse_args(argv)
    if args.bundle is None:
        names = ("count", "seed", "as_of", "output")
        missing = ["--" + n.replace("_", "-") for n in names if getattr(args, n) is None]
        if missing:
            parser.error(f"required: {', '.join(missing)}")
    return args


def generation_options(args: argparse.Namespace) -> dict[str, Any]:
    """make_plan keyword arguments from parsed arguments (None: not given)."""
    return {
        "min_age": args.min_age,
        "max_age": args.max_age,
        "states": args.states,
        "lookback_years": args.lookback_years,
        "mortality_rate": args.mortality_rate,
        "profile": args.profile,
    }


def main(argv: list[str] | None = None) -> int:
    """Run the job (or --bundle); returns the exit status."""
    args = parse_args(argv)
    if args.bundle is not None:
        print(build_bundle(args.bundle))
        return 0
    try:
        plan = make_plan(args.seed, args.as_of, generation_options(args))
        if args.start < 0 or args.start + args.count - 1 > import_generator()._MAX_INDEX:
            raise ValueError("--start and --count must keep indexes within 0..MAX_INDEX")
    except ValueError as e:
        print(f"spark_generate.py: error: {e}", file=sys.stderr)
        return 2

    from pyspark.sql import SparkSession

    spark = SparkSession.builder.appName("metriccare-fhir-patients").getOrCreate()
    spark.sparkContext.setLogLevel("WARN")
    g = import_generator()
    if FROM_CHECKOUT:  # no --py-files: send the module
        spark.sparkContext.addPyFile(g.__file__)  # executors need only it (the plan is broadcast)
    partitions = args.partitions or spark.sparkContext.defaultParallelism
    try:
        run(
            spark.sparkContext,
            plan,
            args.count,
            partitions,
            args.output,
            gzip=args.gzip,
            start=args.start,
            overwrite=args.overwrite,
        )
    finally:
        spark.stop()
    print(
        f"wrote {args.count} patients (seed {plan.seed}, as-of {plan.last_updated}) "
        f"in {partitions} part files to {args.output}",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
