"""Stream one CSV through a model: read a block, predict, write, repeat; memory stays flat.

Input columns are read as text and copied to the output as they were written, so kept
columns come out unchanged; only the model's features are converted to numbers.
Reading and writing use pyarrow's CSV engine, several times faster than pandas'.
"""

from __future__ import annotations

import csv
import gzip
import io
import os
import time
import zlib
from collections.abc import Sequence
from typing import IO, Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from worker.errors import InputError

__all__ = ["BLOCK_SIZE", "FeatureSpec", "score_stream"]

BLOCK_SIZE = int(os.environ.get("VELO_BLOCK_SIZE") or 8 * 1024 * 1024)
"""Bytes of CSV parsed per block (env VELO_BLOCK_SIZE); a worker holds 3-4 blocks in memory. A row must fit in one."""

_TEST_SLOW_BLOCKS = float(os.environ.get("VELO_TEST_SLOW_ROWS") or 0)
"""Test knob: seconds to sleep after each block, so fault tests can catch a worker mid-file."""

MAX_HEADER = 16 * 1024 * 1024
"""Longest header line accepted."""

_NULL_TOKENS = ["", "NA", "N/A", "NaN", "nan", "null", "NULL", "None"]
_PLAIN = pacsv.WriteOptions(include_header=False, quoting_style="none")
_QUOTED = pacsv.WriteOptions(include_header=False, quoting_style="needed")


class FeatureSpec:
    """Which input columns feed the model, decided once per file from its header."""

    def __init__(self, model: Any, header: Sequence[str], name: str) -> None:
        names = getattr(model, "feature_names_in_", None)
        if names is not None:
            self.columns = [str(n) for n in names]
            missing = [n for n in self.columns if n not in header]
            if missing:
                raise InputError(f"{name}: missing feature columns: {', '.join(missing)}")
            self.named = True
        else:
            expected = getattr(model, "n_features_in_", None)
            if expected is not None and len(header) != expected:
                raise InputError(
                    f"{name}: has {len(header)} columns but the model expects {expected} "
                    "(it was fitted without column names, so every column is a feature)"
                )
            self.columns = list(header)
            self.named = False


def _read_header(src: IO[bytes], name: str) -> tuple[list[str], bytes]:
    """The header's column names, and the bytes read so far (to replay them to the parser)."""
    head = b""
    while b"\n" not in head:
        chunk = src.read(1 << 16)
        if not chunk:
            break
        head += chunk
        if len(head) > MAX_HEADER:
            raise InputError(f"{name}: no line end in the first {MAX_HEADER >> 20} MiB; not a CSV file")
    if not head.strip():
        raise InputError(f"{name}: empty file (no header line)")
    line = head.split(b"\n", 1)[0]
    try:
        text = line.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise InputError(f"{name}: header is not UTF-8 text; not a CSV file") from e
    if "\x00" in text:
        raise InputError(f"{name}: header holds NUL bytes; not a CSV file")
    header = next(csv.reader([text.rstrip("\r")]))
    duplicates = sorted({c for c in header if header.count(c) > 1})
    if duplicates:
        raise InputError(f"{name}: duplicate column names: {', '.join(duplicates)}")
    return header, head


class _Replay(io.RawIOBase):
    """``head`` followed by the rest of ``src``: lets the parser see bytes already read."""

    def __init__(self, head: bytes, src: IO[bytes]) -> None:
        self._head = memoryview(head)
        self._src = src

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if self._head:
            n = min(len(buffer), len(self._head))
            buffer[:n] = self._head[:n]
            self._head = self._head[n:]
            return n
        data = self._src.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)


def _to_numbers(column: pa.ChunkedArray | pa.Array, col: str, name: str) -> np.ndarray:
    """One feature column as float64; empty and NA-like cells become NaN."""
    try:
        return pc.cast(column, pa.float64()).to_numpy(zero_copy_only=False)
    except pa.ArrowInvalid:
        pass
    nulled = pc.if_else(pc.is_in(column, pa.array(_NULL_TOKENS)), pa.scalar(None, pa.string()), column)
    try:
        return pc.cast(nulled, pa.float64()).to_numpy(zero_copy_only=False)
    except pa.ArrowInvalid:
        for value in nulled.to_pylist():
            try:
                float(value if value is not None else "nan")
            except ValueError:
                raise InputError(f"{name}: column {col!r} holds non-numeric value {value[:40]!r}") from None
        raise


def _header_line(columns: list[str]) -> bytes:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerow(columns)
    return buf.getvalue().encode()


def _write(table: pa.Table, dst: IO[bytes]) -> None:
    try:
        pacsv.write_csv(table, dst, _PLAIN)
    except pa.ArrowInvalid:  # a value holds a comma, quote or line break: quote the strings
        pacsv.write_csv(table, dst, _QUOTED)


_CORRUPT = (gzip.BadGzipFile, EOFError, zlib.error)
"""Errors of a compressed input that is not what its name says (or is cut short)."""


def score_stream(
    src: IO[bytes],
    dst: IO[bytes],
    model: Any,
    *,
    name: str,
    keep: Sequence[str] | None = None,
    proba: bool = False,
    block_size: int = BLOCK_SIZE,
) -> int:
    """Score the CSV in ``src`` into ``dst``; returns the number of rows.

    Output columns: ``keep`` (default: all input columns) in input order, ``prediction``,
    then with ``proba`` one ``proba_<class>`` column per class.

    Raises:
        InputError: the file is not a CSV the model can score; the message names ``name``.
    """
    try:
        return _score(src, dst, model, name, keep, proba, block_size)
    except _CORRUPT as e:
        raise InputError(f"{name}: cannot decompress ({_one_line(e)})") from e


def _score(
    src: IO[bytes], dst: IO[bytes], model: Any, name: str, keep: Sequence[str] | None, proba: bool, block_size: int
) -> int:
    header, head = _read_header(src, name)
    features = FeatureSpec(model, header, name)
    if keep is None:
        kept = list(header)
    else:
        unknown = [c for c in keep if c not in header]
        if unknown:
            raise InputError(f"{name}: --keep names columns not in the file: {', '.join(unknown)}")
        kept = [c for c in header if c in keep]
    classes: list[Any] = []
    if proba:
        if not hasattr(model, "predict_proba"):
            raise InputError(f"{name}: --proba asked but the model has no predict_proba")
        classes = list(model.classes_)
    dst.write(_header_line([*kept, "prediction", *(f"proba_{c}" for c in classes)]))

    try:
        reader = pacsv.open_csv(
            _Replay(head, src),
            read_options=pacsv.ReadOptions(block_size=block_size),
            convert_options=pacsv.ConvertOptions(
                column_types={c: pa.string() for c in header},
                strings_can_be_null=False,
                quoted_strings_can_be_null=False,
            ),
        )
    except (pa.ArrowInvalid, UnicodeDecodeError) as e:
        raise InputError(f"{name}: {_one_line(e)}") from e
    rows = 0
    while True:
        try:
            batch = reader.read_next_batch()
        except StopIteration:
            break
        except pa.ArrowInvalid as e:
            raise InputError(f"{name}: after row {rows}: {_one_line(e)}") from e
        if batch.num_rows == 0:
            continue
        cols = {c: _to_numbers(batch.column(c), c, name) for c in features.columns}
        x: Any = pd.DataFrame(cols, copy=False) if features.named else np.column_stack(list(cols.values()))
        try:
            prediction = model.predict(x)
            probabilities = model.predict_proba(x) if proba else None
        except Exception as e:
            raise InputError(f"{name}: model rejected rows {rows + 1}-{rows + batch.num_rows}: {_one_line(e)}") from e
        arrays = [batch.column(c) for c in kept] + [pa.array(np.asarray(prediction))]
        if probabilities is not None:
            arrays += [pa.array(probabilities[:, i]) for i in range(len(classes))]
        names = [*kept, "prediction", *(f"proba_{c}" for c in classes)]
        _write(pa.Table.from_arrays(arrays, names=names), dst)
        rows += batch.num_rows
        if _TEST_SLOW_BLOCKS:
            time.sleep(_TEST_SLOW_BLOCKS)
    return rows


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split())
    return (text[:300] + "...") if len(text) > 300 else text
