"""The Python API: what `velo run`, `velo dispatch`, `velo status`, `velo retry` and `POST /predict`
do, callable from Python, on the same code.

    import velosiped

    scored = velosiped.predict(frame, "model.joblib", proba=True)  # a DataFrame (or Arrow table) in, the same out
    summary = velosiped.run("data/", "model.joblib", workers=2)     # `velo run`: every file scored, or it says why
    client = velosiped.Client("redis://10.0.0.5:6379/0")
    batch = client.dispatch("s3://bucket/in/", "s3://bucket/models/m.joblib")
    client.wait(batch["id"])                                        # the batch, as `velo status --json` gives it
    client.retry(batch["id"])

This module is the shared core's one door into the two sides: it imports them inside its
functions, so ``import velosiped`` stays light and the core still imports neither at load.
"""

from __future__ import annotations

import os
import time
from typing import Any

from velosiped.errors import ConfigError
from velosiped.frames import FeatureSpec, assemble, classes_of, kept_columns, run_model

__all__ = ["Client", "predict", "run"]

DISPATCH_DEFAULTS: dict[str, Any] = {
    "patterns": (),
    "output": None,
    "suffix": ".out",
    "keep": None,
    "proba": False,
    "force": False,
    "model_sha256": None,
    "features": None,
    "sep": ",",
    "encoding": "utf-8",
    "shard_size": "0",
    "stats": True,
    "shadow": None,
    "shadow_output": None,
    "shadow_sha256": None,
    "engine": "sklearn",
    "group_size": 64,
    "group_bytes": "4MB",
}
"""`velo dispatch`'s options by their Python names (``keep`` and ``features``: comma-separated)."""


def predict(
    data: Any,
    model: Any,
    *,
    keep: list[str] | None = None,
    proba: bool = False,
    features: list[str] | None = None,
    model_sha256: str | None = None,
) -> Any:
    """The batch output of ``data``'s rows: the kept columns (default all), ``prediction``, then
    with ``proba`` one ``proba_<class>`` column per class; a pandas DataFrame for a DataFrame,
    an Arrow table for an Arrow table.

    ``model`` is a fitted model, or a path or ``s3://`` URI of a joblib dump (loaded as a worker
    loads it: allowed prefixes, ``model_sha256`` checked on the very bytes unpickled).

    Raises:
        InputError: a feature column is missing or not numeric (the message names it), or the
            model rejected the rows.
    """
    import pyarrow as pa

    if isinstance(model, str):
        from velosiped import storage
        from velosiped.models import version_of
        from worker import models

        uri = storage.normalize(model)
        model = models.load(uri, version_of(uri), model_sha256)
    table = data if isinstance(data, pa.Table) else pa.Table.from_pandas(data, preserve_index=False)
    header = [str(c) for c in table.column_names]
    spec = FeatureSpec(model, header, "frame", features)
    kept = kept_columns(header, keep, "frame")
    classes = classes_of(model, proba, "frame")
    prediction, probabilities = run_model(
        model, spec.matrix(table, "frame"), bool(classes), "frame: model rejected the rows"
    )
    out = assemble(table, kept, prediction, probabilities, [*kept, "prediction", *(f"proba_{c}" for c in classes)])
    return out if isinstance(data, pa.Table) else out.to_pandas()


def run(
    source: str,
    model: str,
    *,
    workers: int | None = None,
    redis_url: str | None = None,
    queue: str = "velo",
    timeout: int = 6 * 3600,
    **options: Any,
) -> dict[str, Any]:
    """`velo run` from Python: plan, enqueue, score with ``workers`` local processes, wait.

    Returns the batch as ``velo status --json`` describes it (``done``, ``failed``, ``failures``
    with their reasons, ``rows``...), plus ``skipped``. Without ``redis_url`` it uses the embedded
    Redis under VELO_STATE_DIR, as `velo run` does; the workers log to a ``run-*.log`` there.
    """
    from rich.console import Console

    from dispatcher.cli import run_batch
    from velosiped import storage
    from velosiped.connection import state_dir

    source = storage.normalize(source)
    opts = _options(source, model, options)
    folder = state_dir()
    os.makedirs(folder, exist_ok=True)
    log_path = os.path.join(folder, time.strftime("run-%Y%m%d-%H%M%S.log"))  # the workers' log lines
    return run_batch(source, opts, redis_url, queue, workers, timeout, log_path, Console(quiet=True))


class Client:
    """A fleet's batches through its Redis: `velo dispatch`, `velo status`, `velo retry`."""

    def __init__(self, redis_url: str, queue: str = "velo") -> None:
        from velosiped.connection import connect

        self.redis = connect(redis_url)
        self.queue = queue

    def dispatch(self, source: str, model: str, *, timeout: int = 6 * 3600, **options: Any) -> dict[str, Any]:
        """Enqueue one job per pending file under ``source``; ``{"id", "enqueued", "skipped"}``.

        ``options`` are `velo dispatch`'s: ``patterns``, ``output``, ``suffix``, ``keep``,
        ``proba``, ``force``, ``model_sha256``, ``features``, ``sep``, ``encoding``, ``shard_size``, ``stats``,
        ``engine``, ``group_size``, ``group_bytes`` (small files together), ``shadow``, ``shadow_output``,
        ``shadow_sha256`` (champion vs challenger).
        """
        from dispatcher.enqueue import dispatch_batch
        from velosiped import storage

        source = storage.normalize(source)
        batch = dispatch_batch(self.redis, self.queue, source, _options(source, model, options), timeout)
        return {"id": batch.id, "enqueued": batch.enqueued, "skipped": batch.skipped}

    def status(self, batch: str | None = None) -> Any:
        """One batch as ``velo status BATCH --json`` prints it (None: no such batch), or the newest
        batches when ``batch`` is None."""
        from dispatcher import status

        if batch is not None:
            return status.describe(self.redis, batch)
        return [b for b in (status.describe(self.redis, i) for i in status.batch_ids(self.redis)) if b]

    def wait(self, batch: str, timeout: float | None = None, poll: float = 0.5) -> dict[str, Any]:
        """The batch once every file has an outcome (or every file left was lost from the queue:
        ``lost`` counts them, `retry` enqueues them again).

        Raises:
            ConfigError: no such batch.
            TimeoutError: ``timeout`` seconds passed first.
        """
        from rich.console import Console

        from dispatcher import status

        deadline = None if timeout is None else time.monotonic() + timeout
        in_time = lambda: deadline is None or time.monotonic() < deadline  # noqa: E731
        # `velo dispatch --wait`'s own loop (lost files included), its progress bar unseen
        found = status.wait(self.redis, batch, Console(quiet=True), poll=poll, alive=in_time)
        if not found:
            raise ConfigError(f"no batch {batch!r} in Redis")
        left = found["total"] - found["done"] - found["failed"]
        if not found["finished"] and not (found["lost"] and found["lost"] >= left):
            raise TimeoutError(f"batch {batch}: {left} files without an outcome after {timeout} s")
        return found

    def retry(self, batch: str) -> int:
        """Enqueue the batch's failed files (and files lost from the queue) again; how many."""
        from dispatcher.enqueue import retry_failed

        if self.status(batch) is None:
            raise ConfigError(f"no batch {batch!r} in Redis")
        return retry_failed(self.redis, batch)[0]


def _options(source: str, model: str, options: dict[str, Any]) -> Any:
    from dispatcher.options import make_options

    unknown = set(options) - set(DISPATCH_DEFAULTS)
    if unknown:
        raise ConfigError(f"unknown options {sorted(unknown)}; known: {', '.join(DISPATCH_DEFAULTS)}")
    given = {**DISPATCH_DEFAULTS, **options}
    for name in ("keep", "features"):  # lists are welcome too
        if isinstance(given[name], (list, tuple)):
            given[name] = ",".join(given[name])
    given["patterns"] = tuple(given["patterns"])
    given["shard_size"] = str(given["shard_size"])
    return make_options(source, model, **given)
