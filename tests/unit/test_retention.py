"""A batch's keys expire once it is finished, and stay while it has work (fakeredis)."""

from __future__ import annotations

from dispatcher.enqueue import add_files, create_batch, enqueue_batch
from dispatcher.plan import Options, Planned
from velosiped import keys
from velosiped.state import FileState, set_state
from velosiped.storage import ObjectInfo

OPTS = Options(model="/m/model.joblib", model_version="v1")


def planned(name: str, reason: str = "new") -> Planned:
    return Planned(ObjectInfo(f"/d/{name}.csv", "v1", 10), f"/d/{name}.out.csv", reason)


def batch_keys(batch_id: str, redis) -> list[str]:
    options = redis.hget(keys.batch(batch_id), "options").decode()
    return [keys.batch(batch_id), keys.batch_files(batch_id), options]


def test_a_finished_batch_expires_and_new_work_keeps_it(redis, monkeypatch):
    monkeypatch.setenv("VELO_BATCH_RETENTION", "100")
    # An empty batch (a `velo watch` with nothing yet) expires unless a file comes
    batch = create_batch(redis, "velo", "/d", OPTS)
    assert 0 < redis.ttl(keys.batch(batch.id)) <= 100
    # With a file queued, nothing of it expires
    assert add_files(redis, "velo", batch, OPTS, [planned("a")]) == 1
    assert [redis.ttl(k) for k in batch_keys(batch.id, redis)] == [-1, -1, -1]
    # Finished (its one file done), every key of it expires after the retention
    set_state(redis, batch.id, "/d/a.csv", FileState.DONE, rows=3)
    assert all(0 < redis.ttl(k) <= 100 for k in batch_keys(batch.id, redis))
    # New work (the watch finds another file) keeps it again
    assert add_files(redis, "velo", batch, OPTS, [planned("b")]) == 1
    assert [redis.ttl(k) for k in batch_keys(batch.id, redis)] == [-1, -1, -1]
    assert redis.hget(keys.batch(batch.id), "retention") == b"100"


def test_a_dispatch_that_enqueues_nothing_leaves_no_key(redis):
    for _ in range(1000):
        batch = enqueue_batch(redis, "velo", "/d", OPTS, [planned("a", "up to date"), planned("b", "up to date")])
        assert (batch.enqueued, batch.skipped) == (0, 2)
    assert redis.keys("*") == []
