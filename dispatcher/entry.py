"""`velo`'s entry point: a Ctrl-C while the CLI's libraries load ends as any other Ctrl-C.

Importing the CLI (click, rich, redis, RQ...) takes a few tenths of a second, before any
command can catch an interrupt: without this, a Ctrl-C then prints an import traceback.
"""

from __future__ import annotations

import os
import signal
from typing import Any

__all__ = ["main"]


def _while_loading(signum: int, frame: Any) -> None:
    from velosiped.errors import EXIT_INTERRUPTED  # here: this module imports nothing before its handler is set

    os.write(2, b"velo: interrupted; nothing was done\n")
    os._exit(EXIT_INTERRUPTED)  # nothing started yet: nothing to clean up


def main() -> None:
    signal.signal(signal.SIGINT, _while_loading)
    from dispatcher.cli import main as run

    signal.signal(signal.SIGINT, signal.default_int_handler)
    run()
