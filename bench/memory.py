"""Flat memory: a worker's peak RSS while it scores one very large CSV, locally and on S3.

    python -m bench.memory [--size-gb 5] [--s3-gb 1] [--reps 1] [--full] [--quick] [--no-s3]

Generates deterministic CSV files (`id` + 20 float features `f0..f19` rounded to 6 decimals,
the shape of bench/bench.py's data; bench.common.big_csv: one generated block written again
and again behind fresh ids, flat in memory, ~10 s for 5 GB) and caches them under
bench/data/memory/. A LogisticRegression fitted on 20,000 rows scores them.
Each measurement is one `velo worker --burst --model M` subprocess against a private
redis-server, after `velo dispatch FILE --force`: its peak RSS is the kernel's (``ru_maxrss``
from ``os.wait4``, which covers the process and any children it reaped), and psutil samples its
RSS every 50 ms to compare the first and last quarter of the run. Rows: the worker on an empty
queue (imports + model), a file of size/10, the full size in one job, and (unless --no-s3) a
file on moto's S3 server run as a subprocess, read from and written back to S3 (multipart
upload). --full adds two exploratory cases (~3 more minutes at 5 GB): the size/10 file at
`VELO_BLOCK_SIZE` 8 MiB, and the full size in the dispatcher's default shards (1 GiB) with
their assembly; and makes the default --reps 2.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import IO, Any

import boto3
import psutil
import pyarrow as pa
import pyarrow.csv as pacsv

from bench.bench import fit_model, s3_fleet
from bench.common import big_csv, machine, private_redis, wall_time, write_section
from worker.scoring import BLOCK_SIZE

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
LIMIT_MB = 500
"""What the worker's peak RSS must stay under (issue 5)."""
BIG_BLOCK = 8 << 20
"""A bigger VELO_BLOCK_SIZE (the default until this benchmark), to show what the block size costs."""
GB = 1e9
MB = 1e6


@dataclass
class Run:
    """One `velo worker --burst` process: its peak RSS, RSS samples, wall and job time."""

    peak: int
    wall: float
    job: float = 0.0
    job_end: float = 0.0
    rows: int = 0
    jobs: int = 0
    samples: list[tuple[float, int]] = field(default_factory=list)

    def quarter_peaks(self) -> tuple[int, int] | None:
        """Highest sampled RSS in the first and in the last quarter of the job (None without one)."""
        start = self.job_end - self.job
        first = [r for t, r in self.samples if start <= t <= start + self.job / 4]
        last = [r for t, r in self.samples if self.job_end - self.job / 4 <= t <= self.job_end]
        return (max(first), max(last)) if self.job and first and last else None


def label(size: float) -> str:
    return f"{size / GB:g}gb"


def check_disk(folder: Path, sizes: list[float]) -> None:
    """Refuse, before writing anything, when the inputs still to generate plus the largest output do not fit."""
    folder.mkdir(parents=True, exist_ok=True)
    missing = sum(s for s in set(sizes) if not (folder / f"{label(s)}.csv").exists())
    # Outputs are ~2% larger than their inputs; a sharded file holds its parts and its output at once.
    need = missing + 2.2 * max(sizes) + 1 * GB
    free = shutil.disk_usage(folder).free
    if free < need:
        raise SystemExit(
            f"bench.memory: needs {need / GB:.1f} GB free under {folder} ({missing / GB:.1f} GB of inputs to "
            f"generate, outputs and shard parts up to {2.2 * max(sizes) / GB:.1f} GB), has {free / GB:.1f} GB; "
            "free some space or pass a smaller --size-gb"
        )


class _Counting(io.RawIOBase):
    """A file that counts the bytes pyarrow has read from it."""

    def __init__(self, file: IO[bytes]) -> None:
        self.file, self.read_bytes = file, 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        data = self.file.read(len(buffer))
        buffer[: len(data)] = data
        self.read_bytes += len(data)
        return len(data)


def readahead_blocks(path: Path, block: int = 1 << 20) -> float:
    """How many blocks pyarrow's streaming CSV reader has read once the first batch is handed over.

    Opened as the worker opens a file (a Python file object, every column as text), with
    small blocks so the count is not capped by the file's size.
    """
    with open(path, newline="") as f:
        header = next(csv.reader([f.readline()]))
    with open(path, "rb") as f:
        src = _Counting(f)
        reader = pacsv.open_csv(
            src,
            read_options=pacsv.ReadOptions(block_size=block),
            convert_options=pacsv.ConvertOptions(column_types={c: pa.string() for c in header}),
        )
        reader.read_next_batch()
        time.sleep(1)  # let the background reader run as far as it will
        return src.read_bytes / block


def status_kib(pid: int, field: str) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def sample(pid: int, samples: list[tuple[float, int]], peak: list[int], stop: threading.Event) -> None:
    """Every 50 ms: RSS of ``pid`` and its children, and their high-water marks (VmHWM), until stopped or gone.

    Not ``ru_maxrss`` from ``os.wait4``: a child spawned by this (large) benchmark process
    starts out with its RSS, and the kernel keeps that high-water mark across exec.
    VmHWM belongs to the address space the exec created, so it is the worker's own.
    """
    with contextlib.suppress(psutil.NoSuchProcess, FileNotFoundError, ProcessLookupError):
        proc = psutil.Process(pid)
        while not stop.is_set():
            procs = [proc, *proc.children(recursive=True)]
            rss = hwm = 0
            for p in procs:
                with contextlib.suppress(psutil.NoSuchProcess, FileNotFoundError, ProcessLookupError):
                    hwm += status_kib(p.pid, "VmHWM") * 1024
                    rss += p.memory_info().rss
            samples.append((time.time(), rss))
            peak[0] = max(peak[0], hwm)
            stop.wait(0.05)


def run_worker(env: dict[str, str], model: Path, log_path: Path) -> Run:
    """`velo worker --burst --model M` until the queue is empty; its peak RSS and job time."""
    cmd = [str(BIN / "velo"), "worker", "--burst", "--model", str(model), "--log-format", "json"]
    samples: list[tuple[float, int]] = []
    peak = [0]
    stop = threading.Event()
    with open(log_path, "wb") as log:
        started = time.perf_counter()
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=log)
        sampler = threading.Thread(target=sample, args=(proc.pid, samples, peak, stop), daemon=True)
        sampler.start()
        os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOWAIT)  # exited, not reaped: its pid stays its own
        stop.set()
        sampler.join()
        code = proc.wait()
        wall = time.perf_counter() - started
    if code != 0:
        raise SystemExit(f"bench.memory: velo worker exited {code}; see {log_path}")
    run = Run(peak=peak[0], wall=wall, samples=samples)
    for line in log_path.read_text().splitlines():
        with contextlib.suppress(ValueError):
            rec = json.loads(line)
            if "rows" in rec and " ← " in rec.get("message", ""):  # one line per job (not the assembly's)
                run.job += float(rec["seconds"])
                run.job_end = datetime.fromisoformat(rec["time"]).timestamp()
                run.rows += int(rec["rows"])
                run.jobs += 1
            elif rec.get("level") == "ERROR":
                raise SystemExit(f"bench.memory: {rec.get('message')}")
    return run


def dispatch(env: dict[str, str], source: str, model: Path, options: list[str]) -> None:
    cmd = [str(BIN / "velo"), "dispatch", source, "--model", str(model), "--force", *options]
    subprocess.run(cmd, env=env, check=True, capture_output=True)


def remove_outputs(path: Path) -> None:
    for p in path.parent.glob(path.name.removesuffix(".csv") + ".out.csv*"):
        if p.is_dir():  # shard parts not yet tidied up
            shutil.rmtree(p)
        else:
            p.unlink()


@dataclass(frozen=True)
class Case:
    name: str
    size: float | None = None  # None: the worker on an empty queue
    s3: bool = False
    block: int | None = None  # VELO_BLOCK_SIZE, None for the default
    shard: str = "0"  # --shard-size: 0 is one job for the whole file, "" the dispatcher's default
    big: bool = False  # run --big-reps times, not --reps
    kind: str = ""  # what the report calls it: start, small, block, whole, sharded, s3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size-gb", type=float, default=5.0, help="the large file (the small one is a tenth of it)")
    ap.add_argument("--s3-gb", type=float, default=1.0, help="the file scored on S3 (moto keeps it in memory)")
    ap.add_argument("--reps", type=int, help="runs of each case but the large file's (default 1, 2 with --full)")
    ap.add_argument("--big-reps", type=int, default=1, help="runs of the large file's cases (~60 s each at 5 GB)")
    ap.add_argument(
        "--full", action="store_true", help="also the 8 MiB block case and the large file in default shards"
    )
    ap.add_argument("--quick", action="store_true", help="smoke run: 0.4 GB, 0.04 GB, 0.05 GB on S3, 1 rep")
    ap.add_argument("--no-s3", action="store_true", help="skip the S3 run")
    ap.add_argument("--data", default=str(ROOT / "bench" / "data" / "memory"))
    ap.add_argument("--out", default=str(ROOT / "docs" / "BENCHMARKS.md"))
    args = ap.parse_args()
    if args.reps is None:
        args.reps = 2 if args.full else 1
    if args.quick:
        args.size_gb, args.s3_gb, args.reps, args.big_reps = 0.4, 0.05, 1, 1
    big, small, on_s3 = args.size_gb * GB, args.size_gb * GB / 10, args.s3_gb * GB
    data = Path(args.data)
    check_disk(data, [big, small] + ([] if args.no_s3 else [on_s3]))
    model = data / "logreg.joblib"
    fit_model(model)
    files = {s: data / f"{label(s)}.csv" for s in (small, big) + (() if args.no_s3 else (on_s3,))}
    rows = {s: big_csv(p, s) for s, p in files.items()}
    ahead = readahead_blocks(files[small])
    # --quick files are below the default shard size (1 GiB): smaller shards still show the path
    shard, shards = ("128MB", "shards of 128 MiB") if args.quick else ("", "default shards (1 GiB)")
    cases = [
        Case("no file (start-up: imports + model)", kind="start"),
        Case(f"{label(small)} CSV, local folder", small, kind="small"),
        Case(f"{label(big)} CSV, local folder, one job (`--shard-size 0`)", big, big=True, kind="whole"),
    ]
    if args.full:  # exploratory: what a bigger block costs, and the sharded path's memory
        block_name = f"{label(small)} CSV, local folder, `VELO_BLOCK_SIZE` {BIG_BLOCK >> 20} MiB"
        cases.insert(2, Case(block_name, small, block=BIG_BLOCK, kind="block"))
        cases.append(
            Case(f"{label(big)} CSV, local folder, {shards} + assembly", big, shard=shard, big=True, kind="sharded")
        )
    if not args.no_s3:
        cases.append(Case(f"{label(on_s3)} CSV, S3 in and out (multipart upload)", on_s3, s3=True, kind="s3"))

    results: dict[Case, list[Run]] = {c: [] for c in cases}
    parts = 0
    with contextlib.ExitStack() as stack, tempfile.TemporaryDirectory() as logs:
        if args.no_s3:
            url, s3_env = stack.enter_context(private_redis()), {}
        else:
            url, s3_env = stack.enter_context(s3_fleet([files[on_s3]]))
        for rep in range(max(args.reps, args.big_reps)):
            for case in cases:  # interleaved: noise from the machine hits every case alike
                if rep >= (args.big_reps if case.big else args.reps):
                    continue
                env = {**os.environ, **s3_env, "REDIS_URL": url}
                env.pop("VELO_BLOCK_SIZE", None)
                if case.block:
                    env["VELO_BLOCK_SIZE"] = str(case.block)
                if case.size is not None:
                    path = files[case.size]
                    source = f"s3://bench/in/{path.name}" if case.s3 else str(path)
                    dispatch(env, source, model, ["--shard-size", case.shard] if case.shard else [])
                run = run_worker(env, model, Path(logs) / "worker.log")
                results[case].append(run)
                if case.size is not None and run.rows != rows[case.size]:
                    raise SystemExit(f"bench.memory: {case.name}: scored {run.rows:,} rows of {rows[case.size]:,}")
                if case.s3:
                    parts = s3_parts(s3_env, files[case.size].name)
                elif case.size is not None:
                    remove_outputs(files[case.size])
                print(
                    f"rep {rep + 1} {case.name}: peak RSS {run.peak / MB:.0f} MB, "
                    f"worker {run.wall:.1f} s, {run.jobs} job(s) {run.job:.1f} s",
                    flush=True,
                )
    sizes = {c: (files[c.size].stat().st_size, rows[c.size]) for c in cases if c.size is not None}
    report(results, sizes, parts, ahead, args)


def s3_parts(env: dict[str, str], name: str) -> int:
    """How many parts the output was uploaded in (its ETag ends in ``-N`` after a multipart upload); then delete it."""
    s3 = boto3.client(
        "s3",
        endpoint_url=env["AWS_ENDPOINT_URL"],
        aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
        region_name=env["AWS_DEFAULT_REGION"],
    )
    key = f"in/{name.removesuffix('.csv')}.out.csv"
    etag = s3.head_object(Bucket="bench", Key=key)["ETag"].strip('"')
    s3.delete_object(Bucket="bench", Key=key)
    return int(etag.rsplit("-", 1)[1]) if "-" in etag else 1


def report(
    results: dict[Case, list[Run]],
    sizes: dict[Case, tuple[int, int]],
    parts: int,
    ahead: float,
    args: argparse.Namespace,
) -> None:
    med = statistics.median
    command = "python -m bench.memory" + (
        " --quick"
        if args.quick
        else f" --size-gb {args.size_gb:g} --s3-gb {args.s3_gb:g} --reps {args.reps} --big-reps {args.big_reps}"
        + (" --full" if args.full else "")
    )
    command += " --no-s3" if args.no_s3 else ""
    lines = [
        f"{machine()} pyarrow {pa.__version__}, `VELO_BLOCK_SIZE` {BLOCK_SIZE >> 20} MiB (the default) unless said.",
        "",
        f"Command: `{command}`. Deterministic CSV files (`id` + 20 float features with 6 decimals, about 190 bytes "
        "a row), a logistic regression; each file dispatched alone (`velo dispatch FILE --force`, with "
        "`--shard-size 0` for one job per file) and scored by one `velo worker --burst --model M` subprocess against "
        "a private redis-server, writing every input column plus `prediction`. Peak RSS is the worker's high-water "
        "mark (`VmHWM`, read every 50 ms with its RSS); first → last quarter is the highest RSS sampled in the first "
        "and in the last quarter of the scoring. Medians of the runs, cases interleaved; job s is the time the "
        "worker's log gives its jobs, worker s adds start-up (imports, model, Redis).",
        "",
        f"| worker scoring | jobs | rows | runs | peak RSS MB (min-max) | RSS first → last quarter MB | worker s "
        f"| job s | MB/s | under {LIMIT_MB} MB |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | :---: |",
    ]
    for case, runs in results.items():
        peaks = [r.peak / MB for r in runs]
        quarters = runs[-1].quarter_peaks()
        size, rows = sizes.get(case, (0, 0))
        job = med([r.job for r in runs])
        lines.append(
            f"| {case.name} | {runs[-1].jobs} | {rows:,} | {len(runs)} | {med(peaks):.0f} "
            f"({min(peaks):.0f}-{max(peaks):.0f}) | "
            + (f"{quarters[0] / MB:.0f} → {quarters[1] / MB:.0f}" if quarters else "-")
            + f" | {med([r.wall for r in runs]):.1f} | {f'{job:.1f}' if job else '-'} | "
            f"{f'{size / MB / job:.0f}' if job else '-'} | {'yes' if max(peaks) < LIMIT_MB else '**no**'} |"
        )
    lines += ["", *paragraph(results, parts, ahead), "", wall_time()]
    write_section("Flat memory", lines, Path(args.out))
    print("\n".join(lines))
    print(f"bench.memory: {wall_time()}", flush=True)


def paragraph(results: dict[Case, list[Run]], parts: int, ahead: float) -> list[str]:
    """What the numbers say, worded from the numbers of this run."""
    med = statistics.median
    case = {c.kind: c for c in results}
    start, small, whole = case["start"], case["small"], case["whole"]
    peak = {c: med(r.peak for r in runs) / MB for c, runs in results.items()}
    speed = {c: med(r.job for r in runs) for c, runs in results.items()}
    quarters = results[whole][-1].quarter_peaks()
    flat = peak[whole] < peak[small] + 50 and (quarters is None or quarters[1] < quarters[0] + 50 * MB)
    big_label, small_label = label(whole.size or 0), label(small.size or 0)
    text = [
        f"{'Memory does not grow with the file' if flat else 'Memory grows with the file'}: streaming the "
        f"{big_label} file in one job peaks at {peak[whole]:.0f} MB, the {small_label} one at {peak[small]:.0f} MB"
        + (
            f", and RSS ends the file where it was a quarter in ({quarters[0] / MB:.0f} → {quarters[1] / MB:.0f} MB)"
            if quarters
            else ""
        )
        + ".",
        f"The idle worker (Python, pandas, pyarrow, scikit-learn, the model) takes {peak[start]:.0f} MB and scoring "
        f"adds {peak[whole] - peak[start]:.0f} MB. Most of that is raw CSV read ahead: pyarrow's streaming reader, "
        f"opened as the worker opens a file (a Python file object), had read {ahead:.0f} blocks by the time it "
        f"handed over the first, so a worker holds ~{ahead:.0f} x {BLOCK_SIZE >> 20} MiB = "
        f"{ahead * BLOCK_SIZE / 2**20:.0f} MiB of it, plus the blocks being parsed, scored and written: bounded, "
        f"whatever the file's size. Hence the default block of {BLOCK_SIZE >> 20} MiB: read-ahead grows with "
        "`VELO_BLOCK_SIZE`"
        + (
            f"; at {BIG_BLOCK >> 20} MiB the same {small_label} file peaks at {peak[case['block']]:.0f} MB, in "
            f"{speed[case['block']]:.1f} s against {speed[small]:.1f} s at the default."
            if "block" in case
            else f" (`--full` measures {BIG_BLOCK >> 20} MiB too)."
        ),
    ]
    if "sharded" in case:
        sharded = case["sharded"]
        text.append(
            "Dispatched "
            + (f"in shards of {sharded.shard}" if sharded.shard else "with the default `--shard-size` (1 GiB)")
            + f", the {big_label} file "
            + (
                f"becomes {shards} shard jobs (the last one also assembles the parts by streaming them into the output)"
                if (shards := results[sharded][-1].jobs) > 1
                else "stays one job (it is below the shard size)"
            )
            + f"; the worker peaks at {peak[sharded]:.0f} MB."
        )
    if "s3" in case:
        text.append(
            f"On S3 the worker peaks at {peak[case['s3']]:.0f} MB; the output went up as a multipart upload of "
            f"{parts} parts of 16 MiB (`S3_PART_SIZE`), the input came in through ranged GETs; moto's Python server, "
            "sharing the 2 cores, sets the pace."
        )
    default = {c: p for c, p in peak.items() if c.block is None}
    worst = max(default, key=default.__getitem__)
    over = [c for c in peak if c.block is not None and peak[c] >= LIMIT_MB]
    text.append(
        (
            f"Verdict: flat, and under {LIMIT_MB} MB at every size and path at the default block size "
            f"(worst {default[worst]:.0f} MB)."
            if default[worst] < LIMIT_MB and flat
            else f"Verdict: {'flat, but ' if flat else ''}over the {LIMIT_MB} MB target at the default block size "
            f"(worst {default[worst]:.0f} MB: {worst.name})."
        )
        + "".join(
            f" The non-default {c.block >> 20} MiB block goes over it ({peak[c]:.0f} MB)." for c in over if c.block
        )
    )
    return [" ".join(text)]


if __name__ == "__main__":
    main()
