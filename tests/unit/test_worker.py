"""Queue logic on fakeredis: JSON jobs, one model load for many jobs, idempotent enqueue, batch counters."""

from __future__ import annotations

import json
import zlib

import fakeredis
import pytest

from dispatcher.enqueue import enqueue_batch, retry_failed
from dispatcher.plan import Options, plan
from dispatcher.status import describe
from tests.helpers import csv_bytes, dump_model, fit_model, make_frame
from worker import models
from worker.runner import VeloWorker, make_queue


@pytest.fixture
def redis():
    conn = fakeredis.FakeStrictRedis()
    yield conn
    conn.flushall()


@pytest.fixture
def folder(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    for i in range(10):
        (data / f"{i}.csv").write_bytes(csv_bytes(make_frame(30, seed=i)))
    model = dump_model(fit_model(), tmp_path / "m.joblib")
    opts = Options(model=str(model), model_version=models.version_of(str(model)))
    return str(data), opts


def work(redis) -> None:
    VeloWorker([make_queue(redis, "velo")], connection=redis).work(burst=True)


def test_ten_jobs_on_one_model_load_it_once(redis, folder):
    # Given ten files dispatched with the same model
    source, opts = folder
    batch = enqueue_batch(redis, "velo", source, opts, list(plan(source, opts)))
    assert batch.enqueued == 10
    before = models.loads
    models._cache.clear()
    # When one worker runs them all
    work(redis)
    # Then the model was unpickled once, and every file is done
    assert models.loads - before == 1
    b = describe(redis, batch.id)
    assert (b["total"], b["done"], b["failed"], b["rows"]) == (10, 10, 0, 300)


def test_jobs_travel_as_json(redis, folder):
    source, opts = folder
    enqueue_batch(redis, "velo", source, opts, list(plan(source, opts))[:1])
    job_id = redis.lrange("rq:queue:velo", 0, 0)[0].decode()
    raw = redis.hget(f"rq:job:{job_id}", "data")
    func, _instance, args, _kwargs = json.loads(zlib.decompress(raw))  # RQ compresses, never pickles
    assert func == "worker.task.score_file"
    assert args[0]["input"].endswith("0.csv")


def test_redispatch_enqueues_nothing_and_a_queued_file_is_not_enqueued_twice(redis, folder):
    source, opts = folder
    first = enqueue_batch(redis, "velo", source, opts, list(plan(source, opts)))
    # Given the jobs still queued, a second dispatch finds them already there
    second = enqueue_batch(redis, "velo", source, opts, list(plan(source, opts)))
    assert (first.enqueued, second.enqueued, second.skipped) == (10, 0, 10)
    assert redis.llen("rq:queue:velo") == 10
    # When they are done, the plan says so
    work(redis)
    assert {p.reason for p in plan(source, opts)} == {"already done"}


def test_failed_file_is_recorded_once_and_retry_requeues_it_after_a_fix(redis, folder, tmp_path):
    source, opts = folder
    bad = tmp_path / "data" / "bad.csv"
    bad.write_bytes(b"id,f0\n1,2\n")
    batch = enqueue_batch(redis, "velo", source, opts, list(plan(source, opts)))
    work(redis)
    b = describe(redis, batch.id)
    assert (b["done"], b["failed"]) == (10, 1)
    assert b["failures"] == [{"file": str(bad), "error": f"{bad}: missing feature columns: f1, f2, f3"}]
    error = json.loads((tmp_path / "data" / "bad.out.csv.error.json").read_text())
    assert error["error"] == f"{bad}: missing feature columns: f1, f2, f3"
    assert redis.llen("rq:queue:velo") == 0  # a deterministic error is not retried

    bad.write_bytes(csv_bytes(make_frame(5)))
    assert retry_failed(redis, batch.id) == (1, [])
    work(redis)
    b = describe(redis, batch.id)
    assert (b["done"], b["failed"], b["rows"]) == (11, 0, 305)
    assert not (tmp_path / "data" / "bad.out.csv.error.json").exists()
