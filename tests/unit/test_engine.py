"""--engine treelite: a tree ensemble compiled once, checked against scikit-learn on the first
block it scores, and scikit-learn kept (said in one line) for any model that fails the check or
that the engine cannot take."""

from __future__ import annotations

import io
import logging
import shutil

import numpy as np
import pandas as pd
import pytest
from helpers import a_payload, feature_names, make_frame
from sklearn.ensemble import (
    ExtraTreesRegressor,
    HistGradientBoostingClassifier,
    HistGradientBoostingRegressor,
    RandomForestClassifier,
)
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.tree import DecisionTreeClassifier

from velosiped.jobs import validate
from worker import engine
from worker.scoring import score_stream

pytest.importorskip("tl2cgen")
if shutil.which("gcc") is None:  # the engine compiles with it (and falls back without it)
    pytest.skip("no gcc: the engine has nothing to compile with", allow_module_level=True)


@pytest.fixture(autouse=True)
def _fresh(tmp_path, monkeypatch):
    """Each test its own compiled-library folder and an empty per-process engine cache."""
    monkeypatch.setenv("VELO_MODEL_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(engine, "_held", {})


def _train(kind: str):
    frame = make_frame(600, seed=7)
    x = frame[feature_names()]
    if kind == "hgb":
        return HistGradientBoostingClassifier(max_iter=15, random_state=0).fit(x, (x.f0 + x.f1 > 0).astype(int))
    if kind == "hgb3":
        labels = np.select([x.f0 < -0.5, x.f0 < 0.5], ["a", "b"], default="c")
        return HistGradientBoostingClassifier(max_iter=10, random_state=0).fit(x, labels)
    if kind == "hgbr":
        return HistGradientBoostingRegressor(max_iter=15, random_state=0).fit(x, x.f0 * 2 - x.f1)
    if kind == "rf":
        return RandomForestClassifier(n_estimators=5, max_depth=4, random_state=0).fit(x, (x.f0 > 0).astype(int))
    if kind == "rf1":  # one tree: TL2cgen's code has a single unit
        return RandomForestClassifier(n_estimators=1, max_depth=6, random_state=0).fit(x, (x.f0 > 0).astype(int))
    if kind == "etr":
        return ExtraTreesRegressor(n_estimators=7, max_depth=5, random_state=0).fit(x, x.f0 * 2 - x.f1)
    raise ValueError(kind)


@pytest.mark.parametrize("kind", ["hgb", "hgb3", "hgbr", "rf", "rf1", "etr"])
def test_a_compiled_tree_ensemble_agrees_with_scikit_learn(kind, caplog):
    model = _train(kind)
    x = make_frame(3000, seed=8)[feature_names()]
    x.iloc[5, 2] = np.nan  # a missing value goes where scikit-learn sends it

    with caplog.at_level(logging.INFO, logger="worker.engine"):
        compiled = engine.for_model(model, f"digest-{kind}", "m.joblib")
        prediction = compiled.predict(x)

    assert isinstance(compiled, engine.Compiled)
    assert engine.engine_of(compiled) == "treelite", caplog.text
    assert "agrees with scikit-learn on 1000 rows" in caplog.text
    want = model.predict(x)
    assert prediction.dtype == want.dtype
    if kind in ("hgbr", "etr"):
        np.testing.assert_allclose(prediction, want, rtol=0, atol=1e-9)
    else:
        assert (prediction == want).all()
        np.testing.assert_allclose(compiled.predict_proba(x), model.predict_proba(x), rtol=0, atol=1e-9)
        assert list(compiled.classes_) == list(model.classes_)  # everything else is the model's own
    assert list(compiled.feature_names_in_) == feature_names()


def test_rows_split_over_threads_and_blocks_score_as_one_block(monkeypatch):
    model = _train("rf")
    x = make_frame(3001, seed=12)[feature_names()]
    x.iloc[7, 1] = np.nan
    monkeypatch.setenv("VELO_THREADS", "3")
    monkeypatch.setattr(engine, "BLOCK_ENTRIES", 100 * len(feature_names()))  # blocks of 100 rows, 3 threads
    compiled = engine.for_model(model, "digest-threads", "m.joblib")
    np.testing.assert_allclose(compiled.predict_proba(x), model.predict_proba(x), rtol=0, atol=1e-12)
    np.testing.assert_array_equal(compiled.predict(x.iloc[:1]), model.predict(x.iloc[:1]))  # one row
    with pytest.raises(ValueError, match="takes 4 features"):
        compiled._predictor(np.zeros((3, 5)))


def test_the_library_is_compiled_once_per_model_version(tmp_path, monkeypatch):
    model = _train("hgb")
    engine.for_model(model, "digest-a", "m.joblib")
    libraries = list((tmp_path / "cache" / "compiled").glob("*.so"))
    assert len(libraries) == 1
    monkeypatch.setattr(engine, "_held", {})  # another process: it finds the library on disk
    built = []
    monkeypatch.setattr("tl2cgen.generate_c_code", lambda *a, **k: built.append(a))
    again = engine.for_model(model, "digest-a", "m.joblib")
    assert isinstance(again, engine.Compiled)
    assert built == []
    assert engine.for_model(model, "digest-a", "m.joblib") is again  # this process: held


def test_a_compiled_model_that_disagrees_falls_back_and_says_so(caplog):
    model = _train("hgb")
    compiled = engine.for_model(model, "digest-bad", "m.joblib")
    real = compiled._predictor
    # The compiled predictor is made to be wrong: each probability pushed away from 0.5 (no label
    # changes) by up to 5e-5, past the 1e-6 allowed
    compiled._predictor = lambda x: 0.5 + (real(x) - 0.5) * (1 + 1e-4)
    x = make_frame(2000, seed=9)[feature_names()]

    with caplog.at_level(logging.INFO, logger="worker.engine"):
        proba = compiled.predict_proba(x)
        labels = compiled.predict(x)

    lines = [r.getMessage() for r in caplog.records if r.name == "worker.engine"]
    assert len(lines) == 1, lines
    assert "m.joblib checked on 1000 rows: a probability differs by " in lines[0]
    assert "(over 1e-06)" in lines[0]
    assert "scikit-learn scores this model" in lines[0]
    assert engine.engine_of(compiled) == "sklearn"
    np.testing.assert_array_equal(proba, model.predict_proba(x))  # scikit-learn's own, bit for bit
    np.testing.assert_array_equal(labels, model.predict(x))


def test_a_wrong_label_falls_back_too(caplog):
    model = _train("rf")
    compiled = engine.for_model(model, "digest-label", "m.joblib")
    compiled._predictor = lambda x: np.tile([[1.0, 0.0]], (len(x), 1))  # always the first class
    x = make_frame(500, seed=10)[feature_names()]
    with caplog.at_level(logging.WARNING, logger="worker.engine"):
        labels = compiled.predict(x)
    assert "predicted label(s) differ" in caplog.text
    np.testing.assert_array_equal(labels, model.predict(x))


@pytest.mark.parametrize(
    ("model", "reason"),
    [
        (
            make_pipeline(StandardScaler(), HistGradientBoostingClassifier(max_iter=5)),
            "this model is a Pipeline",
        ),
        (LogisticRegression(), "this model is LogisticRegression, not a tree ensemble it compiles"),
        (DecisionTreeClassifier(max_depth=3), "this model is DecisionTreeClassifier, not a tree ensemble it compiles"),
    ],
)
def test_a_model_the_engine_cannot_take_is_scored_by_scikit_learn_with_one_line(model, reason, caplog):
    x = make_frame(200, seed=3)[feature_names()]
    model.fit(x, (x.f0 > 0).astype(int))
    with caplog.at_level(logging.INFO, logger="worker.engine"):
        got = engine.for_model(model, "digest-x", "m.joblib")
        engine.for_model(model, "digest-x", "m.joblib")  # said once per model version
    assert got is model
    lines = [r.getMessage() for r in caplog.records if r.name == "worker.engine"]
    assert len(lines) == 1, lines
    assert reason in lines[0] and "scikit-learn scores this model" in lines[0]
    assert reason in (engine.refused("m.joblib", "digest-x") or "")  # for the output's lineage


def test_too_many_nodes_is_refused_before_compiling(monkeypatch, caplog):
    monkeypatch.setattr(engine, "MAX_NODES", 10)
    with caplog.at_level(logging.WARNING, logger="worker.engine"):
        got = engine.for_model(_train("hgb"), "digest-big", "m.joblib")
    assert not isinstance(got, engine.Compiled)
    assert "tree nodes, over the 10 the engine compiles" in caplog.text


def test_without_a_c_compiler_the_model_falls_back(monkeypatch, caplog):
    monkeypatch.setattr(engine, "COMPILER", "no-such-cc")
    with caplog.at_level(logging.WARNING, logger="worker.engine"):
        got = engine.for_model(_train("hgb"), "digest-cc", "m.joblib")
    assert not isinstance(got, engine.Compiled)
    assert "no C compiler (no-such-cc)" in caplog.text


def test_a_scored_file_is_byte_for_byte_what_scikit_learn_writes_but_for_float_last_digits():
    model = _train("hgb3")
    frame = make_frame(1500, seed=11)
    data = frame.to_csv(index=False).encode()
    outs = {}
    for name, m in {"sklearn": model, "treelite": engine.for_model(model, "digest-file", "m.joblib")}.items():
        dst = io.BytesIO()
        score_stream(io.BytesIO(data), dst, m, name="a.csv", proba=True)
        outs[name] = pd.read_csv(io.BytesIO(dst.getvalue()), dtype=str)
    assert list(outs["treelite"].columns) == list(outs["sklearn"].columns)
    assert (outs["treelite"]["prediction"] == outs["sklearn"]["prediction"]).all()  # string labels, as written
    for column in ("proba_a", "proba_b", "proba_c"):
        np.testing.assert_allclose(
            outs["treelite"][column].astype(float), outs["sklearn"][column].astype(float), rtol=0, atol=1e-12
        )


def test_the_payload_takes_an_engine_and_refuses_an_unknown_one():
    base = a_payload()
    assert validate({**base, "engine": "treelite"})["engine"] == "treelite"
    assert "engine" not in validate(dict(base))
    with pytest.raises(Exception, match="engine must be one of sklearn, treelite"):
        validate({**base, "engine": "onnx"})


def test_blocks_of_a_few_rows_are_each_checked_until_a_thousand_rows_have_agreed(caplog):
    """Small files and online requests come a few rows at a time: the check goes on, block after
    block, until 1,000 rows have agreed; a later block that differs still brings scikit-learn back."""
    model = _train("hgb")
    x = make_frame(1200, seed=9)[feature_names()]
    with caplog.at_level(logging.INFO, logger="worker.engine"):
        compiled = engine.for_model(model, "digest-few", "m.joblib")
        for start in range(0, 50, 10):
            assert (compiled.predict(x.iloc[start : start + 10]) == model.predict(x.iloc[start : start + 10])).all()
        assert compiled.checked == 50 and "agrees" not in caplog.text
        compiled.predict(x.iloc[50:1200])
    assert compiled.checked == 1000 and engine.engine_of(compiled) == "treelite"
    assert "agrees with scikit-learn on 1000 rows" in caplog.text

    wrong = engine.for_model(model, "digest-other", "m.joblib")
    wrong.predict(x.iloc[:10])
    flipped = lambda rows: 1 - model.predict_proba(pd.DataFrame(rows, columns=feature_names()))[:, 1]  # noqa: E731
    wrong._predictor = flipped  # from now on, every label flips
    assert (wrong.predict(x.iloc[10:20]) == model.predict(x.iloc[10:20])).all()
    assert engine.engine_of(wrong) == "sklearn" and "checked on 20 rows" in str(engine.fallback_of(wrong))


def test_generated_code_of_another_shape_is_not_driven(tmp_path):
    import tl2cgen
    import treelite

    # Quantized features: TL2cgen's predict() converts each row before the trees, which the driver's
    # tree-by-tree loop would not: such code is refused (scikit-learn then scores the model)
    tl2cgen.generate_c_code(
        treelite.sklearn.import_model(_train("rf")), str(tmp_path), params={"parallel_comp": 5, "quantize": 1}
    )
    with pytest.raises(engine._Unsupported, match="work before its trees"):
        engine._add_driver(str(tmp_path))
