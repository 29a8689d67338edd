"""Dynamic batching: concurrent requests scored by one ``predict`` call, each answered with its rows.

What Ray Serve's ``@serve.batch``, Triton's dynamic batcher and BentoML's adaptive batching do,
in one event loop: a request's feature columns join the pending batch; the batch is scored as
soon as the loop has taken in every request that arrived together (``wait`` 0, the default: no
request waits for company it may never get), after ``wait`` seconds, or once it holds
``max_rows`` rows. ``predict`` on 8 rows costs about what it costs on one, so under load the
calls per request fall with the load.

A batch the model rejects is scored again request by request, so one bad body fails alone.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from dispatcher.serve.served import ServedModel
from velosiped.errors import InputError
from velosiped.frames import FeatureSpec

__all__ = ["Batcher", "Prediction"]

Prediction = tuple[np.ndarray, "np.ndarray | None"]


@dataclass
class _Item:
    spec: FeatureSpec
    x: np.ndarray
    future: asyncio.Future[Prediction]

    @property
    def rows(self) -> int:
        return int(self.x.shape[0])


class Batcher:
    """Gathers requests for one model version and scores them together."""

    def __init__(self, max_rows: int, wait: float, observe: Callable[[int, int], None] = lambda rows, n: None) -> None:
        self.max_rows = max_rows
        self.wait = wait
        self.observe = observe  # (rows, requests) of each predict call, for the metrics
        self._pending: dict[tuple[int, bool], list[_Item]] = {}
        self._models: dict[int, ServedModel] = {}
        self._rows = 0
        self._timer: asyncio.Handle | None = None

    async def predict(self, model: ServedModel, spec: FeatureSpec, x: np.ndarray, proba: bool) -> Prediction:
        """``model``'s prediction (and probabilities with ``proba``) for the feature matrix ``x``."""
        loop = asyncio.get_running_loop()
        item = _Item(spec, x, loop.create_future())
        rows = item.rows
        # One batch per model object and per proba: predict_proba costs more, asked only where wanted
        self._pending.setdefault((id(model), proba), []).append(item)
        self._models[id(model)] = model
        self._rows += rows
        if self._rows >= self.max_rows:
            self._flush()
        elif self._timer is None:
            self._timer = loop.call_later(self.wait, self._flush) if self.wait > 0 else loop.call_soon(self._flush)
        return await item.future

    def _flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        pending, self._pending, self._rows = self._pending, {}, 0
        models, self._models = self._models, {}
        for (key, proba), items in pending.items():
            self._score(models[key], items, proba)

    def _score(self, model: ServedModel, items: list[_Item], proba: bool) -> None:
        rows = sum(i.rows for i in items)
        try:
            x = np.concatenate([i.x for i in items]) if len(items) > 1 else items[0].x
            prediction, probabilities = model.predict(items[0].spec, x, proba)
        except (InputError, ValueError) as e:
            if len(items) > 1:  # find the body the model rejects: the others still get their answer
                for item in items:
                    self._score(model, [item], proba)
                return
            _settle(items[0].future, error=e if isinstance(e, InputError) else InputError(f"request: {e}"))
            return
        except Exception as e:  # answered 500 by the caller; the loop goes on
            for item in items:
                _settle(item.future, error=e)
            return
        self.observe(rows, len(items))
        start = 0
        for item in items:
            end = start + item.rows
            _settle(
                item.future, value=(prediction[start:end], None if probabilities is None else probabilities[start:end])
            )
            start = end


def _settle(
    future: asyncio.Future[Prediction], value: Prediction | None = None, error: BaseException | None = None
) -> None:
    if future.done():  # its request went away (client gone)
        return
    if error is not None:
        future.set_exception(error)
    else:
        assert value is not None
        future.set_result(value)
