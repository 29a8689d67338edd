"""`velo report` against Evidently, the anchor: time, peak RSS and which columns each flags.

    python -m bench.drift_evidently [--reps 3]

The issue's data, generated once under bench/data/drift/: a reference of 200,000 rows, a current
batch of 600,000 rows (3 files) whose ``f7`` is shifted by 0.3 standard deviations, and a
resample of 600,000 rows with no shift; `id` + 20 normal features, 6 decimals. Each folder is
scored once with `velo run --stats` (a logistic regression, a private redis-server); then:

- `velo report CUR --reference REF --json` as a subprocess, ``--reps`` times (its first run merges
  the files' statistics, the next ones read the merge kept in Redis): median wall time, peak RSS;
- Evidently 0.7's ``DataDriftPreset`` on the same CSVs (bench/evidently_job.py, in its own venv
  bench/data/.venv-evidently: Evidently wants pandas < 3), ``--reps`` times: import, read and
  drift seconds (medians), peak RSS.

Both verdicts (columns flagged, on the shifted batch and on the resample) go to
docs/BENCHMARKS.md "Drift report against Evidently"; they must agree: ``f7`` alone, then nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import joblib
import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv

from bench.common import FEATURES, machine, private_redis, wall_time, write_section
from bench.memory import sample

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "bench" / "data" / "drift"
VENV = ROOT / "bench" / "data" / ".venv-evidently"
BIN = Path(sys.executable).parent
SHIFTED = "f7"
SHIFT = 0.3
FILE_ROWS = 200_000
EVIDENTLY = "evidently==0.7.*"


def write_folder(folder: Path, files: int, seed: int, shift: float) -> None:
    """``files`` CSVs of FILE_ROWS rows each, ``SHIFTED`` moved by ``shift`` (its sd is 1); kept once written."""
    done = folder / ".complete"
    if done.exists():
        return
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(files):
        rng = np.random.default_rng(seed + i)
        x = rng.normal(size=(FILE_ROWS, len(FEATURES))).round(6)
        x[:, FEATURES.index(SHIFTED)] += shift
        table = pa.table({"id": np.arange(FILE_ROWS), **{f: x[:, j] for j, f in enumerate(FEATURES)}})
        pacsv.write_csv(table, folder / f"part-{i}.csv")
    done.write_text("")


def model_path() -> Path:
    path = DATA / "logreg.joblib"
    if not path.exists():
        from sklearn.linear_model import LogisticRegression

        rng = np.random.default_rng(7)
        x = rng.normal(size=(20_000, len(FEATURES)))
        import pandas as pd

        frame = pd.DataFrame(x, columns=FEATURES)
        joblib.dump(LogisticRegression(max_iter=500).fit(frame, (x[:, 0] + x[:, 1] > 0).astype(int)), path)
    return path


def evidently_python() -> Path:
    """The venv's python, with Evidently 0.7 and pandas < 3 installed (made once)."""
    python = VENV / "bin" / "python"
    marker = VENV / ".installed"
    if not marker.exists():
        print(f"creating {VENV} with {EVIDENTLY} and pandas<3 (once)", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "--quiet", EVIDENTLY, "pandas<3"], check=True)
        marker.write_text("")
    return python


def measured(cmd: list[str], env: dict[str, str] | None = None) -> tuple[float, int, str]:
    """Run ``cmd``: its wall seconds, its peak RSS (VmHWM of it and its children, sampled), its stdout."""
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    peak, samples, stop = [0], [], threading.Event()
    watcher = threading.Thread(target=sample, args=(proc.pid, samples, peak, stop), daemon=True)
    watcher.start()
    out, err = proc.communicate()
    seconds = time.perf_counter() - started
    stop.set()
    watcher.join()
    if proc.returncode not in (0, 1):  # 1: velo report --fail-on-drift found drift
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{err}")
    return seconds, peak[0], out


def velo_run(folder: Path, model: Path, redis_url: str) -> tuple[str, float]:
    started = time.perf_counter()
    cmd = [str(BIN / "velo"), "run", str(folder), "--model", str(model), "--redis", redis_url, "--stats", "--force"]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    seconds = time.perf_counter() - started
    batch = next(line.split()[1] for line in out.splitlines() if line.startswith("batch ") and ":" in line)
    return batch.rstrip(":"), seconds


def profile_cmd(model: Path, folder: Path, out: Path) -> list[str]:
    """`velo profile` of ``folder`` (``all``: every CSV under DATA, 1,400,000 rows)."""
    source = DATA if folder.name == "all" else folder
    return [str(BIN / "velo"), "profile", str(source), "--model", str(model), "-o", str(out)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()
    started = time.perf_counter()
    folders = {"ref": (1, 100, 0.0), "cur": (3, 200, SHIFT), "same": (3, 300, 0.0)}
    for name, (files, seed, shift) in folders.items():
        write_folder(DATA / name, files, seed, shift)
    model = model_path()
    python = evidently_python()
    print(f"data and venv ready in {time.perf_counter() - started:.0f} s", flush=True)

    velo: dict[str, dict[str, object]] = {}
    with private_redis() as url:
        batches = {}
        for name in folders:
            batches[name], seconds = velo_run(DATA / name, model, url)
            print(f"velo run --stats {name}: {seconds:.1f} s", flush=True)
            if name == "cur":
                run_seconds = seconds
        for name in ("cur", "same"):
            cmd = [str(BIN / "velo"), "report", batches[name], "--reference", batches["ref"], "--json"]
            runs = [measured([*cmd, "--redis", url]) for _ in range(args.reps)]
            result = json.loads(runs[-1][2])
            velo[name] = {
                "first": runs[0][0],
                "seconds": statistics.median(r[0] for r in runs),
                "in_process": statistics.median(json.loads(r[2])["seconds"] for r in runs),
                "peak": max(r[1] for r in runs),
                "drifted": [c for c in result["drifted"] if c != "prediction"],
                "prediction": "prediction" in result["drifted"],
                "top": {f["feature"]: (f["psi"], f["ks"]) for f in result["features"][:2]},
            }
            print(f"velo report {name}: {velo[name]}", flush=True)

        # The reference as a profile instead (velo profile of the same CSVs): the same verdict
        profile = DATA / "ref.profile.json"
        cmd = [str(BIN / "velo"), "report", batches["cur"], "--reference-profile", str(profile), "--json"]
        profiles = {name: measured(profile_cmd(model, DATA / name, profile)) for name in ("all", "ref")}
        velo["profile"] = {"drifted": [c for c in json.loads(measured([*cmd, "--redis", url])[2])["drifted"]]}
        print(f"velo profile: {profiles}; report against it: {velo['profile']}", flush=True)

    ev: dict[str, dict[str, object]] = {}
    job = str(ROOT / "bench" / "evidently_job.py")
    for name, reps in (("cur", args.reps), ("same", 1)):
        runs = [measured([str(python), job, str(DATA / "ref"), str(DATA / name)]) for _ in range(reps)]
        results = [json.loads(r[2]) for r in runs]
        ev[name] = {
            "seconds": statistics.median(r[0] for r in runs),
            "drift": statistics.median(r["drift_seconds"] for r in results),
            "import": statistics.median(r["import_seconds"] for r in results),
            "read": statistics.median(r["read_seconds"] for r in results),
            "peak": max(max(r[1] for r in runs), max(r["peak_rss"] for r in results)),
            "drifted": results[-1]["drifted"],
            "score": results[-1]["columns"][SHIFTED]["score"],
            "method": results[-1]["columns"][SHIFTED]["method"],
            "reps": reps,
        }
        print(f"evidently {name}: { {k: v for k, v in ev[name].items()} }", flush=True)

    agree = all(velo[n]["drifted"] == ev[n]["drifted"] for n in ("cur", "same"))
    expected = velo["cur"]["drifted"] == [SHIFTED] and velo["same"]["drifted"] == []
    agree = agree and velo["profile"]["drifted"] == velo["cur"]["drifted"]
    text = lines(args.reps, velo, ev, run_seconds, agree, expected)
    text += [
        "",
        "`velo profile` of the same CSVs, one process (its peak RSS is flat: statistics are bounded, "
        "files streamed): "
        + "; ".join(
            f"{rows} rows in {seconds:.1f} s, peak RSS {_mb(peak)}"
            for rows, (seconds, peak, _) in (("200,000", profiles["ref"]), ("1,400,000", profiles["all"]))
        )
        + ". `velo report` of the shifted batch against the 200,000 rows' profile flags "
        + f"{_cols(velo['profile']['drifted'])}.",
    ]
    write_section("Drift report against Evidently", [*text, "", wall_time()])
    print(wall_time())
    if not (agree and expected):
        raise SystemExit(
            "velo report and Evidently disagree, or flag other than the shifted column; see docs/BENCHMARKS.md"
        )


def _mb(n: object) -> str:
    return f"{float(n) / 1e6:,.0f} MB"


def _cols(cols: object) -> str:
    return ", ".join(f"`{c}`" for c in cols) or "nothing"


def lines(
    reps: int,
    velo: dict[str, dict[str, object]],
    ev: dict[str, dict[str, object]],
    run_seconds: float,
    agree: bool,
    expected: bool,
) -> list[str]:
    v, e = velo["cur"], ev["cur"]
    ratio = float(e["drift"]) / float(v["seconds"])
    verdict = (
        "**They agree**: the shifted column alone, then nothing."
        if agree and expected
        else "**They do not agree** (or flag more than the shifted column): see the columns above."
    )
    return [
        machine() + " A shared machine: other jobs ran meanwhile, so the ratio, measured in the same run, "
        "means more than the seconds.",
        "",
        "Command: `python -m bench.drift_evidently"
        + (f" --reps {reps}`" if reps != 3 else "`")
        + " (in `make bench`). Data (bench/data/drift/, made once): reference 200,000 rows, current "
        f"600,000 rows in 3 files with `{SHIFTED}` shifted by {SHIFT} standard deviations, and a resample of "
        "600,000 rows with no shift; `id` + 20 normal features. Each folder scored once by "
        "`velo run --stats` (logistic regression, a private redis-server); the current batch's run took "
        f"{run_seconds:.1f} s, statistics included. Evidently 0.7 (`DataDriftPreset`, its defaults) runs "
        "in its own venv (pandas < 3) on the same CSVs; peak RSS is the process's high-water mark (VmHWM).",
        "",
        "| on the shifted batch | `velo report` (from stored statistics) | Evidently `DataDriftPreset` |",
        "| --- | ---: | ---: |",
        f"| drift computation, median of {reps} | {float(v['seconds']):.2f} s whole command "
        f"({float(v['in_process']) * 1000:.0f} ms of it loading and comparing; first run "
        f"{float(v['first']):.2f} s) | {float(e['drift']):.1f} s |",
        f"| import + reading the CSVs again | none: no input is read | {float(e['import']):.1f} s + "
        f"{float(e['read']):.1f} s |",
        f"| peak RSS | {_mb(v['peak'])} | {_mb(e['peak'])} |",
        f"| columns flagged, shifted batch | {_cols(v['drifted'])} | {_cols(e['drifted'])} |",
        f"| columns flagged, resample | {_cols(velo['same']['drifted'])} | {_cols(ev['same']['drifted'])} |",
        "",
        f"Evidently's drift computation alone took {ratio:.0f}x `velo report`'s whole command. "
        f"Evidently judged `{SHIFTED}` by {e['method']} ({float(e['score']):.3f} against 0.1); `velo report` "
        f"by its rule (PSI >= 0.1, or KS >= 0.1 beyond chance): "
        + ", ".join(f"`{k}` PSI {p:.3f}, KS {k_:.3f}" for k, (p, k_) in v["top"].items())
        + f". The prediction, by `velo report`: {'drift' if v['prediction'] else 'no drift'} "
        "(Evidently was given the features only). " + verdict,
    ]


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
