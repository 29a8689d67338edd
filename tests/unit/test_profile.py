"""`velo profile`'s statistics (dispatcher.profile) and `velo serve`'s choice of a batch's reference
and its drift gauges (dispatcher.serve.drift), in-process on fakeredis and moto."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from helpers import csv_bytes, dump_model, fit_model, make_frame, write_csv
from prometheus_client import CollectorRegistry, generate_latest

from dispatcher.profile import inputs, load_profile, profile, write_profile
from dispatcher.serve.drift import Drift, DriftCollector
from velosiped import keys
from velosiped.errors import ConfigError, InputError
from velosiped.sketch import Stats, store


def test_profile_is_the_workers_statistics_of_every_input(tmp_path):
    model = fit_model()
    path = dump_model(model, tmp_path / "m.joblib")
    a, b = make_frame(300, seed=1), make_frame(200, seed=2)
    write_csv(tmp_path / "d" / "a.csv", a)
    write_csv(tmp_path / "d" / "sub" / "b.csv.gz", b)
    write_csv(tmp_path / "d" / "a.out.csv", make_frame(7))  # an output: not an input
    assert [i.uri.rsplit("/", 1)[-1] for i in inputs(str(tmp_path / "d"), ("*.csv", "*.csv.gz"))] == [
        "a.csv",
        "b.csv.gz",
    ]
    stats = profile(str(tmp_path / "d"), str(path))
    both = np.concatenate([a["f2"], b["f2"]])
    assert (stats.rows, stats.files) == (500, 2)
    assert stats.features["f2"].mean == pytest.approx(both.mean()) and stats.features["f2"].min == both.min()
    predicted = model.predict(pd.concat([a, b])[["f0", "f1", "f2", "f3"]])
    assert stats.classes == {str(k): int(v) for k, v in zip(*np.unique(predicted, return_counts=True), strict=True)}
    write_profile(str(tmp_path / "p.json"), stats)
    assert load_profile(str(tmp_path / "p.json")).to_json() == stats.to_json()


def test_profile_refuses_what_it_cannot_read(tmp_path):
    path = dump_model(fit_model(), tmp_path / "m.joblib")
    (tmp_path / "d").mkdir()
    with pytest.raises(ConfigError, match="no files matching"):
        profile(str(tmp_path / "d"), str(path))
    (tmp_path / "d" / "x.csv").write_text("id,f0\n1,abc\n")
    with pytest.raises(InputError, match=r"x\.csv: missing feature columns"):
        profile(str(tmp_path / "d"), str(path))
    with pytest.raises(ConfigError, match="no such profile"):
        load_profile(str(tmp_path / "none.json"))
    (tmp_path / "bad.json").write_text('{"v": 9}')
    with pytest.raises(ConfigError, match="not a profile"):
        load_profile(str(tmp_path / "bad.json"))
    with pytest.raises(ConfigError, match="names a folder"):
        write_profile(str(tmp_path) + "/", Stats())


def test_profile_on_s3(mock_s3, tmp_path):
    path = dump_model(fit_model(), tmp_path / "m.joblib")
    mock_s3.put_object(Bucket="bkt", Key="train/a.csv", Body=csv_bytes(make_frame(50)))
    stats = profile("s3://bkt/train/", str(path))
    write_profile("s3://bkt/p/profile.json", stats)
    assert load_profile("s3://bkt/p/profile.json").rows == 50


def _batch(redis, batch: str, created: float, shift: float, source: str = "/in", seed: int = 0) -> None:
    redis.hset(keys.batch(batch), mapping={"source": source, "model": "/m", "total": 1, "done": 1, "retention": 100})
    redis.zadd(keys.BATCHES, {batch: created})
    stats = Stats()
    stats.start(["x", "y"], labels=False)
    rng = np.random.default_rng(seed)
    stats.update([rng.normal(size=5000) + shift, rng.normal(size=5000)], rng.normal(size=5000))
    store(redis, batch, f"{source}/a.csv", stats)


def test_a_batch_is_judged_against_the_previous_one_on_its_source_and_model(redis, tmp_path):
    _batch(redis, "b1", 1.0, 0.0, seed=1)
    _batch(redis, "other", 2.0, 0.5, source="/elsewhere", seed=2)  # another source: never a reference
    _batch(redis, "b2", 3.0, 0.3, seed=3)
    drift = Drift(lambda: redis, None)
    result = drift.report("b2")[0]
    assert result["reference"] == "b1" and result["drifted"] == ["x"]
    assert drift.report("b1")[0]["reference"] is None
    registry = CollectorRegistry()
    registry.register(DriftCollector(drift))
    text = generate_latest(registry).decode()
    assert 'velo_batch_drift_flagged{batch="b2",feature="x"} 1.0' in text
    assert 'velo_batch_drift_flagged{batch="b2",feature="y"} 0.0' in text
    assert 'velo_batch_drift_columns{batch="b2"} 1.0' in text
    assert 'batch="b1"' not in text and 'batch="other"' not in text  # no reference: no gauges

    # With a profile, every batch is judged against it
    calm = Stats()
    calm.start(["x", "y"], labels=False)
    rng = np.random.default_rng(9)
    calm.update([rng.normal(size=5000), rng.normal(size=5000)], rng.normal(size=5000))
    write_profile(str(tmp_path / "p.json"), calm)
    text = generate_latest(_registry(Drift(lambda: redis, str(tmp_path / "p.json")))).decode()
    assert 'velo_batch_drift_columns{batch="b1"} 0.0' in text
    assert 'velo_batch_drift_columns{batch="other"} 1.0' in text


def _registry(drift: Drift) -> CollectorRegistry:
    registry = CollectorRegistry()
    registry.register(DriftCollector(drift))
    return registry
