"""Queue logic on fakeredis: JSON jobs, one model load for many jobs, idempotent enqueue, batch counters."""

from __future__ import annotations

import json
import time
import zlib
from pathlib import Path

import pytest
from redis import Redis
from rq import Callback

from dispatcher.enqueue import enqueue_batch, payload_for, retry_failed
from dispatcher.plan import Options, plan
from dispatcher.status import describe
from tests.helpers import csv_bytes, dump_model, fit_model, make_frame, push_job
from velosiped import payloads
from velosiped.models import version_of
from velosiped.rqapi import make_queue
from worker import models
from worker.runner import VeloWorker


@pytest.fixture
def folder(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    for i in range(10):
        (data / f"{i}.csv").write_bytes(csv_bytes(make_frame(30, seed=i)))
    model = dump_model(fit_model(), tmp_path / "m.joblib")
    opts = Options(model=str(model), model_version=version_of(str(model)))
    return str(data), opts


def work(redis) -> None:
    VeloWorker([make_queue(redis, "velo")], connection=redis).work(burst=True)


def test_ten_jobs_on_one_model_load_it_once(redis, folder):
    # Given ten files dispatched with the same model
    source, opts = folder
    batch = enqueue_batch(redis, "velo", source, opts, list(plan(source, opts)))
    assert batch.enqueued == 10
    before = models.loads
    models._cache.clear()
    # When one worker runs them all
    work(redis)
    # Then the model was unpickled once, and every file is done
    assert models.loads - before == 1
    b = describe(redis, batch.id)
    assert (b["total"], b["done"], b["failed"], b["rows"]) == (10, 10, 0, 300)


def test_jobs_travel_as_json_and_carry_their_payload_apart(redis, folder):
    source, opts = folder
    enqueue_batch(redis, "velo", source, opts, list(plan(source, opts))[:1])
    job_id = redis.lrange("rq:queue:velo", 0, 0)[0].decode()
    raw = redis.hget(f"rq:job:{job_id}", "data")
    func, _instance, args, kwargs = json.loads(zlib.decompress(raw))  # RQ compresses, never pickles
    assert (func, args, kwargs) == ("worker.task.score", [], {})
    # Every value of the job hash fits a compact Redis hash (hash-max-listpack-value = 64)
    assert max(len(v) for v in redis.hgetall(f"rq:job:{job_id}").values()) <= 64
    # The payload waits under the job's id, its shared options once under their digest
    p = payloads.load(redis, job_id)
    assert p["input"].endswith("0.csv") and p["output"].endswith("0.out.csv")
    assert (p["model"], p["model_version"], p["keep"], p["proba"]) == (opts.model, opts.model_version, None, False)
    assert len(redis.keys("velo:options:*")) == 1


def test_a_worker_reads_each_payload_from_redis_once(redis, folder, monkeypatch):
    source, opts = folder
    enqueue_batch(redis, "velo", source, opts, list(plan(source, opts)))
    reads = []
    load = payloads.load
    monkeypatch.setattr(payloads, "load", lambda r, jid: reads.append(jid) or load(r, jid))
    work(redis)
    assert len(reads) == 10 and len(set(reads)) == 10  # when checked, not again when run
    assert redis.hlen("velo:payloads") == 0


def test_a_payload_is_dropped_once_its_file_is_done_or_failed(redis, folder, tmp_path):
    source, opts = folder
    (tmp_path / "data" / "1.csv").write_text("id,f0\n1,2\n")  # lacks the model's features: fails
    batch = enqueue_batch(redis, "velo", source, opts, list(plan(source, opts)))
    assert redis.hlen("velo:payloads") == 10
    work(redis)
    b = describe(redis, batch.id)
    assert (b["done"], b["failed"]) == (9, 1)
    assert redis.hlen("velo:payloads") == 0
    # The failed file can still be retried: its payload was kept with its failure
    assert retry_failed(redis, batch.id) == (1, [])
    assert redis.hlen("velo:payloads") == 1


@pytest.mark.parametrize(
    "tamper",
    [
        lambda r, jid, digest: r.hset("velo:payloads", jid, "not json"),
        lambda r, jid, digest: r.hset("velo:payloads", jid, json.dumps([digest, "x.csv"])),
        lambda r, jid, digest: r.set(f"velo:options:{digest}", '{"model": "/elsewhere/evil.joblib"}'),
    ],
    ids=["not json", "short", "options not matching their digest"],
)
def test_a_tampered_payload_is_refused_and_nothing_is_scored(redis, folder, tamper):
    source, opts = folder
    payloads._options.clear()
    enqueue_batch(redis, "velo", source, opts, list(plan(source, opts))[:1])
    job_id = redis.lrange("rq:queue:velo", 0, 0)[0].decode()
    digest = json.loads(redis.hget("velo:payloads", job_id))[0]
    tamper(redis, job_id, digest)
    work(redis)
    q = make_queue(redis, "velo")
    assert q.failed_job_registry.get_job_ids() == [job_id]
    assert "refused" in q.fetch_job(job_id).latest_result().exc_string
    assert not list((Path(source)).glob("*.out.csv*"))


def test_redispatch_enqueues_nothing_and_a_queued_file_is_not_enqueued_twice(redis, folder):
    source, opts = folder
    first = enqueue_batch(redis, "velo", source, opts, list(plan(source, opts)))
    # Given the jobs still queued, a second dispatch finds them already there
    second = enqueue_batch(redis, "velo", source, opts, list(plan(source, opts)))
    assert (first.enqueued, second.enqueued, second.skipped) == (10, 0, 10)
    assert redis.llen("rq:queue:velo") == 10
    # When they are done, the plan says so
    work(redis)
    assert {p.reason for p in plan(source, opts)} == {"already done"}


def test_failed_file_is_recorded_once_and_retry_requeues_it_after_a_fix(redis, folder, tmp_path):
    source, opts = folder
    bad = tmp_path / "data" / "bad.csv"
    bad.write_bytes(b"id,f0\n1,2\n")
    batch = enqueue_batch(redis, "velo", source, opts, list(plan(source, opts)))
    work(redis)
    b = describe(redis, batch.id)
    assert (b["done"], b["failed"]) == (10, 1)
    assert b["failures"] == [{"file": str(bad), "error": f"{bad}: missing feature columns: f1, f2, f3"}]
    error = json.loads((tmp_path / "data" / "bad.out.csv.error.json").read_text())
    assert error["error"] == f"{bad}: missing feature columns: f1, f2, f3"
    assert redis.llen("rq:queue:velo") == 0  # a deterministic error is not retried

    bad.write_bytes(csv_bytes(make_frame(5)))
    assert retry_failed(redis, batch.id) == (1, [])
    work(redis)
    b = describe(redis, batch.id)
    assert (b["done"], b["failed"], b["rows"]) == (11, 0, 305)
    assert not (tmp_path / "data" / "bad.out.csv.error.json").exists()


def test_a_job_naming_another_function_is_refused_without_running(redis, tmp_path):
    # Given a hostile job pushed straight into the queue
    marker = tmp_path / "pwned"
    q = make_queue(redis, "velo")
    hostile = q.enqueue_call("os.system", args=(f"touch {marker}",))
    # When a worker meets it
    work(redis)
    # Then it never ran, and it is failed in RQ's registry
    assert not marker.exists()
    assert hostile.id in q.failed_job_registry.get_job_ids()


def test_a_scoring_job_with_unknown_fields_or_hostile_callbacks_is_refused(redis, folder, tmp_path):
    source, opts = folder
    q = make_queue(redis, "velo")
    marker = tmp_path / "pwned"
    item = next(iter(plan(source, opts)))
    payload = payload_for(item, opts, "b1")
    extra = push_job(q, "extra", {**payload, "cmd": "x"})
    hostile_cb = push_job(q, "hostile-cb", payload, on_success=Callback("os.getcwd"))
    traversal = push_job(q, "traversal", {**payload, "output": "/tmp/../etc/x.out.csv"})
    inline = q.enqueue_call("worker.task.score_file", args=(payload,))  # the inline form is gone
    work(redis)
    assert not marker.exists()
    assert hostile_cb.id in q.failed_job_registry.get_job_ids()
    assert not (tmp_path / "data" / "0.out.csv").exists()  # neither refused job scored the file
    assert extra.id in q.failed_job_registry.get_job_ids()
    assert "unknown fields ['cmd']" in extra.latest_result().exc_string
    assert inline.id in q.failed_job_registry.get_job_ids()
    b = describe(redis, "b1")
    assert b["failures"] == [
        {"file": item.info.uri, "error": "/tmp/../etc/x.out.csv: relative or '..' paths are refused"}
    ]
    assert traversal.id


def test_paths_outside_allowed_prefixes_are_refused(redis, folder, monkeypatch, tmp_path):
    source, opts = folder
    monkeypatch.setenv("VELO_ALLOWED_PREFIXES", str(tmp_path / "elsewhere"))
    batch = enqueue_batch(redis, "velo", source, opts, list(plan(source, opts))[:1])
    work(redis)
    b = describe(redis, batch.id)
    assert b["failed"] == 1
    assert "outside VELO_ALLOWED_PREFIXES" in b["failures"][0]["error"]
    assert not list((tmp_path / "data").glob("*.out.csv*"))  # no output, no error file outside the prefix


def test_a_late_lease_expiry_callback_leaves_a_done_file_done(redis, folder, tmp_path):
    from rq.exceptions import AbandonedJobError

    from velosiped.state import FileState, set_state
    from worker import task

    # Given a file whose worker wrote its output and recorded it done, but had not yet dropped its
    # payload when its lease ran out (it was slow to heartbeat)
    source, opts = folder
    batch = enqueue_batch(redis, "velo", source, opts, list(plan(source, opts))[:1])
    job = make_queue(redis, "velo").jobs[0]
    p = payloads.load(redis, job.id)
    Path(p["output"]).write_text("id,prediction\n1,0\n")
    set_state(redis, batch.id, p["input"], FileState.RUNNING)
    set_state(redis, batch.id, p["input"], FileState.DONE, rows=1)
    error_file = Path(p["output"] + ".error.json")

    # When RQ's failure callback for the abandoned job lands afterwards
    job.retries_left = 0
    task.on_job_failure(job, redis, AbandonedJobError, AbandonedJobError("lease expired"), None)

    # Then the success stands: done in the batch, its output kept, no error file, nothing to retry
    b = describe(redis, batch.id)
    assert (b["done"], b["failed"]) == (1, 0), b
    assert not error_file.exists()
    assert retry_failed(redis, batch.id) == (0, [])
    assert Path(p["output"]).exists()

    # And a failure recorded while the success was being recorded (the callback read the file as
    # running, then the worker recorded it done) removes the error file it wrote
    task._fail(p, f"{p['input']}: its worker died on every attempt", redis, "abandoned")
    assert not error_file.exists()
    assert describe(redis, batch.id)["done"] == 1


class _Trap:
    """Unpickling it creates ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_a_model_rewritten_in_place_after_its_hash_is_never_the_one_unpickled(tmp_path, monkeypatch):
    # Given a pinned model, and a file system where the model is rewritten in place (same inode:
    # no rename) with a booby-trapped pickle just after it was hashed
    import hashlib

    import joblib

    from velosiped import models as identity

    model = fit_model()
    path = dump_model(model, tmp_path / "m.joblib")
    pin = hashlib.sha256(path.read_bytes()).hexdigest()
    marker = tmp_path / "went-off"
    joblib.dump(_Trap(marker), tmp_path / "trap.joblib")
    evil = (tmp_path / "trap.joblib").read_bytes()
    hashed = identity.sha256_of

    def hash_then_rewrite(f, copy_to=None):
        digest = hashed(f, copy_to) if copy_to is not None else hashed(f)
        with open(path, "r+b") as same_inode:
            same_inode.write(evil)
            same_inode.truncate()
        return digest

    monkeypatch.setattr(models, "sha256_of", hash_then_rewrite)
    monkeypatch.setattr(models, "_cache", {})

    # When a worker loads it with its pin
    loaded = models.load(str(path), "sha256:" + pin, pin)

    # Then what it unpickled is the model it hashed; the trap never went off
    assert not marker.exists()
    assert type(loaded) is type(model)
    assert (
        loaded.predict(make_frame(5)[list(model.feature_names_in_)])
        == model.predict(make_frame(5)[list(model.feature_names_in_)])
    ).all()


def test_a_worker_leaves_its_pubsub_channel_without_waiting_on_its_thread(clean_redis):
    # Given a worker on a real redis-server, subscribed to its channel (RQ's pub/sub thread running)
    conn = Redis.from_url(clean_redis)
    worker = VeloWorker([make_queue(conn, "velo")], connection=conn)
    worker.subscribe()
    time.sleep(0.2)  # the thread is waiting for messages
    send = worker.pubsub.unsubscribe

    def unsubscribe_then_lag() -> None:  # this thread descheduled after sending, as on a busy machine
        send()
        time.sleep(0.2)

    worker.pubsub.unsubscribe = unsubscribe_then_lag
    # When it leaves (as at every exit)
    started = time.monotonic()
    worker.unsubscribe()
    # Then its thread ends on the reply. In RQ's own order (unsubscribe, then stop) the thread got the
    # reply first and went on waiting for a subscription: RQ's join gave up after 1 s, at every exit.
    assert time.monotonic() - started < 0.9
    assert not worker.pubsub_thread.is_alive()
