"""A model's identity: where it is and which version, as the dispatcher pins it and workers check it."""

from __future__ import annotations

import hashlib
import os
from typing import BinaryIO

from velosiped import storage
from velosiped.errors import ConfigError

__all__ = ["sha256_file", "sha256_of", "version_of"]


def sha256_of(f: BinaryIO, copy_to: BinaryIO | None = None) -> str:
    """The SHA-256 of what is left to read in ``f``, read 1 MiB at a time (and written to ``copy_to``)."""
    digest = hashlib.sha256()
    while chunk := f.read(1 << 20):
        digest.update(chunk)
        if copy_to is not None:
            copy_to.write(chunk)
    return digest.hexdigest()


def sha256_file(path: str) -> str:
    with open(path, "rb") as f:
        return sha256_of(f)


def version_of(uri: str) -> str:
    """The model's version: ``sha256:<hex>`` of a local file, ``etag:<etag>`` of an S3 object.

    Raises:
        ConfigError: the model does not exist.
    """
    if storage.is_s3(uri):
        info = storage.head(uri)
        if info is None:
            raise ConfigError(f"{uri}: model not found; check --model")
        return info.version
    if not os.path.isfile(uri):
        raise ConfigError(f"{uri}: model not found; check --model")
    return "sha256:" + sha256_file(uri)
