"""Run RQ workers that keep their model between jobs, renew their lease, and run only our task.

RQ's default ``Worker`` forks a fresh work-horse per job, so a model loaded inside a job dies
with it and is unpickled again for the next one (1.45 s for a 49 MB forest). Velosiped runs
RQ's ``SimpleWorker`` instead: jobs run in the worker process itself, where
:mod:`worker.models` keeps the model loaded across jobs. RQ still enforces each job's
timeout (SIGALRM in the worker) and SIGTERM still finishes the file in hand before exiting.

A ``SimpleWorker`` cannot heartbeat while its only thread scores a file, so RQ gives its jobs
a lease as long as the job timeout: a worker killed with ``kill -9`` would hold its file for
hours. Ours renews a short lease (``VELO_HEARTBEAT_TTL``) from a thread instead, and every
worker looks for expired leases every ``VELO_MAINTENANCE_INTERVAL`` seconds (RQ's default
is 10 minutes) and requeues those files. A dead worker's file is redone within
TTL + interval (45 s by default); the price is a little Redis traffic per busy worker and,
with a TTL shorter than a stall (a frozen VM, a very long GC pause), a file done twice (its
output is the same object either way).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import gc
import logging
import multiprocessing
import multiprocessing.process
import os
import signal
import sys
import threading
from collections.abc import Callable
from typing import Any

import redis
from redis import Redis
from rq import Queue, SimpleWorker
from rq.executions import Execution
from rq.job import Job
from rq.registry import StartedJobRegistry
from rq.serializers import JSONSerializer
from rq.timeouts import TimerDeathPenalty
from rq.utils import now
from rq.worker import WorkerStatus
from rq.worker_pool import WorkerPool

from velosiped import logs, lua, payloads, settings, storage
from velosiped.connection import fail_fast, redis_client, watch_redis
from velosiped.errors import EXIT_USAGE, FileFailed, InputError, redact
from velosiped.jobs import FAILURE_CALLBACK, TASK, Payload, describe, job_meta
from velosiped.rqapi import VeloQueue, make_queue
from worker import metrics, models

__all__ = ["VeloWorker", "make_queue", "queue_depth", "run_workers", "watch_redis"]

log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1
"""prctl(2): the signal this process gets when its parent dies."""


class JobRefused(Exception):
    """A job in the queue that is not a Velosiped scoring job: never imported, never run."""


def check_job(job: Job) -> tuple[Payload | None, bool]:
    """Refuse anything but ``score()`` without arguments and with a valid payload in Redis, whatever
    was pushed into Redis; (the payload, whether it is a failed file's job run again by `rq
    requeue`: its payload kept in the batch). None: its outcome is recorded, the job says so."""
    if job.func_name != TASK:
        raise JobRefused(f"job {job.id}: function {job.func_name!r} is not {TASK}; refused")
    if job.args or job.kwargs:
        raise JobRefused(f"job {job.id}: {TASK} takes no arguments; refused")
    callbacks = (job._success_callback_name, job._failure_callback_name, job._stopped_callback_name)
    if any(c not in (None, FAILURE_CALLBACK) for c in callbacks):
        raise JobRefused(f"job {job.id}: callbacks other than {FAILURE_CALLBACK}; refused")
    try:
        payload = payloads.of_job(job, job.connection)
        if payload is not None:
            return payload, False
        payload = payloads.of_failed_job(job, job.connection)
    except InputError as e:
        raise JobRefused(f"job {job.id}: {e}; refused") from e
    return payload, payload is not None


def name_job(job: Job, p: Payload) -> None:
    """Write which file, output and batch the job scores where RQ's tools show them (description,
    meta): a queued job names only its batch (velosiped.jobs.queued_description)."""
    job.description, job.meta = describe(p), job_meta(p)
    job.connection.hset(job.key, mapping={"description": job.description, "meta": job._serialize_meta()})


class VeloWorker(SimpleWorker):
    """A non-forking RQ worker speaking JSON, with a short renewable lease on its file."""

    queue_class = VeloQueue  # for queues given by name (a WorkerPool passes its own: VeloPool gets it too)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs["serializer"] = JSONSerializer
        interval = settings.MAINTENANCE_INTERVAL.get()
        kwargs.setdefault("maintenance_interval", interval)
        # RQ blocks on the queue for worker_ttl - 15 s; keep that short so idle workers
        # also run maintenance on time.
        kwargs.setdefault("worker_ttl", interval + 15)
        super().__init__(*args, **kwargs)

    interrupted = False
    """A SIGINT (Ctrl-C) stopped this worker: `velo worker` then exits 130, as any interrupted command."""

    stop_on_interrupt = False
    """Ctrl-C (SIGINT) stops the file in hand at once, instead of RQ's warm shutdown (finish it
    first): for `velo run`'s own workers, so an interrupted run ends within a second or two.
    SIGTERM still finishes the file in hand."""

    def _install_signal_handlers(self) -> None:
        super()._install_signal_handlers()
        if self.stop_on_interrupt:
            signal.signal(signal.SIGINT, self._interrupted)

    def request_stop(self, signum: int, frame: Any) -> None:
        self.interrupted = self.interrupted or signum == signal.SIGINT
        super().request_stop(signum, frame)

    def _interrupted(self, signum: int, frame: Any) -> None:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # once: a second SIGINT must not cut the clean-up
        if self.get_state() != WorkerStatus.BUSY:
            self.request_stop(signum, frame)  # idle: RQ stops at once
            return
        self._stop_requested = True  # the loop ends after this job...
        # ...which stops here: the partial output is removed on the way out (storage.write_atomic),
        # RQ puts the job back on the queue, and `velo run` takes it off (dispatcher.enqueue.cancel).
        raise KeyboardInterrupt

    def get_heartbeat_ttl(self, job: Job, working_time: float = 0.0) -> int:
        return settings.HEARTBEAT_TTL.get()

    def unsubscribe(self) -> None:
        """RQ's, without its 1 s wait at every exit. RQ unsubscribes, then stops its pub/sub
        thread: the UNSUBSCRIBE reply usually reaches the thread before the stop, and an
        unsubscribed thread then waits for a subscription for up to 60 s, so RQ's join gives up
        after 1 s. Stopped first, the thread ends on that very reply."""
        if self.pubsub_thread:
            self.pubsub_thread.stop()
        super().unsubscribe()

    _failed: tuple[str, str, int | None] | None = None
    """(job id, reason, RQ retries it had) of the file that failed in the job in hand: see handle_exception."""

    def handle_exception(self, job: Job, *exc_info: Any) -> None:
        if isinstance(exc_info[1], FileFailed):
            # Recorded and logged by the job already: RQ fails it with the one-line reason (not a
            # traceback of Velosiped's insides), and does not run it again on its own (its retries
            # are for workers that die: see dispatcher.enqueue.RETRIES).
            self._failed = (job.id, str(exc_info[1]), job.retries_left)
            job.retries_left = 0
            return
        super().handle_exception(job, *exc_info)

    def handle_job_failure(
        self,
        job: Job,
        queue: Queue,
        started_job_registry: StartedJobRegistry | None = None,
        exc_string: str = "",
        execution: Execution | None = None,
    ) -> None:
        failed, self._failed = self._failed, None
        if failed is None or failed[0] != job.id:
            super().handle_job_failure(job, queue, started_job_registry, exc_string, execution)
            return
        super().handle_job_failure(job, queue, started_job_registry, failed[1], execution)
        if failed[2]:  # `rq requeue` of it then gets them again, for a worker dying under it
            self.connection.hset(job.key, "retries_left", failed[2])

    def execute_job(self, job: Job, queue: Queue) -> None:
        try:
            payload, rerun = check_job(job)
            payloads.remember(job.id, payload, rerun)
        except JobRefused as e:
            self.log.error("%s", e)
            payloads.drop(self.connection, job.id)
            job._success_callback_name = job._failure_callback_name = job._stopped_callback_name = None
            job.retries_left = 0
            execution = self.prepare_execution(job)
            self.handle_job_failure(job, queue=queue, exc_string=str(e), execution=execution)
            return
        if payload is not None:
            name_job(job, payload if not rerun else {**payload, "shard": None})  # a rerun is whole
        execution = self.prepare_execution(job)
        stop = threading.Event()

        def renew() -> None:
            while not stop.wait(settings.HEARTBEAT_TTL.get() / 3):
                try:
                    self.maintain_heartbeats(job, execution)
                    if self.should_run_maintenance_tasks:
                        self.reclaim_abandoned()  # a busy fleet still finds dead workers' files
                except redis.RedisError as e:
                    self.log.warning("lease renewal for %s failed: %s", job.id, e)

        thread = threading.Thread(target=renew, name=f"lease-{job.id}", daemon=True)
        thread.start()
        try:
            with metrics.busy():
                self.perform_job(job, queue, execution)
        finally:
            stop.set()
            thread.join()
        self.set_state(WorkerStatus.IDLE)

    def reclaim_abandoned(self) -> None:
        """Requeue (or fail, when out of retries) files whose worker's lease expired.

        Runs from the lease thread, where RQ's SIGALRM time limits cannot: failure callbacks
        get a thread timer instead.
        """
        for queue in self.queues:
            if queue.acquire_maintenance_lock():
                try:
                    StartedJobRegistry(queue=queue, death_penalty_class=TimerDeathPenalty).cleanup()
                finally:
                    queue.release_maintenance_lock()
        self.last_cleaned_at = now()  # type: ignore[assignment]  # RQ declares it None, then sets datetimes

    def work(self, *args: Any, **kwargs: Any) -> bool:
        # No RQ scheduler process: Velosiped schedules nothing (a dead worker's file is requeued
        # at once; storage trouble is retried with backoff inside the job, see worker.backoff),
        # and WorkerPool would otherwise fork one per worker.
        kwargs["with_scheduler"] = False
        watch_redis(self.connection, give_up)
        return super().work(*args, **kwargs)


class VeloPool(WorkerPool):
    """RQ's pool of forked workers, telling the metrics when one of them dies, each worker with a
    client of its own made from ``url``.

    RQ's pool rebuilds a child's client from the parent's connection class and pool kwargs, in a
    plain ``ConnectionPool``. For a client through sentinels those kwargs hold the parent's
    sentinel proxy, which still points at the parent's pool (a forked copy): the child's pool is
    no sentinel pool, so when the primary changes its idle connections to the old one are not
    dropped (only the copy's are), and it trusts what redis-py's pool internals happen to survive
    a fork. Built from the URL, every child's client is made as the parent's was
    (:func:`velosiped.connection.redis_client`), whatever the scheme.
    """

    def __init__(self, *args: Any, url: str, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.url = url

    def get_worker_process(
        self, name: str, burst: bool, _sleep: float = 0, logging_level: str = "INFO"
    ) -> multiprocessing.process.BaseProcess:
        ctx = multiprocessing.get_context("fork")  # as RQ's: children share what is loaded here
        return ctx.Process(
            target=_pool_worker,
            args=(self.url, name, self._queue_names, burst, logging_level),
            name=f"Worker {name} (WorkerPool {self.name})",
        )

    interrupted = False
    """A SIGINT (Ctrl-C) stopped the pool (RQ passes the stop on to its workers)."""

    def request_stop(self, signum: int | None = None, frame: Any = None) -> None:
        self.interrupted = self.interrupted or signum == signal.SIGINT
        super().request_stop(signum, frame)

    def handle_dead_worker(self, worker_data: Any) -> None:
        metrics.process_dead(worker_data.pid)
        super().handle_dead_worker(worker_data)


def _pool_worker(url: str, name: str, queue_names: list[str], burst: bool, logging_level: str) -> None:
    """One worker of a :class:`VeloPool`: RQ's ``run_worker``, its client made from ``url``."""
    conn = redis_client(url)
    queues = [make_queue(conn, q) for q in queue_names]
    VeloWorker(queues, name=name, connection=conn).work(burst=burst, logging_level=logging_level)


def queue_depth(conn: Redis, queue: str) -> Callable[[], int]:
    """How many jobs wait in ``queue`` (one LLEN), failing fast while Redis is away."""
    probe, key = fail_fast(conn), make_queue(conn, queue).key
    return lambda: int(probe.llen(key))


def give_up(gone: float, children: list[int] | None = None) -> None:
    """Redis has been gone too long: say so in one line and exit 2 (the job in hand is redone elsewhere).

    ``os._exit``: this runs in the watchdog thread, where ``sys.exit`` would end only the thread."""
    where = redact(os.environ.get("REDIS_URL", "") or "the configured URL")
    sys.stderr.write(f"velo: cannot reach Redis at {where} for {gone:.0f} s; giving up (VELO_REDIS_GIVE_UP)\n")
    for pid in children or []:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    os._exit(EXIT_USAGE)


def fork_workers(
    url: str, queue: str, n: int, log_path: str, *, s3: bool = True
) -> list[multiprocessing.process.BaseProcess]:
    """Fork ``n`` single-process workers of ``queue`` from this process, logging to ``log_path``.

    Children share what this process has loaded (imports, a preloaded model) copy-on-write.
    ``s3``: their jobs may read S3, so import its client first (a local batch need not).
    """
    if s3:
        storage.preload()
    import worker.task  # noqa: F401  # the job's own modules (pyarrow.csv, scoring...): imported once, shared

    # The thread caps, applied once here: the children inherit them (threadpoolctl looks at every
    # library loaded, realpath and all: 40-130 ms a process, in each worker before its first job).
    models.limit_threads(settings.THREADS.get() or _share(n))
    lua.preload()

    gc.freeze()  # the collector then never writes to the shared pages (imports, the model)
    ctx = multiprocessing.get_context("fork")
    procs: list[multiprocessing.process.BaseProcess] = [
        ctx.Process(target=_forked_worker, args=(url, queue, log_path, n, s3, os.getpid()), daemon=False)
        for _ in range(n)
    ]
    for p in procs:
        p.start()
    return procs


def share_cores(processes: int) -> None:
    """Give each of ``processes`` workers its share of the cores for the model's own threads."""
    _set_share(processes)
    models.limit_threads()  # libraries already loaded (a preloaded model); later ones at model load


def _set_share(processes: int) -> None:
    """``VELO_THREADS``, unless set: each of ``processes`` workers' share of the cores."""
    os.environ.setdefault(models.THREADS_ENV, str(_share(processes)))


def _share(processes: int) -> int:
    return max(1, (os.cpu_count() or 1) // max(processes, 1))


def _forked_worker(url: str, queue: str, log_path: str, processes: int, s3: bool, parent: int) -> None:
    with open(log_path, "ab") as log:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
    signal.signal(signal.SIGINT, signal.SIG_DFL)  # RQ installs its own handlers in work()
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    _stop_with(parent)
    logs.configure("text")
    os.environ["REDIS_URL"] = url
    _set_share(processes)  # for libraries loaded from now on; those loaded already are capped (fork_workers)
    VeloWorker.stop_on_interrupt = True  # this process is one `velo run` worker: Ctrl-C stops it now
    run_workers(redis_client(url), queue, url=url, processes=1, s3=s3, capped=True)


def _stop_with(parent: int) -> None:
    """SIGTERM (finish the file in hand, then exit) when ``parent``, `velo run`, dies, even by
    ``kill -9``: an orphan would serve the queue of an embedded Redis no one reads. Linux only."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent:  # it died before prctl took hold
        os.kill(os.getpid(), signal.SIGTERM)


def run_workers(
    conn: Redis,
    queue: str,
    *,
    url: str,
    processes: int = 1,
    burst: bool = False,
    s3: bool = True,
    capped: bool = False,
) -> bool:
    """Work ``queue`` of ``conn`` (a client of ``url``) with ``processes`` workers until stopped
    (``burst``: until it is empty); True if a SIGINT (Ctrl-C) stopped them. ``capped``: the thread
    caps were applied before this process was forked.

    Several processes come from RQ's ``WorkerPool``, which forks N workers (sharing the
    model already loaded here copy-on-write), restarts any that die and passes SIGTERM on.
    """
    if capped:
        _set_share(processes)
    else:
        share_cores(processes)
    if s3:  # not in the first job; before forking, once for every worker
        storage.preload()
    if processes <= 1:
        worker = VeloWorker([make_queue(conn, queue)], connection=conn)
        worker.work(burst=burst, logging_level="INFO")
        return worker.interrupted
    gc.freeze()  # before forking: the collector then never writes to the pages workers share
    pool = VeloPool(
        [queue],
        connection=conn,
        num_workers=processes,
        worker_class=VeloWorker,
        serializer=JSONSerializer,
        queue_class=VeloQueue,
        url=url,
    )
    watch_redis(conn, lambda gone: give_up(gone, [w.pid for w in pool.worker_dict.values()]))
    pool.start(burst=burst, logging_level="INFO")
    return pool.interrupted
