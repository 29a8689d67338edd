"""Streaming scoring: columns, order, features, and one-line errors naming the file."""

from __future__ import annotations

import csv
import io

import numpy as np
import pandas as pd
import pytest

from tests.helpers import assert_output_matches, csv_bytes, expected_output, fit_model, gz_bytes, make_frame
from velosiped.errors import InputError
from worker.scoring import score_stream


def score(data: bytes, model, **kw) -> tuple[int, bytes]:
    out = io.BytesIO()
    rows = score_stream(io.BytesIO(data), out, model, name="s3://b/a/1.csv", **kw)
    return rows, out.getvalue()


def test_output_is_input_columns_then_prediction_in_order_across_blocks():
    # Given a file spanning many parser blocks
    df = make_frame(5_000)
    model = fit_model()
    # When it is scored with a tiny block size
    rows, out = score(csv_bytes(df), model, block_size=4096)
    # Then every row comes out once, in order, equal to the pandas reference
    assert rows == 5_000
    assert_output_matches(pd.read_csv(io.BytesIO(out)), expected_output(df, model))


def test_kept_columns_are_copied_as_written():
    # Given text a float parser would rewrite (leading zeros, trailing zeros, exponents, a quoted comma)
    data = b'id,f0,f1,f2,f3,note\n007,1.50,2,3,4,"a, b"\n008,0.10,1e-3,.5,-4,x\n'
    rows, out = score(data, fit_model())
    # Then the kept values come out exactly as written, whatever quoting the writer chose
    assert rows == 2
    got = list(csv.reader(io.StringIO(out.decode())))
    assert got[0] == ["id", "f0", "f1", "f2", "f3", "note", "prediction"]
    assert [r[:6] for r in got[1:]] == [
        ["007", "1.50", "2", "3", "4", "a, b"],
        ["008", "0.10", "1e-3", ".5", "-4", "x"],
    ]


def test_plain_values_are_not_quoted():
    _, out = score(b"id,f0,f1,f2,f3\n007,1.50,2,3,4\n", fit_model())
    assert out.decode().splitlines()[1].startswith("007,1.50,2,3,4,")


def test_keep_and_proba_columns():
    df = make_frame(50)
    model = fit_model("multiclass")
    _, out = score(csv_bytes(df), model, keep=["id"], proba=True)
    got = pd.read_csv(io.BytesIO(out))
    assert list(got.columns) == ["id", "prediction", "proba_a", "proba_b", "proba_c"]
    assert_output_matches(got, expected_output(df, model, keep=["id"], proba=True))
    np.testing.assert_allclose(got[["proba_a", "proba_b", "proba_c"]].sum(axis=1), 1.0)


def test_header_only_input_gives_header_only_output():
    rows, out = score(b"id,f0,f1,f2,f3\n", fit_model(), proba=True)
    assert rows == 0
    assert out == b"id,f0,f1,f2,f3,prediction,proba_0,proba_1\n"


def test_model_without_names_takes_every_column_by_position():
    df = make_frame(20).drop(columns="id")
    model = fit_model(with_names=False)
    _, out = score(csv_bytes(df), model)
    assert_output_matches(pd.read_csv(io.BytesIO(out)), expected_output(df, model))
    with pytest.raises(InputError, match=r"s3://b/a/1.csv: has 5 columns but the model expects 4"):
        score(csv_bytes(make_frame(5)), model)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "empty file"),
        (b"id,f0,f1,f3\n1,2,3,4\n", "missing feature columns: f2"),
        (b"id,f0,f1,f2,f3\n1,2,3,4\n", "CSV parse error: Expected 5 columns, got 4"),
        (b"id,f0,f1,f2,f3\n1,2,3,4,5\n1,2,abc,4,5\n", "row 2, column 'f1' holds non-numeric value 'abc'"),
        (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\xff\xfe", "header is not utf-8 text"),
        (b"a,a,f0\n1,2,3\n", "duplicate column names: a"),
    ],
)
def test_bad_input_fails_with_one_line_naming_the_file(data, message):
    with pytest.raises(InputError) as err:
        score(data, fit_model())
    text = str(err.value)
    assert text.startswith("s3://b/a/1.csv: ")
    assert message in text
    assert "\n" not in text


def test_gzip_name_without_gzip_content_fails_with_the_reason(tmp_path):
    from velosiped import storage

    path = tmp_path / "x.csv.gz"
    path.write_bytes(b"id,f0\n1,2\n")  # plain text under a .gz name
    with storage.open_read(str(path)) as src, pytest.raises(InputError, match=r"x.csv.gz: cannot decompress"):
        score_stream(src, io.BytesIO(), fit_model(), name=str(path))


def test_a_row_longer_than_a_block_fails_alone():
    data = b"id,f0,f1,f2,f3\n" + b"1," + b"9" * 200_000 + b",2,3,4\n"
    with pytest.raises(InputError, match=r"s3://b/a/1\.csv: .*straddl"):
        score(data, fit_model(), block_size=65_536)


def test_semicolon_latin1_input_keeps_its_delimiter_and_comes_out_utf8():
    from worker.scoring import Dialect

    data = "id;f0;f1;f2;f3;ville\n1;0,5;1;2;3;Orléans\n".replace("0,5", "0.5").encode("latin-1")
    rows, out = score(data, fit_model(), dialect=Dialect(";", "latin-1"))
    assert rows == 1
    lines = out.decode("utf-8").splitlines()
    assert lines[0] == "id;f0;f1;f2;f3;ville;prediction"
    assert lines[1].startswith("1;0.5;1;2;3;Orléans;")


def test_features_override_feeds_renamed_columns_to_a_named_model():
    df = make_frame(30).rename(columns={"f0": "a", "f1": "b", "f2": "c", "f3": "d"})
    model = fit_model()
    _, out = score(csv_bytes(df), model, features=["a", "b", "c", "d"])
    got = pd.read_csv(io.BytesIO(out))
    renamed = df.rename(columns={"a": "f0", "b": "f1", "c": "f2", "d": "f3"})
    np.testing.assert_array_equal(got["prediction"], model.predict(renamed[["f0", "f1", "f2", "f3"]]))
    with pytest.raises(InputError, match="missing --features columns: zz"):
        score(csv_bytes(df), model, features=["a", "b", "c", "zz"])


def test_parquet_in_parquet_out_keeps_types_and_rows():
    import pyarrow as pa
    import pyarrow.parquet as pq

    df = make_frame(100_000)
    src = io.BytesIO()
    pq.write_table(pa.Table.from_pandas(df, preserve_index=False), src, row_group_size=30_000)
    model = fit_model("multiclass")
    out = io.BytesIO()
    rows = score_stream(io.BytesIO(src.getvalue()), out, model, name="x.parquet", proba=True, parquet=True)
    got = pq.read_table(io.BytesIO(out.getvalue())).to_pandas()
    assert rows == 100_000
    assert got["id"].dtype == df["id"].dtype
    assert_output_matches(got, expected_output(df, model, proba=True))


def test_empty_parquet_gives_an_empty_parquet_with_the_output_columns():
    import pyarrow as pa
    import pyarrow.parquet as pq

    src = io.BytesIO()
    pq.write_table(pa.Table.from_pandas(make_frame(0), preserve_index=False), src)
    out = io.BytesIO()
    rows = score_stream(io.BytesIO(src.getvalue()), out, fit_model(), name="x.parquet", keep=["id"], parquet=True)
    table = pq.read_table(io.BytesIO(out.getvalue()))
    assert (rows, table.num_rows, table.column_names) == (0, 0, ["id", "prediction"])


def test_local_csv_and_csv_gz_score_alike_through_storage(tmp_path):
    """A plain local file is read by pyarrow directly; a .csv.gz must still be decompressed first."""
    from velosiped import storage

    df = make_frame(50)
    (tmp_path / "a.csv").write_bytes(csv_bytes(df))
    (tmp_path / "a.csv.gz").write_bytes(gz_bytes(df))
    model = fit_model()
    outputs = []
    for name in ("a.csv", "a.csv.gz"):
        dst = io.BytesIO()
        with storage.open_read(str(tmp_path / name)) as src:
            assert score_stream(src, dst, model, name=name) == 50
        outputs.append(dst.getvalue())
    assert outputs[0] == outputs[1]
    assert_output_matches(pd.read_csv(io.BytesIO(outputs[0])), expected_output(df, model))


def test_a_header_only_local_file_gives_a_header_only_output(tmp_path):
    """The plain local file path (pyarrow's own reader) keeps the spec's header-only promise."""
    from velosiped import storage

    (tmp_path / "h.csv").write_bytes(csv_bytes(make_frame(0)))
    dst = io.BytesIO()
    with storage.open_read(str(tmp_path / "h.csv")) as src:
        assert score_stream(src, dst, fit_model(), name="h.csv") == 0
    assert dst.getvalue() == b"id,f0,f1,f2,f3,prediction\n"
