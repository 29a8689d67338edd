"""The job on the wire: one JSON object per file, checked before anything runs.

RQ carries the task's import path with its ``JSONSerializer``, never a pickle. A job names
no argument: its payload waits in Redis under the job's id (see :mod:`velosiped.payloads`),
so the only function a worker runs takes nothing a hostile job could shape.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any, TypedDict

from velosiped.errors import InputError

__all__ = [
    "ENGINES",
    "FAILED_FOR_GOOD",
    "FAILURE_CALLBACK",
    "GROUP_PREFIX",
    "PARTS_SUFFIX",
    "TASK",
    "Payload",
    "Shard",
    "describe",
    "error_uri",
    "group_id",
    "job_id",
    "job_meta",
    "lineage",
    "members",
    "params_key",
    "payload_params",
    "queued_description",
    "shadow_lineage",
    "shard_group",
    "shard_of",
    "validate",
]

TASK = "worker.task.score"
"""Import path of the function a queued Velosiped job names, without arguments."""

FAILURE_CALLBACK = "worker.task.on_job_failure"
"""RQ failure callback: records a file whose job failed for good (e.g. its workers kept dying)."""


class Shard(TypedDict):
    """One byte range of a big CSV: its rows are ``[start, end)``, scored after the file's header line."""

    index: int
    count: int
    start: int
    end: int


class _Required(TypedDict):
    input: str
    input_version: str
    output: str
    model: str
    model_version: str
    model_sha256: str | None
    keep: list[str] | None
    proba: bool
    features: list[str] | None
    sep: str
    encoding: str
    batch: str


class Payload(_Required, total=False):
    shard: Shard | None
    """Absent or None: the whole file (jobs from before sharding still validate)."""
    stats: bool | None
    """True: gather statistics while scoring (the default; `--no-stats` leaves it out); absent (a
    job enqueued by a version that gathered none by default), None or False: do not."""
    shadow: str | None
    """A challenger model (`--shadow`) scored on the same read; with ``shadow_version``,
    ``shadow_sha256`` and ``shadow_output`` (where its output goes). Absent or None: none."""
    shadow_version: str | None
    shadow_sha256: str | None
    shadow_output: str | None
    engine: str | None
    """What predicts (`--engine`, one of :data:`ENGINES`); absent or None: scikit-learn."""
    group: list[list[str]] | None
    """Small files scored together in one job (``--group-size``): each member's own
    ``[input, input_version, output]``, the first being the payload's own; absent or None: one file."""


_TYPES: dict[str, tuple[type, ...]] = {
    "input": (str,),
    "input_version": (str,),
    "output": (str,),
    "model": (str,),
    "model_version": (str,),
    "model_sha256": (str, type(None)),
    "keep": (list, type(None)),
    "proba": (bool,),
    "features": (list, type(None)),
    "sep": (str,),
    "encoding": (str,),
    "batch": (str,),
}

_SHARD_FIELDS = ("index", "count", "start", "end")


def validate(obj: Any) -> Payload:
    """``obj`` as a Payload, or InputError naming what is wrong with it."""
    if not isinstance(obj, dict):
        raise InputError(f"job payload is {type(obj).__name__}, not an object")
    unknown = sorted(set(obj) - set(_TYPES) - set(_OPTIONAL))
    missing = sorted(set(_TYPES) - set(obj))
    if unknown or missing:
        raise InputError(f"job payload: unknown fields {unknown}, missing fields {missing}")
    for field, types in _TYPES.items():
        if not isinstance(obj[field], types):
            raise InputError(f"job payload: {field} must be {' or '.join(t.__name__ for t in types)}")
    for field in ("keep", "features"):
        if obj[field] is not None and not all(isinstance(c, str) for c in obj[field]):
            raise InputError(f"job payload: {field} must be a list of column names")
    if len(obj["sep"]) != 1:
        raise InputError("job payload: sep must be one character")
    for field, check in _OPTIONAL.items():
        if obj.get(field) is not None:
            check(obj[field])
    if obj.get("shadow") is not None and (obj.get("shadow_version") is None or obj.get("shadow_output") is None):
        raise InputError("job payload: shadow needs shadow_version and shadow_output")
    if obj.get("group") is not None and (obj.get("shard") or obj.get("shadow")):
        raise InputError("job payload: a group of files has no shard and no challenger")
    return obj  # type: ignore[return-value]


def _check_shard(shard: Any) -> None:
    if not isinstance(shard, dict) or sorted(shard) != sorted(_SHARD_FIELDS):
        raise InputError(f"job payload: shard must be null or an object with exactly {', '.join(_SHARD_FIELDS)}")
    if not all(type(shard[f]) is int for f in _SHARD_FIELDS):  # bool is an int subclass: refuse it too
        raise InputError("job payload: shard index, count, start and end must be integers")
    if not (0 <= shard["index"] < shard["count"] and 0 <= shard["start"] < shard["end"]):
        raise InputError("job payload: shard needs 0 <= index < count and 0 <= start < end")


def _check_stats(stats: Any) -> None:
    if not isinstance(stats, bool):
        raise InputError("job payload: stats must be true, false or null")


ENGINES = ("sklearn", "treelite")
"""`--engine` choices: scikit-learn's own predict (the default), or the compiled tree ensemble (worker/engine.py)."""


def _check_engine(engine: Any) -> None:
    if engine not in ENGINES:
        raise InputError(f"job payload: engine must be one of {', '.join(ENGINES)}")


def _check_text(field: str) -> Callable[[Any], None]:
    def check(value: Any) -> None:
        if not isinstance(value, str):
            raise InputError(f"job payload: {field} must be a string or null")

    return check


def _check_group(group: Any) -> None:
    if not isinstance(group, list) or not group:
        raise InputError("job payload: group must be null or a non-empty list of files")
    for member in group:
        if not isinstance(member, list) or len(member) != 3 or not all(isinstance(v, str) for v in member):
            raise InputError("job payload: each file of a group must be [input, input_version, output]")


_SHADOW_FIELDS = ("shadow", "shadow_version", "shadow_sha256", "shadow_output")

_OPTIONAL: dict[str, Callable[[Any], None]] = {
    "shard": _check_shard,
    "stats": _check_stats,
    "engine": _check_engine,
    "group": _check_group,
    **{f: _check_text(f) for f in _SHADOW_FIELDS},
}
"""Fields a payload may leave out (or set to null), each with its own check."""


def params_key(
    keep: list[str] | None,
    proba: bool,
    features: list[str] | None = None,
    sep: str = ",",
    encoding: str = "utf-8",
) -> str:
    """The options that change an output's content, as a short stable string (defaults left out)."""
    key = f"keep={','.join(keep) if keep is not None else '*'};proba={int(proba)}"
    if features:
        key += f";features={','.join(features)}"
    if sep != ",":
        key += f";sep={sep!r}"
    if encoding.lower() not in {"utf-8", "utf8"}:
        key += f";encoding={encoding.lower()}"
    return key


def payload_params(p: Payload) -> str:
    return params_key(p["keep"], p["proba"], p["features"], p["sep"], p["encoding"])


def job_id(payload: Payload) -> str:
    """Deterministic id: the same file version, model version, output and options give the same job."""
    if payload.get("group"):
        return group_id(members(payload))
    parts = [payload["input"], payload["input_version"], payload["model_version"], payload["output"]]
    parts.append(payload_params(payload))
    shard = payload.get("shard")
    if shard:  # each shard its own job; a whole-file job keeps the id it had before sharding existed
        parts.append("shard={index}/{count}:{start}-{end}".format(**shard))
    if payload.get("shadow"):  # a job without a challenger keeps the id it had before --shadow existed
        parts.append(f"shadow={payload.get('shadow_version')}:{payload.get('shadow_output')}")
    return "velo-" + hashlib.sha256("\0".join(parts).encode()).hexdigest()[:32]


GROUP_PREFIX = "velo-g"
"""How a group's job id starts (a file's is ``velo-`` and hex: never a ``g``)."""


def members(payload: Payload) -> list[Payload]:
    """The files a payload scores, each as its own payload (the payload itself when it names no group)."""
    group = payload.get("group")
    if not group:
        return [payload]
    common = {k: v for k, v in payload.items() if k != "group"}
    return [{**common, "input": i, "input_version": v, "output": o} for i, v, o in group]  # type: ignore[typeddict-item]


def group_id(files: list[Payload]) -> str:
    """A group's job id: the same for the same files (at the same versions, model and options)."""
    digest = hashlib.sha256("\0".join(job_id(p) for p in files).encode()).hexdigest()[:31]
    return GROUP_PREFIX + digest


def lineage(payload: Payload) -> dict[str, str]:
    """What made an output; stored with it and compared by the next dispatch to skip done files."""
    return {
        "velo-model": payload["model"].encode("ascii", "backslashreplace").decode(),
        "velo-model-version": payload["model_version"],
        "velo-input-version": payload["input_version"],
        "velo-params": payload_params(payload),
        "velo-batch": payload["batch"],
    }


def shadow_lineage(payload: Payload) -> dict[str, str]:
    """What made a challenger's output: the champion's lineage with the challenger as its model."""
    return {
        **lineage(payload),
        "velo-model": str(payload.get("shadow") or "").encode("ascii", "backslashreplace").decode(),
        "velo-model-version": str(payload.get("shadow_version") or ""),
        "velo-role": "challenger",
    }


def describe(p: Payload) -> str:
    """What RQ's tools (`rq info`, rq-dashboard) show as the job's description."""
    group = p.get("group")
    if group:
        return f"score {len(group)} files {group[0][0]} ... {group[-1][0]} (batch {p['batch']})"
    shard = p.get("shard")
    part = f" shard {shard['index'] + 1}/{shard['count']}" if shard else ""
    return f"score {p['input']}{part} -> {p['output']} (batch {p['batch']})"


def job_meta(p: Payload) -> dict[str, Any]:
    """The job's RQ meta: which file, output and batch it is (and a failed job's requeue finds its
    payload by them: see velosiped.payloads.of_failed_job)."""
    meta: dict[str, Any] = {"input": p["input"], "output": p["output"], "batch": p["batch"]}
    group = p.get("group")
    if group:  # `rq requeue` of a failed group scores again those of its files that failed
        meta["group"] = [m[0] for m in group]
    shard = p.get("shard")
    if shard:
        meta["shard"] = f"{shard['index'] + 1}/{shard['count']}"
    return meta


def queued_description(batch: str) -> str:
    """A queued job's description: its batch only, in the bytes RQ's own ``worker.task.score()``
    took (a Redis allocation class: 0 B more per queued file, measured). Naming its file too
    would push the job hash past Redis's compact-hash limit (64-byte values), ~1 KB more per
    queued file; the worker writes :func:`describe` when it takes the job."""
    return f"velo batch {batch}"


def error_uri(output: str) -> str:
    """Where a failed file's reason is written: next to where its output would be."""
    return output + ".error.json"


FAILED_FOR_GOOD = frozenset({"input", "timeout", "abandoned"})
"""Failure kinds (the ``kind`` of an error file) that stay failed until the file, model or options
change, or ``velo retry``: bad input, a file past its time limit, a file whose worker died on every
attempt (out of memory) would fail the same way again. The other kinds (``transient`` storage
trouble, ``config`` such as access denied, ``unexpected``) are tried again by the next dispatch.
A record without a kind (written before kinds existed) stays failed, as it did."""

PARTS_SUFFIX = ".velo-parts"
"""``<output>.velo-parts/<group>/<index>.part``: where shard outputs wait to be assembled."""


def shard_of(p: Payload) -> Shard:
    """The shard a payload names; only for payloads that name one."""
    shard = p.get("shard")
    if shard is None:
        raise ValueError(f"{p['input']}: the payload names no shard")
    return shard


def shard_group(p: Payload) -> str:
    """The same for every shard of one plan of one file version, model, output and options."""
    whole: Any = {k: v for k, v in p.items() if k != "shard"}
    shard = p.get("shard")
    count = shard["count"] if shard else 1
    return hashlib.sha256(f"{job_id(whole)}\0{count}".encode()).hexdigest()[:24]
