"""One function decides every `velo` exit code: each kind of ending maps to the contract's code."""

from __future__ import annotations

import click
import pytest
import redis

from velosiped.errors import (
    EXIT_FILES_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_SOFTWARE,
    EXIT_USAGE,
    ConfigError,
    InputError,
    TransientError,
    VeloError,
    exit_code,
)


def test_the_named_codes_are_the_contracts():
    assert (EXIT_OK, EXIT_FILES_FAILED, EXIT_USAGE, EXIT_INTERRUPTED) == (0, 1, 2, 130)


@pytest.mark.parametrize(
    ("exc", "code"),
    [
        (VeloError("x"), EXIT_USAGE),
        (ConfigError("bad URI"), EXIT_USAGE),
        (InputError("bad file"), EXIT_USAGE),
        # A transient error reaching the CLI outlived its retries: the store or Redis stayed away.
        (TransientError("S3 503 five times"), EXIT_USAGE),
        (redis.ConnectionError("refused"), EXIT_USAGE),
        (redis.TimeoutError("slow"), EXIT_USAGE),
        (redis.ResponseError("WRONGTYPE"), EXIT_USAGE),
        (KeyboardInterrupt(), EXIT_INTERRUPTED),
        (click.Abort(), EXIT_INTERRUPTED),  # click's word for a Ctrl-C it caught itself
        (click.UsageError("no such option"), EXIT_USAGE),
        (click.BadParameter("not a number"), EXIT_USAGE),
        (click.ClickException("other"), EXIT_USAGE),
        (click.exceptions.Exit(0), EXIT_OK),
        (SystemExit(EXIT_FILES_FAILED), EXIT_FILES_FAILED),
        (SystemExit(None), EXIT_OK),
        (SystemExit("message"), EXIT_USAGE),
        (ValueError("a bug"), EXIT_SOFTWARE),
    ],
    ids=lambda v: type(v).__name__ if isinstance(v, BaseException) else str(v),
)
def test_exit_code(exc, code):
    assert exit_code(exc) == code


def test_a_subclass_of_keyboard_interrupt_is_still_an_interrupt():
    from dispatcher.cli import Interrupted

    assert exit_code(Interrupted("interrupted; run again")) == EXIT_INTERRUPTED


ENTRY_INTERRUPTED_WHILE_LOADING = """
import os, signal, sys, time

class CtrlCWhileLoading:
    def find_spec(self, name, path=None, target=None):
        if name == "dispatcher.cli":
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(5)
        return None

import dispatcher.entry
sys.meta_path.insert(0, CtrlCWhileLoading())
sys.argv = ["velo", "--version"]
dispatcher.entry.main()
"""


def test_ctrl_c_while_the_cli_loads_exits_130_with_one_line():
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-c", ENTRY_INTERRUPTED_WHILE_LOADING], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == EXIT_INTERRUPTED, result.stderr
    assert result.stderr == "velo: interrupted; nothing was done\n"
    assert result.stdout == ""
