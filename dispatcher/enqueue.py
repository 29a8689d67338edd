"""Turn a plan into a batch: one RQ job per file (one per shard of a big file, one per group of
small files: ``--group-size``), each with a deterministic id."""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from rq import Callback, Retry
from rq.exceptions import NoSuchJobError
from rq.job import Job, JobStatus
from rq.serializers import JSONSerializer

from dispatcher import sharding
from dispatcher.lost import find_lost
from velosiped import keys, lua, payloads, settings, storage
from velosiped.connection import as_text
from velosiped.errors import InputError
from velosiped.jobs import (
    FAILURE_CALLBACK,
    GROUP_PREFIX,
    TASK,
    Payload,
    group_id,
    job_id,
    members,
    queued_description,
    shard_group,
)
from velosiped.rqapi import make_queue, queued_job_fields
from velosiped.state import FileState, set_state

if TYPE_CHECKING:
    from redis import Redis
    from redis.typing import EncodableT, FieldT
    from rq import Queue

    from dispatcher.plan import Options, Planned

__all__ = [
    "ACTIVE",
    "JOB_TIMEOUT",
    "Batch",
    "add_files",
    "cancel",
    "create_batch",
    "dispatch_batch",
    "drop_if_empty",
    "enqueue_batch",
    "forget_expired",
    "job_ids",
    "job_statuses",
    "mark_already_queued",
    "payloads_for",
    "queued_jobs",
    "retry_failed",
]

JOB_TIMEOUT = 6 * 3600
"""Seconds one file may take before RQ stops its job (override with --timeout)."""

RESULT_TTL = 600
"""Seconds RQ keeps a finished job (the batch, not RQ, holds the outcome)."""

CHUNK = 1000
"""Jobs enqueued per Redis round trip."""

RETRIES = 3
"""Times RQ re-runs a job whose worker died (killed, out of memory), at once: no interval, which
would need an RQ scheduler. Transient storage errors are retried inside the job, with backoff
(worker.backoff), and never reach RQ."""

ACTIVE = {JobStatus.QUEUED, JobStatus.STARTED, JobStatus.SCHEDULED, JobStatus.DEFERRED}


@dataclass
class Batch:
    id: str
    enqueued: int = 0
    skipped: int = 0
    planned: list[Planned] = field(default_factory=list)
    description: dict[FieldT, EncodableT] = field(default_factory=dict)
    """What the batch hash says of it besides its counters (written again if it expired meanwhile)."""


def new_batch_id() -> str:
    return time.strftime("%Y%m%d-%H%M%S") + "-" + secrets.token_hex(3)


def payload_for(item: Planned, opts: Options, batch_id: str) -> Payload:
    payload: Payload = {
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
    if opts.stats:  # only then: a payload without the field (as jobs enqueued before it existed) gathers none
        payload["stats"] = True
    if opts.shadow and item.shadow_output:  # likewise: a batch without a challenger names none
        payload["shadow"] = opts.shadow
        payload["shadow_version"] = opts.shadow_version
        payload["shadow_sha256"] = opts.shadow_sha256
        payload["shadow_output"] = item.shadow_output
    if opts.engine != "sklearn":  # likewise: the default leaves the batch's options as they were
        payload["engine"] = opts.engine
    return payload


def payloads_for(item: Planned, opts: Options, batch_id: str) -> list[Payload]:
    """The file's jobs: one, or one per shard of a big file."""
    return sharding.expand(payload_for(item, opts, batch_id), list(item.shards))


def job_statuses(redis: Redis, ids: list[str]) -> list[str | None]:
    with redis.pipeline(transaction=False) as pipe:
        for jid in ids:
            pipe.hget(Job.key_for(jid), "status")
        return [st.decode() if st is not None else None for st in pipe.execute()]


def job_ids(item: Planned, opts: Options) -> list[str]:
    """The ids of a file's jobs (one, or one per shard): the same whatever the batch."""
    return [job_id(payload) for payload in payloads_for(item, opts, "")]


def mark_already_queued(redis: Redis, opts: Options, planned: list[Planned]) -> list[Planned]:
    """The plan, with files whose job (any shard's, or their group's) is waiting or running (from
    any batch) marked so."""
    active = queued_jobs(redis, opts, [p for p in planned if p.enqueue])
    return [replace(p, reason="already queued") if p.info.uri in active else p for p in planned]


def queued_jobs(redis: Redis, opts: Options, planned: list[Planned]) -> dict[str, list[str]]:
    """The files of ``planned`` whose job is waiting or running, from any batch: file -> those jobs.

    A file's own jobs have ids derived from it (:func:`job_ids`); a group's id depends on its
    other files too, so a file queued in a group is found by its state in the batches not yet
    finished, which name its job (``queued velo-g…``: see scripts/state.lua).
    """
    ids = [(p.info.uri, jid) for p in planned for jid in job_ids(p, opts)]
    statuses = job_statuses(redis, [jid for _, jid in ids])
    found: dict[str, list[str]] = {}
    for (uri, jid), st in zip(ids, statuses, strict=True):
        if st in ACTIVE:
            found.setdefault(uri, []).append(jid)
    for uri, jid in _in_groups(redis, [p for p in planned if p.info.uri not in found], opts).items():
        found[uri] = [jid]
    return found


def _open_batches(redis: Redis) -> list[str]:
    """The batches some of whose files are not done or failed yet."""
    ids = [as_text(b) for b in redis.zrange(keys.BATCHES, 0, -1)]
    with redis.pipeline(transaction=False) as pipe:
        for b in ids:
            pipe.hmget(keys.batch(b), ["total", "done", "failed"])
        counts = pipe.execute()
    return [b for b, (t, d, f) in zip(ids, counts, strict=True) if int(d or 0) + int(f or 0) < int(t or 0)]


def _in_groups(redis: Redis, planned: list[Planned], opts: Options) -> dict[str, str]:
    """The files of ``planned`` queued or running in a group whose job waits or runs, for the very
    job they would get (the same version, model, output and options): file -> the group's id."""
    if not planned:
        return {}
    files = [p.info.uri for p in planned]
    held: dict[str, str] = {}
    for batch in _open_batches(redis):
        for start in range(0, len(files), CHUNK):
            chunk = files[start : start + CHUNK]
            for file, value in zip(chunk, redis.hmget(keys.batch_files(batch), chunk), strict=True):
                state, _, refs = as_text(value or b"").partition(" ")
                if state in ("queued", "running") and refs.startswith(GROUP_PREFIX):
                    held.setdefault(file, refs.split(",")[0])
    if not held:
        return {}
    groups = sorted(set(held.values()))
    jobs: dict[str, set[str]] = {}  # an active group's id -> its files' own job ids
    for g, st in zip(groups, job_statuses(redis, groups), strict=True):
        try:
            p = payloads.load(redis, g) if st in ACTIVE else None
        except InputError:
            p = None
        if p is not None:
            jobs[g] = {job_id(m) for m in members(p)}
    return {
        item.info.uri: held[item.info.uri]
        for item in planned
        if item.info.uri in held and job_id(payload_for(item, opts, "")) in jobs.get(held[item.info.uri], set())
    }


def _groupable(item: Planned, opts: Options) -> bool:
    """Whether a file may share its job with other small files: a whole CSV below --group-bytes,
    scored by one model (a challenger's files are scored one a job)."""
    return (
        opts.group_size > 1
        and not item.shards
        and not opts.shadow
        and item.info.size < opts.group_bytes
        and not item.info.uri.endswith(".parquet")
    )


def grouped(todo: list[Planned], opts: Options, batch_id: str) -> list[list[Payload]]:
    """Each file's jobs (see :func:`payloads_for`), small files joined in listing order into groups
    of up to --group-size files and about --group-bytes in all: one job, whose payload names each
    file's own fields. The bytes bound keeps a job small, so files of a few MB still spread over
    every worker instead of filling a few jobs."""
    files: list[list[Payload]] = []
    group: list[Payload] = []
    size = 0

    def close() -> None:
        if len(group) == 1:
            files.append(list(group))
        elif group:
            first: Payload = {**group[0]}
            first["group"] = [[p["input"], p["input_version"], p["output"]] for p in group]
            files.append([first])
        group.clear()

    for item in todo:
        if not _groupable(item, opts):
            files.append(payloads_for(item, opts, batch_id))
            continue
        group.append(payload_for(item, opts, batch_id))
        size += item.info.size
        if len(group) >= opts.group_size or size >= opts.group_bytes:
            close()
            size = 0
    close()
    return files


def _clear_finished(redis: Redis, ids: list[str]) -> set[str]:
    """Delete earlier, finished or dead jobs with these ids (they would block the unique enqueue); their ids."""
    cleared = set()
    for jid, st in zip(ids, job_statuses(redis, ids), strict=True):
        if st is None or st in ACTIVE:
            continue
        try:  # fetched, not just named: its registry (failed, finished) is found by its queue
            job = Job.fetch(jid, connection=redis, serializer=JSONSerializer)
        except NoSuchJobError:  # expired meanwhile
            cleared.add(jid)
            continue
        try:
            job.delete()
        except ValueError:  # RQ trips on an execution record that expired with a dead worker
            redis.delete(job.key, job.dependents_key)
        cleared.add(jid)
    return cleared


def _template(q: Queue, timeout: int, batch: str) -> list[Any]:
    """What RQ writes into a job's hash for a Velosiped job of ``batch`` (no argument: its payload is apart)."""
    job = q.create_job(
        TASK,
        job_id="velo-template",
        description=queued_description(batch),
        timeout=timeout,
        # The outcome lives in the batch; RQ keeps the finished job a while only because its
        # result_ttl=0 path deletes through the job's executions and fails on one whose
        # worker died (its execution record expired): the file would be done twice.
        result_ttl=RESULT_TTL,
        failure_ttl=7 * 24 * 3600,
        retry=Retry(max=RETRIES),
        on_failure=Callback(FAILURE_CALLBACK),
    )
    if job.ttl is not None:
        raise AssertionError("Velosiped jobs do not expire while queued")
    return queued_job_fields(q, job)


def _enqueue(redis: Redis, queue: str, files: list[list[Payload]], timeout: int) -> list[bool]:
    """Enqueue each file's jobs (one, or one per shard) unless one of them is queued or running already.

    One round trip per chunk: every job hash is RQ's own serialization of one template job
    (they differ only in their ids: the payloads are apart, see velosiped.payloads), and one
    script adds the jobs, their payloads and the files' states atomically, so a file is never
    queued twice at once even with two dispatchers racing. A job left from an earlier run
    (finished or failed) is deleted and its file enqueued again. Returns, per file, whether it was added.
    """
    if not files:
        return []
    ids = [[group_id(members(p)) if p.get("group") else job_id(p) for p in group] for group in files]
    added = _add(redis, queue, files, ids, timeout)
    refused = [i for i, ok in enumerate(added) if not ok]  # queued or running, or left from an earlier run
    if refused:
        stale = _clear_finished(redis, [jid for i in refused for jid in ids[i]])
        again = [i for i in refused if stale & set(ids[i])]
        if again:
            retried = _add(redis, queue, [files[i] for i in again], [ids[i] for i in again], timeout)
            for i, ok in zip(again, retried, strict=True):
                added[i] = ok
    return added


def _add(redis: Redis, queue: str, files: list[list[Payload]], ids: list[list[str]], timeout: int) -> list[bool]:
    """One run of the chunk script (velosiped/scripts/enqueue.lua); the files share their batch and options."""
    q = make_queue(redis, queue)
    first = files[0][0]
    batch_id = first["batch"]
    digest, options = payloads.pack_options(first)
    template = _template(q, timeout, batch_id)
    job_keys: list[str] = []
    args: list[Any] = [q.key, keys.options(digest), options, f"{time.time():.3f}", len(template), *template]
    for group, group_ids in zip(files, ids, strict=True):
        sharded = bool(group[0].get("shard"))
        together = group[0].get("group")
        if together:
            args += [group[0]["input"], 1, 2, len(together), *(m[0] for m in together)]
        else:
            args += [group[0]["input"], len(group), int(sharded)]
        for p, jid in zip(group, group_ids, strict=True):
            job_keys.append(Job.key_for(jid))
            args += [jid, payloads.pack_own(p, digest)]
        if sharded:
            job_keys.append(keys.shards(shard_group(group[0])))
    batch_keys = [
        keys.batch_files(batch_id),
        keys.batch(batch_id),
        keys.batch_errors(batch_id),
        keys.batch_jobs(batch_id),
    ]
    all_keys = [q.key, keys.PAYLOADS, *batch_keys, q.redis_queues_keys, *job_keys]
    return [bool(a) for a in lua.script(redis, "state.lua", "enqueue.lua")(keys=all_keys, args=args)]


def _chunks(files: list[list[Payload]]) -> Iterator[list[list[Payload]]]:
    """Files in chunks of about CHUNK jobs (a group counting its files), a file's shards never split across two."""
    chunk: list[list[Payload]] = []
    size = 0
    for group in files:
        n = len(group[0].get("group") or group)
        if chunk and size + n > CHUNK:
            yield chunk
            chunk, size = [], 0
        chunk.append(group)
        size += n
    if chunk:
        yield chunk


def create_batch(redis: Redis, queue: str, source: str, opts: Options) -> Batch:
    """Record a new, empty batch (and forget batches that expired)."""
    now = time.time()
    batch = Batch(new_batch_id())
    batch.description = {
        "source": source,
        "model": opts.model,
        "queue": queue,
        "created_at": f"{now:.3f}",
        "shard_size": opts.shard_size,  # `velo retry` splits big files again with it
        # How long the batch stays once finished (scripts/state.lua expires it; 0 is refused).
        "retention": settings.BATCH_RETENTION.get(),
    }
    with redis.pipeline() as pipe:
        pipe.hset(keys.batch(batch.id), mapping={**batch.description, "total": 0})
        # Empty, it is finished: it expires unless a file is enqueued in it (the state rule persists
        # it then), so a `velo watch` started and stopped with nothing to do leaves nothing for good.
        pipe.expire(keys.batch(batch.id), int(batch.description["retention"]))
        pipe.zadd(keys.BATCHES, {batch.id: now})
        pipe.execute()
    forget_expired(redis)
    return batch


def forget_expired(redis: Redis, limit: int = 1000) -> int:
    """Take out of ``velo:batches`` the batches whose keys expired (or are gone); how many.

    None can expire before its retention has passed since its creation (it expires that long
    after it finished), so only entries older than that are looked at, ``limit`` at a time.
    """
    before = time.time() - settings.BATCH_RETENTION.get()
    old = [as_text(b) for b in redis.zrangebyscore(keys.BATCHES, "-inf", before, start=0, num=limit)]
    if not old:
        return 0
    with redis.pipeline(transaction=False) as pipe:
        for b in old:
            pipe.exists(keys.batch(b))
        gone = [b for b, there in zip(old, pipe.execute(), strict=True) if not there]
    if gone:
        redis.zrem(keys.BATCHES, *gone)
    return len(gone)


def drop_if_empty(redis: Redis, batch: Batch) -> bool:
    """Forget a batch that enqueued nothing (a cron dispatch with nothing new must not grow Redis)."""
    if batch.enqueued:
        return False
    with redis.pipeline() as pipe:
        # Its counters hash only: a batch that enqueued nothing moved no file.
        pipe.delete(keys.batch(batch.id))
        pipe.zrem(keys.BATCHES, batch.id)
        pipe.execute()
    return True


def add_files(
    redis: Redis, queue: str, batch: Batch, opts: Options, planned: list[Planned], timeout: int = JOB_TIMEOUT
) -> int:
    """Enqueue, in ``batch``, the files the plan says need scoring; returns how many were enqueued.

    A file whose job (any shard's, or its group's) is waiting or running already, from any batch,
    is not: its plan says "already queued". Small files go in groups (:func:`grouped`).
    """
    todo = [p for p in planned if p.enqueue]
    # A file's group may differ from one plan to the next: a file queued in one is looked up by file
    refused = set(_in_groups(redis, todo, opts))
    files = grouped([p for p in todo if p.info.uri not in refused], opts, batch.id)
    for chunk in _chunks(files):
        for group, ok in zip(chunk, _enqueue(redis, queue, chunk, timeout), strict=True):
            if not ok:
                refused.update(p["input"] for p in members(group[0]))
    planned = [replace(p, reason="already queued") if p.info.uri in refused else p for p in planned]
    added = len(todo) - len(refused)
    batch.planned += planned
    batch.skipped += len(planned) - added
    batch.enqueued += added
    mapping: dict[FieldT, EncodableT] = {"enqueued": batch.enqueued, "skipped": batch.skipped}
    if added and batch.description:  # a batch that expired meanwhile (`velo watch` idle that long) is whole again
        mapping.update(batch.description)
        redis.zadd(keys.BATCHES, {batch.id: float(str(batch.description["created_at"]))})
    redis.hset(keys.batch(batch.id), mapping=mapping)
    return added


def dispatch_batch(redis: Redis, queue: str, source: str, opts: Options, timeout: int = JOB_TIMEOUT) -> Batch:
    """`velo dispatch` without its output: plan ``source``, record a batch, enqueue what needs
    scoring (a batch that enqueued nothing is not kept)."""
    from dispatcher.plan import plan

    batch = create_batch(redis, queue, source, opts)
    add_files(redis, queue, batch, opts, list(plan(source, opts)), timeout)
    drop_if_empty(redis, batch)
    return batch


def enqueue_batch(
    redis: Redis, queue: str, source: str, opts: Options, planned: list[Planned], timeout: int = JOB_TIMEOUT
) -> Batch:
    """Record a batch and enqueue the files its plan says need scoring; a batch that enqueued
    nothing is not kept (its id is still returned, with the skip count)."""
    batch = create_batch(redis, queue, source, opts)
    add_files(redis, queue, batch, opts, planned, timeout)
    drop_if_empty(redis, batch)
    return batch


def retry_failed(redis: Redis, batch_id: str, timeout: int = JOB_TIMEOUT) -> tuple[int, list[str]]:
    """Enqueue a batch's failed files again, and its files lost from the queue (their jobs were
    removed: see dispatcher.lost), as they are now; returns (count, files gone).

    A big file is split again from its current size, with the batch's shard size.
    """
    failed = [as_text(f) for f in redis.hkeys(keys.batch_errors(batch_id))]
    lost = find_lost(redis, batch_id)
    redis.hdel(keys.batch(batch_id), "lost_found", "lost_checked_at")  # `velo status`'s count, now stale
    queue, shard_size = redis.hmget(keys.batch(batch_id), ["queue", "shard_size"])
    gone: list[str] = []
    stale: list[str] = []  # the failed files' jobs, in RQ's failed registry
    by_options: dict[str, list[list[Payload]]] = {}  # a chunk shares its options (model, version...)
    loaded: dict[str, Payload | None] = {}  # a lost group's payload, read once for its files
    for file in [*failed, *lost]:
        if file in lost:
            payload = _lost_payload(redis, lost[file], file, loaded)
        else:
            payload = _failed_payload(redis, batch_id, file)
        info = storage.head(file) if payload is not None else None
        if payload is None or info is None:
            gone.append(file)
            continue
        if file not in lost:
            stale.append(job_id(payload))
        payload.pop("shard", None)
        payload["input_version"] = info.version  # the user may have fixed the file
        group = sharding.expand(payload, _bounds(info, int(shard_size or 0), payload["encoding"]))
        by_options.setdefault(payloads.pack_options(payload)[0], []).append(group)
    name = as_text(queue) if queue else "velo"
    chunks = [chunk for files in by_options.values() for chunk in _chunks(files)]
    count = sum(sum(_enqueue(redis, name, chunk, timeout)) for chunk in chunks)
    if loaded:
        redis.hdel(keys.PAYLOADS, *loaded)
    retried = {file for file in failed if file not in gone}
    stale += _failed_groups(redis, name, retried) if retried else []
    _clear_finished(redis, stale)  # `rq info` stops counting them failed (one enqueued again is queued: kept)
    return count, gone


def _failed_groups(redis: Redis, queue: str, files: set[str]) -> list[str]:
    """The failed group jobs in ``queue``'s failed registry that hold any of ``files`` (their
    failed files, scored again now each as a job of its own: the group's job is done with)."""
    ids = [jid for jid in make_queue(redis, queue).failed_job_registry.get_job_ids() if jid.startswith(GROUP_PREFIX)]
    jobs = Job.fetch_many(ids, connection=redis, serializer=JSONSerializer) if ids else []
    return [j.id for j in jobs if j is not None and files.intersection(j.meta.get("group") or [])]


def _failed_payload(redis: Redis, batch_id: str, file: str) -> Payload | None:
    raw = redis.hget(keys.batch_jobs(batch_id), file)  # written by the worker that failed it
    return json.loads(raw) if raw is not None else None


def _lost_payload(redis: Redis, job_ids: list[str], file: str, loaded: dict[str, Payload | None]) -> Payload | None:
    """A lost file's payload, from beside its removed jobs; their entries go (it gets new ones).
    A group's entry, shared by its files, is read once into ``loaded`` and goes once all are read."""
    if job_ids[0].startswith(GROUP_PREFIX):
        if job_ids[0] not in loaded:
            try:
                loaded[job_ids[0]] = payloads.load(redis, job_ids[0])
            except InputError:
                loaded[job_ids[0]] = None
        group = loaded[job_ids[0]]
        return next((p for p in members(group) if p["input"] == file), None) if group else None
    try:
        payload = payloads.load(redis, job_ids[0])
    except InputError:  # its options are gone too
        payload = None
    redis.hdel(keys.PAYLOADS, *job_ids)
    return payload


def _bounds(info: storage.ObjectInfo, shard_size: int, encoding: str) -> list[tuple[int, int]]:
    try:
        return sharding.bounds(info, shard_size, encoding)
    except InputError:  # changed again meanwhile: whole
        return []


def cancel(redis: Redis, queue: str, batch_ids: set[str], reason: str) -> int:
    """Take the queued and started jobs of ``batch_ids`` out of Redis, once the workers that could
    run them are stopped (`velo run` interrupted); returns how many files they were.

    A job left queued would make the same dispatch, run again, skip its file as "already
    queued" with no worker to run it. Each such file is failed in its batch with ``reason`` (so
    the batch reads finished, and `velo retry` can enqueue it); nothing is written next to it,
    so the next dispatch plans it as new. One Redis read per queued job: fine for what one
    machine's `velo run` queues.
    """
    if not batch_ids:
        return 0
    q = make_queue(redis, queue)
    started = [as_text(e) for e in redis.zrange(q.started_job_registry.key, 0, -1)]
    ids = [as_text(j) for j in redis.lrange(q.key, 0, -1)] + [e.split(":")[0] for e in started]
    files: dict[str, Payload] = {}
    for jid in dict.fromkeys(ids):
        try:
            p = payloads.load(redis, jid)
        except InputError:
            continue
        if p is None or p["batch"] not in batch_ids:
            continue
        with redis.pipeline(transaction=False) as pipe:
            pipe.lrem(q.key, 0, jid)
            for entry in started:
                if entry.split(":")[0] == jid:
                    pipe.zrem(q.started_job_registry.key, entry)
            pipe.delete(Job.key_for(jid))
            pipe.hdel(keys.PAYLOADS, jid)
            pipe.execute()
        p.pop("shard", None)
        for member in members(p):
            member.pop("group", None)
            files[member["input"]] = member
    for file, p in files.items():
        redis.hset(keys.batch_jobs(p["batch"]), file, json.dumps(p))  # for `velo retry`; first: the batch may expire
        set_state(redis, p["batch"], file, FileState.FAILED, error=f"{file}: {reason}")
    return len(files)
