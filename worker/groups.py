"""Small files scored together: one job, one ``predict`` over their rows, one output per file.

A bucket of small files spends most of its time per file, not per row: a job taken, a model
call, a round trip. The dispatcher joins small files into one job (``--group-size``); this
module reads each of them whole (they are small); for the files that feed the model the same
columns, it turns each feature column of all their rows into numbers at once (a file with a value
that is not a number is left to score alone, so the reason is in its own file's words), calls
``predict`` once, and writes each file's own output, whole or absent, with its own lineage and
state, exactly the bytes a job of its own would write. Their statistics and states are stored in
one round trip to Redis.

Anything out of the ordinary for a file (it cannot be read or parsed, its columns are wrong, the
model rejects the group's rows, a write fails) sends that file down the one-file path
(:func:`worker.task.score_file`), which reads it again at the same pinned version and has every
rule already: its own reason, storage retries with backoff, quoted line breaks. So a bad file
fails alone, and its reason is the one it would have had alone.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
from redis import Redis
from rq.timeouts import JobTimeoutException

from velosiped import keys, settings, sketch, storage
from velosiped.connection import as_text
from velosiped.frames import FeatureSpec, assemble, classes_of, kept_columns, run_model, to_numbers
from velosiped.jobs import Payload, lineage, members
from velosiped.sketch import Stats
from velosiped.state import FileState, set_state
from worker import engine, metrics, models, shards
from worker.scoring import Dialect, _csv_blocks, _CsvOut

__all__ = ["score_group"]

log = logging.getLogger(__name__)
file_log = logging.getLogger("worker.task")
"""Each file's own line comes from the task's logger, as a file scored alone has it (with
``velo worker --log-format json``, one object per file: batch, file, job id, rows, seconds)."""


@dataclass(eq=False)  # compared by identity: a file is itself, not its (array-holding) fields
class _File:
    """One file of a group, read and ready to predict."""

    p: Payload
    batches: list[pa.RecordBatch]
    spec: FeatureSpec
    kept: list[str]
    names: list[str]
    columns: list[list[np.ndarray]] = field(default_factory=list)
    """Per block, its feature columns as numbers."""

    @property
    def rows(self) -> int:
        return sum(b.num_rows for b in self.batches)


def score_group(
    p: Payload, redis: Redis, alone: Callable[[Payload], dict[str, Any]], job_id: str = ""
) -> dict[str, Any]:
    """Score the group's files; ``alone`` scores one file on its own (and records its outcome).

    Returns ``{"rows", "seconds", "files"}`` and, when files failed, ``"failed"``: their reasons.
    Files already done in their batch (a worker killed mid-group did them) are not scored again.
    """
    started = time.perf_counter()
    todo = _not_done(redis, members(p))
    solo: list[Payload] = []
    ready: list[_File] = []
    model: Any = None
    threads = THREADS if storage.is_s3(p["input"]) else 1
    if todo:
        with redis.pipeline(transaction=False) as pipe:
            for m in todo:
                set_state(pipe, m["batch"], m["input"], FileState.RUNNING)
            pipe.execute()
        model = _model(p)
        prepared = _each(lambda m: _prepare(m, model) if model is not None else None, todo, threads)
        for m, f in zip(todo, prepared, strict=True):
            if f is None:
                solo.append(m)
            else:
                ready.append(f)
    rows = 0
    done: list[tuple[Payload, int, Stats | None]] = []
    for alike in _by_spec(ready):
        same, joined = _numbers(alike)
        solo += [f.p for f in alike if f not in same]
        scored = _predict(same, joined, p, model) if same else []
        if scored is None:  # the model rejected some row: each file alone says which
            solo += [f.p for f in same]
            continue
        pairs = list(zip(same, scored, strict=True))
        written = _each(lambda fs: _write(fs[0], fs[1][0], fs[1][1], model), pairs, threads)
        for f, (ok, stats) in zip(same, written, strict=True):
            if ok:
                done.append((f.p, f.rows, stats))
            else:
                solo.append(f.p)
    if done:
        with redis.pipeline(transaction=False) as pipe:  # one round trip: each file's statistics, then its state
            for m, n, stats in done:
                if stats is not None:
                    sketch.store(pipe, m["batch"], m["input"], stats)
                set_state(pipe, m["batch"], m["input"], FileState.DONE, rows=n)
            pipe.execute()
    seconds = time.perf_counter() - started
    shards.drop_stale_errors([m for m, _, _ in done])
    for m, n, _ in done:  # scored together: each file's seconds are the group's so far
        metrics.file_done(n, seconds / max(len(done), 1))
        rows += n
        fields = {"batch": m["batch"], "file": m["input"], "job_id": job_id, "rows": n, "seconds": round(seconds, 3)}
        file_log.info("%6.2fs ← %s %d rows (in a group of %d)", seconds, m["input"], n, len(todo), extra=fields)
    failed: list[str] = []
    for m in solo:
        result = alone(m)
        rows += int(result.get("rows") or 0)
        if "failed" in result:
            failed.append(str(result["failed"]))
    seconds = time.perf_counter() - started
    log.info(
        "%6.2fs ← %d files of a group (%d scored together), %d rows",
        seconds,
        len(todo),
        len(done),
        rows,
        extra={"batch": p["batch"], "files": len(todo), "rows": rows, "seconds": round(seconds, 3)},
    )
    out: dict[str, Any] = {"rows": rows, "seconds": round(seconds, 3), "files": len(todo)}
    if failed:
        out["failed"] = failed
    return out


THREADS = 8
"""Files of a group on S3 read (and written) at once: each file costs a few round trips, which
threads overlap (pyarrow and boto3 release the GIL while they wait). Local files go one at a
time: there is no wait to overlap, and threads would only take turns at the GIL (a group of
2,000 local 10-row files took 12-28 % longer with 8 threads than with one)."""


def _each(fn: Callable[[Any], Any], items: list[Any], threads: int) -> list[Any]:
    """``fn`` of each item, in order, ``threads`` at a time."""
    if len(items) <= 1 or threads <= 1:
        return [fn(x) for x in items]
    with ThreadPoolExecutor(min(threads, len(items)), thread_name_prefix="velo-group") as pool:
        return list(pool.map(fn, items))


def _not_done(redis: Redis, files: list[Payload]) -> list[Payload]:
    """The files not done yet in their batch (all of them, but after a worker died mid-group)."""
    if not files:
        return []
    states = redis.hmget(keys.batch_files(files[0]["batch"]), [m["input"] for m in files])
    return [m for m, st in zip(files, states, strict=True) if not as_text(st or b"").startswith("done")]


def _model(p: Payload) -> Any:
    """The group's model, or None when it cannot be had now (each file alone then retries or fails)."""
    try:
        from worker.task import _check_paths

        for m in members(p):
            _check_paths(m)
        model = models.load(p["model"], p["model_version"], p["model_sha256"])
        return engine.prepare(model, p["model"], p["model_version"], p.get("engine"))
    except JobTimeoutException:
        raise
    except Exception as e:  # the one-file path reports it in each file's words
        log.info("%s: the group's model or paths need the one-file path (%s)", p["input"], type(e).__name__)
        return None


def _prepare(m: Payload, model: Any) -> _File | None:
    """The file read whole at its dispatched version, its features as numbers; None if anything
    about it is out of the ordinary (the one-file path then deals with it)."""
    name = m["input"]
    try:
        with storage.open_read(name, m["input_version"]) as src:
            header, blocks, _ = _csv_blocks(src, name, Dialect(m["sep"], m["encoding"]), settings.BLOCK_SIZE.get())
            batches = [b for b in blocks if b.num_rows]
        spec = FeatureSpec(model, header, name, m["features"])
        kept = kept_columns(header, m["keep"], name)
        classes = classes_of(model, m["proba"], name)
        return _File(m, batches, spec, kept, [*kept, "prediction", *(f"proba_{c}" for c in classes)])
    except JobTimeoutException:
        raise
    except Exception:
        return None


def _by_spec(files: list[_File]) -> list[list[_File]]:
    """Files that feed the model the same columns under the same names, together (with --proba or
    not alike: the payload's options are the group's)."""
    out: dict[tuple[Any, ...], list[_File]] = {}
    for f in files:
        key = (tuple(f.spec.columns), tuple(f.spec.model_names or ()), f.spec.model_names is None)
        out.setdefault(key, []).append(f)
    return list(out.values())


def _numbers(files: list[_File]) -> tuple[list[_File], list[np.ndarray]]:
    """The feature columns of every row of ``files`` (alike: the same columns) as numbers, each
    column cast once for them all, and each file's block's own as views of them (``_File.columns``);
    with the files whose values are not all numbers left out (the one-file path says where)."""
    columns = files[0].spec.columns
    batches = [b for f in files for b in f.batches]
    try:
        joined = [to_numbers(pa.chunked_array([b.column(c) for b in batches], pa.string()), c, "") for c in columns]
    except JobTimeoutException:
        raise
    except Exception:  # some file's value is not a number: the others go on, cast each on its own
        good = [f for f in files if _numbers_of(f)]
        blocks = [cols for f in good for cols in f.columns]
        return good, [np.concatenate([cols[i] for cols in blocks]) for i in range(len(columns))] if blocks else []
    start = 0
    for f in files:
        for b in f.batches:
            f.columns.append([col[start : start + b.num_rows] for col in joined])
            start += b.num_rows
    return files, joined


def _numbers_of(f: _File) -> bool:
    """The file's blocks' feature columns as numbers; False if some value is not a number."""
    try:
        f.columns = [f.spec.numbers(b, f.p["input"]) for b in f.batches]
        return True
    except JobTimeoutException:
        raise
    except Exception:
        return False


def _predict(
    files: list[_File], joined: list[np.ndarray], p: Payload, model: Any
) -> list[tuple[np.ndarray, np.ndarray | None]] | None:
    """One predict over every row of ``files`` (their feature columns ``joined``), cut back into
    each file's; None if the model refused."""
    n = sum(f.rows for f in files)
    if not n:
        return [(np.empty(0), None) for _ in files]
    spec = files[0].spec
    try:
        prediction, probabilities = run_model(model, spec.model_input(joined, n), bool(p["proba"]), p["input"])
    except JobTimeoutException:
        raise
    except Exception:
        return None
    out = []
    start = 0
    for f in files:
        end = start + f.rows
        out.append((prediction[start:end], probabilities[start:end] if probabilities is not None else None))
        start = end
    return out


def _write(f: _File, prediction: np.ndarray, probabilities: np.ndarray | None, model: Any) -> tuple[bool, Stats | None]:
    """The file's output, written whole with its lineage, block by block as a job of its own
    writes it (the same bytes), and its statistics (with --stats) to store; False if anything
    went wrong."""
    m = f.p
    stats = Stats.of_file(f.spec.columns, labels=hasattr(model, "classes_")) if m.get("stats") is True else None
    try:
        with storage.write_atomic(m["output"], lineage(m), small=True) as dst:  # grouped: its input is small
            out = _CsvOut(dst, f.names, m["sep"])
            start = 0
            for b, cols in zip(f.batches, f.columns, strict=True):
                end = start + b.num_rows
                pred = prediction[start:end]
                proba = probabilities[start:end] if probabilities is not None else None
                if stats is not None:
                    stats.update_features(cols)
                    stats.update_prediction(pred)
                out.write(assemble(b, f.kept, pred, proba, f.names))
                start = end
            storage.check_unchanged(m["input"], m["input_version"])
        storage.write_lineage(m["output"], {**lineage(m), "velo-rows": str(f.rows), **engine.lineage(m, model)})
        return True, stats
    except JobTimeoutException:
        raise
    except Exception as e:  # the one-file path writes it again, or fails it in its words
        log.info("%s: written alone after %s", m["input"], type(e).__name__)
        return False, None
