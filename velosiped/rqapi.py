"""Everything Velosiped takes from RQ, in one place: how its queues are built, and the two
private helpers the dispatcher's one-round-trip enqueue relies on.

RQ writes a queued job's hash from Lua with ``Queue._prepare_for_queue`` and
``rq.scripts._build_hset_args``; Velosiped's enqueue script (``scripts/enqueue.lua``) writes the
same hash for thousands of jobs at once. Private names can change in any release:
``tests/unit/test_rqapi.py`` compares what they give with what RQ's public enqueue writes, so an
RQ upgrade that changes them fails there, loudly, not in production.
"""

from __future__ import annotations

from typing import Any

from redis import Redis
from rq import Queue
from rq.job import Job
from rq.scripts import _build_hset_args
from rq.serializers import JSONSerializer

__all__ = ["MAINTENANCE_LOCK_TTL", "RQ_SERIES", "VeloQueue", "make_queue", "queued_job_fields"]

RQ_SERIES = "3.0."
"""The RQ releases the private helpers below were checked against (pyproject pins ``rq==3.0.*``)."""


MAINTENANCE_LOCK_TTL = 60
"""Seconds a worker's lock on cleaning a queue's registries lasts if it never releases it."""


class VeloQueue(Queue):
    """RQ's queue, with a maintenance lock that outlives a killed holder by a minute, not 15.

    One worker at a time cleans a queue's registries (and so requeues dead workers' files);
    RQ's lock lasts 899 s, so a worker killed while cleaning stopped every other from
    reclaiming dead workers' files for 15 minutes (seen in the SIGKILL chaos test).
    """

    def acquire_maintenance_lock(self) -> bool:
        return bool(self.connection.set(self.registry_cleaning_key, 1, nx=True, ex=MAINTENANCE_LOCK_TTL))


def make_queue(redis_conn: Redis, name: str) -> Queue:
    return VeloQueue(name, connection=redis_conn, serializer=JSONSerializer)


def queued_job_fields(queue: Queue, job: Job) -> list[Any]:
    """Field, value, field, value... of ``job``'s hash as ``queue``'s own enqueue writes it, queued.

    Fields RQ writes empty (worker, start, end... of a job not run yet) are left out: RQ reads a
    missing field as it reads '' (``Job.restore``: ``if obj.get(...)``), ~100 bytes a job saved.
    """
    queue._prepare_for_queue(job)
    args = _build_hset_args(job)  # type: ignore[no-untyped-call]  # RQ's private helper has no hints
    return [x for pair in zip(args[::2], args[1::2], strict=True) if pair[1] != "" for x in pair]
