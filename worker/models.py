"""Load a joblib model once per process and model version, and only from trusted places.

Unpickling runs arbitrary code, so a model is loaded only from ``VELO_MODEL_PREFIXES``
(when set) and, when the job pins one, only after its SHA-256 matched.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import hashlib
import logging
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from typing import IO, Any

import botocore.exceptions
from threadpoolctl import threadpool_limits

from velosiped import settings, storage
from velosiped.access import check_path, real_path
from velosiped.errors import InputError, VeloError
from velosiped.models import sha256_of
from worker import metrics

__all__ = ["digest_of", "load", "loads"]

log = logging.getLogger(__name__)

CACHE_DIR_ENV = settings.MODEL_CACHE.env
"""Where S3 models are downloaded before loading (default: ``~/.cache/velosiped/models``)."""

CACHE_SIZE = 2
"""Model versions kept loaded per process (two, so alternating batches do not reload)."""

_cache: dict[tuple[str, str], tuple[Any, str]] = {}
"""(URI, version) -> (the model, the SHA-256 of the very bytes it was unpickled from)."""
loads = 0
"""How many times this process unpickled a model (the cache is meant to keep it at one per version)."""


THREADS_ENV = settings.THREADS.env
"""Threads each worker process lets a model's BLAS/OpenMP use (set by `--processes`: cores / processes)."""


def limit_threads(threads: int | None = None) -> None:
    """Cap the model libraries' thread pools at ``threads`` (default: ``VELO_THREADS``), so N worker
    processes on N cores do not run N x N threads (HistGradientBoosting's OpenMP would by default)."""
    threads = threads or settings.THREADS.get()
    if threads:
        threadpool_limits(int(threads))


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's ``malloc_trim``, or None where the C library has none (musl, macOS)."""
    try:
        return ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return None


def release_freed_memory() -> None:
    """Give the OS back the heap pages a model load freed but glibc kept.

    Unpickling a scikit-learn forest reads every array and then copies it into the trees'
    own buffers: a load peaks near twice the model, and glibc keeps much of the freed half
    (120 MB of a 600 MB forest loaded in a fresh process; 500 MB when a worker forked from a
    parent holding another version loads it). A few ms per load.
    """
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


def _local_copy(uri: str, version: str) -> str:
    """A local path holding the model's bytes (S3 models are downloaded once per version)."""
    if not storage.is_s3(uri):
        return uri
    folder = settings.MODEL_CACHE.get()
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, hashlib.sha256(f"{uri}\0{version}".encode()).hexdigest() + ".joblib")
    if not os.path.exists(path):
        bucket, key = storage.split_s3(uri)
        try:  # only the version the dispatcher saw: a model replaced since is refused, not mislabelled
            if version.startswith("etag:"):
                got = storage.client().get_object(Bucket=bucket, Key=key, IfMatch=version.removeprefix("etag:"))
            else:
                got = storage.client().get_object(Bucket=bucket, Key=key)
            body = got["Body"]
            with storage.write_atomic(path) as dst:
                for chunk in body.iter_chunks(1 << 20):  # a dropped or stalled body fails here
                    dst.write(chunk)
        except VeloError:
            raise
        except Exception as e:
            if isinstance(e, botocore.exceptions.ClientError) and e.response.get("Error", {}).get("Code") in {
                "PreconditionFailed",
                "412",
            }:
                raise InputError(f"{uri}: model changed since dispatch; dispatch again to use the new version") from e
            found = storage.translate(uri, e)
            if found is None:
                raise
            raise found from e
    return path


@contextlib.contextmanager
def _private_copy(path: str) -> Iterator[tuple[IO[bytes], str]]:
    """The model's bytes in an unlinked temporary file (under the model cache), and their SHA-256."""
    folder = settings.MODEL_CACHE.get()
    os.makedirs(folder, exist_ok=True)
    with tempfile.TemporaryFile(dir=folder) as copy:
        try:
            with os.fdopen(os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0)), "rb") as f:
                digest = sha256_of(f, copy_to=copy)
        except OSError as e:
            raise InputError(f"{path}: cannot read model ({e.strerror or e})") from e
        copy.seek(0)
        yield copy, digest


def _check_pin(uri: str, digest: str, sha256: str | None) -> None:
    if sha256 and digest != sha256.lower().removeprefix("sha256:"):
        raise InputError(f"{uri}: model digest sha256:{digest} does not match --model-sha256 {sha256}")


def load(uri: str, version: str, sha256: str | None = None) -> Any:
    """The model at ``uri`` as of ``version``, from this process's cache after the first load.

    Raises:
        ConfigError: the model is outside the allowed prefixes.
        InputError: the model changed since dispatch, its digest does not match, or it does not load.
    """
    key = (uri, version)
    if key in _cache:  # every job's pin is checked, a model loaded without one (or preloaded) too
        model, digest = _cache[key]
        _check_pin(uri, digest, sha256)
        return model
    path = _local_copy(real_path(check_path(uri, settings.MODEL_PREFIXES)), version)
    global loads
    started = time.perf_counter()
    # The bytes hashed are the bytes unpickled: they are copied, as they are hashed, into a file
    # no other process can open (unlinked at once), and unpickled from there. A model renamed
    # over, or rewritten in place, after the hash is never the one loaded. The pin is checked
    # before any byte is unpickled. The path checked, resolved, is the one opened, with
    # O_NOFOLLOW: a symlink swapped in since is refused.
    with _private_copy(path) as (f, digest):
        _check_pin(uri, digest, sha256)
        if version.startswith("sha256:") and version != "sha256:" + digest:
            raise InputError(f"{uri}: model changed since dispatch; dispatch again to use the new version")
        try:
            import joblib  # and scikit-learn with it: only where a model is loaded

            model = joblib.load(f)
        except Exception as e:
            raise InputError(f"{uri}: cannot load model ({type(e).__name__}: {e})") from e
    if not hasattr(model, "predict"):
        raise InputError(f"{uri}: model of type {type(model).__name__} has no predict method")
    loads += 1
    limit_threads()
    seconds = time.perf_counter() - started
    metrics.model_loaded(seconds)
    log.info("%6.2fs model %s (%s) loaded", seconds, uri, version[:19])
    while len(_cache) >= CACHE_SIZE:  # drop the oldest: a new version replaces an old one
        _cache.pop(next(iter(_cache)))
    _cache[key] = (model, digest)
    release_freed_memory()  # after the eviction, so the dropped model's pages go back too
    return model


def digest_of(uri: str, version: str) -> str | None:
    """The SHA-256 of the bytes the loaded model at ``uri`` as of ``version`` was unpickled from."""
    held = _cache.get((uri, version))
    return held[1] if held else None
