"""The REST service a user would write instead of `velo serve` (the baseline of bench.serve; its
async route is the faster of the two a user would write, 930 against 799 requests/s here):
FastAPI + uvicorn, the model loaded once, ``pandas.DataFrame.from_records(body)`` then ``predict``.

    BASELINE_MODEL=model.joblib uvicorn bench.serve_baseline:app --workers 2
"""

from __future__ import annotations

import os
from typing import Any

import joblib
import pandas as pd
from fastapi import FastAPI

app = FastAPI()
model = joblib.load(os.environ["BASELINE_MODEL"])


@app.get("/info")
def info() -> dict[str, Any]:
    return {"model": os.environ["BASELINE_MODEL"], "features": list(model.feature_names_in_)}


@app.post("/predict")
async def predict(body: list[dict[str, Any]]) -> dict[str, Any]:
    frame = pd.DataFrame.from_records(body)
    return {"predictions": model.predict(frame[list(model.feature_names_in_)]).tolist()}
