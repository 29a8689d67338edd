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
        # one job a file: the queue's length is checked (grouped files: test_e2e_groups.py)
        args = ("--redis", clean_redis, "--group-size", "1", *extra)
        return velo("dispatch", s3.uri("in/"), "--model", model, *args, check=0)

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


@pytest.mark.parametrize("where", ["s3", "local"])
def test_an_input_replaced_after_dispatch_is_never_scored_under_the_old_version(where, s3, clean_redis, velo, tmp_path):
    # Given a file dispatched (no worker yet), then replaced by new content
    model = fit_model()
    model_path = dump_model(model, tmp_path / "model.joblib")
    old, new = make_frame(10, seed=71), make_frame(14, seed=72)
    if where == "s3":
        source, output = s3.uri("in/"), s3.uri("in/1.out.csv")
        s3.put("in/1.csv", csv_bytes(old))

        def replace_input() -> None:
            s3.put("in/1.csv", csv_bytes(new))

        def read() -> bytes | None:
            return s3.get("in/1.out.csv") if s3.exists("in/1.out.csv") else None
    else:
        folder = tmp_path / "in"
        folder.mkdir()
        source, output = str(folder), str(folder / "1.out.csv")
        (folder / "1.csv").write_bytes(csv_bytes(old))

        def replace_input() -> None:
            (folder / "1.csv").write_bytes(csv_bytes(new))

        def read() -> bytes | None:
            path = folder / "1.out.csv"
            return path.read_bytes() if path.exists() else None

    dispatch = ["dispatch", source, "--model", model_path, "--redis", clean_redis]
    assert parse_dispatch(velo(*dispatch, check=0).stdout)[1] == 1
    replace_input()

    # When a worker takes the job
    velo("worker", "--burst", "--redis", clean_redis, check=0)

    # Then the file fails as changed since dispatch, and no output carries the old version's label
    batch = velo("status", "--json", "--redis", clean_redis, check=0)
    assert '"failed": 1' in batch.stdout and "changed since it was dispatched" in batch.stdout, batch.stdout
    assert read() is None, f"{output} was written from bytes it was not dispatched at"

    # And the next dispatch plans it again, and its output is the new content's
    assert parse_dispatch(velo(*dispatch, check=0).stdout)[1] == 1
    velo("worker", "--burst", "--redis", clean_redis, check=0)
    data = read()
    assert data is not None
    assert_output_matches(read_output(data), expected_output(new, model))


def test_a_new_version_that_fails_removes_the_older_output_and_is_failed_before_until_it_changes(
    clean_redis, velo, tmp_path
):
    # Given a file scored, then replaced by a version the model cannot score (a feature column gone)
    model = fit_model()
    model_path = dump_model(model, tmp_path / "model.joblib")
    folder = tmp_path / "in"
    folder.mkdir()
    source, output = folder / "1.csv", folder / "1.out.csv"
    source.write_bytes(csv_bytes(make_frame(10, seed=81)))
    dispatch = ["dispatch", folder, "--model", model_path, "--redis", clean_redis]
    velo(*dispatch, check=0)
    velo("worker", "--burst", "--redis", clean_redis, check=0)
    assert output.exists()
    source.write_bytes(csv_bytes(make_frame(10, seed=82).drop(columns="f1")))

    # When the new version is dispatched and fails
    assert parse_dispatch(velo(*dispatch, check=0).stdout)[1] == 1
    velo("worker", "--burst", "--redis", clean_redis, check=0)

    # Then the older output is gone (no reader takes it for the current version), the reason is beside it
    assert not output.exists(), "an output made from the older version stayed beside the failure"
    assert not (folder / "1.out.csv.velo.json").exists()
    assert "missing feature columns: f1" in (folder / "1.out.csv.error.json").read_text()

    # And the failed version is not run again on every dispatch, until it changes
    steps, would, skipped = parse_dry_run(velo(*dispatch, "--dry-run", check=0).stdout)
    assert (would, skipped) == (0, 1) and steps[str(source)][0] == "failed before", steps
    source.write_bytes(csv_bytes(make_frame(10, seed=83)))
    assert parse_dispatch(velo(*dispatch, check=0).stdout)[1] == 1
    velo("worker", "--burst", "--redis", clean_redis, check=0)
    assert_output_matches(read_output(output), expected_output(make_frame(10, seed=83), model))
