"""Bad input never stops the fleet: a bad file fails alone, visibly, and is not retried forever."""

from __future__ import annotations

import json

import numpy as np
import pytest
from helpers import (
    assert_output_matches,
    csv_bytes,
    dump_model,
    expected_output,
    find_dispatch_line,
    fit_model,
    is_sidecar,
    make_frame,
    parse_dry_run,
    read_output,
)

pytestmark = pytest.mark.e2e


def binary_garbage(n: int = 4096, seed: int = 7) -> bytes:
    """Bytes no CSV reader can make sense of: NULs, invalid UTF-8, random noise."""
    return b"\x00\xff\xfe\x80" + np.random.default_rng(seed).bytes(n)


def test_bad_files_fail_alone_with_an_error_next_to_their_output(
    s3, clean_redis, redis_client, velo, start_velo, tmp_path
):
    # Given a good file, a file without feature column f2 and a binary file, in one folder
    model = fit_model()
    model_path = dump_model(model, tmp_path / "model.joblib")
    good = make_frame(11, seed=51)
    s3.put("in/good.csv", csv_bytes(good))
    s3.put("in/missing.csv", csv_bytes(make_frame(9, seed=52).drop(columns="f2")))
    s3.put("in/bad.csv", binary_garbage())
    # And a long-running worker
    worker = start_velo("worker", "--redis", clean_redis)

    # When the folder is dispatched and waited for
    result = velo("dispatch", s3.uri("in/"), "--model", model_path, "--redis", clean_redis, "--wait", timeout=90)

    # Then the command reports the failures with exit 1
    assert result.returncode == 1, velo.describe(result) + "\n--- worker ---\n" + worker.describe()
    assert "Traceback" not in result.stdout + result.stderr
    batch_id, enqueued, skipped = find_dispatch_line(result.stdout)
    assert (enqueued, skipped) == (3, 0)

    # And the good file has its output
    assert_output_matches(read_output(s3.get("in/good.out.csv")), expected_output(good, model))
    # And each bad file has no output but an error file naming it, with a one-line reason
    assert not s3.exists("in/missing.out.csv")
    assert not s3.exists("in/bad.out.csv")
    errors = {}
    for name in ("missing", "bad"):
        error = json.loads(s3.get(f"in/{name}.out.csv.error.json"))
        assert isinstance(error["error"], str) and error["error"].strip(), error
        assert "\n" not in error["error"].strip(), error
        assert error["file"].endswith(f"in/{name}.csv"), error
        errors[name] = error["error"]
    assert "f2" in errors["missing"]
    assert {k for k in s3.keys(prefix="") if not is_sidecar(k)} == {
        "in/good.csv",
        "in/good.out.csv",
        "in/missing.csv",
        "in/missing.out.csv.error.json",
        "in/bad.csv",
        "in/bad.out.csv.error.json",
    }

    # And velo status shows one done, two failed, each failure with its error
    status = json.loads(velo("status", "--json", "--redis", clean_redis, check=0).stdout)
    [batch] = [b for b in status["batches"] if b["id"] == batch_id]
    assert {k: batch[k] for k in ("total", "queued", "running", "done", "failed", "rows")} == {
        "total": 3,
        "queued": 0,
        "running": 0,
        "done": 1,
        "failed": 2,
        "rows": len(good),
    }
    failures = sorted(batch["failures"], key=lambda f: f["file"])
    assert len(failures) == 2, batch
    assert failures[0]["file"].endswith("in/bad.csv")
    assert failures[1]["file"].endswith("in/missing.csv")
    assert all(isinstance(f["error"], str) and f["error"] for f in failures)
    assert "f2" in failures[1]["error"]

    # And the failed jobs are not retried forever: nothing is left queued
    assert redis_client.llen("rq:queue:velo") == 0

    # And the worker is still up for the next batch
    assert worker.poll() is None, worker.describe()

    # When the folder is planned again
    dry = velo("dispatch", s3.uri("in/"), "--model", model_path, "--redis", clean_redis, "--dry-run", check=0)

    # Then the failed files are not redone by default, and the good one is done
    plan, would, skipped = parse_dry_run(dry.stdout)
    assert {src: reason for src, (reason, _) in plan.items()} == {
        s3.uri("in/good.csv"): "already done",
        s3.uri("in/missing.csv"): "failed before",
        s3.uri("in/bad.csv"): "failed before",
    }
    assert (would, skipped) == (0, 3)

    # And SIGTERM stops the idle worker
    worker.stop(timeout=30)


def test_retry_enqueues_the_failed_files_again(s3, clean_redis, velo, tmp_path):
    # Given a batch where one file failed for a missing column
    model = fit_model()
    model_path = dump_model(model, tmp_path / "model.joblib")
    good = make_frame(6, seed=71)
    s3.put("in/good.csv", csv_bytes(good))
    s3.put("in/fixme.csv", csv_bytes(make_frame(7, seed=72).drop(columns="f2")))
    dispatched = velo("dispatch", s3.uri("in/"), "--model", model_path, "--redis", clean_redis, check=0)
    batch_id = find_dispatch_line(dispatched.stdout)[0]
    velo("worker", "--burst", "--redis", clean_redis, check=0)
    assert s3.exists("in/fixme.out.csv.error.json") and not s3.exists("in/fixme.out.csv")

    # When the file is fixed, the batch retried and a worker drains the queue
    fixed = make_frame(7, seed=72)
    s3.put("in/fixme.csv", csv_bytes(fixed))
    velo("retry", batch_id, "--redis", clean_redis, check=0)
    velo("worker", "--burst", "--redis", clean_redis, check=0)

    # Then the fixed file has its output and the batch has no failure left
    assert_output_matches(read_output(s3.get("in/fixme.out.csv")), expected_output(fixed, model))
    status = json.loads(velo("status", batch_id, "--json", "--redis", clean_redis, check=0).stdout)
    [batch] = status["batches"]
    assert (batch["done"], batch["failed"], batch["failures"]) == (2, 0, [])
