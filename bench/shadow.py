"""What a challenger (``--shadow``) costs: one pass reading each file once and scoring it with both
models, against two separate passes (one a model), and against the champion alone.

    python -m bench.shadow [--files 2] [--rows 50000] [--reps 3] [--workers 2] [--file-rows 200000] [--file-reps 5]

``--files`` CSVs of ``--rows`` rows of `id` + 20 normal features (bench.bench's data); champion: the
logistic regression, challenger: another logistic regression (another rule, as cheap: the pass is
what is measured, not a slower model), both with ``--proba``. Two views:

- the worker's work alone: ``worker.scoring.score_stream`` on one file of ``--file-rows`` rows in this
  process, to files on disk (the challenger's through ``worker.shadow.Challenger``, comparison
  statistics included), ``--file-reps`` times;
- whole commands as a user runs them (`velo run`: start-up, embedded Redis, ``--workers`` processes),
  ``--force`` so every file is scored.

Each ``--reps`` times, the ways interleaved so drift of the machine hits them alike; the median.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import joblib
import numpy as np
import pandas as pd

from bench.bench import make_data
from bench.common import FEATURES, machine, wall_time, write_section
from velosiped.jobs import Payload
from velosiped.models import version_of
from worker import models as worker_models
from worker.scoring import score_stream
from worker.shadow import Challenger

VELO = str(Path(sys.executable).with_name("velo"))


def velo_run(data: Path, model: Path, out: Path, workers: int, state: Path, *extra: str) -> float:
    """Seconds one `velo run` takes, start to exit."""
    env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"} | {"VELO_STATE_DIR": str(state)}
    argv = [VELO, "run", str(data), "--model", str(model), "--proba", "--output", str(out)]
    argv += ["--workers", str(workers), "--force", *extra]
    started = time.perf_counter()
    subprocess.run(argv, check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - started


def fit_challenger(path: Path) -> Path:
    """A logistic regression on another rule than the champion's (f0 + f2 > 0, less regularised):
    as cheap to run, so what is measured is the pass, not a slower model."""
    if not path.exists():
        from sklearn.linear_model import LogisticRegression

        rng = np.random.default_rng(7)
        train = pd.DataFrame(rng.normal(size=(20_000, len(FEATURES))), columns=FEATURES)
        label = (train.f0 + train.f2 + rng.normal(scale=0.5, size=len(train)) > 0).astype(int)
        path.parent.mkdir(parents=True, exist_ok=True)
        joblib.dump(LogisticRegression(max_iter=500, C=0.1).fit(train, label), path)
    return path


def score(path: Path, out: Path, champion: Path, challenger: Path | None) -> float:
    """Seconds ``score_stream`` takes on ``path`` with the champion (and the challenger on the same read)."""
    m1 = worker_models.load(str(champion), version_of(str(champion)))
    started = time.perf_counter()
    shadow = None
    if challenger is not None:
        p: Payload = {
            "input": str(path),
            "input_version": "bench",
            "output": str(out / "champion.csv"),
            "model": str(champion),
            "model_version": "bench",
            "model_sha256": None,
            "keep": None,
            "proba": True,
            "features": None,
            "sep": ",",
            "encoding": "utf-8",
            "batch": "bench",
            "shadow": str(challenger),
            "shadow_version": "bench",
            "shadow_output": str(out / "challenger.csv"),
        }
        shadow = Challenger(p, worker_models.load(str(challenger), version_of(str(challenger))), m1)
    with (
        open(path, "rb") as src,
        open(out / "champion.csv", "wb") as dst,
        shadow.writing() if shadow is not None else contextlib.nullcontext(),
    ):
        score_stream(src, dst, m1, name=str(path), proba=True, challenger=shadow)
    return time.perf_counter() - started


def in_process(path: Path, champion: Path, challenger: Path, reps: int, scratch: Path) -> tuple[float, float, float]:
    """Median seconds of: the champion alone; champion then challenger, two passes; both in one pass."""
    score(path, scratch, champion, challenger)  # warm: page cache, the models' first calls
    alone, separate, shadow = [], [], []
    for _ in range(reps):
        alone.append(score(path, scratch, champion, None))
        separate.append(score(path, scratch, champion, None) + score(path, scratch, challenger, None))
        shadow.append(score(path, scratch, champion, challenger))
    return statistics.median(alone), statistics.median(separate), statistics.median(shadow)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--files", type=int, default=2)
    ap.add_argument("--rows", type=int, default=50_000)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--file-rows", type=int, default=200_000)
    ap.add_argument("--file-reps", type=int, default=5)
    ap.add_argument("--data", type=Path, default=Path(__file__).resolve().parent / "data" / "shadow")
    args = ap.parse_args()

    paths, models = make_data(args.data / f"{args.files}x{args.rows}", args.files, args.rows, ["logreg"])
    data, champion = paths[0].parent, models["logreg"]
    challenger = fit_challenger(args.data / "challenger.joblib")
    scratch = Path(tempfile.mkdtemp(prefix="velo-bench-shadow-"))
    alone: list[float] = []
    separate: list[float] = []
    shadow: list[float] = []
    try:
        worker_models.limit_threads()
        one_file = make_data(args.data / f"1x{args.file_rows}", 1, args.file_rows, [])[0][0]
        p_alone, p_two, p_shadow = in_process(one_file, champion, challenger, args.file_reps, scratch)
        state, one, two = scratch / "state", scratch / "champion", scratch / "challenger"
        run = lambda model, *extra: velo_run(data, model, one, args.workers, state, *extra)  # noqa: E731
        run(champion, "--shadow", str(challenger), "--shadow-output", str(two))  # warm: page cache, model cache
        for _ in range(args.reps):
            alone.append(run(champion))
            separate.append(run(champion) + velo_run(data, challenger, two, args.workers, state))
            shadow.append(run(champion, "--shadow", str(challenger), "--shadow-output", str(two)))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    t_alone, t_two, t_shadow = (statistics.median(t) for t in (alone, separate, shadow))
    rows = args.files * args.rows
    size = sum(p.stat().st_size for p in paths) / 1e6

    def cell(t: float, n: int = rows) -> str:
        return f"{t:.2f} s ({n / t:,.0f} rows/s)"

    lines = [
        machine(),
        "",
        f"`python -m bench.shadow --files {args.files} --rows {args.rows} --reps {args.reps} "
        f"--workers {args.workers} --file-rows {args.file_rows} --file-reps {args.file_reps}`: "
        f"`velo run` of {args.files} CSVs × {args.rows:,} rows × 20 features "
        f"({size:.0f} MB), `--proba --force --workers {args.workers}`, embedded Redis; champion the "
        "logistic regression, challenger another logistic regression (another rule). Whole commands, start-up "
        f"included; median of {args.reps}, the three ways interleaved. Taken on a machine shared with "
        "other jobs: read the ratios, measured in the same run, rather than the seconds.",
        "",
        f"The worker's work alone (`score_stream` on one file of {args.file_rows:,} rows, one process, to "
        f"files; median of {args.file_reps}):",
        "",
        "| way | seconds | vs two separate passes |",
        "|---|---:|---:|",
        f"| champion alone | {cell(p_alone, args.file_rows)} | {p_alone / p_two:.2f}× |",
        f"| champion, then challenger: two passes (the baseline) | {cell(p_two, args.file_rows)} | 1.00× |",
        f"| one pass, both models (`--shadow`) | {cell(p_shadow, args.file_rows)} | **{p_shadow / p_two:.2f}×** |",
        "",
        "Whole commands:",
        "",
        "| way | wall time | vs two separate runs |",
        "|---|---:|---:|",
        f"| champion alone (one `velo run`) | {cell(t_alone)} | {t_alone / t_two:.2f}× |",
        f"| two separate `velo run`s, one a model (the baseline) | {cell(t_two)} | 1.00× |",
        f"| one `velo run --shadow` (each file read once, scored by both) | {cell(t_shadow)} | "
        f"**{t_shadow / t_two:.2f}×** |",
        "",
        f"In the worker, one pass with both models takes {(p_shadow / p_alone - 1) * 100:+.0f} % over the "
        "champion alone (the challenger's predict and predict_proba, its output, the comparison "
        f"statistics) and saves {(1 - p_shadow / p_two) * 100:.0f} % of two passes (one read and parse of "
        f"each file); as whole commands, {(t_shadow / t_alone - 1) * 100:+.0f} % over the champion alone "
        f"and {(1 - t_shadow / t_two) * 100:.0f} % saved (one start-up instead of two as well).",
        "",
        wall_time(),
    ]
    print("\n".join(lines))
    write_section("Champion vs challenger (--shadow)", lines)


if __name__ == "__main__":
    main()
