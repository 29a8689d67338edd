"""Where a queued job's payload lives: in Redis beside the job, not in it.

A million queued files must fit in a small Redis. RQ's job hash stays compact (a listpack)
only while each of its values is at most 64 bytes (``hash-max-listpack-value``); a payload
carrying two URIs is not, and a job that carries it costs ~1.8 KB instead of ~0.5 KB. So a
job names no argument at all: its payload is found by the job's own id.

- the file's own fields (input and its version, output, shard) are one short JSON array in
  the hash ``velo:payloads``, field = job id, written with the job and deleted once the
  file's outcome is recorded;
- a group of small files scored in one job (``--group-size``) is one entry too, under the
  group's job id: ``[digest, [[input, input_version, output], ...]]``, about 140 bytes a file
  for what a file alone takes in its job hash and its own entry;
- what every file of a batch shares (the batch, the model, its version, output options) is
  stored once, under its own SHA-256 (``velo:options:<digest>``), so a worker can check
  what it reads and cache it for good.
"""

from __future__ import annotations

import hashlib
import json
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

from velosiped import keys
from velosiped.errors import InputError
from velosiped.jobs import Payload, validate
from velosiped.state import FileState, get_state

if TYPE_CHECKING:
    from redis import Redis
    from rq.job import Job

__all__ = [
    "OPTION_FIELDS",
    "describe",
    "drop",
    "for_job",
    "load",
    "of_failed_job",
    "of_job",
    "pack_options",
    "pack_own",
    "remember",
]

OPTION_FIELDS = (
    "batch",
    "model",
    "model_version",
    "model_sha256",
    "keep",
    "proba",
    "features",
    "sep",
    "encoding",
    "stats",
    "shadow",
    "shadow_version",
    "shadow_sha256",
    "engine",
)
"""Payload fields every file of a batch has alike, stored once."""

_OWN_FIELDS = ("input", "input_version", "output")

_options: dict[str, dict[str, Any]] = {}
"""Options read so far, by digest: content-addressed, so never stale."""


def _compact(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"), sort_keys=True)


def pack_options(p: Payload) -> tuple[str, str]:
    """(digest, JSON) of what the payload shares with every file of its batch."""
    options = _compact({k: v for k, v in p.items() if k in OPTION_FIELDS})
    return _digest(options.encode()), options


def pack_own(p: Payload, digest: str) -> str:
    """The file's own fields, with the digest of its options, as stored under its job id (a
    group's: its files' own fields)."""
    if p.get("group"):
        return _compact([digest, p.get("group")])
    own: list[Any] = [digest, p["input"], p["input_version"], p["output"]]
    shard = p.get("shard")
    if shard:
        own.append([shard["index"], shard["count"], shard["start"], shard["end"]])
    if p.get("shadow_output"):  # the challenger's output (`--shadow`): sixth, after the shard or null
        own += [] if shard else [None]
        own.append(p.get("shadow_output"))
    return _compact(own)


def _digest(options: bytes) -> str:
    return hashlib.sha256(options).hexdigest()[:16]


def _unpack(fields: list[Any], options: Any) -> Payload:
    """The payload from its two stored parts, checked; InputError if it is not one."""
    if not isinstance(options, dict):
        raise InputError("job payload: its options are not a JSON object")
    if len(fields) == 2:  # a group: the first file's own fields are the payload's
        group = fields[1]
        if not isinstance(group, list) or not group or not isinstance(group[0], list) or len(group[0]) != 3:
            raise InputError("job payload: a group must be a list of [input, input_version, output]")
        return validate({**options, **dict(zip(_OWN_FIELDS, group[0], strict=True)), "group": group})
    payload: dict[str, Any] = {**options, **dict(zip(_OWN_FIELDS, fields[1:4], strict=True))}
    if len(fields) == 6:
        payload["shadow_output"] = fields[5]
    if len(fields) >= 5 and fields[4] is not None:
        shard = fields[4]
        if not isinstance(shard, list) or len(shard) != 4:
            raise InputError("job payload: shard must be [index, count, start, end]")
        payload["shard"] = dict(zip(("index", "count", "start", "end"), shard, strict=True))
    return validate(payload)


def _fields(own: bytes | str) -> list[Any]:
    try:
        fields = json.loads(own)
    except ValueError as e:
        raise InputError(f"job payload is not JSON ({e})") from e
    if not isinstance(fields, list) or len(fields) not in (2, 4, 5, 6) or not isinstance(fields[0], str):
        raise InputError("job payload: not [options digest, input, input_version, output(, shard(, shadow output))]")
    return fields


def load(redis: Redis, job_id: str) -> Payload | None:
    """The payload of queued job ``job_id``; None once its outcome is recorded (it was deleted then)."""
    own = redis.hget(keys.PAYLOADS, job_id)
    if own is None:
        return None
    fields = _fields(own)  # parsed once, for the digest and the payload
    digest = fields[0]
    if digest not in _options:
        raw = redis.get(keys.options(digest))
        if raw is None:
            raise InputError(f"job payload: its options {digest} are not in Redis")
        if _digest(raw if isinstance(raw, bytes) else raw.encode()) != digest:
            raise InputError(f"job payload: its options do not match their digest {digest}")
        try:
            _options[digest] = json.loads(raw)
        except ValueError as e:
            raise InputError(f"job payload: its options are not JSON ({e})") from e
    return _unpack(fields, _options[digest])


def of_job(job: Job, redis: Redis) -> Payload | None:
    """The payload ``job`` scores (in Redis under its id); None once its outcome is recorded;
    InputError if it is not a valid one."""
    return load(redis, job.id)


def of_failed_job(job: Job, redis: Redis) -> Payload | None:
    """The payload of a failed file's job run again by RQ's own tools (`rq requeue`), whose own
    payload was dropped when the failure was recorded: the one kept for `velo retry` in its batch
    (``keys.batch_jobs``), found by the job's meta (``jobs.job_meta``, written when it first ran).

    None unless the meta names a file that is failed in its batch now; InputError if what is
    kept is not a valid payload."""
    meta = job.meta
    batch, file = meta.get("batch"), meta.get("input")
    if not isinstance(batch, str) or not isinstance(file, str):
        return None
    if isinstance(meta.get("group"), list):
        return _failed_group(redis, batch, [f for f in meta["group"] if isinstance(f, str)])
    if get_state(redis, batch, file) is not FileState.FAILED:
        return None  # done, or not a file of that batch: nothing to do again
    raw = redis.hget(keys.batch_jobs(batch), file)
    if raw is None:
        return None
    try:
        kept = json.loads(raw)
    except ValueError as e:
        raise InputError(f"job payload kept for {file} is not JSON ({e})") from e
    p = validate(kept)
    if (p["batch"], p["input"]) != (batch, file):
        raise InputError(f"job payload kept for {file} names another file")
    return p


def _failed_group(redis: Redis, batch: str, files: list[str]) -> Payload | None:
    """A failed group's files that are failed in their batch now, as one group payload (their kept ones)."""
    kept: list[Payload] = []
    for file in files:
        if get_state(redis, batch, file) is not FileState.FAILED:
            continue
        raw = redis.hget(keys.batch_jobs(batch), file)
        if raw is None:
            continue
        try:
            p = validate(json.loads(raw))
        except ValueError as e:
            raise InputError(f"job payload kept for {file} is not JSON ({e})") from e
        if (p["batch"], p["input"]) != (batch, file):
            raise InputError(f"job payload kept for {file} names another file")
        kept.append(p)
    if not kept:
        return None
    first: Payload = {**kept[0]}
    first["group"] = [[p["input"], p["input_version"], p["output"]] for p in kept]
    return validate(first)


_checked: ContextVar[tuple[str, Payload | None, bool]] = ContextVar("velo_checked_payload")


def remember(job_id: str, payload: Payload | None, rerun: bool = False) -> None:
    """Keep the payload the worker just read and checked for the job it runs next (``rerun``: a
    failed file's, see :func:`of_failed_job`)."""
    _checked.set((job_id, payload, rerun))


def for_job(redis: Redis, job: Job) -> tuple[Payload | None, bool]:
    """The running job's (payload, whether it is a failed file's run again): as the worker checked
    it (one Redis read a job, not two), else read."""
    checked = _checked.get(None)
    if checked is not None and checked[0] == job.id:
        return checked[1], checked[2]
    p = load(redis, job.id)
    if p is not None:
        return p, False
    p = of_failed_job(job, redis)
    return p, p is not None


def drop(redis: Redis, job_id: str) -> None:
    """Forget a job's payload: its file's outcome is recorded."""
    redis.hdel(keys.PAYLOADS, job_id)


def describe(redis: Redis, job_id: str) -> str | None:
    """The file (and shard) a queued or running job scores, for `velo status`; None if unknown."""
    try:
        p = load(redis, job_id)
    except InputError:
        return None
    if p is None:
        return None
    group = p.get("group")
    if group:
        return f"{p['input']} (and {len(group) - 1} more files in one group)"
    shard = p.get("shard")
    return f"{p['input']} (shard {shard['index'] + 1}/{shard['count']})" if shard else p["input"]
