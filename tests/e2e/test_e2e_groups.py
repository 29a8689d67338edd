"""Small files in groups (`--group-size`): one job and one predict for many files, each file's
outcome its own. Real `velo` subprocesses on a real redis-server, local folders and moto's S3."""

from __future__ import annotations

import json
import signal
import time

import numpy as np
import pytest
import redis
from helpers import (
    assert_output_matches,
    batch_status,
    counters,
    csv_bytes,
    dump_model,
    expected_output,
    find_dispatch_line,
    fit_model,
    is_sidecar,
    kill_group,
    make_frame,
    parse_dry_run,
    read_output,
    wait_until,
    write_csv,
)
from rq import Queue
from rq.job import Job
from rq.serializers import JSONSerializer
from slowmodel import WORKER_ENV, dump_slow_model

pytestmark = pytest.mark.e2e

LIVENESS = {"VELO_HEARTBEAT_TTL": "4", "VELO_MAINTENANCE_INTERVAL": "2", **WORKER_ENV}
"""A dead worker's job lease runs out after 4 s; live workers look for such jobs every 2 s."""


def queue(url: str) -> Queue:
    return Queue("velo", connection=redis.Redis.from_url(url), serializer=JSONSerializer)


def test_a_bad_file_in_a_group_fails_alone_and_velo_retry_scores_it_once_fixed(clean_redis, velo, start_velo, tmp_path):
    # Given 12 small files in a local folder, one with a non-numeric feature, one without column f2
    model = fit_model()
    model_path = dump_model(model, tmp_path / "model.joblib")
    folder = tmp_path / "in"
    frames = {f"{i:02d}.csv": make_frame(10, seed=300 + i) for i in range(12)}
    for name, frame in frames.items():
        write_csv(folder / name, frame)
    (folder / "03.csv").write_text("id,f0,f1,f2,f3\n0,1,2,oops,4\n")
    write_csv(folder / "07.csv", frames["07.csv"].drop(columns="f2"))
    env = {"VELO_ALLOWED_PREFIXES": str(tmp_path), "VELO_MODEL_PREFIXES": str(tmp_path)}

    # When they are dispatched (one group) and a worker scores them
    dispatched = velo("dispatch", folder, "--model", model_path, "--redis", clean_redis, env=env)
    batch_id, enqueued, _ = find_dispatch_line(dispatched.stdout)
    assert enqueued == 12
    assert len(queue(clean_redis).get_job_ids()) == 1, "12 small files make one job"
    velo("worker", "--burst", "--redis", clean_redis, env=env, check=0, timeout=60)

    # Then the 10 good files have their outputs, each with its own lineage
    for name, frame in frames.items():
        if name in ("03.csv", "07.csv"):
            continue
        assert_output_matches(
            read_output((folder / name.replace(".csv", ".out.csv")).read_bytes()), expected_output(frame, model)
        )
        made = json.loads((folder / name.replace(".csv", ".out.csv.velo.json")).read_text())
        assert made["velo-batch"] == batch_id and made["velo-rows"] == "10"
    # And each bad file has no output but its own error file and reason
    reasons = {}
    for name, why in (("03", "oops"), ("07", "f2")):
        assert not (folder / f"{name}.out.csv").exists()
        error = json.loads((folder / f"{name}.out.csv.error.json").read_text())
        assert error["file"].endswith(f"{name}.csv") and why in error["error"], error
        reasons[name] = error["error"]
    # And velo status counts files, not jobs, each failure with its reason
    batch = batch_status(velo, clean_redis, batch_id)
    assert counters(batch) == {"total": 12, "queued": 0, "running": 0, "done": 10, "failed": 2}, batch
    assert batch["rows"] == 100
    assert {f["file"].rsplit("/", 1)[-1]: f["error"] for f in batch["failures"]} == {
        "03.csv": reasons["03"],
        "07.csv": reasons["07"],
    }
    # And RQ sees one failed job naming both files and their reasons, in one line
    [failed] = queue(clean_redis).failed_job_registry.get_job_ids()
    job = Job.fetch(failed, connection=redis.Redis.from_url(clean_redis), serializer=JSONSerializer)
    exc = (job.latest_result().exc_string if job.latest_result() else "") or ""
    assert reasons["03"] in exc and reasons["07"] in exc and "Traceback" not in exc, exc

    # When 03.csv is fixed and the batch retried
    write_csv(folder / "03.csv", frames["03.csv"])
    retried = velo("retry", batch_id, "--redis", clean_redis, env=env)
    assert f"batch {batch_id}: 2 enqueued again" in retried.stdout, retried.stdout
    velo("worker", "--burst", "--redis", clean_redis, env=env, check=0, timeout=60)

    # Then it is scored; 07.csv fails again with the same reason; the others were not redone
    assert_output_matches(read_output((folder / "03.out.csv").read_bytes()), expected_output(frames["03.csv"], model))
    assert not (folder / "03.out.csv.error.json").exists()
    batch = batch_status(velo, clean_redis, batch_id)
    assert counters(batch) == {"total": 12, "queued": 0, "running": 0, "done": 11, "failed": 1}, batch
    assert batch["rows"] == 110
    assert [f["error"] for f in batch["failures"]] == [reasons["07"]]


def test_grouped_outputs_are_the_bytes_of_ungrouped_ones_and_dispatch_again_skips_each_file(
    s3, clean_redis, velo, start_velo, tmp_path
):
    # Given 40 small files on S3, some compressed, with two different column orders
    model = fit_model()
    model_path = dump_model(model, tmp_path / "model.joblib")
    for i in range(40):
        frame = make_frame(7 + i % 5, seed=400 + i)
        if i % 3 == 0:
            frame = frame[["f3", "id", "f1", "f0", "f2"]]
        s3.put(f"in/{i:02d}.csv", csv_bytes(frame))

    # When they are scored in groups of 16, and again one job a file under another prefix
    grouped = velo("dispatch", s3.uri("in/"), "--model", model_path, "--redis", clean_redis, "--group-size", "16")
    batch_id, enqueued, _ = find_dispatch_line(grouped.stdout)
    assert enqueued == 40
    assert len(queue(clean_redis).get_job_ids()) == 3, "40 files in groups of 16: 3 jobs"
    velo("worker", "--burst", "--redis", clean_redis, check=0, timeout=90)
    alone = velo(
        "dispatch", s3.uri("in/"), "--model", model_path, "--redis", clean_redis,
        "--group-size", "1", "--output", s3.uri("alone/"),
    )  # fmt: skip
    assert find_dispatch_line(alone.stdout)[1] == 40
    velo("worker", "--burst", "--redis", clean_redis, check=0, timeout=90)

    # Then every output is byte for byte the one a job of its own writes
    assert batch_status(velo, clean_redis, batch_id)["done"] == 40
    for i in range(40):
        assert s3.get(f"in/{i:02d}.out.csv") == s3.get(f"alone/{i:02d}.out.csv"), f"{i:02d}.out.csv differs"

    # And dispatching the folder again enqueues nothing: each file is already done
    again = velo("dispatch", s3.uri("in/"), "--model", model_path, "--redis", clean_redis)
    assert find_dispatch_line(again.stdout)[1:] == (0, 40)
    # And a dry run gives each file its own reason: the one changed file alone is redone
    s3.put("in/05.csv", csv_bytes(make_frame(9, seed=999)))
    dry = velo("dispatch", s3.uri("in/"), "--model", model_path, "--redis", clean_redis, "--dry-run")
    plan, would, skipped = parse_dry_run(dry.stdout)
    assert (would, skipped) == (1, 39)
    assert plan[s3.uri("in/05.csv")][0] == "input changed"
    assert {reason for uri, (reason, _) in plan.items() if not uri.endswith("05.csv")} == {"already done"}


def test_with_proba_grouped_outputs_match_ungrouped_ones_to_the_last_bits(clean_redis, velo, tmp_path):
    # Given small files and a model with probabilities
    model = fit_model()
    model_path = dump_model(model, tmp_path / "model.joblib")
    folder = tmp_path / "in"
    for i in range(10):
        write_csv(folder / f"{i}.csv", make_frame(13, seed=500 + i))
    env = {"VELO_ALLOWED_PREFIXES": str(tmp_path), "VELO_MODEL_PREFIXES": str(tmp_path)}

    # When they are scored with --proba in one group, and one job a file
    for extra in ([], ["--group-size", "1", "--output", str(tmp_path / "alone")]):
        velo("dispatch", folder, "--model", model_path, "--proba", "--redis", clean_redis, *extra, env=env)
        velo("worker", "--burst", "--redis", clean_redis, env=env, check=0, timeout=60)

    # Then labels and every other cell are the same bytes; probabilities agree to 1e-12 (one
    # predict over more rows may round the last bit of a float differently: BLAS blocks)
    for i in range(10):
        a = read_output((folder / f"{i}.out.csv").read_bytes())
        b = read_output((tmp_path / "alone" / f"{i}.out.csv").read_bytes())
        assert list(a.columns) == list(b.columns)
        assert a["prediction"].tolist() == b["prediction"].tolist()
        np.testing.assert_allclose(a[["proba_0", "proba_1"]], b[["proba_0", "proba_1"]], rtol=0, atol=1e-12)


@pytest.mark.timeout(150)
def test_a_worker_killed_mid_group_has_the_group_redone_with_whole_outputs(s3, clean_redis, velo, start_velo, tmp_path):
    # Given 6 small files in two column layouts, and a model fitted without names (so each layout
    # is one predict), slowed to 3 s a predict: the first layout's outputs are written ~3 s in,
    # the second's ~6 s in
    model = fit_model(with_names=False)
    fast = dump_model(model, tmp_path / "model.joblib")
    slow = dump_slow_model(model, 3.0, tmp_path / "slow.joblib")
    for i in range(6):
        frame = make_frame(10, seed=600 + i).drop(columns="id")  # every column is a feature
        if i >= 3:
            frame = frame.rename(columns={c: c.upper() for c in frame.columns})
        s3.put(f"in/{i}.csv", csv_bytes(frame))
    # And the bytes a clean run writes
    velo("dispatch", s3.uri("in/"), "--model", fast, "--output", s3.uri("clean/"), "--queue", "clean",
         "--redis", clean_redis)  # fmt: skip
    velo("worker", "--burst", "--queue", "clean", "--redis", clean_redis, check=0, timeout=60)
    worker_a = start_velo("worker", "--redis", clean_redis, env=LIVENESS)

    # When they are dispatched (one group), and A is killed once the first layout is written
    dispatched = velo("dispatch", s3.uri("in/"), "--model", slow, "--redis", clean_redis)
    batch_id, enqueued, _ = find_dispatch_line(dispatched.stdout)
    assert enqueued == 6
    # (a layout's three outputs are written side by side: wait for the three, not the first one seen)
    first = wait_until(
        lambda: found if len(found := [i for i in range(6) if s3.exists(f"in/{i}.out.csv")]) >= 3 else None,
        timeout=60,
        interval=0.1,
        message="the first outputs of the group\n" + worker_a.describe(),
    )
    kill_group(worker_a, signal.SIGKILL)
    assert worker_a.wait(timeout=10) == -signal.SIGKILL
    assert sorted(first) == [0, 1, 2] or sorted(first) == [3, 4, 5], first
    assert counters(batch_status(velo, clean_redis, batch_id))["done"] == 0, "states move once the group is written"
    # And worker B starts
    killed_at = time.monotonic()
    worker_b = start_velo("worker", "--redis", clean_redis, env=LIVENESS)

    # Then the group is redone: every output whole, the very bytes of the clean run
    final = wait_until(
        lambda: (b := batch_status(velo, clean_redis, batch_id))["finished"] and b,
        timeout=90,
        interval=0.5,
        message="the batch to finish after the kill\n" + worker_b.describe(),
    )
    print(f"\nSIGKILL mid-group: batch finished {time.monotonic() - killed_at:.1f}s after the kill")
    assert counters(final) == {"total": 6, "queued": 0, "running": 0, "done": 6, "failed": 0}, final
    assert final["rows"] == 60
    for i in range(6):
        assert s3.get(f"in/{i}.out.csv") == s3.get(f"clean/{i}.out.csv"), i
    assert sorted(k for k in s3.keys("in/") if not is_sidecar(k)) == sorted(
        [f"in/{i}.csv" for i in range(6)] + [f"in/{i}.out.csv" for i in range(6)]
    )
