"""The fault model on real processes: S3 trouble that passes is ridden out, S3 down for longer fails
the file for now only (the next dispatch tries it again).

A `velo worker --burst` goes through `faultproxy` in front of moto's S3 server with boto3's own
retries off (`AWS_MAX_ATTEMPTS=1`), so every fault reaches Velosiped's handling, and short
backoffs (`VELO_S3_BACKOFF`) keep each test to seconds.
"""

from __future__ import annotations

import json
import time

import pytest
from helpers import (
    assert_output_matches,
    batch_status,
    counters,
    csv_bytes,
    expected_output,
    find_dispatch_line,
    make_frame,
    model_bytes,
    read_output,
    wait_until,
)

pytestmark = pytest.mark.e2e


def through(proxy, **extra: str) -> dict[str, str]:
    """Worker env: S3 through the proxy, no boto3 retries, 4 attempts 0.2-0.8 s apart."""
    return {
        "AWS_ENDPOINT_URL": proxy.url,
        "AWS_MAX_ATTEMPTS": "1",
        "VELO_S3_RETRIES": "3",
        "VELO_S3_BACKOFF": "0.2",
        "VELO_S3_BACKOFF_MAX": "1",
        **extra,
    }


def key_path(key: str) -> str:
    """The proxy's path regex for one object of the test bucket, with or without a query."""
    return r"^/velo-test/" + key.replace(".", r"\.") + r"(\?|$)"


def run(velo, s3, redis_url, proxy, model_uri, env=None) -> tuple[str, dict, object]:
    """Dispatch in/ (straight to S3), drain it with a burst worker through the proxy; (batch id, status, worker)."""
    dispatched = velo("dispatch", s3.uri("in/"), "--model", model_uri, "--redis", redis_url, check=0)
    batch_id, enqueued, _ = find_dispatch_line(dispatched.stdout)
    assert enqueued == 1, dispatched.stdout
    started = time.monotonic()
    worker = velo("worker", "--burst", "--redis", redis_url, env=env or through(proxy), timeout=60)
    requests = [(h.method, h.path, h.fault) for h in proxy.hits()]
    print(f"\nworker took {time.monotonic() - started:.1f}s; requests {requests}")
    assert worker.returncode == 0, velo.describe(worker)
    assert "Traceback" not in worker.stderr, velo.describe(worker)
    return batch_id, batch_status(velo, redis_url, batch_id), worker


def assert_done(s3, final: dict, frame, model, name: str = "f") -> None:
    assert counters(final) == {"total": 1, "queued": 0, "running": 0, "done": 1, "failed": 0}, final
    assert_output_matches(read_output(s3.get(f"in/{name}.out.csv")), expected_output(frame, model))
    assert not s3.exists(f"in/{name}.out.csv.error.json")


@pytest.mark.timeout(90)
def test_three_503s_on_the_input_get_then_success(s3, clean_redis, velo, fault_proxy, model, model_path):
    # Given a file whose first three GETs get 503 SlowDown
    frame = make_frame(30, seed=1101)
    s3.put("in/f.csv", csv_bytes(frame))
    fault_proxy.fail("GET", key_path("in/f.csv"), status=503, times=3)

    # When a worker drains the queue
    _, final, worker = run(velo, s3, clean_redis, fault_proxy, model_path)

    # Then the fourth attempt went through and the file is done
    assert fault_proxy.faults("GET", key_path("in/f.csv"))[:4] == ["503", "503", "503", "forwarded"]
    assert_done(s3, final, frame, model)
    assert worker.stderr.count("attempt ") == 3, worker.stderr


@pytest.mark.timeout(90)
def test_503_and_slowdown_on_create_multipart_upload_then_success(
    s3, clean_redis, velo, fault_proxy, model, model_path
):
    # Given a file whose output's CreateMultipartUpload gets a 503 ServiceUnavailable, then a SlowDown
    frame = make_frame(30, seed=1102)
    s3.put("in/f.csv", csv_bytes(frame))
    uploads = r"^/velo-test/in/f\.out\.csv\?uploads"
    fault_proxy.fail("POST", uploads, status=503, code="ServiceUnavailable", times=1)
    fault_proxy.fail("POST", uploads, status=503, code="SlowDown", times=1)

    # When a worker drains the queue
    _, final, _ = run(velo, s3, clean_redis, fault_proxy, model_path)

    # Then the third upload went through and the file is done
    assert fault_proxy.faults("POST", uploads)[:3] == ["503", "503", "forwarded"]
    assert_done(s3, final, frame, model)


@pytest.mark.timeout(90)
def test_connection_reset_in_the_middle_of_the_input_body(s3, clean_redis, velo, fault_proxy, model, model_path):
    # Given a ~60 KB file whose first GET is cut (TCP RST) after 20,000 bytes of its body
    frame = make_frame(3000, seed=1103)
    data = csv_bytes(frame)
    assert len(data) > 40_000
    s3.put("in/f.csv", data)
    fault_proxy.cut("GET", key_path("in/f.csv"), after=20_000)

    # When a worker drains the queue
    _, final, _ = run(velo, s3, clean_redis, fault_proxy, model_path)

    # Then the body was cut once, read again, and the file is done with every row
    faults = fault_proxy.faults("GET", key_path("in/f.csv"))
    assert faults[0] == "cut" and "forwarded" in faults[1:], faults
    assert_done(s3, final, frame, model)
    assert final["rows"] == len(frame)


@pytest.mark.timeout(90)
def test_connection_reset_in_the_middle_of_the_model_body(s3, clean_redis, velo, fault_proxy, model, tmp_path):
    # Given a model on S3 whose first download is cut after 1,000 bytes, and a file to score
    s3.put("models/m.joblib", model_bytes(model))
    frame = make_frame(30, seed=1104)
    s3.put("in/f.csv", csv_bytes(frame))
    fault_proxy.cut("GET", key_path("models/m.joblib"), after=1000)

    # When a worker drains the queue
    env = through(fault_proxy, VELO_MODEL_CACHE=str(tmp_path / "cache"))  # not a model downloaded before
    _, final, _ = run(velo, s3, clean_redis, fault_proxy, s3.uri("models/m.joblib"), env=env)

    # Then the model was downloaded again and the file is done
    assert fault_proxy.faults("GET", key_path("models/m.joblib"))[:2] == ["cut", "forwarded"]
    assert_done(s3, final, frame, model)


@pytest.mark.timeout(90)
def test_read_timeout_on_the_model_get_then_success(s3, clean_redis, velo, fault_proxy, model, tmp_path):
    # Given a model on S3 whose first GET is held 4 s, past the worker's 1 s read timeout
    s3.put("models/m.joblib", model_bytes(model))
    frame = make_frame(30, seed=1105)
    s3.put("in/f.csv", csv_bytes(frame))
    fault_proxy.delay("GET", key_path("models/m.joblib"), seconds=4, times=1)

    # When a worker drains the queue
    env = through(fault_proxy, VELO_S3_READ_TIMEOUT="1", VELO_MODEL_CACHE=str(tmp_path / "cache"))
    _, final, worker = run(velo, s3, clean_redis, fault_proxy, s3.uri("models/m.joblib"), env=env)

    # Then the first GET timed out, the second went through, and the file is done
    # (the proxy records the held request once it has given up on it: after the 4 s)
    model_gets = lambda: fault_proxy.faults("GET", key_path("models/m.joblib"))  # noqa: E731
    wait_until(lambda: len(model_gets()) >= 2, timeout=10, message="the held model GET to be recorded")
    assert sorted(model_gets()) == ["delay", "forwarded"], model_gets()
    assert "ReadTimeout" in worker.stderr, worker.stderr
    assert_done(s3, final, frame, model)


@pytest.mark.timeout(90)
def test_s3_down_past_every_retry_fails_the_file_for_now_and_the_next_dispatch_does_it(
    s3, clean_redis, velo, fault_proxy, model, model_path
):
    # Given a file whose every request gets 503 SlowDown
    frame = make_frame(30, seed=1106)
    s3.put("in/f.csv", csv_bytes(frame))
    fault_proxy.fail("*", key_path("in/f.csv"), status=503, times=1000)

    # When a worker drains the queue
    batch_id, final, _ = run(velo, s3, clean_redis, fault_proxy, model_path)

    # Then the file failed after 4 attempts, saying S3 was unavailable and that it will be tried again
    assert counters(final) == {"total": 1, "queued": 0, "running": 0, "done": 0, "failed": 1}, final
    [failure] = final["failures"]
    reason = failure["error"]
    assert reason == (
        f"{s3.uri('in/f.csv')}: S3 unavailable after 4 attempts (503 SlowDown); the next dispatch tries it again"
    ), reason
    assert fault_proxy.faults("GET", key_path("in/f.csv")) == ["503"] * 4
    record = json.loads(s3.get("in/f.out.csv.error.json"))
    assert (record["error"], record["kind"]) == (reason, "transient")
    assert not s3.exists("in/f.out.csv")

    # When S3 is back and the folder is dispatched again
    fault_proxy.clear()
    again, final, _ = run(velo, s3, clean_redis, fault_proxy, model_path)

    # Then the file was enqueued again, not skipped as "failed before", and is done
    assert again != batch_id
    assert_done(s3, final, frame, model)
