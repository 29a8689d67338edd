"""What gathering statistics (velosiped.sketch) costs: in a worker's scoring loop, and end to end.

    python -m bench.stats_overhead [--rows 200000] [--reps 5] [--models logreg,hgb] [--run-reps 3]

In one process: one CSV of ``--rows`` rows of `id` + 20 normal features (bench.bench's), scored to
an in-memory sink by ``worker.scoring.score_stream``, ``--reps`` times each way, interleaved (off,
on, off, on, ...) so drift of the machine hits both alike; the median of each.

End to end (what the target is set on): `velo run --workers 2` on bench.bench's 8 x 200,000-row
set (the same files), with statistics (the default) and with `--no-stats`, ``--run-reps`` times
each, interleaved (the order alternating each repetition); the median of each, end to end (the
command's wall time) and after start-up (the batch's own clock in `velo status`), the model
``--run-model``.

Also: the bytes a file's statistics take in Redis (the stored JSON, and MEMORY USAGE of a batch
holding only it) for files of 10, 1,000 and 200,000 rows, and the time to merge the statistics
of ``--files`` such files from Redis and compare them, as `velo report` does.
"""

from __future__ import annotations

import argparse
import io
import resource
import statistics
import time
from pathlib import Path

import joblib
import numpy as np
from threadpoolctl import threadpool_limits

from bench.bench import ROOT, clean, make_data, velo_run
from bench.common import machine, private_redis, wall_time, write_section
from velosiped.sketch import STORED_BUCKETS, Stats
from worker.scoring import score_stream


def score(path: Path, model: object, stats: Stats | None) -> tuple[float, float]:
    """Wall and CPU seconds (this process's, every thread's) of scoring ``path`` once."""
    started, cpu = time.perf_counter(), time.process_time()
    with open(path, "rb") as src:
        score_stream(src, io.BytesIO(), model, name=str(path), stats=stats)
    return time.perf_counter() - started, time.process_time() - cpu


def measure(path: Path, model: object, reps: int) -> tuple[tuple[float, float], tuple[float, float], Stats]:
    """Median (wall, CPU) seconds without and with statistics, runs interleaved; the last run's statistics."""
    score(path, model, Stats())  # warm: page cache, imports, the model's first call
    off: list[tuple[float, float]] = []
    on: list[tuple[float, float]] = []
    stats = Stats()
    for _ in range(reps):
        off.append(score(path, model, None))
        stats = Stats()
        on.append(score(path, model, stats))
    return _medians(off), _medians(on), stats


def _medians(runs: list[tuple[float, float]]) -> tuple[float, float]:
    return statistics.median(r[0] for r in runs), statistics.median(r[1] for r in runs)


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


def stats_of_rows(rows: int, seed: int = 0) -> Stats:
    """A file's statistics (20 normal features, a 0/1 prediction) gathered without scoring, in blocks
    as a worker's (about 11,000 rows of these features)."""
    rng = np.random.default_rng(seed)
    stats = Stats()
    stats.start([f"f{i}" for i in range(20)], labels=True)
    for start in range(0, rows, 11_000):
        x = rng.normal(size=(20, min(11_000, rows - start))).round(6)
        stats.update(x, (x[0] > 0).astype(int))
    return stats


def redis_bytes(rows: tuple[int, ...] = (10, 1_000, 200_000)) -> list[str]:
    """Per file of ``rows`` rows: its entry's JSON bytes, and MEMORY USAGE of a batch's stats hash
    holding it alone (hash and field name included), in a private redis-server."""
    from velosiped import keys
    from velosiped.connection import connect
    from velosiped.sketch import store

    lines = [
        "| file's rows | JSON stored | Redis MEMORY USAGE of the batch's stats hash with it alone |",
        "|---:|---:|---:|",
    ]
    with private_redis() as url:
        redis = connect(url)
        for n in rows:
            batch = f"rows-{n}"
            redis.hset(keys.batch(batch), "total", 1)
            store(redis, batch, f"/data/{batch}/part-00.csv", stats_of_rows(n))
            stored = redis.hstrlen(keys.batch_stats(batch), f"/data/{batch}/part-00.csv")
            usage = redis.memory_usage(keys.batch_stats(batch), samples=0)
            lines.append(f"| {n:,} | {stored:,} bytes | {usage:,} bytes |")
    return lines


def children_cpu() -> float:
    """CPU seconds (user + system) of the child processes waited for so far (`velo run` and its workers)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def end_to_end(model: str, reps: int) -> tuple[list[str], float, float]:
    """`velo run --workers 2` on the 8 x 200,000 set with and without statistics, interleaved; the
    table's lines, the overhead end to end (a ratio less one), and the widest spread of one way's
    runs (max - min, a share of its median)."""
    paths, models = make_data(ROOT / "bench" / "data" / "8x200000", 8, 200_000, [model])
    runs = {"with statistics (the default)": velo_run(2), "`--no-stats`": velo_run(2, "--no-stats")}
    wall: dict[str, list[float]] = {name: [] for name in runs}
    inner: dict[str, list[float]] = {name: [] for name in runs}
    cpu: dict[str, list[float]] = {name: [] for name in runs}
    for rep in range(reps):
        for name in list(runs) if rep % 2 == 0 else list(runs)[::-1]:
            clean(paths)
            started, used = time.perf_counter(), children_cpu()
            after_startup = runs[name](paths, models[model])
            wall[name].append(time.perf_counter() - started)
            cpu[name].append(children_cpu() - used)
            inner[name].append(after_startup() if callable(after_startup) else float(after_startup or 0))
            print(
                f"velo run rep {rep + 1}/{reps} {name}: {wall[name][-1]:.2f} s, {inner[name][-1]:.2f} s after start-up",
                flush=True,
            )
    clean(paths)
    on, off = runs
    rows = 8 * 200_000
    lines = [
        "| `velo run --workers 2`, 8 × 200,000 rows | end to end s (min-max) | rows/s | after start-up s (min-max) "
        "| rows/s | CPU s, every process (min-max) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name in (off, on):
        w, i, c = statistics.median(wall[name]), statistics.median(inner[name]), statistics.median(cpu[name])
        lines.append(
            f"| {name} | {w:.2f} ({min(wall[name]):.2f}-{max(wall[name]):.2f}) | {rows / w:,.0f} "
            f"| {i:.2f} ({min(inner[name]):.2f}-{max(inner[name]):.2f}) | {rows / i:,.0f} "
            f"| {c:.2f} ({min(cpu[name]):.2f}-{max(cpu[name]):.2f}) |"
        )
    ratios = [statistics.median(d[on]) / statistics.median(d[off]) - 1 for d in (wall, inner, cpu)]
    spread = max((max(wall[name]) - min(wall[name])) / statistics.median(wall[name]) for name in runs)
    lines.append(
        "| overhead of statistics | **{:+.1f} %** | | **{:+.1f} %** | | **{:+.1f} %** |".format(
            *(r * 100 for r in ratios)
        )
    )
    return lines, ratios[0], spread


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=200_000)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--models", default="logreg,hgb", help="comma-separated: logreg, hgb, rf")
    ap.add_argument("--run-reps", type=int, default=3, help="`velo run` repetitions each way (0: none)")
    ap.add_argument("--run-model", default="logreg", help="the model `velo run` scores")
    ap.add_argument("--files", type=int, default=1000, help="files of the batch `velo report` merges")
    ap.add_argument("--data", type=Path, default=Path(__file__).resolve().parent / "data" / "stats")
    args = ap.parse_args()

    names = args.models.split(",")
    paths, models = make_data(args.data / f"rows-{args.rows}", 1, args.rows, names)
    table = [
        "| model | without statistics (`--no-stats`), wall | with statistics (the default), wall | overhead, wall "
        "| without, CPU | with, CPU | overhead, CPU |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    stats = Stats()
    for name in names:
        with threadpool_limits(1):  # one thread each, as a worker of `--processes` = cores has: OpenMP
            # threads spinning for a core others hold would measure the machine's load, not the statistics
            (t_off, c_off), (t_on, c_on), stats = measure(paths[0], joblib.load(models[name]), args.reps)
        off, on = (f"{t:.3f} s ({args.rows / t:,.0f} rows/s)" for t in (t_off, t_on))
        table.append(
            f"| {name} | {off} | {on} | **{(t_on / t_off - 1) * 100:+.1f} %** | {c_off:.3f} s | {c_on:.3f} s "
            f"| **{(c_on / c_off - 1) * 100:+.1f} %** |"
        )
    run_lines, overhead, spread = end_to_end(args.run_model, args.run_reps) if args.run_reps else ([], 0.0, 0.0)
    sizes = redis_bytes()
    cold, warm = report_seconds(stats, args.files)

    command = (
        f"python -m bench.stats_overhead --rows {args.rows} --reps {args.reps} --models {args.models} "
        f"--run-reps {args.run_reps}"
    )
    lines = [
        machine() + " A machine shared with other work while it ran: single runs vary by ±10 % or more; the "
        "medians and ratios below are of runs interleaved in the same invocation.",
        "",
        f"`{command}` (part of `make bench`).",
    ]
    if run_lines:
        verdict = "met" if overhead <= 0.03 else f"**missed** by {(overhead - 0.03) * 100:.1f} points"
        if spread > 0.03:
            verdict += (
                f" on the medians; but one way's runs spread over {spread * 100:.0f} % of their median, wider than "
                "the target, so this verdict is within the machine's noise: the CPU column (every process's "
                "CPU seconds) is the steadier measure"
            )
        lines += [
            "",
            f"End to end, the target (≤ 3 % of scoring throughput): `velo run --workers 2` on `bench.bench`'s "
            f"8 CSV files × 200,000 rows ({args.run_model}), with statistics and with `--no-stats`, "
            f"{args.run_reps} runs each, interleaved (the order alternating); medians. Target {verdict}.",
            "",
            *run_lines,
        ]
    lines += [
        "",
        f"In one process: `worker.scoring.score_stream` on one CSV of {args.rows:,} rows × 20 normal features "
        f"({paths[0].stat().st_size / 1e6:.0f} MB) to an in-memory output; median of {args.reps}, runs with "
        "and without statistics interleaved.",
        "",
        *table,
        "",
        "Kept in Redis per file (`velo:batch:<id>:stats`, 20 features and the prediction's class counts; at "
        f"most {STORED_BUCKETS} buckets a feature, whatever the file's size):",
        "",
        *sizes,
        "",
        f"`velo report`'s work (read, merge, compare with a one-file reference; printing aside) for a batch of "
        f"{args.files:,} files of {args.rows:,} rows in a private redis-server: {cold:.2f} s the first time (it "
        f"grows with the files), {warm:.3f} s once its merge is kept (until a file of either batch is stored or "
        "dropped).",
        "",
        wall_time(),
    ]
    print("\n".join(lines))
    write_section("Statistics overhead", lines)


if __name__ == "__main__":
    main()
