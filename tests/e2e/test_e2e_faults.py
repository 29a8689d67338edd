"""Fault injection on real processes: killed workers, SIGTERM, Redis restarts, flaky S3, poison files, time limits.

Each test runs the real `velo` command as subprocesses against a private redis-server and moto's
S3 HTTP server (through `faultproxy` where S3 misbehaves). Knobs keep them short: a small parser
block (`VELO_BLOCK_SIZE`) and a model that sleeps at each block (`slowmodel.SlowModel`) make a file
take seconds, and a short lease (`VELO_HEARTBEAT_TTL`, `VELO_MAINTENANCE_INTERVAL`) makes a dead
worker's job come back within seconds.
"""

from __future__ import annotations

import json
import random
import re
import signal
import time
from pathlib import Path

import numpy as np
import pytest
import redis
from helpers import (
    DISPATCH_LINE,
    assert_last_velo_line,
    assert_output_matches,
    batch_status,
    counters,
    csv_bytes,
    expected_output,
    find_dispatch_line,
    is_sidecar,
    kill_group,
    make_frame,
    read_output,
    slow_frame,
    wait_until,
)
from rq import Queue
from rq.serializers import JSONSerializer
from slowmodel import WORKER_ENV, dump_slow_model

pytestmark = pytest.mark.e2e

BLOCK = 4096
"""Parser block size the slowed workers use: a file of N blocks calls a slow model N times."""

LIVENESS = {"VELO_HEARTBEAT_TTL": "4", "VELO_MAINTENANCE_INTERVAL": "2"}
"""A dead worker's job lease runs out after 4 s; live workers look for such jobs every 2 s."""


def slowed(**extra: str) -> dict[str, str]:
    """Worker env: small blocks, short leases, and what loading a `slow_model` takes."""
    return {"VELO_BLOCK_SIZE": str(BLOCK), **LIVENESS, **WORKER_ENV, **extra}


def background_batch_id(proc) -> str:
    """The batch id a background `velo dispatch` printed (it prints it before waiting)."""

    def printed():
        return any(DISPATCH_LINE.match(line.strip()) for line in proc.read_stdout().splitlines())

    wait_until(printed, timeout=30, message=f"the dispatch line\n{proc.describe()}")
    return find_dispatch_line(proc.read_stdout())[0]


def velo_queue(url: str, name: str = "velo") -> Queue:
    """RQ's view of a queue, for white-box checks (waiting jobs, started and scheduled registries)."""
    return Queue(name, connection=redis.Redis.from_url(url), serializer=JSONSerializer)


def describe_all(*procs) -> str:
    return "\n".join(p.describe() for p in procs)


@pytest.fixture
def slow_model(model, tmp_path):
    """slow_model(seconds): the path of `model` sleeping `seconds` per block (for `slowed()` workers)."""
    return lambda seconds: dump_slow_model(model, seconds, tmp_path / "model" / f"slow-{seconds}.joblib")


def clean_output(velo, s3, redis_url: str, source_prefix: str, name: str, model_path) -> bytes:
    """Score `source_prefix` into s3://velo-test/clean/ with a fast burst worker; return `clean/<name>`."""
    velo(
        "dispatch",
        s3.uri(source_prefix),
        "--model",
        model_path,
        "--output",
        s3.uri("clean/"),
        "--queue",
        "clean",
        "--redis",
        redis_url,
        check=0,
    )
    velo("worker", "--burst", "--queue", "clean", "--redis", redis_url, check=0, timeout=60)
    return s3.get(f"clean/{name}")


# ------------------------------------------------------------------------------------- killed workers


@pytest.mark.timeout(120)
def test_sigkill_mid_file_another_worker_redoes_it_with_the_same_bytes(
    s3, clean_redis, velo, start_velo, model, model_path, slow_model
):
    # Given one file that takes a slowed worker about 6 s (24 blocks x 0.25 s)
    frame = slow_frame(24, BLOCK, seed=101)
    s3.put("in/big.csv", csv_bytes(frame))
    # And the bytes a clean, unslowed run writes for it
    clean = clean_output(velo, s3, clean_redis, "in/", "big.out.csv", model_path)
    # And worker A, slowed, with short leases
    worker_a = start_velo("worker", "--redis", clean_redis, env=slowed())

    # When the file is dispatched and A is seen running it
    dispatched = velo("dispatch", s3.uri("in/"), "--model", slow_model(0.25), "--redis", clean_redis, check=0)
    batch_id, enqueued, _ = find_dispatch_line(dispatched.stdout)
    assert enqueued == 1
    wait_until(
        lambda: batch_status(velo, clean_redis, batch_id)["running"] == 1,
        timeout=30,
        interval=0.3,
        message="worker A to start the file\n" + worker_a.describe(),
    )
    time.sleep(1.0)  # well into the file
    assert not s3.exists("in/big.out.csv"), "a partial output is visible"
    # And A is killed with SIGKILL, and worker B started
    kill_group(worker_a, signal.SIGKILL)
    assert worker_a.wait(timeout=10) == -signal.SIGKILL
    killed_at = time.monotonic()
    assert not s3.exists("in/big.out.csv"), "a partial output is visible after the kill"
    worker_b = start_velo("worker", "--redis", clean_redis, env=slowed())

    # Then the batch finishes within 60 s of the kill
    final = wait_until(
        lambda: (b := batch_status(velo, clean_redis, batch_id))["finished"] and b,
        timeout=60,
        interval=0.5,
        message="the batch to finish after the kill\n" + worker_b.describe(),
    )
    took = time.monotonic() - killed_at
    print(f"\nSIGKILL mid-file: batch finished {took:.1f}s after the kill")
    assert took < 60
    # And status shows it done once, nothing failed
    assert counters(final) == {"total": 1, "queued": 0, "running": 0, "done": 1, "failed": 0}, final
    assert final["rows"] == len(frame)
    # And the output is byte-identical to the clean run's, and no other object appeared
    assert s3.get("in/big.out.csv") == clean
    assert [k for k in s3.keys("") if not is_sidecar(k)] == ["clean/big.out.csv", "in/big.csv", "in/big.out.csv"]
    assert worker_b.poll() is None, worker_b.describe()


@pytest.mark.timeout(150)
def test_chaos_random_sigkills_lose_no_file_and_write_each_output_once(
    s3, clean_redis, velo, start_velo, model, model_path, slow_model
):
    # Given 50 small files, each a few slowed blocks (about 0.75 s of work each)
    frames = {f"in/{i:02d}.csv": slow_frame(3, BLOCK, seed=1000 + i) for i in range(50)}
    for key, frame in frames.items():
        s3.put(key, csv_bytes(frame))
    env = slowed()
    # And three workers
    workers = [start_velo("worker", "--redis", clean_redis, env=env) for _ in range(3)]
    everyone = list(workers)

    # When the folder is dispatched, one job a file (kills land between files; groups: test_e2e_groups)
    args = ("--redis", clean_redis, "--group-size", "1")
    dispatched = velo("dispatch", s3.uri("in/"), "--model", slow_model(0.25), *args, check=0)
    batch_id, enqueued, _ = find_dispatch_line(dispatched.stdout)
    assert enqueued == 50
    # And every ~3 s a random worker is killed with SIGKILL and a replacement started
    rng = random.Random(20261123)
    started = time.monotonic()
    next_kill = started + 3.0
    kills: list[tuple[float, int]] = []
    while True:
        batch = batch_status(velo, clean_redis, batch_id)
        settled = batch["done"] + batch["failed"]
        if batch["finished"]:
            break
        now = time.monotonic()
        assert now - started < 120, f"batch not finished after 120 s: {counters(batch)}\n" + describe_all(*everyone)
        if now >= next_kill and settled <= 45 and len(kills) < 10:  # leave the last few files in peace
            victim = rng.choice(workers)
            kill_group(victim, signal.SIGKILL)
            victim.wait(timeout=10)
            workers.remove(victim)
            replacement = start_velo("worker", "--redis", clean_redis, env=env)
            workers.append(replacement)
            everyone.append(replacement)
            kills.append((round(now - started, 1), settled))
            print(f"\nchaos: t={now - started:5.1f}s killed worker pid {victim.pid} ({settled}/50 settled)")
            next_kill = now + 3.0
        time.sleep(0.3)
    duration = time.monotonic() - started
    print(f"\nchaos: {len(kills)} SIGKILLs, batch of 50 finished in {duration:.1f}s; kills (t, settled): {kills}")

    # Then there were kills while the batch ran
    assert len(kills) >= 3, f"only {len(kills)} kills: the batch ran too fast to be a test ({duration:.1f}s)"
    # And the batch is done: 50 done, none failed
    assert counters(batch) == {"total": 50, "queued": 0, "running": 0, "done": 50, "failed": 0}, batch
    assert batch["rows"] == sum(len(f) for f in frames.values())
    # And every output exists exactly once, with the expected content, and nothing else was written
    outputs = {k: f"in/{k[3:5]}.out.csv" for k in frames}
    assert [k for k in s3.keys("") if not is_sidecar(k)] == sorted([*frames, *outputs.values()])
    for key, frame in frames.items():
        assert_output_matches(read_output(s3.get(outputs[key])), expected_output(frame, model))
    # And nothing is left queued, running or scheduled in RQ
    q = velo_queue(clean_redis)
    assert (q.count, q.started_job_registry.count, q.scheduled_job_registry.count) == (0, 0, 0)


# -------------------------------------------------------------------------------------------- SIGTERM


@pytest.mark.timeout(90)
def test_sigterm_finishes_the_file_in_hand_then_exits_0_without_taking_another(
    s3, clean_redis, velo, start_velo, model, model_path, slow_model
):
    # Given a file that takes a slowed worker about 5 s, and a small one queued behind it
    slow = slow_frame(20, BLOCK, seed=201)
    small = make_frame(12, seed=202)
    s3.put("in/a.csv", csv_bytes(slow))
    s3.put("in/b.csv", csv_bytes(small))
    worker = start_velo("worker", "--redis", clean_redis, env=slowed())
    # (one job a file: the file in hand is one of two jobs; a group in hand is finished the same way)
    args = ("--redis", clean_redis, "--group-size", "1")
    dispatched = velo("dispatch", s3.uri("in/"), "--model", slow_model(0.25), *args, check=0)
    batch_id, enqueued, _ = find_dispatch_line(dispatched.stdout)
    assert enqueued == 2
    wait_until(
        lambda: batch_status(velo, clean_redis, batch_id)["running"] == 1,
        timeout=30,
        interval=0.3,
        message="the worker to start a.csv\n" + worker.describe(),
    )
    time.sleep(0.5)

    # When the busy worker gets SIGTERM
    worker.send_signal(signal.SIGTERM)
    signalled = time.monotonic()

    # Then it exits 0 once the file is finished
    assert worker.wait(timeout=40) == 0, worker.describe()
    print(f"\nSIGTERM: worker exited {time.monotonic() - signalled:.1f}s after the signal")
    assert "Traceback" not in worker.read_stderr(), worker.describe()
    # And the file in hand has its whole output
    assert_output_matches(read_output(s3.get("in/a.out.csv")), expected_output(slow, model))
    # And it did not take the next file: still queued, no output
    assert not s3.exists("in/b.out.csv")
    assert counters(batch_status(velo, clean_redis, batch_id)) == {
        "total": 2,
        "queued": 1,
        "running": 0,
        "done": 1,
        "failed": 0,
    }
    assert velo_queue(clean_redis).count == 1


@pytest.mark.timeout(90)
def test_second_sigterm_stops_at_once_and_the_file_is_redone_after_its_lease_expires(
    s3, clean_redis, velo, start_velo, model, model_path, slow_model
):
    # Given a file that takes a slowed worker about 8 s, being scored by worker A
    slow = slow_frame(32, BLOCK, seed=301)
    s3.put("in/a.csv", csv_bytes(slow))
    clean = clean_output(velo, s3, clean_redis, "in/", "a.out.csv", model_path)
    worker_a = start_velo("worker", "--redis", clean_redis, env=slowed())
    dispatched = velo("dispatch", s3.uri("in/"), "--model", slow_model(0.25), "--redis", clean_redis, check=0)
    batch_id = find_dispatch_line(dispatched.stdout)[0]
    wait_until(
        lambda: batch_status(velo, clean_redis, batch_id)["running"] == 1,
        timeout=30,
        interval=0.3,
        message="worker A to start the file\n" + worker_a.describe(),
    )
    time.sleep(0.5)

    # When A gets SIGTERM twice
    worker_a.send_signal(signal.SIGTERM)
    time.sleep(1.5)  # RQ takes a second signal within 1 s of the first for a duplicate, and ignores it
    assert worker_a.poll() is None, "the first SIGTERM stopped the worker mid-file\n" + worker_a.describe()
    worker_a.send_signal(signal.SIGTERM)
    second = time.monotonic()

    # Then it stops at once, without an output
    try:
        worker_a.wait(timeout=5)
    except Exception:
        pytest.fail("worker did not stop within 5 s of the second SIGTERM\n" + worker_a.describe())
    print(f"\ndouble SIGTERM: worker exited {time.monotonic() - second:.1f}s after the second signal")
    assert not s3.exists("in/a.out.csv")

    # When worker B starts
    worker_b = start_velo("worker", "--redis", clean_redis, env=slowed())

    # Then B redoes the file once A's lease has expired: done, the same bytes as a clean run
    final = wait_until(
        lambda: (b := batch_status(velo, clean_redis, batch_id))["finished"] and b,
        timeout=50,
        interval=0.5,
        message="worker B to redo the file\n" + describe_all(worker_a, worker_b),
    )
    assert counters(final) == {"total": 1, "queued": 0, "running": 0, "done": 1, "failed": 0}, final
    assert s3.get("in/a.out.csv") == clean
    assert worker_b.poll() is None, worker_b.describe()


# ---------------------------------------------------------------------------------------------- Redis


@pytest.mark.timeout(120)
def test_redis_restart_mid_batch_then_gone_for_good(s3, redis_server, velo, start_velo, model, model_path, slow_model):
    # Given a private redis-server with an append-only file, so a restart keeps the queue
    server = redis_server("--appendonly", "yes", "--save", "")
    url = server.url
    # And 10 files of about 0.8 s each for a slowed worker
    frames = {f"in/{i}.csv": slow_frame(4, BLOCK, seed=400 + i) for i in range(10)}
    for key, frame in frames.items():
        s3.put(key, csv_bytes(frame))
    worker = start_velo("worker", "--redis", url, env=slowed())
    # And `velo dispatch --wait` running
    waiter = start_velo("dispatch", s3.uri("in/"), "--model", slow_model(0.2), "--redis", url, "--wait")
    batch_id = background_batch_id(waiter)
    client = server.client(decode_responses=True)
    wait_until(
        lambda: int(client.hget(f"velo:batch:{batch_id}", "done") or 0) >= 2,
        timeout=40,
        message="two files done\n" + describe_all(worker, waiter),
    )
    client.close()

    # When Redis is stopped mid-batch and restarted on the same port 3 s later
    server.stop(signal.SIGTERM)
    down_at = time.monotonic()
    time.sleep(3.0)
    server.start()
    print(f"\nRedis restart: down for {time.monotonic() - down_at:.1f}s")

    # Then `dispatch --wait` exits 0 once the batch completes
    try:
        rc = waiter.wait(timeout=60)
    except Exception:
        pytest.fail("dispatch --wait did not return within 60 s of the restart\n" + describe_all(worker, waiter))
    assert rc == 0, describe_all(waiter, worker)
    assert "Traceback" not in waiter.read_stderr() + worker.read_stderr(), describe_all(waiter, worker)
    # And every output is there and right, and the status counts 10 done
    for key, frame in frames.items():
        assert_output_matches(read_output(s3.get(key[:-4] + ".out.csv")), expected_output(frame, model))
    final = batch_status(velo, url, batch_id)
    assert counters(final) == {"total": 10, "queued": 0, "running": 0, "done": 10, "failed": 0}, final
    # And the worker rode it out
    assert worker.poll() is None, worker.describe()
    assert worker.stop(timeout=30) == 0, worker.describe()

    # Given a worker and a `dispatch --wait` on a queue nobody serves, both giving up on Redis after 5 s
    give_up = {"VELO_REDIS_GIVE_UP": "5", **LIVENESS}
    lonely = start_velo("worker", "--redis", url, env=give_up)
    stuck = start_velo(
        "dispatch",
        s3.uri("in/"),
        "--model",
        model_path,
        "--force",
        "--queue",
        "nobody",
        "--redis",
        url,
        "--wait",
        env=give_up,
    )
    background_batch_id(stuck)
    probe = server.client(decode_responses=True)
    wait_until(lambda: probe.scard("rq:workers") >= 1, timeout=20, message="the worker to register")
    probe.close()

    # When Redis goes away for good
    server.stop(signal.SIGKILL)
    gone_at = time.monotonic()

    # Then both exit 2 after about 5 s (well within 25 s), each with one clear line and no traceback
    for proc in (lonely, stuck):
        try:
            rc = proc.wait(timeout=max(1.0, gone_at + 25 - time.monotonic()))
        except Exception:
            pytest.fail("still running 25 s after Redis went away (VELO_REDIS_GIVE_UP=5)\n" + proc.describe())
        after = time.monotonic() - gone_at
        print(f"Redis gone: `velo {proc.velo_args[0]}` exited {rc} after {after:.1f}s")
        assert rc == 2, proc.describe()
        assert after >= 4.5, f"gave up after {after:.1f}s, before VELO_REDIS_GIVE_UP=5\n" + proc.describe()
        assert_last_velo_line(proc.read_stderr(), "cannot reach Redis at", f"127.0.0.1:{server.port}")


# ------------------------------------------------------------------------------------------------- S3


def test_faultproxy_injects_what_it_is_told(s3, fault_proxy):
    """The proxy itself: forwards cleanly, injects statuses, resets and denials in order."""
    import boto3
    import botocore.config
    from botocore.exceptions import ClientError

    # Given a client going through the proxy that never retries, and an object in the bucket
    client = boto3.client(
        "s3",
        endpoint_url=fault_proxy.url,
        config=botocore.config.Config(retries={"mode": "standard", "total_max_attempts": 1}),
    )
    s3.put("p/1.csv", b"a,b\n1,2\n")
    path = r"^/velo-test/p/1\.csv$"

    def get():
        try:
            return client.get_object(Bucket=s3.bucket, Key="p/1.csv")["Body"].read()
        except ClientError as e:
            return e.response["ResponseMetadata"]["HTTPStatusCode"], e.response["Error"]["Code"]
        except Exception as e:  # the reset: one of botocore's connection errors
            return type(e).__name__

    # When the proxy is told to fail twice with 503, then reset once, then (later) deny for ever
    fault_proxy.fail("GET", path, status=503, times=2)
    fault_proxy.reset("GET", path, times=1)
    outcomes = [get() for _ in range(4)]
    head = client.head_object(Bucket=s3.bucket, Key="p/1.csv")["ContentLength"]
    fault_proxy.deny("GET", path)
    denied = get()
    client.put_object(Bucket=s3.bucket, Key="p/2.csv", Body=b"x" * 70000)
    client.close()

    # Then each request got what the rules said, and the rest went through untouched
    assert outcomes[:2] == [(503, "SlowDown"), (503, "SlowDown")]
    assert outcomes[2] in ("ConnectionClosedError", "EndpointConnectionError"), outcomes
    assert outcomes[3] == b"a,b\n1,2\n"
    assert head == 8
    assert denied == (403, "AccessDenied")
    assert s3.get("p/2.csv") == b"x" * 70000
    assert fault_proxy.faults("GET", path) == ["503", "503", "reset", "forwarded", "403"]
    assert fault_proxy.faults("HEAD", path) == ["forwarded"]


@pytest.mark.timeout(90)
def test_transient_s3_errors_are_retried_and_the_file_succeeds(s3, clean_redis, velo, fault_proxy, model, model_path):
    # Given a file, and an S3 proxy that answers its first two GETs with 503, resets the third,
    # and fails the first request that writes its output with a 500
    frame = make_frame(40, seed=501)
    s3.put("in/flaky.csv", csv_bytes(frame))
    input_path = r"^/velo-test/in/flaky\.csv(\?|$)"
    output_path = r"^/velo-test/in/flaky\.out\.csv(\?|$)"
    fault_proxy.fail("GET", input_path, status=503, times=2)
    fault_proxy.reset("GET", input_path, times=1)
    fault_proxy.fail("PUT", output_path, status=500, times=1)
    fault_proxy.fail("POST", output_path, status=500, times=1)
    dispatched = velo("dispatch", s3.uri("in/"), "--model", model_path, "--redis", clean_redis, check=0)
    batch_id = find_dispatch_line(dispatched.stdout)[0]

    # When a worker going through the proxy drains the queue
    started = time.monotonic()
    worker = velo("worker", "--burst", "--redis", clean_redis, env={"AWS_ENDPOINT_URL": fault_proxy.url}, timeout=60)
    took = time.monotonic() - started
    print(f"\nflaky S3: worker took {took:.1f}s; input requests {fault_proxy.faults('*', input_path)}")

    # Then the faults were injected, and a later attempt went through
    assert worker.returncode == 0, velo.describe(worker)
    assert fault_proxy.faults("GET", input_path)[:3] == ["503", "503", "reset"], fault_proxy.faults("*", input_path)
    assert "forwarded" in fault_proxy.faults("GET", input_path)[3:]
    assert "500" in fault_proxy.faults("*", output_path)
    # And the file succeeded: right output, no error file, done in status
    assert_output_matches(read_output(s3.get("in/flaky.out.csv")), expected_output(frame, model))
    assert not s3.exists("in/flaky.out.csv.error.json")
    final = batch_status(velo, clean_redis, batch_id)
    assert counters(final) == {"total": 1, "queued": 0, "running": 0, "done": 1, "failed": 0}, final


@pytest.mark.timeout(90)
def test_access_denied_fails_that_file_at_once_and_the_rest_succeed(
    s3, clean_redis, velo, fault_proxy, model, model_path
):
    # Given three files, and an S3 proxy that denies every request on one of them (403 AccessDenied)
    frames = {f"in/ok{i}.csv": make_frame(15, seed=600 + i) for i in (1, 2)}
    for key, frame in frames.items():
        s3.put(key, csv_bytes(frame))
    s3.put("in/denied.csv", csv_bytes(make_frame(15, seed=603)))
    denied_path = r"^/velo-test/in/denied\.csv(\?|$)"
    fault_proxy.deny("*", denied_path)
    dispatched = velo("dispatch", s3.uri("in/"), "--model", model_path, "--redis", clean_redis, check=0)
    batch_id, enqueued, _ = find_dispatch_line(dispatched.stdout)
    assert enqueued == 3

    # When a worker going through the proxy drains the queue
    worker = velo("worker", "--burst", "--redis", clean_redis, env={"AWS_ENDPOINT_URL": fault_proxy.url}, timeout=60)
    assert worker.returncode == 0, velo.describe(worker)
    time.sleep(2.0)  # room for any retry to show up

    # Then the denied file failed with a reason naming it and the denial
    final = batch_status(velo, clean_redis, batch_id)
    assert counters(final) == {"total": 3, "queued": 0, "running": 0, "done": 2, "failed": 1}, final
    [failure] = final["failures"]
    assert failure["file"] == s3.uri("in/denied.csv")
    assert "denied.csv" in failure["error"] and "\n" not in failure["error"]
    assert re.search(r"access ?denied|403", failure["error"], re.IGNORECASE), failure
    error = json.loads(s3.get("in/denied.out.csv.error.json"))
    assert error["error"] == failure["error"]
    assert not s3.exists("in/denied.out.csv")
    # And at once: a couple of requests at most, no retry storm (boto3 and RQ leave a 403 alone)
    hits = fault_proxy.hits("*", denied_path)
    print(f"\naccess denied: {len(hits)} requests on the denied key: {[(h.method, h.fault) for h in hits]}")
    assert 1 <= len(hits) <= 3, [(h.method, h.path, h.fault) for h in hits]
    assert hits[-1].at - hits[0].at < 2.0, "requests on the denied key spread over seconds: retried with backoff"
    assert all(h.fault == "403" for h in hits)
    mentions = [line for line in worker.stderr.splitlines() if "denied.csv" in line]
    assert len(mentions) <= 4, "worker log shows the denied file over and over:\n" + worker.stderr
    # And the other files succeeded
    for key, frame in frames.items():
        assert_output_matches(read_output(s3.get(key[:-4] + ".out.csv")), expected_output(frame, model))


# ---------------------------------------------------------------------------------------- poison files


def write_long_line_csv(path: Path, line_bytes: int) -> None:
    """A CSV whose second line is `line_bytes` long, written in 1 MiB pieces (memory stays small)."""
    piece = b"7" * (1 << 20)
    with path.open("wb") as f:
        f.write(b"id,f0,f1,f2,f3\n0,")
        left = line_bytes
        while left > 0:
            f.write(piece[: min(left, len(piece))])
            left -= len(piece)
        f.write(b",1,2,3\n1,0.5,0.5,0.5,0.5\n")


POISON = {
    "ragged.csv": "rows with fewer fields than the header",
    "text.csv": "text in a numeric feature",
    "missing.csv": "no f2 feature column",
    "empty.csv": "zero bytes",
    "garbage.csv": "binary garbage",
    "x.csv.gz": "named .gz, not gzip",
    "longline.csv": "one 100 MB line",
}


def error_file(name: str) -> str:
    for ext in (".csv.gz", ".csv"):
        if name.endswith(ext):
            return name[: -len(ext)] + ".out" + ext + ".error.json"
    raise ValueError(name)


@pytest.mark.timeout(120)
def test_poison_files_each_fail_alone_once_and_the_worker_keeps_serving(
    clean_redis, velo, start_velo, model, model_path, tmp_path
):
    # Given one folder with a good file and seven bad ones
    folder = tmp_path / "in"
    folder.mkdir()
    good = make_frame(25, seed=701)
    (folder / "good.csv").write_bytes(csv_bytes(good))
    (folder / "ragged.csv").write_bytes(b"id,f0,f1,f2,f3\n0,0.1,0.2,0.3,0.4\n1,0.5,0.6\n2,0.1,0.1,0.1,0.1\n")
    (folder / "text.csv").write_bytes(b"id,f0,f1,f2,f3\n0,0.1,0.2,0.3,0.4\n1,0.5,abc,0.6,0.7\n")
    (folder / "missing.csv").write_bytes(csv_bytes(make_frame(9, seed=702).drop(columns="f2")))
    (folder / "empty.csv").write_bytes(b"")
    (folder / "garbage.csv").write_bytes(b"\x00\xff\xfe\x80" + np.random.default_rng(7).bytes(4096))
    (folder / "x.csv.gz").write_bytes(b"id,f0,f1,f2,f3\n0,0.1,0.2,0.3,0.4\n")
    write_long_line_csv(folder / "longline.csv", 100 * 1000 * 1000)
    # And one long-running worker
    worker = start_velo("worker", "--redis", clean_redis)

    try:
        # When the folder is dispatched and waited for
        result = velo("dispatch", folder, "--model", model_path, "--redis", clean_redis, "--wait", timeout=90)

        # Then `--wait` exits 1 without a traceback
        assert result.returncode == 1, velo.describe(result) + "\n" + worker.describe()
        assert "Traceback" not in result.stdout + result.stderr, velo.describe(result)
        batch_id, enqueued, _ = find_dispatch_line(result.stdout)
        assert enqueued == 8
        # And the good file is done
        assert_output_matches(read_output(folder / "good.out.csv"), expected_output(good, model))
        # And each bad file failed alone: a one-line reason naming it, in status and next to its output
        final = batch_status(velo, clean_redis, batch_id)
        assert counters(final) == {"total": 8, "queued": 0, "running": 0, "done": 1, "failed": 7}, final
        reasons = {Path(f["file"]).name: f["error"] for f in final["failures"]}
        assert sorted(reasons) == sorted(POISON)
        seen = {}
        for name, what in POISON.items():
            reason = reasons[name]
            assert name in reason, f"{what}: reason does not name {name}: {reason!r}"
            assert "\n" not in reason.strip() and len(reason) < 1000, f"{what}: not one short line: {reason!r}"
            error_path = folder / error_file(name)
            record = json.loads(error_path.read_text())
            assert record["error"] == reason, (name, record)
            assert Path(record["file"]).name == name
            seen[name] = (error_path.stat().st_ino, error_path.stat().st_mtime_ns, record["failed_at"])
        assert "f2" in reasons["missing.csv"]
        assert "abc" in reasons["text.csv"] or "f1" in reasons["text.csv"], reasons["text.csv"]
        # And no output (or stray temporary file) exists for any bad file
        names = sorted(p.name for p in folder.iterdir() if not is_sidecar(p.name))
        assert names == sorted(["good.csv", "good.out.csv", *POISON, *(error_file(n) for n in POISON)]), names

        # When a few more seconds pass
        time.sleep(3.0)

        # Then no bad file was tried again: error files untouched, counters the same, nothing queued
        for name, before in seen.items():
            error_path = folder / error_file(name)
            after = (
                error_path.stat().st_ino,
                error_path.stat().st_mtime_ns,
                json.loads(error_path.read_text())["failed_at"],
            )
            assert after == before, f"{name} was retried: its error file was written again"
        assert counters(batch_status(velo, clean_redis, batch_id)) == counters(final)
        q = velo_queue(clean_redis)
        assert (q.count, q.started_job_registry.count, q.scheduled_job_registry.count) == (0, 0, 0)

        # When a new good file is dropped in and the folder dispatched again
        later = make_frame(13, seed=703)
        (folder / "later.csv").write_bytes(csv_bytes(later))
        again = velo("dispatch", folder, "--model", model_path, "--redis", clean_redis, "--wait", timeout=60)

        # Then the same worker scores it: the bad files are skipped, the new one done
        assert again.returncode == 0, velo.describe(again) + "\n" + worker.describe()
        assert find_dispatch_line(again.stdout)[1:] == (1, 8)
        assert_output_matches(read_output(folder / "later.out.csv"), expected_output(later, model))
        assert worker.poll() is None, worker.describe()
        # And bad input was an expected failure, not a crash: no traceback in the worker's log
        assert "Traceback" not in worker.read_stderr(), worker.describe()
    finally:
        (folder / "longline.csv").unlink(missing_ok=True)


# ------------------------------------------------------------------------------------------ time limit


@pytest.mark.timeout(90)
def test_job_past_its_time_limit_fails_and_the_worker_serves_the_next(
    clean_redis, velo, start_velo, model, model_path, slow_model, tmp_path
):
    # Given a file that takes a slowed worker about 10 s, and a one-block file in another folder
    slow = slow_frame(20, BLOCK, seed=801)
    quick = make_frame(10, seed=802)
    (tmp_path / "slow").mkdir()
    (tmp_path / "quick").mkdir()
    (tmp_path / "slow" / "s.csv").write_bytes(csv_bytes(slow))
    (tmp_path / "quick" / "q.csv").write_bytes(csv_bytes(quick))
    # (the model preloaded: on a busy machine loading it inside the job could take the 2 s itself)
    worker = start_velo("worker", "--redis", clean_redis, "--model", str(slow_model(0.5)), env=slowed())

    # When the slow file is dispatched with a 2 s time limit and waited for
    started = time.monotonic()
    result = velo(
        "dispatch",
        tmp_path / "slow",
        "--model",
        slow_model(0.5),
        "--timeout",
        "2",
        "--redis",
        clean_redis,
        "--wait",
        timeout=60,
    )
    print(f"\ntime limit: dispatch --wait returned {result.returncode} after {time.monotonic() - started:.1f}s")

    # Then the file failed with "time limit" in its reason, in status and in its error file
    assert result.returncode == 1, velo.describe(result) + "\n" + worker.describe()
    batch_id = find_dispatch_line(result.stdout)[0]
    final = batch_status(velo, clean_redis, batch_id)
    assert counters(final) == {"total": 1, "queued": 0, "running": 0, "done": 0, "failed": 1}, final
    [failure] = final["failures"]
    assert "time limit" in failure["error"].lower(), failure
    assert "s.csv" in failure["error"], failure
    record = json.loads((tmp_path / "slow" / "s.out.csv.error.json").read_text())
    assert "time limit" in record["error"].lower(), record
    assert not (tmp_path / "slow" / "s.out.csv").exists()
    assert sorted(p.name for p in (tmp_path / "slow").iterdir()) == ["s.csv", "s.out.csv.error.json"]

    # When a good file is dispatched next
    again = velo("dispatch", tmp_path / "quick", "--model", model_path, "--redis", clean_redis, "--wait", timeout=60)

    # Then the same worker, still up, scores it
    assert again.returncode == 0, velo.describe(again) + "\n" + worker.describe()
    assert_output_matches(read_output(tmp_path / "quick" / "q.out.csv"), expected_output(quick, model))
    assert worker.poll() is None, worker.describe()
    assert "Traceback" not in worker.read_stderr(), worker.describe()


# --------------------------------------------------------------------------------------------- retry


@pytest.mark.timeout(90)
def test_retry_after_fixing_a_failed_file_scores_it(clean_redis, velo, start_velo, model, model_path, tmp_path):
    # Given a batch where one file failed for text in a feature column, served by a long-running worker
    folder = tmp_path / "in"
    folder.mkdir()
    good = make_frame(8, seed=901)
    (folder / "good.csv").write_bytes(csv_bytes(good))
    (folder / "fixme.csv").write_bytes(b"id,f0,f1,f2,f3\n0,0.1,oops,0.3,0.4\n")
    worker = start_velo("worker", "--redis", clean_redis)
    first = velo("dispatch", folder, "--model", model_path, "--redis", clean_redis, "--wait", timeout=60)
    assert first.returncode == 1, velo.describe(first) + "\n" + worker.describe()
    batch_id = find_dispatch_line(first.stdout)[0]
    assert (folder / "fixme.out.csv.error.json").exists()

    # When the file is fixed and the batch retried
    fixed = make_frame(9, seed=902)
    (folder / "fixme.csv").write_bytes(csv_bytes(fixed))
    retried = velo("retry", batch_id, "--redis", clean_redis, check=0)
    assert retried.stdout.strip() == f"batch {batch_id}: 1 enqueued again", velo.describe(retried)

    # Then the fixed file is scored: status shows no failure left
    final = wait_until(
        lambda: (b := batch_status(velo, clean_redis, batch_id))["done"] == 2 and b,
        timeout=30,
        interval=0.3,
        message="the retried file to be done\n" + worker.describe(),
    )
    assert counters(final) == {"total": 2, "queued": 0, "running": 0, "done": 2, "failed": 0}, final
    assert final["failures"] == []
    assert final["rows"] == len(good) + len(fixed)
    # And its output is right and its stale error file is gone
    assert_output_matches(read_output(folder / "fixme.out.csv"), expected_output(fixed, model))
    assert not (folder / "fixme.out.csv.error.json").exists()
    assert worker.poll() is None, worker.describe()


@pytest.mark.timeout(90)
def test_a_put_only_policy_keeps_a_success_when_the_stale_error_file_cannot_be_deleted(
    s3, clean_redis, velo, fault_proxy, model, model_path
):
    # Given a file that failed before for a passing reason (its stale error file is beside it), and
    # an S3 proxy that denies DELETE on that error file, as a put-only bucket policy does
    frame = make_frame(12, seed=701)
    s3.put("in/again.csv", csv_bytes(frame))
    stale = {"file": s3.uri("in/again.csv"), "error": "S3 unavailable", "kind": "transient"}
    s3.put("in/again.out.csv.error.json", json.dumps(stale).encode())
    fault_proxy.deny("DELETE", r"^/velo-test/in/again\.out\.csv\.error\.json(\?|$)")
    dispatched = velo("dispatch", s3.uri("in/"), "--model", model_path, "--redis", clean_redis, check=0)
    batch_id, enqueued, _ = find_dispatch_line(dispatched.stdout)
    assert enqueued == 1

    # When a worker going through the proxy scores it
    worker = velo("worker", "--burst", "--redis", clean_redis, env={"AWS_ENDPOINT_URL": fault_proxy.url}, timeout=60)

    # Then the file is done with its right output; the denied delete is only a warning
    assert worker.returncode == 0, velo.describe(worker)
    assert "403" in fault_proxy.faults("DELETE", r"^/velo-test/in/again\.out\.csv\.error\.json(\?|$)")
    final = batch_status(velo, clean_redis, batch_id)
    assert counters(final) == {"total": 1, "queued": 0, "running": 0, "done": 1, "failed": 0}, final
    assert_output_matches(read_output(s3.get("in/again.out.csv")), expected_output(frame, model))
    assert "stale error file stays" in worker.stderr, velo.describe(worker)
    # And the next dispatch finds it done (it plans by the output, not by the stale error file)
    again = velo("dispatch", s3.uri("in/"), "--model", model_path, "--redis", clean_redis, "--dry-run", check=0)
    assert again.stdout.startswith("already done\t"), velo.describe(again)
