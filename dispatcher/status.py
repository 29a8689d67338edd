"""Read a batch's progress from its counters (O(1) per batch) and show it."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from redis import RedisError
from rich.console import Console, Group
from rich.live import Live
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text
from rq import Worker
from rq.job import Job
from rq.serializers import JSONSerializer

from dispatcher.enqueue import forget_expired
from dispatcher.lost import CHECK_AFTER, RECHECK_AFTER, find_lost
from velosiped import keys, payloads, settings
from velosiped.connection import as_text, describe_connection, fail_fast
from velosiped.errors import ConfigError
from velosiped.rqapi import make_queue
from velosiped.state import counters

if TYPE_CHECKING:
    from redis import Redis
    from redis.client import PubSub

__all__ = ["batch_ids", "describe", "render", "view", "wait", "watch", "workers"]


def batch_ids(redis: Redis, limit: int = 20) -> list[str]:
    """The newest batches first (batches expired since are forgotten first)."""
    forget_expired(redis)
    return [as_text(b) for b in redis.zrevrange(keys.BATCHES, 0, limit - 1)]


def describe(redis: Redis, batch_id: str, with_failures: bool = True, lost: int | None = None) -> dict[str, Any] | None:
    """A batch as ``velo status --json`` prints it, or None if Redis has no such batch.

    ``lost``: how many of its files were found lost from the queue (see dispatcher.lost); None:
    look for them if the batch is unfinished and has made no progress for a while.
    """
    c = counters(redis, batch_id)
    if not c:
        return None
    done, failed, running = c.get("done", 0), c.get("failed", 0), c.get("running", 0)
    total = c.get("total", 0)
    started = float(c.get("started_at", 0) or 0)
    ended = float(c.get("updated_at", 0) or 0) if done + failed >= total else time.time()
    seconds = max(ended - started, 0.0) if started else 0.0
    rows = c.get("rows", 0)
    finished = done + failed
    left = max(total - finished, 0)
    # Files left at the pace of the files finished so far; unknown until one has finished.
    eta = 0.0 if not left else round(left * seconds / finished, 1) if finished and seconds > 0 else None
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
        "lost": lost if lost is not None else _lost_if_stalled(redis, batch_id, c),
        "eta_seconds": eta,
        # A finished batch expires, keys and all, VELO_BATCH_RETENTION s after it finished.
        "expires_in_seconds": _expires_in(redis, batch_id),
    }
    if with_failures:
        errors = redis.hgetall(keys.batch_errors(batch_id))
        out["failures"] = [{"file": as_text(f), "error": as_text(e)} for f, e in sorted(errors.items())]
    return out


def _lost_if_stalled(redis: Redis, batch_id: str, c: dict[str, Any]) -> int:
    """Files lost from the queue, looked for only once the batch made no progress for CHECK_AFTER s
    (nothing finished, started or was enqueued since). A look walks the batch (about 1 s per
    100,000 files), so its count is kept in the batch for RECHECK_AFTER s (`velo status --watch`)."""
    if c.get("done", 0) + c.get("failed", 0) >= c.get("total", 0):
        return 0
    now = time.time()
    last = max(float(c.get(k, 0) or 0) for k in ("created_at", "started_at", "updated_at"))
    if now - last < CHECK_AFTER:
        return 0
    if now - float(c.get("lost_checked_at", 0) or 0) < RECHECK_AFTER:
        return int(c.get("lost_found", 0))
    found = len(find_lost(redis, batch_id))
    redis.hset(keys.batch(batch_id), mapping={"lost_found": found, "lost_checked_at": f"{now:.3f}"})
    return found


def _expires_in(redis: Redis, batch_id: str) -> int | None:
    """Seconds before the batch's keys expire; None while they do not (it is not finished)."""
    ttl = int(redis.ttl(keys.batch(batch_id)))
    return ttl if ttl >= 0 else None


def workers(redis: Redis, queue: str) -> list[dict[str, Any]]:
    """The RQ workers alive on ``queue``: name, host, pid, state, the file in hand or None."""
    out = []
    for w in Worker.all(queue=make_queue(redis, queue), serializer=JSONSerializer):
        job_id = w.get_current_job_id()
        file = payloads.describe(redis, job_id) if job_id else None
        if job_id and file is None:  # a job naming its payload inline: its description names the file
            raw = redis.hget(Job.key_for(job_id), "description")
            file = raw.decode() if isinstance(raw, bytes) else raw
        out.append({"name": w.name, "host": w.hostname, "pid": w.pid, "state": w.get_state(), "file": file})
    return sorted(out, key=lambda w: w["name"])


def view(batches: list[dict[str, Any]], workers: list[dict[str, Any]] | None = None) -> Group:
    """One table row per batch, each failed file with its reason, then the workers (when given)."""
    table = Table(title="Velosiped batches")
    # scoring s: from the first file started to the last one finished (`velo run`'s wall s adds its start-up)
    columns = ["batch", "total", "queued", "running", "done", "failed", "lost", "rows", "rows/s", "scoring s", "ETA"]
    for col in [*columns, "expires"]:
        table.add_column(col, justify="left" if col == "batch" else "right", no_wrap=col == "batch")
    for b in batches:
        table.add_row(
            b["id"],
            *(str(b.get(k, 0)) for k in ("total", "queued", "running", "done", "failed", "lost")),
            f"{b['rows']:,}",
            f"{b['rows_per_s']:,.0f}",
            f"{b['seconds']:.1f}",
            "-" if b["finished"] else "?" if b["eta_seconds"] is None else _duration(b["eta_seconds"]),
            "-" if b.get("expires_in_seconds") is None else "in " + _duration(b["expires_in_seconds"]),
        )
    parts: list[Any] = [table]
    for b in batches:
        for f in b.get("failures", []):
            parts.append(Text.assemble(("failed", "red"), f" {b['id']}: {f['error']}", no_wrap=True, overflow="ignore"))
    if workers is not None:
        if workers:
            wt = Table(title="Workers")
            for col in ("worker", "host", "pid", "state", "file"):
                wt.add_column(col, no_wrap=col != "file")
            for w in workers:
                wt.add_row(w["name"], w["host"] or "", str(w["pid"] or ""), w["state"], w["file"] or "")
            parts.append(wt)
        else:
            parts.append(Text("no workers on the queue", style="dim"))
    return Group(*parts)


def render(batches: list[dict[str, Any]], console: Console, workers: list[dict[str, Any]] | None = None) -> None:
    console.print(view(batches, workers), soft_wrap=True)


def watch(
    snapshot: Callable[[], tuple[list[dict[str, Any]], list[dict[str, Any]]]],
    console: Console,
    interval: float = 2.0,
    count: int | None = None,
    as_json: bool = False,
) -> None:
    """Show ``snapshot()`` (batches, workers) every ``interval`` seconds until Ctrl-C, or ``count`` times.

    A terminal gets one table updated in place (rich's Live); a pipe gets each refresh in
    turn, or one JSON object per line with ``as_json``. Ctrl-C, the way to stop, reaches the
    caller as KeyboardInterrupt (`velo status --watch` exits 130, as every interrupted command).
    """

    def frames() -> Iterator[tuple[list[dict[str, Any]], list[dict[str, Any]]]]:
        n = 0
        while count is None or n < count:
            if n:
                time.sleep(interval)
            yield snapshot()
            n += 1

    if as_json:
        for batches, alive in frames():
            print(json.dumps({"batches": batches, "workers": alive}), flush=True)
    elif console.is_terminal:
        with Live(console=console, auto_refresh=False) as live:
            for batches, alive in frames():
                live.update(view(batches, alive), refresh=True)
    else:
        for batches, alive in frames():
            render(batches, console, alive)


def _duration(seconds: float) -> str:
    """``45s``, ``3m05s``, ``2h07m``, ``6d23h``."""
    h, rest = divmod(round(seconds), 3600)
    m, s = divmod(rest, 60)
    if h >= 48:
        return f"{h // 24}d{h % 24:02d}h"
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s" if m else f"{s}s"


def wait(
    redis: Redis,
    batch_id: str,
    console: Console,
    poll: float = 0.5,
    alive: Callable[[], bool] = lambda: True,
) -> dict[str, Any]:
    """Show a progress bar of files and rows until the batch is finished (or ``alive()`` turns
    False: the workers we started are gone, or every file left was lost from the queue); return
    the batch's description (with ``lost``: files whose jobs were removed behind our back).

    It wakes as each file is done or failed (a message on the batch's progress channel,
    ``keys.batch_progress``), so the last file's outcome ends the wait at once; ``poll``: the
    longest it sleeps without one, to look at ``alive()`` and for files lost from the queue."""
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("files  {task.fields[rows]:,} rows  {task.fields[failed]} failed"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task(f"batch {batch_id}", total=None, rows=0, failed=0)
        probe = fail_fast(redis)  # polls fail at once, so the give-up clock below is the only one
        lost_since: float | None = None
        watch = _LostWatch()
        news = _Progress(probe, batch_id)
        while True:
            try:
                news.listen()  # before reading the counters: no outcome falls between the two
                b = describe(probe, batch_id, with_failures=False, lost=watch.lost) or {}
                b["lost"] = watch.update(probe, batch_id, b)
                lost_since = None
            except RedisError as e:  # a restarting Redis: keep waiting, with backoff, for a while
                news.close()
                lost_since = lost_since or time.monotonic()
                gone = time.monotonic() - lost_since
                if gone > settings.REDIS_GIVE_UP.get():
                    where = describe_connection(redis)
                    raise ConfigError(
                        f"cannot reach Redis at {where} for {gone:.0f} s; giving up (VELO_REDIS_GIVE_UP)"
                    ) from e
                time.sleep(min(0.5 + gone / 4, 5))
                continue
            progress.update(
                task,
                total=b.get("total", 0),
                completed=b.get("done", 0) + b.get("failed", 0),
                rows=b.get("rows", 0),
                failed=b.get("failed", 0),
            )
            # Every file left is lost: nothing will move again until `velo retry`.
            stuck = watch.lost and b.get("done", 0) + b.get("failed", 0) + watch.lost >= b.get("total", 0)
            if b.get("finished", True) or stuck or not alive():
                break
            news.wait(poll)
        news.close()
    return describe(redis, batch_id, lost=watch.lost) or {}


class _Progress:
    """The batch's progress channel: a wait that ends as soon as one of its files is done or failed."""

    def __init__(self, redis: Redis, batch_id: str) -> None:
        self.redis, self.channel = redis, keys.batch_progress(batch_id)
        self.pubsub: PubSub | None = None

    def listen(self) -> None:
        if self.pubsub is None:
            self.pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
            self.pubsub.subscribe(self.channel)

    def wait(self, timeout: float) -> None:
        """Until a file's outcome (the outcomes already announced taken too), at most ``timeout`` s."""
        if self.pubsub is None:
            time.sleep(timeout)
            return
        try:
            deadline = time.monotonic() + timeout
            while self.pubsub.get_message(timeout=max(deadline - time.monotonic(), 0)) is None:
                if time.monotonic() >= deadline:
                    return
            while self.pubsub.get_message(timeout=0) is not None:
                pass
        except RedisError:  # Redis went away: the next look at the counters says so
            self.close()

    def close(self) -> None:
        if self.pubsub is not None:
            with contextlib.suppress(RedisError, OSError):
                self.pubsub.close()
            self.pubsub = None


class _LostWatch:
    """When a waiting command looks for files lost from the queue: a walk of the batch, so only
    once nothing moved for ``CHECK_AFTER`` seconds, then less and less often while it stays still."""

    def __init__(self) -> None:
        self.seen: tuple[Any, ...] = ()
        self.still_since = time.monotonic()
        self.check_after = CHECK_AFTER
        self.lost = 0

    def update(self, redis: Redis, batch_id: str, b: dict[str, Any]) -> int:
        """The files lost as last counted, after a new count if it is time for one."""
        now = time.monotonic()
        counts = tuple(b.get(k) for k in ("total", "queued", "running", "done", "failed", "rows"))
        if counts != self.seen:  # progress: what was lost may have been retried; look again when still
            self.seen, self.still_since, self.check_after, self.lost = counts, now, CHECK_AFTER, 0
        elif now - self.still_since >= self.check_after and not b.get("finished", True):
            self.lost = len(find_lost(redis, batch_id))
            self.still_since, self.check_after = now, min(self.check_after * 2, 60.0)
        return self.lost
