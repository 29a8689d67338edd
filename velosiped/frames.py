"""A table in, the output table out: the one code path from rows to predictions, for a file's
blocks (worker.scoring) and for online requests alike.

Output columns: the kept input columns in input order, ``prediction``, then with ``proba`` one
``proba_<class>`` column per class.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from velosiped.errors import InputError, one_line
from velosiped.sketch import Stats

__all__ = [
    "FeatureSpec",
    "assemble",
    "classes_of",
    "kept_columns",
    "predict_block",
    "run_model",
    "stacked",
    "to_numbers",
]

_NULL_TOKENS = ["", "NA", "N/A", "NaN", "nan", "null", "NULL", "None"]


class FeatureSpec:
    """Which input columns feed the model, decided once per file from its header.

    By default the model's ``feature_names_in_`` pick columns by name; a model fitted without
    names takes every column in order. ``override`` (``--features``) names the input columns
    to feed, in the model's order, and may rename them for a model fitted with other names.
    """

    def __init__(self, model: Any, header: Sequence[str], name: str, override: Sequence[str] | None = None) -> None:
        names = getattr(model, "feature_names_in_", None)
        expected = getattr(model, "n_features_in_", None)
        if override:
            missing = [c for c in override if c not in header]
            if missing:
                raise InputError(f"{name}: missing --features columns: {', '.join(missing)}")
            if expected is not None and len(override) != expected:
                raise InputError(f"{name}: --features names {len(override)} columns, the model expects {expected}")
            self.columns = list(override)
            self.model_names = [str(n) for n in names] if names is not None else None
        elif names is not None:
            self.columns = [str(n) for n in names]
            missing = [n for n in self.columns if n not in header]
            if missing:
                raise InputError(f"{name}: missing feature columns: {', '.join(missing)}")
            self.model_names = self.columns
        else:
            if expected is not None and len(header) != expected:
                raise InputError(
                    f"{name}: has {len(header)} columns but the model expects {expected} "
                    "(it was fitted without column names, so every column is a feature)"
                )
            self.columns = list(header)
            self.model_names = None

    def matrix(self, batch: pa.RecordBatch, name: str, first_row: int = 1) -> Any:
        """The model's input for one block: a DataFrame when the model knows names, else an array."""
        return self.model_input(self.numbers(batch, name, first_row), batch.num_rows)

    def numbers(self, batch: pa.RecordBatch | pa.Table, name: str, first_row: int = 1) -> list[np.ndarray]:
        """The feature columns as float64, in the model's order (``first_row``: the block's first
        row number, for messages)."""
        return [to_numbers(batch.column(c), c, name, first_row) for c in self.columns]

    def model_input(self, cols: list[np.ndarray] | np.ndarray, rows: int) -> Any:
        """Feature columns (or their matrix, a column a row: see :func:`stacked`) as the model takes
        them: a DataFrame when it knows names, else an array (a row a row)."""
        matrix = cols if isinstance(cols, np.ndarray) else stacked(cols, rows)
        if self.model_names is None:
            return np.ascontiguousarray(matrix.T)
        # One 2D block: the DataFrame holds the matrix as it is, and the model's np.asarray of it is
        # a view (from a dict of columns, pandas would copy them into such a matrix itself)
        return pd.DataFrame(matrix.T, columns=self.model_names, copy=False)


def stacked(cols: Sequence[np.ndarray], rows: int) -> np.ndarray:
    """Feature columns as one float64 matrix, a column a row (each column's values contiguous)."""
    return np.stack(cols).astype(np.float64, copy=False) if len(cols) else np.empty((0, rows))


def to_numbers(column: pa.ChunkedArray | pa.Array, col: str, name: str, first_row: int = 1) -> np.ndarray:
    """One feature column as float64; empty and NA-like cells become NaN."""
    try:
        return np.asarray(pc.cast(column, pa.float64()).to_numpy(zero_copy_only=False))
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        if not pa.types.is_string(column.type):
            raise InputError(f"{name}: column {col!r} of type {column.type} is not numeric") from None
    nulled = pc.if_else(pc.is_in(column, pa.array(_NULL_TOKENS)), pa.scalar(None, pa.string()), column)
    try:
        return np.asarray(pc.cast(nulled, pa.float64()).to_numpy(zero_copy_only=False))
    except pa.ArrowInvalid:
        for i, value in enumerate(nulled.to_pylist()):
            try:
                float(value if value is not None else "nan")
            except ValueError:
                where = f"row {first_row + i}, column {col!r}"
                raise InputError(f"{name}: {where} holds non-numeric value {value[:40]!r}") from None
        raise


def kept_columns(header: list[str], keep: Sequence[str] | None, name: str) -> list[str]:
    if keep is None:
        return list(header)
    unknown = [c for c in keep if c not in header]
    if unknown:
        raise InputError(f"{name}: --keep names columns not in the file: {', '.join(unknown)}")
    return [c for c in header if c in keep]


def classes_of(model: Any, proba: bool, name: str) -> list[Any]:
    if not proba:
        return []
    if not hasattr(model, "predict_proba"):
        raise InputError(f"{name}: --proba asked but the model has no predict_proba")
    return list(model.classes_)


def predict_block(
    batch: pa.RecordBatch,
    spec: FeatureSpec,
    model: Any,
    kept: list[str],
    classes: list[Any],
    names: list[str],
    rows: int,
    name: str,
    stats: Stats | None = None,
    also: Callable[..., None] | None = None,
) -> pa.Table:
    """One block scored; with ``stats``, its features and predictions are added to them. ``also``
    (a challenger's, see worker.shadow) is then called with the block, its feature columns, the
    model's input, predictions and probabilities, and ``rows``, ``name``."""
    matrix = stacked(spec.numbers(batch, name, rows + 1), batch.num_rows)
    if stats is not None:  # before predict: a model's thread pool, still spinning after it, would slow this
        stats.update_features(matrix)
    x = spec.model_input(matrix, batch.num_rows)
    prediction, probabilities = run_model(
        model, x, bool(classes), f"{name}: model rejected rows {rows + 1}-{rows + batch.num_rows}"
    )
    if stats is not None:
        stats.update_prediction(prediction)
    if also is not None:
        also(batch, list(matrix), x, prediction, probabilities, rows, name)
    return assemble(batch, kept, prediction, probabilities, names)


def run_model(model: Any, x: Any, proba: bool, context: str) -> tuple[np.ndarray, np.ndarray | None]:
    """``predict`` (and ``predict_proba``) of ``x``; a model's own error is an InputError after ``context``."""
    try:
        prediction = np.asarray(model.predict(x))
        probabilities = np.asarray(model.predict_proba(x)) if proba else None
    except Exception as e:
        raise InputError(f"{context}: {one_line(e)}") from e
    return prediction, probabilities


def assemble(
    batch: pa.RecordBatch | pa.Table,
    kept: list[str],
    prediction: np.ndarray,
    probabilities: np.ndarray | None,
    names: list[str],
) -> pa.Table:
    """The output table: kept input columns as they came, ``prediction``, then the probabilities."""
    arrays = [batch.column(c) for c in kept] + [pa.array(prediction)]
    if probabilities is not None:
        arrays += [pa.array(probabilities[:, i]) for i in range(probabilities.shape[1])]
    return pa.Table.from_arrays(arrays, names=names)
