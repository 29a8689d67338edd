"""Per-job overhead of a Velosiped worker, against RQ's own forking worker, in one run.

    python -m bench.overhead [--files 1000] [--reps 1] [--full]

Velosiped: N CSV files of 10 rows each (a local folder), dispatched to a private redis-server,
then `velo worker --burst` times the whole queue; the same command on an empty queue gives its
start-up, subtracted. Model loads are counted from the worker's log. With --full (about 30 s
more a repetition, and 3 repetitions unless --reps says otherwise), a baseline: RQ's default
forking `Worker` (`rq worker --burst`) on N no-op jobs (`time.sleep(0)`), start-up
subtracted the same way.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import joblib
import numpy as np
import pandas as pd
import redis
from rq import Queue
from sklearn.linear_model import LogisticRegression

from bench.common import machine, private_redis, wall_time, write_section

BIN = Path(sys.executable).parent


def timed(cmd: list[str], env: dict[str, str]) -> tuple[float, str]:
    started = time.perf_counter()
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
    return time.perf_counter() - started, out.stderr


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--files", type=int, default=1000)
    ap.add_argument("--reps", type=int, help="repetitions (default 1; 3 with --full)")
    ap.add_argument("--full", action="store_true", help="also RQ's forking worker on no-op jobs, the baseline")
    args = ap.parse_args()
    if args.reps is None:
        args.reps = 3 if args.full else 1
    with tempfile.TemporaryDirectory() as d, private_redis() as url:
        root = Path(d)
        features = [f"f{i}" for i in range(20)]
        rng = np.random.default_rng(0)
        train = pd.DataFrame(rng.normal(size=(2000, 20)), columns=features)
        joblib.dump(LogisticRegression().fit(train, train.f0 > 0), root / "m.joblib")
        data = root / "data"
        data.mkdir()
        for i in range(args.files):
            train.iloc[:10].to_csv(data / f"{i:05}.csv", index=False)
        env = {**os.environ, "REDIS_URL": url}
        velo, rq_jobs, loads = [], [], []
        for rep in range(args.reps):
            r = redis.Redis.from_url(url)
            r.flushall()
            for p in data.glob("*.out.*"):
                p.unlink()
            empty, _ = timed([str(BIN / "velo"), "worker", "--burst"], env)
            subprocess.run(
                # one job a file: this measures a job's overhead (groups: bench/small_files.py)
                [str(BIN / "velo"), "dispatch", str(data), "--model", str(root / "m.joblib"), "--group-size", "1"],
                env=env,
                capture_output=True,
                check=True,
            )
            full, log = timed([str(BIN / "velo"), "worker", "--burst"], env)
            velo.append((full - empty) / args.files * 1e3)
            loads.append(log.count(" loaded"))
            print(f"rep {rep + 1}: velo {velo[-1]:.2f} ms/job ({loads[-1]} model loads)", flush=True)
            if not args.full:
                continue
            r.flushall()
            q = Queue("bench", connection=r)
            rq_empty, _ = timed([str(BIN / "rq"), "worker", "--burst", "--url", url, "bench"], env)
            for _ in range(args.files):
                q.enqueue("time.sleep", 0)
            rq_full, _ = timed([str(BIN / "rq"), "worker", "--burst", "--url", url, "bench"], env)
            rq_jobs.append((rq_full - rq_empty) / args.files * 1e3)
            print(f"rep {rep + 1}: rq Worker {rq_jobs[-1]:.2f} ms/no-op job", flush=True)
    med = statistics.median
    command = f"python -m bench.overhead --files {args.files} --reps {args.reps}" + (" --full" if args.full else "")
    lines = [
        machine(),
        "",
        f"Command: `{command}`. {args.files:,} CSV files of "
        "10 rows x 20 features scored by one `velo worker --burst` (a logistic regression) against a private "
        f"redis-server; start-up (the same command on an empty queue) subtracted; {args.reps} run"
        f"{'s, medians' if args.reps != 1 else ''}.",
        "",
        "| worker | ms per job (min-max) | model loads for the whole queue |",
        "| --- | ---: | ---: |",
        f"| velo worker (RQ SimpleWorker, model kept) | {med(velo):.2f} ({min(velo):.2f}-{max(velo):.2f}) | "
        f"{med(loads):.0f} |",
    ]
    if rq_jobs:
        lines += [
            f"| baseline: `rq worker` (forking Worker), no-op job | {med(rq_jobs):.2f} ({min(rq_jobs):.2f}-"
            f"{max(rq_jobs):.2f}) | - |",
            "",
            f"A Velosiped job reads, scores and writes a real file and still costs {med(velo) / med(rq_jobs):.2f}x "
            "what RQ's forking worker spends on a job that does nothing.",
        ]
    else:
        lines += [
            "",
            f"Target: ≤ 20 ms per job and one model load for the whole queue: {med(velo):.2f} ms, "
            f"{med(loads):.0f} load{'s' if med(loads) != 1 else ''}. (`--full` adds RQ's forking worker on no-op "
            "jobs, the baseline.)",
        ]
    lines += ["", wall_time()]
    write_section("Per-job overhead", lines)
    print("\n".join(lines))
    print(f"bench.overhead: {wall_time()}", flush=True)


if __name__ == "__main__":
    main()
