"""Request bodies in, response bodies out: JSON records, JSON columns or CSV.

A CSV body is read as a file is (every column as text, through the batch's own reader) and its
answer written as a file's output is. A JSON body takes a shorter road to the same place: its
feature values go straight into a float matrix (what :func:`velosiped.frames.to_numbers` would
make of them, 20 times faster on one row), and only a value that is not a number sends it
through the file's road, for the message naming its row and column. Either way the features
are picked by :class:`velosiped.frames.FeatureSpec` and the answer has the batch output's
columns: the kept input columns, ``prediction``, then ``proba_<class>``.
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import orjson
import pyarrow as pa

from velosiped.errors import InputError
from velosiped.frames import FeatureSpec, assemble
from worker.scoring import read_csv_table, write_csv_table

__all__ = ["CSV", "JSON", "NAME", "Body", "parse"]

NAME = "request"
"""How messages name the body (a file's messages name the file)."""

CSV = "text/csv"
JSON = "application/json"


class Body:
    """One request's rows: their columns, their features as numbers, and the answer."""

    def __init__(
        self,
        header: list[str],
        rows: int,
        shape: str,
        records: list[dict[str, Any]] | None = None,
        columns: dict[str, list[Any]] | None = None,
        table: pa.Table | None = None,
    ) -> None:
        self.header = header
        self.rows = rows
        self.shape = shape  # "records", "columns" or "csv": the JSON answer keeps the shape
        self._records = records
        self._columns = columns
        self._table = table

    def values(self, column: str) -> list[Any]:
        if self._records is not None:
            return [r.get(column) for r in self._records]
        if self._columns is not None:
            return self._columns[column]
        return self.table().column(column).to_pylist()

    def table(self) -> pa.Table:
        """The rows as a table, as a file's block would be."""
        if self._table is None:
            arrays = [_array(self.values(c)) for c in self.header]
            self._table = pa.Table.from_arrays(arrays, names=self.header) if arrays else pa.table({})
        return self._table

    def features(self, spec: FeatureSpec) -> np.ndarray:
        """The feature matrix (rows x features, float64, the model's order).

        Raises:
            InputError: a feature value is not a number; the message names its row and column.
        """
        if self._table is None:
            try:
                if self._records is not None:
                    matrix = np.array([[r.get(c) for c in spec.columns] for r in self._records], dtype=np.float64)
                else:
                    matrix = np.array([self.values(c) for c in spec.columns], dtype=np.float64).T
                return matrix.reshape(self.rows, len(spec.columns))
            except (ValueError, TypeError):
                pass  # text among the numbers: the file's road names it (or reads "NA" as missing)
        cols = spec.numbers(self.table(), NAME)
        return np.column_stack(cols) if cols else np.empty((self.rows, 0))

    def answer(
        self, kept: list[str], prediction: np.ndarray, probabilities: np.ndarray | None, names: list[str], accept: str
    ) -> tuple[bytes, str]:
        """The answer's bytes and media type: CSV when asked (or sent, unless JSON is asked),
        else JSON in the request's shape (records for records, columns for columns)."""
        wants = accept.lower()
        if CSV in wants or (self.shape == "csv" and JSON not in wants):
            out = io.BytesIO()
            write_csv_table(assemble(self.table(), kept, prediction, probabilities, names), out)
            return out.getvalue(), CSV
        columns: dict[str, list[Any]] = {c: self.values(c) for c in kept}
        columns["prediction"] = prediction.tolist()
        for i, name in enumerate(names[len(kept) + 1 :]):
            assert probabilities is not None
            columns[name] = probabilities[:, i].tolist()
        if self.shape == "columns":
            return orjson.dumps(columns), JSON
        keys = list(columns)
        return orjson.dumps([dict(zip(keys, row, strict=True)) for row in zip(*columns.values(), strict=True)]), JSON


def parse(body: bytes, content_type: str) -> Body:
    """The request's rows. Raises InputError with a one-line reason (answered 422)."""
    kind = content_type.split(";", 1)[0].strip().lower()
    if kind in (CSV, "application/csv"):
        table = read_csv_table(body, NAME)
        return Body(table.column_names, table.num_rows, "csv", table=table)
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as e:
        raise InputError(f"{NAME}: not JSON ({e}); send records, columns or text/csv") from None
    if isinstance(data, dict) and "instances" in data:  # the TF-Serving / SageMaker envelope
        data = data["instances"]
    if isinstance(data, list):
        names: dict[str, None] = {}  # every key seen, in first-seen order
        for i, row in enumerate(data):
            if not isinstance(row, dict):
                raise InputError(f"{NAME}: row {i + 1} is not an object of column: value")
            names.update(dict.fromkeys(row))
        return Body(list(names), len(data), "records", records=data)
    if isinstance(data, dict):
        lengths = {len(v) if isinstance(v, list) else -1 for v in data.values()}
        if -1 in lengths:
            raise InputError(f"{NAME}: each column must be a list of values")
        if len(lengths) > 1:
            raise InputError(f"{NAME}: columns have different lengths ({', '.join(map(str, sorted(lengths)))})")
        return Body(list(data), lengths.pop() if lengths else 0, "columns", columns=data)
    raise InputError(f"{NAME}: JSON must be a list of records or an object of columns")


def _array(values: list[Any]) -> pa.Array:
    try:
        return pa.array(values)
    except (pa.ArrowInvalid, pa.ArrowTypeError):  # mixed numbers and text: text, named if a feature
        return pa.array([None if v is None else str(v) for v in values], pa.string())
