"""The README's demos run as a newcomer runs them (with this checkout's venv)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def run(cmd: list[str], tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, "BIN": str(BIN), "VELO_STATE_DIR": str(tmp_path / "state"), **env}
    full_env.pop("REDIS_URL", None)
    return subprocess.run(cmd, cwd=ROOT, env=full_env, text=True, capture_output=True, timeout=180, check=False)


def test_make_demo_steps(tmp_path):
    demo = tmp_path / "demo"
    made = run([str(BIN / "python"), "scripts/make_demo.py", str(demo)], tmp_path)
    assert made.returncode == 0, made.stderr
    result = run(
        [str(BIN / "velo"), "run", str(demo / "data"), "--model", str(demo / "model.joblib"), "--workers", "2"],
        tmp_path,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "3 enqueued" in result.stdout
    assert sorted(p.name for p in demo.rglob("*.out.csv*") if not p.name.endswith(".json")) == [
        "1.out.csv",
        "2.out.csv",
        "3.out.csv.gz",
    ]


LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ (INFO|DEBUG) ", re.M)


def test_make_demo_twice_the_second_run_skips_every_file(tmp_path):
    if shutil.which("make") is None:
        pytest.skip("needs make")
    demo = tmp_path / "demo"
    venv = BIN.parent
    # This checkout's venv as the Makefile's, never rebuilt here (-o: its velo counts as up to date)
    make = ["make", "--no-print-directory", "demo", f"DEMO={demo}", f"VENV={venv}", "-o", f"{BIN}/velo"]

    first = run(make, tmp_path)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "3 enqueued, 0 skipped" in first.stdout, first.stdout
    # The user-facing output holds the progress bar and the summary, no log line
    assert not LOG_LINE.search(first.stdout + first.stderr), first.stdout + first.stderr
    # And it says how to see its batches: that command shows them
    assert f"VELO_STATE_DIR={demo}/state" in first.stdout and "velo status" in first.stdout, first.stdout
    status = run([str(BIN / "velo"), "status", "--json"], tmp_path, VELO_STATE_DIR=str(demo / "state"))
    assert '"done": 3' in status.stdout, status.stdout + status.stderr
    outputs = {p: p.stat().st_mtime_ns for p in demo.rglob("*.out.csv*")}
    inputs = {p: p.stat().st_mtime_ns for p in demo.rglob("*.csv*") if ".out." not in p.name}

    second = run(make, tmp_path)
    assert second.returncode == 0, second.stdout + second.stderr
    assert "kept" in second.stdout, second.stdout
    assert "0 enqueued, 3 skipped" in second.stdout, second.stdout
    assert {p: p.stat().st_mtime_ns for p in demo.rglob("*.out.csv*")} == outputs
    assert {p: p.stat().st_mtime_ns for p in demo.rglob("*.csv*") if ".out." not in p.name} == inputs

    # DEMO_FRESH=1 starts over: inputs written anew, every file scored again
    fresh = run([*make, "DEMO_FRESH=1"], tmp_path)
    assert fresh.returncode == 0, fresh.stdout + fresh.stderr
    assert "3 enqueued, 0 skipped" in fresh.stdout, fresh.stdout


def test_make_help_lists_every_target():
    result = subprocess.run(["make", "help"], cwd=ROOT, text=True, capture_output=True, check=False)
    targets = re.findall(r"^([a-z0-9-]+):.*## ", (ROOT / "Makefile").read_text(), flags=re.M)
    assert "demo-s3" in targets
    for target in targets:
        assert f"make {target} " in result.stdout, result.stdout


def test_demo_s3_runs_a_fleet_on_one_machine(tmp_path):
    if shutil.which("redis-server") is None:
        pytest.skip("needs redis-server")
    result = run(["scripts/demo_s3.sh", str(tmp_path / "demo")], tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "3 enqueued, 0 skipped" in result.stdout
    assert "dry run: 0 would be enqueued, 3 skipped" in result.stdout
    for key in ("in/a/1.out.csv", "in/a/2.out.csv", "in/b/3.out.csv.gz"):
        assert f"s3://velo/{key}" in result.stdout
    assert "Traceback" not in result.stderr
