"""One big file over the whole fleet: byte-range shards scored apart, assembled into one output.

The dispatcher cuts an uncompressed CSV larger than ``--shard-size`` after line ends
(:func:`bounds`) and enqueues one job per shard. A shard job scores the file's header line plus
its byte range into a part, written whole under ``<output>.velo-parts/<group>/`` (never taken
as an input); only the first part carries the CSV header. Each shard's row count goes into one
Redis hash per file, and the job whose shard completes the set assembles the parts into the
output: on S3 server-side (a multipart upload of UploadPartCopy's, when every part but the last
is at least 5 MiB), otherwise by streaming the parts through a normal whole-or-absent write.

Every step may run twice (RQ delivers at least once) and stays correct: a re-run shard rewrites
the same part; two assemblers racing write the same object; a shard that finds its file already
assembled or failed only tidies up. A quoted field holding a line break cannot be cut safely:
such a file fails with a parse error naming the shard, and ``--shard-size 0`` scores it whole
(Spark has the same limit without ``multiLine``).
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import time
from typing import TYPE_CHECKING, Any

from velosiped import keys, lua, sketch, storage
from velosiped.access import check_output, check_path
from velosiped.connection import as_text
from velosiped.errors import ConfigError, InputError, TransientError, VeloError
from velosiped.jobs import PARTS_SUFFIX, Payload, error_uri, lineage, shard_group, shard_of
from velosiped.sketch import Stats
from velosiped.state import FileState, set_state

if TYPE_CHECKING:
    from redis import Redis


__all__ = ["check_parts", "drop_stale_error", "fail", "file_seconds", "name_of", "score", "settle"]

log = logging.getLogger(__name__)

STATE_TTL = 7 * 24 * 3600
"""Seconds a file's shard progress stays in Redis after its last change."""

SPLIT_HINT = "a quoted field holding a line break cannot be split: dispatch the file with --shard-size 0"

# ---------------------------------------------------------------------------------------- the worker


def _parts(p: Payload) -> str:
    return f"{p['output']}{PARTS_SUFFIX}/{shard_group(p)}/"


def _part(p: Payload, index: int) -> str:
    return f"{_parts(p)}{index:05d}.part"


def check_parts(p: Payload) -> None:
    """Refuse the shard's parts folder unless it really lies under the allowed prefixes."""
    check_path(_parts(p))


def name_of(p: Payload) -> str:
    """How errors name a shard: the file, which shard, which bytes."""
    s = shard_of(p)
    return f"{p['input']} (shard {s['index'] + 1} of {s['count']}, bytes {s['start']}-{s['end']})"


class _Quotes:
    """Counts the quote characters of what is read through it.

    A shard starts outside quotes (the first starts after the header; each next one where the
    one before ended). It ends outside quotes too iff it holds an even number of ``"``: doubled
    quotes inside a quoted field keep the parity. An odd count means the cut after it fell
    inside a quoted field, which pyarrow would read without a word (an unterminated quote at the
    end of input is taken as closed), so the shard fails instead. A stray ``"`` inside an
    unquoted field fails it too: safe, with the same way out.
    """

    def __init__(self, src: Any) -> None:
        self._src = src
        self.count = 0

    def read(self, n: int = -1) -> bytes:
        data = self._src.read(n)
        if b'"' in data:  # memchr-fast; counting is a slow byte loop, so only where there is one
            self.count += data.count(b'"')
        return data


class _Chain:
    """``head`` then ``rest``: the header line followed by the shard's bytes, as one CSV stream.

    Passes ``rest``'s bytes on without copying them (score_stream only calls ``read``).
    """

    def __init__(self, head: bytes, rest: Any) -> None:
        self._head = head
        self._rest = rest

    def read(self, n: int = -1) -> bytes:
        if not self._head:
            return self._rest.read(n)
        cut = len(self._head) if n < 0 else n
        out, self._head = self._head[:cut], self._head[cut:]
        return out


def _score_part(p: Payload, model: Any, stats: Stats | None = None) -> int:
    from worker.scoring import Dialect, score_stream

    s, name = shard_of(p), name_of(p)
    header = storage.read_line(p["input"], p["input_version"], 0, storage.MAX_HEADER)
    if not header.endswith(b"\n"):
        raise InputError(f"{name}: no header line within {storage.MAX_HEADER >> 20} MiB; {SPLIT_HINT}")
    with (
        storage.open_range(p["input"], p["input_version"], s["start"], s["end"]) as body,
        storage.write_atomic(_part(p, s["index"])) as dst,
    ):
        quotes = _Quotes(body)
        try:
            rows = score_stream(
                _Chain(header, quotes),  # type: ignore[arg-type]
                dst,
                model,
                name=name,
                keep=p["keep"],
                proba=p["proba"],
                features=p["features"],
                dialect=Dialect(p["sep"], p["encoding"]),
                write_header=s["index"] == 0,
                stats=stats,
            )
        except InputError as e:
            if "CSV parse error" in str(e):  # most often a quoted line break cut in two
                raise InputError(f"{e} (if {SPLIT_HINT})") from e
            raise
        if quotes.count % 2:  # raised inside write_atomic: no part is written
            raise InputError(f"{name}: ends inside a quoted field; {SPLIT_HINT}")
        return rows


def _record(redis: Redis, p: Payload, rows: int) -> str:
    """Add this shard's rows; 'assemble' when it completed the set, else 'wait', 'failed' or 'assembled'."""
    s = shard_of(p)
    args = [s["index"], rows, s["count"], STATE_TTL]
    verdict = lua.script(redis, "shard_record.lua")(keys=[keys.shards(shard_group(p))], args=args)
    return verdict.decode() if isinstance(verdict, bytes) else str(verdict)


def _outcome(redis: Redis, p: Payload, outcome: str, value: str | int) -> bool:
    script = lua.script(redis, "shard_outcome.lua")
    return bool(script(keys=[keys.shards(shard_group(p))], args=[outcome, value, STATE_TTL]))


def score(p: Payload, model: Any, redis: Redis) -> tuple[int, int | None]:
    """Score one shard into its part; the job that completes the set assembles the file.

    Returns the shard's rows, and the file's when this job assembled it (else None).
    """
    state = keys.shards(shard_group(p))
    with redis.pipeline() as pipe:  # when the file's first shard started: the file's wall time
        pipe.hsetnx(state, "started", f"{time.time():.3f}")
        pipe.expire(state, STATE_TTL)
        pipe.execute()
    stats = Stats() if p.get("stats") is True else None
    rows = _score_part(p, model, stats)
    if stats is not None:  # before its rows count: the job completing the set finds every shard's
        redis.hset(state, f"stats:{shard_of(p)['index']}", stats.to_json())
    verdict = _record(redis, p, rows)
    if verdict == "assemble":
        return rows, _assemble(redis, p)
    if verdict != "wait":  # failed or assembled meanwhile: this part is not wanted
        settle(redis, p)
    return rows, None


def file_seconds(redis: Redis, p: Payload) -> float:
    """Seconds since the file's first shard began (its wall time across the fleet)."""
    started = redis.hget(keys.shards(shard_group(p)), "started")
    return max(time.time() - float(started), 0.0) if started else 0.0


def _copyable(sizes: list[int]) -> bool:
    """S3 can assemble these server-side: every part but the last at least 5 MiB."""
    filled = [s for s in sizes if s > 0]
    return all(s >= storage.S3_MIN_PART for s in filled[:-1])


def _write(output: str, parts: list[tuple[str, int]], meta: dict[str, str]) -> None:
    if storage.is_s3(output) and _copyable([size for _, size in parts]):
        log.info("assembling %s from %d parts, copied server-side", output, len(parts))
        storage.compose(output, [(uri, size) for uri, size in parts if size > 0], meta)
        return
    log.info("assembling %s from %d parts, streamed", output, len(parts))
    # Locally, or parts too small for S3 (e.g. --keep left few columns): stream them, whole or absent.
    with storage.write_atomic(output, meta) as dst:
        for uri, _ in parts:
            with storage.open_read(uri) as src:
                shutil.copyfileobj(src, dst, 1 << 20)


def _assemble(redis: Redis, p: Payload) -> int | None:
    """Write the output from the parts, in order; the file's rows, or None if another job settled it."""
    count = shard_of(p)["count"]
    try:
        check_parts(p)
        sizes = storage.list_sizes(_parts(p))
        parts = [(_part(p, i), sizes.get(_part(p, i), -1)) for i in range(count)]
        missing = [i for i, (_, size) in enumerate(parts) if size < 0]
        if missing:
            raise InputError(f"{p['input']}: part {missing[0] + 1} of {count} is missing")
        for uri, _ in parts:  # a part may be a symlink of its own: it is read into the output
            check_path(uri)
        _write(p["output"], parts, lineage(p))
    except (VeloError, OSError) as e:
        if settle(redis, p):  # a racing assembler finished first and removed the parts, or the file failed
            return None
        if isinstance(e, (TransientError, ConfigError)):  # retried, or failed at once (access denied)
            raise
        raise TransientError(f"{p['input']}: cannot assemble its {count} shards ({e})") from e
    rows = redis.hmget(keys.shards(shard_group(p)), [f"rows:{i}" for i in range(count)])
    total = sum(int(r or 0) for r in rows)
    if not _outcome(redis, p, "assembled", total):  # a shard failed meanwhile: that failure stands
        with contextlib.suppress(VeloError):
            storage.delete(p["output"])
        return None
    _finish(redis, p, total)
    return total


def _finish(redis: Redis, p: Payload, total: int) -> None:
    """After assembly (maybe by another job): lineage, no stale error, done in the batch, no parts.

    Each step checks its own path: a refused one is left alone (settle runs before any other check).
    """
    try:
        check_output(p["output"])
    except ConfigError as e:
        log.warning("%s: its lineage is not written: %s", p["input"], e)
    else:
        storage.write_lineage(p["output"], {**lineage(p), "velo-rows": str(total)})
    _store_stats(redis, p)  # before DONE, as a whole file's: they expire with the batch
    set_state(redis, p["batch"], p["input"], FileState.DONE, rows=total)
    drop_stale_error(p)  # after DONE: see worker.task._score_payload
    _clean(p)


def _store_stats(redis: Redis, p: Payload) -> None:
    """The file's statistics, its shards' merged, kept in its batch as a whole file's are."""
    count = shard_of(p)["count"]
    found = redis.hmget(keys.shards(shard_group(p)), [f"stats:{i}" for i in range(count)])
    shards = [Stats.from_json(raw) for raw in found if raw is not None]
    if shards:
        merged = Stats().merge_all(shards)
        merged.files = 1
        sketch.store(redis, p["batch"], p["input"], merged)


def drop_stale_error(p: Payload) -> None:
    """Remove the error file an earlier run left beside the output just written.

    Only a warning if that fails: the output is written and whole, and the next dispatch
    plans by the output (its lineage), never by a stale error file beside it. A put-only
    policy (AccessDenied on DELETE) must not turn a success into a failure.
    """
    try:
        check_path(error_uri(p["output"]))  # a refused one is never deleted
        storage.delete(error_uri(p["output"]))
    except (VeloError, OSError) as e:
        log.warning("%s: scored, but its stale error file stays: %s", p["input"], e)


def drop_stale_errors(files: list[Payload]) -> None:
    """:func:`drop_stale_error` for many files at once (a group's: on S3, one request)."""
    allowed = []
    for p in files:
        uri = error_uri(p["output"])
        try:
            check_path(uri)  # a refused one is never deleted
            allowed.append(uri)
        except VeloError as e:
            log.warning("%s: scored, but its stale error file stays: %s", p["input"], e)
    try:
        storage.delete_many(allowed)
    except (VeloError, OSError) as e:
        log.warning("%d files scored, but stale error files stay: %s", len(allowed), e)


def _clean(p: Payload) -> None:
    try:
        check_parts(p)  # a refused folder is never emptied
        storage.delete_prefix(_parts(p))
    except (VeloError, OSError) as e:  # leftovers under .velo-parts/ are harmless: never inputs
        log.warning("%s: cannot remove its parts: %s", p["input"], e)


def settle(redis: Redis, p: Payload) -> bool:
    """If this shard's file was assembled or failed already, tidy up after it and return True."""
    failed, assembled = redis.hmget(keys.shards(shard_group(p)), ["failed", "assembled"])
    if assembled is not None:
        _finish(redis, p, int(assembled))
        return True
    if failed is not None:
        set_state(redis, p["batch"], p["input"], FileState.FAILED, error=as_text(failed))
        _clean(p)
        return True
    return False


def fail(redis: Redis, p: Payload, reason: str) -> bool:
    """Fail the file of this shard (its other shards stop at their end) and remove its parts.

    False when the file was assembled already: a late re-run's failure does not undo it.
    """
    if not _outcome(redis, p, "failed", reason):
        return False
    _clean(p)
    return True
