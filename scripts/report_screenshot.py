"""Make docs/drift-report.png, the README's picture of `velo report --html`.

    .venv/bin/python scripts/report_screenshot.py      # needs chromium

In a scratch folder: a logistic regression (missing values imputed) on 8 features, training data
(3 files of 20,000 rows) profiled with `velo profile`, a later batch whose ``f3`` moved by 0.3 standard deviations and
whose ``f6`` has 5 % empty cells, scored with `velo run --stats` (embedded Redis); then
`velo report BATCH --reference-profile profile.json --html report.html`, and headless chromium
takes that page.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import joblib
import numpy as np
import pandas as pd
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
FEATURES = [f"f{i}" for i in range(8)]


def frame(rows: int, seed: int, shift: float = 0.0, nulls: float = 0.0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, len(FEATURES))).round(6)
    x[:, 3] += shift
    if nulls:
        x[rng.random(rows) < nulls, 6] = np.nan
    return pd.DataFrame({"id": np.arange(rows), **{f: x[:, i] for i, f in enumerate(FEATURES)}})


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="velo-report-shot-"))
    env = {**os.environ, "VELO_STATE_DIR": str(work / "state"), "COLUMNS": "200"}
    train = frame(5000, 0)
    labels = (train["f0"] + train["f1"] > 0).astype(int)
    model = make_pipeline(SimpleImputer(), LogisticRegression(max_iter=500)).fit(train[FEATURES], labels)
    joblib.dump(model, work / "model.joblib")
    for folder, seed, shift, nulls in (("train", 10, 0.0, 0.0), ("day", 20, 0.3, 0.05)):
        (work / folder).mkdir()
        for i in range(3):
            frame(20_000, seed + i, shift, nulls).to_csv(work / folder / f"part-{i}.csv", index=False)
    velo = str(BIN / "velo")
    model_path = str(work / "model.joblib")
    profile = str(work / "profile.json")
    subprocess.run([velo, "profile", work / "train", "--model", model_path, "-o", profile], env=env, check=True)
    run = subprocess.run(
        [velo, "run", work / "day", "--model", model_path, "--stats", "--workers", "2"],
        env=env,
        check=True,
        capture_output=True,
        text=True,
    )
    batch = next(line.split()[1].rstrip(":") for line in run.stdout.splitlines() if line.startswith("batch "))
    page = work / "report.html"
    # Run where the profile is, so the page names it as a user would: profile.json
    subprocess.run([velo, "report", batch, "--reference-profile", "profile.json", "--html", page], env=env, cwd=work)
    chromium = shutil.which("chromium") or shutil.which("chromium-browser") or "chromium"
    out = ROOT / "docs" / "drift-report.png"
    subprocess.run(
        [
            chromium,
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            f"--screenshot={out}",
            "--window-size=1280,1000",
            page.as_uri(),
        ],
        check=True,
        capture_output=True,
    )
    print(f"wrote {out}")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
