"""`velo run` after an earlier run died (``kill -9``, a closed terminal, a crashed machine).

Its jobs may still be in Redis, waiting or held by a worker that died with it, and a new plan
sees their files as "already queued". A dispatch rightly leaves them to whoever queued them; a
run cannot, since it promises an output for every file when it exits 0. So a run adopts them:
its workers serve the whole queue (the earlier jobs come first), it waits until no job of those
files is waiting or running (a dead worker's lease runs out, VELO_HEARTBEAT_TTL, and the job is
requeued), then looks again at each file: done, failed for good, or enqueued again in its own
batch.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from dispatcher.enqueue import ACTIVE, Batch, add_files, job_ids, job_statuses, queued_jobs
from dispatcher.plan import Options, Planned, replan
from velosiped import storage
from velosiped.jobs import error_uri

if TYPE_CHECKING:
    from redis import Redis
    from rich.console import Console

__all__ = ["Adopted", "adopt"]

ROUNDS = 5
"""Times a run looks again at files another batch still holds before it gives up on them."""


@dataclass
class Adopted:
    """What became of the files an earlier run had left queued."""

    done: int = 0
    rows: int = 0
    failures: list[str] = field(default_factory=list)
    """One-line reasons, one per file that failed (or is still held by another batch)."""
    requeued: int = 0
    """Files enqueued again in this run's batch (their job was gone, or failed for a passing reason)."""


def adopt(
    redis: Redis,
    queue: str,
    batch: Batch,
    opts: Options,
    timeout: int,
    console: Console,
    alive: Callable[[], bool],
    poll: float = 0.2,
) -> Adopted:
    """Wait for the files ``batch``'s plan found already queued; enqueue again in ``batch`` those
    that have no outcome now. The caller then waits for ``batch`` again when ``requeued``."""
    opts = replace(opts, force=False)  # a file its earlier job just scored is not scored twice
    result = Adopted()
    held = [p for p in batch.planned if p.reason == "already queued"]
    for _ in range(ROUNDS):
        if not held or not alive():
            break
        _wait_for_jobs(redis, held, opts, console, alive, poll)
        todo = []
        for item in held:
            now = replan(item, opts)
            if now.reason == "already done":
                result.done += 1
                result.rows += int((storage.read_lineage(now.output) or {}).get("velo-rows") or 0)
            elif now.reason == "failed before":
                result.failures.append(_reason_of(now))
            elif now.enqueue:
                todo.append(replace(now, reason="new"))
            # else its input is gone: nothing to score
        before = len(batch.planned)
        result.requeued += add_files(redis, queue, batch, opts, todo, timeout)
        held = [p for p in batch.planned[before:] if p.reason == "already queued"]  # another batch took them
    result.failures += [f"{p.info.uri}: still queued by another batch; run the command again" for p in held]
    return result


def _wait_for_jobs(
    redis: Redis, held: list[Planned], opts: Options, console: Console, alive: Callable[[], bool], poll: float
) -> None:
    ids = [jid for p in held for jid in job_ids(p, opts)]  # a file's own jobs, and its group's
    ids += sorted({jid for found in queued_jobs(redis, opts, held).values() for jid in found} - set(ids))
    files = "1 file" if len(held) == 1 else f"{len(held)} files"
    with console.status(f"scoring {files} an earlier run left queued"):
        while alive() and any(st in ACTIVE for st in job_statuses(redis, ids)):
            time.sleep(poll)


def _reason_of(item: Planned) -> str:
    record = storage.read_json(error_uri(item.output)) or {}
    return str(record.get("error") or f"{item.info.uri}: failed (see {error_uri(item.output)})")
