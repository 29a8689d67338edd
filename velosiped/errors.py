"""Velosiped's error hierarchy: the CLI maps it to exit codes, the worker to fail-or-retry."""

from __future__ import annotations

import re

__all__ = ["ConfigError", "InputError", "StorageError", "TransientError", "VeloError", "redact"]


def redact(url: str) -> str:
    """A URL without its password, fit for messages, logs and status."""
    return re.sub(r"(://[^:/@]*:)[^@/]*@", r"\1***@", url)


class VeloError(Exception):
    """Base class of every error Velosiped reports to a user as one line."""


class ConfigError(VeloError):
    """Bad usage or configuration: bad URI, unreachable Redis, missing model. CLI exit code 2."""


class StorageError(ConfigError):
    """The store refuses for good (access denied, no such bucket, no credentials): retrying will not
    help, fixing the configuration will; a file failed so is tried again by the next dispatch."""


class InputError(VeloError):
    """A file (or the model on it) cannot be scored; deterministic, so the job fails once, not retried."""


class TransientError(VeloError):
    """Storage or network trouble that may pass: the job is retried with backoff.

    ``brief`` names the trouble in a few words (``503 SlowDown``, ``ReadTimeoutError``) for the
    one-line reason recorded once every attempt failed.
    """

    def __init__(self, message: str, brief: str = "") -> None:
        super().__init__(message)
        self.brief = brief or message
