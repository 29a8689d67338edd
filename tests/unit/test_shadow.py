"""A challenger (`--shadow`) in a worker, on fakeredis: payloads carry it, a challenger that rejects a
block mid-file loses its own output only, and the comparison keeps its reason."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd

from dispatcher.enqueue import enqueue_batch
from dispatcher.plan import Options, plan
from dispatcher.status import describe
from tests.helpers import csv_bytes, dump_model, expected_output, fit_model, make_frame, read_output
from tests.unit.test_worker import work
from velosiped import payloads
from velosiped.jobs import validate
from velosiped.models import version_of
from velosiped.sketch import load_batch


class Picky:
    """Predicts like its inner model for three blocks, then refuses."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.calls = 0
        self.feature_names_in_ = inner.feature_names_in_
        self.n_features_in_ = inner.n_features_in_
        self.classes_ = inner.classes_

    def predict(self, x: pd.DataFrame) -> np.ndarray:
        self.calls += 1
        if self.calls > 3:
            raise ValueError("f0 out of the range I was trained on")
        return self.inner.predict(x)

    def predict_proba(self, x: pd.DataFrame) -> np.ndarray:
        return self.inner.predict_proba(x)


def shadow_options(tmp_path, challenger) -> tuple[str, Options]:
    data = tmp_path / "in"
    data.mkdir(parents=True)
    (data / "x.csv").write_bytes(csv_bytes(make_frame(5000, seed=3)))
    m1 = str(dump_model(fit_model(), tmp_path / "m1.joblib"))
    m2 = str(dump_model(challenger, tmp_path / "m2.joblib"))
    opts = Options(
        model=m1,
        model_version=version_of(m1),
        shadow=m2,
        shadow_version=version_of(m2),
        shadow_output=str(tmp_path / "shadow"),
    )
    return str(data), opts


def test_payloads_carry_the_challenger(redis, tmp_path):
    source, opts = shadow_options(tmp_path, fit_model())
    enqueue_batch(redis, "velo", source, opts, list(plan(source, opts)))
    job_id = redis.lrange("rq:queue:velo", 0, 0)[0].decode()
    p = payloads.load(redis, job_id)
    assert p["shadow"] == opts.shadow and p["shadow_version"] == opts.shadow_version
    assert p["shadow_output"] == str(tmp_path / "shadow" / "x.out.csv") and "shard" not in p
    validate(json.loads(json.dumps(p)))  # as `velo retry` keeps it


def test_a_challenger_rejecting_a_block_mid_file_keeps_the_champion(redis, tmp_path, monkeypatch):
    monkeypatch.setenv("VELO_BLOCK_SIZE", str(16 * 1024))  # many blocks: the refusal comes mid-file
    champion = fit_model()
    source, opts = shadow_options(tmp_path, Picky(fit_model()))
    batch = enqueue_batch(redis, "velo", source, opts, list(plan(source, opts)))
    work(redis)
    b = describe(redis, batch.id)
    assert (b["done"], b["failed"]) == (1, 0)
    frame = make_frame(5000, seed=3)
    out = read_output(tmp_path / "in" / "x.out.csv")
    pd.testing.assert_frame_equal(out, expected_output(frame, champion), check_dtype=False)
    shadow = tmp_path / "shadow"
    assert not (shadow / "x.out.csv").exists()
    assert [p.name for p in shadow.iterdir() if p.name.endswith(".tmp")] == []  # nothing half written
    error = json.loads((shadow / "x.out.csv.error.json").read_text())
    assert "challenger rejected rows" in error["error"] and "f0 out of the range" in error["error"]
    comparison = load_batch(redis, batch.id).comparison
    assert comparison is not None and comparison.failed_files == 1
    assert 0 < comparison.rows < 5000  # compared until it refused
    assert "challenger rejected rows" in error["error"] and not error["error"].split("rows ")[1].startswith("1-")
    # The same challenger, the same input: not tried again
    assert [p.reason for p in plan(source, opts)] == ["already done"]


def test_the_python_api_takes_the_shadow_options(tmp_path):
    from velosiped.api import _options

    source, opts = shadow_options(tmp_path, fit_model())
    given = _options(source, opts.model, {"shadow": opts.shadow, "shadow_output": opts.shadow_output})
    assert (given.shadow, given.shadow_version, given.shadow_output) == (
        opts.shadow,
        opts.shadow_version,
        opts.shadow_output,
    )
    assert given.shard_size == 0  # a file scored by two models is scored whole


def test_the_batch_api_checks_the_challenger_s_paths(tmp_path, monkeypatch):
    from fastapi.testclient import TestClient

    from dispatcher.serve.app import ServeConfig, create_app

    monkeypatch.delenv("VELO_API_TOKEN", raising=False)
    allowed = tmp_path / "allowed"
    source, opts = shadow_options(allowed, fit_model())
    monkeypatch.setenv("VELO_ALLOWED_PREFIXES", str(allowed))
    outside = tmp_path / "elsewhere"
    with TestClient(create_app(ServeConfig(model=opts.model)), raise_server_exceptions=False) as c:
        body = {
            "source": source,
            "model": opts.model,
            "options": {"shadow": opts.shadow, "shadow_output": str(outside)},
        }
        refused = c.post("/v1/batches", json=body)
        assert refused.status_code == 400 and "outside VELO_ALLOWED_PREFIXES" in refused.json()["error"]
        assert str(outside) in refused.json()["error"]
