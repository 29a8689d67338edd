"""Velosiped's Lua scripts on Redis: ``.lua`` files in ``velosiped/scripts/``, read once and
registered once per connection pool, not once per call.

A script may include another: ``script(redis, "state.lua", "enqueue.lua")`` runs the two
files as one, so the rule that moves a file between states (``state.lua``) has one text.
"""

from __future__ import annotations

from functools import cache
from importlib import resources
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from redis import Redis
    from redis.client import Pipeline

__all__ = ["preload", "script", "source"]

_registered: dict[tuple[int, tuple[str, ...]], Any] = {}


@cache
def source(*names: str) -> str:
    """The text of the named files of ``velosiped/scripts/``, in order, as one script."""
    return "\n".join(_texts()[name] for name in names)


@cache
def _texts() -> dict[str, str]:
    """Every script's text, by file name: read once, before a pool forks (see ``preload``)."""
    folder = resources.files("velosiped") / "scripts"
    return {f.name: f.read_text(encoding="utf-8") for f in folder.iterdir() if f.name.endswith(".lua")}


def preload() -> None:
    """Read the scripts now, in a process about to fork workers: each then has them in memory."""
    _texts()


def script(redis: Redis | Pipeline, *names: str) -> Any:
    """The named files as one callable script (EVALSHA, loading it on first use) for ``redis``'s pool."""
    key = (id(redis.connection_pool), names)
    if key not in _registered:
        _registered[key] = redis.register_script(source(*names))
    return _registered[key]
