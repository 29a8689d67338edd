"""The job on the wire: one JSON object per file, checked before anything runs.

RQ carries it with its ``JSONSerializer`` and the task's import path, never a pickle.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, TypedDict

from worker.errors import InputError

__all__ = ["FAILURE_CALLBACK", "TASK", "Payload", "error_uri", "job_id", "lineage", "params_key", "validate"]

TASK = "worker.task.score_file"
"""Import path of the one function a Velosiped job may name."""

FAILURE_CALLBACK = "worker.task.on_job_failure"
"""RQ failure callback: records a file whose job failed for good (e.g. its workers kept dying)."""


class Payload(TypedDict):
    input: str
    input_version: str
    output: str
    model: str
    model_version: str
    model_sha256: str | None
    keep: list[str] | None
    proba: bool
    batch: str


_TYPES: dict[str, tuple[type, ...]] = {
    "input": (str,),
    "input_version": (str,),
    "output": (str,),
    "model": (str,),
    "model_version": (str,),
    "model_sha256": (str, type(None)),
    "keep": (list, type(None)),
    "proba": (bool,),
    "batch": (str,),
}


def validate(obj: Any) -> Payload:
    """``obj`` as a Payload, or InputError naming what is wrong with it."""
    if not isinstance(obj, dict):
        raise InputError(f"job payload is {type(obj).__name__}, not an object")
    unknown = sorted(set(obj) - set(_TYPES))
    missing = sorted(set(_TYPES) - set(obj))
    if unknown or missing:
        raise InputError(f"job payload: unknown fields {unknown}, missing fields {missing}")
    for field, types in _TYPES.items():
        if not isinstance(obj[field], types):
            raise InputError(f"job payload: {field} must be {' or '.join(t.__name__ for t in types)}")
    if obj["keep"] is not None and not all(isinstance(c, str) for c in obj["keep"]):
        raise InputError("job payload: keep must be a list of column names")
    return obj  # type: ignore[return-value]


def params_key(keep: list[str] | None, proba: bool) -> str:
    """The output options that change an output's content, as a short stable string."""
    return f"keep={','.join(keep) if keep is not None else '*'};proba={int(proba)}"


def job_id(payload: Payload) -> str:
    """Deterministic id: the same file version, model version, output and options give the same job."""
    parts = [payload["input"], payload["input_version"], payload["model_version"], payload["output"]]
    parts.append(params_key(payload["keep"], payload["proba"]))
    return "velo-" + hashlib.sha256("\0".join(parts).encode()).hexdigest()[:32]


def lineage(payload: Payload) -> dict[str, str]:
    """What made an output; stored with it and compared by the next dispatch to skip done files."""
    return {
        "velo-model": payload["model"].encode("ascii", "backslashreplace").decode(),
        "velo-model-version": payload["model_version"],
        "velo-input-version": payload["input_version"],
        "velo-params": params_key(payload["keep"], payload["proba"]),
        "velo-batch": payload["batch"],
    }


def error_uri(output: str) -> str:
    """Where a failed file's reason is written: next to where its output would be."""
    return output + ".error.json"


def dumps(payload: Payload) -> str:
    return json.dumps(payload, sort_keys=True)
