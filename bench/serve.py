"""`velo serve` against the REST service a user would write (bench/serve_baseline.py), with wrk.

    python -m bench.serve [--reps 3] [--seconds 10]

Both on the bench's logistic regression on 20 features, 2 server processes each, on loopback;
wrk (apt-get install wrk) with one thread. Cases, each run for --seconds, interleaved (baseline,
velo, baseline, velo, ...) --reps times, medians written to docs/BENCHMARKS.md:

- 1-row bodies, 1 connection: latency p50 (target: velo <= 1.0 ms);
- 1-row bodies, 8 connections: requests/s (target: >= 2 x the baseline) and p99 (<= 10 ms);
- 100-row bodies, 8 connections: rows/s (target: >= 1.5 x the baseline).

Before timing, both answers are checked against ``model.predict`` on the same rows. `velo serve`
is asked for ``?keep=id`` (the id and the prediction), the closest to the baseline's answer.
The rows and requests per ``predict`` call the batcher formed are read from its /metrics.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import joblib
import numpy as np
import pandas as pd

from bench.bench import FEATURES, fit_model
from bench.common import free_port, machine, write_section

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
CASES = (("1 row, 1 connection", 1, 1), ("1 row, 8 connections", 1, 8), ("100 rows, 8 connections", 100, 8))


@contextlib.contextmanager
def server(argv: list[str], port: int, env: dict[str, str]) -> Iterator[str]:
    proc = subprocess.Popen(
        argv, env={**os.environ, **env}, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(base + "/info", timeout=1)
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    why = proc.stderr.read().decode() if proc.stderr else ""
                    raise SystemExit(f"{argv[0]} did not start: {why}") from None
                time.sleep(0.2)
        yield base
    finally:
        proc.terminate()
        proc.wait(30)


def body(rows: int, seed: int) -> list[dict[str, float]]:
    rng = np.random.default_rng(seed)
    return [
        {"id": i, **{f: float(v) for f, v in zip(FEATURES, rng.normal(size=len(FEATURES)), strict=True)}}
        for i in range(rows)
    ]


def post(url: str, obj: object) -> object:
    request = urllib.request.Request(url, json.dumps(obj).encode(), {"content-type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as answer:
        return json.loads(answer.read())


def wrk(url: str, body_path: Path, connections: int, seconds: int) -> dict[str, float]:
    script = body_path.with_suffix(".lua")
    script.write_text(
        'wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n'
        f'local f = io.open("{body_path}", "r"); wrk.body = f:read("*a"); f:close()\n'
    )
    out = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency", "-s", str(script), url],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if errors:
        raise SystemExit(f"wrk saw {errors[1]} error answers from {url}:\n{out}")
    return {
        "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out)[1]),  # type: ignore[index]
        "p50": _ms(re.search(r"50%\s+([\d.]+\w+)", out)[1]),  # type: ignore[index]
        "p99": _ms(re.search(r"99%\s+([\d.]+\w+)", out)[1]),  # type: ignore[index]
    }


def _ms(text: str) -> float:
    value, unit = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text).groups()  # type: ignore[union-attr]
    return float(value) * {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 6e4}[unit]


def batcher_counts(base: str) -> tuple[float, float, float]:
    """(rows, requests, predict calls) the batcher formed so far, from /metrics."""
    text = urllib.request.urlopen(base + "/metrics", timeout=5).read().decode()

    def value(name: str) -> float:
        found = re.search(rf"^{name} ([\d.e+]+)$", text, flags=re.M)
        return float(found[1]) if found else 0.0

    return value("velo_batch_rows_sum"), value("velo_batch_requests_sum"), value("velo_batch_rows_count")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--data", default=str(ROOT / "bench" / "data"))
    ap.add_argument("--out", default=str(ROOT / "docs" / "BENCHMARKS.md"))
    args = ap.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("bench.serve needs wrk: apt-get install wrk")
    data = Path(args.data)
    data.mkdir(parents=True, exist_ok=True)
    model_path = data / "logreg.joblib"
    fit_model(model_path, "logreg")
    model = joblib.load(model_path)
    work = Path(tempfile.mkdtemp(prefix="velo-bench-serve-"))
    bodies = {}
    for rows in (1, 100):
        bodies[rows] = work / f"body{rows}.json"
        bodies[rows].write_text(json.dumps(body(rows, seed=rows)))
    base_port, velo_port = free_port(), free_port()
    baseline_argv = [str(BIN / "uvicorn"), "bench.serve_baseline:app", "--workers", "2", "--port", str(base_port)]
    baseline_argv += ["--log-level", "warning", "--no-access-log"]
    velo_argv = [str(BIN / "velo"), "serve", "--model", str(model_path), "--workers", "2", "--port", str(velo_port)]
    results: dict[tuple[str, str], list[dict[str, float]]] = {}
    env = {"BASELINE_MODEL": str(model_path), "VELO_MODEL_CACHE": str(work / "cache"), "VELO_THREADS": "1"}
    with server(baseline_argv, base_port, env) as baseline, server(velo_argv, velo_port, env) as velo:
        urls = {"baseline": baseline + "/predict", "velo serve": velo + "/predict?keep=id"}
        for rows, path in bodies.items():  # the answers are the model's before anything is timed
            rows_in = json.loads(path.read_text())
            want = model.predict(pd.DataFrame.from_records(rows_in)[FEATURES]).tolist()
            got_base = post(urls["baseline"], rows_in)["predictions"]  # type: ignore[index]
            got_velo = [r["prediction"] for r in post(urls["velo serve"], rows_in)]  # type: ignore[union-attr]
            assert got_base == want and got_velo == want, f"{rows} rows: answers differ from model.predict"
        before = batcher_counts(velo)
        for rep in range(args.reps):
            for label, rows, connections in CASES:
                for who, url in urls.items():
                    print(f"rep {rep + 1}/{args.reps}: {who:10s} {label}", flush=True)
                    results.setdefault((label, who), []).append(wrk(url, bodies[rows], connections, args.seconds))
        after = batcher_counts(velo)
    shutil.rmtree(work, ignore_errors=True)
    report(results, [a - b for a, b in zip(after, before, strict=True)], args)


def report(
    results: dict[tuple[str, str], list[dict[str, float]]], formed: list[float], args: argparse.Namespace
) -> None:
    def med(label: str, who: str, key: str) -> float:
        return statistics.median(r[key] for r in results[(label, who)])

    rows_of = {label: rows for label, rows, _ in CASES}
    lines = [
        machine(),
        "",
        f"Command: `python -m bench.serve --reps {args.reps} --seconds {args.seconds}` (in `make bench`). The "
        "baseline is the REST service a user would write (`bench/serve_baseline.py`: FastAPI + uvicorn, "
        "`pandas.DataFrame.from_records(body)` then `predict`); `velo serve` is asked `?keep=id`. Both: 2 "
        "processes, the bench's logistic regression on 20 features, JSON records; wrk with 1 thread on the same "
        f"2 cores, {args.seconds} s per case, cases interleaved, median of {args.reps}. Answers checked against "
        "`model.predict` first.",
        "",
        "| case | server | requests/s | rows/s | p50 ms | p99 ms |",
        "| --- | --- | ---: | ---: | ---: | ---: |",
    ]
    for label, _, _ in CASES:
        for who in ("baseline", "velo serve"):
            rps = med(label, who, "rps")
            lines.append(
                f"| {label} | {who} | {rps:,.0f} | {rps * rows_of[label]:,.0f} | "
                f"{med(label, who, 'p50'):.2f} | {med(label, who, 'p99'):.2f} |"
            )
    one, eight, hundred = (c[0] for c in CASES)
    ratio8 = med(eight, "velo serve", "rps") / med(eight, "baseline", "rps")
    ratio100 = med(hundred, "velo serve", "rps") / med(hundred, "baseline", "rps")
    p50 = med(one, "velo serve", "p50")
    p99 = med(eight, "velo serve", "p99")

    def verdict(ok: bool) -> str:
        return "met" if ok else "missed"

    lines += [
        "",
        "| target | measured | |",
        "| --- | --- | --- |",
        f"| 1 row, 8 connections: >= 2 x the baseline's requests/s | {ratio8:.2f} x | {verdict(ratio8 >= 2)} |",
        f"| 1 row, 8 connections: p99 <= 10 ms | {p99:.2f} ms | {verdict(p99 <= 10)} |",
        f"| 100 rows: >= 1.5 x the baseline's rows/s | {ratio100:.2f} x | {verdict(ratio100 >= 1.5)} |",
        f"| 1 row, 1 connection: p50 <= 1.0 ms | {p50:.2f} ms | {verdict(p50 <= 1.0)} |",
    ]
    rows, requests, calls = formed
    if calls:
        lines += [
            "",
            f"The batcher formed {calls:,.0f} `predict` calls for {requests:,.0f} requests over all cases: "
            f"{requests / calls:.2f} requests and {rows / calls:.1f} rows per call on average.",
        ]
    write_section("Online predictions (velo serve)", lines, Path(args.out))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
