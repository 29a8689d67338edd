"""What a `velo` command shows on the terminal, and how it ends: the consoles, and on an error or
Ctrl-C the one ``velo: ...`` line and the exit code :func:`velosiped.errors.exit_code` gives."""

from __future__ import annotations

import functools
import signal
import sys
from collections.abc import Callable
from typing import Any, NoReturn

import click
import redis
from rich.console import Console

from velosiped.errors import EXIT_INTERRUPTED, EXIT_SOFTWARE, VeloError, exit_code

__all__ = ["Interrupted", "console", "end", "err_console", "handle_errors", "message"]

console = Console(highlight=False, width=None if sys.stdout.isatty() else 120)
err_console = Console(stderr=True, highlight=False, soft_wrap=True)


class Interrupted(KeyboardInterrupt):
    """Ctrl-C, with what it left undone and what to do about it (the one line the user sees)."""


INTERRUPTED = "interrupted; run the same command again to finish"


def message(e: BaseException) -> str:
    """The one line (after ``velo: ``) a command ends with on ``e``."""
    if isinstance(e, Interrupted):
        return str(e)
    if isinstance(e, (KeyboardInterrupt, click.Abort)):
        return INTERRUPTED
    if isinstance(e, redis.ConnectionError):
        return f"lost the connection to Redis ({e}); check --redis or REDIS_URL"
    if isinstance(e, redis.ResponseError):
        return f"Redis refused a command ({e})"
    if isinstance(e, redis.RedisError):
        return f"Redis failed ({type(e).__name__}: {e}); check --redis or REDIS_URL"
    return str(e)


def end(e: BaseException) -> NoReturn:
    """The one way a command ends on an exception: one line on stderr, the code ``exit_code`` gives.

    A bug (an exception exit_code does not know) keeps its traceback."""
    code = exit_code(e)
    if code == EXIT_SOFTWARE:
        raise e
    if code == EXIT_INTERRUPTED:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut the line short
    err_console.print(f"velo: {message(e)}", markup=False)
    sys.exit(code)


def handle_errors(f: Callable[..., Any]) -> Callable[..., Any]:
    """Errors a user can fix, and Ctrl-C, end the command through ``end``: one line on stderr and
    ``exit_code``'s code, never a traceback (nor click's "Aborted!"). A command returns its exit code."""

    @functools.wraps(f)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return f(*args, **kwargs)
        except (VeloError, redis.RedisError, KeyboardInterrupt) as e:
            end(e)

    return wrapper
