"""Run RQ workers that keep their model between jobs.

RQ's default ``Worker`` forks a fresh work-horse per job, so a model loaded inside a job dies
with it and is unpickled again for the next one (1.45 s for a 49 MB forest). Velosiped runs
RQ's ``SimpleWorker`` instead: jobs run in the worker process itself, where
:mod:`worker.models` keeps the model loaded across jobs. RQ still enforces each job's
timeout (SIGALRM in the worker) and SIGTERM still finishes the file in hand before exiting.
Several processes on one machine come from RQ's ``WorkerPool``, which forks N such workers,
restarts any that die, and forwards SIGTERM to them.
"""

from __future__ import annotations

import logging

from redis import Redis
from rq import Queue, SimpleWorker
from rq.serializers import JSONSerializer
from rq.worker_pool import WorkerPool

__all__ = ["VeloWorker", "make_queue", "run_workers"]

log = logging.getLogger(__name__)


class VeloWorker(SimpleWorker):
    """A non-forking RQ worker speaking JSON: the model stays loaded between jobs."""

    def __init__(self, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        kwargs["serializer"] = JSONSerializer
        super().__init__(*args, **kwargs)


def make_queue(redis: Redis, name: str) -> Queue:
    return Queue(name, connection=redis, serializer=JSONSerializer)


def run_workers(redis: Redis, queue: str, *, processes: int = 1, burst: bool = False) -> None:
    """Work ``queue`` with ``processes`` workers until stopped (``burst``: until it is empty)."""
    if processes <= 1:
        worker = VeloWorker([make_queue(redis, queue)], connection=redis)
        worker.work(burst=burst, logging_level="INFO")
        return
    pool = WorkerPool(
        [queue], connection=redis, num_workers=processes, worker_class=VeloWorker, serializer=JSONSerializer
    )
    pool.start(burst=burst, logging_level="INFO")
