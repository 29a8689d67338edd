"""The batch API: `velo dispatch`, `velo status` and `velo retry` over HTTP, on the same functions.

Sources and models of batches dispatched here obey the workers' allow-lists
(``VELO_ALLOWED_PREFIXES``, ``VELO_MODEL_PREFIXES``): an API caller cannot name what a worker
would refuse. Routes that change anything want ``Authorization: Bearer <VELO_API_TOKEN>`` when
a token is set.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import redis
from fastapi import APIRouter, Depends, HTTPException, Request
from pydantic import BaseModel, Field

from dispatcher import status as status_mod
from dispatcher.enqueue import dispatch_batch, retry_failed
from dispatcher.options import make_options
from velosiped import keys, settings, storage
from velosiped.access import check_path

__all__ = ["DispatchRequest", "router"]


class DispatchOptions(BaseModel):
    """The options `velo dispatch` takes, by their long names."""

    pattern: list[str] = Field(default_factory=list)
    output: str | None = None
    suffix: str = ".out"
    keep: str | None = None
    proba: bool = False
    force: bool = False
    model_sha256: str | None = None
    features: str | None = None
    sep: str = ","
    encoding: str = "utf-8"
    shard_size: str = "0"
    stats: bool = True
    shadow: str | None = None
    shadow_output: str | None = None
    shadow_sha256: str | None = None
    engine: Literal["sklearn", "treelite"] = "sklearn"
    group_size: int = Field(default=64, ge=1)
    group_bytes: str = "4MB"
    timeout: int = 6 * 3600


class DispatchRequest(BaseModel):
    source: str
    model: str
    options: DispatchOptions = Field(default_factory=DispatchOptions)


def router(conn: Callable[[], redis.Redis], queue: str, authorize: Callable[[Request], None]) -> APIRouter:
    """The `/v1/batches` routes on the Redis ``conn()`` gives (it raises 503 when there is none)."""
    api = APIRouter(prefix="/v1/batches", tags=["batches"])
    guard = [Depends(authorize)]

    @api.post("", status_code=202, dependencies=guard)
    def dispatch(body: DispatchRequest) -> dict[str, Any]:
        """Plan and enqueue, as `velo dispatch`: the batch id and how many files were enqueued or skipped."""
        source, model = storage.normalize(body.source), storage.normalize(body.model)
        check_path(source)
        check_path(model, settings.MODEL_PREFIXES)
        o = body.options
        opts = make_options(
            source,
            model,
            tuple(o.pattern),
            o.output,
            o.suffix,
            o.keep,
            o.proba,
            o.force,
            o.model_sha256,
            o.features,
            o.sep,
            o.encoding,
            o.shard_size,
            o.stats,
            o.shadow,
            o.shadow_output,
            o.shadow_sha256,
            o.engine,
            o.group_size,
            o.group_bytes,
        )
        if opts.output:
            check_path(opts.output)
        if opts.shadow and opts.shadow_output:  # a challenger is a model, and its outputs are written
            check_path(opts.shadow, settings.MODEL_PREFIXES)
            check_path(opts.shadow_output)
        batch = dispatch_batch(conn(), queue, source, opts, o.timeout)
        return {"id": batch.id, "enqueued": batch.enqueued, "skipped": batch.skipped}

    @api.get("")
    def batches(limit: int = 20) -> dict[str, Any]:
        """The newest batches first, as `velo status --json` prints them."""
        r = conn()
        found = [b for b in (status_mod.describe(r, i) for i in status_mod.batch_ids(r, limit)) if b]
        for b in found:  # its drift report's page, when it has statistics (dispatcher.serve.drift)
            has_stats = b["done"] and r.exists(keys.batch_stats(b["id"]))
            b["report"] = f"/v1/batches/{b['id']}/report.html" if has_stats else None
        return {"batches": found, "workers": status_mod.workers(r, queue)}

    @api.get("/{batch_id}")
    def batch(batch_id: str) -> dict[str, Any]:
        """One batch, as `velo status BATCH --json` prints it."""
        found = status_mod.describe(conn(), batch_id)
        if found is None:
            raise HTTPException(404, f"no batch {batch_id!r} in Redis")
        return found

    @api.get("/{batch_id}/failures")
    def failures(batch_id: str) -> dict[str, Any]:
        """The batch's failed files, each with its one-line reason."""
        return {"id": batch_id, "failures": batch(batch_id)["failures"]}

    @api.post("/{batch_id}/retry", dependencies=guard)
    def retry(batch_id: str) -> dict[str, Any]:
        """Enqueue the batch's failed (and lost) files again, as `velo retry`."""
        r = conn()
        if status_mod.describe(r, batch_id, with_failures=False, lost=0) is None:
            raise HTTPException(404, f"no batch {batch_id!r} in Redis")
        count, gone = retry_failed(r, batch_id)
        return {"id": batch_id, "enqueued": count, "gone": gone}

    return api
