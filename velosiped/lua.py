"""Velosiped's Lua scripts on Redis, each registered once per connection pool, not once per call."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from redis import Redis
    from redis.client import Pipeline

__all__ = ["script"]

_registered: dict[tuple[int, str], Any] = {}


def script(redis: Redis | Pipeline, source: str) -> Any:
    """``source`` as a callable script (EVALSHA, loading it on first use) for ``redis``'s pool."""
    key = (id(redis.connection_pool), source)
    if key not in _registered:
        _registered[key] = redis.register_script(source)
    return _registered[key]
