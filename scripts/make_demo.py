"""Write a small demo under DIR: a fitted logistic regression and a few CSVs to score."""

from __future__ import annotations

import sys
from pathlib import Path

import joblib
import numpy as np
import pandas as pd
from sklearn.linear_model import LogisticRegression


def main(folder: str) -> None:
    root = Path(folder)
    rng = np.random.default_rng(0)
    features = [f"f{i}" for i in range(5)]

    def frame(n: int) -> pd.DataFrame:
        df = pd.DataFrame(rng.normal(size=(n, len(features))).round(4), columns=features)
        df.insert(0, "id", np.arange(n))
        return df

    train = frame(2_000)
    label = (train.f0 + 0.5 * train.f1 - train.f2 > 0).astype(int)
    root.mkdir(parents=True, exist_ok=True)
    joblib.dump(LogisticRegression().fit(train[features], label), root / "model.joblib")
    for name, rows in {"a/1.csv": 50_000, "a/2.csv": 50_000, "b/3.csv.gz": 20_000}.items():
        path = root / "data" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        frame(rows).to_csv(path, index=False)
    print(f"demo model and data written under {root}/")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "demo")
