"""Redis URLs lose their password in every message: whatever the password holds (/ @ : + =, encoded
or not), wherever it sits (userinfo, a password= query), and redis-py's own words about the URL too."""

from __future__ import annotations

import re

import pytest

from velosiped.connection import connect
from velosiped.errors import ConfigError, redact, scrub

PASSWORDS = ["s3cr/et", "p@ss", "a:b", "Zm9v/YmFy+==", "s3cr%2Fet", "p%40ss%2Fw", "plain"]


def fragments(password: str) -> list[str]:
    """The password and every piece of it a parser might split off (3 characters or more)."""
    return [password] + [p for p in re.split(r"[/@:?#&=%+]", password) if len(p) >= 3]


@pytest.mark.parametrize("password", PASSWORDS)
@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("redis://:{pw}@cache.example:6379/0", "redis://:***@cache.example:6379/0"),
        ("redis://alice:{pw}@cache.example:6379/0", "redis://alice:***@cache.example:6379/0"),
        ("rediss://:{pw}@cache.example:6380/1", "rediss://:***@cache.example:6380/1"),
        ("unix://:{pw}@/run/redis.sock?db=2", "unix://:***@/run/redis.sock?db=2"),
        ("unix:///run/redis.sock?db=2&password={pw}", "unix:///run/redis.sock?db=2&password=***"),
        ("redis://cache.example/0?password={pw}", "redis://cache.example/0?password=***"),
        ("redis+sentinel://:{pw}@s1:26379/mymaster/0", "redis+sentinel://:***@s1:26379/mymaster/0"),
        (
            "redis+sentinel://alice:{pw}@s1:26379,s2:26380,s3/mymaster/2",
            "redis+sentinel://alice:***@s1:26379,s2:26380,s3/mymaster/2",
        ),
    ],
)
def test_redact_hides_any_password_whole(password, template, expected):
    # Given a URL holding the password; When it is redacted; Then it reads as expected, no piece left
    got = redact(template.format(pw=password))
    assert got == expected
    for piece in fragments(password):
        assert piece not in got


@pytest.mark.parametrize(
    "url",
    [
        "redis://cache.example:6379/0",
        "rediss://cache.example:6380",
        "unix:///run/redis.sock?db=1",
        "redis+sentinel://s1:26379,s2:26380/mymaster/0",
    ],
)
def test_redact_leaves_a_url_without_password_alone(url):
    assert redact(url) == url


def test_a_userinfo_without_colon_is_hidden_whole():
    # `redis://secret@host` is how many write a password: hide it rather than guess
    assert redact("redis://s3cr/et@cache.example/0") == "redis://***@cache.example/0"


def test_scrub_removes_the_pieces_redis_py_quotes():
    url = "redis://:s3cr/et@cache.example:6379/0"
    assert scrub("Port could not be cast to integer value as 's3cr'", url) == (
        "Port could not be cast to integer value as '***'"
    )
    assert scrub("Connection refused", url) == "Connection refused"


@pytest.mark.parametrize("password", ["s3cr/et", "Zm9v/YmFy+==", "s3cr?et", "s3cr#et"])
def test_a_url_redis_py_cannot_parse_fails_in_one_line_without_the_password(password):
    # Given a password with a raw / ? or # (redis-py then reads part of it as the port)
    url = f"redis://:{password}@127.0.0.1:1/0"
    # When Velosiped connects; Then a ConfigError names the URL redacted and how to fix it, no piece of the password
    with pytest.raises(ConfigError) as caught:
        connect(url)
    text = str(caught.value)
    assert "redis://:***@127.0.0.1:1/0" in text
    for piece in fragments(password):
        assert piece not in text, text
