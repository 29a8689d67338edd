"""One big file over the fleet, end to end: `velo dispatch --shard-size` + `velo worker --processes 2`.

Real subprocesses on a private redis-server, on a local folder and on moto's S3 server. The
sharded output must be byte for byte the unsharded one; on S3 the parts are assembled with
UploadPartCopy when they are at least 5 MiB, and streamed otherwise. A poison row fails the file
cleanly, and a worker killed mid-shard costs nothing but time.
"""

from __future__ import annotations

import io
import json
import re
import signal
import time

import pytest
from helpers import (
    batch_status,
    csv_bytes,
    is_sidecar,
    kill_group,
    make_frame,
    parse_dispatch,
    parse_dry_run,
    wait_until,
)
from slowmodel import WORKER_ENV, dump_slow_model

from worker.scoring import score_stream

pytestmark = pytest.mark.e2e

MB = 1 << 20


def frame_of(size: int, seed: int = 0):
    """A make_frame whose CSV is just under ``size`` bytes, generated once (and trimmed)."""
    per_row = len(csv_bytes(make_frame(2_000, seed=seed))) / 2_000
    frame = make_frame(int(size * 1.2 / per_row), seed=seed)
    lines = csv_bytes(frame)[:size].count(b"\n")  # the header and the rows that fit whole
    return frame.head(lines - 1)


def whole(data: bytes, model, **options) -> bytes:
    """What scoring the file in one piece writes."""
    out = io.BytesIO()
    score_stream(io.BytesIO(data), out, model, name="x", **options)
    return out.getvalue()


def test_local_big_file_over_two_processes_equals_the_unsharded_run(velo, clean_redis, tmp_path, model_path):
    # Given a ~3.5 MB CSV next to a small one in a folder
    data = csv_bytes(frame_of(int(3.5 * MB), seed=1))
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "big.csv").write_bytes(data)
    (tmp_path / "in" / "small.csv").write_bytes(csv_bytes(make_frame(50, seed=2)))
    common = ("--model", model_path, "--redis", clean_redis)

    # When a dry run plans the folder with 1 MB shards
    dry = velo("dispatch", tmp_path / "in", *common, "--shard-size", "1MB", "--dry-run", check=0)
    # Then it says how many shards the big file would get
    assert f"new\t{tmp_path / 'in' / 'big.csv'}\t{tmp_path / 'in' / 'big.out.csv'}\t4 shards" in dry.stdout
    assert parse_dry_run(dry.stdout)[1:] == (2, 0)

    # When the folder is dispatched unsharded (to whole/) and in 1 MB shards, and two processes drain the queue
    velo("dispatch", tmp_path / "in", *common, "--shard-size", "0", "--output", tmp_path / "whole", check=0)
    dispatched = velo("dispatch", tmp_path / "in", *common, "--shard-size", "1MB", check=0)
    batch_id, enqueued, skipped = parse_dispatch(dispatched.stdout)
    assert (enqueued, skipped) == (2, 0)
    assert f"{tmp_path / 'in' / 'big.csv'}: 4 shards" in dispatched.stdout
    worker = velo("worker", "--burst", "--processes", "2", "--redis", clean_redis, check=0)

    # Then the output is byte for byte the unsharded one: header once, every row in order
    out = (tmp_path / "in" / "big.out.csv").read_bytes()
    assert out == (tmp_path / "whole" / "big.out.csv").read_bytes()
    assert out.count(b"id,f0,f1,f2,f3,prediction\n") == 1
    assert "from 4 parts, streamed" in worker.stderr
    # And status counts files, not shards
    batch = batch_status(velo, clean_redis, batch_id)
    rows = data.count(b"\n") - 1 + 50
    assert {k: batch[k] for k in ("total", "done", "failed", "running", "queued", "rows")} == {
        "total": 2,
        "done": 2,
        "failed": 0,
        "running": 0,
        "queued": 0,
        "rows": rows,
    }
    # And nothing but outputs and their lineage appeared
    names = sorted(p.name for p in (tmp_path / "in").iterdir() if not is_sidecar(p.name))
    assert names == ["big.csv", "big.out.csv", "small.csv", "small.out.csv"]

    # When dispatched again, the assembled file is skipped like any done file
    again = velo("dispatch", tmp_path / "in", *common, "--shard-size", "1MB", check=0)
    assert parse_dispatch(again.stdout)[1:] == (0, 2)


def test_s3_parts_of_5_mib_are_copied_server_side_and_small_parts_streamed(
    s3, velo, clean_redis, tmp_path, model, model_path
):
    # Given a ~11.5 MiB CSV on S3
    data = csv_bytes(frame_of(int(11.5 * MB), seed=3))
    s3.put("in/big.csv", data)
    common = ("--model", model_path, "--redis", clean_redis, "--shard-size", "6MB")

    # When it is dispatched in 6 MB shards (output parts of ~6 MiB), and again keeping only `id`
    # (output parts of ~1.5 MiB, under S3's 5 MiB minimum), and two processes score both
    dispatched = velo("dispatch", s3.uri("in/"), *common, check=0)
    batch_id, enqueued, _ = parse_dispatch(dispatched.stdout)
    assert enqueued == 1 and "in/big.csv: 2 shards" in dispatched.stdout
    velo("dispatch", s3.uri("in/"), *common, "--keep", "id", "--output", s3.uri("ids/"), check=0)
    worker = velo("worker", "--burst", "--processes", "2", "--redis", clean_redis, check=0, timeout=180)

    # Then the full output was assembled from its 2 parts with UploadPartCopy: a 2-part object
    assert "big.out.csv from 2 parts, copied server-side" in worker.stderr
    head = s3.head("in/big.out.csv")
    assert head["ETag"].strip('"').endswith("-2")
    assert s3.get("in/big.out.csv") == whole(data, model)
    assert head["Metadata"]["velo-batch"] == batch_id
    assert batch_status(velo, clean_redis, batch_id)["rows"] == data.count(b"\n") - 1
    # And the small parts were streamed into an ordinary upload, with the right bytes too
    assert "ids/big.out.csv from 2 parts, streamed" in worker.stderr
    assert s3.get("ids/big.out.csv") == whole(data, model, keep=["id"])
    # And no part or upload is left behind
    assert s3.keys() == ["ids/big.out.csv", "in/big.csv", "in/big.out.csv"]
    assert s3.client.list_multipart_uploads(Bucket=s3.bucket).get("Uploads", []) == []


def test_a_poison_row_in_one_shard_fails_the_file_cleanly(velo, clean_redis, tmp_path, model_path):
    # Given a ~2.2 MB CSV with text in a feature near its end (its last shard)
    frame = frame_of(int(2.2 * MB), seed=4)
    frame["f1"] = frame["f1"].astype(object)
    frame.loc[len(frame) - 100, "f1"] = "poison"
    (tmp_path / "in").mkdir()
    src = tmp_path / "in" / "big.csv"
    src.write_bytes(csv_bytes(frame))

    # When it is dispatched in 1 MB shards and scored
    common = ("--model", model_path, "--redis", clean_redis, "--shard-size", "1MB")
    batch_id, _, _ = parse_dispatch(velo("dispatch", tmp_path / "in", *common, check=0).stdout)
    velo("worker", "--burst", "--processes", "2", "--redis", clean_redis, check=0)

    # Then the file failed once, its reason one line naming the file, the shard and its bytes
    batch = batch_status(velo, clean_redis, batch_id)
    assert {k: batch[k] for k in ("total", "done", "failed", "running")} == {
        "total": 1,
        "done": 0,
        "failed": 1,
        "running": 0,
    }
    [failure] = batch["failures"]
    assert re.fullmatch(
        rf"{re.escape(str(src))} \(shard 3 of 3, bytes \d+-\d+\): "
        r"row \d+, column 'f1' holds non-numeric value 'poison'",
        failure["error"],
    ), failure
    # And no output, no part: only the error file next to where the output would be
    assert sorted(p.name for p in (tmp_path / "in").iterdir()) == ["big.csv", "big.out.csv.error.json"]
    error = json.loads((tmp_path / "in" / "big.out.csv.error.json").read_text())
    assert error["error"] == failure["error"]
    # And a new dispatch does not retry it while it is unchanged
    again = velo("dispatch", tmp_path / "in", *common, "--dry-run", check=0)
    assert parse_dry_run(again.stdout)[0][str(src)][0] == "failed before"


@pytest.mark.timeout(150)
def test_sigkill_mid_shard_still_gives_one_correct_output(
    s3, velo, start_velo, clean_redis, tmp_path, model, model_path
):
    # Given a ~2.2 MB CSV on S3 in 3 shards, and worker A slowed to ~3 s a shard (small blocks, a
    # model sleeping 0.05 s a block), with short leases
    data = csv_bytes(frame_of(int(2.2 * MB), seed=5))
    s3.put("in/big.csv", data)
    slow_model = dump_slow_model(model, 0.05, tmp_path / "slow.joblib")
    slowed = {"VELO_BLOCK_SIZE": "16384", "VELO_HEARTBEAT_TTL": "4", "VELO_MAINTENANCE_INTERVAL": "2", **WORKER_ENV}
    worker_a = start_velo("worker", "--redis", clean_redis, env=slowed)
    common = ("--model", slow_model, "--redis", clean_redis, "--shard-size", "1MB")
    batch_id, enqueued, _ = parse_dispatch(velo("dispatch", s3.uri("in/"), *common, check=0).stdout)
    assert enqueued == 1

    # When A is seen scoring the first shard, and is killed with SIGKILL
    wait_until(
        lambda: batch_status(velo, clean_redis, batch_id)["running"] == 1,
        timeout=30,
        interval=0.3,
        message="worker A to start\n" + worker_a.describe(),
    )
    time.sleep(1.0)
    kill_group(worker_a, signal.SIGKILL)
    assert worker_a.wait(timeout=10) == -signal.SIGKILL
    assert not s3.exists("in/big.out.csv")
    # And worker B (two processes, not slowed: parser blocks of the default size) takes over
    fast = {k: v for k, v in slowed.items() if k != "VELO_BLOCK_SIZE"}
    worker_b = start_velo("worker", "--processes", "2", "--redis", clean_redis, env=fast)

    # Then the batch finishes with the file done once and its one output right
    final = wait_until(
        lambda: (b := batch_status(velo, clean_redis, batch_id))["finished"] and b,
        timeout=60,
        interval=0.5,
        message="the batch to finish after the kill\n" + worker_b.describe(),
    )
    assert {k: final[k] for k in ("total", "done", "failed", "rows")} == {
        "total": 1,
        "done": 1,
        "failed": 0,
        "rows": data.count(b"\n") - 1,
    }
    assert s3.get("in/big.out.csv") == whole(data, model)
    assert s3.keys() == ["in/big.csv", "in/big.out.csv"]
