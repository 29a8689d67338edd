"""`velo run --engine treelite`: a HistGradientBoosting model compiled, checked, and writing what
scikit-learn writes; a model the engine cannot take is scored by scikit-learn, said once."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from helpers import dump_model, feature_names, fit_model, make_frame, read_output, write_csv
from sklearn.ensemble import HistGradientBoostingClassifier

pytestmark = pytest.mark.e2e
pytest.importorskip("tl2cgen")
if shutil.which("gcc") is None:  # the engine compiles with it (and falls back without it)
    pytest.skip("no gcc: the engine has nothing to compile with", allow_module_level=True)


def _hgb():
    frame = make_frame(2000, seed=21)
    x = frame[feature_names()]
    labels = np.select([x.f0 + x.f1 < -0.5, x.f0 + x.f1 < 0.5], ["low", "mid"], default="high")
    return HistGradientBoostingClassifier(max_iter=30, random_state=0).fit(x, labels)


def _lineage(output: Path) -> dict:
    return json.loads(output.with_name(output.name + ".velo.json").read_text())


def _run_log(velo_env) -> str:
    return "".join(p.read_text() for p in sorted(Path(velo_env.state_dir).glob("run-*.log")))


def test_run_with_the_engine_writes_what_scikit_learn_writes(velo, velo_env, tmp_path):
    # Given the same three CSVs in two folders and a 3-class HistGradientBoosting model
    frames = {f"{i}.csv": make_frame(3000, seed=30 + i) for i in range(3)}
    for folder in ("engine", "sklearn"):
        for name, frame in frames.items():
            write_csv(tmp_path / folder / name, frame)
    model_path = dump_model(_hgb(), tmp_path / "hgb.joblib")

    # When one folder is scored with the compiled engine and the other with scikit-learn
    fast = velo("run", tmp_path / "engine", "--model", model_path, "--workers", "2", "--proba", "--engine", "treelite",
                timeout=240)  # fmt: skip
    slow = velo("run", tmp_path / "sklearn", "--model", model_path, "--workers", "2", "--proba", timeout=240)

    # Then both succeed, quietly (no compiler chatter), and every output is scikit-learn's:
    # same columns, same labels as written, probabilities equal to the last digits of a float
    assert fast.returncode == 0, velo.describe(fast)
    assert slow.returncode == 0, velo.describe(slow)
    assert "Treelite" not in fast.stdout + fast.stderr and "Traceback" not in fast.stderr
    for name in frames:
        out = name.replace(".csv", ".out.csv")
        got, want = read_output(tmp_path / "engine" / out), read_output(tmp_path / "sklearn" / out)
        assert list(got.columns) == list(want.columns) == ["id", *feature_names(), "prediction",
                                                           "proba_high", "proba_low", "proba_mid"]  # fmt: skip
        assert got["prediction"].tolist() == want["prediction"].tolist()
        assert got["id"].tolist() == want["id"].tolist()
        for column in ("proba_high", "proba_low", "proba_mid"):
            np.testing.assert_allclose(got[column], want[column], rtol=0, atol=1e-12)
        # And the output's lineage says what predicted
        assert _lineage(tmp_path / "engine" / out)["velo-engine"] == "treelite"
        assert "velo-engine" not in _lineage(tmp_path / "sklearn" / out)
    # And each worker checked the compiled model on its first file before trusting it
    assert "agrees with scikit-learn on 1000 rows; it scores this model" in _run_log(velo_env)

    # And the engine is not an output option: scikit-learn's outputs count as done for it
    again = velo("run", tmp_path / "sklearn", "--model", model_path, "--workers", "1", "--engine", "treelite",
                 "--proba")  # fmt: skip
    assert again.returncode == 0, velo.describe(again)
    assert "0 enqueued, 3 skipped" in again.stdout


def test_a_model_the_engine_cannot_take_is_scored_by_scikit_learn_and_says_why(velo, velo_env, tmp_path):
    # Given a logistic regression (not a tree ensemble)
    write_csv(tmp_path / "data" / "a.csv", make_frame(50, seed=1))
    model_path = dump_model(fit_model(), tmp_path / "lr.joblib")

    # When it is run with --engine treelite
    result = velo("run", tmp_path / "data", "--model", model_path, "--workers", "1", "--engine", "treelite")

    # Then the file is scored by scikit-learn, and one line of the run's log says why
    assert result.returncode == 0, velo.describe(result)
    lines = [line for line in _run_log(velo_env).splitlines() if "engine treelite" in line]
    assert len(lines) == 1, lines
    assert "not a tree ensemble it compiles; scikit-learn scores this model" in lines[0]
    made = _lineage(tmp_path / "data" / "a.out.csv")
    assert made["velo-engine"] == "sklearn"
    assert "LogisticRegression, not a tree ensemble" in made["velo-engine-fallback"]
    assert (
        read_output(tmp_path / "data" / "a.out.csv")["prediction"].tolist()
        == fit_model().predict(make_frame(50, seed=1)[feature_names()]).tolist()
    )


def test_an_unknown_engine_is_a_usage_error(velo, tmp_path):
    write_csv(tmp_path / "data" / "a.csv", make_frame(5))
    model_path = dump_model(fit_model(), tmp_path / "lr.joblib")
    result = velo("run", tmp_path / "data", "--model", model_path, "--engine", "onnx")
    assert result.returncode == 2
    assert "'onnx' is not one of 'sklearn', 'treelite'" in result.stderr
    assert "Traceback" not in result.stderr
