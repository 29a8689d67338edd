"""Decide, for each file under SOURCE, whether it needs scoring and why.

The lineage stored with each output (model, input and options it was made from) is the skip
test: a file is redone only when it, the model or the output options changed, or with --force.
"""

from __future__ import annotations

import fnmatch
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import Any

from dispatcher import sharding
from velosiped import storage
from velosiped.errors import InputError
from velosiped.jobs import FAILED_FOR_GOOD, PARTS_SUFFIX, error_uri, params_key

__all__ = ["DEFAULT_PATTERNS", "Options", "Planned", "is_output", "output_for", "plan", "replan"]

DEFAULT_PATTERNS = ("*.csv", "*.csv.gz")
"""Input files picked when --pattern is not given."""

_EXTENSIONS = (".csv.gz", ".csv", ".parquet")


@dataclass(frozen=True)
class Options:
    """What the user asked of a dispatch; the same for every file of the batch."""

    model: str
    model_version: str
    patterns: tuple[str, ...] = DEFAULT_PATTERNS
    suffix: str = ".out"
    output: str | None = None
    keep: list[str] | None = None
    proba: bool = False
    features: list[str] | None = None
    sep: str = ","
    encoding: str = "utf-8"
    force: bool = False
    model_sha256: str | None = None
    shard_size: int = 0
    """Plain CSVs above this many bytes are split into shards scored apart (0: never)."""
    stats: bool = True
    """Gather each file's statistics while scoring it, for `velo report` (on unless ``--no-stats``)."""
    shadow: str | None = None
    """A challenger model scored on the same read (``--shadow``); its outputs go under ``shadow_output``."""
    shadow_version: str | None = None
    shadow_sha256: str | None = None
    shadow_output: str | None = None
    engine: str = "sklearn"
    """What predicts in the workers (``--engine``): scikit-learn's own predict, or ``treelite``."""
    group_size: int = 1
    """Small files scored together in one job, at most this many (``--group-size``; 1: one job a file)."""
    group_bytes: int = 4 << 20
    """Files below this size may be grouped (``--group-bytes``)."""


@dataclass(frozen=True)
class Planned:
    """One file's plan: where its output goes, and the reason it is (or is not) enqueued."""

    info: storage.ObjectInfo
    output: str
    reason: str
    shards: tuple[tuple[int, int], ...] = ()
    """Byte ranges scored as separate jobs; empty: the file is one job."""
    shadow_output: str | None = None
    """Where the challenger's output goes (``--shadow``)."""

    @property
    def enqueue(self) -> bool:
        return self.reason in {
            "new",
            "input changed",
            "model changed",
            "options changed",
            "forced",
            "challenger new",
            "challenger changed",
        }


def _split_ext(name: str) -> tuple[str, str]:
    for ext in _EXTENSIONS:
        if name.endswith(ext):
            return name[: -len(ext)], ext
    stem, dot, ext = name.rpartition(".")
    return (stem, dot + ext) if stem else (name, "")


def output_for(source: str, uri: str, suffix: str, output_prefix: str | None) -> str:
    """``a/1.csv`` -> ``a/1.out.csv``, ``a/1.csv.gz`` -> ``a/1.out.csv.gz``; under --output if given."""
    stem, ext = _split_ext(uri)
    if output_prefix is None:
        return stem + suffix + ext
    return storage.join(output_prefix, storage.relative(source, stem + suffix + ext))


def is_output(uri: str, suffix: str) -> bool:
    """Whether ``uri`` is named as an output of ``suffix`` (``a/1.out.csv`` for ``.out``)."""
    return _split_ext(uri)[0].endswith(suffix)


def plan(
    source: str,
    opts: Options,
    *,
    start_after: str | None = None,
    known: Callable[[storage.ObjectInfo], bool] | None = None,
) -> Iterator[Planned]:
    """The plan for every input under ``source``, in listing order. Outputs are never inputs.

    ``start_after`` plans only S3 keys after it (a watch's incremental listing: a new input's
    output, if any, sorts after it); ``known`` skips files already planned, unchanged.
    """
    everything = list(storage.list_files(source, ("*",), start_after=start_after))
    existing = {i.uri for i in everything}
    output = opts.output
    if output is not None and start_after is None and (storage.is_s3(output) or os.path.isdir(output)):
        existing |= {i.uri for i in storage.list_files(output, ("*",))}
    out_prefix = opts.output.rstrip("/") + "/" if opts.output else None
    shadow_prefix = opts.shadow_output.rstrip("/") + "/" if opts.shadow_output else None
    if shadow_prefix is not None and start_after is None:
        assert opts.shadow_output is not None
        if storage.is_s3(opts.shadow_output) or os.path.isdir(opts.shadow_output):
            existing |= {i.uri for i in storage.list_files(opts.shadow_output, ("*",))}
    for info in everything:
        if known is not None and known(info):
            continue
        name = info.uri.rsplit("/", 1)[-1]
        if not any(fnmatch.fnmatch(name, p) for p in opts.patterns) or is_output(info.uri, opts.suffix):
            continue
        if out_prefix and info.uri.startswith(out_prefix):
            continue
        if shadow_prefix and info.uri.startswith(shadow_prefix):
            continue
        if PARTS_SUFFIX + "/" in info.uri:  # a big file's shard outputs waiting to be assembled
            continue
        output = output_for(source, info.uri, opts.suffix, opts.output)
        shadow = output_for(source, info.uri, opts.suffix, opts.shadow_output) if opts.shadow_output else None
        item = Planned(info, output, _reason(info, output, existing, opts, shadow), shadow_output=shadow)
        yield replace(item, shards=_shards(info, opts)) if item.enqueue else item


def replan(item: Planned, opts: Options) -> Planned:
    """The file's plan as things are now (its input, output and error file looked up again)."""
    info = storage.head(item.info.uri)
    if info is None:
        return replace(item, reason="gone")
    shadow = item.shadow_output
    looked = (item.output, error_uri(item.output)) + ((shadow, error_uri(shadow)) if shadow else ())
    existing = {uri for uri in looked if storage.head(uri) is not None}
    now = Planned(info, item.output, _reason(info, item.output, existing, opts, shadow), shadow_output=shadow)
    return replace(now, shards=_shards(info, opts)) if now.enqueue else now


def _shards(info: storage.ObjectInfo, opts: Options) -> tuple[tuple[int, int], ...]:
    """The file's byte ranges when it is big enough to split; a file changed meanwhile is planned whole."""
    try:
        return tuple(sharding.bounds(info, opts.shard_size, opts.encoding))
    except InputError:
        return ()


def _reason(info: storage.ObjectInfo, output: str, existing: set[str], opts: Options, shadow: str | None = None) -> str:
    if opts.force:
        return "forced"
    params = params_key(opts.keep, opts.proba, opts.features, opts.sep, opts.encoding)
    champion = _champion_reason(info, output, existing, opts, params)
    if champion != "already done" or shadow is None:
        return champion
    return _challenger_reason(info, shadow, existing, opts, params)


def _challenger_reason(info: storage.ObjectInfo, shadow: str, existing: set[str], opts: Options, params: str) -> str:
    """The champion's output is current: is the challenger's? (Its own lineage, or its own failure
    on this very input, model and options, settles it.)"""
    made_from = (info.version, opts.shadow_version, params)
    if shadow in existing:
        made = storage.read_lineage(shadow) or {}
        return "already done" if _from(made, _LINEAGE_FIELDS) == made_from else "challenger changed"
    if error_uri(shadow) in existing:
        failed = storage.read_json(error_uri(shadow)) or {}
        if _from(failed, _ERROR_FIELDS) == made_from:
            return "already done"
    return "challenger new"


_LINEAGE_FIELDS = ("velo-input-version", "velo-model-version", "velo-params")
"""What an output's lineage says it was made from: input version, model version, options."""
_ERROR_FIELDS = ("input_version", "model_version", "params")
"""The same, in a failed file's error record."""


def _from(record: dict[str, Any], fields: tuple[str, str, str]) -> tuple[Any, ...]:
    """The input version, model version and options ``record`` names under ``fields``."""
    return tuple(record.get(f) for f in fields)


def _champion_reason(info: storage.ObjectInfo, output: str, existing: set[str], opts: Options, params: str) -> str:
    if output in existing:
        made = storage.read_lineage(output) or {}
        if not made:
            return "new"
        if made.get("velo-input-version") != info.version:
            return "input changed"
        if made.get("velo-model-version") != opts.model_version:
            return "model changed"
        if made.get("velo-params") != params:
            return "options changed"
        return "already done"
    if error_uri(output) in existing:
        failed = storage.read_json(error_uri(output)) or {}
        if failed.get("kind", "input") not in FAILED_FOR_GOOD:
            return "new"  # storage trouble (or a configuration since fixed, maybe): try it again
        if _from(failed, _ERROR_FIELDS) == (info.version, opts.model_version, params):
            return "failed before"
    return "new"
