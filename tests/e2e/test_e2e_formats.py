"""Formats users have, through the real CLI: Parquet in and out, another delimiter and encoding."""

from __future__ import annotations

import io

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers import (
    assert_output_matches,
    csv_bytes,
    dump_model,
    expected_output,
    fit_model,
    make_frame,
    parse_dispatch,
    read_output,
)

pytestmark = pytest.mark.e2e


def test_parquet_on_s3_comes_back_as_parquet(s3, clean_redis, velo, tmp_path):
    # Given two Parquet files and a model
    model = fit_model()
    model_path = dump_model(model, tmp_path / "m.joblib")
    frames = {"in/p1.parquet": make_frame(40, seed=1), "in/p2.parquet": make_frame(7, seed=2)}
    for key, frame in frames.items():
        buf = io.BytesIO()
        pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), buf)
        s3.put(key, buf.getvalue())
    # When they are dispatched and worked
    out = velo("dispatch", s3.uri("in/"), "--model", str(model_path), "--pattern", "*.parquet", "--redis", clean_redis)
    assert parse_dispatch(out.stdout)[1:] == (2, 0)
    velo("worker", "--burst", "--redis", clean_redis, check=0)
    # Then each has a Parquet output with the input's types and the predictions
    for key, frame in frames.items():
        got = pq.read_table(io.BytesIO(s3.get(key.replace(".parquet", ".out.parquet")))).to_pandas()
        assert got["id"].dtype == frame["id"].dtype
        assert_output_matches(got, expected_output(frame, model))


def test_semicolon_latin1_csv_keeps_its_delimiter(clean_redis, velo, tmp_path):
    model = fit_model()
    model_path = dump_model(model, tmp_path / "m.joblib")
    frame = make_frame(25, seed=3)
    frame["city"] = "Orléans"
    data = tmp_path / "data"
    data.mkdir()
    (data / "1.csv").write_bytes(frame.to_csv(index=False, sep=";").encode("latin-1"))
    result = velo(
        "run",
        str(data),
        "--model",
        str(model_path),
        "--workers",
        "1",
        "--sep",
        ";",
        "--encoding",
        "latin-1",
        "--redis",
        clean_redis,
        check=0,
    )
    text = (data / "1.out.csv").read_text(encoding="utf-8")
    assert text.splitlines()[0] == "id;f0;f1;f2;f3;city;prediction"
    assert_output_matches(pd.read_csv(io.StringIO(text), sep=";"), expected_output(frame, model))
    assert "1 enqueued" in result.stdout


def test_outputs_and_error_files_on_s3_carry_their_content_type(s3, clean_redis, velo, tmp_path):
    import gzip

    from helpers import csv_bytes

    # Given a CSV, a gzipped CSV, a Parquet file and a CSV the model cannot score
    model_path = dump_model(fit_model(), tmp_path / "m.joblib")
    s3.put("in/a.csv", csv_bytes(make_frame(5, seed=11)))
    s3.put("in/g.csv.gz", gzip.compress(csv_bytes(make_frame(5, seed=12))))
    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pandas(make_frame(5, seed=13), preserve_index=False), buf)
    s3.put("in/p.parquet", buf.getvalue())
    s3.put("in/bad.csv", csv_bytes(make_frame(5, seed=14).drop(columns="f1")))
    # When they are dispatched and worked
    patterns = ("--pattern", "*.csv", "--pattern", "*.csv.gz", "--pattern", "*.parquet")
    out = velo("dispatch", s3.uri("in/"), "--model", str(model_path), *patterns, "--redis", clean_redis)
    assert parse_dispatch(out.stdout)[1:] == (4, 0)
    velo("worker", "--burst", "--redis", clean_redis, check=0)
    # Then each object says what it is; a .csv.gz is a gzip file, not a CSV to decompress on the way
    types = {
        key: (s3.head(key)["ContentType"], s3.head(key).get("ContentEncoding"))
        for key in ("in/a.out.csv", "in/g.out.csv.gz", "in/p.out.parquet", "in/bad.out.csv.error.json")
    }
    assert types == {
        "in/a.out.csv": ("text/csv", None),
        "in/g.out.csv.gz": ("application/gzip", None),
        "in/p.out.parquet": ("application/vnd.apache.parquet", None),
        "in/bad.out.csv.error.json": ("application/json", None),
    }


def test_quoted_line_breaks_in_a_whole_file_of_any_size_are_scored(s3, clean_redis, velo, tmp_path):
    # Given CSVs whose quoted fields hold line breaks, far bigger than one parser block, local and on S3
    model = fit_model()
    model_path = dump_model(model, tmp_path / "m.joblib")
    frame = make_frame(3000, seed=4)
    frame["note"] = [f"line one\nline two, row {i}" for i in range(len(frame))]
    data = tmp_path / "data"
    data.mkdir()
    (data / "1.csv").write_bytes(csv_bytes(frame))
    s3.put("quoted/1.csv", csv_bytes(frame))
    small_blocks = {"VELO_BLOCK_SIZE": "4096"}  # ~70 blocks: the chunker meets line breaks in quotes

    # When each is scored whole (--shard-size 0, the remedy the shard error names)
    local = velo("run", data, "--model", model_path, "--workers", "1", "--shard-size", "0", env=small_blocks)
    remote = velo(
        "run", s3.uri("quoted/"), "--model", model_path, "--workers", "1", "--shard-size", "0", env=small_blocks
    )

    # Then every row comes out, its line breaks kept, exactly as a clean read gives them
    for result, output in ((local, (data / "1.out.csv").read_bytes()), (remote, s3.get("quoted/1.out.csv"))):
        assert result.returncode == 0, velo.describe(result)
        assert_output_matches(read_output(output), expected_output(frame, model))
