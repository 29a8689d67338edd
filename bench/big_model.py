"""Big models: a ~600 MB forest served by `velo worker --processes 2`, loaded once, shared, replaced live.

    python -m bench.big_model [--model-mb 600] [--files 4] [--rows 50000] [--reps 1] [--quick]

The model is a RandomForestClassifier whose few fully grown trees were fitted on the bench
features (200,000 rows) and then deep-copied into ``estimators_`` (and ``n_estimators``) until
its joblib dump weighs ``--model-mb``: a forest of that size without an hour of fitting. Its
memory and load time are those of a real forest of that many trees; its predictions equal
those of the trees actually fitted. Version 2 is the same forest with one attribute added:
other bytes, so another SHA-256, so another model version.

Each run, against a private redis-server and a local folder of ``--files`` CSVs:

1. ``velo worker --processes 2 --model M --metrics-port P`` (not burst: it stays up);
   ``velo dispatch DIR --model M --wait``; then version 2 is written over M and dispatched the
   same way, to the same running workers. After each step: every process's RSS, USS and PSS
   (psutil ``memory_full_info``), model loads and load seconds from the Prometheus metrics,
   loads per process from the JSON log; after version 2, the outputs' lineage sidecars.
2. Baseline, same run: ``velo worker --processes 2`` without ``--model`` (each process loads
   the model at its first job), dispatched version 1 again.

Workers are stopped with SIGTERM and every process they started is checked gone.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import pickle
import shutil
import signal
import statistics
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import joblib
import numpy as np
import pandas as pd
import psutil
import sklearn
from prometheus_client.parser import text_string_to_metric_families
from sklearn.ensemble import RandomForestClassifier

from bench.bench import FEATURES, make_data
from bench.common import free_port, machine, private_redis, wall_time, write_section
from velosiped.models import sha256_file

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
FITTED_TREES = 4
"""Trees actually fitted; the rest of the forest is copies of them."""
MB = 1e6


def build(v1: Path, v2: Path, target: float) -> dict[str, float]:
    """Fit a few deep trees, copy them until the dump is ``target`` bytes, dump two versions (in a child process)."""
    rng = np.random.default_rng(42)
    train = pd.DataFrame(rng.normal(size=(200_000, len(FEATURES))), columns=FEATURES)
    label = (train.f0 + train.f1 - train.f2 + rng.normal(scale=0.5, size=len(train)) > 0).astype(int)
    started = time.perf_counter()
    forest = RandomForestClassifier(n_estimators=FITTED_TREES, random_state=0, n_jobs=1).fit(train, label)
    fit_s = time.perf_counter() - started
    per_tree = statistics.mean(len(pickle.dumps(t, protocol=pickle.HIGHEST_PROTOCOL)) for t in forest.estimators_)
    total = max(FITTED_TREES, round(target / per_tree))
    fitted = forest.estimators_
    # Deep copies, not references: pickle would store a repeated object once, and load it once.
    forest.estimators_ = fitted + [copy.deepcopy(fitted[i % FITTED_TREES]) for i in range(FITTED_TREES, total)]
    forest.n_estimators = total
    joblib.dump(forest, v1)
    forest.velo_bench_revision = 2  # same trees, other bytes: a new model version
    joblib.dump(forest, v2)
    return {"trees": total, "fitted": FITTED_TREES, "fit_s": fit_s, "nodes": int(fitted[0].tree_.node_count)}


def models(folder: Path, target_mb: int) -> tuple[Path, Path, dict[str, float]]:
    """Versions 1 and 2 of the big forest, built once and cached."""
    v1, v2, meta = (folder / f"rf-{target_mb}mb{s}" for s in (".joblib", "-v2.joblib", ".json"))
    if not (v1.exists() and v2.exists() and meta.exists()):
        folder.mkdir(parents=True, exist_ok=True)
        with ProcessPoolExecutor(1) as pool:  # fitting's thread pools and 1 GB of garbage stay out of this process
            info = pool.submit(build, v1, v2, target_mb * MB).result()
        meta.write_text(json.dumps(info))
    return v1, v2, json.loads(meta.read_text())


def install(src: Path, dst: Path) -> str:
    """Write ``src`` over ``dst`` whole (a copy renamed into place), as a deploy would; its version."""
    tmp = dst.with_name(dst.name + ".tmp")
    shutil.copyfile(src, tmp)
    os.replace(tmp, dst)
    return "sha256:" + sha256_file(str(dst))


@dataclass
class Snapshot:
    """Memory of the worker's processes (parent first) and its model loads at one moment."""

    rss: list[int]
    uss: list[int]
    pss: list[int]
    pids: list[int]
    loads: float = 0.0
    load_seconds: float = 0.0
    per_process: dict[int, int] = field(default_factory=dict)
    batch_s: float = 0.0


class Worker:
    """A running `velo worker --processes N` and what it shows: memory, metrics, log."""

    def __init__(self, env: dict[str, str], log: Path, processes: int, preload: Path | None) -> None:
        self.port, self.log, self.processes = free_port(), log, processes
        cmd = [str(BIN / "velo"), "worker", "--processes", str(processes), "--metrics-port", str(self.port)]
        cmd += ["--metrics-addr", "127.0.0.1", "--log-format", "json"]
        cmd += ["--model", str(preload)] if preload else []
        with open(log, "wb") as f:
            self.proc = subprocess.Popen(cmd, env=env, stdout=f, stderr=subprocess.STDOUT)
        self.parent = psutil.Process(self.proc.pid)
        self.started: set[int] = {self.proc.pid}
        self.left_behind = 0

    def __enter__(self) -> Worker:
        try:
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.left_behind = self.stop()

    def wait_ready(self, timeout: float = 300) -> None:
        """Until every worker process listens on the queue."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"bench.big_model: velo worker exited {self.proc.returncode}; see {self.log}")
            listening = sum("Listening on" in r.get("message", "") for r in self.records())
            if listening >= self.processes:
                self.started |= {c.pid for c in self.parent.children(recursive=True)}
                return
            time.sleep(0.2)
        raise SystemExit(f"bench.big_model: workers not ready after {timeout:.0f} s; see {self.log}")

    def records(self) -> list[dict]:
        out = []
        for line in self.log.read_text().splitlines():
            with contextlib.suppress(ValueError):
                out.append(json.loads(line))
        return out

    def snapshot(self) -> Snapshot:
        procs = [self.parent, *sorted(self.parent.children(recursive=True), key=lambda p: p.pid)]
        self.started |= {p.pid for p in procs}
        infos = [p.memory_full_info() for p in procs]
        snap = Snapshot(
            rss=[i.rss for i in infos],
            uss=[i.uss for i in infos],
            pss=[i.pss for i in infos],
            pids=[p.pid for p in procs],
        )
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=10) as r:
            for family in text_string_to_metric_families(r.read().decode()):
                for s in family.samples:
                    if s.name == "velo_model_loads_total":
                        snap.loads = s.value
                    elif s.name == "velo_model_load_seconds_sum":
                        snap.load_seconds = s.value
        for rec in self.records():
            if rec.get("message", "").endswith(" loaded") and " model " in rec.get("message", ""):
                snap.per_process[rec["pid"]] = snap.per_process.get(rec["pid"], 0) + 1
        return snap

    def stop(self) -> int:
        """SIGTERM (finish the file in hand, exit); the number of its processes still alive after."""
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        left = []
        for pid in self.started - {self.proc.pid}:
            with contextlib.suppress(psutil.NoSuchProcess):
                p = psutil.Process(pid)
                if p.status() != psutil.STATUS_ZOMBIE and p.ppid() in (self.proc.pid, 1):
                    left.append(p)
        for p in left:  # only what this worker started
            p.kill()
        return len(left)


def dispatch(env: dict[str, str], data: Path, model: Path) -> float:
    started = time.perf_counter()
    cmd = [str(BIN / "velo"), "dispatch", str(data), "--model", str(model), "--wait"]
    subprocess.run(cmd, env=env, check=True, capture_output=True)
    return time.perf_counter() - started


def output_versions(data: Path) -> set[str]:
    return {json.loads(p.read_text())["velo-model-version"] for p in data.glob("*.out.csv.velo.json")}


def clean(data: Path) -> None:
    for p in data.glob("*.out.*"):
        p.unlink()


@dataclass
class Rep:
    snaps: dict[str, Snapshot]
    same_pids: bool
    v2_outputs: bool
    left_behind: int


def one_run(env: dict[str, str], data: Path, served: Path, v1: Path, v2: Path, logs: Path) -> Rep:
    clean(data)
    snaps: dict[str, Snapshot] = {}
    version1 = install(v1, served)
    with Worker(env, logs / "preload.log", 2, served) as w:
        snaps["preload, idle"] = w.snapshot()
        batch = dispatch(env, data, served)
        snaps["preload, after version 1"] = w.snapshot()
        snaps["preload, after version 1"].batch_s = batch
        version2 = install(v2, served)  # no restart: the running workers get the next jobs
        batch = dispatch(env, data, served)
        snaps["preload, after version 2 (no restart)"] = w.snapshot()
        snaps["preload, after version 2 (no restart)"].batch_s = batch
    preload_left = w.left_behind
    same_pids = snaps["preload, idle"].pids == snaps["preload, after version 2 (no restart)"].pids
    v2_outputs = output_versions(data) == {version2} and version2 != version1
    install(v1, served)
    with Worker(env, logs / "baseline.log", 2, None) as w:
        snaps["baseline (no --model), idle"] = w.snapshot()
        batch = dispatch(env, data, served)
        snaps["baseline (no --model), after version 1"] = w.snapshot()
        snaps["baseline (no --model), after version 1"].batch_s = batch
    left = preload_left + w.left_behind
    return Rep(snaps, same_pids, v2_outputs, left)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model-mb", type=int, default=600, help="size of the forest's joblib dump")
    ap.add_argument("--files", type=int, default=4)
    ap.add_argument("--rows", type=int, default=50_000, help="rows per file")
    ap.add_argument("--reps", type=int, default=1, help="runs (~80 s each at 600 MB); the table gives medians")
    ap.add_argument("--quick", action="store_true", help="smoke run: a 60 MB forest, 4 files x 5,000 rows, 1 rep")
    ap.add_argument("--data", default=str(ROOT / "bench" / "data" / "big_model"))
    ap.add_argument("--out", default=str(ROOT / "docs" / "BENCHMARKS.md"))
    args = ap.parse_args()
    if args.quick:
        args.model_mb, args.rows, args.reps = 60, 5_000, 1
    folder = Path(args.data)
    v1, v2, info = models(folder, args.model_mb)
    paths, _ = make_data(folder / f"{args.files}x{args.rows}", args.files, args.rows, [])
    data = paths[0].parent
    served = folder / "served" / "model.joblib"
    served.parent.mkdir(exist_ok=True)
    reps: list[Rep] = []
    logs = folder / "logs"
    logs.mkdir(exist_ok=True)
    with private_redis() as url:
        env = {**os.environ, "REDIS_URL": url}
        for k in ("VELO_MODEL_PREFIXES", "VELO_ALLOWED_PREFIXES", "VELO_THREADS", "VELO_METRICS_PORT"):
            env.pop(k, None)
        for i in range(args.reps):
            rep = one_run(env, data, served, v1, v2, logs)
            reps.append(rep)
            for name, s in rep.snaps.items():
                print(
                    f"rep {i + 1} {name}: RSS {[round(r / MB) for r in s.rss]} MB, PSS sum {sum(s.pss) / MB:.0f} MB, "
                    f"loads {s.loads:.0f} {dict(s.per_process)}, load s {s.load_seconds:.2f}, batch {s.batch_s:.1f} s",
                    flush=True,
                )
            print(f"rep {i + 1}: same pids {rep.same_pids}, v2 outputs {rep.v2_outputs}, left {rep.left_behind}")
    clean(data)
    report(reps, info, v1.stat().st_size, args)


def report(reps: list[Rep], info: dict[str, float], size: int, args: argparse.Namespace) -> None:
    med = statistics.median
    last = reps[-1]
    command = "python -m bench.big_model" + (
        " --quick"
        if args.quick
        else f" --model-mb {args.model_mb} --files {args.files} --rows {args.rows} --reps {args.reps}"
    )
    lines = [
        f"{machine()} scikit-learn {sklearn.__version__}, joblib {joblib.__version__}.",
        "",
        f"Command: `{command}`. The model: a RandomForestClassifier of {info['trees']:.0f} fully grown trees, "
        f"{size / MB:.0f} MB as a joblib dump; {info['fitted']:.0f} trees were fitted on 200,000 rows of the bench "
        f"features ({info['nodes']:,.0f} nodes each) and deep-copied to fill the forest, so it weighs and loads like a "
        "forest of that many trees while fitting in seconds (its predictions are those of the fitted trees). "
        "Version 2 is the same forest with one attribute added: other bytes, another SHA-256, another model version. "
        f"Against a private redis-server, {args.files} CSV files x {args.rows:,} rows in a local folder; "
        "`velo worker --processes 2 --model M --metrics-port P` stays up while `velo dispatch DIR --model M --wait` "
        "sends version 1, then version 2 written over M (no restart). Baseline in the same run: `velo worker "
        "--processes 2` without `--model`. Memory from psutil (`memory_full_info`) for the pool's parent and its 2 "
        "workers, in that order; loads and load seconds (unpickling) from the worker's Prometheus metrics, "
        f"cumulative; medians of {len(reps)} run(s) (processes as in the last run).",
        "",
        "| worker | moment | RSS MB parent / worker / worker | USS MB, sum | PSS MB, sum | model loads (per process) "
        "| load s, sum | batch s |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for key, snap in last.snaps.items():
        runs = [r.snaps[key] for r in reps]
        who, moment = key.split(", ", 1)
        rss = " / ".join(f"{med(r.rss[i] for r in runs) / MB:.0f}" for i in range(len(snap.rss)))
        per = ", ".join(str(snap.per_process.get(pid, 0)) for pid in snap.pids)
        lines.append(
            f"| {who} | {moment} | {rss} | {med(sum(r.uss) for r in runs) / MB:.0f} | "
            f"{med(sum(r.pss) for r in runs) / MB:.0f} | {med(r.loads for r in runs):.0f} ({per}) | "
            f"{med(r.load_seconds for r in runs):.2f} | "
            f"{f'{med(r.batch_s for r in runs):.1f}' if snap.batch_s else '-'} |"
        )
    lines += ["", paragraph(reps, size), "", wall_time()]
    write_section("Big models", lines, Path(args.out))
    print("\n".join(lines))
    print(f"bench.big_model: {wall_time()}", flush=True)


def paragraph(reps: list[Rep], size: int) -> str:
    """What the numbers say, worded from the numbers of this run."""
    med = statistics.median
    s = {k: [r.snaps[k] for r in reps] for k in reps[-1].snaps}

    def pss(key: str) -> float:
        return med(sum(x.pss) for x in s[key]) / MB

    def loads(key: str) -> float:
        return med(x.loads for x in s[key])

    v1, v2 = "preload, after version 1", "preload, after version 2 (no restart)"
    base, base_idle, idle = "baseline (no --model), after version 1", "baseline (no --model), idle", "preload, idle"
    first_load = med(x.load_seconds / x.loads for x in s[v1] if x.loads)
    more = loads(v2) - loads(v1)
    reload = med((b.load_seconds - a.load_seconds) / more for a, b in zip(s[v1], s[v2], strict=True)) if more else 0
    text = (
        f"Preloaded, the {size / MB:.0f} MB forest is unpickled "
        f"{'once' if loads(v1) == 1 else f'{loads(v1):.0f} times'} for the machine, in the pool's parent before "
        f"it forks ({first_load:.1f} s, scikit-learn's imports included), "
        "and both workers score with that copy: after the batch the three processes' PSS adds up to "
        f"{pss(v1):.0f} MB where their RSS adds up to {med(sum(x.rss) for x in s[v1]) / MB:.0f} MB, the model's "
        "pages shared copy-on-write (USS, the memory only one process holds, is "
        f"{med(sum(x.uss) for x in s[v1]) / MB:.0f} MB for all three). "
        f"Without `--model` each worker unpickles its own copy at its first job ({loads(base):.0f} loads, "
        f"{pss(base):.0f} MB of PSS, {pss(base) - pss(v1):+.0f} MB) and the batch waits for it "
        f"({med(x.batch_s for x in s[base]):.1f} s against {med(x.batch_s for x in s[v1]):.1f} s). "
        f"Version 2, written over the same path, was picked up by the running workers "
        f"({'the same processes, ' if all(r.same_pids for r in reps) else 'NOT the same processes, '}"
        f"{'every output lineage naming version 2' if all(r.v2_outputs for r in reps) else 'outputs NOT all version 2'}"
        f") with one load in each worker that took a job ({more:.0f} more, {reload:.1f} s each): a new version is "
        "loaded once per process, not once per machine, and is not shared, so PSS grows to "
        f"{pss(v2):.0f} MB ({pss(v2) - pss(v1):+.0f} MB) until the workers restart and preload it. "
        f"Idle, a preloaded pool holds {pss(idle):.0f} MB of PSS against {pss(base_idle):.0f} MB without a model. "
        "PSS also splits the pages of shared libraries with any other process mapping them. Each load ends with "
        "glibc's `malloc_trim` (worker/models.py, added with this benchmark): unpickling a forest copies every array "
        "into the trees' own buffers, and glibc kept the freed copies, about 120 MB of a fresh load and 500 MB of a "
        "new version loaded in a forked worker (1,087 MB per worker for version 2 before, ~600 MB after). "
        + (
            "No process was left behind after SIGTERM."
            if not any(r.left_behind for r in reps)
            else "Processes were left behind after SIGTERM (killed by the benchmark)."
        )
    )
    return text


if __name__ == "__main__":
    main()
