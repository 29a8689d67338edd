"""`velo report` through the real CLI: statistics gathered while `velo run` scored, compared between
batches: a feature shifted by 0.3 standard deviations drifts, a resample does not."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from helpers import dump_model, find_dispatch_line, fit_model, make_frame, write_csv

pytestmark = pytest.mark.e2e

FILES, ROWS, FEATURES = 4, 20_000, 20
SHIFTED = "f7"


def batch_of(velo, folder: Path, model: Path, seed: int, shift: float = 0.0, *extra: str) -> str:
    for i in range(FILES):
        frame = make_frame(ROWS, FEATURES, seed=seed + i)
        frame[SHIFTED] += shift
        write_csv(folder / f"part-{i}.csv", frame)
    run = velo("run", folder, "--model", model, "--workers", "2", *extra, timeout=180)  # statistics by default
    assert run.returncode == 0, velo.describe(run)
    return find_dispatch_line(run.stdout)[0]


def test_report_flags_the_shifted_feature_alone_and_a_resample_not(velo, tmp_path):
    model = dump_model(fit_model(n_features=FEATURES), tmp_path / "model.joblib")
    ref = batch_of(velo, tmp_path / "ref", model, seed=100)
    cur = batch_of(velo, tmp_path / "cur", model, seed=200, shift=0.3)
    same = batch_of(velo, tmp_path / "same", model, seed=300)

    # The shifted feature drifts, and only it (the prediction does not depend on it)
    shown = velo("report", cur, "--reference", ref, "--json", check=0)
    r = json.loads(shown.stdout)
    assert r["drifted"] == [SHIFTED], r["drifted"]
    assert r["rows"] == r["reference_rows"] == FILES * ROWS and r["files"] == FILES
    top = r["features"][0]
    assert top["feature"] == SHIFTED and top["drift"] and top["ks"] > 0.1
    assert top["mean"] - top["reference"]["mean"] == pytest.approx(0.3, abs=0.03)
    assert len(r["features"]) == FEATURES and r["prediction"]["kind"] == "classes"
    assert r["seconds"] < 1
    # --fail-on-drift: exit 1
    velo("report", cur, "--reference", ref, "--fail-on-drift", check=1)

    # A resample of the reference's distribution: nothing drifts, exit 0
    calm = json.loads(velo("report", same, "--reference", ref, "--json", "--fail-on-drift", check=0).stdout)
    assert calm["drifted"] == [] and not calm["drift"]
    assert max(f["psi"] for f in calm["features"]) < 0.01

    # The table, and the HTML: one self-contained file
    table = velo("report", cur, "--reference", ref, check=0).stdout
    assert SHIFTED in table and "DRIFT" in table and "drift in: f7" in table
    page = tmp_path / "report.html"
    velo("report", cur, "--reference", ref, "--html", page, check=0)
    text = page.read_text()
    assert "<svg" in text and SHIFTED in text and "DRIFT" in text
    assert not re.search(r"<(script|link|img)[^>]+(src|href)=[\"']?(https?:)?//", text, re.I)
    assert "http://" not in text and "https://" not in text

    # A batch alone: its statistics
    alone = json.loads(velo("report", cur, "--json", check=0).stdout)
    assert alone["reference"] is None and not alone["drift"] and alone["features"][0]["feature"] == "f0"
    assert sum(alone["prediction"]["counts"].values()) == FILES * ROWS


def test_no_stats_and_unknown_batches(velo, tmp_path):
    model = dump_model(fit_model(), tmp_path / "model.joblib")
    write_csv(tmp_path / "d" / "a.csv", make_frame(100))
    run = velo("run", tmp_path / "d", "--model", model, "--no-stats", check=0)
    batch = find_dispatch_line(run.stdout)[0]
    failed = velo("report", batch, check=2)
    assert "no statistics" in failed.stderr and "with --no-stats" in failed.stderr
    assert "no batch 'nope'" in velo("report", "nope", check=2).stderr
