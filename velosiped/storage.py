"""S3 and local folders behind the same few functions, picked by URI scheme in one place.

A location is either ``s3://bucket/key`` or an absolute local path (``file://`` and relative
paths are normalised to one). S3 is reached through boto3's standard configuration: the
credentials chain and ``AWS_ENDPOINT_URL`` / ``AWS_ENDPOINT_URL_S3`` for MinIO and friends.
"""

from __future__ import annotations

import contextlib
import fnmatch
import gzip
import io
import json
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from typing import IO, TYPE_CHECKING, Any

import botocore.exceptions

from velosiped.errors import ConfigError, InputError, TransientError

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

__all__ = [
    "ObjectInfo",
    "compose",
    "delete",
    "delete_prefix",
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
    "s3_error",
    "split_s3",
    "write_atomic",
    "write_json",
]

LINEAGE_SUFFIX = ".velo.json"
"""Sidecar holding an output's lineage where the store has no object metadata (local folders)."""

S3_PART_SIZE = 16 * 1024 * 1024
"""Bytes buffered in memory per S3 output before a multipart part is sent (S3's minimum is 5 MiB)."""

S3_MIN_PART = 5 * 1024 * 1024
"""S3's smallest part of a multipart upload (all but the last)."""

S3_MAX_PART = 5 * 1024 * 1024 * 1024
"""S3's largest part, and largest UploadPartCopy source range."""

WINDOW = 64 * 1024
"""Bytes read at a time when looking for a line end."""

MAX_HEADER = 16 * 1024 * 1024
"""Longest header line accepted."""

_TRANSIENT_CODES = {
    "500",
    "502",
    "503",
    "504",
    "InternalError",
    "SlowDown",
    "ServiceUnavailable",
    "RequestTimeout",
}


@dataclass(frozen=True)
class ObjectInfo:
    """One listed file: its URI, a version string that changes when its content does, its size."""

    uri: str
    version: str
    size: int


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


def split_s3(uri: str) -> tuple[str, str]:
    bucket, _, key = uri[len("s3://") :].partition("/")
    return bucket, key


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
            base_key = base_key.rsplit("/", 1)[0] + "/" if "/" in base_key else ""
        return key[len(base_key) :]
    if os.path.isfile(base):
        return os.path.basename(uri)
    return os.path.relpath(uri, base)


@cache
def client() -> S3Client:
    """One boto3 S3 client per process, with boto3's standard retry mode (exponential backoff)."""
    import boto3  # imported here: commands that never touch S3 (`velo status`) start faster
    import botocore.config

    config = botocore.config.Config(retries={"mode": "standard", "max_attempts": 5})
    return boto3.client("s3", config=config)


def s3_error(uri: str, error: Exception) -> Exception:
    """Map a botocore error to Velosiped's: transient ones are retried, the rest fail with the reason."""
    if isinstance(error, botocore.exceptions.ClientError):
        code = str(error.response.get("Error", {}).get("Code", ""))
        message = error.response.get("Error", {}).get("Message", "") or code
        if code in _TRANSIENT_CODES:
            return TransientError(f"{uri}: S3 error {code}: {message}")
        if code in {"NoSuchBucket"}:
            return ConfigError(f"{uri}: bucket does not exist; check the bucket name and AWS_ENDPOINT_URL")
        if code in {"AccessDenied", "403", "InvalidAccessKeyId", "SignatureDoesNotMatch"}:
            return ConfigError(f"{uri}: access denied by S3 ({code}); check the credentials and bucket policy")
        if code in {"NoSuchKey", "404", "NotFound"}:
            return InputError(f"{uri}: no such object")
        return InputError(f"{uri}: S3 error {code}: {message}")
    if isinstance(error, botocore.exceptions.NoCredentialsError):
        return ConfigError(f"{uri}: no AWS credentials found; set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or a profile")
    if isinstance(error, botocore.exceptions.BotoCoreError):
        return TransientError(f"{uri}: cannot reach S3 ({error})")
    return error


@contextlib.contextmanager
def _s3_errors(uri: str) -> Iterator[None]:
    try:
        yield
    except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as e:
        raise s3_error(uri, e) from e


def _matches(name: str, patterns: tuple[str, ...]) -> bool:
    return any(fnmatch.fnmatch(name, p) for p in patterns)


def list_files(source: str, patterns: tuple[str, ...], start_after: str | None = None) -> Iterator[ObjectInfo]:
    """Every file under ``source`` whose base name matches one of ``patterns``, in key order.

    S3 listings are paged (1,000 keys a request); memory stays flat whatever the count.
    ``start_after`` (an S3 URI) lists only the keys after it, as S3 does; local folders
    are walked whole, which costs only a stat per file.

    Raises:
        ConfigError: the bucket or folder does not exist, or access is denied.
    """
    if is_s3(source):
        bucket, prefix = split_s3(source)
        after = {"StartAfter": split_s3(start_after)[1]} if start_after else {}
        pages = client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix, **after)
        with _s3_errors(source):
            for page in pages:
                for obj in page.get("Contents", []):
                    key = obj["Key"]
                    if _matches(key.rsplit("/", 1)[-1], patterns):
                        yield ObjectInfo(f"s3://{bucket}/{key}", "etag:" + obj["ETag"].strip('"'), obj["Size"])
        return
    if os.path.isfile(source):
        if _matches(os.path.basename(source), patterns):
            yield _local_info(source)
        return
    if not os.path.isdir(source):
        raise ConfigError(f"{source}: no such file or folder; check SOURCE")
    for root, dirs, files in os.walk(source):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if _matches(name, patterns):
                yield _local_info(os.path.join(root, name))


def _local_info(path: str) -> ObjectInfo:
    st = os.stat(path)
    return ObjectInfo(path, f"mtime:{st.st_mtime_ns}:size:{st.st_size}", st.st_size)


def head(uri: str) -> ObjectInfo | None:
    """The file's current version, or None if it does not exist."""
    if is_s3(uri):
        bucket, key = split_s3(uri)
        try:
            meta = client().head_object(Bucket=bucket, Key=key)
        except botocore.exceptions.ClientError as e:
            if e.response.get("Error", {}).get("Code") in {"404", "NoSuchKey", "NotFound"}:
                return None
            raise s3_error(uri, e) from e
        except botocore.exceptions.BotoCoreError as e:
            raise s3_error(uri, e) from e
        return ObjectInfo(uri, "etag:" + meta["ETag"].strip('"'), meta["ContentLength"])
    return _local_info(uri) if os.path.isfile(uri) else None


_OTHER_CODECS = (".bz2", ".xz", ".zst")
"""Compressions smart_open reads by name; local plain and ``.gz`` files need neither it nor boto3."""


def preload() -> None:
    """Import now what S3 needs (smart_open, and boto3 with it; 0.1-0.3 s): a worker does it before its
    first job, a pool once before forking (its workers share the modules). Local files need neither."""
    import boto3  # noqa: F401
    import smart_open  # noqa: F401


def open_read(uri: str) -> IO[bytes]:
    """A streaming binary reader, decompressed by extension (``.gz``); memory does not grow with size."""
    if is_s3(uri):
        import smart_open  # here, like boto3: commands that read no S3 object start faster

        with _s3_errors(uri):
            return smart_open.open(uri, "rb", transport_params={"client": client()})
    try:
        if uri.endswith(".gz"):
            return gzip.open(uri, "rb")
        if uri.endswith(_OTHER_CODECS):
            import smart_open

            return smart_open.open(uri, "rb")
        return open(uri, "rb")
    except OSError as e:
        raise InputError(f"{uri}: cannot open ({e.strerror or e})") from e


@contextlib.contextmanager
def write_atomic(uri: str, metadata: dict[str, str] | None = None) -> Iterator[IO[bytes]]:
    """Write ``uri`` whole or not at all, compressed by extension.

    S3: a multipart upload completed on success and aborted on error (``S3_PART_SIZE`` bytes
    buffered in memory). Local: a temporary file in the same folder renamed into place.
    ``metadata`` becomes S3 object metadata (local files get it through :func:`write_json`).
    """
    if is_s3(uri):
        import smart_open

        params: dict[str, Any] = {"client": client(), "min_part_size": S3_PART_SIZE}
        if metadata:
            params["client_kwargs"] = {"S3.Client.create_multipart_upload": {"Metadata": metadata}}
        with _s3_errors(uri), smart_open.open(uri, "wb", transport_params=params) as out:
            yield out
        return
    folder, name = os.path.split(uri)
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=folder)
    try:
        with open(fd, "wb") as raw:
            # The gzip header names the output, not the temporary file.
            out = gzip.GzipFile(filename=name, mode="wb", fileobj=raw) if uri.endswith(".gz") else raw
            with out:
                yield out
        os.chmod(tmp, 0o644)
        os.replace(tmp, uri)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_json(uri: str, obj: dict[str, Any]) -> None:
    with write_atomic(uri) as out:
        out.write(json.dumps(obj, indent=2, sort_keys=True).encode() + b"\n")


def read_json(uri: str) -> dict[str, Any] | None:
    """A small JSON object, or None when it is absent or unreadable."""
    try:
        if is_s3(uri):
            bucket, key = split_s3(uri)
            body = client().get_object(Bucket=bucket, Key=key)["Body"].read()
        else:
            with open(uri, "rb") as f:
                body = f.read()
        obj = json.loads(body)
    except (OSError, ValueError, botocore.exceptions.ClientError):
        return None
    return obj if isinstance(obj, dict) else None


def read_lineage(output_uri: str) -> dict[str, str] | None:
    """What made an existing output (S3 object metadata, or the local sidecar), or None."""
    if is_s3(output_uri):
        bucket, key = split_s3(output_uri)
        try:
            return dict(client().head_object(Bucket=bucket, Key=key).get("Metadata", {}))
        except botocore.exceptions.ClientError as e:
            if e.response.get("Error", {}).get("Code") in {"404", "NoSuchKey", "NotFound"}:
                return None
            raise s3_error(output_uri, e) from e
    if not os.path.isfile(output_uri):
        return None
    meta = read_json(output_uri + LINEAGE_SUFFIX)
    return {k: str(v) for k, v in meta.items()} if meta else None


def delete(uri: str) -> None:
    """Remove a file if it exists."""
    if is_s3(uri):
        bucket, key = split_s3(uri)
        with _s3_errors(uri):
            client().delete_object(Bucket=bucket, Key=key)
        return
    with contextlib.suppress(FileNotFoundError):
        os.unlink(uri)


# ----------------------------------------------------------------- byte ranges, pinned to a version


def _changed(uri: str) -> InputError:
    return InputError(f"{uri}: changed since it was dispatched; dispatch it again")


def _if_match(uri: str, version: str) -> str:
    if not version.startswith("etag:"):
        raise InputError(f"{uri}: version {version!r} is not an S3 ETag")
    return '"' + version.removeprefix("etag:") + '"'


def _get_range(uri: str, version: str, start: int, end: int) -> Any:
    """S3 body of bytes [start, end) if the object is still ``version`` (else the file fails); None past its end."""
    bucket, key = split_s3(uri)
    try:
        return client().get_object(
            Bucket=bucket, Key=key, Range=f"bytes={start}-{end - 1}", IfMatch=_if_match(uri, version)
        )["Body"]
    except botocore.exceptions.ClientError as e:
        code = str(e.response.get("Error", {}).get("Code", ""))
        if code == "InvalidRange":
            return None
        if code in {"PreconditionFailed", "412"}:
            raise _changed(uri) from e
        raise s3_error(uri, e) from e
    except botocore.exceptions.BotoCoreError as e:
        raise s3_error(uri, e) from e


def _open_local(uri: str, version: str) -> IO[bytes]:
    try:
        f = open(uri, "rb")  # noqa: SIM115 - returned to the caller
    except OSError as e:
        raise InputError(f"{uri}: cannot open ({e.strerror or e})") from e
    st = os.fstat(f.fileno())
    if f"mtime:{st.st_mtime_ns}:size:{st.st_size}" != version:
        f.close()
        raise _changed(uri)
    return f


class _Bounded(io.RawIOBase):
    """At most ``left`` bytes of ``src``, then end of file.

    ``read`` hands ``src``'s bytes on as they are: no buffer layer copying them again (one
    costs more than the parsing saves at gigabytes).
    """

    def __init__(self, src: Any, left: int) -> None:
        self._src = src
        self._left = left

    def readable(self) -> bool:
        return True

    def read(self, size: int | None = -1) -> bytes:
        want = self._left if size is None or size < 0 else min(size, self._left)
        data = self._src.read(want) if want > 0 else b""
        self._left -= len(data)
        return data

    def readinto(self, buffer: Any) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def close(self) -> None:
        self._src.close()
        super().close()


def open_range(uri: str, version: str, start: int, end: int) -> IO[bytes]:
    """A streaming reader of bytes [start, end) of an uncompressed file, refused if it is no longer ``version``."""
    if is_s3(uri):
        body = _get_range(uri, version, start, end)
        src: Any = body if body is not None else io.BytesIO()
    else:
        src = _open_local(uri, version)
        src.seek(start)
    return _Bounded(src, end - start)  # type: ignore[return-value]


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
    if is_s3(prefix):
        bucket, key = split_s3(prefix)
        found: dict[str, int] = {}
        with _s3_errors(prefix):
            for page in client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=key):
                found.update((f"s3://{bucket}/{o['Key']}", o["Size"]) for o in page.get("Contents", []))
        return found
    if not os.path.isdir(prefix):
        return {}
    return {e.path: e.stat().st_size for e in os.scandir(prefix) if e.is_file()}


def delete_prefix(prefix: str) -> None:
    """Remove every file under ``prefix`` (and, locally, the folder itself and its parent if left empty)."""
    if is_s3(prefix):
        bucket, _ = split_s3(prefix)
        keys = [split_s3(uri)[1] for uri in list_sizes(prefix)]
        with _s3_errors(prefix):
            for i in range(0, len(keys), 1000):  # DeleteObjects takes 1,000 keys a call
                batch = [{"Key": k} for k in keys[i : i + 1000]]
                client().delete_objects(Bucket=bucket, Delete={"Objects": batch, "Quiet": True})
        return
    for path in list_sizes(prefix):
        delete(path)
    for folder in (prefix, os.path.dirname(prefix.rstrip("/"))):
        with contextlib.suppress(OSError):  # not empty: another file's parts are still there
            os.rmdir(folder)


def compose(uri: str, parts: list[tuple[str, int]], metadata: dict[str, str]) -> None:
    """Write S3 object ``uri`` as the concatenation of ``parts`` (URI, size), server-side, whole or not at all.

    A multipart upload whose parts are UploadPartCopy's of the given objects: no byte goes
    through this machine. S3 wants every part but the last to be at least ``S3_MIN_PART``: the
    caller checks. A part above ``S3_MAX_PART`` is copied in ranges.
    """
    bucket, key = split_s3(uri)
    with _s3_errors(uri):
        upload = client().create_multipart_upload(Bucket=bucket, Key=key, Metadata=metadata)["UploadId"]
    try:
        done: list[dict[str, Any]] = []
        for part, size in parts:
            source = dict(zip(("Bucket", "Key"), split_s3(part), strict=True))
            pieces = -(-size // S3_MAX_PART)
            for i in range(pieces):
                lo, hi = size * i // pieces, size * (i + 1) // pieces
                ranged = {"CopySourceRange": f"bytes={lo}-{hi - 1}"} if pieces > 1 else {}
                number = len(done) + 1
                with _s3_errors(part):
                    result = client().upload_part_copy(
                        Bucket=bucket, Key=key, UploadId=upload, PartNumber=number, CopySource=source, **ranged
                    )
                done.append({"PartNumber": number, "ETag": result["CopyPartResult"]["ETag"]})
        with _s3_errors(uri):
            client().complete_multipart_upload(Bucket=bucket, Key=key, UploadId=upload, MultipartUpload={"Parts": done})
    except BaseException:
        with contextlib.suppress(Exception):
            client().abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload)
        raise
