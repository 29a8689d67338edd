"""Shard planning: where a big plain CSV is cut into byte ranges, each scored by its own job.

Cuts fall after line ends, found with a few small ranged reads pinned to the listed version;
the worker's half (scoring a range, assembling the parts) is :mod:`worker.shards`.
"""

from __future__ import annotations

import itertools
from typing import TYPE_CHECKING

from velosiped import storage
from velosiped.errors import ConfigError
from velosiped.jobs import Payload

if TYPE_CHECKING:
    from velosiped.storage import ObjectInfo

__all__ = ["DEFAULT_SHARD_SIZE", "MIN_SHARD_SIZE", "bounds", "expand", "parse_size", "shardable"]

DEFAULT_SHARD_SIZE = 1 << 30
"""Files above this many bytes are split (env VELO_SHARD_SIZE, or --shard-size)."""

MIN_SHARD_SIZE = 1 << 20
"""Smallest --shard-size accepted: smaller shards cost more in jobs than they gain."""

MAX_SHARDS = 10_000
"""S3's most parts in one multipart upload; a file gets no more shards than this."""

_PLAIN = (".csv", ".tsv", ".txt")
"""Names of uncompressed text files: byte offsets in them are offsets in the CSV."""

_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def parse_size(text: str, option: str = "--shard-size") -> int:
    """``1073741824``, ``1GB``, ``512MB``, ``64MiB``, ``1.5g`` -> bytes (units are powers of 1024); 0 is off."""
    raw = text.strip().lower().replace(" ", "")
    number = raw.rstrip("kmgtib")
    unit = raw[len(number) :].removesuffix("b").removesuffix("i")
    try:
        size = int(float(number) * _UNITS[unit])
    except (ValueError, KeyError, OverflowError):
        if option != "--shard-size":
            raise ConfigError(f"{option} {text!r}: not a size; use bytes or e.g. 64MB") from None
        raise ConfigError(f"--shard-size {text!r}: not a size; use bytes or e.g. 512MB, 1GB (0 turns it off)") from None
    if option != "--shard-size":
        if size < 1:
            raise ConfigError(f"{option} {text!r}: use a positive size, e.g. 64MB")
        return size
    if size < 0 or 0 < size < MIN_SHARD_SIZE:
        raise ConfigError(f"--shard-size {text!r}: use 0 (off) or at least {MIN_SHARD_SIZE >> 20}MB")
    return size


def shardable(uri: str, encoding: str) -> bool:
    """Uncompressed text in an encoding where a line end is the byte ``\\n`` (not UTF-16/32)."""
    if not uri.lower().endswith(_PLAIN):
        return False
    try:
        return "\n,".encode(encoding) == b"\n,"
    except (LookupError, UnicodeError):
        return False


def bounds(info: ObjectInfo, shard_size: int, encoding: str = "utf-8") -> list[tuple[int, int]]:
    """Byte ranges ``[start, end)`` of ``info``'s rows, about ``shard_size`` each, cut after line ends.

    ``[]`` means score the file whole: sharding off, a small, compressed or header-only file, or
    one whose lines are so long that no cut fits. The first range starts after the header line.
    Costs a few 64 KiB ranged reads per cut, pinned to the listed version.
    """
    if shard_size <= 0 or info.size <= shard_size or not shardable(info.uri, encoding):
        return []
    header = storage.read_line(info.uri, info.version, 0, storage.MAX_HEADER)
    if not header.endswith(b"\n") or len(header) >= info.size:
        return []
    n = min(-(-info.size // shard_size), MAX_SHARDS)
    cuts = {len(header), info.size}
    for k in range(1, n):
        at = k * info.size // n - 1  # from the byte before: a cut that falls on a line start stays there
        line = storage.read_line(info.uri, info.version, at, storage.MAX_HEADER)
        if line.endswith(b"\n"):
            cuts.add(at + len(line))
    edges = sorted(c for c in cuts if c >= len(header))
    shards = list(itertools.pairwise(edges))
    return shards if len(shards) > 1 else []


def expand(payload: Payload, shards: list[tuple[int, int]]) -> list[Payload]:
    """One payload per shard (the payload itself when ``shards`` is empty: the whole file)."""
    if not shards:
        return [payload]
    n = len(shards)
    return [{**payload, "shard": {"index": i, "count": n, "start": s, "end": e}} for i, (s, e) in enumerate(shards)]
