"""Small files in groups: how the plan becomes group jobs, and how their files stay files (fakeredis)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from dispatcher import lost
from dispatcher.enqueue import cancel, enqueue_batch, grouped, mark_already_queued, retry_failed
from dispatcher.plan import Options, Planned, plan
from tests.helpers import csv_bytes, dump_model, fit_model, make_frame
from velosiped import keys, payloads
from velosiped.errors import InputError
from velosiped.jobs import GROUP_PREFIX, members, validate
from velosiped.models import version_of
from velosiped.rqapi import make_queue
from velosiped.state import FileState, get_state
from velosiped.storage import ObjectInfo

OPTS = Options(model="/m/model.joblib", model_version="v1", group_size=4, group_bytes=1000)


def item(name: str, size: int = 100, shards: tuple[tuple[int, int], ...] = ()) -> Planned:
    return Planned(ObjectInfo(f"/d/{name}", f"v-{name}", size), f"/d/{name}.out", "new", shards=shards)


def test_small_files_join_groups_of_group_size_in_listing_order_and_others_stay_alone():
    todo = [item(f"{i}.csv") for i in range(6)]
    todo.insert(2, item("big.csv", size=5000))  # at or above --group-bytes: a job of its own
    todo.append(item("x.parquet"))  # read by row groups: a job of its own
    todo.append(item("split.csv", shards=((0, 10), (10, 20))))  # one job a shard
    jobs = grouped(todo, OPTS, "b1")
    shape = [
        [m["input"].removeprefix("/d/") for m in members(group[0])] if len(group) == 1 else len(group) for group in jobs
    ]
    assert shape == [["big.csv"], ["0.csv", "1.csv", "2.csv", "3.csv"], ["x.parquet"], 2, ["4.csv", "5.csv"]]
    # Each file of a group keeps its own version and output
    [first] = jobs[1]
    assert [(m["input_version"], m["output"]) for m in members(first)][1] == ("v-1.csv", "/d/1.csv.out")


def test_a_group_stops_at_about_group_bytes_in_all_so_files_of_a_few_mb_spread_over_workers():
    # Files of 400 B under a 1,000 B --group-bytes: three fill a job (1,200 B), not --group-size's four
    todo = [item(f"{i}.csv", size=400) for i in range(7)]
    sizes = [len(members(g[0])) for g in grouped(todo, OPTS, "b")]
    assert sizes == [3, 3, 1]


def test_group_size_one_or_a_challenger_keeps_one_job_a_file():
    todo = [item(f"{i}.csv") for i in range(5)]
    assert all(not g[0].get("group") for g in grouped(todo, replace(OPTS, group_size=1), "b"))
    shadow = replace(OPTS, shadow="/m/m2.joblib", shadow_version="v2", shadow_output="/s")
    assert all(not g[0].get("group") for g in grouped(todo, shadow, "b"))


def test_a_group_payload_is_one_compact_entry_and_reads_back_as_its_files(redis):
    batch = enqueue_batch(redis, "velo", "/d", OPTS, [item(f"{i}.csv") for i in range(4)])
    assert batch.enqueued == 4
    [jid] = [j.decode() for j in redis.lrange("rq:queue:velo", 0, -1)]
    assert jid.startswith(GROUP_PREFIX)
    p = payloads.load(redis, jid)
    assert p is not None
    assert [m["input"] for m in members(p)] == [f"/d/{i}.csv" for i in range(4)]
    # Each file's state names the group's job (so a removed job makes them lost, see below)
    for i in range(4):
        assert redis.hget(keys.batch_files(batch.id), f"/d/{i}.csv") == f"queued {jid}".encode()
    # About the file's own fields a file: no per-file job hash
    assert len(redis.hget(keys.PAYLOADS, jid)) < 4 * 40 + 30


def test_files_queued_in_a_group_are_already_queued_for_any_later_plan(redis):
    first = enqueue_batch(redis, "velo", "/d", OPTS, [item(f"{i}.csv") for i in range(4)])
    assert first.enqueued == 4
    # A later plan without file 0 (done meanwhile, say) would group the rest differently
    later = [item(f"{i}.csv") for i in range(1, 5)]
    marked = mark_already_queued(redis, OPTS, later)
    assert [p.reason for p in marked] == ["already queued"] * 3 + ["new"]
    second = enqueue_batch(redis, "velo", "/d", OPTS, later)
    assert (second.enqueued, second.skipped) == (1, 3)
    assert len(redis.lrange("rq:queue:velo", 0, -1)) == 2


def test_the_same_files_for_another_output_or_model_are_not_held_by_a_group(redis):
    first = enqueue_batch(redis, "velo", "/d", OPTS, [item(f"{i}.csv") for i in range(4)])
    assert first.enqueued == 4
    # Another output (or model) is another job for each file: not "already queued"
    elsewhere = [replace(item(f"{i}.csv"), output=f"/o/{i}.out.csv") for i in range(4)]
    assert [p.reason for p in mark_already_queued(redis, OPTS, elsewhere)] == ["new"] * 4
    assert enqueue_batch(redis, "velo", "/d", OPTS, elsewhere).enqueued == 4
    other_model = replace(OPTS, model_version="v2")
    assert enqueue_batch(redis, "velo", "/d", other_model, [item(f"{i}.csv") for i in range(4)]).enqueued == 4
    # While the very same jobs are held
    assert enqueue_batch(redis, "velo", "/d", OPTS, [item(f"{i}.csv") for i in range(4)]).enqueued == 0


def three_files_queued_in_a_group(redis, tmp_path):
    """Three small files of 3 rows in ``tmp_path``, queued as one group; their batch."""
    model = str(dump_model(fit_model(), tmp_path / "m.joblib"))
    opts = Options(model=model, model_version=version_of(model), group_size=64)
    for i in range(3):
        (tmp_path / f"{i}.csv").write_bytes(csv_bytes(make_frame(3, seed=i)))
    return enqueue_batch(redis, "velo", str(tmp_path), opts, list(plan(str(tmp_path), opts)))


def test_a_removed_group_job_makes_each_of_its_files_lost_and_retry_enqueues_each(redis, tmp_path):
    batch = three_files_queued_in_a_group(redis, tmp_path)
    [jid] = [j.decode() for j in redis.lrange("rq:queue:velo", 0, -1)]
    # `rq empty`: the job goes, its payload and the files' states stay
    redis.delete(f"rq:job:{jid}")
    redis.delete("rq:queue:velo")
    found = lost.find_lost(redis, batch.id)
    assert sorted(found) == [str(tmp_path / f"{i}.csv") for i in range(3)]
    assert retry_failed(redis, batch.id) == (3, [])
    assert redis.hget(keys.PAYLOADS, jid) is None, "the lost group's payload goes"
    assert len(redis.lrange("rq:queue:velo", 0, -1)) == 3  # enqueued again one a file
    assert lost.find_lost(redis, batch.id) == {}


def test_cancel_fails_each_file_of_a_queued_group(redis, tmp_path):
    batch = three_files_queued_in_a_group(redis, tmp_path)
    assert cancel(redis, "velo", {batch.id}, "interrupted") == 3
    assert make_queue(redis, "velo").get_job_ids() == []
    for i in range(3):
        assert get_state(redis, batch.id, str(tmp_path / f"{i}.csv")) is FileState.FAILED


@pytest.mark.parametrize(
    ("group", "why"),
    [
        ([], "non-empty list"),
        ([["/d/a.csv", "v1"]], "input, input_version, output"),
        ([["/d/a.csv", "v1", 3]], "input, input_version, output"),
    ],
)
def test_a_malformed_group_is_refused_with_one_line(group, why):
    p = {
        "input": "/d/a.csv", "input_version": "v1", "output": "/d/a.out.csv", "model": "/m", "model_version": "v",
        "model_sha256": None, "keep": None, "proba": False, "features": None, "sep": ",", "encoding": "utf-8",
        "batch": "b", "group": group,
    }  # fmt: skip
    with pytest.raises(InputError, match=why):
        validate(p)
    with pytest.raises(InputError, match="no shard"):
        validate(
            {
                **p,
                "group": [["/d/a.csv", "v1", "/d/a.out.csv"]],
                "shard": {"index": 0, "count": 2, "start": 0, "end": 9},
            }
        )


def work(redis) -> None:
    """One in-process worker, until the queue is empty."""
    from worker.runner import VeloWorker

    VeloWorker([make_queue(redis, "velo")], connection=redis).work(burst=True)


def a_group_with_a_bad_file(redis, tmp_path, files: int, bad: int):
    """``files`` small files of 4 rows in one group, file ``bad`` without column f2, scored once;
    (their folder, the batch)."""
    data = tmp_path / "data"
    data.mkdir()
    for i in range(files):
        (data / f"{i}.csv").write_bytes(csv_bytes(make_frame(4, seed=i)))
    (data / f"{bad}.csv").write_bytes(csv_bytes(make_frame(4, seed=bad).drop(columns="f2")))
    model = str(dump_model(fit_model(), tmp_path / "m.joblib"))
    opts = Options(model=model, model_version=version_of(model), group_size=64)
    batch = enqueue_batch(redis, "velo", str(data), opts, list(plan(str(data), opts)))
    work(redis)
    return data, batch


def test_a_group_with_a_bad_file_fails_its_job_naming_it_and_rq_requeue_rescores_only_it(redis, tmp_path):
    from rq.job import JobStatus

    from dispatcher.status import describe

    data, batch = a_group_with_a_bad_file(redis, tmp_path, files=5, bad=2)
    q = make_queue(redis, "velo")

    # One job, failed with the bad file's one-line reason; the four others done
    reason = f"{data / '2.csv'}: missing feature columns: f2"
    [jid] = q.failed_job_registry.get_job_ids()
    job = q.fetch_job(jid)
    assert (job.get_status(), job.latest_result().exc_string) == (JobStatus.FAILED, reason)
    b = describe(redis, batch.id)
    assert (b["done"], b["failed"], b["rows"]) == (4, 1, 16)
    assert b["failures"] == [{"file": str(data / "2.csv"), "error": reason}]
    made = {p.name: p.stat().st_mtime_ns for p in data.glob("*.out.csv")}
    assert sorted(made) == ["0.out.csv", "1.out.csv", "3.out.csv", "4.out.csv"]

    # When the file is fixed and RQ's own requeue puts the group's job back
    (data / "2.csv").write_bytes(csv_bytes(make_frame(4, seed=2)))
    q.failed_job_registry.requeue(jid)
    work(redis)

    # Then only that file is scored, as it is now; the others are not written again
    b = describe(redis, batch.id)
    assert (b["done"], b["failed"], b["rows"]) == (5, 0, 20)
    assert (data / "2.out.csv").exists() and not (data / "2.out.csv.error.json").exists()
    assert {p.name: p.stat().st_mtime_ns for p in data.glob("*.out.csv") if p.name != "2.out.csv"} == made


def test_velo_retry_of_a_groups_failed_file_takes_the_groups_failed_job_out_of_rqs_failed_registry(redis, tmp_path):
    from dispatcher.status import describe

    data, batch = a_group_with_a_bad_file(redis, tmp_path, files=4, bad=1)
    q = make_queue(redis, "velo")
    assert len(q.failed_job_registry.get_job_ids()) == 1  # the group's job, naming 1.csv

    # When the file is fixed and `velo retry` scores it again, as a job of its own
    (data / "1.csv").write_bytes(csv_bytes(make_frame(4, seed=1)))
    assert retry_failed(redis, batch.id) == (1, [])
    work(redis)

    # Then the batch is done, and RQ's tools (rq info, rq-dashboard) no longer count a failed job
    b = describe(redis, batch.id)
    assert (b["done"], b["failed"]) == (4, 0)
    assert q.failed_job_registry.get_job_ids() == []


def test_a_groups_features_are_cast_at_once_and_a_file_with_a_non_number_is_left_to_score_alone():
    """Each feature column of a group's rows is cast once for all its files; NA-like cells are NaN
    as in a file of its own; a file holding a non-number is left out (the one-file path says where)
    and the others' numbers are the ones each would have had alone."""
    import numpy as np
    import pyarrow as pa

    from velosiped.frames import FeatureSpec
    from worker.groups import _File, _numbers

    model = fit_model()
    texts = {"a": "f0,f1,f2,f3\n1,2,3,4\n5,6,7,8\n", "b": "f0,f1,f2,f3\n9,NA,,1.5\n", "c": "f0,f1,f2,f3\n1,x,3,4\n"}
    files = []
    for name, text in texts.items():
        rows = [line.split(",") for line in text.splitlines()]
        table = pa.table({c: [r[i] for r in rows[1:]] for i, c in enumerate(rows[0])})
        batch = table.to_batches()[0]
        spec = FeatureSpec(model, rows[0], name)
        files.append(_File({"input": name}, [batch], spec, rows[0], [*rows[0], "prediction"]))  # type: ignore[arg-type]

    # When all three are cast at once
    good, joined = _numbers(files)

    # Then c is left out, and a's and b's numbers are as each alone (views of one joined column)
    assert [f.p["input"] for f in good] == ["a", "b"]
    assert [list(col) for col in files[0].columns[0]] == [[1, 5], [2, 6], [3, 7], [4, 8]]
    assert files[1].columns[0][0].tolist() == [9] and np.isnan(files[1].columns[0][1][0])
    assert np.isnan(files[1].columns[0][2][0]) and files[1].columns[0][3].tolist() == [1.5]
    assert len(joined) == 4 and joined[0].tolist() == [1, 5, 9]

    # And without the bad file, one cast gives the same numbers
    for f in files:
        f.columns = []
    good, joined = _numbers(files[:2])
    assert len(good) == 2 and joined[0].tolist() == [1, 5, 9] and files[0].columns[0][1].tolist() == [2, 6]
