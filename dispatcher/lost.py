"""Files lost from the queue: queued (or running) in their batch, but none of their jobs exists.

RQ's jobs can be removed behind Velosiped's back (`rq empty velo`, a flushed queue, jobs
expiring); their files would read "queued" forever. A queued or running file's value in the
batch's files hash names its jobs (``queued velo-…,velo-…``, written by scripts/state.lua),
so whether any of them still exists is one EXISTS a job, pipelined. That is a walk of the
whole batch: the waiting loop (``status.wait``) and `velo status` make it only once the batch
has made no progress for a while (:data:`CHECK_AFTER`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from rq.job import Job

from velosiped import keys
from velosiped.connection import as_text

if TYPE_CHECKING:
    from redis import Redis

__all__ = ["CHECK_AFTER", "RECHECK_AFTER", "find_lost", "remedy"]

CHECK_AFTER = 5.0
"""Seconds without progress in a batch before its files are checked for lost jobs."""

RECHECK_AFTER = 60.0
"""Seconds `velo status` reuses the lost count it found in a still batch (`velo retry` forgets it)."""

_CHUNK = 1000
"""Files looked at per round trip."""


def find_lost(redis: Redis, batch_id: str) -> dict[str, list[str]]:
    """The batch's queued or running files none of whose jobs exists any more: file -> its job ids.

    A file enqueued before its value named its jobs is never counted lost (nothing to check).
    """
    lost: dict[str, list[str]] = {}
    pending: list[tuple[str, list[str]]] = []
    for field, value in redis.hscan_iter(keys.batch_files(batch_id), count=_CHUNK):
        state, _, refs = as_text(value).partition(" ")
        if state in ("queued", "running") and refs:
            pending.append((as_text(field), refs.split(",")))
        if len(pending) >= _CHUNK:
            lost.update(_without_jobs(redis, pending))
            pending = []
    lost.update(_without_jobs(redis, pending))
    return lost


def _without_jobs(redis: Redis, files: list[tuple[str, list[str]]]) -> dict[str, list[str]]:
    if not files:
        return {}
    with redis.pipeline(transaction=False) as pipe:
        for _, ids in files:
            pipe.exists(*(Job.key_for(i) for i in ids))
        found = pipe.execute()
    return {file: ids for (file, ids), n in zip(files, found, strict=True) if not n}


def remedy(batch_id: str, count: int) -> str:
    """The one line a waiting command ends with when files of its batch were lost."""
    files = "1 file of batch {b} was" if count == 1 else f"{count} files of batch {{b}} were"
    return files.format(b=batch_id) + f" lost from the queue (their jobs were removed); run velo retry {batch_id}"
