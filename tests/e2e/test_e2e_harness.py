"""The e2e harness checks itself: private Redis, moto S3 over HTTP, deterministic data and models."""

from __future__ import annotations

import gzip
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlparse

import pytest
import redis
from helpers import (
    assert_output_matches,
    csv_bytes,
    expected_output,
    fit_model,
    gz_bytes,
    make_frame,
    output_key,
    read_output,
)

pytestmark = pytest.mark.e2e

SHARED_REDIS_PORT = 6379


def test_redis_fixture_is_private_and_clean(clean_redis):
    # Given the private Redis
    url = urlparse(clean_redis)
    # Then it is on loopback, not on the shared port, and starts empty
    assert url.hostname == "127.0.0.1"
    assert url.port != SHARED_REDIS_PORT
    client = redis.Redis.from_url(clean_redis)
    assert client.ping()
    assert client.dbsize() == 0
    client.set("leftover", "1")  # clean_redis must flush this for the next test
    client.close()


def test_redis_fixture_flushed_between_tests(clean_redis):
    client = redis.Redis.from_url(clean_redis)
    assert client.dbsize() == 0
    client.close()


def test_s3_fixture_put_get_head_and_pages_past_1000(s3):
    # Given the fresh test bucket
    assert s3.keys() == []
    s3.put("a/one.csv", b"x,y\n1,2\n")
    assert s3.get("a/one.csv") == b"x,y\n1,2\n"
    assert s3.head("a/one.csv")["ContentLength"] == 8
    assert s3.exists("a/one.csv") and not s3.exists("a/none.csv")

    # When 1,005 more objects are put
    keys = [f"many/{i:04d}.csv" for i in range(1005)]
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda k: s3.put(k, b"id\n1\n"), keys))

    # Then listing pages through all of them
    assert s3.keys("many/") == keys
    assert len(s3.keys()) == 1006


def test_s3_fixture_reset_between_tests(s3):
    assert s3.keys() == []


def test_helpers_are_deterministic_and_expected_output_is_shaped_by_spec():
    frame = make_frame(7, seed=3)
    assert list(frame.columns) == ["id", "f0", "f1", "f2", "f3"]
    assert frame.equals(make_frame(7, seed=3))
    assert not frame.equals(make_frame(7, seed=4))
    assert gzip.decompress(gz_bytes(frame)) == csv_bytes(frame)
    assert gz_bytes(frame) == gz_bytes(frame)

    model = fit_model()
    out = expected_output(frame, model)
    assert list(out.columns) == ["id", "f0", "f1", "f2", "f3", "prediction"]
    assert set(out["prediction"]) <= {0, 1}
    assert_output_matches(read_output(csv_bytes(out)), out)
    assert_output_matches(read_output(gzip.compress(csv_bytes(out))), out)

    multi = fit_model("multiclass")
    assert list(multi.classes_) == ["a", "b", "c"]
    out = expected_output(make_frame(60, seed=1), multi, keep=["id"], proba=True)
    assert list(out.columns) == ["id", "prediction", "proba_a", "proba_b", "proba_c"]
    assert set(out["prediction"]) == {"a", "b", "c"}

    nameless = fit_model(with_names=False)
    assert not hasattr(nameless, "feature_names_in_")
    out = expected_output(make_frame(5).drop(columns="id"), nameless)
    assert list(out.columns) == ["f0", "f1", "f2", "f3", "prediction"]

    empty = expected_output(make_frame(0), model, proba=True)
    assert list(empty.columns) == ["id", "f0", "f1", "f2", "f3", "prediction", "proba_0", "proba_1"]
    assert len(empty) == 0

    assert output_key("a/1.csv") == "a/1.out.csv"
    assert output_key("a/1.csv.gz") == "a/1.out.csv.gz"


def test_assert_output_matches_catches_differences():
    model = fit_model()
    out = expected_output(make_frame(5), model)
    with pytest.raises(AssertionError):
        assert_output_matches(out[["f0", "id", "f1", "f2", "f3", "prediction"]], out)
    with pytest.raises(AssertionError):
        assert_output_matches(out.iloc[:4], out)
    changed = out.copy()
    changed.loc[2, "f1"] += 1e-6
    with pytest.raises(AssertionError):
        assert_output_matches(changed, out)
    reordered = out.iloc[::-1].reset_index(drop=True)
    with pytest.raises(AssertionError):
        assert_output_matches(reordered, out)
