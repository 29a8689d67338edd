"""How a worker rides out storage trouble: the file is tried again, after a growing, jittered pause.

The retries happen inside the job, not through RQ's ``Retry(interval=...)``: RQ parks a retry
with an interval in its ScheduledJobRegistry, and only an RQ scheduler moves it back to the
queue. Velosiped's workers run without one (a ``WorkerPool`` would fork a scheduler per
worker), and a ``--burst`` worker exits as soon as the queue is empty, leaving the parked
retry behind. Sleeping in the job keeps the file's lease (the heartbeat thread renews it) and
counts against the job's time limit, which bounds it.
"""

from __future__ import annotations

import random

from velosiped import settings

__all__ = ["ATTEMPTS_ENV", "BACKOFF_ENV", "BACKOFF_MAX_ENV", "attempts", "compute_backoff"]

ATTEMPTS_ENV = settings.S3_RETRIES.env
BACKOFF_ENV = settings.S3_BACKOFF.env
BACKOFF_MAX_ENV = settings.S3_BACKOFF_MAX.env


def attempts() -> int:
    """Attempts a file gets in one job: the first, plus ``VELO_S3_RETRIES``."""
    return 1 + settings.S3_RETRIES.get()


def compute_backoff(retry: int, *, rng: random.Random | None = None) -> float:
    """Seconds to wait before retry number ``retry`` (1, 2, ...): exponential, capped, with jitter.

    As dramatiq's ``compute_backoff``: ``base * 2**(retry-1)`` capped at the maximum, then half
    of it fixed and half random, so workers hit by the same outage do not come back in step.
    """
    base = settings.S3_BACKOFF.get()
    cap = settings.S3_BACKOFF_MAX.get()
    backoff = min(base * 2 ** (retry - 1), cap)
    return backoff / 2 + (rng or random).uniform(0, backoff / 2)
