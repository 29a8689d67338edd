"""Every ``VELO_*`` setting, its default and what it does, in one place (like rq's ``defaults.py``).

A setting is read from the environment when it is used, never at import, so a test or a parent
process can set it before a worker starts, and a bad value is one clear line (a ``ConfigError``
naming the variable), not a traceback at import.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

from velosiped.errors import ConfigError

__all__ = [
    "ALLOWED_PREFIXES",
    "API_TOKEN",
    "BATCH_RETENTION",
    "BLOCK_SIZE",
    "HEARTBEAT_TTL",
    "LOG_FORMAT",
    "MAINTENANCE_INTERVAL",
    "METRICS_PORT",
    "MODEL_CACHE",
    "MODEL_PREFIXES",
    "REDIS_GIVE_UP",
    "S3_BACKOFF",
    "S3_BACKOFF_MAX",
    "S3_READ_TIMEOUT",
    "S3_RETRIES",
    "SERVE_CONFIG",
    "SHARD_SIZE",
    "STATE_DIR",
    "THREADS",
    "Setting",
]

T = TypeVar("T")


@dataclass(frozen=True)
class Setting(Generic[T]):
    """One environment variable: its name, its default, how its text becomes a value."""

    env: str
    default: T
    parse: Callable[[str], T]
    doc: str
    compute: Callable[[], T] | None = None
    """Computes the default when it is used (one that depends on the home folder, say)."""

    def get(self) -> T:
        """The value now: the variable's, or the default when it is unset or empty.

        Raises:
            ConfigError: the variable holds something ``parse`` refuses.
        """
        raw = os.environ.get(self.env, "").strip()
        if not raw:
            return self.compute() if self.compute is not None else self.default
        try:
            return self.parse(raw)
        except ValueError as e:
            raise ConfigError(f"{self.env}={raw!r}: {e}; {self.doc}") from e

    @property
    def is_set(self) -> bool:
        return bool(os.environ.get(self.env, "").strip())


def _positive(kind: Callable[[str], T]) -> Callable[[str], T]:
    def parse(raw: str) -> T:
        value = kind(raw)
        if not value > 0:  # type: ignore[operator]
            raise ValueError("must be above 0")
        return value

    return parse


def _not_negative(raw: str) -> int:
    value = int(raw)
    if value < 0:
        raise ValueError("must be 0 or more")
    return value


def _prefixes(raw: str) -> tuple[str, ...]:
    return tuple(p.strip() for p in raw.split(",") if p.strip())


def _path(raw: str) -> str:
    return os.path.abspath(os.path.expanduser(raw))


# ------------------------------------------------------------------------------------ where to touch

ALLOWED_PREFIXES: Setting[tuple[str, ...]] = Setting(
    "VELO_ALLOWED_PREFIXES", (), _prefixes, "comma-separated URI prefixes workers may read and write"
)
"""Comma-separated URI prefixes a worker may read inputs from and write outputs to; unset: anywhere."""

MODEL_PREFIXES: Setting[tuple[str, ...]] = Setting(
    "VELO_MODEL_PREFIXES", (), _prefixes, "comma-separated URI prefixes models may be loaded from"
)
"""Comma-separated URI prefixes models may be loaded from (unpickling runs code); unset: anywhere."""

# ---------------------------------------------------------------------------------- local folders

STATE_DIR: Setting[str] = Setting(
    "VELO_STATE_DIR",
    "",
    _path,
    "a folder for the embedded Redis and `velo run` logs",
    compute=lambda: os.path.join(os.environ.get("XDG_STATE_HOME") or os.path.expanduser("~/.local/state"), "velosiped"),
)
"""Folder of local state: the embedded Redis file and `velo run` logs (default
``$XDG_STATE_HOME/velosiped``, else ``~/.local/state/velosiped``)."""

MODEL_CACHE: Setting[str] = Setting(
    "VELO_MODEL_CACHE",
    "",
    _path,
    "a folder for downloaded models",
    compute=lambda: os.path.expanduser("~/.cache/velosiped/models"),
)
"""Where S3 models are downloaded before loading, one file per model version."""

# ----------------------------------------------------------------------------------------- workers

HEARTBEAT_TTL: Setting[int] = Setting(
    "VELO_HEARTBEAT_TTL", 30, _positive(int), "seconds a busy worker's lease on its file lasts"
)
"""Seconds a busy worker's lease on its file lasts; renewed every third of it. A worker killed
with ``kill -9`` holds its file this long (plus ``VELO_MAINTENANCE_INTERVAL``) before another redoes it."""

MAINTENANCE_INTERVAL: Setting[int] = Setting(
    "VELO_MAINTENANCE_INTERVAL", 15, _positive(int), "seconds between searches for dead workers' files"
)
"""Seconds between a worker's searches for files whose worker died (expired leases)."""

REDIS_GIVE_UP: Setting[float] = Setting(
    "VELO_REDIS_GIVE_UP", 300.0, _positive(float), "seconds without Redis before giving up"
)
"""Seconds without Redis after which a worker, or a command waiting on a batch, stops retrying
and exits with code 2 (the file in hand is redone elsewhere)."""

THREADS: Setting[int | None] = Setting(
    "VELO_THREADS", None, _positive(int), "threads each worker process lets a model's BLAS/OpenMP use"
)
"""Threads each worker process lets a model's BLAS/OpenMP pools use; unset: cores / processes."""

BLOCK_SIZE: Setting[int] = Setting(
    "VELO_BLOCK_SIZE", 2 * 1024 * 1024, _positive(int), "bytes of CSV parsed per block (a row must fit in one)"
)
"""Bytes of CSV parsed per block; a row must fit in one. Measured on 20 float columns: 2 MiB
blocks are the fastest and add ~130 MB to a worker; 8 MiB ones add ~450 MB."""

METRICS_PORT: Setting[str] = Setting("VELO_METRICS_PORT", "", str, "the port of `velo worker`'s metrics")
"""`velo worker --metrics-port`: serve Prometheus metrics on this port; unset: off."""

LOG_FORMAT: Setting[str] = Setting("VELO_LOG_FORMAT", "text", str, "text or json")
"""`velo worker --log-format`: readable ``text`` lines, or one ``json`` object per line."""

API_TOKEN: Setting[str] = Setting(
    "VELO_API_TOKEN", "", str, "the bearer token `velo serve` wants on routes that change anything"
)
"""`velo serve`: when set, dispatch and retry through the API want ``Authorization: Bearer <token>``,
and only then may it listen beyond loopback. Never shown in any output."""

SERVE_CONFIG: Setting[str] = Setting("VELO_SERVE_CONFIG", "", str, "set by `velo serve` for its own processes")
"""How `velo serve` hands its options (JSON) to uvicorn's worker processes; not for users."""

# ------------------------------------------------------------------------------ storage trouble

S3_RETRIES: Setting[int] = Setting(
    "VELO_S3_RETRIES", 3, _not_negative, "times a file is tried again after transient storage trouble"
)
"""Times a file is tried again after transient storage trouble (default 3: four attempts in all);
only then is it recorded as failed, and the next dispatch tries it again."""

S3_BACKOFF: Setting[float] = Setting(
    "VELO_S3_BACKOFF", 2.0, _positive(float), "seconds before the first retry after storage trouble"
)
"""Seconds before the first retry (default 2); each next one waits twice as long, with jitter."""

S3_BACKOFF_MAX: Setting[float] = Setting(
    "VELO_S3_BACKOFF_MAX", 60.0, _positive(float), "longest pause between two attempts, in seconds"
)
"""Longest pause between two attempts at a file, in seconds (default 60)."""

S3_READ_TIMEOUT: Setting[float] = Setting(
    "VELO_S3_READ_TIMEOUT", 60.0, _positive(float), "seconds the S3 client waits for a response"
)
"""Seconds the S3 client waits for a response (or the next bytes of one) before giving up on it
(default 60, botocore's); the attempt then counts as failed and is retried."""

# -------------------------------------------------------------------------------------- dispatching

SHARD_SIZE: Setting[str] = Setting("VELO_SHARD_SIZE", "1GB", str, "e.g. 512MB, 1GB, or 0 (never split)")
"""`--shard-size`: plain CSVs above this size are split into shards scored by many workers."""

BATCH_RETENTION: Setting[int] = Setting(
    "VELO_BATCH_RETENTION", 7 * 24 * 3600, _positive(int), "seconds a finished batch stays in Redis"
)
"""Seconds a finished batch (its counters, files, errors) stays in Redis before it expires
(default 604800: 7 days); a dispatch's shared options expire this long after their last enqueue.
Read by the command that creates the batch and stored with it."""
