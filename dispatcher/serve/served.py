"""The model `velo serve` answers with, and how a new version replaces it without a restart.

It is loaded as a worker loads it (:func:`worker.models.load`: allowed prefixes, the sha256 pin,
the digest of the very bytes unpickled). Every ``poll`` seconds the URI is looked at again (a
local file's size and mtime first, hashed only when they moved; an S3 object's ETag); a new
version is loaded in a thread and swapped in whole, so a request sees one version or the other.
A version that fails to load (a wrong pin, a broken file) is logged and the old one keeps serving.
"""

from __future__ import annotations

import asyncio
import logging
import os
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from velosiped import storage
from velosiped.errors import InputError, VeloError
from velosiped.frames import FeatureSpec, run_model
from velosiped.models import version_of
from worker import engine as engines
from worker import models

__all__ = ["Served", "ServedModel"]


def _quietly(f: Any, *args: Any) -> Any:
    """``f(*args)`` without scikit-learn's "X does not have valid feature names" warning."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="X does not have valid feature names")
        return f(*args)


log = logging.getLogger(__name__)


@dataclass
class ServedModel:
    """One loaded version of the model, with what `GET /info` says of it."""

    uri: str
    version: str
    sha256: str
    model: Any
    """scikit-learn's model, or its compiled form (``--engine treelite``: worker.engine.Compiled)."""
    features: list[str] | None
    classes: list[Any] | None
    specs: dict[tuple[str, ...], FeatureSpec] = field(default_factory=dict, compare=False)
    engine: str = "sklearn"
    """What `velo serve --engine` asked for (``engine`` of ``info()``: what predicts)."""
    plain: bool | None = None
    """The model answers a bare matrix as it answers a DataFrame (None: not known yet). scikit-learn
    checks a DataFrame's column names on every call, which costs more than predicting a few rows;
    a model that uses the names (a ColumnTransformer picking columns) needs the DataFrame."""

    def predict(self, spec: FeatureSpec, x: np.ndarray, proba: bool) -> tuple[np.ndarray, np.ndarray | None]:
        """Prediction (and probabilities) of the feature matrix ``x``, as the batch would make them.

        Raises:
            InputError: the model rejected the rows.
        """
        context = "request: model rejected the rows"
        if spec.model_names is None or self.plain is False:
            return run_model(self.model, spec.model_input(list(x.T), len(x)), proba, context)
        if self.plain:
            return _quietly(run_model, self.model, x, proba, context)
        framed = run_model(self.model, spec.model_input(list(x.T), len(x)), proba, context)
        try:  # once per model version: does the bare matrix give the very same answer?
            bare = _quietly(run_model, self.model, x, proba, context)
            self.plain = np.array_equal(bare[0], framed[0]) and (
                framed[1] is None or (bare[1] is not None and np.array_equal(bare[1], framed[1]))
            )
        except InputError:
            self.plain = False
        return framed

    def spec(self, header: list[str], name: str) -> FeatureSpec:
        """The feature columns for a body with these columns (cached: most bodies look alike)."""
        key = tuple(header)
        found = self.specs.get(key)
        if found is None:
            found = FeatureSpec(self.model, header, name)
            if len(self.specs) < 64:
                self.specs[key] = found
        return found

    def info(self) -> dict[str, Any]:
        out = {
            "model": self.uri,
            "version": self.version,
            "sha256": self.sha256,
            "features": self.features,
            "classes": self.classes,
            "type": type(getattr(self.model, "model", self.model)).__name__,
            "engine": engines.engine_of(self.model),
        }
        fallback = engines.fallback_of(self.model) or engines.refused(self.uri, self.version)
        if fallback and self.engine != "sklearn":
            out["engine_fallback"] = fallback
        return out


def _load(uri: str, version: str, pin: str | None, engine: str = "sklearn") -> ServedModel:
    model = engines.prepare(models.load(uri, version, pin), uri, version, engine)
    names = getattr(model, "feature_names_in_", None)
    classes = getattr(model, "classes_", None)
    return ServedModel(
        engine=engine,
        uri=uri,
        version=version,
        sha256=models.digest_of(uri, version) or "",
        model=model,
        features=[str(n) for n in names] if names is not None else None,
        classes=[c.item() if hasattr(c, "item") else c for c in classes] if classes is not None else None,
    )


class Served:
    """The current model version, and its poller."""

    def __init__(self, uri: str, pin: str | None, poll: float, engine: str = "sklearn") -> None:
        self.uri = uri
        self.pin = pin
        self.poll = poll
        self.engine = engine
        self.current: ServedModel | None = None
        self.error: str | None = None
        self._stat: tuple[int, int] | None = None

    def load(self) -> ServedModel:
        """Load the model now (at start-up: a model that does not load stops `velo serve`)."""
        self._stat = self._local_stat()
        self.current = _load(self.uri, version_of(self.uri), self.pin, self.engine)
        return self.current

    def _local_stat(self) -> tuple[int, int] | None:
        if storage.is_s3(self.uri):
            return None
        try:
            st = os.stat(self.uri)
        except OSError:
            return None
        return st.st_mtime_ns, st.st_size

    def check(self) -> bool:
        """Load a new version if there is one; True if it was swapped in."""
        stat = self._local_stat()
        if stat is not None and stat == self._stat:
            return False  # a local file that did not move: not hashed again
        try:
            version = version_of(self.uri)
            if self.current is not None and version == self.current.version:
                self._stat = stat
                return False
            fresh = _load(self.uri, version, self.pin, self.engine)
        except VeloError as e:
            if self.error != str(e):
                log.error("model %s: new version not loaded, still serving the old one: %s", self.uri, e)
            self.error = str(e)
            return False
        self._stat = stat
        self.current, self.error = fresh, None
        log.info("model %s: now serving version %s", self.uri, fresh.version[:19])
        return True

    async def poll_forever(self) -> None:
        while True:
            await asyncio.sleep(self.poll)
            await asyncio.to_thread(self.check)
