"""Velosiped's error hierarchy: the CLI maps it to exit codes, the worker to fail-or-retry."""

from __future__ import annotations

import re
from urllib.parse import unquote

__all__ = [
    "ConfigError",
    "FileFailed",
    "InputError",
    "StorageError",
    "TransientError",
    "VeloError",
    "one_line",
    "redact",
    "scrub",
]


_QUERY_PASSWORD = re.compile(r"([?&]password=)[^&#]*", re.IGNORECASE)


def redact(url: str) -> str:
    """A URL without its password, fit for messages, logs and status.

    Parsed, not matched: the userinfo is everything between ``://`` and the LAST ``@`` (a raw
    base64 password holds ``/``, others ``@`` or ``:``, and redis-py's own parser splits such a URL
    wherever it likes), so no fragment of a password survives, percent-encoded or not. ``user:pw``
    keeps its user; userinfo without a ``:`` is hidden whole (``redis://pw@host`` is a common way
    to write a password). A ``password=`` query parameter (``unix:///s.sock?password=pw``) goes too.
    Erring towards hiding: a ``@`` in another query value hides the host as well, never a password.
    """
    url = _QUERY_PASSWORD.sub(r"\1***", url)
    scheme, sep, rest = url.partition("://")
    at = rest.rfind("@")
    if not sep or at < 0:
        return url
    user, colon, _ = rest[:at].partition(":")
    return f"{scheme}://{user + ':***' if colon else '***'}{rest[at:]}"


def scrub(text: str, url: str) -> str:
    """``text`` (a library's error message about ``url``) without any piece of ``url``'s password.

    redis-py quotes bits of a URL it cannot parse (``Port could not be cast ... 's3cr'``): every
    piece of the password (split where a parser may split it) and its decoded form become ``***``.
    Callers drop such text altogether where they can; this is for text worth keeping.
    """
    hidden = [m.group(1) for m in re.finditer(r"[?&]password=([^&#]*)", url, re.IGNORECASE)]
    _, sep, rest = url.partition("://")
    if sep and "@" in rest:
        userinfo = rest[: rest.rfind("@")]
        hidden.append(userinfo.partition(":")[2] or userinfo)
    # Pieces under 3 characters stay: hiding every "a" would garble the message and tell little
    pieces = {p for h in hidden for p in (h, unquote(h), *re.split(r"[/@:?#&=%]", h)) if len(p) >= 3}
    for piece in sorted(pieces, key=len, reverse=True):  # the whole before its parts
        text = text.replace(piece, "***")
    return text


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


class FileFailed(Exception):
    """A file's failure is recorded (error file, batch state): its RQ job ends failed with this
    one-line reason as its ``exc_info``, and RQ does not run it again on its own (see worker.runner).

    Not a VeloError: it reports an outcome already recorded, never a new problem."""


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


def one_line(error: BaseException) -> str:
    """An error's text on one line, at most 300 characters (what a one-line message quotes of it)."""
    text = " ".join(str(error).split())
    return (text[:300] + "...") if len(text) > 300 else text
