"""Throughput of `velo run` against the bare loops a user could write instead.

    python -m bench.bench [--quick] [--reps 3] [--out docs/BENCHMARKS.md]

Generates a deterministic data set (8 CSV files x 200,000 rows: an integer `id` and 20 float
features `f0..f19`; --quick: 8 x 20,000), fits a LogisticRegression on a DataFrame, then runs
each contender in turn, interleaved, --reps times, and writes the medians, min-max and the
ratios to the baseline (the single-process pandas loop) measured in the same run.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import joblib
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv
import sklearn
from sklearn.linear_model import LogisticRegression

from bench.common import machine, write_section

FEATURES = [f"f{i}" for i in range(20)]
ROOT = Path(__file__).resolve().parent.parent


def make_data(folder: Path, files: int, rows: int) -> tuple[list[Path], Path]:
    """Deterministic inputs and a fitted model; reused when already there."""
    data = folder / "data"
    model_path = folder / "logreg.joblib"
    data.mkdir(parents=True, exist_ok=True)
    paths = [data / f"part-{i:02}.csv" for i in range(files)]
    for i, path in enumerate(paths):
        if path.exists():
            continue
        rng = np.random.default_rng(i)
        cols = {"id": pa.array(np.arange(i * rows, (i + 1) * rows))}
        cols |= {f: pa.array(rng.normal(size=rows).round(6)) for f in FEATURES}
        pacsv.write_csv(pa.table(cols), path)
    if not model_path.exists():
        rng = np.random.default_rng(42)
        train = pd.DataFrame(rng.normal(size=(20_000, len(FEATURES))), columns=FEATURES)
        label = (train.f0 + train.f1 - train.f2 + rng.normal(scale=0.5, size=len(train)) > 0).astype(int)
        joblib.dump(LogisticRegression(max_iter=500).fit(train, label), model_path)
    return paths, model_path


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


def loop(fn: Callable[[tuple[Path, Path]], None], processes: int) -> Callable[[list[Path], Path], None]:
    def run(paths: list[Path], model_path: Path) -> None:
        work = [(p, model_path) for p in paths]
        if processes == 1:
            for w in work:
                fn(w)
        else:
            with ProcessPoolExecutor(processes) as pool:
                list(pool.map(fn, work))

    return run


def velo_run(workers: int) -> Callable[[list[Path], Path], None]:
    def run(paths: list[Path], model_path: Path) -> None:
        velo = Path(sys.executable).parent / "velo"
        with tempfile.TemporaryDirectory() as state:
            env = {**os.environ, "VELO_STATE_DIR": state}
            env.pop("REDIS_URL", None)
            cmd = [str(velo), "run", str(paths[0].parent), "--model", str(model_path), "--workers", str(workers)]
            subprocess.run(cmd, env=env, check=True, capture_output=True)

    return run


CONTENDERS: dict[str, Callable[[list[Path], Path], None]] = {
    "pandas loop, 1 process (baseline)": loop(pandas_file, 1),
    "pyarrow loop, 1 process": loop(pyarrow_file, 1),
    "pyarrow loop, 2-process pool (the limit)": loop(pyarrow_file, 2),
    "velo run --workers 2 (embedded Redis)": velo_run(2),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="8 files x 20,000 rows")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--data", default=str(ROOT / "bench" / "data"))
    ap.add_argument("--out", default=str(ROOT / "docs" / "BENCHMARKS.md"))
    args = ap.parse_args()
    rows = 20_000 if args.quick else 200_000
    folder = Path(args.data) / f"8x{rows}"
    paths, model_path = make_data(folder, 8, rows)
    total_rows = 8 * rows
    times: dict[str, list[float]] = {name: [] for name in CONTENDERS}
    for rep in range(args.reps):
        for name, run in CONTENDERS.items():  # interleaved: noise hits every contender alike
            clean(paths)
            started = time.perf_counter()
            run(paths, model_path)
            times[name].append(time.perf_counter() - started)
            print(f"rep {rep + 1}/{args.reps} {name}: {times[name][-1]:.2f}s", flush=True)
    clean(paths)
    report(times, total_rows, sum(p.stat().st_size for p in paths), args)


def report(times: dict[str, list[float]], total_rows: int, size: int, args: argparse.Namespace) -> None:
    base = statistics.median(next(iter(times.values())))
    lines = [
        f"{machine()} pandas {pd.__version__}, pyarrow {pa.__version__}, scikit-learn {sklearn.__version__}.",
        "",
        f"Command: `python -m bench.bench{' --quick' if args.quick else ''} --reps {args.reps}`. "
        f"Data: 8 CSV files, {total_rows:,} rows in all ({size / 1e6:.0f} MB), `id` + 20 float features; "
        "model: LogisticRegression fitted on a DataFrame. Each contender writes every input column plus "
        "`prediction`. Contenders run interleaved; times are wall-clock, start-up included.",
        "",
        "| contender | median s | min-max s | rows/s | × baseline |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for name, ts in times.items():
        med = statistics.median(ts)
        lines.append(
            f"| {name} | {med:.2f} | {min(ts):.2f}-{max(ts):.2f} | {total_rows / med:,.0f} | {base / med:.2f} |"
        )
    write_section("Scoring throughput", lines, Path(args.out))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
