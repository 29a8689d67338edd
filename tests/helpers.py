"""Deterministic test data, models and the spec'd expected output, shared by unit and e2e tests."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import re
from pathlib import Path

import joblib
import numpy as np
import pandas as pd

GZIP_MAGIC = b"\x1f\x8b"


# ------------------------------------------------------------------------------------------------ data


def feature_names(n_features: int = 4) -> list[str]:
    return [f"f{i}" for i in range(n_features)]


def make_frame(n_rows: int, n_features: int = 4, seed: int = 0) -> pd.DataFrame:
    """Columns `id` (int, 0..n-1) then `f0..f{n-1}` (floats rounded to 6 decimals); same seed, same frame."""
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({"id": np.arange(n_rows, dtype=np.int64)})
    for name in feature_names(n_features):
        frame[name] = np.round(rng.normal(size=n_rows), 6)
    return frame


def csv_bytes(df: pd.DataFrame) -> bytes:
    return df.to_csv(index=False).encode()


def gz_bytes(df: pd.DataFrame) -> bytes:
    return gzip.compress(csv_bytes(df), mtime=0)


def write_csv(path: Path, df: pd.DataFrame) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gz_bytes(df) if path.name.endswith(".gz") else csv_bytes(df))
    return path


# ---------------------------------------------------------------------------------------------- models


def _training_frame(n_features: int) -> pd.DataFrame:
    return make_frame(500, n_features=n_features, seed=12345)


def fit_model(kind: str = "logreg", n_features: int = 4, with_names: bool = True):
    """A small fitted scikit-learn classifier.

    kind="logreg": binary LogisticRegression, label `f0 + f1 > 0` (0/1).
    kind="multiclass": LogisticRegression with the three string classes "a", "b", "c".
    with_names=False fits on a numpy array, so the model has no `feature_names_in_`.
    """
    from sklearn.linear_model import LogisticRegression

    frame = _training_frame(n_features)
    features = frame[feature_names(n_features)]
    if kind == "logreg":
        labels = (features["f0"] + features["f1"] > 0).astype(int)
    elif kind == "multiclass":
        score = features["f0"] - features["f1"]
        labels = pd.Series(np.select([score < -0.6, score < 0.6], ["a", "b"], default="c"))
    else:
        raise ValueError(f"unknown model kind {kind!r}")
    model = LogisticRegression(max_iter=1000)
    model.fit(features if with_names else features.to_numpy(), labels)
    return model


def dump_model(model, path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    joblib.dump(model, path)
    return path


def model_bytes(model) -> bytes:
    buffer = io.BytesIO()
    joblib.dump(model, buffer)
    return buffer.getvalue()


class Boobytrap:
    """Unpickling it creates `marker`: the proof that a model file was loaded."""

    def __init__(self, marker: Path) -> None:
        self.marker = Path(marker)

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def boobytrapped_model(path: Path, marker: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    joblib.dump(Boobytrap(marker), path)
    assert not marker.exists(), "dumping the booby-trapped model ran it"
    return path


# ------------------------------------------------------------------------------------- expected output


def expected_output(df: pd.DataFrame, model, keep=None, proba: bool = False) -> pd.DataFrame:
    """What the spec says a worker writes for input `df`.

    The kept input columns in input order (all by default), then `prediction`, then with `proba` one
    `proba_<class>` column per class in `model.classes_` order. Features: `feature_names_in_` by name,
    or every input column in order for a model fitted without names. The input goes through CSV first,
    as it does on its way to a worker.
    """
    df = pd.read_csv(io.BytesIO(csv_bytes(df)))
    named = hasattr(model, "feature_names_in_")
    features = df[list(model.feature_names_in_)] if named else df.to_numpy()
    if isinstance(keep, str):
        keep = keep.split(",")
    kept = list(df.columns) if keep is None else [c for c in df.columns if c in set(keep)]
    out = df[kept].copy()
    if len(df):
        out["prediction"] = model.predict(features)
    else:
        out["prediction"] = pd.Series([], dtype=object)
    if proba:
        probabilities = model.predict_proba(features) if len(df) else np.empty((0, len(model.classes_)))
        for i, cls in enumerate(model.classes_):
            out[f"proba_{cls}"] = probabilities[:, i]
    return out.reset_index(drop=True)


def read_output(data) -> pd.DataFrame:
    """An output (bytes, or a path to a file) as a DataFrame; gzip is detected by its magic bytes."""
    if isinstance(data, (str, Path)):
        data = Path(data).read_bytes()
    if data[:2] == GZIP_MAGIC:
        data = gzip.decompress(data)
    return pd.read_csv(io.BytesIO(data))


def assert_output_matches(actual: pd.DataFrame, expected: pd.DataFrame, tol: float = 1e-9) -> None:
    """Same column names in the same order, same rows in the same order, same values (floats within tol)."""
    assert list(actual.columns) == list(expected.columns), (
        f"columns differ: {list(actual.columns)} != {list(expected.columns)}"
    )
    assert len(actual) == len(expected), f"row count differs: {len(actual)} != {len(expected)}"
    for column in expected.columns:
        got = actual[column].reset_index(drop=True)
        want = expected[column].reset_index(drop=True)
        if len(want) == 0:
            continue
        if pd.api.types.is_numeric_dtype(want) and not pd.api.types.is_bool_dtype(want):
            assert pd.api.types.is_numeric_dtype(got), f"column {column!r} is not numeric: {got.head().tolist()}"
            np.testing.assert_allclose(
                got.to_numpy(dtype=float),
                want.to_numpy(dtype=float),
                rtol=tol,
                atol=tol,
                err_msg=f"column {column!r} differs",
            )
        else:
            assert got.astype(str).tolist() == want.astype(str).tolist(), f"column {column!r} differs"


# --------------------------------------------------------------------------------------- CLI parsing

DISPATCH_LINE = re.compile(r"^batch (?P<id>\S+): (?P<enqueued>\d+) enqueued, (?P<skipped>\d+) skipped$")
DRY_RUN_LINE = re.compile(r"^dry run: (?P<enqueued>\d+) would be enqueued, (?P<skipped>\d+) skipped$")
DRY_RUN_REASONS = {
    "new",
    "input changed",
    "model changed",
    "options changed",
    "forced",
    "already done",
    "failed before",
    "already queued",
}


def _lines(stdout: str) -> list[str]:
    return [line.rstrip() for line in stdout.splitlines() if line.strip()]


COUNTERS = ("total", "queued", "running", "done", "failed")
"""A batch's file counters, as `velo status --json` gives them."""


def counters(batch: dict) -> dict:
    """A batch's file counters alone, from what `velo status --json` says of it."""
    return {k: batch[k] for k in COUNTERS}


def batch_status(velo, redis_url: str, batch_id: str) -> dict:
    """`velo status BATCH --json`: the batch's description."""
    result = velo("status", batch_id, "--json", "--redis", redis_url, check=0, timeout=30)
    [batch] = json.loads(result.stdout)["batches"]
    return batch


def parse_dispatch(stdout: str) -> tuple[str, int, int]:
    """(batch id, enqueued, skipped) from the last stdout line `batch <ID>: <E> enqueued, <S> skipped`."""
    lines = _lines(stdout)
    assert lines, "dispatch printed nothing on stdout"
    match = DISPATCH_LINE.match(lines[-1].strip())
    assert match, f"last stdout line is not `batch <ID>: <E> enqueued, <S> skipped`: {lines[-1]!r}"
    return match["id"], int(match["enqueued"]), int(match["skipped"])


def find_dispatch_line(stdout: str) -> tuple[str, int, int]:
    """Like parse_dispatch, for commands (`velo run`) that print more after the dispatch line."""
    for line in reversed(_lines(stdout)):
        match = DISPATCH_LINE.match(line.strip())
        if match:
            return match["id"], int(match["enqueued"]), int(match["skipped"])
    raise AssertionError(f"no `batch <ID>: <E> enqueued, <S> skipped` line in:\n{stdout}")


def parse_dry_run(stdout: str) -> tuple[dict[str, tuple[str, str]], int, int]:
    """({input: (reason, output)}, would be enqueued, skipped) from `velo dispatch --dry-run` stdout."""
    lines = _lines(stdout)
    assert lines, "dry run printed nothing on stdout"
    summary = DRY_RUN_LINE.match(lines[-1].strip())
    assert summary, f"last stdout line is not `dry run: <E> would be enqueued, <S> skipped`: {lines[-1]!r}"
    plan: dict[str, tuple[str, str]] = {}
    for line in lines[:-1]:
        parts = line.split("\t")
        if len(parts) not in (3, 4) or parts[0] not in DRY_RUN_REASONS:
            continue  # not a plan line (e.g. a heading): ignored
        reason, source, output = parts[:3]  # a 4th column says how many shards a big file gets
        assert source not in plan, f"{source} planned twice"
        plan[source] = (reason, output)
    return plan, int(summary["enqueued"]), int(summary["skipped"])


def output_key(key: str, suffix: str = ".out") -> str:
    """`a/1.csv` -> `a/1.out.csv`, `a/1.csv.gz` -> `a/1.out.csv.gz`."""
    for ext in (".csv.gz", ".csv"):
        if key.endswith(ext):
            return key[: -len(ext)] + suffix + ext
    raise ValueError(key)


def processes_in(folder) -> list[str]:
    """Command lines of the processes whose working directory is under folder (Linux /proc).

    An embedded redis-server chdirs to the folder of its database file: this finds one left behind.
    """
    folder = str(Path(folder).resolve())
    found = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            cwd = str((proc / "cwd").readlink())
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if cwd == folder or cwd.startswith(folder + "/"):
            found.append(f"{proc.name}: {cmdline.strip()}")
    return found


def is_sidecar(name: str) -> bool:
    """Lineage sidecars (`*.velo.json`) the product may write next to outputs."""
    return str(name).endswith(".velo.json")


def assert_clean_error(result, *mentions: str) -> str:
    """Exit 2, exactly one line on stderr (`velo: <what failed>; <how to fix>`), no traceback anywhere.

    Each of `mentions` must appear in that line (case-insensitive). Returns the line.
    """
    where = f"\n[exit {result.returncode}]\n--- stdout ---\n{result.stdout}\n--- stderr ---\n{result.stderr}"
    assert "Traceback" not in result.stdout + result.stderr, "traceback printed" + where
    assert result.returncode == 2, "expected exit 2" + where
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected exactly one line on stderr, got {len(lines)}" + where
    line = lines[0]
    assert line.startswith("velo: "), "stderr line does not start with `velo: `" + where
    assert "; " in line, "stderr line is not `velo: <what failed>; <how to fix>`" + where
    for mention in mentions:
        assert mention.lower() in line.lower(), f"stderr line does not mention {mention!r}" + where
    return line


# ------------------------------------------------------------------------------ processes and waiting

SHARED_REDIS_PORT = 6379
"""The machine's own Redis: tests never use it."""


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (never the shared Redis port)."""
    import socket

    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        if port != SHARED_REDIS_PORT:
            return port


def wait_until(predicate, timeout: float, interval: float = 0.2, message: str = "condition"):
    """Call `predicate()` until it returns something truthy (returned) or `timeout` seconds pass (fail)."""
    import time

    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {message}")
        time.sleep(interval)


def kill_group(proc, sig=None) -> None:
    """Send `sig` (default SIGKILL) to the process group `proc` leads (started with start_new_session)."""
    import contextlib
    import os
    import signal

    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL if sig is None else sig)


def slow_frame(n_blocks: int, block_size: int, n_features: int = 4, seed: int = 0) -> pd.DataFrame:
    """A frame whose CSV spans at least `n_blocks` parser blocks of `block_size` bytes."""
    rows = max(1, (n_blocks * block_size) // 40 + 1)  # make_frame rows are 40-50 bytes of CSV
    frame = make_frame(rows, n_features=n_features, seed=seed)
    while len(csv_bytes(frame)) < n_blocks * block_size:
        rows = rows * 5 // 4 + 1
        frame = make_frame(rows, n_features=n_features, seed=seed)
    return frame


def assert_last_velo_line(stderr: str, *mentions: str) -> str:
    """For a long-running command whose stderr also holds log lines: no traceback, exactly one
    `velo: ...` line, and it is the last line; each of `mentions` appears in it. Returns it."""
    where = f"\n--- stderr ---\n{stderr}"
    assert "Traceback" not in stderr, "traceback printed" + where
    lines = [line for line in stderr.splitlines() if line.strip()]
    velo_lines = [line for line in lines if line.startswith("velo: ")]
    assert len(velo_lines) == 1, f"expected exactly one `velo: ` line, got {len(velo_lines)}" + where
    assert lines[-1] == velo_lines[0], "the `velo: ` line is not the last line" + where
    for mention in mentions:
        assert mention.lower() in velo_lines[0].lower(), f"`velo: ` line does not mention {mention!r}" + where
    return velo_lines[0]


def push_job(queue, job_id: str, payload: dict, **enqueue: object):
    """A scoring job pushed straight into Redis, as a hostile or buggy client could: its payload (any
    fields, any types) where a worker looks for it (velosiped.payloads' layout), the job by RQ's own API."""
    own = ("input", "input_version", "output")
    options = json.dumps({k: v for k, v in payload.items() if k not in own}, separators=(",", ":"), sort_keys=True)
    digest = hashlib.sha256(options.encode()).hexdigest()[:16]
    conn = queue.connection
    conn.set(f"velo:options:{digest}", options)
    conn.hset("velo:payloads", job_id, json.dumps([digest, *(payload[k] for k in own)]))
    return queue.enqueue_call("worker.task.score", job_id=job_id, **enqueue)


def a_payload(**fields: object) -> dict:
    """A job payload with every required field (one local file, one model), ``fields`` set on top."""
    return {
        "input": "/a.csv",
        "input_version": "v",
        "output": "/a.out.csv",
        "model": "/m",
        "model_version": "m",
        "model_sha256": None,
        "keep": None,
        "proba": False,
        "features": None,
        "sep": ",",
        "encoding": "utf-8",
        "batch": "b",
        **fields,
    }
