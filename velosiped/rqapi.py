"""How Velosiped builds its RQ objects, in one place."""

from __future__ import annotations

from redis import Redis
from rq import Queue
from rq.serializers import JSONSerializer

__all__ = ["make_queue"]


def make_queue(redis_conn: Redis, name: str) -> Queue:
    return Queue(name, connection=redis_conn, serializer=JSONSerializer)
