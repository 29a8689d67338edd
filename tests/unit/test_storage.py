"""Outputs appear whole or not at all, on S3 (moto) and on local disk."""

from __future__ import annotations

import pytest

from worker import storage
from worker.errors import ConfigError


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


def test_uri_errors():
    with pytest.raises(ConfigError, match="unsupported URI scheme"):
        storage.normalize("ftp://host/x")
    with pytest.raises(ConfigError, match="no bucket"):
        storage.normalize("s3:///x")
    assert storage.normalize("file:///tmp/a/") == "/tmp/a/"


def test_missing_bucket_is_a_config_error(mock_s3):
    with pytest.raises(ConfigError, match="bucket does not exist"):
        list(storage.list_files("s3://nope/in/", ("*.csv",)))
