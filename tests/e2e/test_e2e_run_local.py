"""`velo run` on a local folder: one machine, one command, embedded Redis, no server to set up."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from helpers import (
    assert_output_matches,
    dump_model,
    expected_output,
    find_dispatch_line,
    fit_model,
    is_sidecar,
    make_frame,
    processes_in,
    read_output,
    write_csv,
)

pytestmark = pytest.mark.e2e


def data_files(root: Path) -> set[str]:
    """Every file under root (relative paths), lineage sidecars left out."""
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file() and not is_sidecar(p.name)}


def test_run_scores_a_nested_local_folder_then_does_nothing_the_second_time(velo, tmp_path):
    # Given three CSVs in a nested folder and a model dumped next to it (no REDIS_URL, no --redis)
    data = tmp_path / "data"
    frames = {
        "a/1.csv": make_frame(20, seed=1),
        "a/2.csv": make_frame(30, seed=2),
        "b/3.csv": make_frame(25, seed=3),
    }
    for rel, frame in frames.items():
        write_csv(data / rel, frame)
    model = fit_model()
    model_path = dump_model(model, tmp_path / "models" / "model.joblib")

    # When velo run scores the folder with two local workers
    first = velo("run", data, "--model", model_path, "--workers", "2", timeout=150)

    # Then it succeeds and every input has its output next to it, exactly as the spec says
    assert first.returncode == 0, velo.describe(first)
    assert "Traceback" not in first.stdout + first.stderr
    assert data_files(data) == {
        "a/1.csv",
        "a/2.csv",
        "b/3.csv",
        "a/1.out.csv",
        "a/2.out.csv",
        "b/3.out.csv",
    }
    for rel, frame in frames.items():
        out = data / rel.replace(".csv", ".out.csv")
        assert_output_matches(read_output(out), expected_output(frame, model))
    # And the summary names files and rows, with the batch's numbers
    summary = first.stdout.lower()
    assert "files" in summary and "rows" in summary, velo.describe(first)
    assert re.search(r"\b75\b", first.stdout), "the summary does not show the 75 rows scored\n" + first.stdout
    _, enqueued, skipped = find_dispatch_line(first.stdout)
    assert (enqueued, skipped) == (3, 0)

    # And the embedded Redis kept its file in VELO_STATE_DIR and did not outlive the command
    assert any(velo.state_dir.iterdir()), "nothing in VELO_STATE_DIR after velo run"
    assert processes_in(velo.state_dir) == []

    mtimes = {rel: (data / rel).stat().st_mtime_ns for rel in data_files(data)}

    # When velo run is run again on the same folder with the same model
    second = velo("run", data, "--model", model_path, "--workers", "2", timeout=150)

    # Then nothing is redone: 0 enqueued, 3 skipped, outputs untouched, no new file
    assert second.returncode == 0, velo.describe(second)
    _, enqueued, skipped = find_dispatch_line(second.stdout)
    assert (enqueued, skipped) == (0, 3), velo.describe(second)
    assert {rel: (data / rel).stat().st_mtime_ns for rel in data_files(data)} == mtimes
    assert data_files(data) == set(mtimes)
    assert processes_in(velo.state_dir) == []


def test_run_with_a_model_fitted_without_names_uses_every_column_in_order(velo, tmp_path):
    # Given a CSV with only the four feature columns and a model fitted on a plain array
    data = tmp_path / "in"
    frame = make_frame(15, seed=5).drop(columns="id")
    write_csv(data / "plain.csv", frame)
    model = fit_model(with_names=False)
    model_path = dump_model(model, tmp_path / "nameless.joblib")

    # When velo run scores it
    result = velo("run", data, "--model", model_path, "--workers", "1")

    # Then the output has every input column and the model's predictions
    assert result.returncode == 0, velo.describe(result)
    assert_output_matches(read_output(data / "plain.out.csv"), expected_output(frame, model))
