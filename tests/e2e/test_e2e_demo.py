"""The README's demos run as a newcomer runs them (with this checkout's venv)."""

from __future__ import annotations

import os
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
