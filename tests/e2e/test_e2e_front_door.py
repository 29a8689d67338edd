"""What a new user meets first: a line saying why nothing happened, where `velo status` looked."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest
from helpers import dump_model, fit_model, make_frame, write_csv

pytestmark = pytest.mark.e2e


def stderr_lines(result) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.strip()]


@pytest.mark.parametrize("command", ["dispatch", "run"])
def test_an_empty_source_says_nothing_matched_and_where(command, velo, tmp_path):
    source = tmp_path / "in"
    source.mkdir()
    (source / "notes.txt").write_text("not a csv\n")
    model_path = dump_model(fit_model(), tmp_path / "model.joblib")
    args = [command, source, "--model", model_path] + (["--dry-run"] if command == "dispatch" else [])
    result = velo(*args, check=0)
    [line] = [line for line in stderr_lines(result) if line.startswith("velo: ")]
    assert line == f"velo: no files matching *.csv, *.csv.gz under {source}; check SOURCE or --pattern", line
    assert "Traceback" not in result.stdout + result.stderr


def test_status_with_no_batch_says_which_state_folder_it_read(velo):
    result = velo("status", check=0)
    [line] = stderr_lines(result)
    assert line.startswith("velo: no batch in the embedded Redis under ") and str(velo.state_dir) in line, line
    assert "VELO_STATE_DIR" in line, line


def test_status_with_no_batch_names_the_redis_it_read(velo, clean_redis):
    result = velo("status", "--redis", clean_redis, check=0)
    [line] = stderr_lines(result)
    assert clean_redis in line and "--redis" in line, line


def test_run_summary_says_its_seconds_are_wall_seconds(velo, tmp_path):
    write_csv(tmp_path / "in" / "1.csv", make_frame(10, seed=1))
    model_path = dump_model(fit_model(), tmp_path / "model.joblib")
    result = velo("run", tmp_path / "in", "--model", model_path, "--workers", "1", check=0)
    assert "wall s" in result.stdout and "start-up included" in result.stdout, velo.describe(result)
    # Its own INFO lines (the model load) went to the run log, not to the terminal
    assert " INFO " not in result.stdout + result.stderr, velo.describe(result)
    [log] = Path(velo.state_dir).glob("run-*.log")
    assert "model" in log.read_text() and " INFO " in log.read_text()


def test_tests_write_nothing_under_home(velo_env):
    home = os.path.expanduser("~")
    if tempfile.gettempdir().startswith(home + os.sep):
        pytest.skip("the temporary folder itself is under HOME")
    for name in ("VELO_MODEL_CACHE", "VELO_STATE_DIR", "XDG_STATE_HOME", "XDG_CACHE_HOME"):
        assert not os.environ[name].startswith(home + os.sep), f"{name}={os.environ[name]} is under {home}"
    # A `velo` the fixtures start (they drop the caller's VELO_* settings) downloads models there too
    assert velo_env()["VELO_MODEL_CACHE"] == os.environ["VELO_MODEL_CACHE"]
