"""`velo serve`'s app through FastAPI's test client: answers equal the batch's, errors are one line."""

from __future__ import annotations

import asyncio
import io

import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient

from dispatcher.serve.app import ServeConfig, create_app
from dispatcher.serve.batcher import Batcher
from dispatcher.serve.served import Served
from tests.helpers import csv_bytes, dump_model, fit_model, make_frame
from worker.scoring import score_stream


@pytest.fixture
def model():
    return fit_model("multiclass")


@pytest.fixture
def client(model, tmp_path, monkeypatch):
    monkeypatch.delenv("VELO_API_TOKEN", raising=False)
    path = dump_model(model, tmp_path / "m.joblib")
    with TestClient(
        create_app(ServeConfig(model=str(path), max_rows=50, max_body=20_000)), raise_server_exceptions=False
    ) as c:
        yield c


def batch_output(frame: pd.DataFrame, model, **options) -> pd.DataFrame:
    """What a worker writes for these rows: the file path, run in-process."""
    out = io.BytesIO()
    score_stream(io.BytesIO(csv_bytes(frame)), out, model, name="f.csv", **options)
    return pd.read_csv(io.BytesIO(out.getvalue()))


@pytest.mark.parametrize("shape", ["records", "columns", "csv"])
def test_answers_equal_the_batch_output_of_the_same_rows(client, model, shape):
    frame = make_frame(12, seed=3)
    if shape == "csv":
        answer = client.post("/predict?proba=1", content=csv_bytes(frame), headers={"content-type": "text/csv"})
        got = pd.read_csv(io.BytesIO(answer.content))
    elif shape == "records":
        answer = client.post("/predict?proba=1", json=frame.to_dict(orient="records"))
        got = pd.DataFrame(answer.json())
    else:
        answer = client.post("/predict?proba=1", json=frame.to_dict(orient="list"))
        got = pd.DataFrame(answer.json())
    assert answer.status_code == 200, answer.text
    expected = batch_output(frame, model, proba=True)
    assert list(got.columns) == list(expected.columns)
    assert (got["prediction"] == model.predict(frame[list(model.feature_names_in_)])).all()
    pd.testing.assert_frame_equal(got, expected, check_dtype=False, rtol=1e-12)


def test_keep_copies_only_the_named_columns_and_accept_picks_csv(client, model):
    frame = make_frame(3, seed=4)
    answer = client.post("/predict?keep=id", json=frame.to_dict(orient="records"), headers={"accept": "text/csv"})
    assert answer.headers["content-type"].startswith("text/csv")
    assert answer.text.splitlines()[0] == "id,prediction"
    got = pd.read_csv(io.StringIO(answer.text))
    pd.testing.assert_frame_equal(got, batch_output(frame, model, keep=["id"]), check_dtype=False)


@pytest.mark.parametrize(
    ("body", "kwargs", "status", "says"),
    [
        ([{"id": 1, "f0": 1, "f1": 2, "f2": 3}], {}, 422, "missing feature columns: f3"),
        (
            [{"f0": 1, "f1": 2, "f2": 3, "f3": 4}, {"f0": 1, "f1": "oops", "f2": 3, "f3": 4}],
            {},
            422,
            "row 2, column 'f1'",
        ),
        ({"f0": [1, 2], "f1": [1]}, {}, 422, "different lengths"),
        (None, {"content": b"{nope", "headers": {"content-type": "application/json"}}, 422, "not JSON"),
        ([{"f0": 1, "f1": 2, "f2": 3, "f3": 4}] * 51, {}, 413, "over --max-rows 50"),
        (None, {"content": b"x" * 20_001, "headers": {"content-type": "text/csv"}}, 413, "over --max-body"),
        ([{"f0": 1, "f1": 2, "f2": 3, "f3": 4}], {"params": {"keep": "nope"}}, 422, "--keep names columns not in"),
    ],
)
def test_bad_bodies_get_one_line_and_their_status(client, body, kwargs, status, says):
    answer = client.post("/predict", json=body, **kwargs) if body is not None else client.post("/predict", **kwargs)
    assert answer.status_code == status, answer.text
    error = answer.json()["error"]
    assert says in error and "\n" not in error and "Traceback" not in error


def test_a_crash_is_a_500_without_a_stack_trace(client, monkeypatch):
    from dispatcher.serve import bodies

    def boom(*args):
        raise RuntimeError("secret internals")

    monkeypatch.setattr(bodies, "parse", boom)
    answer = client.post("/predict", json=[{"f0": 1}])
    assert answer.status_code == 500
    assert answer.json() == {"error": "internal error; see the server's log"}


def test_info_health_and_readiness(client, model, tmp_path):
    info = client.get("/info").json()
    assert info["features"] == ["f0", "f1", "f2", "f3"] and info["classes"] == ["a", "b", "c"]
    assert info["version"] == "sha256:" + info["sha256"] and info["type"] == "LogisticRegression"
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").json() == {"ready": True, "problems": []}
    assert client.get("/docs").status_code == 200
    assert "/v1/batches" in client.get("/openapi.json").json()["paths"]
    page = client.get("/")
    assert page.status_code == 200 and '<script src="/static/app.js">' in page.text
    assert client.get("/static/app.js").status_code == 200


def test_metrics_count_requests_rows_and_batches(client):
    client.post("/predict", json=make_frame(5).to_dict(orient="records"))
    text = client.get("/metrics").text
    assert 'velo_http_request_seconds_count{route="/predict",status="200"} 1.0' in text
    assert "velo_predicted_rows_total 5.0" in text
    assert "velo_batch_rows_count 1.0" in text


def test_the_batcher_scores_concurrent_requests_in_one_call_and_a_bad_one_fails_alone(model, tmp_path):
    served = Served(str(dump_model(model, tmp_path / "m.joblib")), None, 0)
    current = served.load()
    calls: list[tuple[int, int]] = []
    batcher = Batcher(max_rows=1024, wait=0, observe=lambda rows, n: calls.append((rows, n)))
    frames = [make_frame(i + 1, seed=i) for i in range(8)]
    spec = current.spec(list(frames[0].columns), "request")
    xs = [f[spec.columns].to_numpy(dtype=float) for f in frames]
    bad = np.full((2, 3), 1.0)  # three features where the model takes four

    async def all_at_once():
        return await asyncio.gather(
            *(batcher.predict(current, spec, x, False) for x in [*xs, bad]), return_exceptions=True
        )

    answers = asyncio.run(all_at_once())
    for frame, (prediction, _) in zip(frames, answers[:8], strict=True):
        assert list(prediction) == list(model.predict(frame[list(model.feature_names_in_)]))
    assert isinstance(answers[8], Exception) and "model rejected" in str(answers[8])
    # the 9 bodies were tried together, then each alone when the model refused the lot
    assert calls == [(r, 1) for r in range(1, 9)] or calls[0] == (sum(range(1, 9)), 8), calls


def test_the_batcher_forms_one_call_for_good_concurrent_requests(model, tmp_path):
    current = Served(str(dump_model(model, tmp_path / "m.joblib")), None, 0).load()
    calls: list[tuple[int, int]] = []
    batcher = Batcher(max_rows=1024, wait=0, observe=lambda rows, n: calls.append((rows, n)))
    spec = current.spec(["f0", "f1", "f2", "f3"], "request")

    async def many():
        return await asyncio.gather(*(batcher.predict(current, spec, np.ones((1, 4)) * i, False) for i in range(8)))

    asyncio.run(many())
    assert calls == [(8, 8)]


def test_a_new_model_version_is_served_without_restart_and_a_wrong_pin_keeps_the_old(tmp_path):
    path = dump_model(fit_model("logreg"), tmp_path / "m.joblib")
    served = Served(str(path), None, 0)
    first = served.load()
    assert served.check() is False  # unchanged: not even hashed again
    dump_model(fit_model("multiclass"), path)
    assert served.check() is True
    assert served.current is not None and served.current.classes == ["a", "b", "c"] and served.current is not first

    pinned = Served(str(path), served.current.sha256, 0)
    pinned.load()
    dump_model(fit_model("logreg"), path)
    assert pinned.check() is False
    assert pinned.current is not None and pinned.current.classes == ["a", "b", "c"]
    assert pinned.error is not None and "does not match --model-sha256" in pinned.error


def test_a_model_that_needs_column_names_keeps_getting_a_dataframe(tmp_path):
    from sklearn.compose import ColumnTransformer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    frame = make_frame(200, seed=9)
    y = (frame.f0 + frame.f1 > 0).astype(int)
    picky = make_pipeline(ColumnTransformer([("s", StandardScaler(), ["f1", "f0"])]), LogisticRegression()).fit(
        frame[["f0", "f1", "f2", "f3"]], y
    )
    current = Served(str(dump_model(picky, tmp_path / "p.joblib")), None, 0).load()
    spec = current.spec(list(frame.columns), "request")
    x = frame[spec.columns].to_numpy(dtype=float)
    for _ in range(2):
        prediction, _ = current.predict(spec, x, False)
        assert list(prediction) == list(picky.predict(frame[["f0", "f1", "f2", "f3"]]))
    assert current.plain is False


def test_mutating_routes_want_the_token_when_one_is_set(model, tmp_path, monkeypatch):
    monkeypatch.setenv("VELO_API_TOKEN", "t0ken")
    path = dump_model(model, tmp_path / "m.joblib")
    with TestClient(create_app(ServeConfig(model=str(path))), raise_server_exceptions=False) as c:
        refused = c.post("/v1/batches", json={"source": str(tmp_path), "model": str(path)})
        assert refused.status_code == 401 and "Bearer" in refused.json()["error"]
        assert c.post("/v1/batches/x/retry").status_code == 401
        # with the token it gets through to the missing Redis
        told = c.post(
            "/v1/batches", json={"source": str(tmp_path), "model": str(path)}, headers={"authorization": "Bearer t0ken"}
        )
        assert told.status_code == 503 and "no Redis configured" in told.json()["error"]
        assert c.post("/predict", json=make_frame(1).to_dict(orient="records")).status_code == 200


def test_api_batches_obey_the_allow_lists(model, tmp_path, monkeypatch):
    monkeypatch.delenv("VELO_API_TOKEN", raising=False)
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    monkeypatch.setenv("VELO_ALLOWED_PREFIXES", str(allowed))
    path = dump_model(model, allowed / "m.joblib")
    with TestClient(create_app(ServeConfig(model=str(path))), raise_server_exceptions=False) as c:
        outside = tmp_path / "secret"
        outside.mkdir()
        refused = c.post("/v1/batches", json={"source": str(outside), "model": str(path)})
        assert refused.status_code == 400 and "outside VELO_ALLOWED_PREFIXES" in refused.json()["error"]


def test_a_chunked_body_over_the_limit_is_refused(client):
    def chunks():  # no Content-Length: the server counts as it reads
        for _ in range(100):
            yield b"f0,f1,f2,f3\n" + b"1,2,3,4\n" * 100

    answer = client.post("/predict", content=chunks(), headers={"content-type": "text/csv"})
    assert answer.status_code == 413 and "over --max-body" in answer.json()["error"]


def test_engine_treelite_answers_as_scikit_learn_does_and_info_says_what_predicts(tmp_path, monkeypatch):
    """`velo serve --engine treelite`: a tree ensemble compiled as for the batch, checked on the
    rows it answers, with the same answers; a model it cannot take is served by scikit-learn,
    and /info says which and why."""
    import shutil

    pytest.importorskip("tl2cgen")
    if shutil.which("gcc") is None:
        pytest.skip("no gcc: the engine has nothing to compile with")
    from sklearn.ensemble import HistGradientBoostingClassifier

    from tests.helpers import feature_names

    monkeypatch.delenv("VELO_API_TOKEN", raising=False)
    monkeypatch.setenv("VELO_MODEL_CACHE", str(tmp_path / "cache"))
    train = make_frame(600, seed=7)[feature_names()]
    hgb = HistGradientBoostingClassifier(max_iter=10, random_state=0).fit(train, (train.f0 > train.f1).astype(int))
    path = dump_model(hgb, tmp_path / "hgb.joblib")
    frame = make_frame(40, seed=4)
    with TestClient(create_app(ServeConfig(model=str(path), engine="treelite"))) as c:
        bodies = [frame.iloc[i : i + 10].to_dict(orient="records") for i in (0, 10, 20)]
        answers = [c.post("/predict?proba=1", json=body) for body in bodies]
        info = c.get("/info").json()
    got = pd.concat([pd.DataFrame(a.json()) for a in answers])
    rows = frame[feature_names()].iloc[:30]
    assert (got["prediction"].to_numpy() == hgb.predict(rows)).all()
    np.testing.assert_allclose(got[["proba_0", "proba_1"]], hgb.predict_proba(rows), atol=1e-9)
    assert (info["engine"], info["type"]) == ("treelite", "HistGradientBoostingClassifier")

    logreg = dump_model(fit_model(), tmp_path / "lr.joblib")
    with TestClient(create_app(ServeConfig(model=str(logreg), engine="treelite"))) as c:
        info = c.get("/info").json()
        assert c.post("/predict", json=frame.iloc[:3].to_dict(orient="records")).status_code == 200
    assert info["engine"] == "sklearn" and "not a tree ensemble" in info["engine_fallback"]
