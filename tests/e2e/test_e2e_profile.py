"""`velo profile` through the real CLI, and `velo report --reference-profile`: a profile of the
training data is the reference of a batch scored later; a shifted feature drifts, alone."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import assert_clean_error, csv_bytes, dump_model, find_dispatch_line, fit_model, make_frame, write_csv

from velosiped.sketch import Stats

pytestmark = pytest.mark.e2e

FILES, ROWS, FEATURES = 3, 20_000, 20
SHIFTED = "f7"


def frames(seed: int, shift: float = 0.0):
    for i in range(FILES):
        frame = make_frame(ROWS, FEATURES, seed=seed + i)
        frame[SHIFTED] += shift
        yield i, frame


def test_profile_of_training_data_is_the_reference_of_a_later_batch(velo, tmp_path):
    model = dump_model(fit_model(n_features=FEATURES), tmp_path / "model.joblib")
    for i, frame in frames(seed=100):
        write_csv(tmp_path / "train" / f"part-{i}.csv", frame)
    # An output of an earlier run lying there is not training data
    write_csv(tmp_path / "train" / "part-0.out.csv", make_frame(10, FEATURES).assign(prediction=1))

    made = velo("profile", tmp_path / "train", "--model", model, "-o", tmp_path / "profile.json", check=0)
    assert f"{FILES * ROWS:,} rows in {FILES} files, {FEATURES} features" in made.stdout, made.stdout
    profile = Stats.from_json((tmp_path / "profile.json").read_bytes())
    assert profile.rows == FILES * ROWS and profile.files == FILES
    assert list(profile.features) == [f"f{i}" for i in range(FEATURES)]
    assert sum(profile.classes.values()) == FILES * ROWS  # the prediction's distribution is in it

    for i, frame in frames(seed=200, shift=0.3):
        write_csv(tmp_path / "cur" / f"part-{i}.csv", frame)
    run = velo("run", tmp_path / "cur", "--model", model, "--workers", "2", "--stats", timeout=180, check=0)
    batch = find_dispatch_line(run.stdout)[0]

    # The shifted feature drifts from the profile, and only it
    r = json.loads(velo("report", batch, "--reference-profile", tmp_path / "profile.json", "--json", check=0).stdout)
    assert r["drifted"] == [SHIFTED], r["drifted"]
    assert r["reference"].endswith("profile.json") and r["reference_rows"] == FILES * ROWS
    assert r["features"][0]["feature"] == SHIFTED and r["features"][0]["ks"] > 0.1
    velo("report", batch, "--reference-profile", tmp_path / "profile.json", "--fail-on-drift", check=1)
    page = tmp_path / "r.html"
    velo("report", batch, "--reference-profile", tmp_path / "profile.json", "--html", page, check=0)
    assert "DRIFT" in page.read_text() and "<svg" in page.read_text()

    # A resample of the training data: nothing drifts
    for i, frame in frames(seed=300):
        write_csv(tmp_path / "same" / f"part-{i}.csv", frame)
    run = velo("run", tmp_path / "same", "--model", model, "--workers", "2", "--stats", timeout=180, check=0)
    same = find_dispatch_line(run.stdout)[0]
    calm = velo("report", same, "--reference-profile", tmp_path / "profile.json", "--fail-on-drift", "--json")
    assert calm.returncode == 0 and json.loads(calm.stdout)["drifted"] == []

    # One reference at a time, and a missing or foreign profile is one line
    both = velo("report", batch, "--reference", same, "--reference-profile", tmp_path / "profile.json", check=2)
    assert_clean_error(both, "--reference", "--reference-profile")
    assert_clean_error(velo("report", batch, "--reference-profile", tmp_path / "nope.json", check=2), "no such profile")
    assert_clean_error(velo("report", batch, "--reference-profile", model, check=2), "not a profile")


def test_profile_errors_are_one_line_naming_the_file(velo, tmp_path):
    model = dump_model(fit_model(), tmp_path / "model.joblib")
    write_csv(tmp_path / "d" / "good.csv", make_frame(50))
    write_csv(tmp_path / "d" / "bad.csv", make_frame(5).drop(columns="f2"))
    out = tmp_path / "p.json"
    bad = velo("profile", tmp_path / "d", "--model", model, "-o", out, check=2)
    assert_clean_error(bad, "bad.csv", "missing feature columns: f2")
    assert not out.exists()  # written whole or not at all
    missing = velo("profile", tmp_path / "d", "--model", tmp_path / "none.joblib", "-o", out, check=2)
    assert_clean_error(missing, "none.joblib", "model not found")
    (tmp_path / "empty").mkdir()
    nothing = velo("profile", tmp_path / "empty", "--model", model, "-o", out, check=2)
    assert_clean_error(nothing, "no files matching")


def test_profile_reads_and_writes_s3(s3, velo, tmp_path):
    model = fit_model()
    path = dump_model(model, tmp_path / "model.joblib")
    s3.put("train/a.csv", csv_bytes(make_frame(300, seed=1)))
    s3.put("train/b.csv", csv_bytes(make_frame(200, seed=2)))
    made = velo("profile", s3.uri("train/"), "--model", path, "-o", s3.uri("profiles/p.json"), check=0)
    assert "500 rows in 2 files" in made.stdout
    stats = Stats.from_json(s3.get("profiles/p.json"))
    assert stats.rows == 500 and stats.features["f0"].count == 500
    local = Path(tmp_path / "p.json")
    velo("profile", s3.uri("train/a.csv"), "--model", path, "-o", local, check=0)
    assert Stats.from_json(local.read_bytes()).rows == 300
    # A batch scored later is reported against the profile on S3
    write_csv(tmp_path / "new" / "x.csv", make_frame(400, seed=3))
    run = velo("run", tmp_path / "new", "--model", path, "--stats", "--workers", "1", check=0)
    batch = find_dispatch_line(run.stdout)[0]
    shown = velo("report", batch, "--reference-profile", s3.uri("profiles/p.json"), "--json", check=0)
    r = json.loads(shown.stdout)
    assert r["reference"] == s3.uri("profiles/p.json") and r["reference_rows"] == 500 and r["rows"] == 400
