"""The RQ job: score one file, write its output whole, record the outcome in the batch."""

from __future__ import annotations

import contextlib
import json
import logging
import time
from dataclasses import replace
from datetime import datetime, timezone
from typing import Any

from redis import Redis
from redis import exceptions as redis_errors
from rq import get_current_job
from rq.exceptions import AbandonedJobError
from rq.job import Job
from rq.timeouts import JobTimeoutException

from velosiped import keys, payloads, settings, sketch, storage
from velosiped.access import check_output, check_path
from velosiped.errors import ConfigError, FileFailed, InputError, TransientError, VeloError
from velosiped.jobs import Payload, error_uri, lineage, members, payload_params, shard_of
from velosiped.sketch import Stats
from velosiped.state import FileState, get_state, set_state
from velosiped.storage.base import causes
from worker import backoff, engine, groups, metrics, models, shards
from worker.scoring import Dialect, QuotedLineBreaks, is_parquet, score_stream
from worker.shadow import Challenger

__all__ = ["on_job_failure", "score"]

log = logging.getLogger(__name__)


def score() -> dict[str, Any]:
    """The job the dispatcher queues: score the file whose payload waits in Redis under the job's id.

    A file that fails is a failed RQ job (:class:`FileFailed`, its one-line reason as RQ's
    ``exc_info``), once its failure is recorded; RQ's own ``rq requeue`` of it scores the file
    as it is now, as ``velo retry`` does.
    """
    job = get_current_job()
    if job is None:
        raise RuntimeError("worker.task.score runs only as an RQ job")
    p, rerun = payloads.for_job(job.connection, job)
    if p is None:  # an earlier run of this job recorded the file's outcome and dropped the payload
        log.info("job %s: its file's outcome is recorded already; nothing to do", job.id)
        return {"rows": 0, "settled": True}
    if p.get("group"):
        return _score_group(p, job, rerun)
    result = _score_payload(p, job, rerun)
    payloads.drop(job.connection, job.id)  # the outcome is recorded: done, failed or settled
    if "failed" in result:  # kept for `velo retry` and `rq requeue` in the batch (see _fail)
        raise FileFailed(result["failed"])
    return result


GROUP_REASONS = 3
"""Failed files a group's job names in its one-line reason (`rq info`); `velo status` has them all."""


def _score_group(p: Payload, job: Job, rerun: bool) -> dict[str, Any]:
    """A group of small files (see :mod:`worker.groups`). Each file's outcome is its own; the job
    fails (FileFailed) when one of its files failed, naming them. Run again (`rq requeue` of that
    failed job) it scores its failed files alone, as they are now, as `velo retry` does."""
    if rerun:
        results = [_score_payload(m, job, rerun=True) for m in members(p)]
        result: dict[str, Any] = {"rows": sum(int(r.get("rows") or 0) for r in results)}
        failed = [str(r["failed"]) for r in results if "failed" in r]
    else:
        result = groups.score_group(p, job.connection, lambda m: _score_payload(m, job), job.id)
        failed = list(result.pop("failed", []))
    payloads.drop(job.connection, job.id)  # every file's outcome is recorded
    if failed:
        more = f"; and {len(failed) - GROUP_REASONS} more files failed" if len(failed) > GROUP_REASONS else ""
        raise FileFailed("; ".join(failed[:GROUP_REASONS]) + more)
    return result


def _score_payload(p: Payload, job: Job, rerun: bool = False) -> dict[str, Any]:
    """Score one file (or shard) as its payload says (see :mod:`velosiped.jobs`), checked by the worker.

    Bad input fails the file once (error recorded, not retried); after transient storage
    trouble the file is tried again with backoff (:mod:`worker.backoff`), and recorded as
    failed only when every attempt failed. ``rerun``: a failed file's job run again (`rq
    requeue`): the input is taken as it is now, whole.
    """
    redis = job.connection
    if p.get("shard") and not rerun and shards.settle(redis, p):
        log.info("%s: its file is settled already; nothing to do", shards.name_of(p))
        return {"rows": 0, "settled": True}
    set_state(redis, p["batch"], p["input"], FileState.RUNNING)  # failed -> running: a rerun
    started = time.perf_counter()
    try:
        if rerun:
            p = _as_now(p)
        rows, total = _score(p, job, started)
    except TransientError as e:  # every attempt failed: recorded, and the next dispatch tries it again
        log.error("%s", e, extra=_fields(p, job, started))
        metrics.file_failed("transient")
        return _fail(p, str(e), redis, "transient")
    except JobTimeoutException:
        limit = job.timeout
        reason = f"{p['input']}: stopped at the time limit of {limit} s; raise --timeout"
        log.error("%s", reason, extra=_fields(p, job, started))
        metrics.file_failed("timeout")
        return _fail(p, reason, redis, "timeout")
    except VeloError as e:
        log.error("%s", e, extra=_fields(p, job, started))
        kind = metrics.reason_of(type(e))
        metrics.file_failed(kind)
        return _fail(p, str(e), redis, kind)
    except Exception as e:  # a bug or a model's own error: fail this file alone, keep serving
        log.error("%s: unexpected %s", p["input"], type(e).__name__, exc_info=True, extra=_fields(p, job, started))
        metrics.file_failed("unexpected")
        return _fail(p, f"{p['input']}: unexpected {type(e).__name__}: {e}", redis, "unexpected")
    seconds = time.perf_counter() - started
    if p.get("shard"):
        return _shard_scored(p, job, redis, rows, total, started)
    set_state(redis, p["batch"], p["input"], FileState.DONE, rows=rows)
    # After DONE, not before: a late failure callback writing an error file meanwhile finds the file
    # done and removes what it wrote, or wrote it before this removes it (see _fail)
    shards.drop_stale_error(p)
    log.info(
        "%6.2fs ← %s %d rows %.0f rows/s",
        seconds,
        p["input"],
        rows,
        rows / max(seconds, 1e-9),
        extra=_fields(p, job, started, rows=rows, seconds=round(seconds, 3)),
    )
    metrics.file_done(rows, seconds)
    return {"rows": rows, "seconds": round(seconds, 3)}


def on_job_failure(job: Job, connection: Any, exc_type: Any, exc_value: Any, tb: Any) -> None:
    """RQ failure callback: once a file's job will not be retried again, record why it failed.

    Covers what the job cannot record itself: errors that escaped it and outlived RQ's retries,
    and files whose worker died (``kill -9``, out of memory) on every attempt.
    """
    if isinstance(exc_type, type) and issubclass(exc_type, FileFailed):
        return  # the job recorded its file's failure itself: that record stands
    if job.retries_left:
        return  # RQ will run it again
    try:
        p = payloads.of_job(job, connection)
    except InputError:
        return
    if p is None:
        return
    for m in members(p):  # a group's files, each recorded on its own
        _job_failed(m, job, connection, exc_type, exc_value)
    payloads.drop(connection, job.id)


def _job_failed(p: Payload, job: Job, connection: Any, exc_type: Any, exc_value: Any) -> None:
    if get_state(connection, p["batch"], p["input"]) is FileState.DONE:
        # A lease ran out (AbandonedJobError) while its worker was still going, and that worker
        # recorded the file done before this callback ran: the success stands, no error file
        log.info("%s: done already; a late %s changes nothing", p["input"], exc_type.__name__)
        return
    if exc_type is AbandonedJobError:
        reason = f"{p['input']}: its worker died on every attempt (killed or out of memory); not retried again"
    else:
        reason = (
            str(exc_value) if isinstance(exc_value, VeloError) else f"{p['input']}: {exc_type.__name__}: {exc_value}"
        )
    log.error("%s", reason, extra={"batch": p["batch"], "file": p["input"], "job_id": job.id})
    kind = metrics.reason_of(exc_type)
    metrics.file_failed(kind)
    _fail(p, reason, connection, kind)


def _as_now(p: Payload) -> Payload:
    """A failed file's payload for a run again, as `velo retry` plans it: the input's current
    version, the file whole (its shards' plan was for the version that failed)."""
    info = storage.head(p["input"])
    if info is None:
        raise InputError(f"{p['input']}: not found any more; nothing to score")
    now: Payload = {**p, "input_version": info.version}
    now.pop("shard", None)
    log.info("%s: a failed file's job run again; scoring it as it is now", p["input"])
    return now


def _check_paths(p: Payload) -> None:
    """Every path the job will touch, where it really is (see :mod:`velosiped.access`)."""
    check_path(p["input"])
    check_output(p["output"])
    if p.get("shard"):
        shards.check_parts(p)
    check_path(p["model"], settings.MODEL_PREFIXES)
    if p.get("shadow"):  # the challenger obeys the champion's rules: an allowed model, an allowed output
        check_path(str(p.get("shadow")), settings.MODEL_PREFIXES)
        check_output(str(p.get("shadow_output")))


def _score(p: Payload, job: Job, started: float) -> tuple[int, int | None]:
    """Score the file or shard the payload names: (rows scored now, the file's rows once it is complete).

    Transient trouble (S3, the network, Redis) anywhere in it, the model's download included,
    gets the file tried again after a backoff; the last attempt's raises, naming the count.
    """
    _check_paths(p)
    redis = job.connection
    tries = backoff.attempts()
    for attempt in range(1, tries + 1):
        try:
            return _score_once(p, redis)
        except TransientError as e:
            if attempt == tries:
                where = "Redis" if isinstance(e.__cause__, redis_errors.RedisError) else "S3"
                raise TransientError(
                    f"{p['input']}: {where} unavailable after {tries} attempts ({e.brief}); "
                    "the next dispatch tries it again",
                    brief=e.brief,
                ) from e
            pause = backoff.compute_backoff(attempt)
            log.warning(
                "%s; attempt %d of %d, again in %.1f s", e, attempt, tries, pause, extra=_fields(p, job, started)
            )
            time.sleep(pause)
    raise AssertionError("unreachable")


def _score_once(p: Payload, redis: Redis) -> tuple[int, int | None]:
    """One attempt: every storage library's error is Velosiped's on the way out (see ``_classify``)."""
    try:
        model = models.load(p["model"], p["model_version"], p["model_sha256"])
        model = engine.prepare(model, p["model"], p["model_version"], p.get("engine"))
        if p.get("shard"):
            return shards.score(p, model, redis)
        stats = Stats() if p.get("stats") is True else None
        shadow = None
        if p.get("shadow"):
            shadow = models.load(str(p.get("shadow")), str(p.get("shadow_version")), p.get("shadow_sha256"))
        rows, challenger = _score_whole(p, model, stats, shadow)
        storage.write_lineage(p["output"], {**lineage(p), "velo-rows": str(rows), **engine.lineage(p, model)})
        if challenger is not None:
            challenger.settle()
            if stats is None:  # the comparison is gathered with --shadow, whatever --stats says
                stats = Stats()
                stats.files = 1
            stats.comparison = challenger.comparison
        if stats is not None:  # before the file is recorded done: they expire with its batch
            sketch.store(redis, p["batch"], p["input"], stats)
        return rows, rows
    except JobTimeoutException:
        raise
    except Exception as e:
        # The time limit may strike inside the model's predict, whose errors scoring reports as the file's.
        limit = next((c for c in causes(e) if isinstance(c, JobTimeoutException)), None)
        if limit is not None:
            raise limit from None
        found = _classify(p, e)
        if found is e:
            raise
        raise found from e


def _classify(p: Payload, error: Exception) -> Exception:
    """What an attempt's error means: storage trouble found anywhere in its cause chain wins over what
    the code that caught it thought (pyarrow reports a dropped S3 stream as an unreadable file)."""
    if isinstance(error, redis_errors.RedisError):  # a shard's progress could not be recorded: run it again
        return TransientError(f"{p['input']}: Redis trouble ({error})", brief=f"Redis: {type(error).__name__}")
    if isinstance(error, (TransientError, ConfigError)):
        return error
    if isinstance(error, InputError):
        cause = error.__cause__
        found = storage.translate(p["input"], cause) if cause is not None else None
        return found if isinstance(found, TransientError) else error
    found = storage.translate(p["input"], error)
    return found if found is not None else error


def _score_whole(
    p: Payload, model: Any, stats: Stats | None = None, shadow: Any = None
) -> tuple[int, Challenger | None]:
    """The file scored whole: its rows, and its challenger (``--shadow``) if it has one."""
    dialect = Dialect(p["sep"], p["encoding"])
    try:
        return _score_whole_as(p, model, dialect, stats, shadow)
    except QuotedLineBreaks:  # the output was not written: read the file again, tracking quotes
        log.info("%s: quoted fields hold line breaks; reading it again with them in mind", p["input"])
        return _score_whole_as(p, model, replace(dialect, newlines_in_values=True), stats, shadow)


def _score_whole_as(
    p: Payload, model: Any, dialect: Dialect, stats: Stats | None, shadow: Any
) -> tuple[int, Challenger | None]:
    # The input is read at the version dispatched, and still that version when its output is kept:
    # an output is never labelled with a version it was not made from.
    challenger = Challenger(p, shadow, model) if shadow is not None else None
    with (
        storage.open_read(p["input"], p["input_version"]) as src,
        storage.write_atomic(p["output"], lineage(p)) as dst,
        challenger.writing() if challenger is not None else contextlib.nullcontext(),
    ):
        rows = score_stream(
            src,
            dst,
            model,
            name=p["input"],
            keep=p["keep"],
            proba=p["proba"],
            features=p["features"],
            dialect=dialect,
            parquet=is_parquet(p["input"]),
            stats=stats,
            challenger=challenger,
        )
        storage.check_unchanged(p["input"], p["input_version"])  # inside: a changed input keeps no output
    return rows, challenger


def _shard_scored(p: Payload, job: Job, redis: Redis, rows: int, total: int | None, started: float) -> dict[str, Any]:
    """Log and count one shard; the file itself counts once, when this shard's job assembled it."""
    seconds = time.perf_counter() - started
    name = shards.name_of(p)
    fields = _fields(p, job, started, rows=rows, seconds=round(seconds, 3), shard=shard_of(p)["index"])
    log.info("%6.2fs ← %s %d rows %.0f rows/s", seconds, name, rows, rows / max(seconds, 1e-9), extra=fields)
    file_seconds = shards.file_seconds(redis, p) if total is not None else None
    if total is not None:
        count = shard_of(p)["count"]
        log.info("assembled %s from %d shards: %d rows", p["output"], count, total, extra={**fields, "rows": total})
    metrics.shard_done(rows, file_seconds)
    return {"rows": rows, "seconds": round(seconds, 3), "file_rows": total}


def _fields(p: Payload, job: Job, started: float, **more: Any) -> dict[str, Any]:
    """The fields of a per-file log line (``velo worker --log-format json`` prints them)."""
    seconds = round(time.perf_counter() - started, 3)
    return {"batch": p["batch"], "file": p["input"], "job_id": job.id, "seconds": seconds, **more}


def _drop_outdated_output(p: Payload) -> None:
    """The input as it is now failed: an output Velosiped made from an older version of it goes, so
    no reader takes it for the current one (whole or absent holds for the current version); the
    challenger's (``--shadow``) too."""
    try:  # a refused input or output is not even looked at
        check_path(p["input"])
        check_output(p["output"])
    except ConfigError:
        return
    _drop_if_older(p, p["output"])
    shadow = p.get("shadow_output")
    if shadow:
        try:
            check_output(shadow)
        except ConfigError:
            return
        _drop_if_older(p, shadow)


def _drop_if_older(p: Payload, output: str) -> None:
    made = storage.read_lineage(output) or {}
    old = made.get("velo-input-version")
    if old is None or old == p["input_version"]:
        return  # not ours, or made from this very version (a late failure of a done file)
    now = storage.head(p["input"])
    if now is None or now.version != p["input_version"]:
        return  # the input changed again since: this failure says nothing of its current version
    storage.delete(output)
    if not storage.is_s3(output):  # its lineage sidecar goes with it
        storage.delete(output + storage.LINEAGE_SUFFIX)
    log.warning("%s: its output %s, made from an older version, is removed", p["input"], output)


def _fail(p: Payload, reason: str, redis: Redis, kind: str) -> dict[str, Any]:
    """Record the file's failure; ``kind`` (see :data:`velosiped.jobs.FAILED_FOR_GOOD`) tells the
    next dispatch whether to try it again. ``{"failed": reason}`` when this recorded it (its job
    then ends failed), ``{"error": reason}`` when an outcome recorded before stands."""
    if p.get("shard") and shards.settle(redis, p):
        # Its file failed (or was assembled) meanwhile, e.g. another shard's bad row removed the
        # parts this one was writing: the file's first reason stands, this one is a consequence.
        log.info("%s; its file is settled already, its first outcome stands", reason)
        return {"error": reason}
    if p.get("shard") and not shards.fail(redis, p, reason):
        log.warning("%s; its file was assembled already and stands", reason)
        return {"error": reason}
    record = {
        "file": p["input"],
        "output": p["output"],
        "error": reason,
        "kind": kind,
        "batch": p["batch"],
        "input_version": p["input_version"],
        "model": p["model"],
        "model_version": p["model_version"],
        "params": payload_params(p),
        "failed_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    try:
        check_output(p["output"])  # a refused path gets no error file either, and nothing deleted
    except ConfigError as e:
        log.info("%s: no error file written (its place is refused: %s); the reason is in `velo status`", p["input"], e)
    else:
        try:
            storage.write_json(error_uri(p["output"]), record)
            _drop_outdated_output(p)
        except Exception as e:  # the reason still reaches `velo status`
            log.warning("%s: cannot write error file: %s", p["input"], e)
    # For `velo retry`; written first, so it expires with the batch this failure may finish.
    redis.hset(keys.batch_jobs(p["batch"]), p["input"], json.dumps(p))
    if not set_state(redis, p["batch"], p["input"], FileState.FAILED, error=reason) and (
        get_state(redis, p["batch"], p["input"]) is FileState.DONE
    ):
        # Another run of this file succeeded meanwhile (a done file stays done): so does its output
        log.warning("%s; but it is done already, and that success stands", reason)
        redis.hdel(keys.batch_jobs(p["batch"]), p["input"])
        shards.drop_stale_error(p)
        return {"error": reason}
    return {"failed": reason}
