"""Champion vs challenger (``--shadow``): how two models' predictions on the same rows compare,
gathered in the pass that scores a file with both, mergeable per batch.

- ``rows``: rows both models scored;
- class labels (either model has ``classes_``): ``agree`` (rows with the same label) and the
  ``confusion`` of the labels, champion's label -> challenger's label -> rows (``MAX_LABELS``
  distinct labels a side at most, more fold into ``OTHER``);
- ``delta_sum``/``delta_max``/``delta_rows``: per row, |Δproba| = the largest absolute difference
  between the two models' probabilities of the same class (both have ``predict_proba`` and the
  same classes; for two classes it is |Δ| of either class's probability), or, for regressors,
  |Δprediction|; mean = ``delta_sum / delta_rows``;
- ``all``/``disagree``: a :class:`velosiped.sketch.Sketch` per feature, of every row and of the rows
  where the labels differ, so the report can tell which features differ most where the models do;
- ``failed``: files whose challenger failed (its reason), while the champion's output was kept.

Everything adds up exactly, in any order: :meth:`merge` is associative and commutative.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from velosiped.sketch import Sketch

__all__ = ["MAX_FAILED", "MAX_LABELS", "OTHER", "Comparison"]

MAX_LABELS = 50
"""Distinct labels a side counted in the confusion at most; more go to ``OTHER``."""

OTHER = "(other)"

MAX_FAILED = 20
"""Challenger failures kept with their reasons (``failed_files`` counts them all)."""


class Comparison:
    """One file's or batch's comparison of a champion and a challenger; see the module's text."""

    def __init__(self, champion: str = "", challenger: str = "", features: Sequence[str] = ()) -> None:
        self.champion = champion
        self.challenger = challenger
        self.files = 0
        self.rows = 0
        self.labels = False
        self.agree = 0
        self.confusion: dict[str, dict[str, int]] = {}
        self.proba = False
        """The deltas are of class probabilities (else of numeric predictions)."""
        self.delta_sum = 0.0
        self.delta_max = 0.0
        self.delta_rows = 0
        self.all: dict[str, Sketch] = {f: Sketch() for f in features}
        self.disagree: dict[str, Sketch] = {f: Sketch() for f in features}
        self.failed: dict[str, str] = {}
        self.failed_files = 0

    # -- gathering -------------------------------------------------------------------------------

    def update(
        self,
        columns: Sequence[npt.NDArray[np.float64]],
        champion: npt.NDArray[Any],
        challenger: npt.NDArray[Any],
        *,
        labels: bool,
        champion_proba: npt.NDArray[np.float64] | None = None,
        challenger_proba: npt.NDArray[np.float64] | None = None,
    ) -> None:
        """Add one block: its feature ``columns`` (in the order of the features given at start), both
        models' predictions, and their probabilities (of the same classes, in the same order) if any."""
        n = len(champion)
        self.rows += n
        self.labels = self.labels or labels
        for sketch, column in zip(self.all.values(), columns, strict=True):
            sketch.update(column)
        if labels:
            same = _equal(champion, challenger)
            self.agree += int(same.sum())
            self._count_pairs(champion, challenger)
            if not same.all():
                differ = ~same
                for sketch, column in zip(self.disagree.values(), columns, strict=True):
                    sketch.update(column[differ])
        if champion_proba is not None and challenger_proba is not None:
            delta = np.max(np.abs(champion_proba - challenger_proba), axis=1) if n else np.empty(0)
            self.proba = True
        elif not labels:
            delta = np.abs(champion.astype(np.float64) - challenger.astype(np.float64))
        else:
            return
        finite = delta[np.isfinite(delta)]
        self.delta_sum += float(finite.sum())
        self.delta_rows += int(finite.size)
        if finite.size:
            self.delta_max = max(self.delta_max, float(finite.max()))

    def _count_pairs(self, champion: npt.NDArray[Any], challenger: npt.NDArray[Any]) -> None:
        if not len(champion):
            return
        xs, x_at = _codes(champion)
        ys, y_at = _codes(challenger)
        counts = np.bincount(x_at * len(ys) + y_at, minlength=len(xs) * len(ys)).reshape(len(xs), len(ys))
        for i, j in zip(*np.nonzero(counts), strict=True):
            row = self.confusion.setdefault(self._label(str(xs[i]), self.confusion), {})
            key = self._label(str(ys[j]), row)
            row[key] = row.get(key, 0) + int(counts[i, j])

    @staticmethod
    def _label(label: str, seen: dict[str, Any]) -> str:
        return label if label in seen or len(seen) < MAX_LABELS else OTHER

    def fail(self, file: str, reason: str) -> None:
        """The challenger failed on ``file`` (its champion's output stands)."""
        self.failed_files += 1
        if len(self.failed) < MAX_FAILED:
            self.failed[file] = reason

    # -- merging ---------------------------------------------------------------------------------

    def merge(self, other: Comparison) -> Comparison:
        return self.merge_all([other])

    def merge_all(self, others: Iterable[Comparison]) -> Comparison:
        """Add every one of ``others`` into this one; returns it."""
        alls: dict[str, list[Sketch]] = {}
        disagrees: dict[str, list[Sketch]] = {}
        for o in others:
            self.champion = self.champion or o.champion
            self.challenger = self.challenger or o.challenger
            self.files += o.files
            self.rows += o.rows
            self.labels = self.labels or o.labels
            self.agree += o.agree
            for x, row in o.confusion.items():
                mine = self.confusion.setdefault(x, {})
                for y, count in row.items():
                    mine[y] = mine.get(y, 0) + count
            self.proba = self.proba or o.proba
            self.delta_sum += o.delta_sum
            self.delta_max = max(self.delta_max, o.delta_max)
            self.delta_rows += o.delta_rows
            for name, sketch in o.all.items():
                alls.setdefault(name, []).append(sketch)
            for name, sketch in o.disagree.items():
                disagrees.setdefault(name, []).append(sketch)
            for file, reason in sorted(o.failed.items()):
                if len(self.failed) < MAX_FAILED:
                    self.failed.setdefault(file, reason)
            self.failed_files += o.failed_files
        for name, sketches in alls.items():
            self.all.setdefault(name, Sketch()).merge_all(sketches)
        for name, sketches in disagrees.items():
            self.disagree.setdefault(name, Sketch()).merge_all(sketches)
        return self

    # -- reading ---------------------------------------------------------------------------------

    @property
    def agreement(self) -> float | None:
        """Share of rows with the same label (class labels only)."""
        return self.agree / self.rows if self.labels and self.rows else None

    @property
    def delta_mean(self) -> float | None:
        return self.delta_sum / self.delta_rows if self.delta_rows else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "champion": self.champion,
            "challenger": self.challenger,
            "files": self.files,
            "rows": self.rows,
            "labels": self.labels,
            "agree": self.agree,
            "confusion": self.confusion,
            "proba": self.proba,
            "delta_sum": self.delta_sum,
            "delta_max": self.delta_max,
            "delta_rows": self.delta_rows,
            "all": {name: s.to_dict() for name, s in self.all.items()},
            "disagree": {name: s.to_dict() for name, s in self.disagree.items()},
            "failed": self.failed,
            "failed_files": self.failed_files,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Comparison:
        c = cls(str(d.get("champion", "")), str(d.get("challenger", "")))
        c.files, c.rows = int(d["files"]), int(d["rows"])
        c.labels, c.agree = bool(d["labels"]), int(d["agree"])
        c.confusion = {str(x): {str(y): int(n) for y, n in row.items()} for x, row in d["confusion"].items()}
        c.proba = bool(d["proba"])
        c.delta_sum, c.delta_max, c.delta_rows = float(d["delta_sum"]), float(d["delta_max"]), int(d["delta_rows"])
        c.all = {name: Sketch.from_dict(s) for name, s in d["all"].items()}
        c.disagree = {name: Sketch.from_dict(s) for name, s in d["disagree"].items()}
        c.failed = {str(k): str(v) for k, v in d.get("failed", {}).items()}
        c.failed_files = int(d.get("failed_files", len(c.failed)))
        return c


def _equal(a: npt.NDArray[Any], b: npt.NDArray[Any]) -> npt.NDArray[np.bool_]:
    """Row by row, the same label (compared as text when the two models' label types differ)."""
    try:
        same = np.asarray(a == b)
        if same.shape == a.shape:
            return same
    except (TypeError, ValueError):
        pass
    return np.asarray(a.astype(str) == b.astype(str))


def _codes(values: npt.NDArray[Any]) -> tuple[npt.NDArray[Any], npt.NDArray[np.intp]]:
    """The distinct labels and each row's index among them (as text when they cannot be sorted)."""
    try:
        distinct, at = np.unique(values, return_inverse=True)
    except TypeError:
        distinct, at = np.unique(values.astype(str), return_inverse=True)
    return distinct, at.ravel()
