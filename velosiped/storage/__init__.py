"""S3 and local folders behind the same few functions, picked by URI scheme in one place.

A location is either ``s3://bucket/key`` or an absolute local path (``file://`` and relative
paths are normalised to one). S3 is reached through boto3's standard configuration: the
credentials chain and ``AWS_ENDPOINT_URL`` / ``AWS_ENDPOINT_URL_S3`` for MinIO and friends.

Each transport (:mod:`.s3`, :mod:`.local`) implements :class:`.base.Transport` and owns the
translation of its libraries' errors into Velosiped's (:func:`translate`).
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from typing import IO, Any

from velosiped.errors import ConfigError, VeloError
from velosiped.storage.base import LINEAGE_SUFFIX, MAX_HEADER, ObjectInfo, Transport
from velosiped.storage.local import LocalTransport
from velosiped.storage.s3 import (
    READ_TIMEOUT_ENV,
    S3_MAX_PART,
    S3_MIN_PART,
    S3_PART_SIZE,
    S3Transport,
    client,
    split_s3,
)

__all__ = [
    "LINEAGE_SUFFIX",
    "MAX_HEADER",
    "READ_TIMEOUT_ENV",
    "S3_MAX_PART",
    "S3_MIN_PART",
    "S3_PART_SIZE",
    "ObjectInfo",
    "Transport",
    "check_unchanged",
    "client",
    "compose",
    "delete",
    "delete_prefix",
    "get_transport",
    "head",
    "is_s3",
    "join",
    "list_files",
    "list_sizes",
    "normalize",
    "open_range",
    "open_read",
    "read_json",
    "read_line",
    "read_lineage",
    "relative",
    "split_s3",
    "translate",
    "write_atomic",
    "write_json",
    "write_lineage",
]

WINDOW = 64 * 1024
"""Bytes read at a time when looking for a line end."""

_LOCAL = LocalTransport()
_TRANSPORTS: dict[str, Transport] = {"s3": S3Transport(), "file": _LOCAL}
"""Every transport by URI scheme: the one place a scheme is looked up (absolute paths are ``file``)."""


def get_transport(uri: str) -> Transport:
    """The transport for ``uri`` (a normalised location: ``s3://...`` or an absolute path)."""
    scheme, sep, _ = uri.partition("://")
    return _TRANSPORTS[scheme] if sep and scheme in _TRANSPORTS else _LOCAL


def is_s3(uri: str) -> bool:
    return uri.startswith("s3://")


def normalize(uri: str) -> str:
    """Canonical form of a user-given location: ``s3://b/k`` or an absolute local path.

    Raises:
        ConfigError: for a scheme Velosiped cannot read (``ftp://``, ``gs://``, ...).
    """
    if is_s3(uri):
        bucket, _ = split_s3(uri)
        if not bucket:
            raise ConfigError(f"{uri}: no bucket in S3 URI; use s3://bucket/prefix/")
        return uri
    if uri.startswith("file://"):
        uri = uri[len("file://") :]
    elif "://" in uri:
        raise ConfigError(f"{uri}: unsupported URI scheme; use s3://bucket/prefix/, file:// or a local path")
    keep_slash = uri.endswith("/")
    path = os.path.abspath(os.path.expanduser(uri))
    return path + "/" if keep_slash and not path.endswith("/") else path


def join(prefix: str, relative_path: str) -> str:
    if is_s3(prefix):
        return prefix.rstrip("/") + "/" + relative_path
    return os.path.join(prefix, relative_path)


def relative(base: str, uri: str) -> str:
    """The part of ``uri`` below ``base`` (a listed prefix), used to mirror paths under ``--output``."""
    if is_s3(base):
        _, base_key = split_s3(base)
        _, key = split_s3(uri)
        if base_key and not base_key.endswith("/"):
            if key.startswith(base_key + "/"):  # s3://b/in is the folder in/ (see list_files)
                base_key += "/"
            else:  # an object's exact key: the file, whose folder is the base
                base_key = base_key.rsplit("/", 1)[0] + "/" if "/" in base_key else ""
        return key[len(base_key) :]
    if os.path.isfile(base):
        return os.path.basename(uri)
    return os.path.relpath(uri, base)


def translate(uri: str, error: BaseException) -> VeloError | None:
    """Velosiped's error for what a storage library raised (anywhere in ``error``'s cause chain),
    naming ``uri``; None when no transport's library is to blame. ``uri``'s transport is asked
    first, then the others (a local file's model may be on S3)."""
    first = get_transport(uri)
    for transport in (first, *(t for t in _TRANSPORTS.values() if t is not first)):
        found = transport.translate(uri, error)
        if found is not None:
            return found
    return None


def preload() -> None:
    """Import now what S3 needs (smart_open, and boto3 with it; 0.1-0.3 s): a worker does it before its
    first job, a pool once before forking (its workers share the modules). Local files need neither."""
    import boto3  # noqa: F401
    import smart_open  # noqa: F401


def list_files(source: str, patterns: tuple[str, ...], start_after: str | None = None) -> Iterator[ObjectInfo]:
    """Every file under ``source`` whose base name matches one of ``patterns``, in key order.

    S3 listings are paged (1,000 keys a request); memory stays flat whatever the count.
    ``start_after`` (an S3 URI) lists only the keys after it, as S3 does; local folders
    are walked whole, which costs only a stat per file.

    Raises:
        ConfigError: the bucket or folder does not exist, or access is denied.
    """
    return get_transport(source).list_files(source, patterns, start_after)


def head(uri: str) -> ObjectInfo | None:
    """The file's current version, or None if it does not exist."""
    return get_transport(uri).head(uri)


def open_read(uri: str, version: str | None = None) -> IO[bytes]:
    """A streaming binary reader, decompressed by extension (``.gz``); memory does not grow with size.

    With ``version``, only that version is read: another fails with "changed since it was dispatched".
    """
    return get_transport(uri).open_read(uri, version)


def check_unchanged(uri: str, version: str) -> None:
    """Raise "changed since it was dispatched" if ``uri`` is no longer ``version``."""
    get_transport(uri).check_unchanged(uri, version)


def write_atomic(
    uri: str, metadata: dict[str, str] | None = None, *, small: bool = False
) -> contextlib.AbstractContextManager[IO[bytes]]:
    """Write ``uri`` whole or not at all, compressed by extension.

    S3: a multipart upload completed on success and aborted on error (``S3_PART_SIZE`` bytes
    buffered in memory); ``small`` (a few MB at most, the caller knows): buffered whole and sent
    in one PUT, one request instead of three. Local: a temporary file in the same folder renamed
    into place. ``metadata`` becomes S3 object metadata (local files get it through
    :func:`write_json`).
    """
    return get_transport(uri).write_atomic(uri, metadata, small=small)


def write_json(uri: str, obj: dict[str, Any]) -> None:
    with write_atomic(uri, small=True) as out:
        out.write(json.dumps(obj, indent=2, sort_keys=True).encode() + b"\n")


def read_json(uri: str) -> dict[str, Any] | None:
    """A small JSON object, or None when it is absent or unreadable."""
    return get_transport(uri).read_json(uri)


def read_lineage(output_uri: str) -> dict[str, str] | None:
    """What made an existing output (S3 object metadata, or the local sidecar), or None."""
    return get_transport(output_uri).read_lineage(output_uri)


def write_lineage(output_uri: str, lineage: dict[str, str]) -> None:
    """Record what made ``output_uri``, just written, where the store cannot keep it with the object
    (a local sidecar; S3 object metadata holds it already)."""
    get_transport(output_uri).write_lineage(output_uri, lineage)


def delete(uri: str) -> None:
    """Remove a file if it exists."""
    get_transport(uri).delete(uri)


def delete_many(uris: list[str]) -> None:
    """Remove each of ``uris`` (one transport's) that exists: on S3, up to 1,000 in one request.

    Raises:
        OSError: naming the first that could not be removed, and how many could not.
    """
    if uris:
        get_transport(uris[0]).delete_many(uris)


# ----------------------------------------------------------------- byte ranges, pinned to a version


def open_range(uri: str, version: str, start: int, end: int) -> IO[bytes]:
    """A streaming reader of bytes [start, end) of an uncompressed file, refused if it is no longer ``version``."""
    return get_transport(uri).open_range(uri, version, start, end)


def read_line(uri: str, version: str, offset: int, limit: int) -> bytes:
    """The bytes from ``offset`` through the next ``\\n`` (included): a few small ranged reads.

    Ends without ``\\n`` at the end of the file, or after ``limit`` bytes without a line end.
    """
    out = bytearray()
    while len(out) < limit:
        with open_range(uri, version, offset + len(out), offset + len(out) + WINDOW) as f:
            chunk = f.read()
        if not chunk:
            break
        newline = chunk.find(b"\n")
        if newline >= 0:
            return bytes(out + chunk[: newline + 1])
        out += chunk
    return bytes(out)


# ------------------------------------------------------------------ parts of an output, and assembly


def list_sizes(prefix: str) -> dict[str, int]:
    """URI -> size of every file under ``prefix`` (an S3 prefix or a local folder)."""
    return get_transport(prefix).list_sizes(prefix)


def delete_prefix(prefix: str) -> None:
    """Remove every file under ``prefix`` (and, locally, the folder itself and its parent if left empty)."""
    get_transport(prefix).delete_prefix(prefix)


def compose(uri: str, parts: list[tuple[str, int]], metadata: dict[str, str]) -> None:
    """Write S3 object ``uri`` as the concatenation of ``parts`` (URI, size), server-side, whole or not at all.

    A multipart upload whose parts are UploadPartCopy's of the given objects: no byte goes
    through this machine. S3 wants every part but the last to be at least ``S3_MIN_PART``: the
    caller checks. A part above ``S3_MAX_PART`` is copied in ranges.
    """
    get_transport(uri).compose(uri, parts, metadata)
