"""The RQ job: score one file, write its output whole, record the outcome in the batch."""

from __future__ import annotations

import logging
import time
from datetime import datetime, timezone
from typing import Any

import botocore.exceptions
from rq import get_current_job
from rq.exceptions import AbandonedJobError
from rq.job import Job
from rq.timeouts import JobTimeoutException

from worker import models, storage
from worker.batch import FileState, set_state
from worker.errors import ConfigError, InputError, TransientError, VeloError
from worker.jobs import Payload, error_uri, lineage, payload_params, validate
from worker.scoring import Dialect, is_parquet, score_stream

__all__ = ["ALLOWED_PREFIXES_ENV", "on_job_failure", "score_file"]

log = logging.getLogger(__name__)

ALLOWED_PREFIXES_ENV = "VELO_ALLOWED_PREFIXES"
"""Comma-separated URI prefixes a worker may read inputs from and write outputs to; unset: anywhere."""


def score_file(payload: dict[str, Any]) -> dict[str, Any]:
    """Score one file as the payload says (see :mod:`worker.jobs`).

    Bad input fails the file once (error recorded, job finished); transient errors raise so
    RQ retries the job, and are recorded as the file's failure on the last attempt.
    """
    job = get_current_job()
    redis = job.connection if job else None
    p = validate(payload)
    if redis is not None:
        set_state(redis, p["batch"], p["input"], FileState.RUNNING)
    started = time.perf_counter()
    try:
        rows = _score(p)
    except TransientError as e:  # RQ retries the job; on_job_failure records it once retries run out
        log.warning("%s (%s)", e, "will retry" if job is not None and job.retries_left else "giving up")
        raise
    except JobTimeoutException:
        limit = job.timeout if job is not None else "?"
        return _fail(p, f"{p['input']}: stopped at the time limit of {limit} s; raise --timeout", redis)
    except VeloError as e:
        log.error("%s", e)
        return _fail(p, str(e), redis)
    except Exception as e:  # a bug or a model's own error: fail this file alone, keep serving
        log.error("%s: unexpected %s", p["input"], type(e).__name__, exc_info=True)
        return _fail(p, f"{p['input']}: unexpected {type(e).__name__}: {e}", redis)
    seconds = time.perf_counter() - started
    if redis is not None:
        set_state(redis, p["batch"], p["input"], FileState.DONE, rows=rows)
    log.info("%6.2fs ← %s %d rows %.0f rows/s", seconds, p["input"], rows, rows / max(seconds, 1e-9))
    return {"rows": rows, "seconds": round(seconds, 3)}


def on_job_failure(job: Job, connection: Any, exc_type: Any, exc_value: Any, tb: Any) -> None:
    """RQ failure callback: once a file's job will not be retried again, record why it failed.

    Covers what the job cannot record itself: transient errors that outlived the retries, and
    files whose worker died (``kill -9``, out of memory) on every attempt.
    """
    if job.retries_left:
        return  # RQ will run it again
    try:
        p = validate(job.args[0] if job.args else None)
    except InputError:
        return
    if exc_type is AbandonedJobError:
        reason = f"{p['input']}: its worker died on every attempt (killed or out of memory); not retried again"
    else:
        reason = (
            str(exc_value) if isinstance(exc_value, VeloError) else f"{p['input']}: {exc_type.__name__}: {exc_value}"
        )
    _fail(p, reason, connection)


def _check_paths(p: Payload) -> None:
    """Whatever a job says, read and write only under the allowed prefixes, without path tricks."""
    for uri in (p["input"], p["output"], p["model"]):
        if ".." in uri.split("/") or not (storage.is_s3(uri) or uri.startswith("/")):
            raise ConfigError(f"{uri}: relative or '..' paths are refused")
    for uri in (p["input"], p["output"]):
        models.check_prefix(uri, ALLOWED_PREFIXES_ENV, "path")


def _score(p: Payload) -> int:
    _check_paths(p)
    model = models.load(p["model"], p["model_version"], p["model_sha256"])
    meta = lineage(p)
    try:
        with storage.open_read(p["input"]) as src, storage.write_atomic(p["output"], meta) as dst:
            rows = score_stream(
                src,
                dst,
                model,
                name=p["input"],
                keep=p["keep"],
                proba=p["proba"],
                features=p["features"],
                dialect=Dialect(p["sep"], p["encoding"]),
                parquet=is_parquet(p["input"]),
            )
    except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as e:  # mid-stream
        raise storage.s3_error(p["input"], e) from e
    except (ConnectionError, TimeoutError) as e:  # a reset or stalled connection may pass
        raise TransientError(f"{p['input']}: connection trouble ({e})") from e
    if not storage.is_s3(p["output"]):  # local folders have no object metadata: a sidecar holds it
        storage.write_json(p["output"] + storage.LINEAGE_SUFFIX, {**meta, "velo-rows": str(rows)})
    storage.delete(error_uri(p["output"]))  # a stale failure from an earlier run no longer holds
    return rows


def _fail(p: Payload, reason: str, redis: Any) -> dict[str, Any]:
    record = {
        "file": p["input"],
        "output": p["output"],
        "error": reason,
        "batch": p["batch"],
        "input_version": p["input_version"],
        "model": p["model"],
        "model_version": p["model_version"],
        "params": payload_params(p),
        "failed_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    try:
        models.check_prefix(p["output"], ALLOWED_PREFIXES_ENV, "path")
        storage.write_json(error_uri(p["output"]), record)
    except Exception as e:  # the reason still reaches `velo status`
        log.warning("%s: cannot write error file: %s", p["input"], e)
    if redis is not None:
        set_state(redis, p["batch"], p["input"], FileState.FAILED, error=reason)
    return {"error": reason}
