"""What each storage error means (transient, refused, missing, the file's own), the backoff, and
which failures the next dispatch tries again."""

from __future__ import annotations

import io
import json
import random

import botocore.exceptions
import pytest
import urllib3.exceptions

from dispatcher.plan import Options, plan
from velosiped import storage
from velosiped.errors import InputError, StorageError, TransientError
from worker import backoff
from worker.scoring import score_stream

URI = "s3://bkt/in/1.csv"


def client_error(code: str, status: int, operation: str = "GetObject") -> botocore.exceptions.ClientError:
    response = {"Error": {"Code": code, "Message": "m"}, "ResponseMetadata": {"HTTPStatusCode": status}}
    return botocore.exceptions.ClientError(response, operation)  # type: ignore[arg-type]


def wrapped(outer: type[Exception], inner: BaseException) -> Exception:
    """``outer`` raised from ``inner``, as smart_open and pyarrow do."""
    try:
        try:
            raise inner
        except BaseException as e:
            raise outer("wrapped") from e
    except Exception as e:
        return e


@pytest.mark.parametrize(
    ("error", "brief"),
    [
        (client_error("SlowDown", 503), "503 SlowDown"),
        (client_error("503", 503, "HeadObject"), "503"),
        (client_error("InternalError", 500), "500 InternalError"),
        (client_error("RequestTimeout", 400), "400 RequestTimeout"),
        (wrapped(OSError, client_error("ServiceUnavailable", 503)), "503 ServiceUnavailable"),  # smart_open GET
        (wrapped(ValueError, client_error("SlowDown", 503)), "503 SlowDown"),  # smart_open CreateMultipartUpload
        (botocore.exceptions.ReadTimeoutError(endpoint_url="http://s3"), "ReadTimeoutError"),
        (botocore.exceptions.EndpointConnectionError(endpoint_url="http://s3"), "EndpointConnectionError"),
        (botocore.exceptions.ConnectionClosedError(endpoint_url="http://s3"), "ConnectionClosedError"),
        (wrapped(OSError, urllib3.exceptions.ProtocolError("Connection broken")), "ProtocolError"),
        (wrapped(OSError, ConnectionResetError(104, "reset")), "ConnectionResetError"),  # pyarrow's reader
        (TimeoutError("timed out"), "TimeoutError"),
    ],
)
def test_transient_errors_anywhere_in_the_chain(error, brief):
    found = storage.translate(URI, error)
    assert isinstance(found, TransientError), found
    assert found.brief == brief
    assert str(found).startswith(URI + ": ") and "\n" not in str(found)


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        (client_error("AccessDenied", 403), StorageError),
        (wrapped(ValueError, client_error("AccessDenied", 403, "CreateMultipartUpload")), StorageError),
        (client_error("NoSuchBucket", 404), StorageError),
        (botocore.exceptions.NoCredentialsError(), StorageError),
        (wrapped(OSError, client_error("NoSuchKey", 404)), InputError),
    ],
)
def test_permanent_storage_errors(error, kind):
    assert type(storage.translate(URI, error)) is kind


def test_errors_no_storage_library_raised_are_left_to_the_caller():
    assert storage.translate(URI, OSError("not a parquet file")) is None
    assert storage.translate(URI, ValueError("bad value")) is None
    assert storage.translate("/tmp/in/1.csv", KeyError("x")) is None


def test_transports_by_scheme():
    assert type(storage.get_transport("s3://b/k")).__name__ == "S3Transport"
    assert type(storage.get_transport("/tmp/x.csv")).__name__ == "LocalTransport"


def test_backoff_grows_exponentially_with_jitter_up_to_the_cap(monkeypatch):
    monkeypatch.setenv(backoff.BACKOFF_ENV, "1")
    monkeypatch.setenv(backoff.BACKOFF_MAX_ENV, "5")
    rng = random.Random(1)
    for retry, full in [(1, 1), (2, 2), (3, 4), (4, 5), (9, 5)]:
        waits = [backoff.compute_backoff(retry, rng=rng) for _ in range(200)]
        assert full / 2 <= min(waits) and max(waits) <= full
        assert max(waits) - min(waits) > full / 4  # jitter: workers do not come back in step
    monkeypatch.setenv(backoff.ATTEMPTS_ENV, "2")
    assert backoff.attempts() == 3


@pytest.mark.parametrize(
    ("kind", "reason"),
    [("input", "failed before"), (None, "failed before"), ("transient", "new"), ("config", "new")],
)
def test_only_failures_that_would_repeat_are_skipped(tmp_path, kind, reason):
    (tmp_path / "1.csv").write_text("a\n1\n")
    info = storage.head(str(tmp_path / "1.csv"))
    assert info is not None
    record = {"input_version": info.version, "model_version": "v", "params": "keep=*;proba=0"}
    if kind:
        record["kind"] = kind
    (tmp_path / "1.out.csv.error.json").write_text(json.dumps(record))
    [planned] = plan(str(tmp_path), Options(model="m", model_version="v"))
    assert planned.reason == reason


class _Dropping(io.RawIOBase):
    """A stream whose connection drops at the first read, as a botocore body does on a reset."""

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    pos = 0

    def seek(self, offset: int, whence: int = 0) -> int:
        self.pos = offset + (1000 if whence == 2 else 0)  # a 1,000-byte object
        return self.pos

    def tell(self) -> int:
        return self.pos

    def readinto(self, buffer) -> int:
        raise ConnectionResetError(104, "Connection reset by peer")  # an OSError: once taken for a bad file


def test_a_parquet_stream_that_drops_is_transient_not_a_bad_file():
    with pytest.raises(Exception) as raised:
        score_stream(_Dropping(), io.BytesIO(), object(), name=URI, parquet=True)
    assert not isinstance(raised.value, InputError), raised.value
    assert isinstance(storage.translate(URI, raised.value), TransientError), repr(raised.value)


def test_a_killed_worker_holds_the_queue_maintenance_lock_a_minute_at_most(redis):
    from velosiped.rqapi import MAINTENANCE_LOCK_TTL, make_queue
    from worker.runner import VeloWorker

    queue = make_queue(redis, "velo")
    assert queue.acquire_maintenance_lock()
    assert 0 < redis.ttl(queue.registry_cleaning_key) <= MAINTENANCE_LOCK_TTL <= 60
    assert not queue.acquire_maintenance_lock()  # one cleaner at a time, still
    worker = VeloWorker(["velo"], connection=redis)
    assert all(type(q).__name__ == "VeloQueue" for q in worker.queues)
