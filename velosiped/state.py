"""A batch's progress in Redis: each file's state, and counters kept in step with them.

Counters make ``velo status`` O(1) whatever the batch size. A file moves between states
(queued -> running -> done | failed) through one Lua function (``scripts/state.lua``, which the
dispatcher's enqueue script includes too), so a job that runs twice (at least once delivery)
still counts once, and a done file stays done. Once every file is done or failed, the batch's
keys expire after its retention (``VELO_BATCH_RETENTION``, stored in the batch at its creation).
"""

from __future__ import annotations

import time
from enum import Enum
from typing import TYPE_CHECKING, Any

from velosiped import keys, lua

if TYPE_CHECKING:
    from redis import Redis
    from redis.client import Pipeline

__all__ = ["FileState", "counters", "get_state", "set_state"]


class FileState(str, Enum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"


def set_state(
    redis: Redis | Pipeline, batch_id: str, file: str, state: FileState, *, rows: int = 0, error: str = ""
) -> bool:
    """Move ``file`` to ``state`` in its batch; False when it was there already (in a pipeline: queued)."""
    keys_ = [keys.batch_files(batch_id), keys.batch(batch_id), keys.batch_errors(batch_id), keys.batch_jobs(batch_id)]
    args = [file, state.value, rows, error, f"{time.time():.3f}"]
    return bool(lua.script(redis, "state.lua", "set_state.lua")(keys=keys_, args=args, client=redis))


def get_state(redis: Redis, batch_id: str, file: str) -> FileState | None:
    """``file``'s state in its batch; None if the batch does not list it."""
    raw = redis.hget(keys.batch_files(batch_id), file)
    if raw is None:
        return None
    text = raw.decode() if isinstance(raw, bytes) else raw
    return FileState(text.split(" ", 1)[0])  # a queued or running file's value goes on with its job ids


def counters(redis: Redis, batch_id: str) -> dict[str, Any]:
    """The batch's description and counters, or {} if there is no such batch."""
    raw = redis.hgetall(keys.batch(batch_id))
    out: dict[str, Any] = {}
    for k, v in raw.items():
        key = k.decode() if isinstance(k, bytes) else k
        val = v.decode() if isinstance(v, bytes) else v
        out[key] = int(val) if val.lstrip("-").isdigit() else val
    return out
