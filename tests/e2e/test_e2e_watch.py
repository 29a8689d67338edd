"""`velo watch` with a real worker: files dropped into the bucket are scored, each once, across restarts."""

from __future__ import annotations

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
