"""Files lost from the queue (their jobs removed behind Velosiped's back), on fakeredis."""

from __future__ import annotations

import io

from rich.console import Console

from dispatcher import lost, status
from dispatcher.enqueue import enqueue_batch, retry_failed
from dispatcher.plan import Options, Planned
from tests.helpers import csv_bytes, dump_model, fit_model, make_frame
from velosiped import keys, storage
from velosiped.models import version_of
from velosiped.rqapi import make_queue


def queued_batch(redis, tmp_path, n=2):
    model = str(dump_model(fit_model(), tmp_path / "m.joblib"))
    opts = Options(model=model, model_version=version_of(model))
    planned = []
    for i in range(n):
        path = tmp_path / f"{i}.csv"
        path.write_bytes(csv_bytes(make_frame(3, seed=i)))
        planned.append(Planned(storage.head(str(path)), str(tmp_path / f"{i}.out.csv"), "new"))
    return enqueue_batch(redis, "velo", str(tmp_path), opts, planned)


def test_a_file_is_lost_only_once_none_of_its_jobs_exists(redis, tmp_path):
    batch = queued_batch(redis, tmp_path)
    assert lost.find_lost(redis, batch.id) == {}
    # When one file's job is removed
    first = redis.lindex("rq:queue:velo", 0).decode()
    redis.delete(f"rq:job:{first}")
    # Then that file alone is lost, named with its job
    assert list(lost.find_lost(redis, batch.id).values()) == [[first]]


def test_wait_ends_once_every_file_left_is_lost_and_retry_enqueues_them(redis, tmp_path, monkeypatch):
    monkeypatch.setattr(status, "CHECK_AFTER", 0.05)
    batch = queued_batch(redis, tmp_path)
    make_queue(redis, "velo").empty()
    # A still batch is looked at after CHECK_AFTER s without progress, and the wait ends
    result = status.wait(redis, batch.id, Console(file=io.StringIO()), poll=0.01)
    assert (result["lost"], result["queued"], result["finished"]) == (2, 2, False)
    assert lost.remedy(batch.id, 2) == (
        f"2 files of batch {batch.id} were lost from the queue (their jobs were removed); run velo retry {batch.id}"
    )
    # And retry enqueues them again, with no payload left behind
    assert retry_failed(redis, batch.id) == (2, [])
    assert redis.llen("rq:queue:velo") == 2
    assert redis.hlen(keys.PAYLOADS) == 2
    assert lost.find_lost(redis, batch.id) == {}


def test_status_looks_for_lost_files_in_a_still_batch_once_a_minute(redis, tmp_path, monkeypatch):
    batch = queued_batch(redis, tmp_path)
    make_queue(redis, "velo").empty()
    # A batch enqueued just now is not looked at
    assert status.describe(redis, batch.id)["lost"] == 0
    # One still for a while is, and the count found is kept a while (a look walks the whole batch)
    redis.hset(keys.batch(batch.id), "created_at", "1")
    assert status.describe(redis, batch.id)["lost"] == 2
    monkeypatch.setattr(status, "find_lost", lambda *a: 1 / 0)
    assert status.describe(redis, batch.id)["lost"] == 2
    # Until `velo retry` enqueues them again
    monkeypatch.undo()
    assert retry_failed(redis, batch.id) == (2, [])
    assert status.describe(redis, batch.id)["lost"] == 0
