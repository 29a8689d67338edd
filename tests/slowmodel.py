"""A model that takes its time: wraps a fitted estimator, sleeping a set time per predict call.

The worker predicts once per parsed block, so a small ``VELO_BLOCK_SIZE`` and a slow model make a
file take seconds: long enough for fault tests to catch a worker mid-file. Pickled with joblib
like any model; a worker unpickles it only with this folder on its ``PYTHONPATH`` (see
:data:`WORKER_ENV`).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import joblib

__all__ = ["WORKER_ENV", "SlowModel", "dump_slow_model"]

WORKER_ENV = {"PYTHONPATH": str(Path(__file__).resolve().parent)}
"""What a `velo worker` needs in its environment to load a :class:`SlowModel`."""


class SlowModel:
    """``model``, but each ``predict`` (and ``predict_proba``) call first sleeps ``seconds``."""

    def __init__(self, model: Any, seconds: float) -> None:
        self.model = model
        self.seconds = seconds

    def __getattr__(self, name: str) -> Any:
        # Everything else (feature_names_in_, classes_...) is the wrapped model's. Unpickling looks
        # attributes up before __dict__ is filled: no recursion through self.model then.
        if name in ("model", "seconds") or name.startswith("__"):
            raise AttributeError(name)
        return getattr(self.model, name)

    def predict(self, x: Any) -> Any:
        time.sleep(self.seconds)
        return self.model.predict(x)

    def predict_proba(self, x: Any) -> Any:
        time.sleep(self.seconds)
        return self.model.predict_proba(x)


def dump_slow_model(model: Any, seconds: float, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    joblib.dump(SlowModel(model, seconds), path)
    return path
