"""Ctrl-C: every command exits 130 with one `velo: interrupted...` line, no traceback, no "Aborted!".

A terminal's Ctrl-C sends SIGINT to the whole foreground process group: here `os.killpg` on the
group `start_velo` gives each command, so `velo run`'s forked workers get it too.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest
from helpers import (
    assert_last_velo_line,
    assert_output_matches,
    dump_model,
    expected_output,
    find_dispatch_line,
    fit_model,
    read_output,
    slow_frame,
    wait_until,
    write_csv,
)
from slowmodel import WORKER_ENV, dump_slow_model

pytestmark = pytest.mark.e2e

ONE_A_JOB = ("--group-size", "1")
"""These tests count jobs and time slow files one by one: small files are not grouped here."""

BLOCK = 4096
SLOW = {"VELO_BLOCK_SIZE": str(BLOCK), **WORKER_ENV}
"""Small parser blocks, each predicted by a model sleeping 0.05 s (`slowmodel`): a file of N blocks
takes N / 20 seconds."""

EXIT_GRACE = 5.0
"""Seconds an interrupted command may take to exit (the contract says ~2 s; slack for a busy CI)."""


def ctrl_c(proc) -> float:
    """SIGINT to the process group, as a terminal's Ctrl-C; returns the seconds until it exited."""
    started = time.monotonic()
    os.killpg(proc.pid, signal.SIGINT)
    proc.wait(timeout=30)
    return time.monotonic() - started


def group_gone(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return True
    return False


def assert_interrupted(proc, *mentions: str) -> str:
    where = "\n" + proc.describe()
    assert proc.returncode == 130, "expected exit 130" + where
    out = proc.read_stdout() + proc.read_stderr()
    assert "Aborted!" not in out, "click's Aborted! printed" + where
    assert "Traceback" not in out, "traceback printed" + where
    mentioning = [line for line in proc.read_stderr().splitlines() if "interrupted" in line.lower()]
    assert len(mentioning) == 1, "expected one line saying interrupted" + where
    return assert_last_velo_line(proc.read_stderr(), "interrupted", *mentions)


def test_ctrl_c_stops_velo_run_at_once_and_the_same_command_finishes_the_rest(start_velo, velo, tmp_path):
    # Given six slowed files (2 s each) and velo run scoring them with two local workers
    data = tmp_path / "data"
    frames = {f"f{i}.csv": slow_frame(40, BLOCK, seed=500 + i) for i in range(6)}
    for name, frame in frames.items():
        write_csv(data / name, frame)
    model = fit_model()
    model_path = dump_slow_model(model, 0.05, tmp_path / "model.joblib")
    run = start_velo("run", data, "--model", model_path, "--workers", "2", *ONE_A_JOB, env=SLOW)
    wait_until(lambda: "enqueued" in run.read_stdout() or run.poll() is not None, 60, message="the dispatch line")
    time.sleep(1.5)  # the workers are mid-file
    assert run.poll() is None, run.describe()

    # When Ctrl-C reaches it and its workers
    seconds = ctrl_c(run)

    # Then it exits 130 at once, with one line and no traceback, its workers gone with it
    assert_interrupted(run, "run the same command again")
    assert seconds < EXIT_GRACE, f"velo run took {seconds:.1f} s to exit after Ctrl-C"
    wait_until(lambda: group_gone(run.pid), 5, message="the workers to exit")
    # And no partial output: each output there is whole, no temporary file is left
    leftovers = [p.name for p in data.iterdir() if p.name.startswith(".") or p.name.endswith(".tmp")]
    assert leftovers == [], leftovers
    done_before = {p.name.replace(".out.csv", ".csv") for p in data.glob("*.out.csv")}
    for name in done_before:
        assert_output_matches(
            read_output(data / name.replace(".csv", ".out.csv")), expected_output(frames[name], model)
        )
    assert len(done_before) < len(frames), "every file was done before Ctrl-C: the test did not interrupt anything"

    # When the same command runs again (not slowed)
    again = velo("run", data, "--model", model_path, "--workers", "2", *ONE_A_JOB, timeout=120, env=WORKER_ENV)

    # Then it scores exactly the files left, and every output is right
    assert again.returncode == 0, velo.describe(again)
    _, enqueued, skipped = find_dispatch_line(again.stdout)
    assert (enqueued, skipped) == (len(frames) - len(done_before), len(done_before)), velo.describe(again)
    for name, frame in frames.items():
        assert_output_matches(read_output(data / name.replace(".csv", ".out.csv")), expected_output(frame, model))


def test_ctrl_c_stops_dispatch_wait_and_leaves_the_batch_to_the_workers(
    start_velo, clean_redis, redis_client, tmp_path
):
    # Given a batch dispatched with --wait and no worker to run it
    data = tmp_path / "data"
    for i in range(3):
        write_csv(data / f"{i}.csv", slow_frame(1, BLOCK, seed=i))
    model_path = dump_model(fit_model(), tmp_path / "model.joblib")
    waiter = start_velo("dispatch", data, "--model", model_path, "--redis", clean_redis, "--wait", *ONE_A_JOB)
    wait_until(lambda: "enqueued" in waiter.read_stdout() or waiter.poll() is not None, 60, message="dispatch")
    time.sleep(0.5)
    assert waiter.poll() is None, waiter.describe()

    # When Ctrl-C reaches it
    seconds = ctrl_c(waiter)

    # Then it exits 130 with one line naming how to follow the batch, which is still queued
    line = assert_interrupted(waiter, "velo status")
    assert seconds < EXIT_GRACE, f"dispatch --wait took {seconds:.1f} s to exit after Ctrl-C"
    assert redis_client.llen("rq:queue:velo") == 3, line


@pytest.mark.parametrize("command", ["status", "watch", "worker"])
def test_ctrl_c_stops_status_watch_watch_and_worker_with_130(command, start_velo, clean_redis, tmp_path: Path):
    if command == "status":
        args = ["status", "--watch", "--interval", "0.2", "--redis", clean_redis]
    elif command == "worker":  # an idle worker: stops at once (a busy one finishes its file first)
        args = ["worker", "--redis", clean_redis]
    else:
        (tmp_path / "in").mkdir()
        model_path = dump_model(fit_model(), tmp_path / "model.joblib")
        args = ["watch", tmp_path / "in", "--model", model_path, "--interval", "0.2", "--redis", clean_redis]
    proc = start_velo(*args)
    time.sleep(2.5)  # started, and refreshed or listed at least once
    assert proc.poll() is None, proc.describe()
    seconds = ctrl_c(proc)
    assert_interrupted(proc, "stopped")
    assert seconds < EXIT_GRACE


@pytest.mark.parametrize("victim", ["velo run alone", "its whole process group"])
def test_kill_9_of_velo_run_then_the_same_command_scores_every_file(victim, start_velo, velo, tmp_path):
    # Given twelve slowed files (2 s each) and velo run scoring them with two local workers
    data = tmp_path / "data"
    frames = {f"f{i:02}.csv": slow_frame(40, BLOCK, seed=700 + i) for i in range(12)}
    for name, frame in frames.items():
        write_csv(data / name, frame)
    model = fit_model()
    model_path = dump_slow_model(model, 0.05, tmp_path / "model.joblib")
    # A dead worker's lease runs out in 3 s, and is looked for every second
    env = {**SLOW, "VELO_HEARTBEAT_TTL": "3", "VELO_MAINTENANCE_INTERVAL": "1"}
    run = start_velo("run", data, "--model", model_path, "--workers", "2", *ONE_A_JOB, env=env)
    wait_until(lambda: len(list(data.glob("*.out.csv"))) >= 2 or run.poll() is not None, 60, message="2 outputs")
    assert run.poll() is None, run.describe()

    # When it is killed with SIGKILL (nothing of it can clean up), alone or with its workers
    if victim == "velo run alone":
        os.kill(run.pid, signal.SIGKILL)
    else:
        os.killpg(run.pid, signal.SIGKILL)
    run.wait(timeout=10)
    # Then no worker of it serves on as an orphan: it finishes the file in hand and exits
    wait_until(lambda: group_gone(run.pid), 15, message="the killed run's workers to exit")
    done_before = len(list(data.glob("*.out.csv")))
    assert done_before < len(frames), "every file was done: the test killed nothing"

    # When the same command runs again (not slowed)
    again = velo(
        "run", data, "--model", model_path, "--workers", "2", *ONE_A_JOB, timeout=180, env={**WORKER_ENV, **env}
    )

    # Then it exits 0 only with every output there and right: no file skipped as "already queued"
    assert again.returncode == 0, velo.describe(again)
    for name, frame in frames.items():
        out = data / name.replace(".csv", ".out.csv")
        assert out.exists(), f"{out.name} missing after the second run\n" + velo.describe(again)
        assert_output_matches(read_output(out), expected_output(frame, model))
    leftovers = [p.name for p in data.iterdir() if p.name.startswith(".") or p.name.endswith(".tmp")]
    assert leftovers == [], leftovers
