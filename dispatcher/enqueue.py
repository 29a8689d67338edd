"""Turn a plan into a batch: one RQ job per file, each with a deterministic id."""

from __future__ import annotations

import json
import secrets
import time
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from rq import Callback, Retry
from rq.exceptions import DuplicateJobError
from rq.job import Job, JobStatus

from worker import keys, storage
from worker.batch import FileState, set_state
from worker.jobs import FAILURE_CALLBACK, TASK, Payload, job_id
from worker.runner import make_queue

if TYPE_CHECKING:
    from redis import Redis

    from dispatcher.plan import Options, Planned

__all__ = ["JOB_TIMEOUT", "Batch", "add_files", "create_batch", "enqueue_batch", "mark_already_queued", "retry_failed"]

JOB_TIMEOUT = 6 * 3600
"""Seconds one file may take before RQ stops its job (override with --timeout)."""

RESULT_TTL = 600
"""Seconds RQ keeps a finished job (the batch, not RQ, holds the outcome)."""

RETRIES = 3
"""Times RQ re-runs a job that raised a transient error or whose worker died."""

_ACTIVE = {JobStatus.QUEUED, JobStatus.STARTED, JobStatus.SCHEDULED, JobStatus.DEFERRED}


@dataclass
class Batch:
    id: str
    enqueued: int = 0
    skipped: int = 0
    planned: list[Planned] = field(default_factory=list)


def new_batch_id() -> str:
    return time.strftime("%Y%m%d-%H%M%S") + "-" + secrets.token_hex(3)


def payload_for(item: Planned, opts: Options, batch_id: str) -> Payload:
    return {
        "input": item.info.uri,
        "input_version": item.info.version,
        "output": item.output,
        "model": opts.model,
        "model_version": opts.model_version,
        "model_sha256": opts.model_sha256,
        "keep": opts.keep,
        "proba": opts.proba,
        "features": opts.features,
        "sep": opts.sep,
        "encoding": opts.encoding,
        "batch": batch_id,
    }


def mark_already_queued(redis: Redis, opts: Options, planned: list[Planned]) -> list[Planned]:
    """The plan, with files whose job is waiting or running (from any batch) marked so."""
    todo = [p for p in planned if p.enqueue]
    with redis.pipeline(transaction=False) as pipe:
        for p in todo:
            pipe.hget(Job.key_for(job_id(payload_for(p, opts, ""))), "status")
        statuses = pipe.execute()
    active = {p.info.uri for p, st in zip(todo, statuses, strict=True) if st is not None and st.decode() in _ACTIVE}
    return [replace(p, reason="already queued") if p.info.uri in active else p for p in planned]


def _enqueue(redis: Redis, queue: str, payload: Payload, timeout: int) -> bool:
    """Enqueue one file's job unless the same job is already waiting or running."""
    q = make_queue(redis, queue)
    jid = job_id(payload)
    existing = Job.fetch_many([jid], connection=redis, serializer=q.serializer)[0]
    if existing is not None:
        if existing.get_status(refresh=False) in _ACTIVE:
            return False
        try:
            existing.delete()  # a finished or dead attempt: make room for the new one
        except ValueError:  # RQ trips on an execution record that expired with a dead worker
            redis.delete(existing.key, existing.dependents_key)
    set_state(redis, payload["batch"], payload["input"], FileState.QUEUED)
    redis.hset(keys.batch_jobs(payload["batch"]), payload["input"], json.dumps(payload))
    try:
        q.enqueue_call(
            TASK,
            args=(payload,),
            job_id=jid,
            unique=True,
            timeout=timeout,
            # The outcome lives in the batch; RQ keeps the finished job a while only because its
            # result_ttl=0 path deletes through the job's executions and fails on one whose
            # worker died (its execution record expired): the file would be done twice.
            result_ttl=RESULT_TTL,
            failure_ttl=7 * 24 * 3600,
            retry=Retry(max=RETRIES),
            on_failure=Callback(FAILURE_CALLBACK),
            description=payload["input"],
        )
    except DuplicateJobError:  # another dispatcher enqueued it a moment ago
        return False
    return True


def create_batch(redis: Redis, queue: str, source: str, opts: Options) -> Batch:
    """Record a new, empty batch."""
    batch = Batch(new_batch_id())
    now = time.time()
    redis.hset(
        keys.batch(batch.id),
        mapping={"source": source, "model": opts.model, "queue": queue, "created_at": f"{now:.3f}", "total": 0},
    )
    redis.zadd(keys.BATCHES, {batch.id: now})
    return batch


def add_files(
    redis: Redis, queue: str, batch: Batch, opts: Options, planned: list[Planned], timeout: int = JOB_TIMEOUT
) -> int:
    """Enqueue, in ``batch``, the files the plan says need scoring; returns how many were enqueued."""
    planned = mark_already_queued(redis, opts, planned)
    batch.planned += planned
    added = 0
    for item in planned:
        if item.enqueue and _enqueue(redis, queue, payload_for(item, opts, batch.id), timeout):
            added += 1
        else:
            batch.skipped += 1
    batch.enqueued += added
    redis.hset(keys.batch(batch.id), mapping={"enqueued": batch.enqueued, "skipped": batch.skipped})
    return added


def enqueue_batch(
    redis: Redis, queue: str, source: str, opts: Options, planned: list[Planned], timeout: int = JOB_TIMEOUT
) -> Batch:
    """Record a batch and enqueue the files its plan says need scoring."""
    batch = create_batch(redis, queue, source, opts)
    add_files(redis, queue, batch, opts, planned, timeout)
    return batch


def retry_failed(redis: Redis, batch_id: str, timeout: int = JOB_TIMEOUT) -> tuple[int, list[str]]:
    """Enqueue a batch's failed files again, as they are now; returns (count, files gone)."""
    failed = [f.decode() for f in redis.hkeys(keys.batch_errors(batch_id))]
    queue = redis.hget(keys.batch(batch_id), "queue")
    count, gone = 0, []
    for file in failed:
        raw = redis.hget(keys.batch_jobs(batch_id), file)
        info = storage.head(file)
        if raw is None or info is None:
            gone.append(file)
            continue
        payload: Payload = json.loads(raw)
        payload["input_version"] = info.version  # the user may have fixed the file
        if _enqueue(redis, queue.decode() if queue else "velo", payload, timeout):
            count += 1
    return count, gone
