"""A failed file is a failed RQ job, and RQ's own requeue of it scores the file as it is now (fakeredis)."""

from __future__ import annotations

import json

import pytest
from rq.exceptions import AbandonedJobError
from rq.job import JobStatus

from dispatcher.enqueue import RETRIES, enqueue_batch, retry_failed
from dispatcher.plan import Options, plan
from dispatcher.status import describe
from tests.helpers import csv_bytes, dump_model, fit_model, make_frame, read_output
from velosiped import keys, payloads, storage
from velosiped.errors import FileFailed
from velosiped.models import version_of
from velosiped.rqapi import make_queue
from velosiped.state import FileState, set_state
from worker import task
from worker.runner import VeloWorker, name_job


@pytest.fixture
def one_file(tmp_path):
    """A folder with one file lacking a feature column, and the options to dispatch it."""
    data = tmp_path / "data"
    data.mkdir()
    (data / "f.csv").write_bytes(csv_bytes(make_frame(6, seed=5).drop(columns="f2")))
    model = dump_model(fit_model(), tmp_path / "m.joblib")
    return data, Options(model=str(model), model_version=version_of(str(model)))


def work(redis) -> None:
    VeloWorker([make_queue(redis, "velo")], connection=redis).work(burst=True)


def test_a_failed_file_is_a_failed_rq_job_and_rq_requeue_scores_it_once_fixed(redis, one_file):
    data, opts = one_file
    batch = enqueue_batch(redis, "velo", str(data), opts, list(plan(str(data), opts)))
    q = make_queue(redis, "velo")
    work(redis)
    reason = f"{data / 'f.csv'}: missing feature columns: f2"

    # The failure is recorded as before, and RQ has the job failed with the one-line reason, once
    assert describe(redis, batch.id)["failures"] == [{"file": str(data / "f.csv"), "error": reason}]
    [jid] = q.failed_job_registry.get_job_ids()
    job = q.fetch_job(jid)
    assert (job.get_status(), job.latest_result().exc_string) == (JobStatus.FAILED, reason)
    assert (redis.llen(q.key), job.retries_left) == (0, RETRIES)  # not run again; retries kept for a requeue
    assert q.finished_job_registry.get_job_ids() == []
    assert redis.hlen(keys.PAYLOADS) == 0  # its payload waits in the batch (for velo retry), not twice

    # When the file is fixed and RQ's own requeue puts the job back
    (data / "f.csv").write_bytes(csv_bytes(make_frame(6, seed=5)))
    q.failed_job_registry.requeue(jid)
    work(redis)

    # Then the file is scored as it is now, done in its batch, its error file gone
    b = describe(redis, batch.id)
    assert (b["done"], b["failed"], b["rows"], b["failures"]) == (1, 0, 6, []), b
    assert len(read_output(data / "f.out.csv")) == 6
    assert not (data / "f.out.csv.error.json").exists()
    assert q.fetch_job(jid).get_status() == JobStatus.FINISHED


def test_a_requeued_job_whose_file_failed_again_fails_again_with_the_new_reason(redis, one_file):
    data, opts = one_file
    batch = enqueue_batch(redis, "velo", str(data), opts, list(plan(str(data), opts)))
    q = make_queue(redis, "velo")
    work(redis)
    (data / "f.csv").write_text("id,f0,f1,f2,f3\n1,2,3,abc,5\n")
    [jid] = q.failed_job_registry.get_job_ids()
    q.failed_job_registry.requeue(jid)
    work(redis)
    b = describe(redis, batch.id)
    assert (b["done"], b["failed"], b["total"]) == (0, 1, 1), b
    assert "non-numeric" in q.fetch_job(jid).latest_result().exc_string
    error = json.loads((data / "f.out.csv.error.json").read_text())
    assert error["input_version"] == storage.head(str(data / "f.csv")).version  # the one scored, not the first


def test_a_file_whose_worker_died_every_time_is_scored_when_rq_requeues_it(redis, one_file):
    data, opts = one_file
    (data / "f.csv").write_bytes(csv_bytes(make_frame(6, seed=5)))
    batch = enqueue_batch(redis, "velo", str(data), opts, list(plan(str(data), opts)))
    q = make_queue(redis, "velo")
    # Given a job a worker took (and named), whose worker died on its last attempt: RQ's lease
    # cleanup ran the failure callback and moved it to the failed registry
    job = q.jobs[0]
    redis.lrem(q.key, 0, job.id)
    name_job(job, payloads.load(redis, job.id))
    set_state(redis, batch.id, str(data / "f.csv"), FileState.RUNNING)
    job.retries_left = 0
    task.on_job_failure(job, redis, AbandonedJobError, AbandonedJobError(), None)
    q.failed_job_registry.add(job, exc_string="Moved to FailedJobRegistry, due to AbandonedJobError")
    assert describe(redis, batch.id)["failed"] == 1

    # When RQ's own requeue puts it back and a worker runs
    q.failed_job_registry.requeue(job.id)
    work(redis)

    # Then the file is done
    b = describe(redis, batch.id)
    assert (b["done"], b["failed"]) == (1, 0), b
    assert len(read_output(data / "f.out.csv")) == 6


def test_velo_retry_takes_the_files_failed_job_out_of_rqs_failed_registry(redis, one_file):
    data, opts = one_file
    batch = enqueue_batch(redis, "velo", str(data), opts, list(plan(str(data), opts)))
    q = make_queue(redis, "velo")
    work(redis)
    assert len(q.failed_job_registry.get_job_ids()) == 1
    (data / "f.csv").write_bytes(csv_bytes(make_frame(6, seed=5)))
    assert retry_failed(redis, batch.id) == (1, [])
    work(redis)
    assert describe(redis, batch.id)["done"] == 1
    assert q.failed_job_registry.get_job_ids() == []  # `rq info` no longer counts it failed


def test_a_requeued_job_whose_file_is_done_since_does_nothing(redis, one_file):
    data, opts = one_file
    batch = enqueue_batch(redis, "velo", str(data), opts, list(plan(str(data), opts)))
    q = make_queue(redis, "velo")
    work(redis)
    [jid] = q.failed_job_registry.get_job_ids()
    set_state(redis, batch.id, str(data / "f.csv"), FileState.RUNNING)  # done by another run meanwhile
    set_state(redis, batch.id, str(data / "f.csv"), FileState.DONE, rows=6)

    q.failed_job_registry.requeue(jid)
    work(redis)

    assert q.fetch_job(jid).get_status() == JobStatus.FINISHED
    assert not (data / "f.out.csv").exists()  # not scored again
    assert describe(redis, batch.id)["done"] == 1


def test_a_requeued_job_whose_kept_payload_was_tampered_with_is_refused(redis, one_file, tmp_path):
    data, opts = one_file
    batch = enqueue_batch(redis, "velo", str(data), opts, list(plan(str(data), opts)))
    q = make_queue(redis, "velo")
    work(redis)
    [jid] = q.failed_job_registry.get_job_ids()
    kept = json.loads(redis.hget(keys.batch_jobs(batch.id), str(data / "f.csv")))
    redis.hset(keys.batch_jobs(batch.id), str(data / "f.csv"), json.dumps({**kept, "cmd": "x"}))

    q.failed_job_registry.requeue(jid)
    work(redis)

    assert "refused" in q.fetch_job(jid).latest_result().exc_string
    assert not (data / "f.out.csv").exists()


def test_the_failure_callback_leaves_a_failure_the_job_recorded_alone(redis, one_file):
    data, opts = one_file
    batch = enqueue_batch(redis, "velo", str(data), opts, list(plan(str(data), opts)))
    job = make_queue(redis, "velo").jobs[0]
    # RQ runs the callback before it fails the job; the job recorded its file's failure already
    job.retries_left = 0
    task.on_job_failure(job, redis, FileFailed, FileFailed("the recorded reason"), None)
    assert describe(redis, batch.id)["failed"] == 0  # nothing recorded again, nothing overwritten
    assert not (data / "f.out.csv.error.json").exists()
    assert payloads.load(redis, job.id) is not None
