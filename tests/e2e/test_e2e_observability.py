"""Observability on real processes: a worker pool's summed Prometheus metrics, JSON log lines,
and `velo status` listing the workers, with an ETA, once or with --watch."""

from __future__ import annotations

import json
import re
import socket
import urllib.request

import pytest
from helpers import (
    assert_clean_error,
    csv_bytes,
    dump_model,
    fit_model,
    free_port,
    make_frame,
    parse_dispatch,
    wait_until,
)

pytestmark = pytest.mark.e2e

PER_FILE_FIELDS = {"batch", "file", "job_id", "rows", "seconds"}


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        return response.read().decode()


def metric(text: str, series: str) -> float | None:
    """The value on the exposition line of `series`, e.g. 'velo_files_total{outcome="done"}'."""
    found = re.search(rf"^{re.escape(series)} (\S+)$", text, re.MULTILINE)
    return float(found.group(1)) if found else None


def status_json(velo, redis_url: str) -> dict:
    return json.loads(velo("status", "--json", "--redis", redis_url, check=0).stdout)


def json_lines(text: str) -> list[dict]:
    lines = []
    for n, line in enumerate(text.splitlines(), 1):
        try:
            lines.append(json.loads(line))
        except json.JSONDecodeError:
            pytest.fail(f"worker stderr line {n} is not JSON: {line!r}\n--- stderr ---\n{text}")
    return lines


@pytest.fixture
def inputs(tmp_path):
    """Four small CSVs in a local folder, and a model: (folder, {path: rows}, model path)."""
    folder = tmp_path / "in"
    folder.mkdir()
    rows = {}
    for i in range(4):
        path = folder / f"{i}.csv"
        path.write_bytes(csv_bytes(make_frame(10 + i, seed=i)))
        rows[str(path.resolve())] = 10 + i
    return folder, rows, dump_model(fit_model(), tmp_path / "model.joblib")


def test_a_worker_pool_serves_summed_metrics_logs_json_and_shows_in_status(clean_redis, velo, start_velo, inputs):
    folder, rows, model = inputs
    port = free_port()

    # Given a worker of two processes with metrics on a port and JSON logs
    worker = start_velo(
        "worker",
        "--processes",
        2,
        "--metrics-port",
        port,
        "--metrics-addr",
        "127.0.0.1",
        "--log-format",
        "json",
        "--redis",
        clean_redis,
    )

    # Then status lists its two workers, idle (once they have started), with no file in hand
    workers = wait_until(
        lambda: (w := status_json(velo, clean_redis)["workers"]) and [x["state"] for x in w] == ["idle"] * 2 and w,
        timeout=30,
        message="two idle workers in `velo status --json`",
    )
    assert [w["file"] for w in workers] == [None, None]

    # And the metrics answer before any file, at zero
    text = scrape(port)
    assert metric(text, 'velo_files_total{outcome="done"}') == 0.0
    assert metric(text, 'velo_queue_depth{queue="velo"}') == 0.0

    # When four files are dispatched and waited for
    result = velo("dispatch", folder, "--model", model, "--redis", clean_redis, "--wait", check=0)
    batch_id, enqueued, _ = parse_dispatch(result.stdout)
    assert enqueued == 4

    # Then one scrape of the one port sums both processes (once the last worker is done with its job:
    # `--wait` returns when the batch's counters say so, a moment before the job ends)
    text = wait_until(
        lambda: (
            (t := scrape(port))
            and metric(t, "velo_busy_workers") == 0
            and metric(t, "velo_file_seconds_count") == 4
            and t
        ),
        timeout=10,
        message="no busy worker after 4 files",
    )
    lines = text.splitlines()
    assert 'velo_files_total{outcome="done"} 4.0' in lines, text
    assert 'velo_files_total{outcome="failed"} 0.0' in lines, text
    assert metric(text, "velo_rows_total") == sum(rows.values())
    assert metric(text, "velo_file_seconds_count") == 4.0
    assert metric(text, "velo_busy_workers") == 0.0
    assert metric(text, 'velo_queue_depth{queue="velo"}') == 0.0
    assert metric(text, "velo_model_loads_total") in (1.0, 2.0)  # once per process that took a file
    assert metric(text, "velo_model_load_seconds_count") == metric(text, "velo_model_loads_total")
    assert {m.group(1) for m in re.finditer(r'^velo_failures_total\{reason="([^"]+)"\} 0\.0$', text, re.M)} == {
        "input",
        "transient",
        "timeout",
        "config",
        "unexpected",
        "abandoned",
    }

    # And status shows the finished batch with an ETA of zero, and both workers still alive
    status = status_json(velo, clean_redis)
    (batch,) = [b for b in status["batches"] if b["id"] == batch_id]
    assert (batch["done"], batch["eta_seconds"]) == (4, 0.0)
    assert len(status["workers"]) == 2
    assert {w["name"] for w in status["workers"]} == {w["name"] for w in workers}

    # And `status --watch` refreshes the table (here twice, then stops)
    watched = velo("status", "--watch", "--interval", "0.2", "--count", "2", "--redis", clean_redis, check=0)
    assert watched.stdout.count("Velosiped batches") == 2, watched.stdout
    assert "ETA" in watched.stdout and batch_id in watched.stdout
    assert watched.stdout.count("Workers") == 2 and "idle" in watched.stdout

    # When the worker is stopped
    assert worker.stop() == 0, worker.describe()

    # Then it printed nothing on stdout and every stderr line is a JSON object, RQ's lines included
    assert worker.read_stdout() == ""
    logged = json_lines(worker.read_stderr())
    assert all({"time", "level", "logger", "message"} <= set(line) for line in logged)
    assert any(line["logger"] == "rq.worker" for line in logged)
    assert any(line["logger"] == "rq.worker_pool" for line in logged)

    # And there is one line per file with its batch, file, job id, rows and seconds
    per_file = [line for line in logged if line["logger"] == "worker.task"]
    assert all(set(line) >= PER_FILE_FIELDS for line in per_file), per_file
    assert {line["file"]: line["rows"] for line in per_file} == rows
    assert len(per_file) == 4
    assert {line["batch"] for line in per_file} == {batch_id}
    assert all(line["job_id"].startswith("velo-") and line["seconds"] >= 0 for line in per_file)


def test_status_watch_json_prints_one_object_per_refresh(clean_redis, velo):
    result = velo("status", "--watch", "--json", "--interval", "0.1", "--count", "3", "--redis", clean_redis, check=0)
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert lines == [{"batches": [], "workers": []}] * 3


def test_a_metrics_port_in_use_is_one_clear_error(clean_redis, velo):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = velo("worker", "--metrics-port", port, "--metrics-addr", "127.0.0.1", "--redis", clean_redis)
    assert_clean_error(result, f"127.0.0.1:{port}", "--metrics-port")
