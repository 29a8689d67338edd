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


# Exit codes of every `velo` command, named (as dramatiq's RET_OK...); exit_code() alone maps an
# exception to one of them, and the CLI ends every command through it.
EXIT_OK = 0
"""Success (nothing to do is success too)."""
EXIT_FILES_FAILED = 1
"""Some files failed (`velo run`, `velo dispatch --wait`): their reasons are in `velo status`."""
EXIT_USAGE = 2
"""Usage, configuration or environment error: bad URI, Redis or the store unreachable, model missing."""
EXIT_SOFTWARE = 70
"""An unexpected exception: a bug in Velosiped (its traceback is printed); sysexits' EX_SOFTWARE."""
EXIT_INTERRUPTED = 130
"""Interrupted (Ctrl-C, SIGINT): 128 + SIGINT, as a shell reports it."""

__all__ += [
    "EXIT_FILES_FAILED",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_SOFTWARE",
    "EXIT_USAGE",
    "exit_code",
]


def exit_code(exc: BaseException) -> int:
    """The exit code a `velo` command ends with when ``exc`` reaches it.

    - ``KeyboardInterrupt`` (and click's ``Abort``, which is how click reports one): 130.
    - ``VeloError``: ``ConfigError``, ``InputError``, and ``TransientError`` too: 2. A transient
      error that reaches the CLI has outlived its retries (the store or Redis stayed unavailable),
      which the user fixes in the environment, not by running again at once: configuration.
    - Redis errors (connection lost or refused, a command refused): 2, the same reason.
    - click's usage errors keep click's 2; ``SystemExit`` and click's ``Exit`` keep their code.
    - Anything else is a bug: 70, with its traceback.
    """
    import click
    import redis

    if isinstance(exc, (KeyboardInterrupt, click.Abort)):
        return EXIT_INTERRUPTED
    if isinstance(exc, SystemExit):
        code = exc.code
        return code if isinstance(code, int) else EXIT_OK if code is None else EXIT_USAGE
    if isinstance(exc, click.exceptions.Exit):
        return exc.exit_code
    if isinstance(exc, (VeloError, redis.RedisError, click.ClickException)):
        return EXIT_USAGE
    return EXIT_SOFTWARE
