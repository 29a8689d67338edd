"""`velo watch` with a real worker: files dropped into the bucket are scored, each once, across restarts."""

from __future__ import annotations

import json
import time

import pytest
from helpers import assert_output_matches, csv_bytes, dump_model, expected_output, fit_model, make_frame, read_output

pytestmark = pytest.mark.e2e


def wait_for(predicate, timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.2)
    return False


def test_dropped_files_are_scored_once_across_a_restart(s3, clean_redis, velo, start_velo, tmp_path):
    model = fit_model()
    model_path = str(dump_model(model, tmp_path / "m.joblib"))
    worker = start_velo("worker", "--redis", clean_redis)
    watcher = start_velo("watch", s3.uri("in/"), "--model", model_path, "--interval", "1", "--redis", clean_redis)

    # Given a running watch, when files are dropped one after the other
    frames = {f"in/{i}.csv": make_frame(5 + i, seed=i) for i in range(3)}
    for key, frame in frames.items():
        s3.put(key, csv_bytes(frame))
        # Then each is scored within a few seconds
        assert wait_for(lambda key=key: s3.exists(key.replace(".csv", ".out.csv"))), watcher.describe()
    for key, frame in frames.items():
        assert_output_matches(read_output(s3.get(key.replace(".csv", ".out.csv"))), expected_output(frame, model))

    # When the watch restarts, nothing done is enqueued again; a new file still is
    watcher.stop()
    first = {k: s3.head(k.replace(".csv", ".out.csv"))["LastModified"] for k in frames}
    again = start_velo("watch", s3.uri("in/"), "--model", model_path, "--interval", "1", "--redis", clean_redis)
    s3.put("in/9.csv", csv_bytes(make_frame(4, seed=9)))
    assert wait_for(lambda: s3.exists("in/9.out.csv")), again.describe()
    again.stop()
    worker.stop()
    assert {k: s3.head(k.replace(".csv", ".out.csv"))["LastModified"] for k in frames} == first
    assert "1 enqueued (1 in all)" in again.read_stdout()
    assert "3 enqueued" not in again.read_stdout()


def test_a_watched_file_dropped_again_that_fails_shows_its_failure_and_can_be_retried(
    clean_redis, velo, start_velo, tmp_path
):
    # Given a watch on a folder, with a worker, that scored a good file
    model = fit_model()
    model_path = str(dump_model(model, tmp_path / "m.joblib"))
    data = tmp_path / "in"
    data.mkdir()
    worker = start_velo("worker", "--redis", clean_redis)
    watcher = start_velo("watch", data, "--model", model_path, "--interval", "0.5", "--redis", clean_redis)
    (data / "a.csv").write_bytes(csv_bytes(make_frame(5, seed=1)))
    assert wait_for(lambda: (data / "a.out.csv").exists()), watcher.describe()
    batch_id = watcher.read_stdout().split("batch ", 1)[1].split()[0].rstrip(":")

    # When the file is dropped again, now without a feature column
    (data / "a.csv").write_bytes(csv_bytes(make_frame(5, seed=2).drop(columns="f2")))

    # Then the batch shows it failed, with its reason (not "done" from its first version)
    def batch():
        status = json.loads(velo("status", batch_id, "--json", "--redis", clean_redis, check=0).stdout)
        return status["batches"][0]

    assert wait_for(lambda: batch()["failed"] == 1), watcher.describe() + "\n" + json.dumps(batch())
    assert (data / "a.out.csv.error.json").exists()
    [failure] = batch()["failures"]
    assert "a.csv" in failure["file"] and "f2" in failure["error"], failure
    assert batch()["done"] == 0

    # And `velo retry` sees it: fixed and retried, it is done again
    watcher.stop()
    fixed = make_frame(6, seed=3)
    (data / "a.csv").write_bytes(csv_bytes(fixed))
    retried = velo("retry", batch_id, "--redis", clean_redis, check=0)
    assert f"batch {batch_id}: 1 enqueued again" in retried.stdout, velo.describe(retried)
    assert wait_for(lambda: batch()["done"] == 1 and batch()["failed"] == 0), json.dumps(batch())
    worker.stop()
    assert_output_matches(read_output((data / "a.out.csv").read_bytes()), expected_output(fixed, model))
