"""Velosiped's error hierarchy: the CLI maps it to exit codes, the worker to fail-or-retry."""

from __future__ import annotations

import re

__all__ = ["ConfigError", "InputError", "TransientError", "VeloError", "redact"]


def redact(url: str) -> str:
    """A URL without its password, fit for messages, logs and status."""
    return re.sub(r"(://[^:/@]*:)[^@/]*@", r"\1***@", url)


class VeloError(Exception):
    """Base class of every error Velosiped reports to a user as one line."""


class ConfigError(VeloError):
    """Bad usage or configuration: bad URI, unreachable Redis, missing model. CLI exit code 2."""


class InputError(VeloError):
    """A file (or the model on it) cannot be scored; deterministic, so the job fails once, not retried."""


class TransientError(VeloError):
    """Storage or network trouble that may pass: the job is retried with backoff."""
