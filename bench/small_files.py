"""Many small files: grouped jobs (`--group-size`) against the bare per-file loop, and at scale on S3.

    python -m bench.small_files [--files 2000] [--reps 3] [--s3-files 10000 100000]

1. A local folder of N CSV files of 10 rows x 20 features (a logistic regression): `velo run
   --workers 2` (embedded Redis; small files in groups of 64, the default), the same with
   `--group-size 1` (one job a file), and the bare 2-process pyarrow loop (bench/loops.py), each
   timed as a whole command (start-up included), median of --reps runs, in one run.
2. For each count in --s3-files: that many such files on moto's S3 server (its own process),
   `velo dispatch` to a private redis-server then `velo worker --burst --processes 2`: files/s
   of dispatch + scoring, and Redis bytes per queued file after the dispatch (INFO
   used_memory, MEMORY USAGE of the keys it wrote), grouped and, dispatch only, one job a file.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import joblib
import numpy as np
import pandas as pd
import redis

from bench.bench import _creds, s3_fleet
from bench.common import machine, wall_time, write_section

BIN = Path(sys.executable).parent
ROOT = Path(__file__).resolve().parent.parent
PROCS = ("--processes", "2")


def make_files(folder: Path, files: int, root: Path) -> Path:
    """``files`` CSVs of 10 rows x 20 features in ``folder``; the model's path."""
    features = [f"f{i}" for i in range(20)]
    train = pd.DataFrame(np.random.default_rng(0).normal(size=(2000, 20)), columns=features)
    from sklearn.linear_model import LogisticRegression

    model = root / "m.joblib"
    joblib.dump(LogisticRegression().fit(train, train.f0 > 0), model)
    folder.mkdir(parents=True, exist_ok=True)
    text = train.iloc[:10].to_csv(index=False)
    for i in range(files):
        (folder / f"part-{i:06}.csv").write_text(text)
    return model


def clean(folder: Path) -> None:
    for p in folder.iterdir():
        if ".out." in p.name:
            p.unlink()


def timed(cmd: list[str], env: dict[str, str] | None = None) -> float:
    started = time.perf_counter()
    subprocess.run(cmd, env=env, check=True, capture_output=True, cwd=ROOT)
    return time.perf_counter() - started


def velo_run(folder: Path, model: Path, *extra: str) -> float:
    state = tempfile.mkdtemp(prefix="velo-bench-")
    env = {**os.environ, "VELO_STATE_DIR": state}
    env.pop("REDIS_URL", None)
    try:
        return timed([str(BIN / "velo"), "run", str(folder), "--model", str(model), "--workers", "2", *extra], env)
    finally:
        shutil.rmtree(state, ignore_errors=True)


def local(files: int, reps: int, root: Path) -> dict[str, list[float]]:
    folder = root / "small"
    model = make_files(folder, files, root)
    cases = {
        "grouped": lambda: velo_run(folder, model),
        "one job a file": lambda: velo_run(folder, model, "--group-size", "1"),
        "loop": lambda: timed([sys.executable, "-m", "bench.loops", "pyarrow", str(folder), str(model), *PROCS]),
    }
    times: dict[str, list[float]] = {k: [] for k in cases}
    for rep in range(reps):
        for name, case in cases.items():  # interleaved: the shared machine's noise falls on each alike
            clean(folder)
            times[name].append(case())
            print(f"rep {rep + 1}: {name} {times[name][-1]:.2f} s", flush=True)
    return times


def upload(env: dict[str, str], files: int, text: bytes, prefix: str) -> None:
    import boto3

    s3 = boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"], **_creds(env))

    def put(i: int) -> None:
        s3.put_object(Bucket="bench", Key=f"{prefix}part-{i:06}.csv", Body=text)

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(put, range(files)))


def redis_bytes(r: redis.Redis, before: int, files: int) -> dict[str, float]:
    used = r.info("memory")["used_memory"] - before
    out = {"bytes": used / files}
    for name, pattern in (("payloads", "velo:payloads"), ("files hash", "velo:batch:*:files"), ("queue", "rq:queue:*")):
        out[name] = sum(r.memory_usage(k) or 0 for k in r.scan_iter(pattern, count=1000)) / files
    out["jobs"] = sum(r.memory_usage(k) or 0 for k in r.scan_iter("rq:job:*", count=1000)) / files
    return out


def on_s3(counts: list[int], root: Path) -> list[dict[str, float]]:
    model = make_files(root / "tmpl", 1, root)
    text = (root / "tmpl" / "part-000000.csv").read_bytes()
    results = []
    with s3_fleet([]) as (url, s3_env):
        env = {**os.environ, **s3_env, "REDIS_URL": url}
        r = redis.Redis.from_url(url)
        velo = str(BIN / "velo")
        for n in counts:
            prefix = f"n{n}/"
            upload(s3_env, n, text, prefix)
            source = f"s3://bench/{prefix}"
            # Redis per queued file, one job a file (dispatch only; then forgotten)
            r.flushall()
            before = r.info("memory")["used_memory"]
            timed([velo, "dispatch", source, "--model", str(model), "--group-size", "1"], env)
            alone = redis_bytes(r, before, n)
            r.flushall()
            before = r.info("memory")["used_memory"]
            dispatch_s = timed([velo, "dispatch", source, "--model", str(model)], env)
            grouped = redis_bytes(r, before, n)
            score_s = timed([velo, "worker", "--burst", "--processes", "2", "--model", str(model)], env)
            done = subprocess.run([velo, "status", "--json"], env=env, capture_output=True, check=True, text=True)
            result = {
                "files": n,
                "dispatch_s": dispatch_s,
                "score_s": score_s,
                "files_per_s": n / (dispatch_s + score_s),
                "alone_bytes": alone["bytes"],
                **{f"grouped_{k}": v for k, v in grouped.items()},
                "done": float(json.loads(done.stdout)["batches"][0]["done"]),
            }
            results.append(result)
            print(result, flush=True)
            r.flushall()
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--files", type=int, default=2000, help="local files (0: skip the local part)")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--s3-files", nargs="*", default=["10000", "100000"], help="file counts on S3 (none: skip it)")
    args = ap.parse_args()
    counts = [int(c) for arg in args.s3_files for c in arg.split(",") if c.strip()]
    with tempfile.TemporaryDirectory() as d:
        root = Path(d)
        if args.files:
            report_local(local(args.files, args.reps, root), args.files, args.reps)
        if counts:
            report_s3(on_s3(counts, root), counts)


def report_local(times: dict[str, list[float]], files: int, reps: int) -> None:
    med = {k: statistics.median(v) for k, v in times.items()}

    def cell(k: str) -> str:
        return f"{med[k]:.2f} ({min(times[k]):.2f}-{max(times[k]):.2f})"

    ratio = med["loop"] / med["grouped"]
    lines = [
        machine(),
        "",
        f"Command: `python -m bench.small_files --files {files} --reps {reps} --s3-files` (the local part; "
        f"`make bench` runs both). {files:,} CSV files of 10 rows x 20 features, a logistic regression; each "
        f"contender timed as a whole command (start-up included), {reps} runs interleaved, medians (min-max); "
        "the ratios, measured in the same run, are what to read.",
        "",
        "| contender | seconds | ms a file | vs the bare loop |",
        "| --- | ---: | ---: | ---: |",
    ]
    for k, label in (
        ("loop", "bare pyarrow loop, 2-process pool (bench/loops.py)"),
        ("one job a file", "`velo run --workers 2 --group-size 1` (one job a file)"),
        ("grouped", "`velo run --workers 2` (groups of up to 64 small files)"),
    ):
        lines.append(f"| {label} | {cell(k)} | {med[k] / files * 1e3:.2f} | {med['loop'] / med[k]:.2f}x |")
    lines += [
        "",
        f"Target: `velo run --workers 2` ≥ 1.5x the bare 2-process per-file loop: {ratio:.2f}x "
        f"({'met' if ratio >= 1.5 else f'missed by {1.5 - ratio:.2f}'}). One job a file is "
        f"{med['loop'] / med['one job a file']:.2f}x.",
        "",
        wall_time(),
    ]
    write_section("Many small files", lines)
    print("\n".join(lines), flush=True)


def report_s3(s3: list[dict[str, float]], counts: list[int]) -> None:
    on = " ".join(map(str, counts))
    lines = [
        machine(),
        "",
        f"Command: `python -m bench.small_files --files 0 --s3-files {on}` (the S3 part; `make bench` runs "
        "both). On moto's S3 server (one Python process on loopback, sharing the 2 cores: slower than a real "
        "endpoint): 10-row CSV files as above, `velo dispatch` to a private redis-server, then `velo worker "
        "--burst --processes 2`, one run each.",
        "",
        "| files | dispatch s | scoring s | files/s (dispatch + scoring) | Redis B per queued file, grouped "
        "| of which payloads / file states / job hashes | one job a file |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for x in s3:
        lines.append(
            f"| {x['files']:,.0f} | {x['dispatch_s']:.1f} | {x['score_s']:.1f} | {x['files_per_s']:.0f} | "
            f"{x['grouped_bytes']:.0f} | {x['grouped_payloads']:.0f} / {x['grouped_files hash']:.0f} / "
            f"{x['grouped_jobs']:.0f} | {x['alone_bytes']:.0f} |"
        )
    if len(s3) > 1:
        a, b = s3[0], s3[-1]
        lines += [
            "",
            f"Linear in the count: {b['files'] / a['files']:.0f}x the files took "
            f"{(b['dispatch_s'] + b['score_s']) / (a['dispatch_s'] + a['score_s']):.2f}x the time "
            f"({a['files_per_s']:.0f} and {b['files_per_s']:.0f} files/s).",
        ]
    lines += [
        "",
        f"Target ≤ 300 B of Redis per queued small file: {max(x['grouped_bytes'] for x in s3):.0f} B.",
        "",
        wall_time(),
    ]
    write_section("Many small files on S3", lines)
    print("\n".join(lines), flush=True)


if __name__ == "__main__":
    main()
