"""Idempotent dispatch: a file is redone only when it, the model or the options changed, or with --force."""

from __future__ import annotations

import pytest
from helpers import (
    assert_output_matches,
    csv_bytes,
    dump_model,
    expected_output,
    fit_model,
    make_frame,
    parse_dispatch,
    parse_dry_run,
    read_output,
)

pytestmark = pytest.mark.e2e

QUEUE_KEY = "rq:queue:velo"


def test_dry_run_explains_each_file_and_force_redoes_everything(s3, clean_redis, redis_client, velo, tmp_path):
    model = fit_model()
    model_path = dump_model(model, tmp_path / "model.joblib")
    other_model_path = dump_model(fit_model("multiclass"), tmp_path / "other.joblib")
    one, two = s3.uri("in/1.csv"), s3.uri("in/2.csv")
    outputs = {one: s3.uri("in/1.out.csv"), two: s3.uri("in/2.out.csv")}

    def dispatch(*extra, model=model_path):
        return velo("dispatch", s3.uri("in/"), "--model", model, "--redis", clean_redis, *extra, check=0)

    def plan(*extra, model=model_path):
        steps, would, skipped = parse_dry_run(dispatch("--dry-run", *extra, model=model).stdout)
        assert {src: out for src, (_, out) in steps.items()} == outputs
        return {src: reason for src, (reason, _) in steps.items()}, (would, skipped)

    # Given two CSVs, dispatched but not yet run
    frames = {"in/1.csv": make_frame(10, seed=61), "in/2.csv": make_frame(12, seed=62)}
    for key, frame in frames.items():
        s3.put(key, csv_bytes(frame))
    assert parse_dispatch(dispatch().stdout)[1:] == (2, 0)

    # When planned and dispatched again while still queued
    # Then both are already queued, and nothing is enqueued twice
    assert plan() == ({one: "already queued", two: "already queued"}, (0, 2))
    assert parse_dispatch(dispatch().stdout)[1:] == (0, 2)
    assert redis_client.llen(QUEUE_KEY) == 2

    # When a worker drains the queue and the folder is planned again
    velo("worker", "--burst", "--redis", clean_redis, check=0)
    # Then both are already done
    assert plan() == ({one: "already done", two: "already done"}, (0, 2))

    # When 1.csv is overwritten with new content
    frames["in/1.csv"] = make_frame(14, seed=99)
    s3.put("in/1.csv", csv_bytes(frames["in/1.csv"]))
    # Then only it would be redone, because its input changed; a dry run enqueues nothing
    assert plan() == ({one: "input changed", two: "already done"}, (1, 1))
    assert redis_client.llen(QUEUE_KEY) == 0

    # When dispatched with --force and drained
    assert parse_dispatch(dispatch("--force").stdout)[1:] == (2, 0)
    velo("worker", "--burst", "--redis", clean_redis, check=0)
    # Then both outputs are rewritten from the current inputs
    for key, frame in frames.items():
        out = read_output(s3.get(key.replace(".csv", ".out.csv")))
        assert_output_matches(out, expected_output(frame, model))

    # When planned with another model, other options, or --force
    # Then each file says why it would be redone
    assert plan(model=other_model_path) == ({one: "model changed", two: "model changed"}, (2, 0))
    assert plan("--proba") == ({one: "options changed", two: "options changed"}, (2, 0))
    assert plan("--force") == ({one: "forced", two: "forced"}, (2, 0))
    # And with the same model and options, nothing
    assert plan() == ({one: "already done", two: "already done"}, (0, 2))
    assert redis_client.llen(QUEUE_KEY) == 0
