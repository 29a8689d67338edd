"""Prometheus metrics of a worker: files, rows, failures by reason, model loads, queue depth, busy workers.

Off unless ``velo worker --metrics-port`` (``VELO_METRICS_PORT``) turns them on; then a few
counter updates per file, never per row. prometheus_client runs in its multiprocess mode,
with one process too (one code path): each process, including the workers ``--processes N``
forks, writes its values to memory-mapped files in a fresh temporary folder
(``PROMETHEUS_MULTIPROC_DIR``), and the parent's HTTP server adds them up when scraped, so one
port serves the sum. ``velo_queue_depth`` is read from Redis (one LLEN) at each scrape.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from typing import Any

from rq.exceptions import AbandonedJobError
from rq.timeouts import JobTimeoutException

from velosiped.errors import ConfigError, InputError, TransientError

__all__ = [
    "REASONS",
    "busy",
    "disable",
    "enable",
    "file_done",
    "file_failed",
    "model_loaded",
    "process_dead",
    "reason_of",
    "registry",
    "serve",
]

log = logging.getLogger(__name__)

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

REASONS = ("input", "transient", "timeout", "config", "unexpected", "abandoned")
"""Every value of the ``reason`` label of ``velo_failures_total``: a small fixed set, never a file name."""

FILE_BUCKETS = (0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 7200, 21600)
"""Seconds per file: from tiny files to the 6 h default time limit."""

LOAD_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)

_m: Any = None
_dir: str | None = None
_value_class: Any = None  # prometheus_client's own, put back by disable()


class _Metrics:
    def __init__(self) -> None:
        from prometheus_client import Counter, Gauge, Histogram

        # registry=None: multiprocess values are collected from the files, not from a registry.
        self.files = Counter("velo_files", "Files finished, by outcome.", ["outcome"], registry=None)
        self.rows = Counter("velo_rows", "Rows scored (files done).", registry=None)
        self.failures = Counter("velo_failures", "Files failed, by reason.", ["reason"], registry=None)
        self.seconds = Histogram(
            "velo_file_seconds", "Seconds to score one file (done files).", buckets=FILE_BUCKETS, registry=None
        )
        self.load_seconds = Histogram(
            "velo_model_load_seconds", "Seconds to unpickle a model.", buckets=LOAD_BUCKETS, registry=None
        )
        self.loads = Counter("velo_model_loads", "Models unpickled (cache misses).", registry=None)
        self.busy = Gauge(
            "velo_busy_workers", "Worker processes scoring a file now.", multiprocess_mode="livesum", registry=None
        )
        for outcome in ("done", "failed"):  # every series exists from the start, at 0
            self.files.labels(outcome)
        for reason in REASONS:
            self.failures.labels(reason)


def enable(folder: str | None = None) -> str:
    """Turn metrics on in this process and the workers it forks; return the multiprocess folder.

    Call it before forking. ``folder`` defaults to a fresh temporary folder, removed at exit.
    """
    global _m, _dir, _value_class
    if _m is not None and _dir is not None:
        return _dir
    if folder is None:
        folder = tempfile.mkdtemp(prefix="velo-metrics-")
        atexit.register(_remove, folder, os.getpid())
    os.environ[MULTIPROC_ENV] = folder  # before prometheus_client is imported: it reads it then
    from prometheus_client import values

    # A fresh file-backed value class, bound to this folder whenever prometheus_client was imported.
    _value_class = _value_class or values.ValueClass
    values.ValueClass = values.MultiProcessValue()
    _dir, _m = folder, _Metrics()
    return folder


def disable() -> None:
    """Turn metrics off in this process (tests)."""
    global _m, _dir, _value_class
    if _dir is not None and os.environ.get(MULTIPROC_ENV) == _dir:
        del os.environ[MULTIPROC_ENV]
    if _value_class is not None:
        from prometheus_client import values

        values.ValueClass, _value_class = _value_class, None
    _m = _dir = None


def _remove(folder: str, pid: int) -> None:
    if os.getpid() == pid:  # the parent only, not a forked worker
        shutil.rmtree(folder, ignore_errors=True)


class _QueueDepth:
    """``velo_queue_depth``, read when scraped."""

    def __init__(self, queue: str, depth: Callable[[], int]) -> None:
        self.queue, self.depth = queue, depth

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import GaugeMetricFamily

        try:
            n = self.depth()
        except Exception as e:  # Redis away: leave the gauge out of this scrape
            log.warning("velo_queue_depth: cannot read the queue length: %s", e)
            return
        family = GaugeMetricFamily("velo_queue_depth", "Jobs waiting in the RQ queue.", labels=["queue"])
        family.add_metric([self.queue], n)
        yield family


def registry(queue: str | None = None, depth: Callable[[], int] | None = None) -> Any:
    """A registry summing every process's metrics, plus the queue depth when ``depth`` is given."""
    from prometheus_client import CollectorRegistry
    from prometheus_client.multiprocess import MultiProcessCollector

    if _dir is None:
        raise RuntimeError("metrics are off: call metrics.enable() first")
    reg = CollectorRegistry()
    MultiProcessCollector(reg, path=_dir)
    if depth is not None:
        reg.register(_QueueDepth(queue or "", depth))
    return reg


def serve(port: int, addr: str = "0.0.0.0", queue: str | None = None, depth: Callable[[], int] | None = None) -> Any:
    """Serve ``/metrics`` on ``addr:port`` from a thread of this process; return the server.

    Raises:
        ConfigError: the port cannot be bound.
    """
    from prometheus_client import start_http_server

    enable()
    try:
        server, _thread = start_http_server(port, addr, registry=registry(queue, depth))
    except OSError as e:
        raise ConfigError(f"cannot serve metrics on {addr}:{port} ({e.strerror}); choose another --metrics-port") from e
    os.register_at_fork(after_in_child=server.socket.close)  # forked workers do not hold the port
    log.info("metrics on http://%s:%d/metrics", addr, server.server_port, extra={"port": server.server_port})
    return server


def file_done(rows: int, seconds: float) -> None:
    if _m is not None:
        _m.files.labels("done").inc()
        _m.rows.inc(rows)
        _m.seconds.observe(seconds)


def shard_done(rows: int, file_seconds: float | None) -> None:
    """A shard of a big file: its rows now; the file counts once, when assembled (seconds since its first shard)."""
    if _m is not None:
        _m.rows.inc(rows)
        if file_seconds is not None:
            _m.files.labels("done").inc()
            _m.seconds.observe(file_seconds)


def file_failed(reason: str) -> None:
    if _m is not None:
        _m.files.labels("failed").inc()
        _m.failures.labels(reason if reason in REASONS else "unexpected").inc()


def reason_of(exc_type: type[BaseException]) -> str:
    """The ``reason`` label of a failure, from its exception class."""
    if not isinstance(exc_type, type):
        return "unexpected"
    for cls, reason in (
        (AbandonedJobError, "abandoned"),
        (JobTimeoutException, "timeout"),
        (TransientError, "transient"),
        (InputError, "input"),
        (ConfigError, "config"),
    ):
        if issubclass(exc_type, cls):
            return reason
    return "unexpected"


def model_loaded(seconds: float) -> None:
    if _m is not None:
        _m.loads.inc()
        _m.load_seconds.observe(seconds)


@contextlib.contextmanager
def busy() -> Iterator[None]:
    """Count this process in ``velo_busy_workers`` while it runs a job."""
    if _m is None:
        yield
        return
    _m.busy.inc()
    try:
        yield
    finally:
        _m.busy.dec()


def process_dead(pid: int) -> None:
    """Forget a dead worker process's live gauges (a worker killed while busy is not busy)."""
    if _dir is not None:
        from prometheus_client.multiprocess import mark_process_dead

        mark_process_dead(pid, _dir)
