"""S3 (and MinIO and friends) through boto3 and smart_open, and what their errors mean.

Every botocore, urllib3 and smart_open error about an object becomes one of Velosiped's here
(:meth:`S3Transport.translate`): ``TransientError`` for what may pass (5xx, throttling,
timeouts, dropped connections), ``StorageError`` for a refusal that will not (access denied,
no such bucket), ``InputError`` for an object that is not there.
"""

from __future__ import annotations

import contextlib
import fnmatch
import functools
import io
import json
import os
import types
from collections.abc import Iterator
from functools import cache
from typing import IO, TYPE_CHECKING, Any

import botocore.exceptions

from velosiped import settings
from velosiped.errors import InputError, StorageError, TransientError, VeloError
from velosiped.storage.base import Bounded, ObjectInfo, causes, changed

if TYPE_CHECKING:
    from botocore.config import _RetryDict
    from mypy_boto3_s3 import S3Client
    from mypy_boto3_s3.type_defs import CompletedPartTypeDef, CopySourceTypeDef, ObjectIdentifierTypeDef

__all__ = ["S3Transport", "client", "split_s3"]

S3_PART_SIZE = 16 * 1024 * 1024
"""Bytes buffered in memory per S3 output before a multipart part is sent (S3's minimum is 5 MiB)."""

S3_MIN_PART = 5 * 1024 * 1024
"""S3's smallest part of a multipart upload (all but the last)."""

S3_MAX_PART = 5 * 1024 * 1024 * 1024
"""S3's largest part, and largest UploadPartCopy source range."""

READ_TIMEOUT_ENV = settings.S3_READ_TIMEOUT.env

_TRANSIENT_CODES = {
    "500",
    "502",
    "503",
    "504",
    "InternalError",
    "BadGateway",
    "GatewayTimeout",
    "SlowDown",
    "ServiceUnavailable",
    "RequestTimeout",
    "RequestTimeTooSkewed",
    "Throttling",
    "ThrottlingException",
    "RequestLimitExceeded",
    "TooManyRequests",
    "429",
}
_MISSING_CODES = {"404", "NoSuchKey", "NotFound"}
_DENIED_CODES = {"AccessDenied", "403", "InvalidAccessKeyId", "SignatureDoesNotMatch"}


_CONTENT_TYPES = (
    # A gzipped CSV is served as what it is, a gzip file: `text/csv` with `Content-Encoding: gzip`
    # would make browsers, curl --compressed and some SDKs decompress it on download, handing
    # back plain CSV under a .gz name (and bytes that match neither the size nor the ETag).
    (".gz", "application/gzip"),
    (".csv", "text/csv"),
    (".parquet", "application/vnd.apache.parquet"),
    (".json", "application/json"),
)


def content_type(uri: str) -> str | None:
    """The Content-Type an object written at ``uri`` gets, by its name; None: S3's default."""
    return next((kind for ext, kind in _CONTENT_TYPES if uri.endswith(ext)), None)


def split_s3(uri: str) -> tuple[str, str]:
    bucket, _, key = uri[len("s3://") :].partition("/")
    return bucket, key


@cache
def client() -> S3Client:
    """One boto3 S3 client per process.

    boto3's standard retry mode retries a failed request 5 times within seconds (``AWS_MAX_ATTEMPTS``,
    boto3's own setting, counts attempts in all); Velosiped retries the whole file after that, with a
    longer backoff.
    """
    import boto3  # imported here: commands that never touch S3 (`velo status`) start faster
    import botocore.config
    import smart_open.s3

    # smart_open would sleep 10 s x 6 on a connection error before multipart uploads, then raise
    # an OSError that names no cause: let the error through, the worker retries the file.
    smart_open.s3.RETRY.exceptions = []
    timeout = settings.S3_READ_TIMEOUT.get()
    attempts = os.environ.get("AWS_MAX_ATTEMPTS")
    retries: _RetryDict = {"mode": "standard"}
    if attempts:
        retries["total_max_attempts"] = int(attempts)
    else:
        retries["max_attempts"] = 5
    config = botocore.config.Config(
        retries=retries,
        read_timeout=timeout,
        connect_timeout=min(timeout, 60),
    )
    return boto3.client("s3", config=config)


def _client_error(uri: str, error: botocore.exceptions.ClientError) -> VeloError:
    code = str(error.response.get("Error", {}).get("Code", ""))
    status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    message = error.response.get("Error", {}).get("Message", "") or code
    if code in _TRANSIENT_CODES or (isinstance(status, int) and status >= 500):
        brief = f"{status} {code}" if status and str(status) != code else code
        return TransientError(f"{uri}: S3 error {code}: {message}", brief=brief)
    if code == "NoSuchBucket":
        return StorageError(f"{uri}: bucket does not exist; check the bucket name and AWS_ENDPOINT_URL")
    if code in _DENIED_CODES:
        return StorageError(f"{uri}: access denied by S3 ({code}); check the credentials and bucket policy")
    if code in _MISSING_CODES:
        return InputError(f"{uri}: no such object")
    if code in {"PreconditionFailed", "412"}:  # a read pinned to a version (IfMatch) met another
        return changed(uri)
    return InputError(f"{uri}: S3 error {code}: {message}")


def _from_smart_open(error: BaseException) -> bool:
    """Raised by smart_open's S3 code itself: its reader gives up on a body with an OSError naming no cause."""
    tb: types.TracebackType | None = error.__traceback__
    module = ""
    while tb is not None:
        module = tb.tb_frame.f_globals.get("__name__", "")
        tb = tb.tb_next
    return module == "smart_open.s3"


def translate(uri: str, error: BaseException) -> VeloError | None:
    """Velosiped's error for a botocore/urllib3/smart_open error anywhere in ``error``'s cause chain, or None."""
    import urllib3.exceptions

    for e in causes(error):
        if isinstance(e, botocore.exceptions.ClientError):
            return _client_error(uri, e)
        if isinstance(e, (botocore.exceptions.NoCredentialsError, botocore.exceptions.PartialCredentialsError)):
            return StorageError(f"{uri}: no AWS credentials found; set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY")
        if isinstance(e, botocore.exceptions.ParamValidationError):
            return None  # a bug of ours, not S3's trouble
        if isinstance(
            e, (botocore.exceptions.BotoCoreError, urllib3.exceptions.HTTPError, ConnectionError, TimeoutError)
        ):
            return TransientError(f"{uri}: cannot reach S3 ({type(e).__name__}: {e})", brief=type(e).__name__)
    if isinstance(error, OSError) and _from_smart_open(error):
        return TransientError(f"{uri}: S3 stream failed ({error})", brief="stream failed")
    return None


def _object_kwargs(uri: str, metadata: dict[str, str] | None) -> dict[str, Any]:
    """What an object written at ``uri`` carries besides its bytes: its lineage and Content-Type."""
    kwargs: dict[str, Any] = {"Metadata": metadata} if metadata else {}
    kind = content_type(uri)
    if kind:
        kwargs["ContentType"] = kind
    return kwargs


class S3Transport:
    """``s3://bucket/key`` URIs."""

    @contextlib.contextmanager
    def _errors(self, uri: str) -> Iterator[None]:
        try:
            yield
        except VeloError:
            raise
        except Exception as e:
            found = translate(uri, e)
            if found is None:
                raise
            raise found from e

    def translate(self, uri: str, error: BaseException) -> VeloError | None:
        return translate(uri, error)

    def list_files(
        self, source: str, patterns: tuple[str, ...], start_after: str | None = None
    ) -> Iterator[ObjectInfo]:
        # Paged, 1,000 keys a request: memory stays flat whatever the count.
        bucket, prefix = split_s3(source)
        if prefix and not prefix.endswith("/"):
            # A folder, as `aws s3 cp --recursive` takes it (in means in/, never in2/), unless
            # it is an object's exact key: that one file. The exact key sorts first of its prefix.
            with self._errors(source):
                first = client().list_objects_v2(Bucket=bucket, Prefix=prefix, MaxKeys=1).get("Contents", [])
            if first and first[0]["Key"] == prefix:
                obj = first[0]
                name = prefix.rsplit("/", 1)[-1]
                if (start_after is None or prefix > split_s3(start_after)[1]) and any(
                    fnmatch.fnmatch(name, p) for p in patterns
                ):
                    yield ObjectInfo(source, "etag:" + obj["ETag"].strip('"'), obj["Size"])
                return
            prefix += "/"
        paginator = client().get_paginator("list_objects_v2")
        if start_after:
            pages = paginator.paginate(Bucket=bucket, Prefix=prefix, StartAfter=split_s3(start_after)[1])
        else:
            pages = paginator.paginate(Bucket=bucket, Prefix=prefix)
        with self._errors(source):
            for page in pages:
                for obj in page.get("Contents", []):
                    key = obj["Key"]
                    name = key.rsplit("/", 1)[-1]
                    if any(fnmatch.fnmatch(name, p) for p in patterns):
                        yield ObjectInfo(f"s3://{bucket}/{key}", "etag:" + obj["ETag"].strip('"'), obj["Size"])

    def _head(self, uri: str) -> dict[str, Any] | None:
        bucket, key = split_s3(uri)
        try:
            return dict(client().head_object(Bucket=bucket, Key=key))
        except botocore.exceptions.ClientError as e:
            if e.response.get("Error", {}).get("Code") in _MISSING_CODES:
                return None
            raise _client_error(uri, e) from e
        except Exception as e:
            raise (translate(uri, e) or e) from e

    def head(self, uri: str) -> ObjectInfo | None:
        meta = self._head(uri)
        return None if meta is None else ObjectInfo(uri, "etag:" + meta["ETag"].strip('"'), meta["ContentLength"])

    def open_read(self, uri: str, version: str | None = None) -> IO[bytes]:
        import smart_open  # here, like boto3: commands that read no S3 object start faster

        params: dict[str, Any] = {"client": client()}
        if version is not None and version.startswith("etag:"):
            # Every GET of the object (smart_open reconnects at an offset after a dropped stream)
            # asks for the dispatched version: a replaced object fails the read, never mixes in.
            match = '"' + version.removeprefix("etag:") + '"'
            params["client_kwargs"] = {"S3.Client.get_object": {"IfMatch": match}}
        with self._errors(uri):
            return smart_open.open(uri, "rb", transport_params=params)

    def check_unchanged(self, uri: str, version: str) -> None:
        pass  # every read was pinned to the version (open_read, open_range)

    def _get_range(self, uri: str, version: str, start: int, end: int) -> Any:
        """Body of bytes [start, end) if the object is still ``version`` (else the file fails); None past its end."""
        bucket, key = split_s3(uri)
        if not version.startswith("etag:"):
            raise InputError(f"{uri}: version {version!r} is not an S3 ETag")
        match = '"' + version.removeprefix("etag:") + '"'
        try:
            return client().get_object(Bucket=bucket, Key=key, Range=f"bytes={start}-{end - 1}", IfMatch=match)["Body"]
        except botocore.exceptions.ClientError as e:
            code = str(e.response.get("Error", {}).get("Code", ""))
            if code == "InvalidRange":
                return None
            if code in {"PreconditionFailed", "412"}:
                raise changed(uri) from e
            raise _client_error(uri, e) from e
        except Exception as e:
            raise (translate(uri, e) or e) from e

    def open_range(self, uri: str, version: str, start: int, end: int) -> IO[bytes]:
        body = self._get_range(uri, version, start, end)
        return Bounded(body if body is not None else io.BytesIO(), end - start)  # type: ignore[return-value]

    @contextlib.contextmanager
    def write_atomic(
        self, uri: str, metadata: dict[str, str] | None = None, *, small: bool = False
    ) -> Iterator[IO[bytes]]:
        # A multipart upload completed on success and aborted on error; small, one PUT of the
        # buffered bytes on success and nothing on error.
        import smart_open

        params: dict[str, Any] = {"client": client(), "min_part_size": S3_PART_SIZE, "multipart_upload": not small}
        kwargs = _object_kwargs(uri, metadata)
        if kwargs:  # put_object too: smart_open writes an empty object with it
            params["client_kwargs"] = {"S3.Client.create_multipart_upload": kwargs, "S3.Client.put_object": kwargs}
        in_body = False  # an error of the caller's (reading its input, say) is not about this output
        try:
            with smart_open.open(uri, "wb", transport_params=params) as out:
                in_body = True
                yield out
                in_body = False
        except VeloError:
            raise
        except Exception as e:
            found = None if in_body else translate(uri, e)
            if found is None:
                raise
            raise found from e

    def read_json(self, uri: str) -> dict[str, Any] | None:
        bucket, key = split_s3(uri)
        try:
            body = client().get_object(Bucket=bucket, Key=key)["Body"].read()
            obj = json.loads(body)
        except (OSError, ValueError, botocore.exceptions.ClientError):
            return None
        return obj if isinstance(obj, dict) else None

    def read_lineage(self, output_uri: str) -> dict[str, str] | None:
        meta = self._head(output_uri)
        return None if meta is None else dict(meta.get("Metadata", {}))

    def write_lineage(self, output_uri: str, lineage: dict[str, str]) -> None:
        pass  # the object's own metadata holds it, written with the object (write_atomic, compose)

    def delete(self, uri: str) -> None:
        bucket, key = split_s3(uri)
        with self._errors(uri):
            client().delete_object(Bucket=bucket, Key=key)

    def delete_many(self, uris: list[str]) -> None:
        by_bucket: dict[str, list[str]] = {}
        for uri in uris:
            bucket, key = split_s3(uri)
            by_bucket.setdefault(bucket, []).append(key)
        failed: list[str] = []
        for bucket, keys in by_bucket.items():
            with self._errors(f"s3://{bucket}/{keys[0]}"):
                failed += _delete_keys(bucket, keys)
        if failed:
            raise OSError(f"{failed[0]}" + (f" (and {len(failed) - 1} more)" if len(failed) > 1 else ""))

    def list_sizes(self, prefix: str) -> dict[str, int]:
        bucket, key = split_s3(prefix)
        found: dict[str, int] = {}
        with self._errors(prefix):
            for page in client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=key):
                found.update((f"s3://{bucket}/{o['Key']}", o["Size"]) for o in page.get("Contents", []))
        return found

    def delete_prefix(self, prefix: str) -> None:
        bucket, _ = split_s3(prefix)
        keys = [split_s3(uri)[1] for uri in self.list_sizes(prefix)]
        with self._errors(prefix):
            _delete_keys(bucket, keys)  # leftovers are harmless (the caller says so): not raised

    def compose(self, uri: str, parts: list[tuple[str, int]], metadata: dict[str, str]) -> None:
        bucket, key = split_s3(uri)
        with self._errors(uri):
            kind = content_type(uri) or "binary/octet-stream"  # S3's own default
            created = client().create_multipart_upload(Bucket=bucket, Key=key, Metadata=metadata, ContentType=kind)
        upload = created["UploadId"]
        try:
            done: list[CompletedPartTypeDef] = []
            for part, size in parts:
                part_bucket, part_key = split_s3(part)
                source: CopySourceTypeDef = {"Bucket": part_bucket, "Key": part_key}
                pieces = -(-size // S3_MAX_PART)
                for i in range(pieces):
                    lo, hi = size * i // pieces, size * (i + 1) // pieces
                    number = len(done) + 1
                    with self._errors(part):
                        copy = functools.partial(
                            client().upload_part_copy,
                            Bucket=bucket,
                            Key=key,
                            UploadId=upload,
                            PartNumber=number,
                            CopySource=source,
                        )
                        result = copy(CopySourceRange=f"bytes={lo}-{hi - 1}") if pieces > 1 else copy()
                    done.append({"PartNumber": number, "ETag": result["CopyPartResult"]["ETag"]})
            with self._errors(uri):
                client().complete_multipart_upload(
                    Bucket=bucket, Key=key, UploadId=upload, MultipartUpload={"Parts": done}
                )
        except BaseException:
            with contextlib.suppress(Exception):
                client().abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload)
            raise


def _delete_keys(bucket: str, keys: list[str]) -> list[str]:
    """Delete ``keys`` of ``bucket``, 1,000 a DeleteObjects call; "uri: code" of each that was not."""
    failed: list[str] = []
    for i in range(0, len(keys), 1000):
        batch: list[ObjectIdentifierTypeDef] = [{"Key": k} for k in keys[i : i + 1000]]
        reply = client().delete_objects(Bucket=bucket, Delete={"Objects": batch, "Quiet": True})
        failed += [f"s3://{bucket}/{e.get('Key')}: {e.get('Code')}" for e in reply.get("Errors", [])]
    return failed
