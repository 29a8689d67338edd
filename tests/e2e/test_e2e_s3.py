"""`velo dispatch` + `velo worker --burst` on an S3 HTTP endpoint (moto) and a real redis-server."""

from __future__ import annotations

import gzip
import json
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from helpers import (
    GZIP_MAGIC,
    assert_output_matches,
    csv_bytes,
    dump_model,
    expected_output,
    fit_model,
    gz_bytes,
    is_sidecar,
    make_frame,
    model_bytes,
    output_key,
    parse_dispatch,
    parse_dry_run,
    read_output,
)

pytestmark = pytest.mark.e2e

QUEUE_KEY = "rq:queue:velo"


def data_keys(s3, prefix: str = "") -> list[str]:
    """Keys under prefix, lineage sidecars left out."""
    return [key for key in s3.keys(prefix) if not is_sidecar(key)]


def put_inputs(s3, frames: dict) -> None:
    for key, frame in frames.items():
        s3.put(key, gz_bytes(frame) if key.endswith(".gz") else csv_bytes(frame))


def assert_outputs(s3, frames: dict, model, **options) -> None:
    for key, frame in frames.items():
        assert_output_matches(read_output(s3.get(output_key(key))), expected_output(frame, model, **options))


def status_json(velo, redis_url: str, *args) -> dict:
    result = velo("status", *args, "--json", "--redis", redis_url, check=0)
    return json.loads(result.stdout)


def the_batch(status: dict, batch_id: str) -> dict:
    found = [batch for batch in status["batches"] if batch["id"] == batch_id]
    assert len(found) == 1, f"batch {batch_id} not in status: {status}"
    return found[0]


@pytest.fixture
def local_model(model, tmp_path):
    return dump_model(model, tmp_path / "model.joblib")


def test_dispatch_then_burst_worker_scores_every_file_once_with_an_s3_model(s3, clean_redis, redis_client, velo, model):
    # Given five CSVs under s3://velo-test/in/ and the model in the bucket
    frames = {f"in/{i}.csv": make_frame(10 + i, seed=i) for i in range(1, 6)}
    put_inputs(s3, frames)
    s3.put("models/m.joblib", model_bytes(model))
    model_uri = s3.uri("models/m.joblib")

    # When the folder is dispatched
    # (one job a file: the queue's length is checked; grouped small files: test_e2e_groups.py)
    first = velo("dispatch", s3.uri("in/"), "--model", model_uri, "--redis", clean_redis, "--group-size", "1", check=0)

    # Then five jobs are enqueued on the `velo` queue
    batch_id, enqueued, skipped = parse_dispatch(first.stdout)
    assert (enqueued, skipped) == (5, 0)
    assert "5 enqueued" in first.stdout
    assert redis_client.llen(QUEUE_KEY) == 5

    # When a burst worker drains the queue
    velo("worker", "--burst", "--redis", clean_redis, check=0)

    # Then every input has exactly its expected output next to it and the queue is empty
    assert data_keys(s3, "in/") == sorted([*frames, *map(output_key, frames)])
    assert_outputs(s3, frames, model)
    assert redis_client.llen(QUEUE_KEY) == 0

    # And velo status reports the batch as done, with the rows scored
    batch = the_batch(status_json(velo, clean_redis), batch_id)
    assert {k: batch[k] for k in ("total", "queued", "running", "done", "failed", "rows")} == {
        "total": 5,
        "queued": 0,
        "running": 0,
        "done": 5,
        "failed": 0,
        "rows": sum(len(f) for f in frames.values()),
    }
    assert batch["failures"] == []
    only = status_json(velo, clean_redis, batch_id)
    assert [b["id"] for b in only["batches"]] == [batch_id]

    # When the same folder is dispatched again
    again = velo("dispatch", s3.uri("in/"), "--model", model_uri, "--redis", clean_redis, check=0)

    # Then nothing is enqueued: five skipped, and outputs are not taken as inputs
    _, enqueued, skipped = parse_dispatch(again.stdout)
    assert (enqueued, skipped) == (0, 5)
    assert "0 enqueued" in again.stdout and "5 skipped" in again.stdout
    assert redis_client.llen(QUEUE_KEY) == 0

    before = {key: obj["LastModified"] for key, obj in s3.objects("in/").items()}
    time.sleep(1.1)  # S3 LastModified has one-second resolution: a rewrite would show

    # When a sixth file arrives and the folder is dispatched and drained again
    frames6 = {"in/6.csv": make_frame(16, seed=6)}
    put_inputs(s3, frames6)
    third = velo("dispatch", s3.uri("in/"), "--model", model_uri, "--redis", clean_redis, check=0)
    _, enqueued, skipped = parse_dispatch(third.stdout)
    assert (enqueued, skipped) == (1, 5)
    assert "1 enqueued" in third.stdout
    velo("worker", "--burst", "--redis", clean_redis, check=0)

    # Then only the new file gets an output; the other objects are untouched
    assert_outputs(s3, frames6, model)
    after = {key: obj["LastModified"] for key, obj in s3.objects("in/").items()}
    assert {key: after[key] for key in before} == before
    assert {key for key in set(after) - set(before) if not is_sidecar(key)} == {"in/6.csv", "in/6.out.csv"}
    assert data_keys(s3, "in/") == sorted([*frames, *frames6, *map(output_key, [*frames, *frames6])])


def test_dispatch_with_a_local_model_path(s3, clean_redis, velo, model, local_model):
    # Given two CSVs in the bucket and the model on the local disk
    frames = {"in/x.csv": make_frame(12, seed=21), "in/sub/y.csv": make_frame(9, seed=22)}
    put_inputs(s3, frames)

    # When dispatched with the local model path and drained
    result = velo("dispatch", s3.uri("in/"), "--model", local_model, "--redis", clean_redis, check=0)
    assert parse_dispatch(result.stdout)[1:] == (2, 0)
    velo("worker", "--burst", "--redis", clean_redis, check=0)

    # Then both outputs are right, the nested one next to its input
    assert data_keys(s3) == sorted([*frames, *map(output_key, frames)])
    assert_outputs(s3, frames, model)


def test_dry_run_lists_more_than_1000_files_and_enqueues_nothing(s3, clean_redis, redis_client, velo, local_model):
    # Given 1,005 tiny CSVs: more than one S3 listing page
    body = csv_bytes(make_frame(3, seed=0))
    keys = [f"in/{i:04d}.csv" for i in range(1005)]
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda key: s3.put(key, body), keys))

    # When a dry run plans the folder
    result = velo("dispatch", s3.uri("in/"), "--model", local_model, "--redis", clean_redis, "--dry-run", check=0)

    # Then every one of the 1,005 files is planned as new, with its output
    plan, would, skipped = parse_dry_run(result.stdout)
    assert (would, skipped) == (1005, 0)
    assert plan == {s3.uri(key): ("new", s3.uri(output_key(key))) for key in keys}

    # And nothing was enqueued, no batch created, nothing written
    assert redis_client.llen(QUEUE_KEY) == 0
    assert status_json(velo, clean_redis)["batches"] == []
    assert len(s3.keys()) == 1005


def test_gzip_input_gives_gzip_output(s3, clean_redis, velo, model, local_model):
    # Given a gzip-compressed CSV
    frames = {"in/g.csv.gz": make_frame(40, seed=7)}
    put_inputs(s3, frames)

    # When dispatched and drained
    result = velo("dispatch", s3.uri("in/"), "--model", local_model, "--redis", clean_redis, check=0)
    assert parse_dispatch(result.stdout)[1:] == (1, 0)
    velo("worker", "--burst", "--redis", clean_redis, check=0)

    # Then the output is gzip too and decompresses to the expected CSV
    assert data_keys(s3) == ["in/g.csv.gz", "in/g.out.csv.gz"]
    raw = s3.get("in/g.out.csv.gz")
    assert raw[:2] == GZIP_MAGIC
    assert gzip.decompress(raw).startswith(b"id,f0,f1,f2,f3,prediction")
    assert_outputs(s3, frames, model)


def test_keep_and_proba_with_a_multiclass_model(s3, clean_redis, velo, tmp_path):
    # Given a three-class model and a CSV
    model = fit_model("multiclass")
    model_path = dump_model(model, tmp_path / "multi.joblib")
    frames = {"in/m.csv": make_frame(30, seed=8)}
    put_inputs(s3, frames)

    # When dispatched keeping only `id`, with class probabilities
    velo(
        "dispatch",
        s3.uri("in/"),
        "--model",
        model_path,
        "--redis",
        clean_redis,
        "--keep",
        "id",
        "--proba",
        check=0,
    )
    velo("worker", "--burst", "--redis", clean_redis, check=0)

    # Then the columns are exactly id, prediction, one probability per class in class order
    out = read_output(s3.get("in/m.out.csv"))
    assert list(out.columns) == ["id", "prediction", "proba_a", "proba_b", "proba_c"]
    assert_output_matches(out, expected_output(frames["in/m.csv"], model, keep=["id"], proba=True))


def test_output_prefix_keeps_relative_paths(s3, clean_redis, velo, model, local_model):
    # Given inputs at several depths under in/
    frames = {
        "in/3.csv": make_frame(5, seed=31),
        "in/x/1.csv": make_frame(6, seed=32),
        "in/y/z/2.csv": make_frame(7, seed=33),
    }
    put_inputs(s3, frames)

    # When dispatched with --output s3://velo-test/out/
    velo(
        "dispatch",
        s3.uri("in/"),
        "--model",
        local_model,
        "--redis",
        clean_redis,
        "--output",
        s3.uri("out/"),
        check=0,
    )
    velo("worker", "--burst", "--redis", clean_redis, check=0)

    # Then outputs land under out/ at the same relative paths, and nothing is written under in/
    assert data_keys(s3, "out/") == ["out/3.out.csv", "out/x/1.out.csv", "out/y/z/2.out.csv"]
    assert data_keys(s3, "in/") == sorted(frames)
    for key, frame in frames.items():
        out_key = "out/" + output_key(key).removeprefix("in/")
        assert_output_matches(read_output(s3.get(out_key)), expected_output(frame, model))


def test_header_only_input_gives_header_only_output(s3, clean_redis, velo, model, local_model):
    # Given a CSV with a header and no rows, next to a normal one
    frames = {"in/empty.csv": make_frame(0), "in/full.csv": make_frame(8, seed=41)}
    put_inputs(s3, frames)
    assert s3.get("in/empty.csv") == b"id,f0,f1,f2,f3\n"

    # When dispatched and drained
    velo("dispatch", s3.uri("in/"), "--model", local_model, "--redis", clean_redis, check=0)
    velo("worker", "--burst", "--redis", clean_redis, check=0)

    # Then the empty input gives a header-only output with the output columns
    assert s3.get("in/empty.out.csv").decode().strip() == "id,f0,f1,f2,f3,prediction"
    out = read_output(s3.get("in/empty.out.csv"))
    assert list(out.columns) == ["id", "f0", "f1", "f2", "f3", "prediction"]
    assert len(out) == 0
    assert_outputs(s3, {"in/full.csv": frames["in/full.csv"]}, model)
    assert not s3.exists("in/empty.out.csv.error.json")


def test_a_prefix_without_trailing_slash_is_a_folder_and_an_exact_key_one_file(
    s3, clean_redis, velo, model, local_model
):
    # Given in/a.csv, and in2/b.csv beside it (which a raw S3 prefix `in` would also match)
    frames = {"in/a.csv": make_frame(6, seed=51), "in2/b.csv": make_frame(4, seed=52), "in.csv": make_frame(3)}
    put_inputs(s3, frames)

    # When planned from s3://velo-test/in, with and without the slash, and from the exact key
    def planned(source: str, *args: str) -> dict:
        return parse_dry_run(velo("dispatch", source, "--model", local_model, "--dry-run", *args, check=0).stdout)[0]

    # Then `in` and `in/` both mean the folder in/, never in2/ (nor the object in.csv)
    expected = {s3.uri("in/a.csv"): ("new", s3.uri("in/a.out.csv"))}
    assert planned(s3.uri("in")) == expected
    assert planned(s3.uri("in/")) == expected
    # And the exact key means that one file
    assert planned(s3.uri("in2/b.csv")) == {s3.uri("in2/b.csv"): ("new", s3.uri("in2/b.out.csv"))}
    # And under --output, the relative paths are the folder's either way
    for source in (s3.uri("in"), s3.uri("in/")):
        assert planned(source, "--output", s3.uri("out/")) == {s3.uri("in/a.csv"): ("new", s3.uri("out/a.out.csv"))}

    # When dispatched from s3://velo-test/in and drained
    result = velo("dispatch", s3.uri("in"), "--model", local_model, "--redis", clean_redis, check=0)
    assert parse_dispatch(result.stdout)[1:] == (1, 0)
    velo("worker", "--burst", "--redis", clean_redis, check=0)

    # Then only in/a.csv was scored
    assert data_keys(s3) == sorted([*frames, "in/a.out.csv"])
    assert_outputs(s3, {"in/a.csv": frames["in/a.csv"]}, model)
