"""The bare loops a user could write instead of Velosiped, run as a command of their own.

    python -m bench.loops pandas|pyarrow FOLDER MODEL [--processes N]

Scores every `part-*.csv` in FOLDER into `part-*.out.csv` (all input columns plus `prediction`)
and prints the seconds from the first file started to the last one done. With --processes N
above 1 the files go to a pool of N processes, each capped at cores / N BLAS/OpenMP threads
(as a careful user would: no N x N threads); this process never predicts before forking.
"""

from __future__ import annotations

import argparse
import csv
import os
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import joblib
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
from threadpoolctl import threadpool_limits

_models: dict[Path, object] = {}


def cached_model(path: Path):
    """The model, loaded once per pool process (as a careful user would), not once per file."""
    if path not in _models:
        _models[path] = joblib.load(path)
    return _models[path]


def pandas_file(args: tuple[Path, Path]) -> tuple[float, float]:
    path, model_path = args
    model = cached_model(model_path)
    started = time.time()  # after the model's load: start-up, as for the other contenders
    df = pd.read_csv(path)
    df["prediction"] = model.predict(df[model.feature_names_in_])
    df.to_csv(path.with_name(path.name.replace(".csv", ".out.csv")), index=False)
    return started, time.time()


def pyarrow_file(args: tuple[Path, Path]) -> tuple[float, float]:
    """The best bare loop: pyarrow reads blocks of text (parsing floats costs twice as much as
    splitting cells), only the features become float64, pyarrow writes the cells back as read."""
    path, model_path = args
    model = cached_model(model_path)
    started = time.time()  # after the model's load: start-up, as for the other contenders
    out = path.with_name(path.name.replace(".csv", ".out.csv"))
    with open(path, "rb") as f:
        header = next(csv.reader([f.readline().decode()]))
    reader = pacsv.open_csv(
        path,
        read_options=pacsv.ReadOptions(block_size=2 << 20),  # the fastest size here, as for Velosiped
        convert_options=pacsv.ConvertOptions(column_types={c: pa.string() for c in header}),
    )
    names = [*header, "prediction"]
    with open(out, "wb") as dst:
        dst.write((",".join(names) + "\n").encode())
        for batch in reader:
            x = pd.DataFrame({f: pc.cast(batch.column(f), pa.float64()).to_numpy() for f in model.feature_names_in_})
            table = pa.Table.from_arrays([*batch.columns, pa.array(model.predict(x))], names=names)
            pacsv.write_csv(table, dst, pacsv.WriteOptions(include_header=False, quoting_style="none"))
    return started, time.time()


def limit_threads(threads: int) -> None:
    """Cap BLAS/OpenMP threads, also for libraries not loaded yet (scikit-learn loads with the model)."""
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(threads)
    threadpool_limits(threads)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("loop", choices=["pandas", "pyarrow"])
    ap.add_argument("folder", type=Path)
    ap.add_argument("model", type=Path)
    ap.add_argument("--processes", type=int, default=1)
    args = ap.parse_args()
    fn = pandas_file if args.loop == "pandas" else pyarrow_file
    jobs = [(p, args.model) for p in sorted(args.folder.glob("part-*.csv")) if ".out." not in p.name]
    threads = max(1, (os.cpu_count() or 1) // args.processes)
    if args.processes == 1:
        limit_threads(threads)
        spans = [fn(job) for job in jobs]
    else:
        with ProcessPoolExecutor(args.processes, initializer=limit_threads, initargs=(threads,)) as pool:
            spans = list(pool.map(fn, jobs))
    print(f"first file started to last file done: {max(e for _, e in spans) - min(s for s, _ in spans):.3f}")


if __name__ == "__main__":
    main()
