"""Outputs appear whole or not at all, on S3 (moto) and on local disk."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import joblib
import pytest

from tests.helpers import fit_model
from velosiped import storage
from velosiped.errors import ConfigError, InputError
from velosiped.models import version_of
from worker import models


def test_s3_write_is_aborted_on_error_and_complete_with_metadata_on_success(mock_s3):
    with pytest.raises(RuntimeError), storage.write_atomic("s3://bkt/o/1.out.csv", {"velo-batch": "x"}) as out:
        out.write(b"a,prediction\n" * 1000)
        raise RuntimeError("scoring failed half way")
    assert "Contents" not in mock_s3.list_objects_v2(Bucket="bkt")
    assert mock_s3.list_multipart_uploads(Bucket="bkt").get("Uploads", []) == []

    with storage.write_atomic("s3://bkt/o/1.out.csv", {"velo-batch": "x"}) as out:
        out.write(b"a,prediction\n1,0\n")
    assert mock_s3.get_object(Bucket="bkt", Key="o/1.out.csv")["Body"].read() == b"a,prediction\n1,0\n"
    assert storage.read_lineage("s3://bkt/o/1.out.csv") == {"velo-batch": "x"}


def test_a_small_s3_write_is_one_put_with_its_metadata_and_nothing_on_error(mock_s3, monkeypatch):
    """A group's outputs are small: one PutObject each (not a multipart upload's three requests)."""
    calls: list[str] = []
    monkeypatch.setattr(storage.s3.client(), "_make_api_call", _counting(storage.s3.client()._make_api_call, calls))
    with (
        pytest.raises(RuntimeError),
        storage.write_atomic("s3://bkt/o/2.out.csv", {"velo-batch": "x"}, small=True) as out,
    ):
        out.write(b"a,prediction\n1,0\n")
        raise RuntimeError("scoring failed half way")
    assert calls == [] and "Contents" not in mock_s3.list_objects_v2(Bucket="bkt")

    with storage.write_atomic("s3://bkt/o/2.out.csv.gz", {"velo-batch": "x"}, small=True) as out:
        out.write(b"a,prediction\n1,0\n")
    assert calls == ["PutObject"]
    import gzip

    body = mock_s3.get_object(Bucket="bkt", Key="o/2.out.csv.gz")["Body"].read()
    assert gzip.decompress(body) == b"a,prediction\n1,0\n"
    assert storage.read_lineage("s3://bkt/o/2.out.csv.gz") == {"velo-batch": "x"}


def test_delete_many_removes_what_exists_in_one_s3_request_and_each_local_file(mock_s3, monkeypatch, tmp_path):
    for key in ("o/1.out.csv.error.json", "o/3.out.csv.error.json", "o/keep.csv"):
        mock_s3.put_object(Bucket="bkt", Key=key, Body=b"{}")
    calls: list[str] = []
    monkeypatch.setattr(storage.s3.client(), "_make_api_call", _counting(storage.s3.client()._make_api_call, calls))
    storage.delete_many([f"s3://bkt/o/{i}.out.csv.error.json" for i in range(1, 5)])  # 2 and 4 do not exist
    assert calls == ["DeleteObjects"]
    assert [o["Key"] for o in mock_s3.list_objects_v2(Bucket="bkt")["Contents"]] == ["o/keep.csv"]

    (tmp_path / "a.error.json").write_text("{}")
    storage.delete_many([str(tmp_path / "a.error.json"), str(tmp_path / "b.error.json")])
    assert list(tmp_path.iterdir()) == []


def _counting(call, calls):
    def counted(operation, params):
        calls.append(operation)
        return call(operation, params)

    return counted


def test_local_write_leaves_nothing_on_error(tmp_path):
    target = tmp_path / "x" / "1.out.csv.gz"
    with pytest.raises(RuntimeError), storage.write_atomic(str(target)) as out:
        out.write(b"partial")
        raise RuntimeError("boom")
    assert list((tmp_path / "x").iterdir()) == []
    with storage.write_atomic(str(target)) as out:
        out.write(b"a\n1\n")
    with storage.open_read(str(target)) as f:
        assert f.read() == b"a\n1\n"
    assert target.read_bytes()[:2] == b"\x1f\x8b"  # gzip, like its name says


def test_listing_skips_temporary_outputs_and_removes_those_of_dead_writers(tmp_path):
    # Given an input, and temporary outputs of a dead writer, a live one, and another host's
    (tmp_path / "1.csv").write_text("a\n1\n")
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    host = socket.gethostname()
    dead_tmp = tmp_path / f".1.out.csv.velo-{dead.stdout.strip()}@{host}.abc123.tmp"
    live_tmp = tmp_path / f".1.out.csv.velo-{os.getpid()}@{host}.def456.tmp"
    far_tmp = tmp_path / f".1.out.csv.velo-{dead.stdout.strip()}@elsewhere.example.ghi789.tmp"
    for t in (dead_tmp, live_tmp, far_tmp):
        t.write_text("prediction\n")

    # When the folder is listed
    listed = [Path(i.uri).name for i in storage.list_files(str(tmp_path), ("*",))]

    # Then only the input is listed; the dead writer's file is gone, the others are left alone
    assert listed == ["1.csv"]
    assert not dead_tmp.exists()
    assert live_tmp.exists() and far_tmp.exists()


def test_local_files_need_neither_smart_open_nor_boto3(tmp_path):
    """A local batch starts without S3's imports (boto3, smart_open): plain and .gz files use the standard library."""
    script = f"""
import gzip, sys
from velosiped import storage
for name in ("1.out.csv", "2.out.csv.gz"):
    uri = {str(tmp_path)!r} + "/" + name
    with storage.write_atomic(uri) as out:
        out.write(b"a\\n1\\n")
    with storage.open_read(uri) as f:
        assert f.read() == b"a\\n1\\n", name
header = open({str(tmp_path)!r} + "/2.out.csv.gz", "rb").read(64)
assert b"2.out.csv\\x00" in header, header  # the gzip header names the output, not its temporary file
loaded = [m for m in ("smart_open", "boto3") if m in sys.modules]
assert not loaded, loaded
"""
    subprocess.run([sys.executable, "-c", script], check=True, cwd=Path(__file__).parents[2])


def test_uri_errors():
    with pytest.raises(ConfigError, match="unsupported URI scheme"):
        storage.normalize("ftp://host/x")
    with pytest.raises(ConfigError, match="no bucket"):
        storage.normalize("s3:///x")
    assert storage.normalize("file:///tmp/a/") == "/tmp/a/"


def test_missing_bucket_is_a_config_error(mock_s3):
    with pytest.raises(ConfigError, match="bucket does not exist"):
        list(storage.list_files("s3://nope/in/", ("*.csv",)))


def test_an_s3_model_replaced_after_dispatch_is_refused(mock_s3, tmp_path, monkeypatch):
    monkeypatch.setenv("VELO_MODEL_CACHE", str(tmp_path))
    path = tmp_path / "m.joblib"
    joblib.dump(fit_model(), path)
    mock_s3.upload_file(str(path), "bkt", "models/m.joblib")
    version = version_of("s3://bkt/models/m.joblib")  # what the dispatcher saw
    joblib.dump(fit_model("multiclass"), path)
    mock_s3.upload_file(str(path), "bkt", "models/m.joblib")  # replaced before any worker loaded it
    with pytest.raises(InputError, match="model changed since dispatch"):
        models.load("s3://bkt/models/m.joblib", version)
    assert models.load("s3://bkt/models/m.joblib", version_of("s3://bkt/models/m.joblib")) is not None
