"""`redis+sentinel://` URLs: parsed into sentinels, service, db and the primary's credentials; a client
that asks the sentinels for the primary at every connection, with the same retries as any other;
its errors during a failover taken as transient. No server needed: clients connect lazily."""

from __future__ import annotations

import pytest
import redis
from redis.sentinel import MasterNotFoundError, SentinelConnectionPool

from velosiped.connection import describe_connection, fail_fast, is_sentinel, parse_sentinel_url, redis_client
from velosiped.errors import TransientError
from worker.task import _classify


def test_one_sentinel_default_port_and_db():
    parts = parse_sentinel_url("redis+sentinel://sentinel.example/mymaster")
    assert parts.sentinels == (("sentinel.example", 26379),)
    assert (parts.service, parts.db, parts.username, parts.password) == ("mymaster", 0, None, None)


def test_several_sentinels_a_db_and_a_password_for_the_primary():
    parts = parse_sentinel_url("redis+sentinel://:s3cr3t@h1:26379,h2:26380,[::1]:26381/mymaster/3")
    assert parts.sentinels == (("h1", 26379), ("h2", 26380), ("::1", 26381))
    assert (parts.service, parts.db, parts.password) == ("mymaster", 3, "s3cr3t")


@pytest.mark.parametrize(
    ("userinfo", "username", "password"),
    [
        ("alice:pw", "alice", "pw"),
        (":s3cr%2Fet", None, "s3cr/et"),  # percent-encoded, as redis-py decodes it
        (":s3cr/et@x", None, "s3cr/et@x"),  # raw / and @: the userinfo ends at the last @
        ("alice", "alice", None),  # a bare user, as redis-py reads redis://user@host
    ],
)
def test_credentials(userinfo, username, password):
    parts = parse_sentinel_url(f"redis+sentinel://{userinfo}@h1/mymaster/0")
    assert (parts.username, parts.password) == (username, password)


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("redis+sentinel://:s3cr3t@h1:26379", "names no service"),
        ("redis+sentinel://:s3cr3t@h1:26379/", "names no service"),
        ("redis+sentinel://:s3cr3t@h1:port/mymaster", "is not host:port"),
        ("redis+sentinel://:s3cr3t@h1:99999/mymaster", "is not host:port"),
        ("redis+sentinel://:s3cr3t@h1,/mymaster", "is not host:port"),
        ("redis+sentinel://:s3cr3t@h1/mymaster/zero", "is not a number"),
        ("redis+sentinel://:s3cr3t@h1/mymaster/0?ssl=true", "no query"),
    ],
)
def test_malformed_urls_say_why_without_the_password(url, says):
    with pytest.raises(ValueError, match=says) as caught:
        parse_sentinel_url(url)
    assert "s3cr3t" not in str(caught.value)


def test_the_scheme_is_recognised_whatever_its_case():
    assert is_sentinel("REDIS+SENTINEL://h/m") and is_sentinel("redis+sentinel://h/m")
    assert not is_sentinel("redis://h:6379/0")


URL = "redis+sentinel://:s3cr3t@h1:26379,h2:26380/mymaster/2"


def test_the_client_asks_the_sentinels_and_retries_as_a_plain_one_does():
    # Given a client of a Sentinel URL and one of a plain URL
    client, plain = redis_client(URL), redis_client("redis://h:6379/0")
    pool = client.connection_pool
    # Then its pool is redis-py's sentinel pool for the primary of the service, with the URL's db and password
    assert isinstance(pool, SentinelConnectionPool) and pool.is_master and pool.service_name == "mymaster"
    assert pool.connection_kwargs["db"] == 2 and pool.connection_kwargs["password"] == "s3cr3t"
    # And the sentinels are asked without the primary's password
    assert all(s.connection_pool.connection_kwargs.get("password") is None for s in pool.sentinel_manager.sentinels)
    # And its commands retry as a plain client's do (a failover is a ConnectionError: retried)
    ours, theirs = pool.connection_kwargs, plain.connection_pool.connection_kwargs
    assert ours["retry"].get_retries() == theirs["retry"].get_retries() == 12
    assert ours["retry_on_error"] == theirs["retry_on_error"]
    assert redis.ConnectionError in ours["retry_on_error"] and redis.ReadOnlyError in ours["retry_on_error"]
    assert issubclass(MasterNotFoundError, redis.ConnectionError)


def test_fail_fast_keeps_the_sentinels_and_drops_the_retries():
    client = redis_client(URL)
    probe = fail_fast(client)
    pool = probe.connection_pool
    assert isinstance(pool, SentinelConnectionPool) and pool is not client.connection_pool
    assert pool.service_name == "mymaster" and pool.connection_kwargs["db"] == 2
    assert pool.connection_kwargs["password"] == "s3cr3t" and pool.connection_kwargs["socket_connect_timeout"] == 5
    assert pool.connection_class is client.connection_pool.connection_class
    assert "retry" not in pool.connection_kwargs and "retry_on_error" not in pool.connection_kwargs


def test_describe_connection_names_the_sentinels_and_service_without_the_password():
    assert describe_connection(redis_client(URL)) == "redis+sentinel://h1:26379,h2:26380/mymaster/2"


@pytest.mark.parametrize(
    "error",
    [
        redis.ConnectionError("Error 111 connecting to 127.0.0.1:6379. Connection refused."),
        MasterNotFoundError("No master found for 'mymaster'"),
        redis.ReadOnlyError("You can't write against a read only replica."),
    ],
)
def test_a_failover_error_in_a_job_is_transient(error):
    # A file whose job meets the failover is tried again after a backoff, not failed
    found = _classify({"input": "in/a.csv"}, error)  # type: ignore[arg-type]
    assert isinstance(found, TransientError) and "Redis" in found.brief


class Interrupted(Exception):
    """What RQ's signal handler raises inside a blocking read (StopRequested)."""


def test_a_read_cut_short_drops_the_connection(monkeypatch):
    # Given a connection of a Sentinel client, waiting for a reply (BLPOP)
    conn = redis_client(URL).connection_pool.make_connection()
    dropped = []
    monkeypatch.setattr(conn, "disconnect", lambda *a, **k: dropped.append(True))

    def cut_short(*args, **kwargs):
        raise Interrupted

    monkeypatch.setattr(conn._parser, "read_response", cut_short)
    # When the read is cut short
    with pytest.raises(Interrupted):
        conn.read_response()
    # Then the connection is dropped, not handed back with the reply still on its way (redis-py's
    # sentinel connection keeps it by default: the next command would read that reply as its own)
    assert dropped


def test_a_reconnection_asks_the_sentinels_not_the_last_primary(monkeypatch):
    # Given a connection of a Sentinel client that knew the primary at old:1 before it died
    conn = redis_client(URL).connection_pool.make_connection()
    conn.host, conn.port = "old", 1
    monkeypatch.setattr(conn.connection_pool, "get_master_address", lambda: ("new", 2))
    reached = []

    def connect(self):
        reached.append((self.host, self.port))
        return object()

    monkeypatch.setattr(type(conn), "_connect", connect)
    monkeypatch.setattr(type(conn), "on_connect_check_health", lambda self, check_health=True: None)
    # When a command's retry reconnects it (redis-py's send_packed_command: connect_check_health)
    conn.connect_check_health(check_health=False)
    # Then it asked the sentinels and went to the primary they name now, not to the one it knew
    assert reached == [("new", 2)]
