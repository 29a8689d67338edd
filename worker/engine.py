"""The opt-in faster predict for tree ensembles (``--engine treelite``).

The scikit-learn model is imported into Treelite and compiled to a shared library with TL2cgen
(and the machine's C compiler), once per model version: the library is kept on disk under the
model cache, named by the model's SHA-256, and loaded once per process. Chosen by measurement
(docs/BENCHMARKS.md, "Tree engines"): on the benchmark's HistGradientBoosting model the compiled
predict gives the same probabilities as scikit-learn to 1e-15, several times faster; skl2onnx 1.20
could not convert that model, and onnxruntime was no faster than scikit-learn on its forest.

The compiled model is trusted only once it agrees with scikit-learn: the blocks a process scores
with it are also scored by scikit-learn until :data:`CHECK_ROWS` rows have been (the first block's,
or the first blocks' when they are small: a few rows a file or a request); any label that differs,
or any probability (a regressor's prediction) more than :data:`TOLERANCE` apart, and the model is
scored by scikit-learn from then on, said in one log line and in each output's lineage.
A model the engine cannot take (a pipeline, a model that is not a tree ensemble, no C compiler,
the extra not installed) is scored by scikit-learn too, said in one line naming the reason.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import os
import shutil
import sys
import tempfile
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from velosiped import settings
from velosiped.jobs import ENGINES, Payload

__all__ = [
    "CHECK_ROWS",
    "ENGINES",
    "TOLERANCE",
    "Compiled",
    "engine_of",
    "fallback_of",
    "for_model",
    "lineage",
    "prepare",
    "refused",
]

log = logging.getLogger(__name__)

CHECK_ROWS = 1_000
"""Rows scored both ways before the compiled model is trusted: the first block's, or the first
blocks' until there are as many (small files, online requests of a few rows each)."""

TOLERANCE = 1e-6
"""Largest difference allowed between a probability (or a regressor's prediction) of the two."""

_FLOAT32_TREES = (
    "RandomForestClassifier",
    "RandomForestRegressor",
    "ExtraTreesClassifier",
    "ExtraTreesRegressor",
    "DecisionTreeClassifier",
    "DecisionTreeRegressor",
    "ExtraTreeClassifier",
    "ExtraTreeRegressor",
    "GradientBoostingClassifier",
    "GradientBoostingRegressor",
)
"""Models whose trees compare float32 features (scikit-learn casts X first): so does the engine."""

_SUPPORTED = (*_FLOAT32_TREES, "HistGradientBoostingClassifier", "HistGradientBoostingRegressor")

MAX_NODES = 50_000
"""Models with more tree nodes are not compiled: compile time grows with them (a 100-tree forest
of depth 12, ~120,000 nodes, took 253 s on 2 cores, and predicted slower than scikit-learn)."""

COMPILER = "gcc"
"""The C compiler TL2cgen builds the model's library with."""

_held: dict[str, Compiled | str] = {}
"""Per model SHA-256: its compiled form, or why it has none (said once)."""


class Compiled:
    """The model, predicting through its compiled library until a check says otherwise.

    Every attribute but ``predict`` and ``predict_proba`` is the scikit-learn model's (its
    ``classes_``, ``feature_names_in_``...), so scoring treats it as the model itself.
    """

    def __init__(self, model: Any, predictor: Callable[[np.ndarray], np.ndarray], name: str) -> None:
        self.model = model
        self._predictor = predictor
        self._name = name
        self.fallback: str | None = None
        """Why scikit-learn scores this model after all (set by the check); None: the engine does."""
        self.checked = 0
        """Rows the check has found equal so far (every block is checked until ``CHECK_ROWS``)."""
        self._last: tuple[Any, np.ndarray] | None = None
        """The last block and its output: `--proba` asks for labels and probabilities of the same block."""
        self._classes = getattr(model, "classes_", None)
        if self._classes is not None and hasattr(model, "predict_proba"):
            self.predict_proba = self._predict_proba

    def __getattr__(self, attr: str) -> Any:  # only for attributes not found on self
        return getattr(self.__dict__["model"], attr)

    @property
    def engine(self) -> str:
        """What scores this model: ``treelite``, or ``sklearn`` after a failed check."""
        return "treelite" if self.fallback is None else "sklearn"

    def _raw(self, x: Any) -> np.ndarray:
        """The compiled model's output: class probabilities (n, classes), or a regressor's (n,)."""
        if self._last is not None and self._last[0] is x:
            return self._last[1]
        out = self._compute(x)
        self._last = (x, out)
        return out

    def _compute(self, x: Any) -> np.ndarray:
        features = np.asarray(x, dtype=np.float64)
        if type(self.model).__name__ in _FLOAT32_TREES:
            features = features.astype(np.float32).astype(np.float64)
        out = np.asarray(self._predictor(np.ascontiguousarray(features)), dtype=np.float64)
        out = out.reshape(len(features), -1)
        if self._classes is None:
            return out[:, 0]
        if out.shape[1] == 1 and len(self._classes) == 2:  # a binary model gives P(second class)
            out = np.column_stack([1.0 - out[:, 0], out[:, 0]])
        return out

    def _labels(self, proba: np.ndarray) -> np.ndarray:
        assert self._classes is not None
        return np.asarray(self._classes)[np.argmax(proba, axis=1)]

    def predict(self, x: Any) -> np.ndarray:
        if self.checked < CHECK_ROWS and self.fallback is None:
            self._check(x)
        if self.fallback is not None:
            return np.asarray(self.model.predict(x))
        raw = self._raw(x)
        return raw if self._classes is None else self._labels(raw)

    def _predict_proba(self, x: Any) -> np.ndarray:
        if self.checked < CHECK_ROWS and self.fallback is None:
            self._check(x)
        if self.fallback is not None:
            return np.asarray(self.model.predict_proba(x))
        return self._raw(x)

    def _check(self, x: Any) -> None:
        """Score ``x``'s rows both ways, up to CHECK_ROWS in all; on any difference keep scikit-learn."""
        left = CHECK_ROWS - self.checked
        sample = x.iloc[:left] if hasattr(x, "iloc") else np.asarray(x)[:left]
        try:
            raw = self._raw(sample)
        except Exception as e:
            self.fallback = f"its compiled predict failed ({type(e).__name__}: {e})"
        else:
            self.fallback = _differs(self.model, sample, raw, self._classes)
        rows = self.checked + len(sample)
        if self.fallback is None:
            self.checked = rows
            if rows >= CHECK_ROWS:
                said = "engine treelite: %s agrees with scikit-learn on %d rows; it scores this model"
                log.info(said, self._name, rows)
        else:
            self.fallback = f"checked on {rows} rows: {self.fallback}"
            log.warning("engine treelite: %s %s; scikit-learn scores this model", self._name, self.fallback)


def _differs(model: Any, sample: Any, raw: np.ndarray, classes: Any) -> str | None:
    """Why the compiled output ``raw`` of ``sample`` is not scikit-learn's, or None."""
    if classes is None:
        want = np.asarray(model.predict(sample), dtype=np.float64)
        gap = float(np.max(np.abs(raw - want), initial=0.0))
        return None if gap <= TOLERANCE else f"a prediction differs by {gap:.3g} (over {TOLERANCE:g})"
    labels = np.asarray(classes)[np.argmax(raw, axis=1)]
    want_labels = np.asarray(model.predict(sample))
    wrong = int(np.sum(labels != want_labels))
    if wrong:
        return f"{wrong} predicted label(s) differ"
    if hasattr(model, "predict_proba"):
        want = np.asarray(model.predict_proba(sample), dtype=np.float64)
        if want.shape != raw.shape:
            return f"its probabilities have shape {raw.shape}, scikit-learn's {want.shape}"
        gap = float(np.max(np.abs(raw - want), initial=0.0))
        if gap > TOLERANCE:
            return f"a probability differs by {gap:.3g} (over {TOLERANCE:g})"
    return None


def engine_of(model: Any) -> str:
    """What scores ``model``: ``treelite`` (compiled and checked, or yet to be checked) or ``sklearn``."""
    return model.engine if isinstance(model, Compiled) else "sklearn"


def fallback_of(model: Any) -> str | None:
    return model.fallback if isinstance(model, Compiled) else None


def prepare(model: Any, uri: str, version: str, engine: str | None) -> Any:
    """What predicts for a job naming ``engine``: ``model`` itself for scikit-learn, else its compiled form."""
    if engine in (None, "sklearn"):
        return model
    from worker import models

    digest = models.digest_of(uri, version) or version
    return for_model(model, digest, uri)


def refused(uri: str, version: str) -> str | None:
    """Why the engine did not take the model at ``uri`` as of ``version`` in this process, if it did not."""
    from worker import models

    held = _held.get(models.digest_of(uri, version) or version)
    return held if isinstance(held, str) else None


def for_model(model: Any, digest: str, name: str) -> Any:
    """``model`` compiled (a :class:`Compiled`), or ``model`` itself when it cannot be (said once
    per model version and process). ``digest``: the SHA-256 of the bytes it was unpickled from."""
    held = _held.get(digest)
    if held is None:
        try:
            held = Compiled(model, _compile(model, digest), name)
        except _Unsupported as e:
            held = str(e)
            log.warning("engine treelite: %s: %s; scikit-learn scores this model", name, held)
        _held[digest] = held
        while len(_held) > 4:  # a few versions, as the model cache keeps
            _held.pop(next(iter(_held)))
    return held if isinstance(held, Compiled) else model


class _Unsupported(Exception):
    """The engine cannot take this model; the message says why."""


def _compile(model: Any, digest: str) -> Callable[[np.ndarray], np.ndarray]:
    kind = type(model).__name__
    if kind not in _SUPPORTED:
        what = "a Pipeline" if hasattr(model, "steps") else f"{kind}, not a tree ensemble it compiles"
        raise _Unsupported(f"the engine takes a bare tree ensemble, this model is {what}")
    try:
        import tl2cgen
        import treelite
    except ImportError as e:
        raise _Unsupported(f"the engine is not installed ({e.name} missing: pip install 'velosiped[engine]')") from e
    compiler = COMPILER
    if shutil.which(compiler) is None:
        raise _Unsupported(f"no C compiler ({compiler}) to compile the model with")
    nodes = _nodes(model)
    if nodes > MAX_NODES:
        raise _Unsupported(f"{nodes:,} tree nodes, over the {MAX_NODES:,} the engine compiles in reasonable time")
    try:
        imported = treelite.sklearn.import_model(model)
    except Exception as e:
        raise _Unsupported(f"Treelite cannot import it ({type(e).__name__}: {e})") from e
    with _quiet():
        path = _library(imported, digest, compiler)
    loaded: list[Any] = []

    def predict(x: np.ndarray) -> np.ndarray:
        # Loaded in the process that predicts, on first use: `velo run` compiles before forking its
        # workers, and each then loads the library with its own share of the cores (VELO_THREADS).
        if not loaded:
            threads = settings.THREADS.get() or os.cpu_count() or 1
            with _quiet():
                loaded.append(tl2cgen.Predictor(path, nthread=int(threads)))
        return np.asarray(loaded[0].predict(tl2cgen.DMatrix(x, dtype="float64")))

    return predict


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """TL2cgen's chatter (its C++ log lines are printed, its notes are Python warnings) kept off the
    terminal: that the model's file came from a newer Treelite than the one TL2cgen embeds, how many
    files it compiles (its embedded Treelite writes to the stderr descriptor itself, so that is
    pointed elsewhere meanwhile). What matters, the check, Velosiped says itself."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with (
            tempfile.TemporaryFile() as sink,
            contextlib.redirect_stdout(io.StringIO()),
            warnings.catch_warnings(),
        ):
            warnings.simplefilter("ignore")
            os.dup2(sink.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _nodes(model: Any) -> int:
    """The model's tree nodes, from scikit-learn's own attributes (0 where it has none of them)."""
    if hasattr(model, "tree_"):
        return int(model.tree_.node_count)
    if hasattr(model, "_predictors"):  # HistGradientBoosting: per iteration, one tree per class
        return sum(len(tree.nodes) for trees in model._predictors for tree in trees)
    estimators = np.asarray(getattr(model, "estimators_", []), dtype=object).ravel()
    return sum(_nodes(e) for e in estimators)


def _library(imported: Any, digest: str, compiler: str) -> str:
    """The compiled library of the model whose bytes have SHA-256 ``digest``: built once, kept."""
    import tl2cgen
    import treelite

    folder = os.path.join(settings.MODEL_CACHE.get(), "compiled")
    os.makedirs(folder, exist_ok=True)
    tag = hashlib.sha256(f"{digest}\0{treelite.__version__}\0{tl2cgen.__version__}".encode()).hexdigest()[:32]
    path = os.path.join(folder, f"{tag}.so")
    if os.path.exists(path):
        return path
    with tempfile.TemporaryDirectory(dir=folder) as work:
        built = os.path.join(work, "model.so")
        try:
            tl2cgen.export_lib(
                imported, toolchain=compiler, libpath=built, params={"parallel_comp": 16}, nthread=os.cpu_count() or 1
            )
        except Exception as e:
            raise _Unsupported(f"compiling it failed ({type(e).__name__}: {str(e)[:200]})") from e
        with contextlib.suppress(FileExistsError):
            os.replace(built, path)  # whole or absent: another process may have built the same meanwhile
    return path


def lineage(p: Payload, model: Any) -> dict[str, str]:
    """What predicted, for a job that asked for another engine than scikit-learn (and why not, if not)."""
    if p.get("engine") in (None, "sklearn"):
        return {}
    used = engine_of(model)
    why = fallback_of(model)
    if used == p.get("engine"):
        return {"velo-engine": used}
    if why is None:
        why = refused(p["model"], p["model_version"])
    reason = (why or "not compiled")[:200].encode("ascii", "backslashreplace").decode()
    return {"velo-engine": used, "velo-engine-fallback": reason}
