"""An interrupted `velo run` takes its jobs back off the queue, so the same dispatch enqueues them again."""

from __future__ import annotations

import pytest

from dispatcher.enqueue import cancel, enqueue_batch, retry_failed
from dispatcher.plan import Options, plan
from dispatcher.status import describe
from tests.helpers import csv_bytes, dump_model, fit_model, make_frame
from velosiped.models import version_of
from velosiped.rqapi import make_queue


@pytest.fixture
def folders(tmp_path):
    model = dump_model(fit_model(), tmp_path / "m.joblib")
    opts = Options(model=str(model), model_version=version_of(str(model)))
    out = []
    for name in ("ours", "theirs"):
        data = tmp_path / name
        data.mkdir()
        for i in range(3):
            (data / f"{i}.csv").write_bytes(csv_bytes(make_frame(5, seed=i)))
        out.append(str(data))
    return out, opts


def test_cancel_takes_only_the_batchs_jobs_off_and_the_same_dispatch_enqueues_them_again(redis, folders):
    (ours, theirs), opts = folders
    mine = enqueue_batch(redis, "velo", ours, opts, list(plan(ours, opts)))
    other = enqueue_batch(redis, "velo", theirs, opts, list(plan(theirs, opts)))
    q = make_queue(redis, "velo")
    # One of ours was started (in RQ's started registry) when its worker was stopped
    started = redis.lpop(q.key).decode()
    redis.zadd(q.started_job_registry.key, {f"{started}:exec1": 0})

    assert cancel(redis, "velo", {mine.id}, "interrupted") == 3

    assert len(q.get_job_ids()) == 3  # theirs, untouched
    assert redis.zcard(q.started_job_registry.key) == 0
    b = describe(redis, mine.id)
    assert (b["total"], b["failed"], b["finished"]) == (3, 3, True)
    assert all(f["error"].endswith(": interrupted") for f in b["failures"])
    assert describe(redis, other.id)["queued"] == 3
    # The same dispatch again enqueues every file of ours (none is "already queued")
    again = enqueue_batch(redis, "velo", ours, opts, list(plan(ours, opts)))
    assert (again.enqueued, again.skipped) == (3, 0)


def test_retry_enqueues_a_cancelled_batch(redis, folders):
    (ours, _), opts = folders
    mine = enqueue_batch(redis, "velo", ours, opts, list(plan(ours, opts)))
    cancel(redis, "velo", {mine.id}, "interrupted")
    count, gone = retry_failed(redis, mine.id)
    assert (count, gone) == (3, [])


def test_cancel_of_no_batch_does_nothing(redis, folders):
    (ours, _), opts = folders
    enqueue_batch(redis, "velo", ours, opts, list(plan(ours, opts)))
    assert cancel(redis, "velo", set(), "interrupted") == 0
    assert len(make_queue(redis, "velo").get_job_ids()) == 3
