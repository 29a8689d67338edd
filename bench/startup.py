"""Start-up and exit of `velo run`, end to end, against the bare loops a user could write, in one run.

    python -m bench.startup [--reps 5]

Two cases, each a command of its own timed from outside (interpreter, imports, model load, the
embedded Redis and the exit included), the contenders interleaved (every repetition runs each
once), medians and min-max of --reps repetitions:

- one CSV file of 10 rows (bench.bench's data, first 10 rows): `velo run FOLDER --model M` (as a
  user types it: workers = CPU count) against the bare pyarrow loop in 1 process
  (bench/loops.py: imports pandas and pyarrow, joblib.load, read, predict, write). Target:
  `velo run` ≤ 1.1 x the loop's time.
- bench.bench's 8 files x 200,000 rows: `velo run --workers 2` against the pyarrow loop in a
  2-process pool (the limit). Target: ≥ 0.90 x the limit end to end (the limit's time divided
  by velo run's).

For `velo run`, "outside scoring" is its end to end minus the batch's own clock (`velo status`:
first file started to last file done): start-up before the first job is taken, plus the exit.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import time
from pathlib import Path

import pyarrow.csv as pacsv

from bench.bench import ROOT, clean, loop, make_data, velo_run
from bench.common import machine, wall_time, write_section

ONE = "one file of 10 rows"
BIG = "8 files x 200,000 rows"


def one_file(data: Path, source: Path) -> Path:
    """A folder holding one CSV file: the first 10 rows of ``source`` (made once)."""
    path = data / "1x10" / "data" / "part-00.csv"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        pacsv.write_csv(pacsv.read_csv(source).slice(0, 10), path)
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--data", default=str(ROOT / "bench" / "data"))
    args = ap.parse_args()
    big, models = make_data(Path(args.data) / "8x200000", 8, 200_000, ["logreg"])
    model = models["logreg"]
    one = [one_file(Path(args.data), big[0])]
    cases = {
        ONE: (one, {"loop": loop("pyarrow", 1), "velo": velo_run(None)}),
        BIG: (big, {"loop": loop("pyarrow", 2), "velo": velo_run(2)}),
    }
    wall: dict[tuple[str, str], list[float]] = {(c, n): [] for c, (_, runs) in cases.items() for n in runs}
    cpu: dict[tuple[str, str], list[float]] = {k: [] for k in wall}
    outside: dict[str, list[float]] = {c: [] for c in cases}
    for rep in range(args.reps):
        for case, (paths, runs) in cases.items():
            for name, run in runs.items():
                clean(paths)
                started, cpu0 = time.perf_counter(), children_cpu()
                result = run(paths, model)
                seconds = time.perf_counter() - started
                wall[case, name].append(seconds)
                cpu[case, name].append(children_cpu() - cpu0)
                if callable(result):  # velo run: its batch's clock, read once the command's clock stopped
                    outside[case].append(seconds - result())
                print(
                    f"rep {rep + 1}/{args.reps} {case}, {name}: {seconds:.3f} s, cpu {cpu[case, name][-1]:.2f} s",
                    flush=True,
                )
    for paths, _ in cases.values():
        clean(paths)
    report(wall, cpu, outside, args.reps)
    print(f"bench.startup: {wall_time()}", flush=True)


def children_cpu() -> float:
    """User + system CPU seconds of this process's finished children (the contenders' commands)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def report(
    wall: dict[tuple[str, str], list[float]],
    cpu: dict[tuple[str, str], list[float]],
    outside: dict[str, list[float]],
    reps: int,
) -> None:
    med = statistics.median

    def cell(xs: list[float]) -> str:
        return f"{med(xs):.2f} ({min(xs):.2f}-{max(xs):.2f})"

    # Each repetition's own ratio (its two contenders ran back to back, under the same load), then
    # their median: steadier than the ratio of the medians when the machine's load comes and goes.
    one = med([v / b for v, b in zip(wall[ONE, "velo"], wall[ONE, "loop"], strict=True)])
    big = med([b / v for v, b in zip(wall[BIG, "velo"], wall[BIG, "loop"], strict=True)])
    one_of_medians = med(wall[ONE, "velo"]) / med(wall[ONE, "loop"])
    big_of_medians = med(wall[BIG, "loop"]) / med(wall[BIG, "velo"])
    lines = [
        machine() + " A shared machine: other jobs ran meanwhile, so the ratios, measured in the same run, "
        "mean more than the seconds.",
        "",
        f"Command: `python -m bench.startup --reps {reps}` (part of `make bench`). Each contender is a command of its "
        "own, timed from outside: interpreter, imports, model load (bench.bench's logistic regression), the "
        "embedded Redis (a fresh state folder each time) and the exit included; contenders interleaved, medians "
        f"(min-max) of {reps} runs. The bare loop is bench/loops.py's pyarrow loop (imports, `joblib.load`, "
        "read, predict, write). Outside scoring: `velo run`'s end to end minus its batch's own clock (first file "
        "started to last file done), i.e. its start-up before the first job is taken plus its exit. CPU s: user + "
        "system seconds of the command and its child processes (the embedded redis-server, a daemon, not counted), "
        "steadier than wall-clock time on a busy machine. Ratio: the median of each repetition's own ratio (its "
        "contenders ran back to back, under the same load); in brackets the ratio of the medians.",
        "",
        "| case | bare pyarrow loop s | velo run s | velo run outside scoring s | CPU s, loop / velo run | ratio "
        "| target |",
        "| --- | ---: | ---: | ---: | ---: | ---: | --- |",
        f"| {ONE} (velo run as typed, workers = cores; loop: 1 process) | {cell(wall[ONE, 'loop'])} | "
        f"{cell(wall[ONE, 'velo'])} | {cell(outside[ONE])} | {med(cpu[ONE, 'loop']):.2f} / "
        f"{med(cpu[ONE, 'velo']):.2f} | velo ÷ loop: **{one:.2f}x** ({one_of_medians:.2f}x) | ≤ 1.1x: "
        f"{'met' if one <= 1.1 else f'missed by {one - 1.1:.2f}x'} |",
        f"| {BIG} (velo run --workers 2; loop: 2-process pool, the limit) | {cell(wall[BIG, 'loop'])} | "
        f"{cell(wall[BIG, 'velo'])} | {cell(outside[BIG])} | {med(cpu[BIG, 'loop']):.2f} / "
        f"{med(cpu[BIG, 'velo']):.2f} | limit ÷ velo: **{big:.2f}x** ({big_of_medians:.2f}x) | ≥ 0.90x: "
        f"{'met' if big >= 0.90 else f'missed by {0.90 - big:.2f}x'} |",
        "",
        wall_time(),
    ]
    write_section("Start-up and exit of velo run", lines)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
