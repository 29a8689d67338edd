"""Every Redis key Velosiped writes, in one place (RQ's own keys are RQ's business)."""

from __future__ import annotations

import hashlib

PREFIX = "velo:"

BATCHES = PREFIX + "batches"
"""Sorted set of batch ids, scored by creation time; an expired batch's id is taken out lazily
(dispatcher.enqueue.forget_expired, at `velo status` and at each new batch)."""


PAYLOADS = PREFIX + "payloads"
"""Hash: RQ job id -> the file's part of the job's payload, until the file's outcome is recorded."""


def options(digest: str) -> str:
    """String: the options a dispatch gave every file, JSON, named by their SHA-256 (see velosiped.payloads).

    Kept while their batch has work (the batch names them: its ``options`` field), expiring with it."""
    return f"{PREFIX}options:{digest}"


def batch(batch_id: str) -> str:
    """Hash of a batch's description and counters (queued, running, done, failed, rows, ...), its
    ``retention`` and ``options`` key. It and the batch's other keys expire ``retention`` s after
    the batch finished (scripts/state.lua)."""
    return f"{PREFIX}batch:{batch_id}"


def batch_progress(batch_id: str) -> str:
    """Pub/sub channel (no key): a message each time one of the batch's files is done or failed
    (scripts/state.lua), so a command waiting for the batch wakes at once instead of polling."""
    return f"{PREFIX}batch:{batch_id}:progress"


def batch_files(batch_id: str) -> str:
    """Hash: input URI -> state (queued, running, done, failed) of each file in a batch; a queued or
    running file's names its jobs too: ``queued velo-…[,velo-…]`` (for files lost from the queue)."""
    return f"{PREFIX}batch:{batch_id}:files"


def batch_errors(batch_id: str) -> str:
    """Hash: input URI -> one-line error of each failed file in a batch."""
    return f"{PREFIX}batch:{batch_id}:errors"


def batch_stats(batch_id: str) -> str:
    """Hash: input URI -> JSON statistics of each file scored in a batch (velosiped.sketch.Stats),
    merged by `velo report`. Always :func:`batch`'s key + ``:stats`` (scripts/state.lua names it so
    to expire it with the batch, and drops a failed file's)."""
    return f"{PREFIX}batch:{batch_id}:stats"


def batch_jobs(batch_id: str) -> str:
    """Hash: input URI -> JSON job payload, so `velo retry` can enqueue a file again."""
    return f"{PREFIX}batch:{batch_id}:jobs"


def watch_cursor(source: str, queue: str) -> str:
    """String: the last S3 key a `velo watch` of ``source`` has listed, so a restart resumes there."""
    digest = hashlib.sha256(f"{queue}\0{source}".encode()).hexdigest()[:16]
    return f"{PREFIX}watch:{digest}:cursor"


def shards(group: str) -> str:
    """Hash of a sharded file's progress: ``rows:<index>`` -> rows of each shard scored, how many are
    (``recorded``), ``started``, and once settled ``assembled`` (total rows) or ``failed`` (the reason).
    ``group`` names the file's plan."""
    return f"{PREFIX}shards:{group}"
