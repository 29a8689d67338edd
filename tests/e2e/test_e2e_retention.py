"""Redis stays bounded: finished batches expire after VELO_BATCH_RETENTION, no-op dispatches leave nothing."""

from __future__ import annotations

import json
import time

import pytest
import redis
from helpers import csv_bytes, dump_model, find_dispatch_line, fit_model, make_frame

from dispatcher.enqueue import enqueue_batch
from dispatcher.plan import Options, Planned
from velosiped.models import version_of
from velosiped.storage import ObjectInfo

pytestmark = pytest.mark.e2e


def velo_keys(client: redis.Redis) -> list[str]:
    """Keys that are not RQ's own (RQ's finished jobs go after their result_ttl: RQ's business)."""
    return sorted(k.decode() for k in client.scan_iter(count=1000) if not k.startswith(b"rq:"))


def settle(client: redis.Redis, expected: int, timeout: float = 20.0) -> list[str]:
    """Velosiped's keys once Redis expired what is due (its expiry cycle works in the background)."""
    deadline = time.monotonic() + timeout
    while True:
        found = velo_keys(client)
        if len(found) <= expected or time.monotonic() > deadline:
            return found
        time.sleep(0.2)


def used_memory(client: redis.Redis) -> int:
    return int(client.info("memory")["used_memory"])


def test_a_thousand_no_op_dispatches_and_fifty_expired_batches_leave_redis_as_it_was(
    clean_redis, velo, tmp_path, monkeypatch
):
    client = redis.Redis.from_url(clean_redis)
    monkeypatch.setenv("VELO_BATCH_RETENTION", "2")
    model = str(dump_model(fit_model(), tmp_path / "m.joblib"))
    opts = Options(model=model, model_version=version_of(model))
    done = [
        Planned(ObjectInfo(str(tmp_path / f"{i}.csv"), "v1", 10), str(tmp_path / f"{i}.out.csv"), "up to date")
        for i in range(3)
    ]
    short = {"VELO_BATCH_RETENTION": "2"}  # `velo status` forgets expired batches older than its retention
    # Given one batch dispatched, scored and expired: Velosiped's scripts are loaded, RQ's queue known
    data = tmp_path / "data"
    for i in range(2):
        (data / f"warm{i}.csv").parent.mkdir(exist_ok=True)
        (data / f"warm{i}.csv").write_bytes(csv_bytes(make_frame(3, seed=i)))
    velo("dispatch", data, "--model", model, "--redis", clean_redis, check=0, env=short)
    velo("worker", "--burst", "--redis", clean_redis, check=0)
    time.sleep(2.5)
    velo("status", "--redis", clean_redis, check=0, env=short)
    before_keys = settle(client, 0)
    before_memory = used_memory(client)
    assert before_keys == [], before_keys

    # When 1,000 dispatches find nothing to do
    for _ in range(1000):
        batch = enqueue_batch(client, "velo", str(tmp_path), opts, done)
        assert (batch.enqueued, batch.skipped) == (0, 3)
    # Then they leave no key, not even an entry in velo:batches
    assert velo_keys(client) == []

    # When 50 batches of 2 small files each are enqueued, scored and left alone past their retention
    for b in range(50):
        folder = data / f"b{b}"
        folder.mkdir()
        planned = []
        for i in range(2):
            (folder / f"{i}.csv").write_bytes(csv_bytes(make_frame(3, seed=b * 2 + i)))
            info = ObjectInfo(str(folder / f"{i}.csv"), f"v{b}", 10)
            planned.append(Planned(info, str(folder / f"{i}.out.csv"), "new"))
        assert enqueue_batch(client, "velo", str(folder), opts, planned).enqueued == 2
    assert len(velo_keys(client)) > 100  # 50 batches: counters, files, options; velo:payloads, velo:batches
    velo("worker", "--burst", "--redis", clean_redis, check=0, timeout=180)
    status = json.loads(velo("status", "--json", "--redis", clean_redis, check=0).stdout)
    assert status["batches"] and all(b["finished"] for b in status["batches"]), json.dumps(status["batches"][:2])
    assert all(0 <= b["expires_in_seconds"] <= 2 for b in status["batches"]), status
    time.sleep(2.5)
    velo("status", "--redis", clean_redis, check=0, env=short)

    # Then Velosiped's keys are gone: the batches', their options', velo:batches and velo:payloads
    assert settle(client, 0) == []
    # And once RQ's own keys went too (finished jobs, after RESULT_TTL), Redis's memory is where it was
    for key in client.scan_iter("rq:*", count=1000):
        if key != b"rq:queues":
            client.delete(key)
    after_memory = used_memory(client)
    print(f"used_memory before {before_memory} after {after_memory} ({after_memory - before_memory:+d} B)")
    assert abs(after_memory - before_memory) < 64 * 1024, (before_memory, after_memory)


def test_a_dispatch_with_nothing_to_do_keeps_no_batch_and_wait_returns_at_once(clean_redis, velo, tmp_path):
    client = redis.Redis.from_url(clean_redis)
    model = str(dump_model(fit_model(), tmp_path / "m.joblib"))
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.csv").write_bytes(csv_bytes(make_frame(4)))
    velo("dispatch", tmp_path / "in", "--model", model, "--redis", clean_redis, check=0)
    velo("worker", "--burst", "--redis", clean_redis, check=0)
    batches = client.zcard("velo:batches")

    # When the same folder is dispatched again, with --wait
    started = time.monotonic()
    result = velo("dispatch", tmp_path / "in", "--model", model, "--redis", clean_redis, "--wait", check=0)

    # Then it says what it skipped, returns at once, and records no batch
    batch_id, enqueued, skipped = find_dispatch_line(result.stdout)
    assert (enqueued, skipped) == (0, 1)
    assert time.monotonic() - started < 30
    assert client.zcard("velo:batches") == batches
    assert not client.exists(f"velo:batch:{batch_id}")
    # And `velo status` shows when the finished batch expires (7 days by default)
    status = json.loads(velo("status", "--json", "--redis", clean_redis, check=0).stdout)
    [finished] = status["batches"]
    assert 604800 - 60 < finished["expires_in_seconds"] <= 604800
    table = velo("status", "--redis", clean_redis, check=0).stdout
    assert "expires" in table and "in 6d23h" in table, table
