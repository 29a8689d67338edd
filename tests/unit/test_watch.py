"""`velo watch` on moto's in-process S3 and fakeredis: new files once, listings that start after the cursor."""

from __future__ import annotations

import fakeredis

from dispatcher.plan import Options
from dispatcher.watch import watch
from velosiped import keys, storage


def listings(client) -> list[dict]:
    """Record the parameters of every ListObjectsV2 call."""
    calls: list[dict] = []
    client.meta.events.register(
        "provide-client-params.s3.ListObjectsV2", lambda params, **_: calls.append(dict(params))
    )
    return calls


def test_new_files_are_enqueued_once_and_ticks_list_after_the_cursor(mock_s3):
    redis = fakeredis.FakeStrictRedis()
    opts = Options(model="s3://bkt/m.joblib", model_version="etag:1")
    calls = listings(storage.client())
    lines: list[str] = []

    def tick(n: int = 1, full_every: int = 60) -> None:
        watch(redis, "velo", "s3://bkt/in/", opts, interval=0, full_every=full_every, echo=lines.append, ticks=n)

    # Given two files, a first (full) listing enqueues both
    for k in ("in/2026-01.csv", "in/2026-02.csv"):
        mock_s3.put_object(Bucket="bkt", Key=k, Body=b"a\n1\n")
    tick()
    assert redis.llen("rq:queue:velo") == 2
    assert redis.get(keys.watch_cursor("s3://bkt/in/", "velo")) == b"s3://bkt/in/2026-02.csv"
    # When a third file is dropped, the next (incremental) tick lists only after the cursor
    mock_s3.put_object(Bucket="bkt", Key="in/2026-03.csv", Body=b"a\n1\n")
    calls.clear()
    tick(2)  # a restart: the first tick of this run is full, the second incremental
    assert redis.llen("rq:queue:velo") == 3  # the two already queued were not queued again
    assert [c.get("StartAfter") for c in calls] == [None, "in/2026-03.csv"]
    assert lines[-1].endswith("1 enqueued (1 in all)")
