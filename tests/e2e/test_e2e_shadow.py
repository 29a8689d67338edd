"""Champion vs challenger (`--shadow`) through the real CLI: `velo run` on a local folder, `velo dispatch`
+ `velo worker --burst` on S3 (moto) and a real redis-server. Each file is read once and scored by both
models; the champion's outputs are the very bytes a run without --shadow writes; the challenger's equal
its own predict (and predict_proba); a re-dispatch skips files whose both outputs are current; `velo
report` gives the numbers numpy gives from both models' predictions."""

from __future__ import annotations

import gzip
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from helpers import (
    assert_output_matches,
    csv_bytes,
    dump_model,
    expected_output,
    feature_names,
    find_dispatch_line,
    fit_model,
    make_frame,
    model_bytes,
    parse_dispatch,
    read_output,
    write_csv,
)

pytestmark = pytest.mark.e2e

FILES = {"a.csv": 3000, "b/c.csv": 2500, "d.csv.gz": 2000}
SMALL_BLOCKS = {"VELO_BLOCK_SIZE": str(64 * 1024)}  # several blocks a file: the comparison adds them up


def challenger_model():
    """A tree on another rule than the champion's (f0 + f1 > 0): f0 + f2 > 0; f3 matters to neither."""
    from sklearn.tree import DecisionTreeClassifier

    frame = make_frame(2000, seed=777)
    labels = (frame["f0"] + frame["f2"] > 0).astype(int)
    return DecisionTreeClassifier(max_depth=4, random_state=0).fit(frame[feature_names()], labels)


def frames() -> dict[str, pd.DataFrame]:
    return {name: make_frame(rows, seed=i) for i, (name, rows) in enumerate(FILES.items())}


def out_name(name: str) -> str:
    return name.replace(".csv", ".out.csv")


def raw(path: Path) -> bytes:
    """A file's bytes; a gzip output's content (its header holds the time it was written)."""
    data = path.read_bytes()
    return gzip.decompress(data) if path.name.endswith(".gz") else data


def numpy_comparison(data: dict[str, pd.DataFrame], champion, challenger) -> dict:
    """What the report should say, from both models' own predictions on the same rows."""
    x = pd.concat([pd.read_csv(pd.io.common.BytesIO(csv_bytes(f)))[feature_names()] for f in data.values()])
    y1, y2 = champion.predict(x), challenger.predict(x)
    delta = np.abs(champion.predict_proba(x) - challenger.predict_proba(x)).max(axis=1)
    confusion = {str(a): {str(b): int(np.sum((y1 == a) & (y2 == b))) for b in (0, 1)} for a in (0, 1)}
    return {
        "rows": len(x),
        "agreement": float(np.mean(y1 == y2)),
        "confusion": {a: {b: n for b, n in row.items() if n} for a, row in confusion.items()},
        "delta_mean": float(delta.mean()),
        "delta_max": float(delta.max()),
    }


def assert_report(report: dict, expected: dict) -> None:
    c = report["challenger"]
    assert c["rows"] == expected["rows"]
    assert c["agreement"] == pytest.approx(expected["agreement"], abs=1e-12)
    assert c["confusion"] == expected["confusion"]
    assert c["delta_of"] == "proba"
    assert c["delta_mean"] == pytest.approx(expected["delta_mean"], rel=1e-9)
    assert c["delta_max"] == pytest.approx(expected["delta_max"], rel=1e-12)
    # The features the two rules use differ where the models disagree; f3, used by neither, least
    ranked = [f["feature"] for f in c["features"]]
    assert ranked[-1] == "f3" and set(ranked[:3]) == {"f0", "f1", "f2"}, c["features"]
    assert all(f["rows_disagree"] == expected["rows"] - c["agree"] for f in c["features"])


def assert_same_but_last_digits(output: bytes, other: bytes) -> None:
    """Two outputs of the same rows: every cell the same, but a probability's last digit (BLAS may
    round a row's sum otherwise where the rows lie elsewhere in memory, or with another thread count)."""
    a, b = read_output(output), read_output(other)
    probabilities = [c for c in a.columns if c.startswith("proba_")]
    pd.testing.assert_frame_equal(a.drop(columns=probabilities), b.drop(columns=probabilities))
    np.testing.assert_allclose(a[probabilities], b[probabilities], rtol=0, atol=1e-12)


def test_run_shadow_local(velo, tmp_path):
    champion, challenger = fit_model(), challenger_model()
    m1 = dump_model(champion, tmp_path / "champion.joblib")
    m2 = dump_model(challenger, tmp_path / "challenger.joblib")
    data = frames()
    src, plain_out, shadow_champion, shadow_out = (tmp_path / d for d in ("in", "plain", "with", "shadow"))
    for name, frame in data.items():
        write_csv(src / name, frame)

    # The champion alone, then the champion with a challenger: its outputs are the same, but for a
    # probability's last digit (one row of 7,500 differed so, in one environment). A run with
    # --shadow scores one file a job, so the plain run does too
    velo(
        "run", src, "--model", m1, "--proba", "--output", plain_out, "--workers", "2", "--group-size", "1",
        env=SMALL_BLOCKS, check=0,
    )  # fmt: skip
    run = velo(
        "run", src, "--model", m1, "--proba", "--output", shadow_champion, "--workers", "2",
        "--shadow", m2, "--shadow-output", shadow_out, env=SMALL_BLOCKS, check=0,
    )  # fmt: skip
    batch = find_dispatch_line(run.stdout)[0]
    for name, frame in data.items():
        assert_same_but_last_digits(raw(shadow_champion / out_name(name)), raw(plain_out / out_name(name)))
        # The challenger's outputs: its own predict and predict_proba, on the same rows
        mine = read_output(shadow_out / out_name(name))
        assert_output_matches(mine, expected_output(frame, challenger, proba=True))
        made = json.loads((shadow_out / (out_name(name) + ".velo.json")).read_text())
        assert made["velo-role"] == "challenger" and made["velo-model"] == str(m2)
        assert made["velo-rows"] == str(len(frame)) and made["velo-batch"] == batch
    assert (shadow_out / "d.out.csv.gz").read_bytes()[:2] == b"\x1f\x8b"  # compressed like its input

    # The report: the numbers numpy gives from both models' predictions (gathered without --stats)
    report = json.loads(velo("report", batch, "--json", check=0).stdout)
    assert_report(report, numpy_comparison(data, champion, challenger))
    text = velo("report", batch, check=0).stdout
    assert "champion vs challenger" in text and "agreement" in text
    page = tmp_path / "r.html"
    velo("report", batch, "--html", page, check=0)
    assert "Champion vs challenger" in page.read_text()

    # Run again: both outputs are current, nothing to do
    again = [
        "run", src, "--model", m1, "--proba", "--output", shadow_champion,
        "--shadow", m2, "--shadow-output", shadow_out, "--workers", "1",
    ]  # fmt: skip
    assert find_dispatch_line(velo(*again, check=0).stdout)[1:] == (0, 3)
    # A challenger output gone: that file is scored again, its champion output rewritten the same
    (shadow_out / "a.out.csv").unlink()
    before = (shadow_champion / "a.out.csv").read_bytes()
    assert find_dispatch_line(velo(*again, check=0).stdout)[1:] == (1, 2)
    assert_same_but_last_digits((shadow_champion / "a.out.csv").read_bytes(), before)
    assert_output_matches(read_output(shadow_out / "a.out.csv"), expected_output(data["a.csv"], challenger, proba=True))
    # Outputs are never inputs: a run without --shadow plans the three inputs alone, all done
    plan = velo("run", src, "--model", m1, "--proba", "--output", shadow_champion, "--dry-run", check=0).stdout
    listed = sorted(line.split("\t")[1] for line in plan.splitlines() if "\t" in line)
    assert listed == sorted(str(src / name) for name in FILES) and "0 would be enqueued, 3 skipped" in plan


def test_challenger_failure_keeps_the_champion(velo, tmp_path):
    champion = fit_model()
    m1 = dump_model(champion, tmp_path / "champion.joblib")
    m2 = dump_model(fit_model(n_features=6), tmp_path / "wide.joblib")  # wants f4, f5: not in the files
    frame = make_frame(500)
    write_csv(tmp_path / "in" / "x.csv", frame)
    args = ["run", tmp_path / "in", "--model", m1, "--shadow", m2, "--shadow-output", tmp_path / "sh"]
    run = velo(*args, check=0)
    batch = find_dispatch_line(run.stdout)[0]
    assert_output_matches(read_output(tmp_path / "in" / "x.out.csv"), expected_output(frame, champion))
    assert not (tmp_path / "sh" / "x.out.csv").exists()
    failed = json.loads((tmp_path / "sh" / "x.out.csv.error.json").read_text())
    assert "missing feature columns: f4, f5" in failed["error"] and failed["role"] == "challenger"
    status = json.loads(velo("status", batch, "--json", check=0).stdout)["batches"][0]
    assert (status["done"], status["failed"]) == (1, 0)
    c = json.loads(velo("report", batch, "--json", check=0).stdout)["challenger"]
    assert c["failed_files"] == 1 and "f4, f5" in next(iter(c["failed"].values()))
    # The same challenger on the same input fails the same way: not tried again
    assert find_dispatch_line(velo(*args, check=0).stdout)[1:] == (0, 1)


def test_shadow_options_are_checked(velo, tmp_path):
    m1 = dump_model(fit_model(), tmp_path / "m.joblib")
    write_csv(tmp_path / "in" / "x.csv", make_frame(10))
    src = tmp_path / "in"
    cases = [
        (["--shadow", m1], "--shadow needs --shadow-output"),
        (["--shadow-output", tmp_path / "sh"], "need --shadow MODEL2"),
        (["--shadow", m1, "--shadow-output", src / "sh"], "inside SOURCE"),
        (["--shadow", m1, "--shadow-output", tmp_path / "o", "--output", tmp_path / "o"], "overlaps --output"),
        (["--shadow", tmp_path / "nope.joblib", "--shadow-output", tmp_path / "sh"], "check --shadow"),
        (["--shadow", m1, "--shadow-output", tmp_path / "sh", "--shadow-sha256", "ab" * 32], "--shadow-sha256"),
        (["--shadow", m1, "--shadow-output", tmp_path / "sh", "--shard-size", "256MB"], "use --shard-size 0"),
    ]
    for extra, message in cases:
        result = velo("run", src, "--model", m1, *extra, check=2)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and message in lines[0] and "Traceback" not in result.stderr, result.stderr


def test_dispatch_and_worker_on_s3(s3, clean_redis, velo, tmp_path):
    champion, challenger = fit_model(), challenger_model()
    s3.put("models/champion.joblib", model_bytes(champion))
    s3.put("models/challenger.joblib", model_bytes(challenger))
    data = frames()
    for name, frame in data.items():
        s3.put(f"in/{name}", gzip.compress(csv_bytes(frame), mtime=0) if name.endswith(".gz") else csv_bytes(frame))
    args = [
        "dispatch", s3.uri("in/"), "--model", s3.uri("models/champion.joblib"), "--proba",
        "--shadow", s3.uri("models/challenger.joblib"), "--shadow-output", s3.uri("shadow/"),
        "--redis", clean_redis,
    ]  # fmt: skip
    batch, enqueued, skipped = parse_dispatch(velo(*args, env=SMALL_BLOCKS, check=0).stdout)
    assert (enqueued, skipped) == (3, 0)
    velo("worker", "--burst", "--redis", clean_redis, env=SMALL_BLOCKS, check=0)
    for name, frame in data.items():
        assert_output_matches(read_output(s3.get(f"in/{out_name(name)}")), expected_output(frame, champion, proba=True))
        theirs = read_output(s3.get(f"shadow/{out_name(name)}"))
        assert_output_matches(theirs, expected_output(frame, challenger, proba=True))
        meta = s3.head(f"shadow/{out_name(name)}")["Metadata"]
        assert meta["velo-role"] == "challenger" and meta["velo-model"] == s3.uri("models/challenger.joblib")
    assert_report(
        json.loads(velo("report", batch, "--json", "--redis", clean_redis, check=0).stdout),
        numpy_comparison(data, champion, challenger),
    )
    # Dispatched again: both outputs current, nothing enqueued; a challenger output gone: that file
    assert parse_dispatch(velo(*args, check=0).stdout)[1:] == (0, 3)
    s3.client.delete_object(Bucket=s3.bucket, Key="shadow/b/c.out.csv")
    assert parse_dispatch(velo(*args, check=0).stdout)[1:] == (1, 2)
    velo("worker", "--burst", "--redis", clean_redis, check=0)
    again = read_output(s3.get("shadow/b/c.out.csv"))
    assert_output_matches(again, expected_output(data["b/c.csv"], challenger, proba=True))


def test_watch_with_a_challenger(s3, clean_redis, velo, start_velo, tmp_path):
    champion, challenger = fit_model(), challenger_model()
    m1, m2 = dump_model(champion, tmp_path / "m1.joblib"), dump_model(challenger, tmp_path / "m2.joblib")
    worker = start_velo("worker", "--redis", clean_redis)
    watcher = start_velo(
        "watch", s3.uri("in/"), "--model", m1, "--shadow", m2, "--shadow-output", s3.uri("shadow/"),
        "--interval", "0.5", "--redis", clean_redis,
    )  # fmt: skip
    frame = make_frame(300, seed=5)
    s3.put("in/w.csv", csv_bytes(frame))
    deadline = time.monotonic() + 60
    while not (s3.exists("in/w.out.csv") and s3.exists("shadow/w.out.csv")) and time.monotonic() < deadline:
        time.sleep(0.2)
    watcher.stop()
    worker.stop()
    assert_output_matches(read_output(s3.get("in/w.out.csv")), expected_output(frame, champion))
    assert_output_matches(read_output(s3.get("shadow/w.out.csv")), expected_output(frame, challenger))


def test_a_newer_input_that_fails_removes_both_older_outputs(velo, tmp_path):
    m1 = dump_model(fit_model(), tmp_path / "m1.joblib")
    m2 = dump_model(challenger_model(), tmp_path / "m2.joblib")
    write_csv(tmp_path / "in" / "x.csv", make_frame(100))
    args = ["run", tmp_path / "in", "--model", m1, "--shadow", m2, "--shadow-output", tmp_path / "sh"]
    velo(*args, check=0)
    assert (tmp_path / "in" / "x.out.csv").exists() and (tmp_path / "sh" / "x.out.csv").exists()
    (tmp_path / "in" / "x.csv").write_text("id,f0\n1,2\n")  # a newer version, without the features
    velo(*args, check=1)
    assert not (tmp_path / "in" / "x.out.csv").exists() and not (tmp_path / "sh" / "x.out.csv").exists()
    assert not (tmp_path / "sh" / "x.out.csv.velo.json").exists()
