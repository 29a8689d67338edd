"""`velo status` on fakeredis: the ETA of a batch, the workers alive, and --watch's refreshes."""

from __future__ import annotations

import io
import json
import threading
import time

import pytest
from rich.console import Console

from dispatcher import status
from dispatcher.enqueue import enqueue_batch
from dispatcher.plan import Options, Planned
from tests.helpers import dump_model, fit_model
from velosiped import keys
from velosiped.models import version_of
from velosiped.rqapi import make_queue
from velosiped.state import FileState, set_state
from velosiped.storage import ObjectInfo
from worker.runner import VeloWorker


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


def test_a_busy_worker_shows_the_file_and_shard_in_hand(redis, tmp_path):
    # Given a small file and a file in two shards, queued
    model = dump_model(fit_model(), tmp_path / "m.joblib")
    opts = Options(model=str(model), model_version=version_of(str(model)))
    small = Planned(ObjectInfo(str(tmp_path / "a.csv"), "v1", 10), str(tmp_path / "a.out.csv"), "new")
    halves = ((0, 50), (50, 100))
    big = Planned(ObjectInfo(str(tmp_path / "b.csv"), "v1", 100), str(tmp_path / "b.out.csv"), "new", halves)
    enqueue_batch(redis, "velo", str(tmp_path), opts, [small, big])
    first, _, second = [j.decode() for j in redis.lrange("rq:queue:velo", 0, -1)]
    # When two workers hold the small file and the big file's second shard
    busy = []
    for name, job_id in (("w1", first), ("w2", second)):
        w = VeloWorker([make_queue(redis, "velo")], connection=redis, name=name)
        w.register_birth()
        w.prepare_execution(make_queue(redis, "velo").fetch_job(job_id))  # as a worker starting it does
        busy.append(w)
    # Then status names them
    found = status.workers(redis, "velo")
    assert [w["file"] for w in found] == [str(tmp_path / "a.csv"), f"{tmp_path / 'b.csv'} (shard 2/2)"]


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


def test_watch_passes_ctrl_c_on_so_the_command_exits_130():
    def interrupted():
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        status.watch(interrupted, Console(file=io.StringIO()), interval=0.01)


def test_wait_wakes_as_the_last_file_finishes_not_after_a_poll(redis):
    # Given a batch of one running file, and a wait that would otherwise sleep 30 s between looks
    batch(redis, "b1", total=1, running=1, started_at=time.time())
    redis.hset(keys.batch_files("b1"), "s3://b/1.csv", "running")

    def finish() -> None:
        time.sleep(0.3)
        set_state(redis, "b1", "s3://b/1.csv", FileState.DONE, rows=10)

    threading.Thread(target=finish).start()
    started = time.monotonic()
    # When the file is done
    b = status.wait(redis, "b1", Console(file=io.StringIO()), poll=30)
    # Then the wait ends with it (the state script announces each outcome on the batch's channel)
    assert time.monotonic() - started < 10
    assert b["done"] == 1 and b["finished"]
