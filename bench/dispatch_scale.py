"""How fast the dispatcher enqueues, and what a queued file costs in Redis.

    python -m bench.dispatch_scale [--files 200000] [--reps 3] [--million]

A synthetic listing (no S3: the point is the dispatcher and the queue) of N files is planned
and enqueued into a private redis-server; reports ms per file, Redis bytes per queued file
(INFO memory) and where they go, and the time `velo status` needs to describe the batch
(counters, not scans).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from unittest import mock

import redis

from bench.common import machine, private_redis, write_section
from dispatcher.enqueue import enqueue_batch, payload_for
from dispatcher.plan import Options, Planned, plan
from dispatcher.status import describe
from velosiped import storage
from velosiped.jobs import TASK, job_id
from velosiped.rqapi import make_queue
from velosiped.storage import ObjectInfo

BIN = Path(sys.executable).parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--files", type=int, default=200_000)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--million", action="store_true", help="then one run of 1,000,000 files")
    args = ap.parse_args()
    with private_redis() as url:
        run(redis.Redis.from_url(url), url, args)


OPTS = Options(model="s3://bucket/models/model.joblib", model_version="etag:0123456789abcdef0123456789abcdef")


def flush(r: redis.Redis) -> None:
    """Empty Redis in the background (a million jobs take longer to free than a socket waits) and
    wait until the memory is given back, so the next INFO memory reading starts from empty."""
    r.flushall(asynchronous=True)
    while r.info("memory").get("lazyfree_pending_objects", 0):
        time.sleep(0.1)


def listing(files: int) -> Iterator[ObjectInfo]:
    """What S3 would list: dated keys with ETags (no S3: the point is the dispatcher and the queue)."""
    for i in range(files):
        yield ObjectInfo(f"s3://bucket/in/2026/11/23/part-{i:07}.csv", f"etag:{i:032x}", 1000)


def dispatch_once(r: redis.Redis, url: str, files: int) -> dict[str, float]:
    """Plan a synthetic listing of ``files`` keys (the real `plan`), enqueue it, describe it."""
    flush(r)
    before = r.info("memory")["used_memory"]
    started = time.perf_counter()
    with mock.patch.object(storage, "list_files", lambda *a, **k: listing(files)):
        planned = list(plan("s3://bucket/in/", OPTS))
    listed = time.perf_counter()
    batch = enqueue_batch(r, "velo", "s3://bucket/in/", OPTS, planned)
    done = time.perf_counter()
    used = r.info("memory")["used_memory"] - before
    job = next(r.scan_iter("rq:job:*", count=1000))
    started_status = time.perf_counter()
    describe(r, batch.id)
    status_s = time.perf_counter() - started_status
    command = time.perf_counter()
    subprocess.run([str(BIN / "velo"), "status", batch.id, "--json", "--redis", url], check=True, capture_output=True)
    return {
        "files": files,
        "plan_ms": (listed - started) / files * 1e3,
        "enqueue_ms": (done - listed) / files * 1e3,
        "total_s": done - started,
        "bytes": used / files,
        "job_bytes": float(r.memory_usage(job) or 0),
        "job_encoding": r.object("encoding", job).decode(),
        "payloads_bytes": float(r.memory_usage("velo:payloads") or 0) / files,
        "files_hash_bytes": float(r.memory_usage(f"velo:batch:{batch.id}:files") or 0) / files,
        "queue_bytes": float(r.memory_usage("rq:queue:velo") or 0) / files,
        "status_ms": status_s * 1e3,
        "status_command_s": time.perf_counter() - command,
    }


def run(r: redis.Redis, url: str, args: argparse.Namespace) -> None:
    runs = []
    for rep in range(args.reps):
        runs.append(dispatch_once(r, url, args.files))
        print(f"rep {rep + 1}: {runs[-1]}", flush=True)
    million = dispatch_once(r, url, 1_000_000) if args.million else None
    if million:
        print(f"1,000,000: {million}", flush=True)
    base_files = min(args.files, 5_000)  # a per-file rate: 5,000 files settle it
    base = baseline(r, list(listing(base_files)))
    numbers = [k for k, v in runs[0].items() if not isinstance(v, str)]
    med = {k: statistics.median(run[k] for run in runs) for k in numbers} | {"job_encoding": runs[0]["job_encoding"]}
    lo = {k: min(run[k] for run in runs) for k in numbers}
    hi = {k: max(run[k] for run in runs) for k in numbers}

    def row(m: dict[str, float], spread: str) -> str:
        per_file = m["plan_ms"] + m["enqueue_ms"]
        return (
            f"| {m['files']:,.0f} | {spread} | {m['plan_ms']:.3f} | {m['enqueue_ms']:.3f} | {per_file * 1000:.0f} "
            f"| {m['bytes']:,.0f} | {m['status_ms']:.2f} ms | {m['status_command_s']:.2f} s |"
        )

    command = f"python -m bench.dispatch_scale --files {args.files} --reps {args.reps}{' --million' if million else ''}"
    lines = [
        machine(),
        "",
        f"Command: `{command}`. A synthetic listing of S3 keys (no S3: the point is the dispatcher and the "
        "queue) goes through the real `plan` (patterns, output names, skip test) and `enqueue_batch` into a "
        "private redis-server: one RQ job per file, 1,000 files a round trip through one Lua script that adds "
        "each file's job (RQ's own job hash), its payload and its state in the batch, with hiredis. First row: "
        "the median of the runs (min-max of total ms per file)"
        + ("; second row: one run of a million files." if million else "."),
        "",
        "| files | total ms per file (min-max) | plan ms per file | enqueue ms per file | s per 1,000,000 "
        "| Redis bytes per queued file | status (counters) | `velo status` command |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        row(med, f"{lo['plan_ms'] + lo['enqueue_ms']:.3f}-{hi['plan_ms'] + hi['enqueue_ms']:.3f}"),
    ]
    if million:
        lines.append(row(million, "one run"))
    m = million or med
    lines += [
        "",
        f"Baseline in the same run: RQ's plain `Queue.enqueue_call(..., unique=True)` per file, with the payload "
        f"as the job's argument, {base:.3f} ms/file on {base_files:,} files: the dispatcher is "
        f"{base / med['enqueue_ms']:.1f}x faster at enqueueing.",
        "",
        f"Where a queued file's {m['bytes']:,.0f} bytes go: RQ's job hash {m['job_bytes']:,.0f} B, kept by Redis "
        f"as a compact `{m['job_encoding']}` because every value is under `hash-max-listpack-value` = 64 bytes: "
        "the job names no argument, its payload waits beside it (velosiped/payloads.py); the payload's own fields "
        f"(input, its version, output) {m['payloads_bytes']:.0f} B in `velo:payloads`, what the batch's files "
        "share stored once; the batch's file-state hash "
        f"{m['files_hash_bytes']:.0f} B; the queue list {m['queue_bytes']:.0f} B; the rest is the key space. "
        "Before, with the payload inside the job (one value over 64 bytes turns the whole hash into a "
        "hashtable), a queued file took 2,224 B.",
    ]
    write_section("Dispatcher at scale", lines)
    print("\n".join(lines))


def baseline(r: redis.Redis, infos: list[ObjectInfo]) -> float:
    """ms per file for RQ's own one-call-per-file unique enqueue, with the same payloads."""
    flush(r)
    q = make_queue(r, "velo")
    started = time.perf_counter()
    for info in infos:
        item = Planned(info, info.uri.replace(".csv", ".out.csv"), "new")
        payload = payload_for(item, OPTS, "baseline")
        q.enqueue_call(TASK, args=(payload,), job_id=job_id(payload), unique=True, description=info.uri)
    return (time.perf_counter() - started) / len(infos) * 1e3


if __name__ == "__main__":
    main()
