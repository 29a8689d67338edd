"""A batch's progress in Redis: each file's state, and counters kept in step with them.

Counters make ``velo status`` O(1) whatever the batch size. A file moves between states
(queued -> running -> done | failed) through one Lua function (``STATE_LUA``, which the
dispatcher's enqueue script includes too), so a job that runs twice (at least once delivery)
still counts once, and a done file stays done.
"""

from __future__ import annotations

import time
from enum import Enum
from typing import TYPE_CHECKING, Any

from velosiped import keys, lua

if TYPE_CHECKING:
    from redis import Redis
    from redis.client import Pipeline

__all__ = ["STATE_LUA", "FileState", "counters", "set_state"]


class FileState(str, Enum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"


STATE_LUA = """
local function set_state(files, counters, errors, file, state, rows, err, now)
  local old = redis.call('HGET', files, file)
  if old == state then return 0 end
  if old == 'done' then return 0 end
  redis.call('HSET', files, file, state)
  if old then redis.call('HINCRBY', counters, old, -1) else redis.call('HINCRBY', counters, 'total', 1) end
  redis.call('HINCRBY', counters, state, 1)
  if state == 'done' then
    redis.call('HINCRBY', counters, 'rows', rows)
    redis.call('HDEL', errors, file)
  elseif state == 'failed' then
    redis.call('HSET', errors, file, err)
  end
  if state == 'running' and not redis.call('HGET', counters, 'started_at') then
    redis.call('HSET', counters, 'started_at', now)
  end
  if state == 'done' or state == 'failed' then redis.call('HSET', counters, 'updated_at', now) end
  return 1
end
"""
"""The one rule moving a file between states (a Lua function other scripts include, as
dispatcher.enqueue's does): files hash, counters hash, errors hash; file, new state, rows,
error, now. Returns 1 if the file moved, 0 if it was there already or is done."""

# KEYS: files hash, counters hash, errors hash. ARGV: file, new state, rows, error, now.
_SET_STATE = STATE_LUA + "return set_state(KEYS[1], KEYS[2], KEYS[3], unpack(ARGV))"


def set_state(
    redis: Redis | Pipeline, batch_id: str, file: str, state: FileState, *, rows: int = 0, error: str = ""
) -> bool:
    """Move ``file`` to ``state`` in its batch; False when it was there already (in a pipeline: queued)."""
    keys_ = [keys.batch_files(batch_id), keys.batch(batch_id), keys.batch_errors(batch_id)]
    args = [file, state.value, rows, error, f"{time.time():.3f}"]
    return bool(lua.script(redis, _SET_STATE)(keys=keys_, args=args, client=redis))


def counters(redis: Redis, batch_id: str) -> dict[str, Any]:
    """The batch's description and counters, or {} if there is no such batch."""
    raw = redis.hgetall(keys.batch(batch_id))
    out: dict[str, Any] = {}
    for k, v in raw.items():
        key = k.decode() if isinstance(k, bytes) else k
        val = v.decode() if isinstance(v, bytes) else v
        out[key] = int(val) if val.lstrip("-").isdigit() else val
    return out
