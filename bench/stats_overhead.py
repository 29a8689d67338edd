"""What gathering statistics (velosiped.sketch) costs a worker: ``score_stream`` on one CSV with and
without them.

    python -m bench.stats_overhead [--rows 200000] [--reps 5] [--models logreg,hgb]

One CSV of ``--rows`` rows of `id` + 20 normal features (bench.bench's), scored to an in-memory
sink by ``worker.scoring.score_stream`` in this process, ``--reps`` times each way, interleaved
(off, on, off, on, ...) so drift of the machine hits both alike; the median of each. Also: the
size of the file's statistics as stored in Redis (JSON bytes), and the time to merge the
statistics of ``--files`` such files from Redis and compare them, as `velo report` does.
"""

from __future__ import annotations

import argparse
import io
import statistics
import time
from pathlib import Path

import joblib
import numpy as np

from bench.bench import make_data
from bench.common import machine, private_redis, wall_time, write_section
from velosiped.sketch import Stats
from worker.scoring import score_stream


def score(path: Path, model: object, stats: Stats | None) -> float:
    started = time.perf_counter()
    with open(path, "rb") as src:
        score_stream(src, io.BytesIO(), model, name=str(path), stats=stats)
    return time.perf_counter() - started


def measure(path: Path, model: object, reps: int) -> tuple[float, float, Stats]:
    """Median seconds without and with statistics, runs interleaved; the last run's statistics."""
    score(path, model, Stats())  # warm: page cache, imports, the model's first call
    off: list[float] = []
    on: list[float] = []
    stats = Stats()
    for _ in range(reps):
        off.append(score(path, model, None))
        stats = Stats()
        on.append(score(path, model, stats))
    return statistics.median(off), statistics.median(on), stats


def report_seconds(stats: Stats, files: int) -> tuple[float, float]:
    """Seconds `velo report` takes to load and compare a batch of ``files`` files of ``stats`` each
    with a one-file reference, in a private redis-server: the first time, then with the merge kept."""
    from dispatcher.report import compare
    from velosiped import keys
    from velosiped.connection import connect
    from velosiped.sketch import load_batch, store

    with private_redis() as url:
        redis = connect(url)
        for batch, n in (("cur", files), ("ref", 1)):
            redis.hset(keys.batch(batch), "total", n)
            for i in range(n):
                store(redis, batch, f"/data/{batch}/{i}.csv", stats)
        times = []
        for _ in range(2):
            started = time.perf_counter()
            compare(load_batch(redis, "cur"), load_batch(redis, "ref"))
            times.append(time.perf_counter() - started)
        return times[0], times[1]


def bytes_by_rows(rows: tuple[int, ...] = (1_000, 20_000, 200_000, 2_000_000)) -> str:
    """Stored bytes of a file's statistics by its rows (20 normal features, a 0/1 prediction)."""
    rng = np.random.default_rng(0)
    sizes = []
    for n in rows:
        stats = Stats()
        stats.start([f"f{i}" for i in range(20)], labels=True)
        for start in range(0, n, 10_000):
            x = rng.normal(size=(min(10_000, n - start), 20)).round(6)
            stats.update(list(x.T), (x[:, 0] > 0).astype(int))
        sizes.append(f"{n:,} rows: {len(stats.to_json()) / 1000:.1f} KB")
    return "; ".join(sizes)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=200_000)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--models", default="logreg,hgb", help="comma-separated: logreg, hgb, rf")
    ap.add_argument("--files", type=int, default=1000, help="files of the batch `velo report` merges")
    ap.add_argument("--data", type=Path, default=Path(__file__).resolve().parent / "data" / "stats")
    args = ap.parse_args()

    names = args.models.split(",")
    paths, models = make_data(args.data / f"rows-{args.rows}", 1, args.rows, names)
    table = [
        "| model | without statistics (the default) | with statistics (`--stats`) | overhead |",
        "|---|---:|---:|---:|",
    ]
    stats = Stats()
    for name in names:
        t_off, t_on, stats = measure(paths[0], joblib.load(models[name]), args.reps)
        off, on = (f"{t:.3f} s ({args.rows / t:,.0f} rows/s)" for t in (t_off, t_on))
        table.append(f"| {name} | {off} | {on} | **{(t_on / t_off - 1) * 100:+.1f} %** |")
    text = stats.to_json()

    cold, warm = report_seconds(stats, args.files)

    lines = [
        machine(),
        "",
        f"`python -m bench.stats_overhead --rows {args.rows} --reps {args.reps} --models {args.models}`: "
        f"`worker.scoring.score_stream` on one CSV of {args.rows:,} rows × 20 normal features "
        f"({paths[0].stat().st_size / 1e6:.0f} MB) to an in-memory output, in one process; median of "
        f"{args.reps}, runs with and without statistics interleaved.",
        "",
        *table,
        "",
        f"Stored per file (JSON in `velo:batch:<id>:stats`: 20 features and the prediction's class counts): "
        f"**{len(text):,} bytes** for this file ({len(text) / 20:,.0f} bytes a feature); at most 2,048 "
        "buckets a feature whatever the file's size. By the file's rows (the same features, statistics "
        f"gathered without scoring): {bytes_by_rows()}.",
        "",
        f"`velo report`'s work (read, merge, compare with a one-file reference; printing aside) for a batch of "
        f"{args.files:,} such files in a private redis-server: {cold:.2f} s the first time (it grows with the "
        f"files), {warm:.3f} s once its merge is kept (until a file of either batch is stored or dropped).",
        "",
        wall_time(),
    ]
    print("\n".join(lines))
    write_section("Statistics overhead", lines)


if __name__ == "__main__":
    main()
