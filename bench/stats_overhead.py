"""What gathering statistics (velosiped.sketch) costs a worker: ``score_stream`` on one CSV with and
without them.

    python -m bench.stats_overhead [--rows 200000] [--reps 5] [--models logreg,hgb]

One CSV of ``--rows`` rows of `id` + 20 normal features (bench.bench's), scored to an in-memory
sink by ``worker.scoring.score_stream`` in this process, ``--reps`` times each way, interleaved
(off, on, off, on, ...) so drift of the machine hits both alike; the median of each. Also: the
size of the file's statistics as stored in Redis (JSON bytes), and the time to merge the
statistics of 1,000 such files and compare them (what `velo report` does, Redis aside).
"""

from __future__ import annotations

import argparse
import io
import statistics
import tempfile
import time
from pathlib import Path

import joblib

from bench.bench import make_data
from bench.common import machine, wall_time, write_section
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=200_000)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--models", default="logreg,hgb", help="comma-separated: logreg, hgb, rf")
    ap.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()) / "velo-bench-stats")
    args = ap.parse_args()

    names = args.models.split(",")
    paths, models = make_data(args.dir / f"rows-{args.rows}", 1, args.rows, names)
    table = [
        "| model | without statistics (`--no-stats`) | with statistics (default) | overhead |",
        "|---|---:|---:|---:|",
    ]
    stats = Stats()
    for name in names:
        t_off, t_on, stats = measure(paths[0], joblib.load(models[name]), args.reps)
        off, on = (f"{t:.3f} s ({args.rows / t:,.0f} rows/s)" for t in (t_off, t_on))
        table.append(f"| {name} | {off} | {on} | **{(t_on / t_off - 1) * 100:+.1f} %** |")
    text = stats.to_json()

    from dispatcher.report import compare

    started = time.perf_counter()
    parsed = [Stats.from_json(text) for _ in range(1000)]
    merged = Stats().merge_all(parsed)
    compare(merged, Stats.from_json(text))
    merge_seconds = time.perf_counter() - started

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
        "buckets a feature whatever the file's size.",
        "",
        f"`velo report`'s work for a batch of 1,000 such files (decode and merge 1,000 files' statistics, "
        f"then compare with a reference), Redis aside: {merge_seconds:.2f} s; it grows with the files.",
        "",
        wall_time(),
    ]
    print("\n".join(lines))
    write_section("Statistics overhead", lines)


if __name__ == "__main__":
    main()
