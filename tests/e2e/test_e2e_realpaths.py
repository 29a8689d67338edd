"""The allow-lists on real processes, judged where paths really are: symlinks and '..' cannot walk around them.

`VELO_ALLOWED_PREFIXES` holds `allowed/`; `secret/` and `outside/` lie beside it. A symlinked input,
a symlinked output folder, a symlinked model, a symlink climbing out with '..', and a big file's
shards settling: each is refused with where it resolves, and nothing outside is read, written or
deleted, on the failure path too, while the rest of the batch goes on.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis
from helpers import (
    assert_clean_error,
    assert_output_matches,
    boobytrapped_model,
    csv_bytes,
    dump_model,
    expected_output,
    find_dispatch_line,
    make_frame,
    parse_dispatch,
    push_job,
    read_output,
    wait_until,
    write_csv,
)
from rq import Queue
from rq.serializers import JSONSerializer

from velosiped import keys, payloads
from velosiped.jobs import shard_group

pytestmark = pytest.mark.e2e

SECRET_ID = 424_242_424
"""The secret's rows start at this id: it shows in any output the secret was scored into."""


@dataclass
class Area:
    root: Path

    @property
    def allowed(self) -> Path:
        return self.root / "allowed"

    @property
    def models(self) -> Path:
        return self.allowed / "models"

    @property
    def inputs(self) -> Path:
        return self.allowed / "in"

    @property
    def outside(self) -> Path:
        return self.root / "outside"

    @property
    def secret(self) -> Path:
        return self.root / "secret" / "s.csv"

    @property
    def env(self) -> dict[str, str]:
        return {"VELO_ALLOWED_PREFIXES": str(self.allowed), "VELO_MODEL_PREFIXES": str(self.models)}


@pytest.fixture
def area(tmp_path, model) -> Area:
    """allowed/ (in/, models/model.joblib), and beside it secret/s.csv and an empty outside/."""
    a = Area(tmp_path)
    dump_model(model, a.models / "model.joblib")
    a.inputs.mkdir(parents=True)
    a.outside.mkdir()
    secret = make_frame(5, seed=99)
    secret["id"] += SECRET_ID
    write_csv(a.secret, secret)
    return a


def snapshot(folder: Path) -> dict[str, bytes | None]:
    """Every file (its bytes) and folder (None) under ``folder``: what must survive untouched."""
    return {str(p.relative_to(folder)): (p.read_bytes() if p.is_file() else None) for p in sorted(folder.rglob("*"))}


def failures(velo, redis_url: str, batch_id: str) -> dict[str, str]:
    """file -> reason of the batch's failed files (none while the batch is unknown)."""
    result = velo("status", batch_id, "--json", "--redis", redis_url, timeout=30)
    if result.returncode != 0:
        return {}
    [batch] = json.loads(result.stdout)["batches"]
    return {f["file"]: f["error"] for f in batch.get("failures", [])}


def squeezed(text: str) -> str:
    """``text`` without whitespace: a long line the terminal wrapped reads as one."""
    return "".join(text.split())


def assert_secret_never_scored(root: Path, secret: Path) -> None:
    files = [p for p in root.rglob("*") if p.is_file() and not p.is_symlink() and p != secret]
    leaked = [p for p in files if str(SECRET_ID).encode() in p.read_bytes()]
    assert leaked == [], f"the secret's rows are in {leaked}"


# ------------------------------------------------------------------------------------------------ inputs


@pytest.mark.timeout(150)
def test_an_input_symlinked_outside_fails_alone_naming_where_it_resolves_and_is_never_read(velo, area, model):
    # Given two inputs, and a third that is a symlink to the secret outside the allowed area
    frames = {"a.csv": make_frame(8, seed=1), "b.csv": make_frame(9, seed=2)}
    for name, frame in frames.items():
        write_csv(area.inputs / name, frame)
    (area.inputs / "x.csv").symlink_to("../../secret/s.csv")

    # When velo run scores the folder with workers allowed only there
    result = velo("run", area.inputs, "--model", area.models / "model.joblib", env=area.env, timeout=120)

    # Then the symlinked file fails alone, with one line naming it, where it resolves and why
    assert result.returncode == 1, velo.describe(result)
    reason = f"{area.inputs / 'x.csv'}: resolves to {os.path.realpath(area.secret)}, outside VELO_ALLOWED_PREFIXES"
    assert squeezed(f"failed: {reason}") in squeezed(result.stderr), velo.describe(result)
    recorded = json.loads((area.inputs / "x.out.csv.error.json").read_text())["error"]
    assert recorded.startswith(reason) and "\n" not in recorded, recorded
    assert not (area.inputs / "x.out.csv").exists()
    # And the other files are done
    for name, frame in frames.items():
        assert_output_matches(
            read_output(area.inputs / name.replace(".csv", ".out.csv")), expected_output(frame, model)
        )
    # And the secret was never scored: its rows are in no file
    assert_secret_never_scored(area.root, area.secret)


# ----------------------------------------------------------------------------------------------- outputs


@pytest.mark.timeout(120)
def test_an_output_folder_symlinked_outside_is_refused_and_nothing_outside_is_written_or_deleted(
    velo, start_velo, clean_redis, area
):
    # Given inputs in the allowed area, and an output folder there that is a symlink to outside/
    for name in ("x.csv", "y.csv"):
        write_csv(area.inputs / name, make_frame(6, seed=len(name)))
    (area.allowed / "out").symlink_to("../outside")
    # And decoys outside where a worker would write or tidy up: an error file, a sidecar, parts
    decoys = (
        "x.out.csv.error.json",
        "x.out.csv.velo.json",
        "x.out.csv.velo-parts/g/00000.part",
        "y.out.csv.error.json",
    )
    for name in decoys:
        (area.outside / name).parent.mkdir(parents=True, exist_ok=True)
        (area.outside / name).write_bytes(b"decoy\n")
    before = snapshot(area.outside)
    worker = start_velo("worker", "--redis", clean_redis, env=area.env)

    # When the folder is dispatched with --output through that symlink
    result = velo(
        "dispatch",
        area.inputs,
        "--model",
        area.models / "model.joblib",
        "--output",
        area.allowed / "out",
        "--redis",
        clean_redis,
        "--wait",
        timeout=60,
    )

    # Then each file fails, naming its output and where it resolves
    assert result.returncode == 1, velo.describe(result) + "\n" + worker.describe()
    reasons = failures(velo, clean_redis, find_dispatch_line(result.stdout)[0])
    for stem in ("x", "y"):
        output = area.allowed / "out" / f"{stem}.out.csv"
        real = os.path.realpath(area.outside / f"{stem}.out.csv")
        expected = f"{output}: resolves to {real}, outside VELO_ALLOWED_PREFIXES"
        assert reasons[str(area.inputs / f"{stem}.csv")].startswith(expected), reasons
    # And nothing outside was written or deleted (no output, no error file, the decoys as they were)
    assert snapshot(area.outside) == before
    assert not list(area.allowed.rglob("*.error.json")), "an error file for a refused output"
    assert worker.poll() is None, worker.describe()


# ------------------------------------------------------------------------------------------------ models


@pytest.mark.timeout(120)
def test_a_model_symlinked_outside_velo_model_prefixes_is_refused_and_never_unpickled(
    velo, start_velo, clean_redis, area
):
    # Given a booby-trapped model outside, and a symlink to it among the trusted models
    marker = area.root / "pwned"
    trap = boobytrapped_model(area.root / "elsewhere" / "trap.joblib", marker)
    link = area.models / "m.joblib"
    link.symlink_to("../../elsewhere/trap.joblib")
    write_csv(area.inputs / "1.csv", make_frame(4, seed=3))
    worker = start_velo("worker", "--redis", clean_redis, env=area.env)

    # When a batch names the symlink
    result = velo("dispatch", area.inputs, "--model", link, "--redis", clean_redis, "--wait", timeout=60)

    # Then the file fails, naming the model, where it resolves and VELO_MODEL_PREFIXES; nothing was unpickled
    assert result.returncode == 1, velo.describe(result) + "\n" + worker.describe()
    [reason] = failures(velo, clean_redis, find_dispatch_line(result.stdout)[0]).values()
    assert reason.startswith(f"{link}: resolves to {os.path.realpath(trap)}, outside VELO_MODEL_PREFIXES"), reason
    assert not marker.exists(), "the booby-trapped model was unpickled"
    assert not (area.inputs / "1.out.csv").exists()
    assert worker.poll() is None, worker.describe()

    # When velo run, which loads the model itself before forking its workers, names it
    run = velo("run", area.inputs, "--model", link, "--force", env=area.env, timeout=60)

    # Then it stops at once with one line, and still nothing was unpickled
    assert_clean_error(run, "resolves to", "VELO_MODEL_PREFIXES")
    assert not marker.exists(), "the booby-trapped model was unpickled"


# ---------------------------------------------------------------------------------------------------- ..


def template(velo, conn, redis_url: str, source: Path, model: Path, *args) -> list[dict]:
    """The payloads the dispatcher writes for ``source`` (on a queue no worker serves), to tamper with."""
    velo("dispatch", source, "--model", model, "--queue", "template", "--redis", redis_url, *args, check=0)
    queue = Queue("template", connection=conn, serializer=JSONSerializer)
    found = [payloads.load(conn, job.id) for job in queue.get_jobs()]
    queue.empty()
    return [p for p in found if p is not None]


def version_of(path: Path) -> str:
    st = path.stat()
    return f"mtime:{st.st_mtime_ns}:size:{st.st_size}"


@pytest.mark.timeout(120)
def test_dotdot_in_a_symlink_or_in_a_job_never_leaves_the_allowed_area(velo, start_velo, clean_redis, area, model):
    # Given an input, and a symlink in the input folder climbing out of the allowed area with '..'
    write_csv(area.inputs / "ok.csv", make_frame(5, seed=4))
    (area.inputs / "up").symlink_to("../..")
    conn = redis.Redis.from_url(clean_redis)
    [real] = template(velo, conn, clean_redis, area.inputs, area.models / "model.joblib")
    secret = {"input": str(area.secret), "input_version": version_of(area.secret)}

    # When jobs pushed straight into Redis go through that symlink, or spell '..' themselves
    up, dotdot = f"{area.inputs}/up/secret", f"{area.inputs}/../../secret"
    hostile = {
        "input through the symlink": {**secret, "input": f"{up}/s.csv", "output": f"{area.inputs}/s.out.csv"},
        "output through the symlink": {"output": f"{up}/ok.out.csv"},
        "both through the symlink": {**secret, "input": f"{up}/s.csv", "output": f"{up}/s.out.csv"},
        "'..' in the job": {**secret, "input": f"{dotdot}/s.csv", "output": f"{dotdot}/s.out.csv"},
    }
    queue = Queue("velo", connection=conn, serializer=JSONSerializer)
    for n, changes in enumerate(hostile.values()):
        push_job(queue, f"hostile-{n}", {**real, "batch": "hostile", **changes})
    before = snapshot(area.secret.parent)
    worker = start_velo("worker", "--redis", clean_redis, env=area.env)

    # Then each is refused with its reason, and the worker keeps serving
    def refused() -> dict[str, str]:
        found = failures(velo, clean_redis, "hostile")
        return found if len(found) == 3 else {}  # two name the same input: one failed file

    found = wait_until(refused, timeout=30, message="the hostile jobs to fail\n" + worker.describe())
    assert "resolves to" in found[f"{up}/s.csv"] and "VELO_ALLOWED_PREFIXES" in found[f"{up}/s.csv"], found
    assert found[str(area.inputs / "ok.csv")].startswith(f"{up}/ok.out.csv: resolves to"), found
    assert "'..'" in found[f"{dotdot}/s.csv"], found
    # And nothing outside was read into an output, written or deleted
    assert snapshot(area.secret.parent) == before
    assert_secret_never_scored(area.root, area.secret)
    assert not (area.inputs / "ok.out.csv").exists()

    # When a user spells '..' on the command line: the dispatcher resolves it, and the file is scored
    result = velo(
        "dispatch",
        f"{area.inputs}/../in",
        "--model",
        area.models / "model.joblib",
        "--redis",
        clean_redis,
        "--wait",
        timeout=60,
    )
    assert result.returncode == 0, velo.describe(result) + "\n" + worker.describe()
    assert_output_matches(read_output(area.inputs / "ok.out.csv"), expected_output(make_frame(5, seed=4), model))
    conn.close()


# ------------------------------------------------------------------------------------------------ shards

MB = 1 << 20


@pytest.mark.timeout(180)
def test_a_sharded_file_with_a_refused_output_touches_nothing_outside_even_when_settling(
    velo, clean_redis, area, model
):
    # Given a ~2.5 MB CSV in the allowed area, and an output folder there that is a symlink to outside/
    frame = make_frame(60_000, seed=5)
    data = csv_bytes(frame)
    assert 2 * MB < len(data) < 4 * MB, len(data)
    (area.inputs / "big.csv").write_bytes(data)
    (area.allowed / "out").symlink_to("../outside")
    common = ("--model", area.models / "model.joblib", "--output", area.allowed / "out", "--redis", clean_redis)

    # When it is dispatched in 1 MB shards
    dispatched = velo("dispatch", area.inputs, *common, "--shard-size", "1MB", check=0)
    batch_id, enqueued, _ = parse_dispatch(dispatched.stdout)
    assert enqueued == 1 and "big.csv: 3 shards" in dispatched.stdout, dispatched.stdout
    # And decoys wait outside where its shards would write and tidy up: parts, a sidecar, an error file
    conn = redis.Redis.from_url(clean_redis)
    shards = [payloads.load(conn, job.id) for job in Queue("velo", connection=conn, serializer=JSONSerializer).jobs]
    first = next(p for p in shards if p is not None and p["shard"]["index"] == 0)
    parts = area.outside / "big.out.csv.velo-parts" / shard_group(first)
    decoys = [parts / "00000.part", parts / "00001.part", area.outside / "big.out.csv.error.json"]
    decoys.append(area.outside / "big.out.csv.velo.json")
    for decoy in decoys:
        decoy.parent.mkdir(parents=True, exist_ok=True)
        decoy.write_bytes(b"decoy\n")
    before = snapshot(area.outside)

    # And a worker drains the queue
    worker = velo("worker", "--burst", "--redis", clean_redis, env=area.env, check=0, timeout=120)

    # Then the file fails once, naming its output and where it resolves
    reasons = failures(velo, clean_redis, batch_id)
    output = area.allowed / "out" / "big.out.csv"
    assert list(reasons) == [str(area.inputs / "big.csv")], reasons
    assert reasons[str(area.inputs / "big.csv")].startswith(f"{output}: resolves to"), reasons
    # And nothing outside was written or deleted: no part, no output, the decoys as they were
    assert snapshot(area.outside) == before, worker.stderr

    # When one of its shard jobs comes again while its file is recorded assembled (as by a worker allowed there)
    state = keys.shards(shard_group(first))
    conn.hdel(state, "failed")
    conn.hset(state, "assembled", len(frame))
    push_job(Queue("velo", connection=conn, serializer=JSONSerializer), "settle-again", first)
    again = velo("worker", "--burst", "--redis", clean_redis, env=area.env, check=0, timeout=60)

    # Then settling it writes no lineage, removes no error file, and no parts outside
    assert "its lineage is not written" in again.stderr, again.stderr
    assert snapshot(area.outside) == before, again.stderr
    conn.close()
