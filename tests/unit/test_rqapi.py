"""RQ's private helpers behind velosiped/rqapi.py still write what RQ's public enqueue writes.

The dispatcher writes thousands of job hashes in one Lua call from ``queued_job_fields``; if an RQ
upgrade changes ``Queue._prepare_for_queue`` or ``rq.scripts._build_hset_args``, these tests fail
here, with the reason, instead of workers misreading jobs in production.
"""

from __future__ import annotations

import rq
from rq import Callback, Retry
from rq.job import Job, JobStatus

from velosiped.rqapi import RQ_SERIES, make_queue, queued_job_fields

VARIES = {"created_at", "enqueued_at", "last_heartbeat"}
"""Fields holding the moment they were written: compared by presence, not value."""


def velo_job(q, job_id: str) -> Job:
    return q.create_job(
        "worker.task.score",
        job_id=job_id,
        timeout=60,
        result_ttl=600,
        failure_ttl=3600,
        retry=Retry(max=3),
        on_failure=Callback("worker.task.on_job_failure"),
    )


def test_rq_is_the_series_the_private_helpers_were_checked_against():
    assert rq.__version__.startswith(RQ_SERIES), (
        f"RQ {rq.__version__} is not {RQ_SERIES}x: check velosiped/rqapi.py's private helpers, then RQ_SERIES"
    )


def test_queued_job_fields_are_what_rqs_own_enqueue_writes(redis):
    # Given the same job enqueued by RQ's public API, and described by queued_job_fields
    q = make_queue(redis, "velo")
    q.enqueue_job(velo_job(q, "public"))
    public = {k.decode(): v for k, v in redis.hgetall(Job.key_for("public")).items()}
    pairs = queued_job_fields(q, velo_job(q, "ours"))
    encode = redis.connection_pool.get_encoder().encode  # as the values reach Redis
    ours = dict(zip(pairs[::2], (encode(v) for v in pairs[1::2]), strict=True))

    # Then every field RQ wrote non-empty is there with the same value (empty ones are left out)
    written = {k: v for k, v in public.items() if v != b""}
    assert set(ours) == set(written), f"RQ writes {sorted(written)}, queued_job_fields gives {sorted(ours)}"
    same = {k for k in written if k not in VARIES}
    assert {k: ours[k] for k in same} == {k: written[k] for k in same}


def test_a_job_written_from_queued_job_fields_restores_as_rqs_own(redis):
    # Given a job hash written from queued_job_fields alone, as the enqueue script does
    q = make_queue(redis, "velo")
    pairs = queued_job_fields(q, velo_job(q, "template"))
    redis.hset(Job.key_for("written"), mapping=dict(zip(pairs[::2], pairs[1::2], strict=True)))
    redis.rpush(q.key, "written")

    # Then RQ reads it back as the job Velosiped meant
    job = q.fetch_job("written")
    assert job is not None
    assert (job.func_name, job.args, job.kwargs) == ("worker.task.score", [], {})
    assert job.get_status() == JobStatus.QUEUED
    assert (job.timeout, job.result_ttl, job.failure_ttl, job.retries_left) == (60, 600, 3600, 3)
    assert job._failure_callback_name == "worker.task.on_job_failure"
    assert q.job_ids == ["written"]
