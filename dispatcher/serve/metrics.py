"""`GET /metrics` of `velo serve`: request latency by route and status, rows predicted, batch sizes,
and with Redis the drift gauges of recent batches (dispatcher.serve.drift).

With ``--workers N`` every process counts its own requests; prometheus-client's multiprocess
mode (``PROMETHEUS_MULTIPROC_DIR``, set by `velo serve`) adds them up on each scrape.
"""

from __future__ import annotations

import os

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

__all__ = ["CONTENT_TYPE_LATEST", "Metrics"]

_LATENCY = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)
_SIZES = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096, 16384)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.extra: list[Collector] = []
        self.latency = Histogram(
            "velo_http_request_seconds",
            "HTTP request latency, by route and status.",
            ["route", "status"],
            buckets=_LATENCY,
            registry=self.registry,
        )
        self.rows = Counter("velo_predicted_rows", "Rows predicted online.", registry=self.registry)
        self.batch_rows = Histogram(
            "velo_batch_rows", "Rows in each predict call the batcher formed.", buckets=_SIZES, registry=self.registry
        )
        self.batch_requests = Histogram(
            "velo_batch_requests",
            "Requests answered by each predict call the batcher formed.",
            buckets=_SIZES[:9],
            registry=self.registry,
        )

    def batch(self, rows: int, requests: int) -> None:
        self.rows.inc(rows)
        self.batch_rows.observe(rows)
        self.batch_requests.observe(requests)

    def add(self, collector: Collector) -> None:
        """A collector read at each scrape (the drift gauges), in one process's answer alone."""
        self.registry.register(collector)
        self.extra.append(collector)

    def render(self) -> bytes:
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            registry = CollectorRegistry()
            MultiProcessCollector(registry)
            for collector in self.extra:
                registry.register(collector)
            return generate_latest(registry)
        return generate_latest(self.registry)
