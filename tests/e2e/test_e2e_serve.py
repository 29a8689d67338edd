"""`velo serve` as users run it: a real uvicorn process, a real redis-server, the S3 endpoint,
real workers; and its page in a real browser (Debian's chromium, driven by Selenium)."""

from __future__ import annotations

import json
import os
import shutil
import urllib.error
import urllib.request

import pandas as pd
import pytest
from helpers import (
    assert_output_matches,
    csv_bytes,
    dump_model,
    expected_output,
    find_dispatch_line,
    fit_model,
    free_port,
    make_frame,
    read_output,
    wait_until,
    write_csv,
)

from velosiped.models import sha256_file

pytestmark = pytest.mark.e2e


def http(url: str, body: bytes | None = None, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(
        url, data=body, headers=headers or {}, method="POST" if body is not None else "GET"
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            return answer.status, answer.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def post_json(url: str, obj, headers: dict[str, str] | None = None) -> tuple[int, dict]:
    status, body = http(url, json.dumps(obj).encode(), {"content-type": "application/json", **(headers or {})})
    return status, json.loads(body)


def start_server(start_velo, *args, env=None) -> tuple[str, object]:
    port = free_port()
    proc = start_velo("serve", *args, "--port", str(port), env=env)
    base = f"http://127.0.0.1:{port}"

    def ready():
        if proc.poll() is not None:
            raise AssertionError("velo serve exited\n" + proc.describe())
        try:
            return http(base + "/readyz")[0] == 200
        except OSError:
            return False

    wait_until(ready, 60, message="velo serve to be ready")
    return base, proc


def test_predict_over_http_equals_the_model_and_a_new_model_is_picked_up(start_velo, tmp_path):
    # Given velo serve with two processes on a model that is checked every half second
    model = fit_model()
    path = dump_model(model, tmp_path / "m.joblib")
    base, server = start_server(start_velo, "--model", path, "--workers", "2", "--model-poll", "0.5")
    frame = make_frame(30, seed=5)

    # When rows are posted as JSON records and as CSV
    status, records = http(
        base + "/predict?proba=1",
        json.dumps(frame.to_dict(orient="records")).encode(),
        {"content-type": "application/json"},
    )
    assert status == 200, records
    status, text = http(base + "/predict?proba=1", csv_bytes(frame), {"content-type": "text/csv"})
    assert status == 200, text

    # Then both answers are what a worker writes for the same rows
    expected = expected_output(frame, model, proba=True)
    assert_output_matches(pd.DataFrame(json.loads(records)), expected)
    assert_output_matches(read_output(text), expected)

    # When the model file is replaced, the server serves the new one without a restart
    other = fit_model("multiclass")
    dump_model(other, path)
    # (each of the two processes polls on its own; the answer's header names the version that made it)
    new_sha = sha256_file(path)
    records_body = json.dumps(frame.to_dict(orient="records")).encode()

    def answered_by_new_model() -> bytes | None:
        request = urllib.request.Request(
            base + "/predict", data=records_body, headers={"content-type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=30) as answer:
            return answer.read() if answer.headers["X-Velo-Model-Sha256"] == new_sha else None

    wait_until(lambda: all(answered_by_new_model() for _ in range(8)), 30, message="the new model in both processes")
    answer = json.loads(answered_by_new_model() or b"null")
    assert [r["prediction"] for r in answer] == list(other.predict(frame[["f0", "f1", "f2", "f3"]]))
    assert json.loads(http(base + "/info")[1])["classes"] == ["a", "b", "c"]
    # And errors are one line with their status, never a traceback
    status, body = post_json(base + "/predict", [{"f0": 1}])
    assert status == 422 and "missing feature columns" in body["error"]
    metrics = http(base + "/metrics")[1].decode()
    assert 'velo_http_request_seconds_count{route="/predict",status="200"}' in metrics
    assert "Traceback" not in server.read_stderr()


def test_a_host_beyond_loopback_needs_a_token(velo, tmp_path):
    path = dump_model(fit_model(), tmp_path / "m.joblib")
    refused = velo("serve", "--model", path, "--host", "0.0.0.0", "--port", str(free_port()), check=2)
    lines = refused.stderr.strip().splitlines()
    assert len(lines) == 1 and "VELO_API_TOKEN" in lines[0], refused.stderr


def test_the_batch_api_dispatches_to_real_workers_and_reports_like_velo_status(s3, clean_redis, start_velo, tmp_path):
    # Given velo serve with Redis and a token, a worker, and three files on S3, one broken
    model = fit_model()
    model_path = str(dump_model(model, tmp_path / "m.joblib"))
    frames = {f"in/{i}.csv": make_frame(10 + i, seed=i) for i in range(2)}
    for key, frame in frames.items():
        s3.put(key, csv_bytes(frame))
    s3.put("in/bad.csv", csv_bytes(make_frame(3).drop(columns="f2")))
    token = {"VELO_API_TOKEN": "s3cret-token"}
    base, server = start_server(start_velo, "--model", model_path, "--redis", clean_redis, env=token)
    start_velo("worker", "--redis", clean_redis)

    # When a batch is dispatched through the API, without the token and then with it
    body = {"source": s3.uri("in/"), "model": model_path}
    assert post_json(base + "/v1/batches", body)[0] == 401
    status, made = post_json(base + "/v1/batches", body, {"authorization": "Bearer s3cret-token"})
    assert status == 202 and (made["enqueued"], made["skipped"]) == (3, 0), made

    # Then the API reports it finished, with the broken file's reason, as velo status --json would
    def finished():
        found = json.loads(http(f"{base}/v1/batches/{made['id']}")[1])
        return found if found["finished"] else None

    batch = wait_until(finished, 60, message="the batch to finish")
    assert (batch["done"], batch["failed"]) == (2, 1), batch
    failures = json.loads(http(f"{base}/v1/batches/{made['id']}/failures")[1])["failures"]
    assert [f["file"] for f in failures] == [s3.uri("in/bad.csv")] and "f2" in failures[0]["error"]
    for key, frame in frames.items():
        assert_output_matches(read_output(s3.get(key.replace(".csv", ".out.csv"))), expected_output(frame, model))
    listing = json.loads(http(base + "/v1/batches")[1])
    assert [b["id"] for b in listing["batches"]] == [made["id"]] and listing["workers"]
    # And retry through the API enqueues the failed file again (the token wanted there too)
    assert post_json(f"{base}/v1/batches/{made['id']}/retry", {})[0] == 401
    status, retried = post_json(f"{base}/v1/batches/{made['id']}/retry", {}, {"authorization": "Bearer s3cret-token"})
    assert status == 200 and retried["enqueued"] == 1, retried
    assert "s3cret-token" not in server.read_stderr() + server.read_stdout()


def _browser():
    """Headless Debian chromium through its chromedriver (no browser download), or skip."""
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if not (chromium and driver):
        if os.environ.get("CI"):  # .ci/run installs them: a CI without them must not pass quietly
            pytest.fail("chromium and chromium-driver missing; .ci/run should have installed them")
        pytest.skip("needs chromium and chromium-driver (apt-get install chromium chromium-driver)")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--window-size=1200,900",
    ):
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(executable_path=driver), options=options)


def test_the_page_shows_a_batch_go_from_queued_to_done_and_a_failed_files_reason(
    clean_redis, start_velo, velo, tmp_path
):
    # Given velo serve with Redis, a browser on its page, and a batch dispatched with no worker yet
    model_path = str(dump_model(fit_model(), tmp_path / "m.joblib"))
    data = tmp_path / "in"
    for i in range(3):
        (data / f"{i}.csv").parent.mkdir(exist_ok=True)
        (data / f"{i}.csv").write_bytes(csv_bytes(make_frame(20, seed=i)))
    (data / "broken.csv").write_bytes(csv_bytes(make_frame(5).drop(columns="f1")))
    base, _ = start_server(start_velo, "--model", model_path, "--redis", clean_redis)
    dispatched = velo("dispatch", data, "--model", model_path, "--redis", clean_redis, "--stats")
    batch_id = dispatched.stdout.split("batch ", 1)[1].split(":", 1)[0]
    browser = _browser()
    from selenium.common.exceptions import StaleElementReferenceException

    try:
        browser.get(base + "/")

        def read(what):  # the page redraws every second: an element read as it is replaced is read again
            try:
                return what()
            except StaleElementReferenceException:
                return None

        def row_state():
            rows = browser.find_elements("css selector", f'tr[data-batch="{batch_id}"]')
            return read(lambda: rows[0].get_attribute("data-state")) if rows else None

        # Then the page shows the batch queued
        assert wait_until(lambda: row_state() == "queued", 20, message="the batch shown queued")
        # When a worker drains the queue, the page shows it finished, with the broken file's reason
        velo("worker", "--burst", "--redis", clean_redis)
        wait_until(lambda: row_state() in ("done", "failed"), 20, message="the batch shown finished")
        assert row_state() == "failed"  # finished, with one failed file
        reasons = wait_until(
            lambda: read(lambda: [li.text for li in browser.find_elements("css selector", "#failures li[data-file]")]),
            20,
        )
        assert any("broken.csv" in r and "f1" in r for r in reasons), reasons
        selector = f'tr[data-batch="{batch_id}"]'
        row = wait_until(lambda: read(lambda: browser.find_element("css selector", selector).text), 20)
        assert "3/4" in row, row
        # And its drift report opens from the batch's row (statistics were gathered: --stats)
        page = browser.current_window_handle
        link = wait_until(lambda: browser.find_elements("css selector", f"{selector} a.report"), 20)
        assert wait_until(lambda: read(lambda: link[0].click() or True), 10)
        wait_until(lambda: len(browser.window_handles) == 2, 10, message="the report in a new tab")
        browser.switch_to.window(next(h for h in browser.window_handles if h != page))
        heading = wait_until(lambda: browser.find_elements("css selector", "h1"), 20, message="the report page")
        assert heading[0].text == f"Batch {batch_id}" and "60 rows in 3 files" in browser.page_source
        assert browser.find_elements("css selector", "svg")  # its histograms, drawn inline
    finally:
        browser.quit()


def _gauges(text: str, name: str) -> dict[tuple[str, ...], float]:
    """Samples of one metric family: label values (in order) -> value."""
    from prometheus_client.parser import text_string_to_metric_families

    return {
        tuple(sample.labels.values()): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name
    }


def test_drift_gauges_and_report_routes_judge_each_batch_by_its_reference(clean_redis, start_velo, velo, tmp_path):
    # Given two batches of the same source and model, the second with f5 shifted by 0.3 sd,
    # and a profile of the first's data
    model_path = dump_model(fit_model(n_features=8), tmp_path / "m.joblib")
    data = tmp_path / "in"
    for i in range(2):
        write_csv(data / f"{i}.csv", make_frame(8000, 8, seed=i))
    velo("profile", data, "--model", model_path, "-o", tmp_path / "profile.json", check=0)
    runs = []
    for shift in (0.0, 0.3):
        for i in range(2):
            frame = make_frame(8000, 8, seed=10 * i + int(shift * 10) + 3)
            frame["f5"] += shift
            write_csv(data / f"{i}.csv", frame)
        run = velo("run", data, "--model", model_path, "--redis", clean_redis, "--stats", "--workers", "1", check=0)
        runs.append(find_dispatch_line(run.stdout)[0])
    first, second = runs

    # When velo serve watches that Redis, with no profile: a batch is judged against the previous one
    base, server = start_server(start_velo, "--model", model_path, "--redis", clean_redis)
    metrics = http(base + "/metrics")[1].decode()
    flagged = _gauges(metrics, "velo_batch_drift_flagged")
    assert flagged[(second, "f5")] == 1.0 and flagged[(second, "f0")] == 0.0
    assert not any(batch == first for batch, _ in flagged)  # the first has no earlier batch: no gauges
    assert _gauges(metrics, "velo_batch_drift_columns") == {(second,): 1.0}
    scores = _gauges(metrics, "velo_batch_drift_score")
    assert scores[(second, "f5", "ks")] > 0.1 > scores[(second, "f0", "ks")]
    assert (second, "prediction", "psi") in scores
    status, body = http(f"{base}/v1/batches/{second}/report")
    report = json.loads(body)
    assert status == 200 and report["reference"] == first and report["drifted"] == ["f5"], report
    status, page = http(f"{base}/v1/batches/{second}/report.html")
    assert status == 200 and b"DRIFT" in page and f"Batch {second} against reference {first}".encode() in page
    assert json.loads(http(f"{base}/v1/batches/{first}/report")[1])["reference"] is None
    status, body = http(f"{base}/v1/batches/nope/report")
    assert status == 404 and "no batch 'nope'" in json.loads(body)["error"]
    listing = json.loads(http(base + "/v1/batches")[1])["batches"]
    assert {b["id"]: b["report"] for b in listing} == {b: f"/v1/batches/{b}/report.html" for b in runs}
    server.stop()

    # With --reference-profile, every batch is judged against the profile: the first one is calm
    base, server = start_server(
        start_velo, "--model", model_path, "--redis", clean_redis, "--reference-profile", tmp_path / "profile.json"
    )
    columns = _gauges(http(base + "/metrics")[1].decode(), "velo_batch_drift_columns")
    assert columns == {(first,): 0.0, (second,): 1.0}, columns
    assert json.loads(http(f"{base}/v1/batches/{first}/report")[1])["reference"].endswith("profile.json")
    assert "Traceback" not in server.read_stderr()
    # A profile that is not there is one line at start
    missing = velo("serve", "--model", model_path, "--redis", clean_redis, "--reference-profile", tmp_path / "x.json")
    assert missing.returncode == 2 and "no such profile" in missing.stderr
