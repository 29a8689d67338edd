"""Throughput of Velosiped against the bare loops a user could write instead, and against Spark.

    python -m bench.bench [--quick] [--reps 3] [--models logreg,hgb,rf] [--no-s3] [--no-spark]

Generates a deterministic data set (8 CSV files x 200,000 rows: an integer `id` and 20 float
features `f0..f19`; --quick: 8 x 20,000) and three models fitted on a DataFrame
(LogisticRegression, HistGradientBoostingClassifier(max_iter=100),
RandomForestClassifier(n_estimators=100, max_depth=12)). For each model it runs every
contender in turn, interleaved, --reps times, and writes medians, min-max and the ratio to the
baseline (the single-process pandas loop) measured in the same run. Start-up is included.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import joblib
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv
import sklearn
from sklearn.ensemble import HistGradientBoostingClassifier, RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from threadpoolctl import threadpool_limits

from bench.common import machine, private_redis, write_section

FEATURES = [f"f{i}" for i in range(20)]
ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
MODELS: dict[str, Callable[[], object]] = {
    "logreg": lambda: LogisticRegression(max_iter=500),
    "hgb": lambda: HistGradientBoostingClassifier(max_iter=100, random_state=0),
    "rf": lambda: RandomForestClassifier(n_estimators=100, max_depth=12, n_jobs=1, random_state=0),
}
Contender = Callable[[list[Path], Path], None]


def make_data(folder: Path, files: int, rows: int, models: list[str]) -> tuple[list[Path], dict[str, Path]]:
    """Deterministic inputs and fitted models; reused when already there."""
    data = folder / "data"
    data.mkdir(parents=True, exist_ok=True)
    paths = [data / f"part-{i:02}.csv" for i in range(files)]
    for i, path in enumerate(paths):
        if path.exists():
            continue
        rng = np.random.default_rng(i)
        cols = {"id": pa.array(np.arange(i * rows, (i + 1) * rows))}
        cols |= {f: pa.array(rng.normal(size=rows).round(6)) for f in FEATURES}
        pacsv.write_csv(pa.table(cols), path)
    model_paths = {name: folder / f"{name}.joblib" for name in models}
    with ProcessPoolExecutor(1) as pool:  # fitting starts OpenMP, which a later fork of this process would inherit
        list(pool.map(fit, [(n, p) for n, p in model_paths.items() if not p.exists()]))
    return paths, model_paths


def fit(job: tuple[str, Path]) -> None:
    name, path = job
    rng = np.random.default_rng(42)
    train = pd.DataFrame(rng.normal(size=(20_000, len(FEATURES))), columns=FEATURES)
    label = (train.f0 + train.f1 - train.f2 + rng.normal(scale=0.5, size=len(train)) > 0).astype(int)
    joblib.dump(MODELS[name]().fit(train, label), path)


def clean(paths: list[Path]) -> None:
    for p in paths[0].parent.iterdir():
        if ".out." in p.name:
            p.unlink()


def pandas_file(args: tuple[Path, Path]) -> None:
    path, model_path = args
    model = joblib.load(model_path)
    df = pd.read_csv(path)
    df["prediction"] = model.predict(df[model.feature_names_in_])
    df.to_csv(path.with_name(path.name.replace(".csv", ".out.csv")), index=False)


def pyarrow_file(args: tuple[Path, Path]) -> None:
    """The best bare loop: pyarrow reads in blocks, predict, pyarrow writes."""
    path, model_path = args
    model = joblib.load(model_path)
    out = path.with_name(path.name.replace(".csv", ".out.csv"))
    reader = pacsv.open_csv(path, read_options=pacsv.ReadOptions(block_size=8 << 20))
    schema = reader.schema.append(pa.field("prediction", pa.int64()))
    with pacsv.CSVWriter(out, schema) as writer:
        for batch in reader:
            x = pd.DataFrame({f: batch.column(f).to_numpy() for f in model.feature_names_in_})
            columns = [*batch.columns, pa.array(model.predict(x))]
            writer.write_batch(pa.RecordBatch.from_arrays(columns, schema=schema))


def loop(fn: Callable[[tuple[Path, Path]], None], processes: int) -> Contender:
    """The bare loop over all files in a pool of ``processes`` (1 too: the benchmark process itself
    never predicts, so the OpenMP runtime of HistGradientBoosting is never started before a fork)."""

    def run(paths: list[Path], model_path: Path) -> None:
        threads = max(1, (os.cpu_count() or 1) // processes)  # as a careful user would: no N x N threads
        with ProcessPoolExecutor(processes, initializer=threadpool_limits, initargs=(threads,)) as pool:
            list(pool.map(fn, [(p, model_path) for p in paths]))

    return run


def velo_run(workers: int) -> Contender:
    def run(paths: list[Path], model_path: Path) -> None:
        with tempfile.TemporaryDirectory() as state:
            env = {**os.environ, "VELO_STATE_DIR": state}
            env.pop("REDIS_URL", None)
            cmd = [
                str(BIN / "velo"),
                "run",
                str(paths[0].parent),
                "--model",
                str(model_path),
                "--workers",
                str(workers),
            ]
            subprocess.run(cmd, env=env, check=True, capture_output=True)

    return run


def velo_fleet_on_s3(redis_url: str, s3_env: dict[str, str], processes: int) -> Contender:
    """`velo dispatch` to a real Redis, `velo worker --processes N --burst` reading and writing S3."""

    def run(paths: list[Path], model_path: Path) -> None:
        import boto3

        env = {**os.environ, **s3_env, "REDIS_URL": redis_url}
        s3 = boto3.client("s3", endpoint_url=s3_env["AWS_ENDPOINT_URL"], **_creds(s3_env))
        for obj in s3.list_objects_v2(Bucket="bench", Prefix="in/").get("Contents", []):
            if ".out." in obj["Key"]:
                s3.delete_object(Bucket="bench", Key=obj["Key"])
        subprocess.run(
            [str(BIN / "velo"), "dispatch", "s3://bench/in/", "--model", str(model_path)],
            env=env, check=True, capture_output=True,
        )  # fmt: skip
        cmd = [str(BIN / "velo"), "worker", "--burst", "--processes", str(processes), "--model", str(model_path)]
        subprocess.run(cmd, env=env, check=True, capture_output=True)

    return run


def spark_local(paths: list[Path], model_path: Path) -> None:
    """PySpark local[2]: read.csv → mapInPandas(predict) → write.csv, a fresh JVM each time."""
    out = paths[0].parent.parent / "spark-out"
    subprocess.run(
        [sys.executable, "-m", "bench.spark_job", str(paths[0].parent), str(model_path), str(out)],
        check=True, capture_output=True, cwd=ROOT,
    )  # fmt: skip


@contextlib.contextmanager
def s3_fleet(paths: list[Path]) -> Iterator[tuple[str, dict[str, str]]]:
    """A private redis-server and moto's S3 server on loopback, with the inputs uploaded.

    The S3 server runs as its own process: a thread in this one would make the forked
    process pools of the other contenders deadlock on locks it holds.
    """
    import boto3

    with private_redis() as url, socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        sock.close()
        server = subprocess.Popen(
            [str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        env = {
            "AWS_ACCESS_KEY_ID": "bench",
            "AWS_SECRET_ACCESS_KEY": "bench",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
        }
        try:
            s3 = boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"], **_creds(env))
            for _ in range(100):
                try:
                    s3.create_bucket(Bucket="bench")
                    break
                except Exception:
                    time.sleep(0.1)
            for p in paths:
                s3.upload_file(str(p), "bench", f"in/{p.name}")
            yield url, env
        finally:
            server.terminate()
            server.wait()


def _creds(env: dict[str, str]) -> dict[str, str]:
    return {
        "aws_access_key_id": env["AWS_ACCESS_KEY_ID"],
        "aws_secret_access_key": env["AWS_SECRET_ACCESS_KEY"],
        "region_name": env["AWS_DEFAULT_REGION"],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="8 files x 20,000 rows")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--models", default=",".join(MODELS), help="comma-separated: " + ", ".join(MODELS))
    ap.add_argument("--no-s3", action="store_true", help="skip the velo worker contenders on Redis + S3")
    ap.add_argument("--no-spark", action="store_true", help="skip PySpark even where it is installed")
    ap.add_argument("--data", default=str(ROOT / "bench" / "data"))
    ap.add_argument("--out", default=str(ROOT / "docs" / "BENCHMARKS.md"))
    args = ap.parse_args()
    rows = 20_000 if args.quick else 200_000
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    paths, model_paths = make_data(Path(args.data) / f"8x{rows}", 8, rows, models)
    size = sum(p.stat().st_size for p in paths)
    spark = not args.no_spark and _has_pyspark()
    with contextlib.ExitStack() as stack:
        fleet = None if args.no_s3 else stack.enter_context(s3_fleet(paths))
        sections = []
        for name in models:
            contenders: dict[str, Contender] = {
                "pandas loop, 1 process (baseline)": loop(pandas_file, 1),
                "pyarrow loop, 1 process": loop(pyarrow_file, 1),
                "pyarrow loop, 2-process pool (the limit)": loop(pyarrow_file, 2),
                "velo run --workers 2 (embedded Redis, local folder)": velo_run(2),
            }
            if fleet is not None:
                for n in (1, 2):
                    contenders[f"velo dispatch + worker --processes {n} (Redis, S3 endpoint)"] = velo_fleet_on_s3(
                        *fleet, n
                    )
            if spark:
                contenders["PySpark local[2]"] = spark_local
            times = measure(contenders, paths, model_paths[name], args.reps, name)
            sections.append((name, times))
    clean(paths)
    report(sections, 8 * rows, size, args)


def _has_pyspark() -> bool:
    try:
        import pyspark  # noqa: F401
    except ImportError:
        return False
    return True


def measure(contenders: dict[str, Contender], paths: list[Path], model: Path, reps: int, label: str):
    times: dict[str, list[float]] = {name: [] for name in contenders}
    for rep in range(reps):
        for name, run in contenders.items():  # interleaved: noise hits every contender alike
            clean(paths)
            started = time.perf_counter()
            run(paths, model)
            times[name].append(time.perf_counter() - started)
            print(f"{label} rep {rep + 1}/{reps} {name}: {times[name][-1]:.2f}s", flush=True)
    return times


def report(sections: list[tuple[str, dict[str, list[float]]]], total_rows: int, size: int, args) -> None:
    lines = [
        f"{machine()} pandas {pd.__version__}, pyarrow {pa.__version__}, scikit-learn {sklearn.__version__}.",
        "",
        f"Command: `python -m bench.bench{' --quick' if args.quick else ''} --reps {args.reps}`. "
        f"Data: 8 CSV files, {total_rows:,} rows in all ({size / 1e6:.0f} MB), `id` + 20 float features. "
        "Each contender writes every input column plus `prediction`. Contenders run interleaved; times are "
        "wall-clock, start-up included (Spark: a fresh JVM each run). Redis and S3 for the fleet contenders "
        "are a private redis-server and moto's S3 server on loopback (an in-process Python S3: slower than "
        "a real store, so those rows include its cost).",
    ]
    for name, times in sections:
        base = statistics.median(next(iter(times.values())))
        lines += [
            "",
            f"### {name}",
            "",
            "| contender | median s | min-max s | rows/s | × baseline |",
            "| --- | ---: | ---: | ---: | ---: |",
        ]
        for contender, ts in times.items():
            med = statistics.median(ts)
            spread = f"{min(ts):.2f}-{max(ts):.2f}"
            lines.append(f"| {contender} | {med:.2f} | {spread} | {total_rows / med:,.0f} | {base / med:.2f} |")
    write_section("Scoring throughput", lines, Path(args.out))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
