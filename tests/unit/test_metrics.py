"""Prometheus metrics (worker/metrics.py) on tmp folders and fakeredis; JSON log lines (velosiped/logs.py)."""

from __future__ import annotations

import io
import json
import logging
import os
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

import fakeredis
import pytest
from rq.exceptions import AbandonedJobError
from rq.timeouts import JobTimeoutException

from dispatcher.enqueue import enqueue_batch
from dispatcher.plan import Options, plan
from tests.helpers import csv_bytes, dump_model, fit_model, make_frame
from velosiped.errors import ConfigError, InputError, TransientError
from velosiped.logs import JsonFormatter
from velosiped.models import version_of
from velosiped.rqapi import make_queue
from worker import metrics, models
from worker.runner import VeloWorker, queue_depth

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def enabled(tmp_path):
    """Metrics on, in a fresh multiprocess folder; off again after the test."""
    folder = tmp_path / "metrics"
    folder.mkdir()
    metrics.enable(str(folder))
    yield folder
    metrics.disable()


def scrape(**kw) -> str:
    from prometheus_client import generate_latest

    return generate_latest(metrics.registry(**kw)).decode()


def value(text: str, series: str) -> float | None:
    """The value of one exposition line, e.g. value(text, 'velo_files_total{outcome="done"}')."""
    for line in text.splitlines():
        if line.startswith(series + " "):
            return float(line.rsplit(" ", 1)[1])
    return None


def test_files_rows_and_failures_are_counted_with_a_bounded_reason_label(enabled):
    # Given two files done and three failed, one with a reason outside the set
    metrics.file_done(10, 0.5)
    metrics.file_done(5, 2.0)
    metrics.file_failed("input")
    metrics.file_failed("timeout")
    metrics.file_failed("s3://bucket/a/1.csv")  # never a label value

    # Then the counters and the histogram say so
    text = scrape()
    assert value(text, 'velo_files_total{outcome="done"}') == 2.0
    assert value(text, 'velo_files_total{outcome="failed"}') == 3.0
    assert value(text, "velo_rows_total") == 15.0
    assert value(text, "velo_file_seconds_count") == 2.0
    assert value(text, "velo_file_seconds_sum") == 2.5
    assert value(text, 'velo_file_seconds_bucket{le="1.0"}') == 1.0
    failures = {r: value(text, f'velo_failures_total{{reason="{r}"}}') for r in metrics.REASONS}
    assert failures == {"input": 1, "transient": 0, "timeout": 1, "config": 0, "unexpected": 1, "abandoned": 0}
    assert "s3://" not in text


def test_calls_are_no_ops_while_metrics_are_off():
    metrics.disable()
    metrics.file_done(1, 0.1)
    metrics.file_failed("input")
    metrics.model_loaded(0.1)
    with metrics.busy():
        pass
    metrics.process_dead(12345)
    with pytest.raises(RuntimeError):
        metrics.registry()


def test_forked_workers_add_up_and_a_dead_busy_worker_is_not_counted_busy(enabled):
    # Given the parent scored one file
    metrics.file_done(4, 0.1)

    # When a forked worker scores another and dies while busy with a third
    pid = os.fork()
    if pid == 0:  # the child: never return into pytest
        try:
            metrics.file_done(3, 0.2)
            with metrics.busy():
                os._exit(0)
        finally:
            os._exit(1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0

    # Then one scrape sums both processes, and the dead worker counts busy until it is marked dead
    text = scrape()
    assert value(text, 'velo_files_total{outcome="done"}') == 2.0
    assert value(text, "velo_rows_total") == 7.0
    assert value(text, "velo_busy_workers") == 1.0
    metrics.process_dead(pid)
    assert value(scrape(), "velo_busy_workers") == 0.0


def test_busy_gauge_follows_the_job(enabled):
    with metrics.busy():
        assert value(scrape(), "velo_busy_workers") == 1.0
    assert value(scrape(), "velo_busy_workers") == 0.0


def test_queue_depth_is_read_from_redis_when_scraped(enabled):
    # Given three jobs waiting in the RQ queue `velo`
    redis = fakeredis.FakeStrictRedis()
    redis.rpush(make_queue(redis, "velo").key, "a", "b", "c")
    depth = queue_depth(redis, "velo")

    # Then the gauge is the queue's length, read at each scrape
    assert value(scrape(queue="velo", depth=depth), 'velo_queue_depth{queue="velo"}') == 3.0
    redis.lpop(make_queue(redis, "velo").key)
    assert value(scrape(queue="velo", depth=depth), 'velo_queue_depth{queue="velo"}') == 2.0


def test_queue_depth_is_left_out_while_redis_is_away(enabled):
    def away() -> int:
        raise ConnectionError("Connection refused")

    text = scrape(queue="velo", depth=away)
    assert "velo_queue_depth{" not in text
    assert value(text, 'velo_files_total{outcome="done"}') == 0.0


def test_model_loads_are_timed_and_counted(enabled, tmp_path, monkeypatch):
    monkeypatch.setattr(models, "_cache", {})
    path = str(dump_model(fit_model(), tmp_path / "m.joblib"))
    version = version_of(path)
    models.load(path, version)
    models.load(path, version)  # from the cache: not a load
    text = scrape()
    assert value(text, "velo_model_loads_total") == 1.0
    assert value(text, "velo_model_load_seconds_count") == 1.0


def test_jobs_run_by_a_worker_count_their_files_rows_and_failures(enabled, tmp_path, caplog):
    # Given three good files and one without the model's columns
    data = tmp_path / "data"
    data.mkdir()
    for i in range(3):
        (data / f"{i}.csv").write_bytes(csv_bytes(make_frame(30, seed=i)))
    (data / "bad.csv").write_bytes(b"a,b\n1,2\n")
    model = dump_model(fit_model(), tmp_path / "m.joblib")
    opts = Options(model=str(model), model_version=version_of(str(model)))
    redis = fakeredis.FakeStrictRedis()
    batch = enqueue_batch(redis, "velo", str(data), opts, list(plan(str(data), opts)))

    # When a worker runs them
    caplog.set_level(logging.INFO, logger="worker.task")
    VeloWorker([make_queue(redis, "velo")], connection=redis).work(burst=True)

    # Then the metrics count three files done with their rows and one failed for its input
    text = scrape()
    assert value(text, 'velo_files_total{outcome="done"}') == 3.0
    assert value(text, 'velo_files_total{outcome="failed"}') == 1.0
    assert value(text, 'velo_failures_total{reason="input"}') == 1.0
    assert value(text, "velo_rows_total") == 90.0
    assert value(text, "velo_busy_workers") == 0.0

    # And each per-file log line carries the batch, file, job id and timing
    lines = [r for r in caplog.records if r.name == "worker.task"]
    assert len(lines) == 4
    for r in lines:
        assert r.batch == batch.id
        assert r.file.startswith(str(data))
        assert r.job_id.startswith("velo-")
        assert r.seconds >= 0
    assert sorted(getattr(r, "rows", None) for r in lines if r.levelno == logging.INFO) == [30, 30, 30]


def test_metrics_are_served_over_http(enabled):
    server = metrics.serve(0, "127.0.0.1", "velo", lambda: 7)
    try:
        metrics.file_done(2, 0.1)
        with urllib.request.urlopen(f"http://127.0.0.1:{server.server_port}/metrics", timeout=5) as r:
            text = r.read().decode()
        assert value(text, 'velo_files_total{outcome="done"}') == 1.0
        assert value(text, 'velo_queue_depth{queue="velo"}') == 7.0
    finally:
        server.shutdown()
        server.server_close()


def test_a_port_in_use_is_a_config_error(enabled):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with pytest.raises(ConfigError, match="--metrics-port"):
            metrics.serve(taken.getsockname()[1], "127.0.0.1")


@pytest.mark.parametrize(
    ("exc", "reason"),
    [
        (AbandonedJobError, "abandoned"),
        (JobTimeoutException, "timeout"),
        (TransientError, "transient"),
        (InputError, "input"),
        (ConfigError, "config"),
        (KeyError, "unexpected"),
        (None, "unexpected"),
    ],
)
def test_reason_of_maps_exceptions_to_a_few_labels(exc, reason):
    assert metrics.reason_of(exc) == reason
    assert reason in metrics.REASONS


# ----------------------------------------------------------------------------------------- JSON logs


def json_line(logger: logging.Logger, *args, **kwargs) -> dict:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger.addHandler(handler)
    try:
        logger.error(*args, **kwargs)
    finally:
        logger.removeHandler(handler)
    lines = stream.getvalue().splitlines()
    assert len(lines) == 1, lines
    return json.loads(lines[0])


def test_json_lines_carry_the_per_file_fields():
    logger = logging.getLogger("velo-test.json")
    extra = {"batch": "b1", "file": "s3://b/a/1.csv", "job_id": "velo-1", "rows": 1000, "seconds": 1.25}
    line = json_line(logger, "%6.2fs ← %s %d rows", 1.25, "s3://b/a/1.csv", 1000, extra=extra)
    assert line["message"] == "  1.25s ← s3://b/a/1.csv 1000 rows"
    assert (line["level"], line["logger"], line["pid"]) == ("ERROR", "velo-test.json", os.getpid())
    assert line["time"].endswith("+00:00") and "T" in line["time"]
    assert {k: line[k] for k in extra} == extra


def test_json_lines_hold_a_traceback_and_no_colour_on_one_line():
    logger = logging.getLogger("velo-test.json")
    try:
        raise ValueError("boom\nsecond line")
    except ValueError:
        line = json_line(logger, "\x1b[32mfailed\x1b[39;49;00m %s", "x", exc_info=True)
    assert line["message"] == "failed x"
    assert "ValueError: boom" in line["exc_info"]


def test_rq_worker_lines_come_out_as_json_too():
    # Given logs configured as JSON, then RQ setting up its own worker logger as `work()` does
    code = """
import logging, warnings
from rq.logutils import setup_loghandlers
from velosiped import logs
logs.configure("json")
setup_loghandlers("INFO", name="rq.worker")
logging.getLogger("rq.worker").info("*** Listening on velo...")
logging.getLogger("worker.task").info("done", extra={"batch": "b", "file": "f", "rows": 3})
logging.getLogger("botocore").info("not shown")
warnings.warn("a warning")
"""
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60, check=True
    )
    # Then every line is JSON, on stderr, and RQ's line is there
    assert result.stdout == ""
    lines = [json.loads(line) for line in result.stderr.splitlines()]
    assert [(x["logger"], x["message"]) for x in lines[:2]] == [
        ("rq.worker", "*** Listening on velo..."),
        ("worker.task", "done"),
    ]
    assert lines[1]["rows"] == 3
    assert lines[2]["logger"] == "py.warnings" and "a warning" in lines[2]["message"]
    assert len(lines) == 3
