"""Mergeable statistics of a column, gathered in the one pass that scores a file.

:class:`Sketch` holds, for one numeric column: count, nulls (NaN), min, max, mean and variance
(per block from its sum and sum of squares, merged with Chan et al.'s pairwise formula), and a
log-bucketed histogram in the manner of DDSketch (its log-linear mapping, as HDR histograms do):
a value's bucket is its float64 exponent and the top ``MANTISSA_BITS`` bits of its mantissa, so a
bucket spans at most 1/64 of its values' magnitude, and every quantile is known within
``ALPHA`` (0.8 %) of a value in its bucket. Positive and negative buckets share one signed key
space, ordered as the values are (key 0: ``|x| < TINY``). Past ``MAX_BUCKETS`` non-empty buckets,
the smallest magnitudes fold into one of each sign, so what is stored is bounded whatever the
file's size. Sketches merge exactly (counts add), in any order.

The bucket is found from the float's bits with integer operations, no logarithm (a third of
the time ``np.log`` takes), and a block's buckets are counted with one ``np.bincount`` into a
dense array, turned into sorted sparse buckets only when the sketch is read or stored. That
array spans the keys seen: about 2,800 for normal data, at most ~135,000 (1 MB) for a column
whose magnitudes run from 1e-9 to 1e308 in both signs; what is stored keeps MAX_BUCKETS at most.

Stored, a sketch is made smaller the same way UDDSketch (Epicoco et al., 2020) collapses: adjacent
buckets merge uniformly (one mantissa bit less: buckets twice as wide, the relative accuracy about
doubled), down to ``MIN_STORED_BITS``, until at most ``STORED_BUCKETS`` are left; past that, the
smallest magnitudes fold. Sketches of different resolutions merge at the coarser one.

:class:`Stats` is one file's (or one batch's): a sketch per feature and one of the prediction, or
class counts when the prediction is a class label. A block's features are gathered as one matrix:
their moments (exact: count, nulls, min, max, mean, variance) in one vectorised pass each, their
buckets from a systematic sample of rows: every row of a file's first ``EXACT_ROWS``, then a run
of ``CHUNK`` rows every ``STEP * CHUNK`` (one row in ``STEP``), each counted ``STEP`` times. Runs,
not every ``STEP``-th row: rows a cache line apart would cost as much to read as every row. A
bucket's weight is then an estimate of its count (their total is within ``STEP * CHUNK`` of the
exact count), and a share read from the histogram (a CDF, a quantile, PSI's bins, KS's gap) is as
good as from a random sample of about rows / ``STEP`` values (Kish's effective size; the first
rows, exact, add little to a big file's): for a 200,000-row file about 13,000, so within about
0.45 % on a share near one half and about 0.01 on KS (a batch of 8 such files: 0.16 % and 0.004),
far below the 0.1 that flags drift. A file sorted by a feature is sampled evenly along it (a run
every 256 rows). Files under ``EXACT_ROWS`` rows are counted whole. Sampling is what keeps
gathering within a few % of scoring throughput. ``to_json`` is compact (buckets as zlib'd
base64); ``from_json`` reads it back.
"""

from __future__ import annotations

import base64
import json
import math
import zlib
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from velosiped import keys, lua

if TYPE_CHECKING:
    from redis import Redis
    from redis.client import Pipeline

    from velosiped.comparison import Comparison

__all__ = [
    "ALPHA",
    "EXACT_ROWS",
    "MAX_BUCKETS",
    "MAX_CLASSES",
    "STEP",
    "STORED_BUCKETS",
    "Sketch",
    "Stats",
    "load_batch",
    "store",
]

MANTISSA_BITS = 6
"""Mantissa bits of a bucket: 64 buckets a power of two."""

ALPHA = 1 / (2**MANTISSA_BITS * 2 + 1)
"""Relative accuracy of a quantile (0.78 %): a bucket's value is within this of any value in it."""

MAX_BUCKETS = 2048
"""Non-empty buckets a stored sketch keeps at most."""

STORED_BUCKETS = 256
"""Non-empty buckets a feature's sketch keeps at most in a file's entry in Redis (``store``)."""

MIN_STORED_BITS = 3
"""Mantissa bits a stored bucket keeps at least (8 buckets a power of two, relative accuracy 5.9 %);
past that, the smallest magnitudes fold to keep ``STORED_BUCKETS``."""

EXACT_ROWS = 8192
"""A file's first rows whose every value is bucketed (moments take every row, always)."""

STEP = 16
"""Past ``EXACT_ROWS``, one row in ``STEP`` is bucketed, and counted ``STEP`` times."""

CHUNK = 16
"""Past ``EXACT_ROWS``, rows are bucketed in runs of ``CHUNK``: one run every ``STEP * CHUNK`` rows."""

PENDING = 1 << 18
"""Keys gathered (2 MB) before they are counted."""

LISTED = 32
"""A sketch of at most this many buckets is stored as two plain lists (format version 3), not packed:
its first key and the steps to the next, and the counts."""

SPARSE = 16
"""Keys are counted by sorting them, not densely over their span, when the span is over ``SPARSE``
times their number: a small file's few values span thousands of buckets (a dense count of
a 10-row file's 20 features would clear and scan 80,000 of them)."""


MAX_CLASSES = 1000
"""Distinct prediction labels counted at most; more go to ``OTHER``."""

OTHER = "(other)"

TINY = 1e-9
"""Magnitudes below this count as zero."""

_SHIFT = 52 - MANTISSA_BITS
_MAGNITUDE = np.int64(0x7FFF_FFFF_FFFF_FFFF)
_TINY_KEY = int(np.array(TINY).view(np.int64)) >> _SHIFT
_OFFSET = _TINY_KEY - 1
"""Subtracted from a magnitude's bucket, so ``TINY`` is key 1 and smaller magnitudes 0 or less."""

Ints = npt.NDArray[np.int64]
Floats = npt.NDArray[np.float64]


class Sketch:
    """Statistics of one numeric column; see the module's text."""

    __slots__ = (
        "_dense",
        "_low",
        "_sparse_keys",
        "_sparse_weights",
        "bits",
        "count",
        "m2",
        "max",
        "mean",
        "min",
        "nulls",
    )

    def __init__(self) -> None:
        self.count = 0
        """Values seen, NaN excepted."""
        self.nulls = 0
        self.min = math.inf
        self.max = -math.inf
        self.mean = 0.0
        self.m2 = 0.0
        """Sum of squared deviations from the mean."""
        self.bits = MANTISSA_BITS
        """Mantissa bits of the buckets: ``MANTISSA_BITS``, fewer once collapsed (see ``alpha``)."""
        self._sparse_keys: Ints = np.zeros(0, np.int64)
        self._sparse_weights: Ints = np.zeros(0, np.int64)
        self._dense: Ints | None = None
        """Counts of keys ``_low``, ``_low + 1``, ... (at ``MANTISSA_BITS``) gathered since the last look."""
        self._low = 0

    # -- gathering -------------------------------------------------------------------------

    def update(self, values: npt.ArrayLike) -> None:
        """Add a block of values (NaN counts as a null; an infinity as the largest magnitude);
        every value is bucketed."""
        v = np.asarray(values, dtype=np.float64).ravel()
        if v.size == 0:
            return
        total = float(v.sum())
        if math.isnan(total):  # rare: only then is every value looked at for NaN
            v = self._drop_nulls(v)
            if v.size == 0:
                return
            total = float(v.sum())
        self._add_moments(v, total)
        self._add_values(v, 1)

    def _drop_nulls(self, v: Floats) -> Floats:
        missing = np.isnan(v)
        self.nulls += int(np.count_nonzero(missing))
        return v[~missing]

    def _add_moments(self, v: Floats, total: float) -> None:
        """Count, mean, variance, min and max of ``v`` (no NaN; its sum ``total``) merged in."""
        n = int(v.size)
        with np.errstate(invalid="ignore", over="ignore"):  # an infinity makes the moments inf or NaN, honestly
            mean = total / n
            m2 = max(float(np.einsum("i,i->", v, v)) - n * mean * mean, 0.0)  # not BLAS: its threads would spin
            if mean * mean > 1e6 * m2 / n:  # far from zero for its spread: cancellation; the exact way then
                deviation = v - mean
                m2 = float(np.einsum("i,i->", deviation, deviation))
        self._merge_moments(n, mean, m2, float(v.min()), float(v.max()))

    def _add_values(self, v: Floats, weight: int) -> None:
        """Bucket ``v`` (no NaN), each value counted ``weight`` times."""
        if v.size:
            key = _keys(v)
            low = int(key.min())
            if int(key.max()) - low > SPARSE * key.size:  # a few values: sorted, not a count over their span
                found, counts = np.unique(key, return_counts=True)
                self._add_sparse(found, counts * weight if weight != 1 else counts)
                return
            counts = np.bincount(key - low)
            self._add_dense(low, counts * weight if weight != 1 else counts)

    def _add_sparse(self, keys_: Ints, weights: Ints) -> None:
        """Counts of sorted distinct keys (at ``MANTISSA_BITS``) added to the buckets."""
        if self._dense is None and self._sparse_keys.size == 0 and self.bits == MANTISSA_BITS:
            self._set(keys_, weights)
            return
        self._flush()
        coarse = _coarsen(keys_, MANTISSA_BITS - self.bits)
        self._set(*_sum_by_key([self._sparse_keys, coarse], [self._sparse_weights, weights]))

    def _add_dense(self, low: int, counts: Ints) -> None:
        if self._dense is None:
            self._dense, self._low = counts, low
            return
        high = max(self._low + self._dense.size, low + counts.size)
        start = min(self._low, low)
        if start != self._low or high != self._low + self._dense.size:
            grown = np.zeros(high - start, np.int64)
            grown[self._low - start : self._low - start + self._dense.size] = self._dense
            self._dense, self._low = grown, start
        self._dense[low - self._low : low - self._low + counts.size] += counts

    def _flush(self) -> None:
        """The dense counts gathered so far into the sparse buckets, bounded."""
        if self._dense is None:
            return
        found = np.flatnonzero(self._dense)
        dense_keys, dense_weights = _coarsen(found + self._low, MANTISSA_BITS - self.bits), self._dense[found]
        self._dense = None
        self._set(*_sum_by_key([self._sparse_keys, dense_keys], [self._sparse_weights, dense_weights]))

    def _set(self, keys_: Ints, weights: Ints) -> None:
        self._sparse_keys, self._sparse_weights = keys_, weights
        if keys_.size > MAX_BUCKETS:
            self._collapse(MAX_BUCKETS)

    @property
    def keys(self) -> Ints:
        """Sorted signed bucket keys (non-empty buckets only)."""
        self._flush()
        return self._sparse_keys

    @property
    def weights(self) -> Ints:
        """Each bucket's count (an estimate, when its values were sampled: see the module's text)."""
        self._flush()
        return self._sparse_weights

    @property
    def alpha(self) -> float:
        """Relative accuracy of a bucket's value at this sketch's resolution (ALPHA at full)."""
        return 1.0 / ((2 << self.bits) + 1)

    def merge(self, other: Sketch) -> Sketch:
        """Add ``other`` into this sketch; returns it."""
        return self.merge_all([other])

    def merge_all(self, others: Iterable[Sketch]) -> Sketch:
        """Add every sketch of ``others`` into this one (one sort for all), at the coarsest
        resolution of them; returns it."""
        self._flush()
        sketches = [self]
        for other in others:
            self.nulls += other.nulls
            if other.count:
                self._merge_moments(other.count, other.mean, other.m2, other.min, other.max)
                sketches.append(other)
        if len(sketches) > 1:
            bits = min(s.bits for s in sketches if s is self or s.count)
            all_keys = [_coarsen(s.keys, s.bits - bits) for s in sketches]
            self.bits = bits
            self._set(*_sum_by_key(all_keys, [s.weights for s in sketches]))
        return self

    def _merge_moments(self, n: int, mean: float, m2: float, low: float, high: float) -> None:
        total = self.count + n
        delta = mean - self.mean
        self.m2 += m2 + delta * delta * self.count * n / total
        self.mean += delta * n / total
        self.count = total
        self.min = min(self.min, low)
        self.max = max(self.max, high)

    def _collapse(self, most: int) -> None:
        """Fold the smallest magnitudes into one bucket of each sign, to keep ``most`` at most."""
        size = np.abs(self._sparse_keys)
        floor = int(np.sort(size[size > 0])[::-1][most - 3])
        folded = np.where((size > 0) & (size < floor), np.sign(self._sparse_keys) * floor, self._sparse_keys)
        self._sparse_keys, self._sparse_weights = _sum_by_key([folded], [self._sparse_weights])

    def compacted(self, most: int = STORED_BUCKETS) -> Sketch:
        """A copy with at most ``most`` buckets: adjacent buckets merged (one mantissa bit less at a
        time, down to ``MIN_STORED_BITS``), then the smallest magnitudes folded."""
        out = Sketch()
        out.count, out.nulls, out.min, out.max, out.mean, out.m2 = (
            self.count, self.nulls, self.min, self.max, self.mean, self.m2,
        )  # fmt: skip
        keys_, weights, bits = self.keys, self.weights, self.bits
        if keys_.size > most and bits > MIN_STORED_BITS:
            sign, below = np.sign(keys_), np.abs(keys_) - 1
            # each bit less about halves the buckets: start where that would be enough
            bits = max(bits - max(int(math.log2(keys_.size / most)), 0), MIN_STORED_BITS)
            while True:
                coarse = sign * ((below >> (self.bits - bits)) + 1)  # sorted still: coarsening keeps the order
                if bits == MIN_STORED_BITS or 1 + np.count_nonzero(np.diff(coarse)) <= most:
                    break
                bits -= 1
        if bits != self.bits:
            starts = np.flatnonzero(np.diff(coarse, prepend=coarse[0] - 1))
            keys_, weights = coarse[starts], np.add.reduceat(weights, starts)
        out.bits, out._sparse_keys, out._sparse_weights = bits, keys_, weights
        if keys_.size > most:
            out._collapse(most)
        return out

    # -- reading ---------------------------------------------------------------------------

    @property
    def variance(self) -> float:
        return self.m2 / self.count if self.count else math.nan

    @property
    def std(self) -> float:
        return math.sqrt(self.variance) if self.count else math.nan

    def values(self) -> Floats:
        """Each bucket's value (within ``alpha`` of every value in it), in the keys' order; clipped to [min, max]."""
        k = self.keys
        shift = MANTISSA_BITS - self.bits
        coarse = np.abs(k)
        first = ((coarse - 1) << shift) + 1 + _OFFSET  # its first and last bucket at full resolution
        last = (coarse << shift) + _OFFSET
        low = (np.maximum(first, 0) << _SHIFT).view(np.float64)
        high = ((last + 1) << _SHIFT).view(np.float64)
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            value = 2 / (1 / low + 1 / high)  # their harmonic mean: the least relative error
        value = np.where(k == 0, 0.0, np.where(k < 0, -value, value))
        return np.clip(value, self.min, self.max) if self.count else value

    def quantile(self, q: float | npt.ArrayLike) -> Any:
        """The ``q`` quantile(s), within about ALPHA of the true value; NaN for an empty sketch."""
        qs = np.atleast_1d(np.asarray(q, dtype=np.float64))
        if not self.count or not self.keys.size:
            out = np.full(qs.shape, math.nan)
        else:
            cumulative = np.cumsum(self.weights)
            rank = np.clip(qs, 0.0, 1.0) * (cumulative[-1] - 1)
            at = np.searchsorted(cumulative, rank, side="right")
            out = self.values()[np.minimum(at, self.keys.size - 1)]
            out = np.where(qs <= 0, self.min, np.where(qs >= 1, self.max, out))
        return float(out[0]) if np.ndim(q) == 0 else out

    def cdf(self, x: float | npt.ArrayLike) -> Any:
        """Share of values <= ``x`` (each bucket's values taken at its value)."""
        xs = np.atleast_1d(np.asarray(x, dtype=np.float64))
        if not self.count or not self.keys.size:
            out = np.full(xs.shape, math.nan)
        else:
            cumulative = np.concatenate([[0], np.cumsum(self.weights)])
            out = cumulative[np.searchsorted(self.values(), xs, side="right")] / cumulative[-1]
        return float(out[0]) if np.ndim(x) == 0 else out

    # -- storing ---------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """A compact dict: the moments, and the buckets as base64 of zlib of the keys' steps
        and the counts, each in the narrowest of 1, 2 or 4 bytes that holds them."""
        d: dict[str, Any] = {"n": self.count, "nulls": self.nulls}
        if self.count:
            d.update(min=self.min, max=self.max, mean=self.mean, m2=self.m2)
        if self.count and self.bits != MANTISSA_BITS:
            d["r"] = self.bits
        if self.count and 0 < self.keys.size <= LISTED:  # a small file's: plain lists cost a tenth of packing
            k = self.keys
            d["k"], d["w"] = [int(k[0]), *(k[1:] - k[:-1]).tolist()], self.weights.tolist()  # first, then steps
        elif self.count and self.keys.size:
            steps, weights = np.diff(self.keys, prepend=0), self.weights
            ks, ws = _width(int(np.abs(steps[1:]).max(initial=0)), True), _width(int(weights.max()), False)
            first = np.array([self.keys[0]], np.int32).tobytes()
            packed = zlib.compress(first + steps[1:].astype(ks).tobytes() + weights.astype(ws).tobytes(), 6)
            d["b"] = f"{np.dtype(ks).str[1:]}{np.dtype(ws).str[1:]}:" + base64.b64encode(packed).decode("ascii")
            if int(weights.max()) > 0xFFFFFFFF:  # a bucket over 4 billion values: kept whole
                d["w"] = weights.tolist()
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Sketch:
        s = cls()
        s.count, s.nulls = int(d["n"]), int(d["nulls"])
        if s.count:
            s.min, s.max, s.mean, s.m2 = float(d["min"]), float(d["max"]), float(d["mean"]), float(d["m2"])
            s.bits = int(d.get("r", MANTISSA_BITS))
            if not 0 <= s.bits <= MANTISSA_BITS:
                raise ValueError(f"bucket resolution {s.bits} is not 0 to {MANTISSA_BITS} bits")
        if s.count and "k" in d:
            s._sparse_keys, s._sparse_weights = np.cumsum(np.asarray(d["k"], np.int64)), np.asarray(d["w"], np.int64)
            if s._sparse_keys.shape != s._sparse_weights.shape or s._sparse_keys.ndim != 1:
                raise ValueError("bucket keys and counts differ in number")
        elif s.count and "b" in d:
            types, data = d["b"].split(":", 1)
            ks, ws = np.dtype("<" + types[:2]), np.dtype("<" + types[2:])
            raw = zlib.decompress(base64.b64decode(data))
            size = (len(raw) - 4 + ks.itemsize) // (ks.itemsize + ws.itemsize)
            steps = np.frombuffer(raw, ks, size - 1, 4).astype(np.int64)
            s._sparse_keys = np.cumsum(np.concatenate([np.frombuffer(raw, np.int32, 1).astype(np.int64), steps]))
            weights = d.get("w")
            s._sparse_weights = (
                np.asarray(weights, np.int64)
                if weights
                else np.frombuffer(raw, ws, size, 4 + (size - 1) * ks.itemsize).astype(np.int64)
            )
        return s


def _keys(values: Floats) -> Ints:
    """Each value's signed bucket key at ``MANTISSA_BITS`` (any shape; no NaN), from its bits."""
    bits = values.view(np.int64)
    key: Ints = np.bitwise_and(bits, _MAGNITUDE)
    key >>= _SHIFT
    key -= _OFFSET
    np.maximum(key, 0, out=key)
    sign = bits >> 63  # 0, or -1 for a negative value
    key ^= sign
    key -= sign  # the negative's key is minus its magnitude's
    return key


def _coarsen(keys_: Ints, shift: int) -> Ints:
    """Keys ``shift`` mantissa bits coarser: 2**shift adjacent buckets become one (0 stays 0)."""
    if shift <= 0:
        return keys_
    magnitude = np.abs(keys_)
    coarse = np.where(magnitude > 0, ((magnitude - 1) >> shift) + 1, 0)
    return np.where(keys_ < 0, -coarse, coarse)


def _width(largest: int, signed: bool) -> type[np.integer[Any]]:
    """The narrowest integer type (1, 2 or 4 bytes) that holds ``largest``."""
    if signed:
        return np.int8 if largest < 1 << 7 else np.int16 if largest < 1 << 15 else np.int32
    return np.uint8 if largest < 1 << 8 else np.uint16 if largest < 1 << 16 else np.uint32


def _sum_by_key(keys_: list[Ints], weights: list[Ints]) -> tuple[Ints, Ints]:
    """Sorted distinct keys, and the summed weights of each: counted densely over the keys' span
    (linear time: a batch's thousands of files merge fast), sorted when the span is too wide."""
    both = np.concatenate(keys_)
    if both.size == 0:
        return both.astype(np.int64), both.astype(np.int64)
    summed = np.concatenate(weights)
    low, high = int(both.min()), int(both.max())
    if high - low < max(1 << 18, 4 * both.size):
        dense = np.bincount(both - low, summed, minlength=high - low + 1)
        found = np.flatnonzero(dense)
        return found + low, dense[found].astype(np.int64)
    distinct, where = np.unique(both, return_inverse=True)
    return distinct, np.bincount(where.ravel(), summed).astype(np.int64)


def _sample(x: Floats, start: int) -> list[tuple[Floats, int]]:
    """The rows of a block (its last axis) whose values are bucketed, with the weight of each:
    rows before ``EXACT_ROWS`` of the file, then the first ``CHUNK`` of every ``STEP * CHUNK``
    (``start``: the block's first row). Runs of rows, not every ``STEP``-th row: a row apart is a
    cache line apart, and reading every line would cost as much as bucketing every value."""
    n = x.shape[-1]
    exact = min(max(EXACT_ROWS - start, 0), n)
    parts = [(x[..., :exact], 1)] if exact else []
    if exact == n:
        return parts
    period = STEP * CHUNK
    phase = (start + exact - EXACT_ROWS) % period  # where row ``exact`` falls in its period
    runs = [x[..., exact : min(exact + CHUNK - phase, n)]] if 0 < phase < CHUNK else []  # the end of a run
    first = exact + (period - phase) % period  # the first run that starts in this block
    whole = max(n - first, 0) // period
    if whole:
        body = x[..., first : first + whole * period]
        runs.append(body.reshape(*x.shape[:-1], whole, period)[..., :CHUNK].reshape(*x.shape[:-1], -1))
    if first + whole * period < n:
        runs.append(x[..., first + whole * period : first + whole * period + CHUNK])
    if runs:
        parts.append((runs[0] if len(runs) == 1 else np.concatenate(runs, axis=-1), STEP))
    return parts


def _add_rows(sketches: list[Sketch], x: Floats, weight: int) -> None:
    """Bucket a matrix (a row per sketch, no NaN): one pass for all rows' keys, one count of them
    when their span is narrow (the usual case), else a count per row."""
    if x.shape[1] == 0:
        return
    key = _keys(x)
    low = int(key.min())
    span = int(key.max()) - low + 1
    if len(sketches) * span <= max(1 << 20, 4 * key.size):
        key -= low
        key += np.arange(0, len(sketches) * span, span)[:, None]
        counts = np.bincount(key.ravel(), minlength=len(sketches) * span).reshape(len(sketches), span)
        if weight != 1:
            counts *= weight
        for sketch, row in zip(sketches, counts, strict=True):
            sketch._add_dense(low, row)
    else:
        for sketch, row in zip(sketches, key, strict=True):
            row_low = int(row.min())
            counts = np.bincount(row - row_low)
            sketch._add_dense(row_low, counts * weight if weight != 1 else counts)


def _class_counts(prediction: npt.NDArray[Any]) -> tuple[npt.NDArray[Any], Ints]:
    """Each distinct label and its count: integer labels of a narrow range counted directly (no
    sort), others sorted (ints far faster than as text; objects of several types as text)."""
    if prediction.dtype.kind in "iu" and prediction.size:  # (not bool: its labels are True and False)
        values = prediction.astype(np.int64, copy=False)
        low, high = int(values.min()), int(values.max())
        if high - low < 1 << 16:
            counts = np.bincount(values - low)
            found = np.flatnonzero(counts)
            return found + low, counts[found]
    try:
        return np.unique(prediction, return_counts=True)
    except TypeError:
        return np.unique(prediction.astype(str), return_counts=True)


class Stats:
    """One file's or batch's statistics: a :class:`Sketch` per feature, and of the prediction (or its
    class counts, when the prediction is a class label)."""

    def __init__(self, features: Sequence[str] = (), labels: bool = False) -> None:
        self.labels = labels
        """The prediction is a class label (the model has ``classes_``): counted per class."""
        self.rows = 0
        self.files = 0
        self._features: dict[str, Sketch] = {f: Sketch() for f in features}
        self.prediction = Sketch()
        self.classes: dict[str, int] = {}
        self.comparison: Comparison | None = None
        """Champion vs challenger (``--shadow``), when the file was scored by both."""
        self._seen = 0
        """Rows whose features were gathered so far: where the next block starts, for sampling."""
        self._table: Ints | None = None
        """Bucket counts of every feature (a row each) gathered since the features were last read:
        one addition a block, not one a feature; its columns are keys ``_table_low``, ... ."""
        self._table_low = 0
        self._pending: dict[int, list[Ints]] = {}
        """Keys of every feature (a row each) not yet counted into the table, by their weight."""
        self._pending_size = 0

    @property
    def features(self) -> dict[str, Sketch]:
        """A :class:`Sketch` per feature, by name (up to date: the counts gathered are handed over)."""
        if self._pending_size:
            self._count_pending()
        self._hand_over()
        return self._features

    @features.setter
    def features(self, features: dict[str, Sketch]) -> None:
        self._table, self._pending, self._pending_size = None, {}, 0
        self._features = features

    def _hand_over(self) -> None:
        """The table's counts into the sketches."""
        if self._table is not None:
            for sketch, row in zip(self._features.values(), self._table, strict=True):
                sketch._add_dense(self._table_low, row)
            self._table = None

    @classmethod
    def of_file(cls, features: Sequence[str], labels: bool) -> Stats:
        """Empty statistics of one file: its ``features`` (names), its predictions as class labels or numbers."""
        stats = cls(features, labels)
        stats.files = 1
        return stats

    def start(self, features: Sequence[str], labels: bool) -> None:
        """Gather one file's statistics from now on: its ``features`` (names), and its predictions as
        class labels or numbers."""
        self.__init__(features, labels)  # type: ignore[misc]
        self.files = 1

    def update(self, columns: Sequence[npt.NDArray[Any]], prediction: npt.NDArray[Any]) -> None:
        """Add one block: its feature columns (float64, in ``features``' order) and its predictions."""
        self.update_features(columns)
        self.update_prediction(prediction)

    def update_features(self, columns: Sequence[npt.NDArray[Any]] | npt.NDArray[Any]) -> None:
        """Add one block's feature columns (float64, in ``features``' order; or one matrix of them,
        a column a row): exact moments of every value, buckets of a sample of rows (see the module)."""
        sketches = list(self._features.values())
        if len(columns) != len(sketches):
            raise ValueError(f"{len(columns)} feature columns for {len(sketches)} features")
        if not sketches:
            return
        x = np.asarray(columns, dtype=np.float64) if isinstance(columns, np.ndarray) else np.stack(columns)
        x = x.astype(np.float64, copy=False)
        n = x.shape[1]
        if n == 0:
            return
        start, self._seen = self._seen, self._seen + n
        with np.errstate(invalid="ignore", over="ignore"):
            totals = x.sum(axis=1)
        clean = np.isfinite(totals) & np.array([s.count == start for s in sketches])  # no null before either
        if not clean.all():  # rare: a column with a null or an infinity goes its own way
            for j in np.flatnonzero(~clean).tolist():
                self._update_column(sketches[j], x[j])
            rows = np.flatnonzero(clean)
            if rows.size == 0:
                return
            x, totals, sketches = x[rows], totals[rows], [sketches[j] for j in rows.tolist()]
        with np.errstate(invalid="ignore", over="ignore"):
            means = totals / n
            m2s = np.maximum(np.einsum("ij,ij->i", x, x) - n * means * means, 0.0)  # not BLAS: its threads spin
            for j in np.flatnonzero(means * means > 1e6 * m2s / n).tolist():  # cancellation: the exact way then
                deviation = x[j] - means[j]
                m2s[j] = np.einsum("i,i->", deviation, deviation)
        lows, highs = x.min(axis=1), x.max(axis=1)
        for sketch, mean, m2, low, high in zip(
            sketches, means.tolist(), m2s.tolist(), lows.tolist(), highs.tolist(), strict=True
        ):
            sketch._merge_moments(n, mean, m2, low, high)
        whole = len(sketches) == len(self._features)
        for part, weight in _sample(x, start):
            if whole:
                self._add_rows(part, weight)
            else:  # the columns with nulls left out: each its own way
                _add_rows(sketches, part, weight)

    def _add_rows(self, x: Floats, weight: int) -> None:
        """Bucket a matrix of every feature (a row each, no NaN): one pass for all rows' keys, kept
        until about ``PENDING`` are, then counted into the table at once (a count and an addition
        cost as much for a few keys as for many: they span the table)."""
        if x.shape[1] == 0:
            return
        self._pending.setdefault(weight, []).append(_keys(x))
        self._pending_size += x.size
        if self._pending_size >= PENDING:
            self._count_pending()

    def _count_pending(self) -> None:
        pending, self._pending, self._pending_size = self._pending, {}, 0
        for weight, keys_ in pending.items():
            self._count(keys_[0] if len(keys_) == 1 else np.concatenate(keys_, axis=1), weight)

    def _count(self, key: Ints, weight: int) -> None:
        """Count a matrix of keys (a row a feature) into the table, each ``weight`` times."""
        low, high = int(key.min()), int(key.max()) + 1
        d = key.shape[0]
        table = self._table
        if table is None and d * (high - low) > SPARSE * key.size:
            self._count_sparse(key, weight, low, high - low)
            return
        if table is None or low < self._table_low or high > self._table_low + table.shape[1]:
            start = low if table is None else min(low, self._table_low)
            end = high if table is None else max(high, self._table_low + table.shape[1])
            if d * (end - start) > max(1 << 20, 4 * key.size):  # too wide a span for a dense table
                self._hand_over()
                for sketch, row in zip(self._features.values(), key, strict=True):
                    row_low = int(row.min())
                    counts = np.bincount(row - row_low)
                    sketch._add_dense(row_low, counts * weight if weight != 1 else counts)
                return
            grown = np.zeros((d, end - start), np.int64)
            if table is not None:
                grown[:, self._table_low - start : self._table_low - start + table.shape[1]] = table
            self._table, self._table_low, table = grown, start, grown
        span = table.shape[1]
        key += np.arange(-self._table_low, d * span - self._table_low, span)[:, None]
        counts = np.bincount(key.ravel(), minlength=d * span).reshape(d, span)
        if weight != 1:
            counts *= weight
        table += counts

    def _count_sparse(self, key: Ints, weight: int, low: int, span: int) -> None:
        """Count a few keys (a row a feature) straight into the sketches: one sort of them all."""
        d = key.shape[0]
        flat = (key - low) + np.arange(0, d * span, span)[:, None]
        found, counts = np.unique(flat, return_counts=True)
        row = found // span
        bounds = np.searchsorted(row, np.arange(d + 1)).tolist()
        found += low - row * span
        if weight != 1:
            counts *= weight
        for j, sketch in enumerate(self._features.values()):
            if bounds[j] < bounds[j + 1]:
                sketch._add_sparse(found[bounds[j] : bounds[j + 1]], counts[bounds[j] : bounds[j + 1]])

    @staticmethod
    def _update_column(sketch: Sketch, v: Floats) -> None:
        """One column with a null or an infinity, now or before: its moments, and the buckets of a
        sample of its values (not NaN), placed by the values it has seen (so a column's first
        ``EXACT_ROWS`` values are all bucketed, however many nulls came first)."""
        seen = sketch.count
        kept = sketch._drop_nulls(v)
        if kept.size:
            sketch._add_moments(kept, float(kept.sum()))
            for part, weight in _sample(kept, seen):
                sketch._add_values(part, weight)

    def update_prediction(self, prediction: npt.NDArray[Any]) -> None:
        """Add one block's predictions (its rows: one prediction each)."""
        self.rows += len(prediction)
        if not self.labels:
            self.prediction.update(prediction)
            return
        labels, counts = _class_counts(np.asarray(prediction))
        for value, count in zip(labels.tolist(), counts.tolist(), strict=True):
            label = str(value)
            key = label if label in self.classes or len(self.classes) < MAX_CLASSES else OTHER
            self.classes[key] = self.classes.get(key, 0) + int(count)

    def merge(self, other: Stats) -> Stats:
        return self.merge_all([other])

    def merge_all(self, others: Iterable[Stats]) -> Stats:
        """Add every one of ``others`` into this one (one sort a column for all); returns it."""
        features: dict[str, list[Sketch]] = {}
        predictions = []
        comparisons: list[Comparison] = []
        for other in others:
            self.labels = self.labels or other.labels
            self.rows += other.rows
            self.files += other.files
            for name, sketch in other.features.items():
                features.setdefault(name, []).append(sketch)
            predictions.append(other.prediction)
            for label, count in other.classes.items():
                self.classes[label] = self.classes.get(label, 0) + count
            if other.comparison is not None:
                comparisons.append(other.comparison)
        for name, sketches in features.items():
            self.features.setdefault(name, Sketch()).merge_all(sketches)
        self.prediction.merge_all(predictions)
        if comparisons:
            from velosiped.comparison import Comparison

            self.comparison = (self.comparison or Comparison()).merge_all(comparisons)
        return self

    def to_json(self, buckets: int | None = None) -> str:
        """Compact JSON; with ``buckets``, each sketch with that many buckets at most (``Sketch.compacted``)."""

        def packed(s: Sketch) -> dict[str, Any]:
            return (s.compacted(buckets) if buckets is not None and s.keys.size > buckets else s).to_dict()

        d: dict[str, Any] = {
            "v": 1,
            "rows": self.rows,
            "files": self.files,
            "labels": self.labels,
            "features": {name: packed(s) for name, s in self.features.items()},
        }
        if self.prediction.count or self.prediction.nulls:
            d["prediction"] = packed(self.prediction)
        if self.classes:
            d["classes"] = self.classes
        sketches = (*d["features"].values(), d.get("prediction", {}))
        if any("k" in f for f in sketches):
            d["v"] = 3  # buckets as lists: a reader of versions 1 and 2 would see none, so it refuses
        elif any("r" in f for f in sketches):
            d["v"] = 2  # coarser buckets: a reader of version 1 only would misread their keys, so it refuses
        if self.comparison is not None:
            d["comparison"] = self.comparison.to_dict()
        return json.dumps(d, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str | bytes) -> Stats:
        d = json.loads(text)
        if not isinstance(d, dict) or d.get("v") not in (1, 2, 3):
            raise ValueError("not a version 1, 2 or 3 statistics object")
        s = cls(labels=bool(d.get("labels")))
        s.rows, s.files = int(d["rows"]), int(d.get("files", 0))
        s.features = {name: Sketch.from_dict(f) for name, f in d["features"].items()}
        if "prediction" in d:
            s.prediction = Sketch.from_dict(d["prediction"])
        s.classes = {str(k): int(v) for k, v in d.get("classes", {}).items()}
        if "comparison" in d:
            from velosiped.comparison import Comparison

            s.comparison = Comparison.from_dict(d["comparison"])
        return s


def store(redis: Redis | Pipeline, batch_id: str, file: str, stats: Stats) -> bool:
    """Keep a scored file's statistics in its batch (before the file is recorded done, so they
    expire with the batch), ``STORED_BUCKETS`` a column at most; replaces what the file had kept
    there before; False when the batch is gone (in a pipeline: queued)."""
    args = [file, stats.to_json(STORED_BUCKETS)]
    script = lua.script(redis, "stats.lua")
    return bool(script(keys=[keys.batch_stats(batch_id), keys.batch(batch_id)], args=args, client=redis))


VERSION_FIELD = "velo:version"
"""Field of a batch's stats hash counting its changes (scripts/stats.lua, state.lua); no input
URI is named so (a local path starts with /, an S3 one with s3://)."""

MERGED_FIELD = "velo:merged"
"""Field of a batch's stats hash: its files' statistics merged, as of a version (a cache)."""


def load_batch(redis: Redis, batch_id: str) -> Stats:
    """Every file's statistics of a batch, merged (files that failed left none).

    The merge is kept in the batch's hash with the version it was made at: read again while no
    file has been stored or dropped since, it costs one read whatever the batch's size."""
    key = keys.batch_stats(batch_id)
    version, cached = (_bytes(v) for v in redis.hmget(key, [VERSION_FIELD, MERGED_FIELD]))
    if version is not None and cached is not None:
        stamp, _, text = cached.partition(b" ")
        if stamp == version:
            return Stats.from_json(text)
    merged = Stats()
    chunk: list[Stats] = []
    for field, raw in redis.hscan_iter(key, count=1000):
        if _bytes(field) in (VERSION_FIELD.encode(), MERGED_FIELD.encode()):
            continue
        chunk.append(Stats.from_json(raw))
        if len(chunk) == 1000:  # merged a thousand at a time: memory stays bounded
            merged.merge_all(chunk)
            chunk = []
    merged.merge_all(chunk)
    if version is not None:  # stamped with the version read before the scan: any change since makes it stale
        _keep_merged(redis, key, version, merged)
    return merged


def _bytes(value: Any) -> bytes | None:
    """A value read from Redis as bytes (None stays None)."""
    return value if isinstance(value, bytes) or value is None else str(value).encode()


def _keep_merged(redis: Redis, key: str, version: bytes, merged: Stats) -> None:
    """Keep the merge in the hash, only if it still exists (it expires with its batch)."""
    script = lua.script(redis, "stats_merged.lua")
    script(keys=[key], args=[MERGED_FIELD, version + b" " + merged.to_json().encode()], client=redis)
