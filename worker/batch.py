"""A batch's progress in Redis: each file's state, and counters kept in step with them.

Counters make ``velo status`` O(1) whatever the batch size. A file moves between states
(queued -> running -> done | failed) through one Lua script (dispatcher.enqueue's own script
sets "queued" by the same rules), so a job that runs twice (at least once delivery) still
counts once, and a done file stays done.
"""

from __future__ import annotations

import time
from enum import Enum
from typing import TYPE_CHECKING, Any

from worker import keys

if TYPE_CHECKING:
    from redis import Redis
    from redis.client import Pipeline

__all__ = ["FileState", "counters", "set_state"]


class FileState(str, Enum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"


# KEYS: files hash, counters hash, errors hash. ARGV: file, new state, rows, error, now.
_SET_STATE = """
local old = redis.call('HGET', KEYS[1], ARGV[1])
if old == ARGV[2] then return 0 end
if old == 'done' then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
if old then redis.call('HINCRBY', KEYS[2], old, -1) else redis.call('HINCRBY', KEYS[2], 'total', 1) end
redis.call('HINCRBY', KEYS[2], ARGV[2], 1)
if ARGV[2] == 'done' then
  redis.call('HINCRBY', KEYS[2], 'rows', ARGV[3])
  redis.call('HDEL', KEYS[3], ARGV[1])
elseif ARGV[2] == 'failed' then
  redis.call('HSET', KEYS[3], ARGV[1], ARGV[4])
end
if ARGV[2] == 'running' and not redis.call('HGET', KEYS[2], 'started_at') then
  redis.call('HSET', KEYS[2], 'started_at', ARGV[5])
end
if ARGV[2] == 'done' or ARGV[2] == 'failed' then redis.call('HSET', KEYS[2], 'updated_at', ARGV[5]) end
return 1
"""


def set_state(
    redis: Redis | Pipeline, batch_id: str, file: str, state: FileState, *, rows: int = 0, error: str = ""
) -> bool:
    """Move ``file`` to ``state`` in its batch; False when it was there already (in a pipeline: queued)."""
    keys_ = [keys.batch_files(batch_id), keys.batch(batch_id), keys.batch_errors(batch_id)]
    result = _script(redis)(keys=keys_, args=[file, state.value, rows, error, f"{time.time():.3f}"], client=redis)
    return bool(result)


_scripts: dict[int, Any] = {}


def _script(redis: Redis | Pipeline) -> Any:
    """The state script, registered once per connection pool (not once per call)."""
    pool = redis.connection_pool
    if id(pool) not in _scripts:
        _scripts[id(pool)] = redis.register_script(_SET_STATE)
    return _scripts[id(pool)]


def counters(redis: Redis, batch_id: str) -> dict[str, Any]:
    """The batch's description and counters, or {} if there is no such batch."""
    raw = redis.hgetall(keys.batch(batch_id))
    out: dict[str, Any] = {}
    for k, v in raw.items():
        key = k.decode() if isinstance(k, bytes) else k
        val = v.decode() if isinstance(v, bytes) else v
        out[key] = int(val) if val.lstrip("-").isdigit() else val
    return out
