"""One big file over the fleet: a 2 GB CSV cut into ~256 MB shards, scored by 1 and by 2 worker processes.

    python -m bench.big_file [--size-mb 2000] [--shard-mb 256] [--reps 1] [--full] [--no-write]

Generates one deterministic CSV (`id` + 20 float features `f0..f19` rounded to 6 decimals, the
shape of bench/bench.py's data; bench.common.big_csv, a few seconds for 2 GB), cached under
bench/data/big_file/, and fits bench/bench.py's LogisticRegression. Each contender is
`velo dispatch FOLDER --shard-size S` then `velo worker --burst --processes N` on a private
redis-server, the file in a local folder; the clock covers both (start-up, planning, scoring,
assembly). Contenders: the file in shards with 1 and with 2 worker processes (the first is the
baseline); --full adds the whole file (one job) with one process, then the baseline, and makes
the default --reps 3. They run interleaved, --reps times (default 1, ~30 s a run at 2 GB); the
table gives medians and min-max.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from bench.bench import fit_model
from bench.common import big_csv, machine, private_redis, wall_time, write_section

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
MB = 1 << 20


@dataclass
class Contender:
    name: str
    shard_mb: int
    processes: int
    seconds: list[float] = field(default_factory=list)
    assembly: list[float] = field(default_factory=list)


def clean(folder: Path) -> None:
    for p in folder.iterdir():
        if ".out." in p.name:
            if p.is_dir():
                for q in p.rglob("*"):
                    if q.is_file():
                        q.unlink()
                for q in sorted(p.rglob("*"), reverse=True):
                    q.rmdir()
                p.rmdir()
            else:
                p.unlink()


_STAMP = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) INFO (assembling|assembled) ", re.M)


def assembly_seconds(log: str) -> float:
    """From the worker's log: seconds between 'assembling <output>' and 'assembled <output>'."""
    stamps = {what: datetime.strptime(ts, "%Y-%m-%d %H:%M:%S,%f") for ts, what in _STAMP.findall(log)}
    if len(stamps) < 2:
        return 0.0
    return (stamps["assembled"] - stamps["assembling"]).total_seconds()


def run(c: Contender, folder: Path, model: Path, redis_url: str) -> tuple[float, float]:
    """One dispatch + burst worker; (wall seconds, seconds spent assembling the parts)."""
    env = {**os.environ, "REDIS_URL": redis_url}
    env.pop("VELO_SHARD_SIZE", None)
    velo = str(BIN / "velo")
    started = time.perf_counter()
    dispatch = [velo, "dispatch", str(folder), "--model", str(model), "--shard-size", f"{c.shard_mb}MB"]
    subprocess.run(dispatch, env=env, check=True, capture_output=True)
    worker = [velo, "worker", "--burst", "--processes", str(c.processes), "--model", str(model)]
    done = subprocess.run(worker, env=env, check=True, capture_output=True, text=True)
    return time.perf_counter() - started, assembly_seconds(done.stderr)


def digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(8 * MB):
            h.update(chunk)
    return h.hexdigest()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size-mb", type=int, default=2000, help="size of the CSV (MiB)")
    ap.add_argument("--shard-mb", type=int, default=256, help="--shard-size of the sharded contenders (MiB)")
    ap.add_argument("--reps", type=int, help="runs of each contender (default 1; 3 with --full)")
    ap.add_argument("--full", action="store_true", help="also the whole file in one job; 3 reps (~5 min instead of 1)")
    ap.add_argument("--data", default=str(ROOT / "bench" / "data" / "big_file"))
    ap.add_argument("--out", default=str(ROOT / "docs" / "BENCHMARKS.md"))
    ap.add_argument("--no-write", action="store_true", help="print the section, do not write it")
    args = ap.parse_args()
    if args.reps is None:
        args.reps = 3 if args.full else 1

    data = Path(args.data)
    folder = data / f"{args.size_mb}MB"
    path = folder / "big.csv"
    model = data / "logreg.joblib"
    rows = big_csv(path, args.size_mb * MB)
    fit_model(model)
    size = path.stat().st_size
    shards = -(-size // (args.shard_mb * MB))
    contenders = [
        Contender(f"{args.shard_mb} MB shards, `--processes 1`{'' if args.full else ' (baseline)'}", args.shard_mb, 1),
        Contender(f"{args.shard_mb} MB shards, `--processes 2`", args.shard_mb, 2),
    ]
    if args.full:
        contenders.insert(0, Contender("whole file, `--processes 1` (baseline)", 0, 1))
    digests: dict[str, str] = {}
    load = os.getloadavg()[0]  # the cores may be shared: say how busy they were
    with private_redis() as url, tempfile.TemporaryDirectory() as state:
        os.environ["VELO_STATE_DIR"] = state
        for rep in range(args.reps):
            for c in contenders:  # interleaved: noise hits every contender alike
                clean(folder)
                seconds, assembling = run(c, folder, model, url)
                c.seconds.append(seconds)
                c.assembly.append(assembling)
                print(f"rep {rep + 1}/{args.reps} {c.name}: {seconds:.1f}s (assembly {assembling:.1f}s)", flush=True)
                if rep == 0:  # outside the clock: every contender writes the same bytes
                    digests[c.name] = digest(folder / "big.out.csv")
    clean(folder)
    assert len(set(digests.values())) == 1, f"outputs differ: {digests}"
    lines = report(contenders, args, rows, size, shards, (load, os.getloadavg()[0]))
    lines += ["", wall_time()]
    print("\n".join(lines))
    print(f"bench.big_file: {wall_time()}", flush=True)
    if not args.no_write:
        write_section("One big file", lines, Path(args.out))


def report(
    contenders: list[Contender], args: argparse.Namespace, rows: int, size: int, shards: int, load: tuple[float, float]
) -> list[str]:
    base = statistics.median(contenders[0].seconds)
    med = {c.name: statistics.median(c.seconds) for c in contenders}
    sharded = [c for c in contenders if c.shard_mb]
    whole = contenders[0] if not contenders[0].shard_mb else None
    one, two = med[sharded[0].name], med[sharded[1].name]
    assembly = statistics.median(sharded[1].assembly)
    lines = [
        f"{machine()}",
        "",
        f"Command: `python -m bench.big_file --size-mb {args.size_mb} --shard-mb {args.shard_mb} --reps {args.reps}"
        + (" --full" if args.full else "")
        + "`. "
        f"Data: one CSV of {size / 1e9:.2f} GB, {rows:,} rows, `id` + 20 float features; bench/bench.py's "
        f"LogisticRegression. Each run is `velo dispatch` (`--shard-size`; {shards} shards when sharded) then "
        "`velo worker --burst --processes N` on a private redis-server, the file in a local folder; the clock "
        f"covers both. Contenders interleaved, {args.reps} run{'s' if args.reps != 1 else ''} each; medians; every "
        "contender's output has the same SHA-256. "
        f"Load average (1 min) before and after: {load[0]:.1f}, {load[1]:.1f}.",
        "",
        "| contender | median s | min-max s | rows/s | MB/s in | × baseline | assembly s |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for c in contenders:
        m = med[c.name]
        spread = f"{min(c.seconds):.1f}-{max(c.seconds):.1f}"
        assemble = f"{statistics.median(c.assembly):.1f}" if c.shard_mb else "-"
        lines.append(
            f"| {c.name} | {m:.1f} | {spread} | {rows / m:,.0f} | {size / 1e6 / m:.0f} | {base / m:.2f} | {assemble} |"
        )
    one_assembly = statistics.median(sharded[0].assembly)
    text = (
        f"Two processes finish the sharded file in {two:.1f} s against {one:.1f} s for one: **{one / two:.2f}x**"
        + (
            f", and {base / two:.2f}x the whole-file run; without sharding a second process has nothing to do, the "
            f"file being one job. With one process sharding costs {100 * (one / base - 1):+.0f}%: "
            f"{one_assembly:.1f} s of the {one - base:.1f} s is the local assembly, which writes the "
            f"{size / 1e9:.1f} GB output a second time (disk-bound, by one process while the other idles); the rest is "
            f"{shards} jobs instead of one, and shard ranges read through Python where a whole local file is read by "
            "pyarrow's own reader."
            if whole
            else f" (without sharding the file is one job and a second process has nothing to do; `--full` measures "
            f"that run too). {one_assembly:.1f} s of the one-process run is the local assembly, which writes the "
            f"{size / 1e9:.1f} GB output a second time (disk-bound, by one process while the other idles)."
        )
        + f" Without the serial assembly two processes take {two - assembly:.1f} s against "
        f"{one - one_assembly:.1f} s: {(one - one_assembly) / (two - assembly):.2f}x on {os.cpu_count()} cores "
        "shared with Redis, the OS and the disk. On S3 the assembly is UploadPartCopy: S3 copies the parts, no "
        "byte passes through a worker."
    )
    lines += ["", text]
    return lines


if __name__ == "__main__":
    main()
