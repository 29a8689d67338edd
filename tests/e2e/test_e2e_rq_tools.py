"""RQ's own tools tell the truth about Velosiped's jobs: a file that failed is a failed RQ job (`rq
info` counts it, its exc_info is the one-line reason, RQ does not run it again on its own), `rq
requeue` of it scores the file as it is now (as `velo retry` does), and a job names its file,
output and batch in its description and meta.

The real `rq` CLI of the venv runs as a subprocess against a real redis-server, beside real `velo`
processes; S3 is moto's server (through `faultproxy` for the transient case).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import redis
from helpers import (
    assert_output_matches,
    batch_status,
    csv_bytes,
    expected_output,
    find_dispatch_line,
    make_frame,
    read_output,
)
from rq.job import Job, JobStatus
from rq.registry import FailedJobRegistry
from rq.serializers import JSONSerializer

from dispatcher.enqueue import RETRIES

pytestmark = pytest.mark.e2e

RQ = str(Path(sys.executable).parent / "rq")
SERIALIZER = "rq.serializers.JSONSerializer"


def rq(*args: str, url: str) -> str:
    """Run the real `rq` CLI with Velosiped's serializer; its stdout."""
    done = subprocess.run(
        [RQ, *args, "-u", url, "--serializer", SERIALIZER],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin", "COLUMNS": "200", "TERM": "dumb"},
    )
    assert done.returncode == 0, f"rq {' '.join(args)}: exit {done.returncode}\n{done.stdout}\n{done.stderr}"
    return done.stdout


def queue_line(url: str) -> str:
    """`rq info`'s line for the velo queue: 'queue velo N, E executing, F finished, X failed'."""
    [line] = [x for x in rq("info", "--raw", "--only-queues", "velo", url=url).splitlines() if "velo" in x]
    return line


def through(proxy) -> dict[str, str]:
    """Worker env: S3 through the proxy, no boto3 retries, 4 attempts 0.2-0.8 s apart (as test_e2e_fault_model)."""
    return {
        "AWS_ENDPOINT_URL": proxy.url,
        "AWS_MAX_ATTEMPTS": "1",
        "VELO_S3_RETRIES": "3",
        "VELO_S3_BACKOFF": "0.2",
        "VELO_S3_BACKOFF_MAX": "1",
    }


KEY = r"^/velo-test/in/f\.csv(\?|$)"
"""The proxy's path regex for the test's input object."""


def failed_jobs(client: redis.Redis) -> list[Job]:
    registry = FailedJobRegistry("velo", connection=client, serializer=JSONSerializer)
    return [Job.fetch(jid, connection=client, serializer=JSONSerializer) for jid in registry.get_job_ids()]


def dispatch(velo, s3, url: str, model_path) -> str:
    out = velo("dispatch", s3.uri("in/"), "--model", model_path, "--redis", url, check=0).stdout
    batch_id, enqueued, _ = find_dispatch_line(out)
    assert enqueued == 1, out
    return batch_id


def assert_done(velo, s3, url: str, batch_id: str, frame, model) -> None:
    batch = batch_status(velo, url, batch_id)
    assert (batch["done"], batch["failed"], batch["failures"]) == (1, 0, []), batch
    assert_output_matches(read_output(s3.get("in/f.out.csv")), expected_output(frame, model))
    assert not s3.exists("in/f.out.csv.error.json")


@pytest.mark.timeout(120)
def test_a_bad_input_is_a_failed_rq_job_and_rq_requeue_scores_it_once_fixed(s3, clean_redis, velo, model, model_path):
    client = redis.Redis.from_url(clean_redis)
    # Given a file lacking a feature column, dispatched, and a worker that drained the queue
    s3.put("in/f.csv", csv_bytes(make_frame(8, seed=301).drop(columns="f2")))
    batch_id = dispatch(velo, s3, clean_redis, model_path)
    worker = velo("worker", "--burst", "--redis", clean_redis, check=0)
    reason = f"{s3.uri('in/f.csv')}: missing feature columns: f2"
    assert batch_status(velo, clean_redis, batch_id)["failures"] == [{"file": s3.uri("in/f.csv"), "error": reason}]

    # Then `rq info` counts it failed, not finished
    assert queue_line(clean_redis).endswith("0 finished, 1 failed"), queue_line(clean_redis)

    # And RQ's failed registry holds it, failed, with the one-line reason, run once, not retried
    [job] = failed_jobs(client)
    assert job.get_status() == JobStatus.FAILED
    assert job.latest_result().exc_string == reason
    assert job.retries_left == RETRIES  # none spent on it: they stay for a worker dying under a requeue
    assert client.llen("rq:queue:velo") == 0
    assert worker.stderr.count(reason) == 1, worker.stderr
    assert "Traceback" not in worker.stderr, worker.stderr

    # And it names its file, output and batch for RQ's tools
    out = s3.uri("in/f.out.csv")
    assert job.description == f"score {s3.uri('in/f.csv')} -> {out} (batch {batch_id})"
    assert job.meta == {"input": s3.uri("in/f.csv"), "output": out, "batch": batch_id}

    # When the file is fixed, and the failed job requeued with RQ's own CLI
    fixed = make_frame(8, seed=301)
    s3.put("in/f.csv", csv_bytes(fixed))
    assert "Requeueing 1 jobs" in rq("requeue", "--queue", "velo", "--all", url=clean_redis)
    velo("worker", "--burst", "--redis", clean_redis, check=0)

    # Then the file is scored as it is now: done in its batch, its output there, its error file gone
    assert_done(velo, s3, clean_redis, batch_id, fixed, model)
    assert queue_line(clean_redis).endswith("1 finished, 0 failed"), queue_line(clean_redis)
    assert client.hlen("velo:payloads") == 0


@pytest.mark.timeout(120)
def test_a_transient_failure_requeued_with_rq_requeue_is_scored(s3, clean_redis, velo, fault_proxy, model, model_path):
    client = redis.Redis.from_url(clean_redis)
    # Given a file whose every request failed with 503 SlowDown past every attempt
    frame = make_frame(12, seed=302)
    s3.put("in/f.csv", csv_bytes(frame))
    fault_proxy.fail("*", KEY, status=503, times=1000)
    batch_id = dispatch(velo, s3, clean_redis, model_path)
    velo("worker", "--burst", "--redis", clean_redis, env=through(fault_proxy), check=0)
    [job] = failed_jobs(client)
    assert "S3 unavailable after 4 attempts (503 SlowDown)" in job.latest_result().exc_string
    assert "\n" not in job.latest_result().exc_string
    assert queue_line(clean_redis).endswith("1 failed")

    # When S3 is back and the job is requeued with RQ's own CLI
    fault_proxy.clear()
    rq("requeue", "--queue", "velo", "--all", url=clean_redis)
    velo("worker", "--burst", "--redis", clean_redis, env=through(fault_proxy), check=0)

    # Then the file is done
    assert_done(velo, s3, clean_redis, batch_id, frame, model)
    assert failed_jobs(client) == []


@pytest.mark.timeout(120)
def test_jobs_name_their_file_output_and_batch(s3, clean_redis, velo, model_path):
    client = redis.Redis.from_url(clean_redis)
    # Given a file dispatched
    s3.put("in/f.csv", csv_bytes(make_frame(5, seed=303)))
    batch_id = dispatch(velo, s3, clean_redis, model_path)
    [jid] = [j.decode() for j in client.lrange("rq:queue:velo", 0, -1)]

    # Then its queued job names its batch (its file too would cost ~1 KB of Redis per queued file)
    queued = Job.fetch(jid, connection=client, serializer=JSONSerializer)
    assert queued.description == f"velo batch {batch_id}"
    assert max(len(v) for v in client.hgetall(Job.key_for(jid)).values()) <= 64  # a compact hash still

    # When a worker scores it
    velo("worker", "--burst", "--redis", clean_redis, check=0)

    # Then the finished job names its file, output and batch
    done = Job.fetch(jid, connection=client, serializer=JSONSerializer)
    assert done.get_status() == JobStatus.FINISHED
    f, out = s3.uri("in/f.csv"), s3.uri("in/f.out.csv")
    assert done.description == f"score {f} -> {out} (batch {batch_id})"
    assert done.meta == {"input": f, "output": out, "batch": batch_id}
