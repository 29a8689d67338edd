"""Drift where people look: `velo serve`'s report routes and the drift gauges of its `/metrics`.

A finished batch with statistics (gathered with `--stats`) is compared with its reference, chosen
by one rule, the same for the routes and the gauges:

1. the profile `velo serve --reference-profile URI` was started with, when given (training data:
   every batch is judged against what the model learned from, so a slow drift is seen too);
2. else the newest earlier finished batch with statistics on the same source and model (what
   changed since the last run);
3. else none: the report shows the batch alone, and it has no drift gauges.

Gauges, computed at scrape time for the ``RECENT`` newest finished batches with statistics (among
the ``LOOK_AT`` newest batches), each cached until the batch changes (a retry):

- ``velo_batch_drift_score{batch, feature, measure}``: ``measure`` is ``psi`` or ``ks``; the
  prediction is ``feature="prediction"`` (class labels: ``psi`` of their shares only);
- ``velo_batch_drift_flagged{batch, feature}``: 1 when that column drifts by `velo report`'s rule;
- ``velo_batch_drift_columns{batch}``: how many columns drift (alert on ``> 0``).

Label cardinality is bounded: at most ``RECENT`` batches, each with its ``MAX_FEATURES`` most
drifting features and the prediction.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from typing import Any

import redis
from fastapi import APIRouter, HTTPException
from fastapi.responses import HTMLResponse
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from dispatcher.profile import load_profile
from dispatcher.report import DEFAULT_THRESHOLD, compare, render_html
from velosiped import keys
from velosiped.connection import as_text
from velosiped.sketch import Stats, load_batch
from velosiped.state import counters

__all__ = ["LOOK_AT", "MAX_FEATURES", "RECENT", "Drift", "DriftCollector", "router"]

RECENT = 5
"""Finished batches with statistics that get drift gauges (the newest)."""

LOOK_AT = 50
"""Newest batches looked at, for gauges and for a batch's previous one."""

MAX_FEATURES = 50
"""Features of a batch that get gauges at most (the drifting first, then by PSI)."""

log = logging.getLogger(__name__)


class Drift:
    """Reports of batches against their reference (see the module's text), cached per batch state."""

    def __init__(self, conn: Callable[[], redis.Redis], profile: str | None, threshold: float = DEFAULT_THRESHOLD):
        self.conn = conn
        self.profile_uri = profile
        self.threshold = threshold
        self._profile: Stats | None = None
        self._cache: dict[str, tuple[tuple[Any, ...], dict[str, Any]]] = {}
        self._lock = threading.Lock()

    def profile(self) -> Stats | None:
        if self.profile_uri and self._profile is None:
            self._profile = load_profile(self.profile_uri)
        return self._profile

    def reference(self, r: redis.Redis, batch_id: str, c: dict[str, Any]) -> tuple[str, Stats] | None:
        """The batch's reference by the rule: (its name, its statistics), or None."""
        profile = self.profile()
        if profile is not None and self.profile_uri:
            return self.profile_uri, profile
        previous = self.previous(r, batch_id, c)
        return (previous, load_batch(r, previous)) if previous else None

    def previous(self, r: redis.Redis, batch_id: str, c: dict[str, Any]) -> str | None:
        """The newest earlier finished batch with statistics on the same source and model."""
        created = r.zscore(keys.BATCHES, batch_id)
        if created is None:
            return None
        for raw in r.zrevrangebyscore(keys.BATCHES, f"({created}", "-inf", start=0, num=LOOK_AT):
            other = as_text(raw)
            o = counters(r, other)
            if (o.get("source"), o.get("model")) != (c.get("source"), c.get("model")) or not _finished(o):
                continue
            if r.exists(keys.batch_stats(other)):
                return other
        return None

    def report(self, batch_id: str, reference: str | None = None) -> tuple[dict[str, Any], Stats, Stats | None]:
        """The batch's report as `velo report --json` prints it, its statistics and its reference's.

        ``reference``: a batch to compare with instead of the rule's choice."""
        r = self.conn()
        c = counters(r, batch_id)
        if not c:
            raise HTTPException(404, f"no batch {batch_id!r} in Redis")
        if not r.exists(keys.batch_stats(batch_id)):
            why = "no file of it is done yet, or it was dispatched without --stats"
            raise HTTPException(404, f"batch {batch_id!r} has no statistics: {why}")
        current = load_batch(r, batch_id)
        if reference is not None:
            if not counters(r, reference) or not r.exists(keys.batch_stats(reference)):
                raise HTTPException(404, f"reference batch {reference!r}: not in Redis, or without statistics")
            chosen: tuple[str, Stats] | None = (reference, load_batch(r, reference))
        else:
            chosen = self.reference(r, batch_id, c)
        name, ref = chosen if chosen is not None else (None, None)
        result = {"batch": batch_id, "reference": name, **compare(current, ref, self.threshold)}
        return result, current, ref

    def recent(self) -> list[dict[str, Any]]:
        """The reports of the ``RECENT`` newest finished batches with statistics and a reference."""
        r = self.conn()
        out, seen = [], set()
        for raw in r.zrevrange(keys.BATCHES, 0, LOOK_AT - 1):
            batch_id = as_text(raw)
            c = counters(r, batch_id)
            if not c or not _finished(c) or not r.exists(keys.batch_stats(batch_id)):
                continue
            seen.add(batch_id)
            stamp = (c.get("done"), c.get("failed"), c.get("updated_at"), self.profile_uri)
            with self._lock:
                cached = self._cache.get(batch_id)
            if cached is None or cached[0] != stamp:
                result = self.report(batch_id)[0]
                with self._lock:
                    self._cache[batch_id] = (stamp, result)
            else:
                result = cached[1]
            if result["reference"] is not None:
                out.append(result)
            if len(seen) == RECENT:
                break
        with self._lock:  # batches no longer among the recent are forgotten
            for gone in set(self._cache) - seen:
                del self._cache[gone]
        return out


def _finished(c: dict[str, Any]) -> bool:
    return int(c.get("done", 0)) + int(c.get("failed", 0)) >= int(c.get("total", 0)) and int(c.get("total", 0)) > 0


class DriftCollector(Collector):
    """The drift gauges, read from Redis at each scrape (see the module's text)."""

    def __init__(self, drift: Drift) -> None:
        self.drift = drift

    def describe(self) -> list[Any]:
        return []  # computed at scrape time: nothing to check when registered

    def collect(self) -> Iterator[GaugeMetricFamily]:
        score = GaugeMetricFamily(
            "velo_batch_drift_score",
            "Drift of a column of a finished batch from its reference: PSI or KS.",
            labels=["batch", "feature", "measure"],
        )
        flagged = GaugeMetricFamily(
            "velo_batch_drift_flagged",
            "1 when a column of a finished batch drifts from its reference (velo report's rule), else 0.",
            labels=["batch", "feature"],
        )
        columns = GaugeMetricFamily(
            "velo_batch_drift_columns",
            "Columns (features and the prediction) of a finished batch that drift from its reference.",
            labels=["batch"],
        )
        try:
            reports = self.drift.recent()
        except Exception as e:  # a scrape must answer (no Redis, a profile gone): no drift gauges then
            log.warning("drift gauges left out of /metrics: %s", getattr(e, "detail", e))
            reports = []
        for rep in reports:
            batch = rep["batch"]
            rows = [(f["feature"], f) for f in rep["features"][:MAX_FEATURES] if f.get("psi") is not None]
            if "psi" in rep["prediction"]:
                rows.append(("prediction", rep["prediction"]))
            for name, f in rows:
                for measure in ("psi", "ks"):
                    if f.get(measure) is not None:
                        score.add_metric([batch, name, measure], float(f[measure]))
                flagged.add_metric([batch, name], 1.0 if f.get("drift") else 0.0)
            columns.add_metric([batch], float(len(rep["drifted"])))
        yield score
        yield flagged
        yield columns


def router(drift: Drift) -> APIRouter:
    """``GET /v1/batches/{id}/report`` (JSON) and ``/report.html`` (`velo report --html`'s page)."""
    api = APIRouter(prefix="/v1/batches", tags=["batches"])

    @api.get("/{batch_id}/report")
    def report(batch_id: str, reference: str | None = None) -> dict[str, Any]:
        """Drift of the batch from its reference (``?reference=BATCH``, else the serve's rule), as
        `velo report --json` prints it."""
        return drift.report(batch_id, reference)[0]

    @api.get("/{batch_id}/report.html", response_class=HTMLResponse)
    def report_html(batch_id: str, reference: str | None = None) -> HTMLResponse:
        """The same report as one self-contained HTML page, as `velo report --html` writes it."""
        result, current, ref = drift.report(batch_id, reference)
        return HTMLResponse(render_html(result, current, ref))

    return api
