"""Security on real processes: hostile jobs pushed straight into Redis, booby-trapped models, Redis AUTH.

A worker runs only `worker.task.score()` without arguments (its payload in Redis, checked),
reads and writes only under `VELO_ALLOWED_PREFIXES`, unpickles models only from `VELO_MODEL_PREFIXES` and only after
`--model-sha256` matched; passwords in Redis URLs never show.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
import re

import joblib
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
    fit_model,
    is_sidecar,
    make_frame,
    model_bytes,
    push_job,
    read_output,
    wait_until,
)
from rq import Queue
from rq.job import Job
from rq.serializers import JSONSerializer

from velosiped import payloads

pytestmark = pytest.mark.e2e

TASK = "worker.task.score"
INLINE_TASK = "worker.task.score_file"
"""The form that carried its payload as an argument: gone, so refused like any other function."""
BY_REFERENCE = TASK
"""A hostile entry naming TASK with one payload argument is pushed as a real job is: the payload
written where a worker looks for it, the job naming no argument."""


def test_the_boobytrap_goes_off_when_unpickled(tmp_path):
    # Given a booby-trapped model: When it is loaded, Then its marker appears (so its absence proves a lot)
    path = boobytrapped_model(tmp_path / "trap.joblib", tmp_path / "went-off")
    joblib.load(path)
    assert (tmp_path / "went-off").exists()


def batch_status(velo, redis_url: str, batch_id: str) -> dict | None:
    """`velo status BATCH --json`, or None when Redis has no such batch."""
    result = velo("status", batch_id, "--json", "--redis", redis_url, timeout=30)
    if result.returncode != 0:
        return None
    [batch] = json.loads(result.stdout)["batches"]
    return batch


# ------------------------------------------------------------------------------------------ hostile jobs


@pytest.mark.timeout(90)
def test_hostile_jobs_pushed_into_redis_are_refused_and_the_worker_keeps_serving(
    s3, clean_redis, velo, start_velo, tmp_path
):
    # Given an allowed area (a folder and an S3 prefix) with a model and inputs, and secrets outside it
    allowed = tmp_path / "allowed"
    secret = tmp_path / "secret"
    model = fit_model()
    model_path = dump_model(model, allowed / "models" / "model.joblib")
    (allowed / "in").mkdir(parents=True)
    (allowed / "legit").mkdir()
    secret.mkdir()
    inside = allowed / "in" / "x1.csv"
    inside.write_bytes(csv_bytes(make_frame(5, seed=1)))
    secret_file = secret / "x.csv"
    secret_file.write_bytes(csv_bytes(make_frame(5, seed=2)))
    s3.put("secret/s.csv", csv_bytes(make_frame(5, seed=3)))
    legit = make_frame(7, seed=4)
    (allowed / "legit" / "ok.csv").write_bytes(csv_bytes(legit))
    markers = {name: tmp_path / f"pwned-{name}" for name in ("system", "eval")}
    worker_env = {
        "VELO_ALLOWED_PREFIXES": f"{allowed},{s3.uri('allowed/')}",
        "VELO_MODEL_PREFIXES": str(allowed / "models"),
    }

    # And real payloads, as the dispatcher writes them (on a queue no worker serves), to tamper with
    conn = redis.Redis.from_url(clean_redis)
    templates = Queue("template", connection=conn, serializer=JSONSerializer)
    for source in (allowed / "in", secret, s3.uri("secret/")):
        velo("dispatch", source, "--model", model_path, "--queue", "template", "--redis", clean_redis, check=0)
    real = {p["input"]: p for p in (payloads.load(conn, job.id) for job in templates.get_jobs())}
    templates.empty()
    assert sorted(real) == sorted([str(inside), str(secret_file), s3.uri("secret/s.csv")]), real

    def payload(like: str, **changes) -> dict:
        return {**real[like], "batch": "hostile", **changes}

    good_shape = payload(str(inside))
    hostile = {
        # name: (function, args, kwargs, what the refusal must mention, if anything)
        "os.system": ("os.system", (f"touch {markers['system']}",), None, None),
        "builtins.eval": (
            "builtins.eval",
            (f"__import__('pathlib').Path({str(markers['eval'])!r}).touch()",),
            None,
            None,
        ),
        "inline form": (INLINE_TASK, (good_shape,), None, None),
        "extra field": (TASK, ({**good_shape, "evil": "x"},), None, None),
        "wrong type": (TASK, ({**good_shape, "proba": "yes"},), None, None),
        "two arguments": (TASK, (good_shape, good_shape), None, "no arguments"),
        "keyword argument": (TASK, (), {"payload": good_shape}, "no arguments"),
        "local input outside": (
            TASK,
            (payload(str(secret_file), output=str(allowed / "in" / "stolen.out.csv")),),
            None,
            "VELO_ALLOWED_PREFIXES",
        ),
        "local output outside": (
            TASK,
            (payload(str(inside), output=str(secret / "planted.out.csv")),),
            None,
            "VELO_ALLOWED_PREFIXES",
        ),
        "local ..": (
            TASK,
            (payload(str(secret_file), input=f"{allowed}/../secret/x.csv", output=f"{allowed}/../secret/x.out.csv"),),
            None,
            "..",
        ),
        "s3 ..": (
            TASK,
            (
                payload(
                    s3.uri("secret/s.csv"),
                    input=s3.uri("allowed/../secret/s.csv"),
                    output=s3.uri("allowed/../secret/s.out.csv"),
                ),
            ),
            None,
            "..",
        ),
        "s3 input outside": (
            TASK,
            (payload(s3.uri("secret/s.csv"), output=s3.uri("allowed/s.out.csv")),),
            None,
            "VELO_ALLOWED_PREFIXES",
        ),
    }
    # And the same as jobs naming no argument, their payloads written into Redis where a worker looks
    by_reference = {
        "by reference: local input outside": payload(str(secret_file), output=str(allowed / "in" / "stolen.out.csv")),
        "by reference: s3 ..": payload(
            s3.uri("secret/s.csv"), input=s3.uri("allowed/../secret/s.csv"), output=s3.uri("allowed/../s.out.csv")
        ),
    }
    mentions = {"by reference: local input outside": "VELO_ALLOWED_PREFIXES", "by reference: s3 ..": ".."}
    hostile |= {name: (TASK, (by_reference[name],), None, mentions[name]) for name in by_reference}
    # And those jobs pushed straight into the queue with RQ's own API (JSON, as Velosiped's are)
    queue = Queue("velo", connection=conn, serializer=JSONSerializer)
    job_ids = {}
    for name, (func, args, kwargs, _) in hostile.items():
        jid = "hostile-" + re.sub(r"[^A-Za-z0-9_-]", "-", name)
        if func == BY_REFERENCE and len(args) == 1 and not kwargs:
            job = push_job(queue, jid, args[0])
        else:
            job = queue.enqueue_call(func, args=args, kwargs=kwargs, job_id=jid)
        job_ids[name] = job.id
    assert queue.count == len(hostile)

    # When a worker with allowed prefixes starts, and a legit batch is dispatched behind them
    worker = start_velo("worker", "--redis", clean_redis, env=worker_env)
    result = velo("dispatch", allowed / "legit", "--model", model_path, "--redis", clean_redis, "--wait", timeout=60)

    # Then the legit job, queued last, is done by the same worker, which is still up
    assert result.returncode == 0, velo.describe(result) + "\n" + worker.describe()
    assert_output_matches(read_output(allowed / "legit" / "ok.out.csv"), expected_output(legit, model))
    assert worker.poll() is None, worker.describe()

    # And no hostile job ran: no marker, no output but the legit one, and (an error file next to a refused
    # job's output at most, inside the allowed area) nothing written outside the allowed area
    assert not any(m.exists() for m in markers.values()), [m for m in markers.values() if m.exists()]
    files = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file())
    assert [f for f in files if not f.endswith(".error.json")] == [
        "allowed/in/x1.csv",
        "allowed/legit/ok.csv",
        "allowed/legit/ok.out.csv",
        "allowed/legit/ok.out.csv.velo.json",
        "allowed/models/model.joblib",
        "secret/x.csv",
    ]
    assert [f for f in files if not f.startswith("allowed/")] == ["secret/x.csv"], "written outside the allowed area"
    # (an S3 key is read as a path: `allowed/../secret/k` is outside `allowed/`)
    keys = [posixpath.normpath(k) for k in s3.keys("")]
    assert [k for k in keys if not k.endswith(".error.json")] == ["secret/s.csv"]
    assert [k for k in keys if not k.startswith("allowed/")] == ["secret/s.csv"], f"written outside allowed/: {keys}"

    # And each one was refused and reported: in RQ's failed registry, or as a failed file of its batch
    failed_registry = set(queue.failed_job_registry.get_job_ids())
    hostile_batch = batch_status(velo, clean_redis, "hostile")
    batch_failures = {f["file"]: f["error"] for f in (hostile_batch or {}).get("failures", [])}
    for name, (_, args, _, mention) in hostile.items():
        if job_ids[name] in failed_registry:
            job = Job.fetch(job_ids[name], connection=conn, serializer=JSONSerializer)
            latest = job.latest_result()
            reason = (latest.exc_string if latest is not None else None) or ""
        else:
            target = by_reference[name]["input"] if name in by_reference else None
            target = args[0]["input"] if args and isinstance(args[0], dict) else target
            assert target in batch_failures, f"{name}: neither in RQ's failed registry nor a failed file of its batch"
            reason = batch_failures[target]
        refused = ("os.system", "builtins.eval", "inline form", "extra field", "wrong type", "two arguments")
        if name in (*refused, "keyword argument"):
            assert job_ids[name] in failed_registry, f"{name}: not in RQ's failed registry"
        if mention:
            assert mention in reason, f"{name}: reason does not mention {mention!r}: {reason!r}"
    print(f"\nhostile jobs: {len(failed_registry)} in RQ's failed registry, {len(batch_failures)} failed files")
    # And nothing hostile is left queued or running
    assert (queue.count, queue.started_job_registry.count) == (0, 0)
    conn.close()


# ------------------------------------------------------------------------------------------------ models


@pytest.mark.timeout(90)
def test_model_sha256_mismatch_fails_the_job_before_unpickling(s3, clean_redis, velo, start_velo, tmp_path):
    # Given a booby-trapped model in the bucket, and the digest of another (honest) model
    marker = tmp_path / "pwned-by-s3-model"
    trap = boobytrapped_model(tmp_path / "trap.joblib", marker)
    s3.put("models/m.joblib", trap.read_bytes())
    honest_digest = hashlib.sha256(model_bytes(fit_model())).hexdigest()
    frame = make_frame(6, seed=11)
    s3.put("in/1.csv", csv_bytes(frame))
    worker = start_velo("worker", "--redis", clean_redis, env={"VELO_MODEL_CACHE": str(tmp_path / "cache")})

    # When a batch pins the honest digest and names the trapped model
    result = velo(
        "dispatch",
        s3.uri("in/"),
        "--model",
        s3.uri("models/m.joblib"),
        "--model-sha256",
        honest_digest,
        "--redis",
        clean_redis,
        "--wait",
        timeout=60,
    )

    # Then the file fails with "does not match", in status and in its error file
    assert result.returncode == 1, velo.describe(result) + "\n" + worker.describe()
    batch_id = find_dispatch_line(result.stdout)[0]
    batch = batch_status(velo, clean_redis, batch_id)
    assert (batch["done"], batch["failed"]) == (0, 1), batch
    [failure] = batch["failures"]
    assert "does not match" in failure["error"], failure
    assert "does not match" in json.loads(s3.get("in/1.out.csv.error.json"))["error"]
    assert not s3.exists("in/1.out.csv")
    # And the model was never unpickled
    assert not marker.exists(), "the booby-trapped model was unpickled"
    assert worker.poll() is None, worker.describe()

    # When the same trap is a local file pinned to the honest digest
    local = velo("dispatch", s3.uri("in/"), "--model", trap, "--model-sha256", honest_digest, "--redis", clean_redis)

    # Then the dispatcher refuses at once (exit 2, one line), and nothing was unpickled either
    assert_clean_error(local, "does not match")
    assert not marker.exists(), "the booby-trapped model was unpickled"


def test_a_pin_is_checked_for_every_job_even_when_the_worker_holds_the_model_already(
    s3, clean_redis, velo, start_velo, tmp_path
):
    # Given a worker that preloaded a model from the bucket without a pin (velo worker --model)
    model = fit_model()
    s3.put("models/m.joblib", model_bytes(model))
    s3.put("in/1.csv", csv_bytes(make_frame(6, seed=12)))
    env = {"VELO_MODEL_CACHE": str(tmp_path / "cache")}
    worker = start_velo("worker", "--redis", clean_redis, "--model", s3.uri("models/m.joblib"), env=env)
    wrong = hashlib.sha256(b"another model").hexdigest()

    # When a batch names the same model pinned to another digest
    args = ["dispatch", s3.uri("in/"), "--model", s3.uri("models/m.joblib"), "--redis", clean_redis, "--wait"]
    result = velo(*args, "--model-sha256", wrong, timeout=60)

    # Then the pin is checked against the bytes the worker loaded: the file fails, nothing is written
    assert result.returncode == 1, velo.describe(result) + "\n" + worker.describe()
    [failure] = batch_status(velo, clean_redis, find_dispatch_line(result.stdout)[0])["failures"]
    assert "does not match --model-sha256" in failure["error"], failure
    assert not s3.exists("in/1.out.csv")

    # And the right pin scores it, from the same loaded model (--force: the file "failed before")
    right = hashlib.sha256(model_bytes(model)).hexdigest()
    assert velo(*args, "--model-sha256", right, "--force", timeout=60).returncode == 0
    assert s3.exists("in/1.out.csv")
    assert worker.poll() is None, worker.describe()


@pytest.mark.timeout(90)
def test_model_outside_velo_model_prefixes_is_never_unpickled(clean_redis, velo, start_velo, tmp_path):
    # Given workers that trust models only under trusted/, and a booby-trapped model elsewhere
    trusted = tmp_path / "trusted"
    trusted.mkdir()
    marker = tmp_path / "pwned-by-local-model"
    trap = boobytrapped_model(tmp_path / "elsewhere" / "trap.joblib", marker)
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "1.csv").write_bytes(csv_bytes(make_frame(4, seed=21)))
    worker = start_velo("worker", "--redis", clean_redis, env={"VELO_MODEL_PREFIXES": str(trusted)})

    # When a batch names the model outside the trusted prefix
    result = velo("dispatch", folder, "--model", trap, "--redis", clean_redis, "--wait", timeout=60)

    # Then the file fails with a reason naming VELO_MODEL_PREFIXES, in status and in its error file
    assert result.returncode == 1, velo.describe(result) + "\n" + worker.describe()
    batch = batch_status(velo, clean_redis, find_dispatch_line(result.stdout)[0])
    [failure] = batch["failures"]
    assert "VELO_MODEL_PREFIXES" in failure["error"], failure
    assert "VELO_MODEL_PREFIXES" in json.loads((folder / "1.out.csv.error.json").read_text())["error"]
    assert not (folder / "1.out.csv").exists()

    # When a job pushed straight into Redis dodges the prefix with `..` (trusted/../elsewhere/trap.joblib)
    dodge = f"{trusted}/../elsewhere/trap.joblib"
    conn = redis.Redis.from_url(clean_redis)
    queue = Queue("velo", connection=conn, serializer=JSONSerializer)
    velo("dispatch", folder, "--model", trap, "--force", "--queue", "template", "--redis", clean_redis, check=0)
    templates = Queue("template", connection=conn, serializer=JSONSerializer)
    [template] = [payloads.load(conn, job.id) for job in templates.get_jobs()]
    templates.empty()
    sneaky = {**template, "model": dodge, "output": str(folder / "2.out.csv"), "batch": "sneaky"}
    job = push_job(queue, "sneaky-model", sneaky)

    # Then it is refused too (failed file or RQ failure), and the trap never went off
    def refused():
        if job.id in queue.failed_job_registry.get_job_ids():
            return "failed registry"
        b = batch_status(velo, clean_redis, "sneaky")
        return b and b["failed"] == 1 and "batch"

    wait_until(refused, timeout=20, interval=0.3, message="the sneaky job to be refused\n" + worker.describe())
    assert not (folder / "2.out.csv").exists()
    assert not marker.exists(), "the booby-trapped model was unpickled"
    assert worker.poll() is None, worker.describe()
    conn.close()


# --------------------------------------------------------------------------------------------- Redis AUTH

PASSWORD = "secret"


@pytest.mark.timeout(120)
def test_redis_password_works_end_to_end_and_never_shows(s3, redis_server, velo, tmp_path):
    # Given a private redis-server that requires a password, and a good and a bad file
    server = redis_server(password=PASSWORD)
    url = server.url
    assert f":{PASSWORD}@" in url
    model = fit_model()
    model_path = dump_model(model, tmp_path / "model.joblib")
    good = make_frame(9, seed=31)
    s3.put("in/good.csv", csv_bytes(good))
    s3.put("in/bad.csv", csv_bytes(make_frame(9, seed=32).drop(columns="f1")))

    # When the folder is dispatched, a worker drains the queue, and the status is read, all with the password URL
    outputs = []
    dispatched = velo("dispatch", s3.uri("in/"), "--model", model_path, "--redis", url, check=0)
    outputs.append(dispatched)
    batch_id = find_dispatch_line(dispatched.stdout)[0]
    outputs.append(velo("worker", "--burst", "--redis", url, check=0, timeout=60))
    outputs.append(velo("status", "--redis", url, check=0))
    as_json = velo("status", batch_id, "--json", "--redis", url, check=0)
    outputs.append(as_json)
    outputs.append(velo("dispatch", s3.uri("in/"), "--model", model_path, "--redis", url, "--dry-run", check=0))
    # And the same through REDIS_URL
    outputs.append(velo("status", env={"REDIS_URL": url}, check=0))

    # Then it worked end to end
    [batch] = json.loads(as_json.stdout)["batches"]
    assert (batch["done"], batch["failed"]) == (1, 1), batch
    assert_output_matches(read_output(s3.get("in/good.out.csv")), expected_output(good, model))
    # And the password shows nowhere: no output, no error file, no status, no object metadata, no batch record
    for result in outputs:
        assert PASSWORD not in result.stdout + result.stderr, velo.describe(result)
    assert PASSWORD not in s3.get("in/bad.out.csv.error.json").decode()
    assert PASSWORD not in json.dumps(s3.head("in/good.out.csv").get("Metadata", {}))
    assert [k for k in s3.keys("") if not is_sidecar(k)] == [
        "in/bad.csv",
        "in/bad.out.csv.error.json",
        "in/good.csv",
        "in/good.out.csv",
    ]
    client = server.client()
    for key in client.scan_iter("velo:*"):
        dump = (
            json.dumps({k.decode(): v.decode(errors="replace") for k, v in client.hgetall(key).items()})
            if (client.type(key) == b"hash")
            else ""
        )
        assert PASSWORD not in dump, f"{key!r} holds the password"
    client.close()

    # When a command uses a wrong password, or none
    wrong = server.url_with_password("wrong-pw")
    bare = f"redis://127.0.0.1:{server.port}/0"
    attempts = {
        "status, wrong password": velo("status", "--redis", wrong, timeout=20),
        "dispatch, wrong password": velo(
            "dispatch", s3.uri("in/"), "--model", model_path, "--force", "--redis", wrong, timeout=20
        ),
        "worker, wrong password": velo("worker", "--burst", "--redis", wrong, timeout=20),
        "status, no password": velo("status", "--redis", bare, timeout=20),
    }

    # Then each exits 2 with one line naming the server, showing no password
    for what, result in attempts.items():
        line = assert_clean_error(result, f"127.0.0.1:{server.port}")
        assert "wrong-pw" not in result.stdout + result.stderr, what + "\n" + velo.describe(result)
        assert PASSWORD not in result.stdout + result.stderr, what + "\n" + velo.describe(result)
        print(f"\n{what}: {line}")


SLASHED = "Zm9v/YmFy+=="
"""A base64 password: it holds a '/', which a URL must percent-encode (%2F) and users often do not."""
SLASHED_PIECES = (SLASHED, "Zm9v", "YmFy", "Zm9v%2FYmFy")


@pytest.mark.timeout(120)
def test_a_password_with_slash_or_at_never_shows_whatever_the_url_gets_wrong(s3, redis_server, velo, tmp_path):
    # Given a private redis-server whose password is base64 (holds '/'), and a folder to dispatch
    server = redis_server(password=SLASHED)
    model_path = dump_model(fit_model(), tmp_path / "model.joblib")
    s3.put("in/a.csv", csv_bytes(make_frame(3, seed=41)))
    port = server.port
    encoded = f"redis://:Zm9v%2FYmFy+==@127.0.0.1:{port}/0"

    # When the password is percent-encoded, Then the commands work and show it nowhere
    ok = [
        velo("dispatch", s3.uri("in/"), "--model", model_path, "--redis", encoded, check=0),
        velo("status", "--redis", encoded, check=0),
        velo("status", "--json", env={"REDIS_URL": encoded}, check=0),
    ]
    for result in ok:
        for piece in SLASHED_PIECES:
            assert piece not in result.stdout + result.stderr, velo.describe(result)

    # When the URL is wrong in ways that make redis-py quote it: a raw '/' (it then reads 'Zm9v' as
    # the port), a raw '@' or ':' in the password of an unreachable server, a bad port, a bad host
    attempts = {
        "raw slash": f"redis://:{SLASHED}@127.0.0.1:{port}/0",
        "raw slash, rediss": f"rediss://:{SLASHED}@127.0.0.1:{port}/0",
        "raw slash, unix query": f"unix://{tmp_path}/no.sock?password={SLASHED}",
        "raw at, unreachable": "redis://:Zm9v@YmFy+==@127.0.0.1:1/0",
        "raw colon, unreachable": "redis://user:Zm9v:YmFy+==@127.0.0.1:1/0",
        "bad port": "redis://:Zm9v%2FYmFy+==@127.0.0.1:99999/0",
        "unreachable host": "redis://:Zm9v%2FYmFy+==@no-such-host.invalid:6379/0",
    }
    for what, url in attempts.items():
        for result in (
            velo("status", "--redis", url, timeout=20),
            velo("dispatch", s3.uri("in/"), "--model", model_path, "--force", env={"REDIS_URL": url}, timeout=20),
        ):
            # Then each exits 2 with one line, and no piece of the password anywhere
            line = assert_clean_error(result, "Redis")
            for piece in SLASHED_PIECES:
                assert piece not in result.stdout + result.stderr, what + "\n" + velo.describe(result)
            print(f"\n{what}: {line}")
