"""Champion vs challenger (``--shadow``): the challenger scores the blocks the champion's pass has
parsed already, into its own output, and the two are compared as they go.

The challenger never costs the champion its output: when it fails (its features are missing, it
rejects a block), its output is dropped, the reason is kept (an error file beside where its
output would be, and the batch's comparison statistics), and the champion's pass goes on.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator, Sequence
from typing import IO, Any

import numpy as np
import pyarrow as pa

from velosiped import storage
from velosiped.comparison import Comparison
from velosiped.errors import InputError, one_line
from velosiped.frames import FeatureSpec, assemble, classes_of, kept_columns, run_model, to_numbers
from velosiped.jobs import Payload, error_uri, payload_params, shadow_lineage

__all__ = ["Challenger"]

log = logging.getLogger(__name__)


class Challenger:
    """One file's challenger: its model, where its output goes, and the comparison gathered."""

    def __init__(self, p: Payload, model: Any, champion: Any) -> None:
        self.p = p
        self.model = model
        self.champion = champion
        self.uri = str(p.get("shadow_output"))
        self.comparison = Comparison(p["model"], str(p.get("shadow")))
        self.comparison.files = 1
        self.failed: str | None = None
        self.rows = 0
        self._stack = contextlib.ExitStack()
        self._out: Any = None

    # -- the pass --------------------------------------------------------------------------------

    @contextlib.contextmanager
    def writing(self) -> Iterator[Challenger]:
        """The challenger's output is open while this is: kept whole if the pass and the challenger
        succeed, dropped if either fails."""
        try:
            yield self
        except BaseException as e:
            self._stack.__exit__(type(e), e, e.__traceback__)
            raise
        if self.failed is None:
            self._stack.close()

    def start(
        self,
        header: list[str],
        spec: FeatureSpec,
        keep: Sequence[str] | None,
        proba: bool,
        name: str,
        open_out: Any,
    ) -> None:
        """Before the first block: decide its features and columns, open its output.
        ``open_out(dst, names)`` makes the writer the champion's output uses, on ``dst``."""
        self.spec = spec
        try:
            self.own = FeatureSpec(self.model, header, f"{name} (challenger)", self.p["features"])
            self.kept = kept_columns(header, keep, name)
            self.classes = classes_of(self.model, proba, f"{name} (challenger)")
        except InputError as e:
            self._fail(str(e))
            return
        self.names = [*self.kept, "prediction", *(f"proba_{c}" for c in self.classes)]
        self.comparison.all = {c: self.comparison.all.get(c) or _sketch() for c in self.own.columns}
        self.comparison.disagree = {c: _sketch() for c in self.own.columns}
        self.labels = hasattr(self.model, "classes_") or hasattr(self.champion, "classes_")
        self.same_classes = (
            hasattr(self.model, "predict_proba")
            and hasattr(self.champion, "predict_proba")
            and _same(getattr(self.model, "classes_", None), getattr(self.champion, "classes_", None))
        )
        dst: IO[bytes] = self._stack.enter_context(storage.write_atomic(self.uri, shadow_lineage(self.p)))
        self._out = open_out(dst, self.names)

    def score(
        self,
        batch: pa.RecordBatch,
        columns: list[np.ndarray],
        x: Any,
        prediction: np.ndarray,
        probabilities: np.ndarray | None,
        rows: int,
        name: str,
    ) -> None:
        """One block, as the champion scored it (its feature columns, input and predictions)."""
        if self.failed is not None or self._out is None:
            return
        try:
            mine = dict(zip(self.spec.columns, columns, strict=True))
            own = [mine[c] if c in mine else to_numbers(batch.column(c), c, name, rows + 1) for c in self.own.columns]
            x_own = self.own.model_input(own, batch.num_rows)
            context = f"{name}: challenger rejected rows {rows + 1}-{rows + batch.num_rows}"
            theirs, their_proba = run_model(self.model, x_own, bool(self.classes), context)
        except InputError as e:
            self._fail(str(e))
            return
        try:  # what the challenger's answers make (a table, a comparison) is its own trouble too
            self._out.write(assemble(batch, self.kept, theirs, their_proba, self.names))
            p1, p2 = None, None
            if self.same_classes:
                p1 = probabilities if probabilities is not None else _proba(self.champion, x)
                p2 = their_proba if their_proba is not None else _proba(self.model, x_own)
            self.comparison.update(own, prediction, theirs, labels=self.labels, champion_proba=p1, challenger_proba=p2)
        except (pa.ArrowException, ValueError, TypeError) as e:  # storage trouble is not caught: the file is retried
            self._fail(f"{name}: challenger's rows {rows + 1}-{rows + batch.num_rows}: {one_line(e)}")
            return
        self.rows += batch.num_rows

    def finish(self, close: Callable[[Any, Any, list[str], list[Any], list[str]], None]) -> None:
        """After the last block: ``close(writer, model, kept, classes, names)`` closes its output as
        the champion's is closed (a Parquet file without rows gets its schema from them)."""
        if self.failed is None and self._out is not None:
            close(self._out, self.model, self.kept, self.classes, self.names)

    def _fail(self, reason: str) -> None:
        self.failed = reason
        self._stack.__exit__(InputError, InputError(reason), None)  # its output is dropped, not kept
        self.comparison.fail(self.p["input"], reason)
        log.warning("%s; the champion's output is kept", reason)

    # -- after the pass --------------------------------------------------------------------------

    def settle(self) -> None:
        """The pass is over and the champion's output kept: record the challenger's outcome."""
        if self.failed is None:
            storage.write_lineage(self.uri, {**shadow_lineage(self.p), "velo-rows": str(self.rows)})
            storage.delete(error_uri(self.uri))
            return
        storage.write_json(
            error_uri(self.uri),
            {
                "file": self.p["input"],
                "output": self.uri,
                "error": self.failed,
                "kind": "input",
                "batch": self.p["batch"],
                "input_version": self.p["input_version"],
                "model": self.p.get("shadow"),
                "model_version": self.p.get("shadow_version"),
                "params": payload_params(self.p),
                "role": "challenger",
            },
        )
        storage.delete(self.uri)  # an older challenger output is not this input's any more
        if not storage.is_s3(self.uri):
            storage.delete(self.uri + storage.LINEAGE_SUFFIX)


def _sketch() -> Any:
    from velosiped.sketch import Sketch

    return Sketch()


def _same(a: Any, b: Any) -> bool:
    if a is None or b is None:
        return False
    a, b = np.asarray(a), np.asarray(b)
    return a.shape == b.shape and bool(np.all(a.astype(str) == b.astype(str)))


def _proba(model: Any, x: Any) -> np.ndarray | None:
    """Probabilities asked only for the comparison (without --proba); None if the model refuses."""
    try:
        return np.asarray(model.predict_proba(x), dtype=np.float64)
    except Exception as e:
        log.debug("predict_proba for the comparison failed: %s", one_line(e))
        return None
