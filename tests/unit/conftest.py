"""Fixtures for the fast unit tests: moto's in-process S3."""

from __future__ import annotations

import boto3
import fakeredis
import pytest
from moto import mock_aws

from velosiped import storage
from worker import models

FAKE_AWS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


@pytest.fixture
def mock_s3(monkeypatch):
    """A boto3 S3 client on moto's in-process mock, with the bucket `bkt` made."""
    for k, v in FAKE_AWS.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    with mock_aws():
        storage.client.cache_clear()
        client = boto3.client("s3")
        client.create_bucket(Bucket="bkt")
        yield client
    storage.client.cache_clear()


@pytest.fixture(autouse=True)
def no_cached_models():
    """Each test loads its models afresh: a model cached by an earlier test (same URI and
    version) would hide what this one checks (a download, a digest, a refusal)."""
    models._cache.clear()
    yield
    models._cache.clear()


@pytest.fixture
def redis():
    """A fresh in-process fake Redis (fakeredis) for a unit test."""
    conn = fakeredis.FakeStrictRedis()
    yield conn
    conn.flushall()
