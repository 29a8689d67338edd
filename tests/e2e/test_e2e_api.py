"""The Python API on real parts: `velosiped.Client` against a real redis-server and real
`velo worker` processes, and `velosiped.run` in a fresh Python process, as a notebook would."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
from helpers import assert_output_matches, csv_bytes, dump_model, expected_output, fit_model, make_frame, read_output

import velosiped

pytestmark = pytest.mark.e2e


def test_client_dispatches_waits_reports_and_retries(clean_redis, start_velo, tmp_path):
    # Given three files, one without a feature column, and a worker
    model = fit_model()
    model_path = str(dump_model(model, tmp_path / "m.joblib"))
    data = tmp_path / "in"
    data.mkdir()
    frames = {f"{i}.csv": make_frame(20 + i, seed=i) for i in range(2)}
    for name, frame in frames.items():
        (data / name).write_bytes(csv_bytes(frame))
    (data / "bad.csv").write_bytes(csv_bytes(make_frame(4).drop(columns="f0")))
    start_velo("worker", "--redis", clean_redis)
    client = velosiped.Client(clean_redis)

    # When a batch is dispatched from Python and waited for
    made = client.dispatch(str(data), model_path, keep=["id"])
    assert (made["enqueued"], made["skipped"]) == (3, 0)
    batch = client.wait(made["id"], timeout=60)

    # Then it is what `velo status --json` says, outputs and reason included
    assert (batch["done"], batch["failed"]) == (2, 1)
    assert "f0" in batch["failures"][0]["error"]
    for name, frame in frames.items():
        assert_output_matches(
            read_output((data / name.replace(".csv", ".out.csv")).read_bytes()),
            expected_output(frame, model, keep=["id"]),
        )
    assert [b["id"] for b in client.status()] == [made["id"]]
    # And once the file is fixed, retry scores it
    (data / "bad.csv").write_bytes(csv_bytes(make_frame(4)))
    assert client.retry(made["id"]) == 1
    assert client.wait(made["id"], timeout=60)["done"] == 3
    assert client.dispatch(str(data), model_path, keep=["id"])["enqueued"] == 0


def test_run_scores_a_folder_from_python(tmp_path, velo_env):
    model = fit_model()
    model_path = dump_model(model, tmp_path / "m.joblib")
    data = tmp_path / "in"
    data.mkdir()
    frame = make_frame(30, seed=3)
    (data / "a.csv").write_bytes(csv_bytes(frame))
    script = textwrap.dedent(f"""
        import json, velosiped
        print(json.dumps(velosiped.run({str(data)!r}, {str(model_path)!r}, workers=2, proba=True)))
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=velo_env(), timeout=120)
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert (summary["done"], summary["failed"], summary["rows"]) == (1, 0, 30), summary
    assert_output_matches(read_output((data / "a.out.csv").read_bytes()), expected_output(frame, model, proba=True))
