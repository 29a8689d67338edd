"""How Velosiped builds its RQ objects, in one place."""

from __future__ import annotations

from redis import Redis
from rq import Queue
from rq.serializers import JSONSerializer

__all__ = ["MAINTENANCE_LOCK_TTL", "VeloQueue", "make_queue"]

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
