"""Mergeable statistics of a column, gathered in the one pass that scores a file.

:class:`Sketch` holds, for one numeric column: count, nulls (NaN), min, max, mean and variance
(merged with Chan et al.'s pairwise formula), and a log-bucketed histogram in the manner of
DDSketch: a value ``x`` falls in the bucket ``ceil(log|x| / log(gamma))`` of its sign, so every
quantile is known within a relative error of ``ALPHA`` (1 %). Positive and negative buckets
share one signed key space, ordered as the values are (``0``: ``|x| < TINY``); past ``MAX_BUCKETS``
non-empty buckets, the smallest magnitudes fold into one, so memory is bounded whatever the
file's size. Two sketches merge exactly (counts add), in any order.

:class:`Stats` is one file's (or one batch's): a sketch per feature and one of the prediction, or
class counts when the prediction is a class label. ``to_json`` is compact (buckets as zlib'd
base64); ``from_json`` reads it back.
"""

from __future__ import annotations

import base64
import json
import math
import zlib
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from velosiped import keys, lua

if TYPE_CHECKING:
    from redis import Redis

__all__ = ["ALPHA", "MAX_BUCKETS", "MAX_CLASSES", "Sketch", "Stats", "load_batch", "store"]

ALPHA = 0.01
"""Relative accuracy of a quantile."""

MAX_BUCKETS = 2048
"""Non-empty buckets a sketch keeps at most."""

MAX_CLASSES = 1000
"""Distinct prediction labels counted at most; more go to ``OTHER``."""

OTHER = "(other)"

TINY = 1e-9
"""Magnitudes below this count as zero."""

_GAMMA = (1 + ALPHA) / (1 - ALPHA)
_INV_LOG_GAMMA = 1.0 / math.log(_GAMMA)
_KEY_SHIFT = 1 - math.ceil(math.log(TINY) * _INV_LOG_GAMMA)
"""Added to a magnitude's bucket index so every non-zero key is >= 1 in magnitude."""
_MAX_KEY = math.ceil(math.log(np.finfo(np.float64).max) * _INV_LOG_GAMMA) + _KEY_SHIFT
"""The key of the largest float (and of an infinity)."""
_FLOAT32_MAX = float(np.finfo(np.float32).max) / 2

Ints = npt.NDArray[np.int64]
Floats = npt.NDArray[np.float64]


class Sketch:
    """Statistics of one numeric column; see the module's text."""

    __slots__ = ("count", "keys", "m2", "max", "mean", "min", "nulls", "weights")

    def __init__(self) -> None:
        self.count = 0
        """Values seen, NaN excepted."""
        self.nulls = 0
        self.min = math.inf
        self.max = -math.inf
        self.mean = 0.0
        self.m2 = 0.0
        """Sum of squared deviations from the mean."""
        self.keys: Ints = np.zeros(0, np.int64)
        """Sorted signed bucket keys (non-empty buckets only)."""
        self.weights: Ints = np.zeros(0, np.int64)

    # -- gathering -------------------------------------------------------------------------

    def update(self, values: npt.ArrayLike) -> None:
        """Add a block of values (NaN counts as a null; infinities as the largest magnitudes)."""
        v = np.asarray(values, dtype=np.float64).ravel()
        if v.size == 0:
            return
        missing = np.isnan(v)
        nulls = int(np.count_nonzero(missing))
        if nulls:
            self.nulls += nulls
            v = v[~missing]
            if v.size == 0:
                return
        with np.errstate(invalid="ignore", over="ignore"):  # an infinity makes the moments inf or NaN, honestly
            mean = float(v.mean())
            deviation = v - mean
            self._merge_moments(int(v.size), mean, float(np.dot(deviation, deviation)), float(v.min()), float(v.max()))
        # Bucket keys in float32 when the values fit it (a log 4x faster, exact enough for a 1 %
        # bucket); a magnitude under TINY (log: below key 1, or -inf for 0) is key 0, an infinity
        # the largest key
        wide = max(-self.min, self.max) >= _FLOAT32_MAX if self.count else False
        kind = np.float64 if wide else np.float32
        with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
            magnitude = np.abs(v).astype(kind)
            key32 = np.ceil(np.log(magnitude) * kind(_INV_LOG_GAMMA))
            key32 += kind(_KEY_SHIFT)
            np.clip(key32, 0, _MAX_KEY, out=key32)
            np.copysign(key32, v, out=key32)
        key = key32.astype(np.int64)
        low = int(key.min())
        counts = np.bincount(key - low)
        found = np.flatnonzero(counts)
        self._add(found + low, counts[found])

    def merge(self, other: Sketch) -> Sketch:
        """Add ``other`` into this sketch; returns it."""
        self.nulls += other.nulls
        if other.count:
            self._merge_moments(other.count, other.mean, other.m2, other.min, other.max)
            self._add(other.keys, other.weights)
        return self

    def _merge_moments(self, n: int, mean: float, m2: float, low: float, high: float) -> None:
        total = self.count + n
        delta = mean - self.mean
        self.m2 += m2 + delta * delta * self.count * n / total
        self.mean += delta * n / total
        self.count = total
        self.min = min(self.min, low)
        self.max = max(self.max, high)

    def _add(self, keys: Ints, weights: Ints) -> None:
        if self.keys.size == 0:
            self.keys, self.weights = keys.astype(np.int64), weights.astype(np.int64)
        else:
            both = np.concatenate([self.keys, keys])
            self.keys, where = np.unique(both, return_inverse=True)
            self.weights = np.bincount(where.ravel(), np.concatenate([self.weights, weights])).astype(np.int64)
        if self.keys.size > MAX_BUCKETS:
            self._collapse()

    def _collapse(self) -> None:
        """Fold the smallest magnitudes into one bucket of each sign, to keep MAX_BUCKETS at most."""
        size = np.abs(self.keys)
        floor = int(np.sort(size[size > 0])[::-1][MAX_BUCKETS - 3])
        folded = np.where((size > 0) & (size < floor), np.sign(self.keys) * floor, self.keys)
        self.keys, where = np.unique(folded, return_inverse=True)
        self.weights = np.bincount(where.ravel(), self.weights).astype(np.int64)

    # -- reading ---------------------------------------------------------------------------

    @property
    def variance(self) -> float:
        return self.m2 / self.count if self.count else math.nan

    @property
    def std(self) -> float:
        return math.sqrt(self.variance) if self.count else math.nan

    def values(self) -> Floats:
        """Each bucket's value (the one its relative error is smallest for), sorted as the keys are."""
        size = np.abs(self.keys) - _KEY_SHIFT
        with np.errstate(over="ignore"):  # the largest key's value is an infinity
            value = 2.0 * np.power(_GAMMA, size.astype(np.float64)) / (_GAMMA + 1.0)
        value = np.where(self.keys == 0, 0.0, np.sign(self.keys) * value)
        return np.clip(value, self.min, self.max) if self.count else value

    def quantile(self, q: float | npt.ArrayLike) -> Any:
        """The ``q`` quantile(s), within ALPHA of the true value; NaN for an empty sketch."""
        qs = np.atleast_1d(np.asarray(q, dtype=np.float64))
        if not self.count:
            out = np.full(qs.shape, math.nan)
        else:
            rank = np.clip(qs, 0.0, 1.0) * (self.count - 1)
            at = np.searchsorted(np.cumsum(self.weights), rank, side="right")
            out = self.values()[np.minimum(at, self.keys.size - 1)]
            out = np.where(qs <= 0, self.min, np.where(qs >= 1, self.max, out))
        return float(out[0]) if np.ndim(q) == 0 else out

    def cdf(self, x: float | npt.ArrayLike) -> Any:
        """Share of values <= ``x`` (each bucket's values taken at its value)."""
        xs = np.atleast_1d(np.asarray(x, dtype=np.float64))
        if not self.count:
            out = np.full(xs.shape, math.nan)
        else:
            cumulative = np.concatenate([[0], np.cumsum(self.weights)])
            out = cumulative[np.searchsorted(self.values(), xs, side="right")] / self.count
        return float(out[0]) if np.ndim(x) == 0 else out

    # -- storing ---------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"n": self.count, "nulls": self.nulls}
        if self.count:
            deltas = np.diff(self.keys, prepend=0).astype(np.int32)
            packed = zlib.compress(deltas.tobytes() + self.weights.astype(np.uint32).tobytes(), 6)
            d.update(min=self.min, max=self.max, mean=self.mean, m2=self.m2)
            d["b"] = base64.b64encode(packed).decode("ascii")
            if int(self.weights.max()) > 0xFFFFFFFF:  # a bucket over 4 billion values: kept whole
                d["w"] = self.weights.tolist()
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Sketch:
        s = cls()
        s.count, s.nulls = int(d["n"]), int(d["nulls"])
        if s.count:
            s.min, s.max, s.mean, s.m2 = float(d["min"]), float(d["max"]), float(d["mean"]), float(d["m2"])
            raw = zlib.decompress(base64.b64decode(d["b"]))
            size = len(raw) // 8
            s.keys = np.cumsum(np.frombuffer(raw[: 4 * size], np.int32).astype(np.int64))
            weights = d.get("w")
            s.weights = (
                np.asarray(weights, np.int64) if weights else np.frombuffer(raw[4 * size :], np.uint32).astype(np.int64)
            )
        return s


class Stats:
    """One file's or batch's statistics: a :class:`Sketch` per feature, and of the prediction (or its
    class counts, when the prediction is a class label)."""

    def __init__(self, features: Sequence[str] = (), labels: bool = False) -> None:
        self.labels = labels
        """The prediction is a class label (the model has ``classes_``): counted per class."""
        self.rows = 0
        self.files = 0
        self.features: dict[str, Sketch] = {f: Sketch() for f in features}
        self.prediction = Sketch()
        self.classes: dict[str, int] = {}

    def start(self, features: Sequence[str], labels: bool) -> None:
        """Gather one file's statistics from now on: its ``features`` (names), and its predictions as
        class labels or numbers."""
        self.__init__(features, labels)  # type: ignore[misc]
        self.files = 1

    def update(self, columns: Sequence[npt.NDArray[Any]], prediction: npt.NDArray[Any]) -> None:
        """Add one block: its feature columns (float64, in ``features``' order) and its predictions."""
        for sketch, column in zip(self.features.values(), columns, strict=True):
            sketch.update(column)
        self.rows += len(prediction)
        if not self.labels:
            self.prediction.update(prediction)
            return
        labels, counts = np.unique(prediction.astype(str), return_counts=True)
        for label, count in zip(labels.tolist(), counts.tolist(), strict=True):
            key = label if label in self.classes or len(self.classes) < MAX_CLASSES else OTHER
            self.classes[key] = self.classes.get(key, 0) + int(count)

    def merge(self, other: Stats) -> Stats:
        self.labels = self.labels or other.labels
        self.rows += other.rows
        self.files += other.files
        for name, sketch in other.features.items():
            self.features.setdefault(name, Sketch()).merge(sketch)
        self.prediction.merge(other.prediction)
        for label, count in other.classes.items():
            self.classes[label] = self.classes.get(label, 0) + count
        return self

    def to_json(self) -> str:
        d: dict[str, Any] = {
            "v": 1,
            "rows": self.rows,
            "files": self.files,
            "labels": self.labels,
            "features": {name: s.to_dict() for name, s in self.features.items()},
        }
        if self.prediction.count or self.prediction.nulls:
            d["prediction"] = self.prediction.to_dict()
        if self.classes:
            d["classes"] = self.classes
        return json.dumps(d, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str | bytes) -> Stats:
        d = json.loads(text)
        if not isinstance(d, dict) or d.get("v") != 1:
            raise ValueError("not a version 1 statistics object")
        s = cls(labels=bool(d.get("labels")))
        s.rows, s.files = int(d["rows"]), int(d.get("files", 0))
        s.features = {name: Sketch.from_dict(f) for name, f in d["features"].items()}
        if "prediction" in d:
            s.prediction = Sketch.from_dict(d["prediction"])
        s.classes = {str(k): int(v) for k, v in d.get("classes", {}).items()}
        return s


def store(redis: Redis, batch_id: str, file: str, stats: Stats) -> bool:
    """Keep a scored file's statistics in its batch (before the file is recorded done, so they
    expire with the batch); False when the batch is gone."""
    args = [file, stats.to_json()]
    script = lua.script(redis, "stats.lua")
    return bool(script(keys=[keys.batch_stats(batch_id), keys.batch(batch_id)], args=args, client=redis))


def load_batch(redis: Redis, batch_id: str) -> Stats:
    """Every file's statistics of a batch, merged (files that failed left none)."""
    merged = Stats()
    for _, raw in redis.hscan_iter(keys.batch_stats(batch_id), count=1000):
        merged.merge(Stats.from_json(raw))
    return merged
