"""`velo watch`: keep dispatching files dropped into SOURCE, each once.

Each tick lists only what is new where the store allows it: S3 lists keys in lexical order,
so a tick asks for the keys after the last one seen (kept in Redis, so a restart resumes
there). A key that sorts before that cursor — a new folder early in the alphabet, say — is
found by the full listing made every ``full_every`` ticks. Files already planned and
unchanged are skipped without a look at their output.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from dispatcher.enqueue import JOB_TIMEOUT, add_files, create_batch
from dispatcher.plan import Options, plan
from velosiped import keys, storage
from velosiped.connection import as_text

if TYPE_CHECKING:
    from redis import Redis

__all__ = ["watch"]

log = logging.getLogger(__name__)


def watch(
    redis: Redis,
    queue: str,
    source: str,
    opts: Options,
    *,
    interval: float,
    full_every: int = 60,
    timeout: int = JOB_TIMEOUT,
    echo: Callable[[str], None] = print,
    ticks: int | None = None,
) -> None:
    """Dispatch new files under ``source`` every ``interval`` seconds, into one batch, until stopped."""
    batch = create_batch(redis, queue, source, opts)
    echo(f"watching {source} every {interval:g} s: batch {batch.id}")
    cursor_key = keys.watch_cursor(source, queue)
    seen: dict[str, str] = {}  # uri -> version already planned by this watch
    tick = 0
    while ticks is None or tick < ticks:
        started = time.monotonic()
        incremental = storage.is_s3(source) and tick % full_every != 0
        cursor = redis.get(cursor_key) if incremental else None
        start_after = as_text(cursor) if cursor else None
        planned = list(plan(source, opts, start_after=start_after, known=lambda i: seen.get(i.uri) == i.version))
        added = add_files(redis, queue, batch, opts, planned, timeout)
        seen.update((p.info.uri, p.info.version) for p in planned)
        last = max((p.info.uri for p in planned), default=None)
        if storage.is_s3(source) and last and (start_after is None or last > start_after):
            redis.set(cursor_key, last)
        if added:
            echo(f"batch {batch.id}: {added} enqueued ({batch.enqueued} in all)")
        tick += 1
        if ticks is None or tick < ticks:
            time.sleep(max(0.0, interval - (time.monotonic() - started)))
