"""Turn a plan into a batch: one RQ job per file (one per shard of a big file), each with a deterministic id."""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from rq import Callback, Retry
from rq.job import Job, JobStatus
from rq.scripts import _build_hset_args, get_unique_enqueue_script  # pinned rq 3.0

from worker import keys, shards, storage
from worker.batch import FileState, forget, set_state
from worker.errors import InputError
from worker.jobs import FAILURE_CALLBACK, TASK, Payload, job_id
from worker.runner import make_queue

if TYPE_CHECKING:
    from redis import Redis

    from dispatcher.plan import Options, Planned

__all__ = [
    "JOB_TIMEOUT",
    "Batch",
    "add_files",
    "create_batch",
    "enqueue_batch",
    "mark_already_queued",
    "payloads_for",
    "retry_failed",
]

JOB_TIMEOUT = 6 * 3600
"""Seconds one file may take before RQ stops its job (override with --timeout)."""

RESULT_TTL = 600
"""Seconds RQ keeps a finished job (the batch, not RQ, holds the outcome)."""

CHUNK = 1000
"""Jobs enqueued per Redis round trip."""

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


def payloads_for(item: Planned, opts: Options, batch_id: str) -> list[Payload]:
    """The file's jobs: one, or one per shard of a big file."""
    return shards.expand(payload_for(item, opts, batch_id), list(item.shards))


def _job_statuses(redis: Redis, ids: list[str]) -> list[str | None]:
    with redis.pipeline(transaction=False) as pipe:
        for jid in ids:
            pipe.hget(Job.key_for(jid), "status")
        return [st.decode() if st is not None else None for st in pipe.execute()]


def mark_already_queued(redis: Redis, opts: Options, planned: list[Planned]) -> list[Planned]:
    """The plan, with files whose job (any shard's) is waiting or running (from any batch) marked so."""
    todo = [p for p in planned if p.enqueue]
    ids = [(p.info.uri, job_id(payload)) for p in todo for payload in payloads_for(p, opts, "")]
    statuses = _job_statuses(redis, [jid for _, jid in ids])
    active = {uri for (uri, _), st in zip(ids, statuses, strict=True) if st in _ACTIVE}
    return [replace(p, reason="already queued") if p.info.uri in active else p for p in planned]


def _clear_finished(redis: Redis, ids: list[str]) -> None:
    """Delete earlier, finished or dead jobs with these ids: they would block the unique enqueue."""
    for jid, st in zip(ids, _job_statuses(redis, ids), strict=True):
        if st is None or st in _ACTIVE:
            continue
        job = Job(jid, connection=redis)
        try:
            job.delete()
        except ValueError:  # RQ trips on an execution record that expired with a dead worker
            redis.delete(job.key, job.dependents_key)


def _describe(p: Payload) -> str:
    """What `velo status` shows for the job a worker holds: the file, and which shard."""
    shard = p.get("shard")
    return f"{p['input']} (shard {shard['index'] + 1}/{shard['count']})" if shard else p["input"]


def _enqueue(redis: Redis, queue: str, files: list[list[Payload]], timeout: int) -> list[bool]:
    """Enqueue each file's jobs (one, or one per shard), pipelined, each unless the same job is already there.

    One round trip per chunk instead of four per job. Each job goes through RQ's own atomic
    unique-enqueue script (what ``enqueue_call(unique=True)`` runs), so a file is never queued
    twice at once even with two dispatchers racing. Returns, per file, whether any job was added.
    """
    q = make_queue(redis, queue)
    payloads = [p for group in files for p in group]
    jobs = []
    for p in payloads:
        job = q.create_job(
            TASK,
            args=(p,),
            job_id=job_id(p),
            timeout=timeout,
            # The outcome lives in the batch; RQ keeps the finished job a while only because its
            # result_ttl=0 path deletes through the job's executions and fails on one whose
            # worker died (its execution record expired): the file would be done twice.
            result_ttl=RESULT_TTL,
            failure_ttl=7 * 24 * 3600,
            retry=Retry(max=RETRIES),
            on_failure=Callback(FAILURE_CALLBACK),
            description=_describe(p),
        )
        q._prepare_for_queue(job)
        jobs.append(job)
    _clear_finished(redis, [job.id for job in jobs])
    script = get_unique_enqueue_script(redis)
    with redis.pipeline(transaction=False) as pipe:
        for group in files:
            set_state(pipe, group[0]["batch"], group[0]["input"], FileState.QUEUED)  # the file counts once
            if group[0].get("shard"):  # a new attempt at a big file starts from no shard done
                shards.reset(pipe, group[0])
        first = len(pipe)
        for job in jobs:
            ttl = job.ttl if job.ttl is not None else -1
            script(keys=[job.key, q.key], args=[job.id, "R", ttl, *_build_hset_args(job)], client=pipe)
        pipe.sadd(q.redis_queues_keys, q.key)
        results = iter(pipe.execute()[first : first + len(jobs)])
    added = [any([bool(next(results)) for _ in group]) for group in files]
    for group, ok in zip(files, added, strict=True):
        if not ok:  # another dispatcher enqueued it a moment ago: it is not this batch's
            forget(redis, group[0]["batch"], group[0]["input"])
    return added


def _chunks(files: list[list[Payload]]) -> Iterator[list[list[Payload]]]:
    """Files in chunks of about CHUNK jobs, a file's shards never split across two."""
    chunk: list[list[Payload]] = []
    size = 0
    for group in files:
        if chunk and size + len(group) > CHUNK:
            yield chunk
            chunk, size = [], 0
        chunk.append(group)
        size += len(group)
    if chunk:
        yield chunk


def create_batch(redis: Redis, queue: str, source: str, opts: Options) -> Batch:
    """Record a new, empty batch."""
    batch = Batch(new_batch_id())
    now = time.time()
    redis.hset(
        keys.batch(batch.id),
        mapping={
            "source": source,
            "model": opts.model,
            "queue": queue,
            "created_at": f"{now:.3f}",
            "total": 0,
            "shard_size": opts.shard_size,  # `velo retry` splits big files again with it
        },
    )
    redis.zadd(keys.BATCHES, {batch.id: now})
    return batch


def add_files(
    redis: Redis, queue: str, batch: Batch, opts: Options, planned: list[Planned], timeout: int = JOB_TIMEOUT
) -> int:
    """Enqueue, in ``batch``, the files the plan says need scoring; returns how many were enqueued."""
    planned = mark_already_queued(redis, opts, planned)
    batch.planned += planned
    todo = [payloads_for(p, opts, batch.id) for p in planned if p.enqueue]
    added = sum(sum(_enqueue(redis, queue, chunk, timeout)) for chunk in _chunks(todo))
    batch.skipped += len(planned) - added
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
    """Enqueue a batch's failed files again, as they are now; returns (count, files gone).

    A big file is split again from its current size, with the batch's shard size.
    """
    failed = [f.decode() for f in redis.hkeys(keys.batch_errors(batch_id))]
    queue, shard_size = redis.hmget(keys.batch(batch_id), ["queue", "shard_size"])
    gone: list[str] = []
    files: list[list[Payload]] = []
    for file in failed:
        raw = redis.hget(keys.batch_jobs(batch_id), file)  # written by the worker that failed it
        info = storage.head(file)
        if raw is None or info is None:
            gone.append(file)
            continue
        payload: Payload = json.loads(raw)
        payload.pop("shard", None)
        payload["input_version"] = info.version  # the user may have fixed the file
        files.append(shards.expand(payload, _bounds(info, int(shard_size or 0), payload["encoding"])))
    name = queue.decode() if queue else "velo"
    count = sum(sum(_enqueue(redis, name, chunk, timeout)) for chunk in _chunks(files))
    return count, gone


def _bounds(info: storage.ObjectInfo, shard_size: int, encoding: str) -> list[tuple[int, int]]:
    try:
        return shards.bounds(info, shard_size, encoding)
    except InputError:  # changed again meanwhile: whole
        return []
