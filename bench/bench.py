"""Throughput of Velosiped against the bare loops a user could write instead, and against Spark.

    python -m bench.bench [--quick] [--full] [--reps 3] [--models logreg,hgb,rf] [--no-s3] [--no-spark]

Generates a deterministic data set (8 CSV files x 200,000 rows: an integer `id` and 20 float
features `f0..f19`; --quick: 8 x 20,000) and three models fitted on a DataFrame
(LogisticRegression, HistGradientBoostingClassifier(max_iter=100),
RandomForestClassifier(n_estimators=100, max_depth=12)). Each repetition runs every contender
once for every model, in turn (interleaved), --reps times, and writes medians, min-max and the
ratio to the baseline (the single-process pandas loop) measured in the same run. Start-up is
included.

Contenders for every model: `velo run --workers 2` and PySpark local[2] (one JVM per
repetition scores the models in turn). For the --baseline-models (default: logreg, the model
the targets are set on): the pandas loop and the pyarrow loop in 1 process and in a 2-process
pool (the limit); for the --fleet-models (default: logreg): `velo run --workers 1` (1 -> 2
processes on a local folder) and `velo worker --processes 1` and 2 on Redis and S3. --full runs
the bare loops for every model and `velo worker` on Redis and a local folder too. On 2 cores,
from a fresh clone (data, models and the S3 upload take ~12 s): 7.4 minutes measured (what `make
bench` runs); --full (what `make bench FULL=1` runs) adds about 5 more by estimate.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import shutil
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

from bench.common import FEATURES, machine, private_redis, wall_time, write_section
from bench.loops import cached_model

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
MODELS: dict[str, Callable[[], object]] = {
    "logreg": lambda: LogisticRegression(max_iter=500),
    "hgb": lambda: HistGradientBoostingClassifier(max_iter=100, random_state=0),
    "rf": lambda: RandomForestClassifier(n_estimators=100, max_depth=12, n_jobs=1, random_state=0),
}
Contender = Callable[[list[Path], Path], "float | Callable[[], float] | None"]
"""Runs over all files; returns the seconds from the first file started to the last one done, if known,
or a function that looks them up once the clock has stopped (`velo status` is not the contender's time)."""


def make_data(folder: Path, files: int, rows: int, models: list[str]) -> tuple[list[Path], dict[str, Path]]:
    """Deterministic inputs and fitted models; reused when already there."""
    data = folder / "data"
    data.mkdir(parents=True, exist_ok=True)
    paths = [data / f"part-{i:02}.csv" for i in range(files)]
    model_paths = {name: folder / f"{name}.joblib" for name in models}
    with ProcessPoolExecutor(1) as pool:  # fitting starts OpenMP, which a later fork of this process would inherit
        fitted = pool.map(fit, [(n, p) for n, p in model_paths.items() if not p.exists()])  # while the data is written
        for i, path in enumerate(paths):
            if path.exists():
                continue
            rng = np.random.default_rng(i)
            cols = {"id": pa.array(np.arange(i * rows, (i + 1) * rows))}
            cols |= {f: pa.array(rng.normal(size=rows).round(6)) for f in FEATURES}
            pacsv.write_csv(pa.table(cols), path)
        list(fitted)
    return paths, model_paths


def fit(job: tuple[str, Path]) -> None:
    name, path = job
    rng = np.random.default_rng(42)
    train = pd.DataFrame(rng.normal(size=(20_000, len(FEATURES))), columns=FEATURES)
    label = (train.f0 + train.f1 - train.f2 + rng.normal(scale=0.5, size=len(train)) > 0).astype(int)
    joblib.dump(MODELS[name]().fit(train, label), path)


def fit_model(path: Path, name: str = "logreg") -> None:
    """Fit (once) the bench's model ``name`` into ``path``, in a child process: the thread pools
    fitting starts (OpenMP, BLAS) stay out of the process that then times contenders."""
    if not path.exists():
        with ProcessPoolExecutor(1) as pool:
            pool.submit(fit, (name, path)).result()


def clean(paths: list[Path]) -> None:
    for p in paths[0].parent.iterdir():
        if ".out." in p.name:
            p.unlink()


def loop(name: str, processes: int) -> Contender:
    """A bare loop (bench/loops.py), run as its own command like a user's script: imports included."""

    def run(paths: list[Path], model_path: Path) -> float:
        cmd = [sys.executable, "-m", "bench.loops", name, str(paths[0].parent), str(model_path)]
        done = subprocess.run([*cmd, "--processes", str(processes)], check=True, capture_output=True, text=True,
                              cwd=ROOT)  # fmt: skip
        return float(done.stdout.strip().rsplit(": ", 1)[1])

    return run


def velo_run(workers: int | None, *extra: str) -> Contender:
    """`velo run --workers N` (None: without --workers, as typed; and ``extra`` options) on a fresh embedded Redis."""

    def run(paths: list[Path], model_path: Path) -> Callable[[], float]:
        state = tempfile.mkdtemp(prefix="velo-bench-")
        env = {**os.environ, "VELO_STATE_DIR": state}
        env.pop("REDIS_URL", None)
        cmd = [str(BIN / "velo"), "run", str(paths[0].parent), "--model", str(model_path)]
        cmd += ["--workers", str(workers)] if workers is not None else []
        cmd += extra
        subprocess.run(cmd, env=env, check=True, capture_output=True)

        def after_startup() -> float:
            try:
                return batch_seconds(env)
            finally:
                shutil.rmtree(state, ignore_errors=True)

        return after_startup

    return run


def batch_seconds(env: dict[str, str]) -> float:
    """Seconds from the newest batch's first file started to its last file done (`velo status`)."""
    out = subprocess.run([str(BIN / "velo"), "status", "--json"], env=env, check=True, capture_output=True).stdout
    return float(json.loads(out)["batches"][0]["seconds"])


def velo_fleet_local(redis_url: str, processes: int) -> Contender:
    """`velo dispatch` to a real Redis, `velo worker --processes N --burst` on the local folder."""

    def run(paths: list[Path], model_path: Path) -> Callable[[], float]:
        env = {**os.environ, "REDIS_URL": redis_url}
        velo = str(BIN / "velo")
        subprocess.run([velo, "dispatch", str(paths[0].parent), "--model", str(model_path)], env=env, check=True,
                       capture_output=True)  # fmt: skip
        cmd = [velo, "worker", "--burst", "--processes", str(processes), "--model", str(model_path)]
        subprocess.run(cmd, env=env, check=True, capture_output=True)
        return lambda: batch_seconds(env)

    return run


def velo_fleet_on_s3(redis_url: str, s3_env: dict[str, str], processes: int) -> Contender:
    """`velo dispatch` to a real Redis, `velo worker --processes N --burst` reading and writing S3."""

    def run(paths: list[Path], model_path: Path) -> Callable[[], float]:
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
        return lambda: batch_seconds(env)

    return run


def spark_local(paths: list[Path], model_paths: dict[str, Path]) -> dict[str, tuple[float, float]]:
    """PySpark local[2]: read.csv → mapInPandas(predict) → write.csv, one fresh JVM scoring each model in turn.

    Per model: (end to end: the JVM's start-up + the model's load + its job; the job alone).
    """
    out = paths[0].parent.parent / "spark-out"
    cmd = [sys.executable, "-m", "bench.spark_job", str(paths[0].parent), str(out), *map(str, model_paths.values())]
    done = subprocess.run(cmd, check=True, capture_output=True, cwd=ROOT, text=True)
    shutil.rmtree(out, ignore_errors=True)
    said = dict(line.rsplit(": ", 1) for line in done.stdout.splitlines() if " seconds" in line)
    startup = float(said["startup seconds"])
    return {
        name: (startup + float(said[f"load seconds {p.stem}"]) + float(said[f"job seconds {p.stem}"]),
               float(said[f"job seconds {p.stem}"]))
        for name, p in model_paths.items()
    }  # fmt: skip


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


PANDAS = "pandas loop, 1 process (baseline)"
ARROW = "pyarrow loop, 1 process"
LIMIT = "pyarrow loop, 2-process pool (the limit)"
RUN = "velo run --workers 2 (embedded Redis, local folder)"
RUN1 = "velo run --workers 1 (embedded Redis, local folder)"
LOCAL = "velo dispatch + worker --processes {} (Redis, local folder)"
S3 = "velo dispatch + worker --processes {} (Redis, S3 endpoint)"
SPARK = "PySpark local[2]"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="8 files x 20,000 rows")
    ap.add_argument("--full", action="store_true", help="the bare loops for every model; velo worker on a local folder")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--models", default=",".join(MODELS), help="comma-separated: " + ", ".join(MODELS))
    ap.add_argument("--baseline-models", default="logreg", help="models also run by the bare loops (pandas, pyarrow)")
    ap.add_argument("--fleet-models", default="logreg", help="models also run by 1 and 2 worker processes")
    ap.add_argument("--no-s3", action="store_true", help="skip the velo worker contenders on Redis + S3")
    ap.add_argument("--no-spark", action="store_true", help="skip PySpark even where it is installed")
    ap.add_argument("--data", default=str(ROOT / "bench" / "data"))
    ap.add_argument("--out", default=str(ROOT / "docs" / "BENCHMARKS.md"))
    args = ap.parse_args()
    rows = 20_000 if args.quick else 200_000
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    if args.full:
        args.baseline_models = args.models
    paths, model_paths = make_data(Path(args.data) / f"8x{rows}", 8, rows, models)
    size = sum(p.stat().st_size for p in paths)
    spark = not args.no_spark and _has_pyspark()
    with contextlib.ExitStack() as stack:
        redis_url = stack.enter_context(private_redis())
        fleet = None if args.no_s3 else stack.enter_context(s3_fleet(paths))
        plan: dict[str, dict[str, Contender]] = {}
        for name in models:
            contenders: dict[str, Contender] = {}
            if name in args.baseline_models.split(","):
                contenders |= {PANDAS: loop("pandas", 1), ARROW: loop("pyarrow", 1), LIMIT: loop("pyarrow", 2)}
            contenders[RUN] = velo_run(2)
            if name in args.fleet_models.split(","):
                contenders[RUN1] = velo_run(1)  # 1 -> 2 processes on a local folder: velo run's own workers
                for n in (1, 2) if args.full else ():  # the same through `velo dispatch` and `velo worker`
                    contenders[LOCAL.format(n)] = velo_fleet_local(redis_url, n)
                for n in (1, 2) if fleet is not None else ():
                    contenders[S3.format(n)] = velo_fleet_on_s3(*fleet, n)
            plan[name] = contenders
        times, scoring = measure(plan, paths, model_paths, args.reps, spark)
        sections = [(name, times[name], scoring[name]) for name in models]
        stages = breakdown(paths[0], model_paths[models[0]], args.reps)
    clean(paths)
    report(sections, stages, 8 * rows, size, args)
    print(f"bench.bench: {wall_time()}", flush=True)


def _has_pyspark() -> bool:
    try:
        import pyspark  # noqa: F401
    except ImportError:
        return False
    return True


Times = dict[str, list[float]]


def measure(
    plan: dict[str, dict[str, Contender]], paths: list[Path], model_paths: dict[str, Path], reps: int, spark: bool
) -> tuple[dict[str, Times], dict[str, Times]]:
    """Per model, wall-clock seconds of each contender, and the seconds after start-up where it reports them.

    Each repetition runs every model's contenders, then (with ``spark``) one Spark command for all models.
    """
    times: dict[str, Times] = {m: {name: [] for name in contenders} for m, contenders in plan.items()}
    scoring: dict[str, Times] = {m: {name: [] for name in contenders} for m, contenders in plan.items()}
    for m in plan if spark else ():
        times[m][SPARK], scoring[m][SPARK] = [], []
    for rep in range(reps):
        for m, contenders in plan.items():
            for name, run in contenders.items():  # interleaved: noise hits every contender alike
                clean(paths)
                started, cpu = time.perf_counter(), _children_cpu()
                result = run(paths, model_paths[m])
                times[m][name].append(time.perf_counter() - started)
                cpu = _children_cpu() - cpu
                inner = result() if callable(result) else result
                if inner is not None:
                    scoring[m][name].append(inner)
                after = f" ({inner:.2f}s after start-up)" if inner is not None else ""
                print(f"{m} rep {rep + 1}/{reps} {name}: {times[m][name][-1]:.2f}s{after}, cpu {cpu:.1f}s", flush=True)
        if spark:
            clean(paths)
            started, cpu = time.perf_counter(), _children_cpu()
            done = spark_local(paths, {m: model_paths[m] for m in plan})
            wall, cpu = time.perf_counter() - started, _children_cpu() - cpu
            for m, (end_to_end, job) in done.items():
                times[m][SPARK].append(end_to_end)
                scoring[m][SPARK].append(job)
                print(f"{m} rep {rep + 1}/{reps} {SPARK}: {end_to_end:.2f}s ({job:.2f}s after start-up)", flush=True)
            print(f"rep {rep + 1}/{reps} {SPARK} for {len(done)} model(s): {wall:.2f}s, cpu {cpu:.1f}s", flush=True)
    return times, scoring


def _children_cpu() -> float:
    """CPU seconds (user + system) of the child processes waited for so far: how busy a contender kept the cores."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def breakdown(path: Path, model_path: Path, reps: int) -> dict[str, float]:
    """Seconds per stage of Velosiped's scoring path on one file, in one process: median of ``reps``."""
    with ProcessPoolExecutor(1, initializer=threadpool_limits, initargs=(1,)) as pool:
        runs = [pool.submit(_stages, path, model_path).result() for _ in range(reps)]
    return {stage: statistics.median(r[stage] for r in runs) for stage in runs[0]}


def _stages(path: Path, model_path: Path) -> dict[str, float]:
    from worker.scoring import BLOCK_SIZE, Dialect, FeatureSpec, _csv_blocks

    model = cached_model(model_path)
    clock = time.perf_counter
    t = dict.fromkeys(["parse (text cells)", "features to float64", "predict", "write CSV"], 0.0)
    with open(path, "rb") as src, open(os.devnull, "wb") as dst:
        started = clock()
        header, blocks, _ = _csv_blocks(src, str(path), Dialect(), BLOCK_SIZE)
        spec = FeatureSpec(model, header, str(path))
        t["parse (text cells)"] += clock() - started
        while True:
            started = clock()
            batch = next(blocks, None)
            t["parse (text cells)"] += clock() - started
            if batch is None:
                break
            started = clock()
            x = spec.matrix(batch, str(path))
            t["features to float64"] += clock() - started
            started = clock()
            prediction = model.predict(x)
            t["predict"] += clock() - started
            started = clock()
            table = pa.Table.from_arrays([*batch.columns, pa.array(prediction)], names=[*header, "prediction"])
            pacsv.write_csv(table, dst, pacsv.WriteOptions(include_header=False, quoting_style="none"))
            t["write CSV"] += clock() - started
    return t


def _ratio(times: Times, a: str, b: str) -> str:
    """How many times faster ``a`` is than ``b`` (medians), or - when either was not run."""
    if not times.get(a) or not times.get(b):
        return "-"
    return f"{statistics.median(times[b]) / statistics.median(times[a]):.2f}"


def report(
    sections: list[tuple[str, Times, Times]], stages: dict[str, float], total_rows: int, size: int, args
) -> None:
    command = "python -m bench.bench" + (" --quick" if args.quick else "") + (" --full" if args.full else "")
    if args.models != ",".join(MODELS):
        command += f" --models {args.models}"
    if not args.full and args.baseline_models != "logreg":
        command += f" --baseline-models {args.baseline_models}"
    command += f" --reps {args.reps}"
    everywhere = set(args.baseline_models.split(",")) >= {name for name, _, _ in sections}
    lines = [
        f"{machine()} pandas {pd.__version__}, pyarrow {pa.__version__}, scikit-learn {sklearn.__version__}.",
        "",
        f"Command: `{command}` (part of `make bench`). "
        f"Data: 8 CSV files, {total_rows:,} rows in all ({size / 1e6:.0f} MB), `id` + 20 float features. "
        "Each contender writes every input column plus `prediction`; contenders run interleaved (each repetition "
        f"runs every contender once; {args.reps} repetition{'s' if args.reps != 1 else ''}, medians and min-max). "
        "Every contender is a command of its own, as a user would run it (the bare loops are `bench/loops.py`). "
        "**End to end** is wall-clock from the command's start to its exit: interpreter, imports, model load, "
        "Redis and (Spark) a fresh JVM included. **After start-up** is from the first file started to the last "
        "one done (Velosiped: the batch's own clock in `velo status`; bare loops: their first and last "
        "file; Spark: its job, after the session is up). "
        + (
            "Spark: one fresh JVM per repetition scores the models in turn; a model's end to end is the JVM's "
            "start-up (command start to session up) plus the model's load and job (the session's shutdown is not "
            "counted; models after the first find the JVM warm: both favour Spark); one partition per file, as "
            "Velosiped has one job per file (Spark's default 128 MB partitions left a core idle). "
            if len(sections) > 1
            else "Spark: a fresh JVM per repetition; end to end is its start-up (command start to session up) plus "
            "the model's load and job (the session's shutdown is not counted, which favours Spark). "
        )
        + (
            ""
            if set(MODELS) <= {name for name, _, _ in sections}
            else f"Models: {', '.join(name for name, _, _ in sections)} (`--models`; `make bench FULL=1` runs "
            f"{', '.join(MODELS)}). "
        )
        + (
            ""
            if everywhere
            else f"The bare loops (pandas; pyarrow in 1 and 2 processes) run for {args.baseline_models} only, the "
            "model the targets are set on (`--full` runs them for every model); where they did "
            "not run, the table has no × baseline. "
        )
        + "Redis for the fleet rows is a private redis-server; "
        "S3 is moto's S3 server on loopback, one Python process sharing the 2 cores (slower than a real "
        "store). Bare loops load the model once per process and cap BLAS/OpenMP threads at cores / processes, "
        "as Velosiped's workers do.",
    ]
    targets = [
        "",
        "### Targets",
        "",
        "| model | velo run ÷ limit, end to end | velo run ÷ limit, after start-up | velo run ÷ pandas "
        "| velo run ÷ PySpark, end to end | 2 ÷ 1 processes, velo run, local | 2 ÷ 1 processes, velo worker, S3 |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, times, scoring in sections:
        base = statistics.median(times[PANDAS]) if times.get(PANDAS) else None
        lines += [
            "",
            f"### {name}",
            "",
            "| contender | end to end s (min-max) | rows/s | × baseline | after start-up s | rows/s after start-up |",
            "| --- | ---: | ---: | ---: | ---: | ---: |",
        ]
        for contender, ts in times.items():
            med = statistics.median(ts)
            inner = statistics.median(scoring[contender]) if scoring[contender] else None
            after = f"{inner:.2f} | {total_rows / inner:,.0f}" if inner else "- | -"
            lines.append(
                f"| {contender} | {med:.2f} ({min(ts):.2f}-{max(ts):.2f}) | {total_rows / med:,.0f} "
                f"| {f'{base / med:.2f}' if base else '-'} | {after} |"
            )
        targets.append(
            f"| {name} | {_ratio(times, RUN, LIMIT)} | {_ratio(scoring, RUN, LIMIT)} | {_ratio(times, RUN, PANDAS)} "
            f"| {_ratio(times, RUN, SPARK)} | {_ratio(scoring, RUN, RUN1)} "
            f"| {_ratio(scoring, S3.format(2), S3.format(1))} |"
        )
    total = sum(stages.values()) or 1.0
    lines += [
        *targets,
        "",
        "Targets: velo run ≥ 0.90 × the limit and ≥ 4 × pandas; ≥ 3 × PySpark; 2 worker processes ≥ 1.8 × one "
        "(scaling is measured after start-up, on the batch's clock).",
        "",
        f"### Where the time goes (one file, {total_rows // 8:,} rows, {sections[0][0]}, one process)",
        "",
        "| stage | seconds | share |",
        "| --- | ---: | ---: |",
        *(f"| {stage} | {sec:.3f} | {sec / total:.0%} |" for stage, sec in stages.items()),
        "",
        wall_time(),
    ]
    write_section("Scoring throughput", lines, Path(args.out))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
