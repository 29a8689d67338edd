"""Read a batch's progress from its counters (O(1) per batch) and show it."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from redis import RedisError
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from worker import keys
from worker.batch import counters
from worker.errors import ConfigError
from worker.runner import REDIS_GIVE_UP

if TYPE_CHECKING:
    from redis import Redis

__all__ = ["batch_ids", "describe", "is_finished", "render", "wait"]


def batch_ids(redis: Redis, limit: int = 20) -> list[str]:
    """The newest batches first."""
    return [b.decode() for b in redis.zrevrange(keys.BATCHES, 0, limit - 1)]


def describe(redis: Redis, batch_id: str, with_failures: bool = True) -> dict[str, Any] | None:
    """A batch as ``velo status --json`` prints it, or None if Redis has no such batch."""
    c = counters(redis, batch_id)
    if not c:
        return None
    done, failed, running = c.get("done", 0), c.get("failed", 0), c.get("running", 0)
    total = c.get("total", 0)
    started = float(c.get("started_at", 0) or 0)
    ended = float(c.get("updated_at", 0) or 0) if done + failed >= total else time.time()
    seconds = max(ended - started, 0.0) if started else 0.0
    rows = c.get("rows", 0)
    out: dict[str, Any] = {
        "id": batch_id,
        "source": c.get("source", ""),
        "model": c.get("model", ""),
        "total": total,
        "queued": c.get("queued", 0),
        "running": running,
        "done": done,
        "failed": failed,
        "skipped": c.get("skipped", 0),
        "rows": rows,
        "seconds": round(seconds, 3),
        "rows_per_s": round(rows / seconds, 1) if seconds > 0 else 0.0,
        "finished": done + failed >= total,
    }
    if with_failures:
        errors = redis.hgetall(keys.batch_errors(batch_id))
        out["failures"] = [{"file": f.decode(), "error": e.decode()} for f, e in sorted(errors.items())]
    return out


def is_finished(redis: Redis, batch_id: str) -> bool:
    c = counters(redis, batch_id)
    return c.get("done", 0) + c.get("failed", 0) >= c.get("total", 0)


def render(batches: list[dict[str, Any]], console: Console) -> None:
    """One table row per batch, then each failed file with its reason."""
    table = Table(title="Velosiped batches")
    for col in ("batch", "total", "queued", "running", "done", "failed", "rows", "rows/s", "s"):
        table.add_column(col, justify="left" if col == "batch" else "right", no_wrap=col == "batch")
    for b in batches:
        table.add_row(
            b["id"],
            *(str(b[k]) for k in ("total", "queued", "running", "done", "failed")),
            f"{b['rows']:,}",
            f"{b['rows_per_s']:,.0f}",
            f"{b['seconds']:.1f}",
        )
    console.print(table)
    for b in batches:
        for f in b.get("failures", []):
            console.print(f"[red]failed[/red] {b['id']}: {f['error']}", highlight=False, soft_wrap=True)


def wait(
    redis: Redis,
    batch_id: str,
    console: Console,
    poll: float = 0.25,
    alive: Callable[[], bool] = lambda: True,
) -> dict[str, Any]:
    """Show a progress bar of files and rows until the batch is finished (or ``alive()`` turns
    False: the workers we started are gone); return the batch's description."""
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("files  {task.fields[rows]:,} rows  {task.fields[failed]} failed"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task(f"batch {batch_id}", total=None, rows=0, failed=0)
        lost_since: float | None = None
        while True:
            try:
                b = describe(redis, batch_id, with_failures=False) or {}
                lost_since = None
            except RedisError as e:  # a restarting Redis: keep waiting, with backoff, for a while
                lost_since = lost_since or time.monotonic()
                gone = time.monotonic() - lost_since
                if gone > REDIS_GIVE_UP:
                    raise ConfigError(f"lost Redis for {gone:.0f} s ({e}); giving up (VELO_REDIS_GIVE_UP)") from e
                time.sleep(min(1 + gone / 2, 10))
                continue
            progress.update(
                task,
                total=b.get("total", 0),
                completed=b.get("done", 0) + b.get("failed", 0),
                rows=b.get("rows", 0),
                failed=b.get("failed", 0),
            )
            if b.get("finished", True) or not alive():
                break
            time.sleep(poll)
    return describe(redis, batch_id) or {}
