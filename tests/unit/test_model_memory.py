"""A model load hands the heap pages it freed back to the OS (worker/models.py)."""

from __future__ import annotations

import psutil
import pytest

from tests.helpers import dump_model, fit_model
from velosiped.models import version_of
from worker import models


def test_each_model_load_releases_what_unpickling_freed(tmp_path, monkeypatch):
    calls: list[int] = []
    monkeypatch.setattr(models, "_malloc_trim", lambda: calls.append)
    first = str(dump_model(fit_model(), tmp_path / "a.joblib"))
    second = str(dump_model(fit_model(), tmp_path / "b.joblib"))
    models.load(first, version_of(first))
    models.load(first, version_of(first))  # from the cache: nothing was freed
    assert calls == [0]
    models.load(second, version_of(second))
    assert calls == [0, 0]


@pytest.mark.skipif(models._malloc_trim() is None, reason="needs glibc's malloc_trim")
def test_freed_heap_pages_go_back_to_the_os():
    proc = psutil.Process()
    chunks = [bytes(64 << 10) for _ in range(3000)]  # ~200 MB of heap, each below malloc's mmap threshold
    pin = bytes(64 << 10)  # a live chunk above them: free() alone cannot shrink the heap
    del chunks
    kept = proc.memory_info().rss
    models.release_freed_memory()
    assert proc.memory_info().rss < kept - (100 << 20)
    del pin
