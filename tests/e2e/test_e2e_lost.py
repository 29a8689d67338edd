"""Jobs removed behind Velosiped's back (`rq empty velo`) do not hang a batch: their files are
found lost from the queue, a waiting dispatch ends saying so, and `velo retry` enqueues them again."""

from __future__ import annotations

import json
import subprocess
import time

import pytest
import redis
from helpers import csv_bytes, dump_model, fit_model, make_frame, read_output
from rq import Queue
from rq.serializers import JSONSerializer

pytestmark = pytest.mark.e2e


def batch_of(velo, url: str, batch_id: str) -> dict:
    status = json.loads(velo("status", batch_id, "--json", "--redis", url, check=0).stdout)
    [batch] = status["batches"]
    return batch


def test_files_whose_jobs_were_removed_are_lost_and_retried(clean_redis, velo, start_velo, tmp_path):
    client = redis.Redis.from_url(clean_redis)
    model = str(dump_model(fit_model(), tmp_path / "m.joblib"))
    data = tmp_path / "in"
    data.mkdir()
    for i in range(3):
        (data / f"{i}.csv").write_bytes(csv_bytes(make_frame(5 + i, seed=i)))

    # Given a dispatch of 3 files waiting for its batch, with no worker running
    # (one job a file: this test counts jobs; a group's files are lost together, see test_groups.py)
    waiting = start_velo("dispatch", data, "--model", model, "--redis", clean_redis, "--wait", "--group-size", "1")
    deadline = time.monotonic() + 60
    while client.llen("rq:queue:velo") < 3:
        assert time.monotonic() < deadline and waiting.poll() is None, waiting.describe()
        time.sleep(0.1)
    [batch_id] = [b.decode() for b in client.zrange("velo:batches", 0, -1)]

    # When the queue's jobs are removed with RQ's own API (what `rq empty velo` does)
    assert Queue("velo", connection=client, serializer=JSONSerializer).empty() == 3

    # Then the waiting dispatch ends with exit 1 and one line naming the count and the remedy
    try:
        code = waiting.wait(timeout=60)
    except subprocess.TimeoutExpired:
        pytest.fail("dispatch --wait still waiting on lost files\n" + waiting.describe())
    assert code == 1, waiting.describe()
    line = (
        f"velo: 3 files of batch {batch_id} were lost from the queue (their jobs were removed); "
        f"run velo retry {batch_id}"
    )
    assert line in waiting.read_stderr().splitlines(), waiting.describe()
    assert "Traceback" not in waiting.read_stderr()

    # And `velo status` shows the 3 lost files, in JSON and in its table
    batch = batch_of(velo, clean_redis, batch_id)
    assert (batch["queued"], batch["lost"], batch["finished"]) == (3, 3, False), batch
    table = velo("status", batch_id, "--redis", clean_redis, check=0).stdout
    assert "lost" in table, table

    # When they are retried and a worker runs
    retried = velo("retry", batch_id, "--redis", clean_redis, check=0)
    assert f"batch {batch_id}: 3 enqueued again" in retried.stdout, velo.describe(retried)
    velo("worker", "--burst", "--redis", clean_redis, check=0)

    # Then all 3 are scored, and none is lost any more
    batch = batch_of(velo, clean_redis, batch_id)
    assert (batch["done"], batch["queued"], batch["lost"], batch["finished"]) == (3, 0, 0, True), batch
    for i in range(3):
        assert len(read_output(data / f"{i}.out.csv")) == 5 + i
    assert client.hlen("velo:payloads") == 0  # the removed jobs' payloads did not stay behind
