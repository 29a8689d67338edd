"""The faster predict for tree ensembles: which engine, and what it gives end to end.

    python -m bench.engine [--reps 3] [--models hgb,rf] [--no-spark] [--quick]

The data and models are bench/bench.py's (8 CSV files x 200,000 rows, `id` + 20 float features;
HistGradientBoostingClassifier(max_iter=100) and RandomForestClassifier(n_estimators=100,
max_depth=12), fitted on a DataFrame).

1. **Engines, predict alone**, in one process on one file's 200,000 rows as float64: scikit-learn's
   `predict`; skl2onnx + onnxruntime (float32 input, as skl2onnx converts trees); Treelite's GTIL
   interpreter; Treelite compiled by TL2cgen with the machine's gcc (the model cache's library, as
   `--engine treelite` builds it). Each with 2 threads and with 1 (what each of `velo run
   --workers 2`'s processes gets), medians of --reps; conversion / compile seconds; and whether it
   agrees with scikit-learn on all 200,000 rows (labels equal, probabilities within 1e-6).
2. **End to end**: `velo run --workers 2` with `--engine sklearn` and `--engine treelite`, interleaved,
   --reps times, and PySpark local[2] (bench/spark_job.py) in the same run where PySpark is
   installed; without it the PySpark times are taken from the "Scoring throughput" section of
   docs/BENCHMARKS.md, and the section says so.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pandas as pd
import pyarrow.csv as pacsv
import sklearn

from bench.bench import BIN, batch_seconds, clean, make_data, spark_local
from bench.common import DOC, FEATURES, machine, wall_time, write_section

ROOT = Path(__file__).resolve().parent.parent
TOLERANCE = 1e-6


def _median_seconds(fn: Callable[[], Any], reps: int) -> float:
    times = []
    for _ in range(reps):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def _agreement(model: Any, x: pd.DataFrame, labels: np.ndarray, proba: np.ndarray | None) -> str:
    want = model.predict(x)
    wrong = int(np.sum(np.asarray(labels) != want))
    gap = float(np.max(np.abs(proba - model.predict_proba(x)))) if proba is not None else 0.0
    verdict = "yes" if wrong == 0 and gap <= TOLERANCE else "**no**"
    return f"{verdict}: {wrong} labels differ, probabilities within {gap:.1e}"


def engines(name: str, model_path: Path, x: pd.DataFrame, reps: int) -> list[list[str]]:
    """One row per engine: engine, convert s, predict s at 2 threads, at 1 thread, × scikit-learn (1 thread), agrees."""
    from threadpoolctl import threadpool_limits

    model = joblib.load(model_path)
    rows: list[list[str]] = []
    base: dict[int, float] = {}
    for threads in (2, 1):
        with threadpool_limits(threads):
            model.predict(x)
            base[threads] = _median_seconds(lambda: model.predict(x), reps)
    rows.append(["scikit-learn `predict`", "-", f"{base[2]:.3f}", f"{base[1]:.3f}", "1.00", "(the reference)"])
    array = np.ascontiguousarray(x.to_numpy(dtype=np.float64))

    def add(engine: str, convert: float, run: Callable[[int], Any], agree: str) -> None:
        for t in (2, 1):
            run(t)  # warm: the first call of --engine treelite also runs its check
        timed = {t: _median_seconds(lambda t=t: run(t), reps) for t in (2, 1)}
        rows.append(
            [engine, f"{convert:.2f}", f"{timed[2]:.3f}", f"{timed[1]:.3f}", f"{base[1] / timed[1]:.2f}", agree]
        )

    # skl2onnx + onnxruntime
    try:
        import onnxruntime as ort
        from skl2onnx import convert_sklearn
        from skl2onnx.common.data_types import FloatTensorType

        started = time.perf_counter()
        onx = convert_sklearn(
            model, initial_types=[("X", FloatTensorType([None, x.shape[1]]))], options={id(model): {"zipmap": False}}
        )
        sessions = {}
        for t in (2, 1):
            options = ort.SessionOptions()
            options.intra_op_num_threads = t
            sessions[t] = ort.InferenceSession(onx.SerializeToString(), options, providers=["CPUExecutionProvider"])
        convert = time.perf_counter() - started
        x32 = array.astype(np.float32)
        labels, proba = sessions[2].run(None, {"X": x32})
        add("skl2onnx + onnxruntime (float32)", convert, lambda t: sessions[t].run(None, {"X": x32}),
            _agreement(model, x, labels, proba))  # fmt: skip
    except ImportError as e:
        rows.append(["skl2onnx + onnxruntime", "-", "-", "-", "-", f"not installed ({e.name})"])
    except Exception as e:
        reason = re.sub(r"\s+", " ", str(e))[:60]
        rows.append(["skl2onnx + onnxruntime", "-", "-", "-", "-", f"conversion failed: {type(e).__name__}: {reason}"])

    # Treelite: GTIL (interpreter) and TL2cgen (compiled, as --engine treelite builds it)
    import treelite
    import treelite.gtil

    from worker import engine

    started = time.perf_counter()
    imported = treelite.sklearn.import_model(model)
    convert = time.perf_counter() - started
    as32 = type(model).__name__ in engine._FLOAT32_TREES
    features = array.astype(np.float32).astype(np.float64) if as32 else array

    def gtil(t: int) -> np.ndarray:
        out = np.asarray(treelite.gtil.predict(imported, features, nthread=t)).reshape(len(features), -1)
        return np.column_stack([1 - out[:, 0], out[:, 0]]) if out.shape[1] == 1 else out

    proba = gtil(2)
    add("Treelite GTIL", convert, gtil, _agreement(model, x, model.classes_[proba.argmax(1)], proba))
    nodes = engine._nodes(model)
    if nodes > engine.MAX_NODES:
        rows.append(["Treelite + TL2cgen (gcc), `--engine treelite`", "-", "-", "-", "-",
                     f"not compiled: {nodes:,} tree nodes, over `MAX_NODES` = {engine.MAX_NODES:,}"])  # fmt: skip
        return rows
    cache = tempfile.mkdtemp(prefix="velo-engine-")
    saved = {k: os.environ.get(k) for k in ("VELO_MODEL_CACHE", "VELO_THREADS")}
    os.environ["VELO_MODEL_CACHE"] = cache
    try:
        compiled: dict[int, Any] = {}
        started = time.perf_counter()
        for t in (2, 1):
            os.environ["VELO_THREADS"] = str(t)
            engine._held.clear()
            compiled[t] = engine.for_model(model, f"bench-{name}", name)  # the first builds, the second loads
            compiled[t].predict(x.iloc[:10])  # checked, and loaded with t threads
            if t == 2:
                convert = time.perf_counter() - started
        proba = compiled[2].predict_proba(x)

        def predict(t: int) -> np.ndarray:
            compiled[t]._last = None  # it keeps the last block's output (for --proba): not a predict
            return np.asarray(compiled[t].predict(x))

        add("Treelite + TL2cgen (gcc), `--engine treelite`", convert, predict,
            _agreement(model, x, compiled[2].predict(x), proba))  # fmt: skip
    finally:
        for k, v in saved.items():
            os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)
        engine._held.clear()
        shutil.rmtree(cache, ignore_errors=True)
    return rows


def velo_run(paths: list[Path], model_path: Path, engine: str, cache: str) -> tuple[float, float, str]:
    """`velo run --workers 2 --engine E` with the model cache ``cache``: (end to end s, after start-up s,
    what its run log says of the engine)."""
    state = tempfile.mkdtemp(prefix="velo-bench-")
    env = {**os.environ, "VELO_STATE_DIR": state, "VELO_MODEL_CACHE": cache}
    env.pop("REDIS_URL", None)
    cmd = [str(BIN / "velo"), "run", str(paths[0].parent), "--model", str(model_path), "--workers", "2"]
    started = time.perf_counter()
    subprocess.run([*cmd, "--engine", engine], env=env, check=True, capture_output=True)
    wall = time.perf_counter() - started
    try:
        said = "".join(p.read_text() for p in Path(state).glob("run-*.log"))
        lines = sorted(
            {line.split(" engine treelite: ", 1)[1] for line in said.splitlines() if "engine treelite:" in line}
        )
        return wall, batch_seconds(env), "; ".join(lines).replace(str(model_path), model_path.name)
    finally:
        shutil.rmtree(state, ignore_errors=True)


def spark_from_doc() -> dict[str, float]:
    """PySpark local[2]'s end-to-end medians per model from docs/BENCHMARKS.md's "Scoring throughput"."""
    text = DOC.read_text() if DOC.exists() else ""
    section = text.split("## Scoring throughput", 1)[-1].split("\n## ", 1)[0]
    found = {}
    for model, body in re.findall(r"^### (\w+)\n(.*?)(?=^### |\Z)", section, flags=re.S | re.M):
        m = re.search(r"^\| PySpark local\[2\] \| ([\d.]+) ", body, flags=re.M)
        if m:
            found[model] = float(m.group(1))
    return found


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--models", default="hgb,rf")
    ap.add_argument("--quick", action="store_true", help="8 files x 20,000 rows")
    ap.add_argument("--no-spark", action="store_true", help="take PySpark's times from docs/BENCHMARKS.md")
    ap.add_argument("--data", default=str(ROOT / "bench" / "data"))
    ap.add_argument("--out", default=str(DOC))
    args = ap.parse_args()
    rows = 20_000 if args.quick else 200_000
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    paths, model_paths = make_data(Path(args.data) / f"8x{rows}", 8, rows, models)
    x = pacsv.read_csv(paths[0]).select(FEATURES).to_pandas()

    tables = {m: engines(m, model_paths[m], x, args.reps) for m in models}
    for m, table in tables.items():
        for row in table:
            print(m, " | ".join(row), flush=True)

    spark = not args.no_spark and _has_pyspark()
    ends: dict[str, dict[str, list[float]]] = {m: {"sklearn": [], "treelite": [], "spark": []} for m in models}
    inner: dict[str, dict[str, list[float]]] = {m: {"sklearn": [], "treelite": []} for m in models}
    said: dict[str, str] = {}
    cache = tempfile.mkdtemp(prefix="velo-engine-cache-")
    first: dict[str, float] = {}
    for m in models:  # the first run of a model version compiles it; the repetitions load the library
        clean(paths)
        first[m] = velo_run(paths, model_paths[m], "treelite", cache)[0]
        print(f"{m} first velo run --engine treelite (compiles): {first[m]:.2f}s", flush=True)
    for rep in range(args.reps):
        for m in models:
            for eng in ("sklearn", "treelite"):
                clean(paths)
                wall, after, line = velo_run(paths, model_paths[m], eng, cache)
                ends[m][eng].append(wall)
                inner[m][eng].append(after)
                said[m] = line or said.get(m, "")
                print(f"{m} rep {rep + 1}/{args.reps} velo run --engine {eng}: {wall:.2f}s "
                      f"({after:.2f}s after start-up)", flush=True)  # fmt: skip
        if spark:
            clean(paths)
            for m, (end_to_end, _job) in spark_local(paths, {m: model_paths[m] for m in models}).items():
                ends[m]["spark"].append(end_to_end)
                print(f"{m} rep {rep + 1}/{args.reps} PySpark local[2]: {end_to_end:.2f}s", flush=True)
    clean(paths)
    shutil.rmtree(cache, ignore_errors=True)
    doc_spark = {} if spark or args.quick else spark_from_doc()  # the doc's are for the full data
    report(args, models, tables, ends, inner, said, doc_spark, 8 * rows, spark, first)
    print(f"bench.engine: {wall_time()}", flush=True)


def _has_pyspark() -> bool:
    try:
        import pyspark  # noqa: F401
    except ImportError:
        return False
    return shutil.which("java") is not None


def report(args, models, tables, ends, inner, said, doc_spark, total_rows, spark, first) -> None:
    import tl2cgen
    import treelite

    versions = [
        f"scikit-learn {sklearn.__version__}",
        f"treelite {treelite.__version__}",
        f"tl2cgen {tl2cgen.__version__}",
    ]
    for package in ("skl2onnx", "onnxruntime"):
        with contextlib.suppress(ImportError):
            versions.append(f"{package} {__import__(package).__version__}")
    gcc = subprocess.run(["gcc", "-dumpfullversion"], capture_output=True, text=True).stdout.strip() or "none"
    command = f"python -m bench.engine --reps {args.reps}" + (" --quick" if args.quick else "")
    if args.models != "hgb,rf":
        command += f" --models {args.models}"
    lines = [
        f"{machine()} {', '.join(versions)}, gcc {gcc}. A shared machine (other work ran meanwhile): "
        "compare ratios measured in the same run, not absolute times.",
        "",
        f"Command: `{command}` (part of `make bench`). bench/bench.py's data ({total_rows:,} rows in 8 CSV "
        "files, `id` + 20 float features) and models. **Engines** time `predict` alone on one file's "
        f"{total_rows // 8:,} rows in one process (medians of {args.reps}); × scikit-learn compares 1-thread "
        "times, what each process of `velo run --workers 2` gets; agrees: on all those rows, labels equal and "
        f"probabilities within {TOLERANCE:g} (what `--engine treelite` checks on a file's first 1,000 rows).",
    ]
    for m in models:
        lines += [
            "",
            f"### Engines: {m}",
            "",
            "| engine | convert or compile s | predict s, 2 threads | predict s, 1 thread | × scikit-learn | agrees |",
            "| --- | ---: | ---: | ---: | ---: | --- |",
            *(f"| {' | '.join(row)} |" for row in tables[m]),
        ]
    lines += [
        "",
        "The choice: `--engine treelite` is Treelite + TL2cgen, compiled with gcc, the one engine measured that "
        "agreed with scikit-learn and predicted faster on the HistGradientBoosting model (3.3e-16 apart, the "
        "same labels). skl2onnx 1.20 could not convert that model (its TreeEnsembleClassifier node refused "
        "this scikit-learn's HistGradientBoosting attributes); on the forest, onnxruntime agreed (float32, "
        "4e-7) but was no faster than scikit-learn's own predict, and Treelite's GTIL interpreter was slower. "
        "TL2cgen's own predictor runs every tree for one row before the next row: on the forest (122,564 nodes, "
        "~3.5 MB of code) it was slower than scikit-learn (0.5-0.9x at -O1/-Os/-O3; -O3, TL2cgen's default, took "
        "180-250 s to compile). `--engine treelite` calls TL2cgen's code through its own small C driver instead: "
        "one tree over a block of ~26,000 rows, then the next tree (the same sums in the same order), built "
        "with -Os, one translation unit per tree; models over `MAX_NODES` stay with scikit-learn.",
    ]
    source = (
        "PySpark local[2] ran in the same run (bench/spark_job.py)."
        if spark
        else "PySpark was **not** run here (`--no-spark`, or PySpark/Java missing): its end-to-end times are the "
        'medians in this file\'s "Scoring throughput" section (bench/bench.py, an earlier run on this machine), '
        "so the PySpark ratio mixes two runs."
    )
    lines += [
        "",
        "### End to end",
        "",
        f"`velo run --workers 2` on the 8 files, `--engine sklearn` and `--engine treelite` interleaved, {args.reps} "
        f"repetitions, medians (min-max); end to end is the command's wall time, start-up and check included. "
        "The library a model version compiles to is kept in the model cache, so the repetitions load it; "
        "the first run of each model, which compiles it, is timed before them (*first run*). "
        f"{source}",
        "",
        "| model | engine | end to end s (min-max) | after start-up s | × sklearn engine, end to end "
        "| × PySpark, end to end | target ≥ 3 × PySpark | what the run log says of the engine |",
        "| --- | --- | ---: | ---: | ---: | ---: | :---: | --- |",
    ]
    for m in models:
        pyspark = statistics.median(ends[m]["spark"]) if ends[m]["spark"] else doc_spark.get(m)
        base = statistics.median(ends[m]["sklearn"])
        for eng in ("sklearn", "treelite"):
            ts = ends[m][eng]
            med = statistics.median(ts)
            ratio = pyspark / med if pyspark else None
            verdict = "-" if ratio is None else ("met" if ratio >= 3 else f"missed ({ratio:.2f})")
            lines.append(
                f"| {m} | {eng} | {med:.2f} ({min(ts):.2f}-{max(ts):.2f}) | {statistics.median(inner[m][eng]):.2f} "
                f"| {base / med:.2f} | {f'{ratio:.2f}' if ratio else '-'} | {verdict} "
                f"| {said.get(m, '') if eng == 'treelite' else ''} |"
            )
        base_ratio = f"{pyspark / first[m]:.2f}" if pyspark else "-"
        lines.append(
            f"| {m} | treelite, first run (compiles) | {first[m]:.2f} | - | {base / first[m]:.2f} | {base_ratio} | | |"
        )
        if pyspark:
            lines.append(f"| {m} | PySpark local[2] | {pyspark:.2f} | - | - | 1.00 | | |")
    lines += ["", wall_time()]
    write_section("Tree engines", lines, Path(args.out))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
