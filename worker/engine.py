"""The opt-in faster predict for tree ensembles (``--engine treelite``).

The scikit-learn model is imported into Treelite and compiled to a shared library with TL2cgen
(and the machine's C compiler), once per model version: the library is kept on disk under the
model cache, named by the model's SHA-256, and loaded once per process. Chosen by measurement
(docs/BENCHMARKS.md, "Tree engines"): on the benchmark's HistGradientBoosting model the compiled
predict gives the same probabilities as scikit-learn to 1e-15, several times faster; skl2onnx 1.20
could not convert that model, and onnxruntime was no faster than scikit-learn on its forest.
TL2cgen's own predictor (every tree for one row, then the next row) was slower than scikit-learn on
that forest, whose code outgrows the CPU's caches: the library is called through :data:`_DRIVER`,
one tree over a block of rows at a time.

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
import ctypes
import hashlib
import io
import logging
import os
import shutil
import sys
import tempfile
import warnings
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
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
    "GradientBoostingClassifier",
    "GradientBoostingRegressor",
)
"""Models whose trees compare float32 features (scikit-learn casts X first): so does the engine."""

_SUPPORTED = (*_FLOAT32_TREES, "HistGradientBoostingClassifier", "HistGradientBoostingRegressor")

MAX_NODES = 300_000
"""Models with more tree nodes are not compiled: compile time grows with them (the benchmark's
100-tree forest of depth 12, 122,564 nodes, compiles in about 30 s with 2 cores)."""

OPTIMIZE = "-Os"
"""gcc's optimisation of the model's code: on that forest -Os compiled as fast as -O1 and predicted
fastest (-O1, -O2 and TL2cgen's default -O3 no faster, -O3 ~8 times slower to compile)."""

BLOCK_ENTRIES = 1 << 19
"""Feature values of the rows each tree scores in turn (4 MB): see :data:`_DRIVER`."""

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
        import tl2cgen  # noqa: F401  (it writes and builds the model's C: see _library)
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
        # workers, and each then scores with its own share of the cores (VELO_THREADS).
        if not loaded:
            loaded.append(_Library(path, int(settings.THREADS.get() or os.cpu_count() or 1)))
        return loaded[0].predict(x)

    return predict


class _Library:
    """The compiled model's library, called through its :data:`_DRIVER` (``velo_predict``)."""

    def __init__(self, path: str, threads: int) -> None:
        lib = ctypes.CDLL(path)
        self._run = lib.velo_predict
        self._run.argtypes = [ctypes.c_void_p, ctypes.c_int64, ctypes.c_void_p, ctypes.c_int64]
        self._run.restype = ctypes.c_int
        self.features = int(lib.velo_num_feature())
        self.outputs = int(lib.velo_num_output())
        self.threads = max(1, threads)

    def predict(self, x: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(x, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != self.features:
            raise ValueError(f"the compiled model takes {self.features} features, got an array of shape {x.shape}")
        out = np.zeros((len(x), self.outputs), dtype=np.float64)
        block = max(64, BLOCK_ENTRIES // max(1, self.features))
        parts = np.array_split(np.arange(len(x)), min(self.threads, max(1, len(x) // block)))
        spans = [(int(p[0]), int(p[-1]) + 1) for p in parts if len(p)]

        def run(span: tuple[int, int]) -> int:  # ctypes lets go of the GIL meanwhile
            lo, hi = span
            return int(self._run(x[lo:].ctypes.data, hi - lo, out[lo:].ctypes.data, block))

        if len(spans) > 1:
            with ThreadPoolExecutor(len(spans)) as pool:
                codes = list(pool.map(run, spans))
        else:
            codes = [run(span) for span in spans]
        if any(codes):
            raise MemoryError("the compiled model could not allocate its block of rows")
        return out


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
    recipe = f"{treelite.__version__}\0{tl2cgen.__version__}\0{OPTIMIZE}\0{_DRIVER_VERSION}"
    tag = hashlib.sha256(f"{digest}\0{recipe}".encode()).hexdigest()[:32]
    path = os.path.join(folder, f"{tag}.so")
    if os.path.exists(path):
        return path
    with tempfile.TemporaryDirectory(dir=folder) as work:
        try:
            # One translation unit per tree (TL2cgen's predict_unit<i>), each compiled alone in parallel
            tl2cgen.generate_c_code(imported, work, params={"parallel_comp": max(2, int(imported.num_tree))})
            _add_driver(work)
            built = tl2cgen.create_shared(
                compiler, work, nthread=os.cpu_count() or 1, options=[OPTIMIZE], long_build_time_warning=False
            )
        except _Unsupported:
            raise
        except Exception as e:
            raise _Unsupported(f"compiling it failed ({type(e).__name__}: {str(e)[:200]})") from e
        with contextlib.suppress(FileExistsError):
            os.replace(built, path)  # whole or absent: another process may have built the same meanwhile
    return path


_DRIVER_VERSION = 1
"""Part of the library's name: a library built with another driver is not reused."""

_DRIVER = """#include "header.h"

typedef void (*velo_unit)(union Entry*, double*);
static const velo_unit velo_units[] = {{ {units} }};
#define VELO_N_UNITS {n_units}
#define VELO_NF {features}
#define VELO_NOUT (N_TARGET * MAX_N_CLASS)

int32_t velo_num_feature(void) {{ return VELO_NF; }}
int32_t velo_num_output(void) {{ return VELO_NOUT; }}

/* TL2cgen's predict() but for its predict_unit<i> calls (the trees), which velo_predict makes */
static void velo_finish(union Entry* data, int pred_margin, double* result) {{
{finish}}}

/* Scores n rows of x (row-major float64, NaN: missing) into out (n x VELO_NOUT, zeroed), a block of
   rows at a time, each tree over the whole block before the next tree: TL2cgen's own predictor runs
   every tree for one row before the next row, and then a forest's code no longer fits the CPU's
   caches. The sums are made in the same order (tree by tree), so the results are the same. */
int velo_predict(const double* x, int64_t n, double* out, int64_t block) {{
  union Entry* rows = (union Entry*)malloc(sizeof(union Entry) * block * VELO_NF);
  if (!rows) return 1;
  for (int64_t start = 0; start < n; start += block) {{
    int64_t m = n - start < block ? n - start : block;
    const double* xs = x + start * VELO_NF;
    double* o = out + start * VELO_NOUT;
    for (int64_t i = 0; i < m * VELO_NF; ++i) {{
      if (isnan(xs[i])) {{
        rows[i].missing = -1;
      }} else {{
        rows[i].fvalue = xs[i];
      }}
    }}
    for (int u = 0; u < VELO_N_UNITS; ++u) {{
      velo_unit unit = velo_units[u];
      for (int64_t r = 0; r < m; ++r) unit(rows + r * VELO_NF, o + r * VELO_NOUT);
    }}
    for (int64_t r = 0; r < m; ++r) velo_finish(rows + r * VELO_NF, 0, o + r * VELO_NOUT);
  }}
  free(rows);
  return 0;
}}
"""
"""The C that drives TL2cgen's code (its predict_unit<i> functions and the tail of its predict())."""


def _add_driver(folder: str) -> None:
    """Write :data:`_DRIVER` for the code TL2cgen generated in ``folder`` and add it to its build recipe.

    Only the code's known shape is taken (float64 features and outputs, a predict() that calls
    predict_unit<i> in order and then finishes); any other and the model is not compiled."""
    import json
    import re

    def read(name: str) -> str:
        with open(os.path.join(folder, name), encoding="utf-8") as f:
            return f.read()

    header, main = read("header.h"), read("main.c")
    units = re.findall(r"^void (predict_unit\d+)\(union Entry\* data, double\* result\);$", header, flags=re.M)
    body = re.search(
        r"^void predict\(union Entry\* data, int pred_margin, double\* result\) \{\n(.*?)^\}", main, re.S | re.M
    )
    features = re.search(r"int32_t get_num_feature\(void\) \{\s*return (\d+);", main)
    call = r"^[ \t]*(predict_unit\d+)\(data, result\);\n"
    if body is None or features is None or "double fvalue;" not in header or "int missing;" not in header:
        raise _Unsupported("TL2cgen generated code of a shape the engine does not drive")
    if re.findall(call, body.group(1), flags=re.M) != units:
        raise _Unsupported("TL2cgen generated code of a shape the engine does not drive (its trees' calls)")
    if units and not re.fullmatch(r"\s*(unsigned int tmp;\s*)?", body.group(1).split(f"{units[0]}(", 1)[0]):
        # anything before the trees (quantizing the features, say) would run after them in velo_finish
        raise _Unsupported("TL2cgen generated code of a shape the engine does not drive (work before its trees)")
    source = _DRIVER.format(
        units=", ".join(units) or "0",
        n_units=len(units),
        features=features.group(1),
        finish=re.sub(call, "", body.group(1), flags=re.M),
    )
    with open(os.path.join(folder, "velo_driver.c"), "w", encoding="utf-8") as f:
        f.write(source)
    with open(os.path.join(folder, "recipe.json"), encoding="utf-8") as f:
        recipe = json.load(f)
    recipe["sources"].append({"name": "velo_driver", "length": source.count("\n")})
    with open(os.path.join(folder, "recipe.json"), "w", encoding="utf-8") as f:
        json.dump(recipe, f)


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
