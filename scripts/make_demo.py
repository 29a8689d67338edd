"""Write a small demo under DIR: a fitted logistic regression and a few CSVs to score.

What is there already is kept (same model, same inputs), so a second `make demo` shows that
nothing is scored twice. DEMO_FRESH=1 (or `make demo-clean`) starts over: the demo's model, data,
outputs and state are removed and written anew.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import joblib
import numpy as np
import pandas as pd
from sklearn.linear_model import LogisticRegression

FILES = {"a/1.csv": 50_000, "a/2.csv": 50_000, "b/3.csv.gz": 20_000}


def main(folder: str) -> None:
    root = Path(folder)
    if os.environ.get("DEMO_FRESH", "") not in ("", "0"):
        clean(root)
    model_path = root / "model.joblib"
    inputs = [root / "data" / name for name in FILES]
    if model_path.exists() and all(p.exists() for p in inputs):
        print(f"demo model and data kept under {root}/ (DEMO_FRESH=1 or `make demo-clean` starts over)")
        return
    rng = np.random.default_rng(0)
    features = [f"f{i}" for i in range(5)]

    def frame(n: int) -> pd.DataFrame:
        df = pd.DataFrame(rng.normal(size=(n, len(features))).round(4), columns=features)
        df.insert(0, "id", np.arange(n))
        return df

    # Drawn in the same order every time, so a file written now equals the one a first run wrote.
    train = frame(2_000)
    label = (train.f0 + 0.5 * train.f1 - train.f2 > 0).astype(int)
    root.mkdir(parents=True, exist_ok=True)
    if not model_path.exists():
        joblib.dump(LogisticRegression().fit(train[features], label), model_path)
    for path, rows in zip(inputs, FILES.values(), strict=True):
        df = frame(rows)
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            df.to_csv(path, index=False)
    print(f"demo model and data written under {root}/")


def clean(root: Path) -> None:
    """Remove what the demo writes under ``root`` (and ``root`` itself if nothing else is left)."""
    for sub in ("data", "state"):
        shutil.rmtree(root / sub, ignore_errors=True)
    (root / "model.joblib").unlink(missing_ok=True)
    if root.is_dir() and not any(root.iterdir()):
        root.rmdir()


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "demo")
