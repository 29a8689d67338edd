"""`velo status` on fakeredis: the ETA of a batch, the workers alive, and --watch's refreshes."""

from __future__ import annotations

import io
import json
import time

import pytest
from rich.console import Console

from dispatcher import status
from worker import keys
from worker.runner import VeloWorker, make_queue


def batch(redis, batch_id: str, **counters) -> None:
    redis.zadd(keys.BATCHES, {batch_id: time.time()})
    redis.hset(keys.batch(batch_id), mapping=counters)


def test_eta_is_the_files_left_at_the_pace_so_far(redis):
    # Given 10 files, 4 finished in the 20 s since the batch started
    batch(redis, "b1", total=10, done=3, failed=1, running=2, queued=4, started_at=time.time() - 20)
    b = status.describe(redis, "b1")
    # Then the 6 left need about 30 s
    assert b["eta_seconds"] == pytest.approx(30, abs=1)


def test_eta_is_unknown_before_a_file_finished_and_zero_once_all_did(redis):
    batch(redis, "new", total=5, queued=5)
    batch(redis, "started", total=5, running=1, queued=4, started_at=time.time() - 3)
    now = time.time()
    batch(redis, "over", total=2, done=1, failed=1, started_at=now - 5, updated_at=now)
    assert status.describe(redis, "new")["eta_seconds"] is None
    assert status.describe(redis, "started")["eta_seconds"] is None
    assert status.describe(redis, "over")["eta_seconds"] == 0.0


def test_workers_alive_on_the_queue_with_their_state(redis):
    # Given two workers registered on `velo` and one on another queue
    one = VeloWorker([make_queue(redis, "velo")], connection=redis, name="w1")
    two = VeloWorker([make_queue(redis, "velo")], connection=redis, name="w2")
    other = VeloWorker([make_queue(redis, "other")], connection=redis, name="w3")
    for w in (one, two, other):
        w.register_birth()
    one.set_state("idle")
    two.set_state("busy")
    # Then status lists the two on `velo`, idle ones without a file
    found = status.workers(redis, "velo")
    assert [(w["name"], w["state"], w["file"]) for w in found] == [("w1", "idle", None), ("w2", "busy", None)]
    assert all(w["pid"] and w["host"] for w in found)


def snapshot():
    b = {
        "id": "b1",
        "total": 4,
        "queued": 1,
        "running": 1,
        "done": 2,
        "failed": 0,
        "rows": 2000,
        "rows_per_s": 100.0,
        "seconds": 20.0,
        "finished": False,
        "eta_seconds": 20.0,
        "failures": [{"file": "/d/[x].csv", "error": "/d/[x].csv: bad [red]input[/red]"}],
    }
    return [b], [{"name": "w1", "host": "h", "pid": 1, "state": "busy", "file": "/d/3.csv"}]


def test_render_shows_the_eta_the_failures_verbatim_and_the_workers():
    out = io.StringIO()
    batches, workers = snapshot()
    status.render(batches, Console(file=out, width=150), workers)
    text = out.getvalue()
    assert "ETA" in text and "20s" in text
    assert "failed b1: /d/[x].csv: bad [red]input[/red]" in text  # file names are not markup
    assert "Workers" in text and "/d/3.csv" in text and "busy" in text


def test_watch_on_a_terminal_updates_one_live_table():
    out = io.StringIO()
    calls = []

    def snap():
        calls.append(1)
        return snapshot()

    status.watch(snap, Console(file=out, width=150, force_terminal=True), interval=0.01, count=3)
    assert len(calls) == 3
    assert "Velosiped batches" in out.getvalue() and "/d/3.csv" in out.getvalue()


def test_watch_into_a_pipe_prints_each_refresh(capsys):
    out = io.StringIO()
    status.watch(snapshot, Console(file=out, width=150), interval=0.01, count=2)
    assert out.getvalue().count("Velosiped batches") == 2
    status.watch(snapshot, Console(file=out), interval=0.01, count=2, as_json=True)
    lines = capsys.readouterr().out.splitlines()
    assert [json.loads(line)["workers"][0]["file"] for line in lines] == ["/d/3.csv", "/d/3.csv"]


def test_watch_stops_quietly_on_ctrl_c():
    def interrupted():
        raise KeyboardInterrupt

    status.watch(interrupted, Console(file=io.StringIO()), interval=0.01)
