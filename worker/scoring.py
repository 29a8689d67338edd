"""Stream one file through a model: read a block, predict, write, repeat; memory stays flat.

CSV columns are read as text and copied to the output as they were written, so kept columns
come out unchanged; only the model's features are converted to numbers. Parquet columns keep
their types. Reading and writing use pyarrow, several times faster than pandas.
"""

from __future__ import annotations

import csv
import gzip
import io
import os
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from velosiped import settings, storage
from velosiped.errors import InputError, TransientError, one_line
from velosiped.frames import FeatureSpec, classes_of, kept_columns, predict_block
from velosiped.sketch import Stats
from velosiped.storage import MAX_HEADER

if TYPE_CHECKING:
    from worker.shadow import Challenger

__all__ = [
    "BLOCK_SIZE",
    "Dialect",
    "FeatureSpec",
    "QuotedLineBreaks",
    "is_parquet",
    "read_csv_table",
    "score_stream",
    "write_csv_table",
]

BLOCK_SIZE = settings.BLOCK_SIZE.default
"""The default bytes of CSV parsed per block (``settings.BLOCK_SIZE``, env VELO_BLOCK_SIZE)."""

PARQUET_BATCH_ROWS = 65_536
"""Rows read from a Parquet file at a time."""

_CORRUPT = (gzip.BadGzipFile, EOFError, zlib.error)
"""Errors of a compressed input that is not what its name says (or is cut short)."""


@dataclass(frozen=True)
class Dialect:
    """How a CSV is written: its delimiter (kept for the output) and its text encoding (output is UTF-8)."""

    sep: str = ","
    encoding: str = "utf-8"
    newlines_in_values: bool = False
    """Quoted fields may hold line breaks: pyarrow then finds block ends by tracking quotes, which
    is slower, so it is chosen only for a file found to need it (see :class:`QuotedLineBreaks`)."""


class QuotedLineBreaks(InputError):
    """The file holds quoted fields with line breaks across a parser block: read it again with
    ``Dialect.newlines_in_values`` (a whole file can; a shard cannot)."""


def is_parquet(uri: str) -> bool:
    return uri.endswith(".parquet")


def _read_header(src: IO[bytes], name: str, dialect: Dialect) -> tuple[list[str], bytes]:
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
    encoding = "utf-8-sig" if dialect.encoding.lower().replace("_", "-") in {"utf-8", "utf8"} else dialect.encoding
    try:
        text = line.decode(encoding)
    except UnicodeDecodeError as e:
        raise InputError(f"{name}: header is not {dialect.encoding} text; not a CSV file (see --encoding)") from e
    if "\x00" in text:
        raise InputError(f"{name}: header holds NUL bytes; not a CSV file")
    header = next(csv.reader([text.rstrip("\r")], delimiter=dialect.sep))
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


class _CsvOut:
    """Writes CSV blocks: unquoted when nothing needs quotes (the common case), else quoting strings."""

    def __init__(self, dst: IO[bytes], columns: list[str], sep: str, header: bool = True) -> None:
        if header:  # a shard's part after the first is appended to the first: header once
            buf = io.StringIO()
            csv.writer(buf, delimiter=sep, lineterminator="\n").writerow(columns)
            dst.write(buf.getvalue().encode())
        self.dst = dst
        self.plain = pacsv.WriteOptions(include_header=False, quoting_style="none", delimiter=sep)
        self.quoted = pacsv.WriteOptions(include_header=False, quoting_style="needed", delimiter=sep)

    def write(self, table: pa.Table) -> None:
        try:
            pacsv.write_csv(table, self.dst, self.plain)
        except pa.ArrowInvalid:  # a value holds the delimiter, a quote or a line break
            pacsv.write_csv(table, self.dst, self.quoted)

    def close(self) -> None:
        pass


class _ParquetOut:
    """Writes Parquet row groups; the schema comes from the first block (or the model, for none)."""

    def __init__(self, dst: IO[bytes]) -> None:
        self.dst = dst
        self.writer: pq.ParquetWriter | None = None

    def write(self, table: pa.Table) -> None:
        if self.writer is None:
            self.writer = pq.ParquetWriter(self.dst, table.schema)
        self.writer.write_table(table.cast(self.writer.schema))

    def close(self, empty: pa.Table | None = None) -> None:
        if self.writer is None and empty is not None:
            self.writer = pq.ParquetWriter(self.dst, empty.schema)
        if self.writer is not None:
            self.writer.close()


Blocks = tuple[list[str], Iterator[pa.RecordBatch], pa.Schema | None]
"""A file's header, its blocks, and (for Parquet) its schema."""


def _native(src: IO[bytes]) -> pa.NativeFile | None:
    """The same plain local file opened by pyarrow itself, or None: its reader threads then read
    without taking the GIL from the thread that predicts (measured: ~5% more rows/s)."""
    raw = getattr(src, "raw", None)  # a .gz file is a reader over a GzipFile, not over the file itself
    if type(src) is not io.BufferedReader or type(raw) is not io.FileIO or not isinstance(raw.name, str):
        return None
    if not os.path.isfile(raw.name) or raw.name.endswith((".gz", ".bz2", ".zst", ".xz")):
        return None
    return pa.OSFile(raw.name)


def _csv_blocks(src: IO[bytes], name: str, dialect: Dialect, block_size: int) -> Blocks:
    header, head = _read_header(src, name, dialect)
    try:
        reader = pacsv.open_csv(
            _native(src) or _Replay(head, src),
            read_options=pacsv.ReadOptions(block_size=block_size, encoding=dialect.encoding),
            parse_options=pacsv.ParseOptions(delimiter=dialect.sep, newlines_in_values=dialect.newlines_in_values),
            convert_options=pacsv.ConvertOptions(
                column_types={c: pa.string() for c in header},
                strings_can_be_null=False,
                quoted_strings_can_be_null=False,
            ),
        )
    except (pa.ArrowInvalid, UnicodeDecodeError) as e:
        raise _csv_error(f"{name}: {one_line(e)}", e) from e
    return header, _arrow_blocks(reader, name), None


def _csv_error(message: str, error: BaseException) -> InputError:
    """pyarrow's parse error as Velosiped's; the one quoted line breaks cause is told apart."""
    if "out of sync with chunker" in str(error):
        return QuotedLineBreaks(message)
    return InputError(message)


def _arrow_blocks(reader: Any, name: str) -> Iterator[pa.RecordBatch]:
    rows = 0
    while True:
        try:
            batch = reader.read_next_batch()
        except StopIteration:
            return
        except pa.ArrowInvalid as e:
            raise _csv_error(f"{name}: after row {rows}: {one_line(e)}", e) from e
        rows += batch.num_rows
        yield batch


def _parquet_blocks(src: IO[bytes], name: str) -> Blocks:
    try:
        pf = pq.ParquetFile(src)
    except (pa.ArrowInvalid, OSError) as e:
        if isinstance(storage.translate(name, e), TransientError):
            raise  # the stream failed, not the file: the worker tries it again
        raise InputError(f"{name}: not a Parquet file ({one_line(e)})") from e
    schema = pf.schema_arrow
    return list(schema.names), pf.iter_batches(batch_size=PARQUET_BATCH_ROWS), schema


def read_csv_table(data: bytes, name: str, dialect: Dialect = Dialect()) -> pa.Table:
    """A whole CSV held in memory (an online request's body), read as a file's blocks are: every
    column as text, exactly as written."""
    src = io.BytesIO(data)
    header, blocks, _ = _csv_blocks(src, name, dialect, max(len(data), 1 << 16))
    tables = list(blocks)
    if not tables:
        return pa.table({c: pa.array([], pa.string()) for c in header})
    return pa.Table.from_batches(tables)


def write_csv_table(table: pa.Table, dst: IO[bytes], sep: str = ",") -> None:
    """An output table as CSV, header first, written as a file's output is."""
    _CsvOut(dst, table.column_names, sep).write(table)


def score_stream(
    src: IO[bytes],
    dst: IO[bytes],
    model: Any,
    *,
    name: str,
    keep: Sequence[str] | None = None,
    proba: bool = False,
    features: Sequence[str] | None = None,
    dialect: Dialect = Dialect(),
    parquet: bool = False,
    block_size: int | None = None,
    write_header: bool = True,
    stats: Stats | None = None,
    challenger: Challenger | None = None,
) -> int:
    """Score the CSV (or Parquet) file in ``src`` into ``dst``; returns the number of rows.

    Output columns: ``keep`` (default: all input columns) in input order, ``prediction``,
    then with ``proba`` one ``proba_<class>`` column per class.

    Raises:
        InputError: the file is not one the model can score; the message names ``name``.

    With ``stats`` (an empty :class:`velosiped.sketch.Stats`), the file's features and
    predictions are gathered into it as its blocks are scored. With ``challenger`` (``--shadow``,
    see :mod:`worker.shadow`), each block parsed is scored by it too, into its own output.
    """
    try:
        header, blocks, schema = (
            _parquet_blocks(src, name)
            if parquet
            else _csv_blocks(src, name, dialect, block_size or settings.BLOCK_SIZE.get())
        )
        spec = FeatureSpec(model, header, name, features)
        kept = kept_columns(header, keep, name)
        classes = classes_of(model, proba, name)
        names = [*kept, "prediction", *(f"proba_{c}" for c in classes)]
        out: _CsvOut | _ParquetOut = _ParquetOut(dst) if parquet else _CsvOut(dst, names, dialect.sep, write_header)
        if stats is not None:
            stats.start(spec.columns, labels=hasattr(model, "classes_"))
        also = None
        if challenger is not None:
            challenger.start(
                header, spec, keep, proba, name, lambda d, n: _writer(d, n, dialect, parquet, write_header)
            )
            also = challenger.score
        rows = 0
        for batch in blocks:
            if batch.num_rows == 0:
                continue
            out.write(predict_block(batch, spec, model, kept, classes, names, rows, name, stats, also))
            rows += batch.num_rows
        if isinstance(out, _ParquetOut):
            out.close(_empty(model, kept, classes, names, schema))
        if challenger is not None:
            challenger.finish(lambda w, m, k, c, n: w.close(_empty(m, k, c, n, schema)) if parquet else w.close())
        return rows
    except _CORRUPT as e:
        raise InputError(f"{name}: cannot decompress ({one_line(e)})") from e


def _writer(dst: IO[bytes], names: list[str], dialect: Dialect, parquet: bool, header: bool) -> _CsvOut | _ParquetOut:
    return _ParquetOut(dst) if parquet else _CsvOut(dst, names, dialect.sep, header)


def _empty(model: Any, kept: list[str], classes: list[Any], names: list[str], schema: pa.Schema | None) -> pa.Table:
    """A zero-row table with the output's columns, for an input without rows."""
    classes_ = getattr(model, "classes_", None)
    dtype = np.asarray(classes_).dtype if classes_ is not None else np.dtype("float64")
    prediction_type = pa.string() if dtype.kind in "OUS" else pa.from_numpy_dtype(dtype)
    kept_fields = [schema.field(c) for c in kept] if schema is not None else [pa.field(c, pa.string()) for c in kept]
    fields = [*kept_fields, pa.field("prediction", prediction_type)]
    fields += [pa.field(n, pa.float64()) for n in names[len(kept) + 1 :]]
    return pa.schema(fields).empty_table()
