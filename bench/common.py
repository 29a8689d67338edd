"""What the benchmarks share: a private redis-server, and writing one section of docs/BENCHMARKS.md."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import re
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import psutil
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import redis

DOC = Path(__file__).resolve().parent.parent / "docs" / "BENCHMARKS.md"
FEATURES = [f"f{i}" for i in range(20)]


def wall_time() -> str:
    """This benchmark's wall time so far, from its process's start: printed at its end, written under its section."""
    seconds = time.time() - psutil.Process().create_time()
    return f"Wall time of this benchmark (data generation and model fitting included): {seconds:.0f} s."


def big_csv(path: Path, size: float, block_rows: int = 100_000) -> int:
    """A CSV of at least ``size`` bytes (`id` + ``FEATURES``, 6 decimals, ~190 bytes a row); its rows.

    Written once: reused while it and its ``.json`` record (rows, bytes) are there.
    """
    meta = path.with_name(path.name + ".json")
    if path.exists() and meta.exists():
        return int(json.loads(meta.read_text())["rows"])
    started = time.perf_counter()
    rows = _write_big_csv(path, size, block_rows)
    meta.write_text(json.dumps({"rows": rows, "bytes": path.stat().st_size}))
    took = time.perf_counter() - started
    print(f"generated {path} ({path.stat().st_size / 1e9:.2f} GB, {rows:,} rows) in {took:.0f} s", flush=True)
    return rows


def _write_big_csv(path: Path, size: float, block_rows: int) -> int:
    """Write the CSV (see big_csv).

    Fast, as a benchmark's set-up should be: one block of ``block_rows`` rows of normal features
    is generated and formatted once, then written again and again behind fresh ids (0, 1, 2, ...),
    each row's line assembled by pyarrow, not by Python. Deterministic; flat in memory. Written
    under a temporary name and renamed once whole.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    x = np.random.default_rng(0).normal(size=(block_rows, len(FEATURES))).round(6)
    sink = pa.BufferOutputStream()
    pacsv.write_csv(
        pa.table({f: x[:, j] for j, f in enumerate(FEATURES)}), sink, pacsv.WriteOptions(include_header=False)
    )
    text = sink.getvalue()  # the block's lines, each ending with a newline: cut them apart where they end
    ends = np.flatnonzero(np.frombuffer(text, dtype=np.uint8) == ord("\n")) + 1
    offsets = pa.py_buffer(np.concatenate([[0], ends]).astype(np.int32))
    lines = pa.StringArray.from_buffers(len(ends), offsets, text)
    tmp = path.with_name(path.name + ".tmp")
    rows = 0
    with open(tmp, "wb") as out:
        out.write((",".join(["id", *FEATURES]) + "\n").encode())
        while out.tell() < size:
            ids = pc.cast(pa.array(np.arange(rows, rows + block_rows)), pa.string())
            block = pc.binary_join_element_wise(ids, lines, ",")
            offsets = np.frombuffer(block.buffers()[1], dtype=np.int32, count=len(block) + 1)
            out.write(memoryview(block.buffers()[2])[offsets[0] : offsets[-1]])
            rows += block_rows
    tmp.rename(path)
    return rows


def machine() -> str:
    return (
        f"Run {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC on {platform.node() or 'this machine'}: "
        f"{os.cpu_count()} cores, {platform.machine()}, Python {platform.python_version()}."
    )


def write_section(title: str, lines: list[str], path: Path = DOC) -> None:
    """Replace the ``## title`` section of ``path`` with ``lines`` (or add it at the end)."""
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    body = f"## {title}\n\n" + "\n".join(lines).rstrip() + "\n"
    pattern = re.compile(rf"^## {re.escape(title)}\n.*?(?=^## |\Z)", flags=re.S | re.M)
    text = pattern.sub(lambda _: body + "\n", text, count=1) if pattern.search(text) else text.rstrip() + "\n\n" + body
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text.rstrip() + "\n")


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def private_redis() -> Iterator[str]:
    """A redis-server of our own on a free loopback port, without persistence; yields its URL."""
    if not shutil.which("redis-server"):
        raise SystemExit("bench: needs redis-server (apt-get install redis-server)")
    port = free_port()
    with tempfile.TemporaryDirectory() as d:
        server = subprocess.Popen(
            ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--dir", d],
            stdout=subprocess.DEVNULL,
        )
        try:
            client = redis.Redis(port=port)
            for _ in range(100):
                try:
                    client.ping()
                    break
                except redis.ConnectionError:
                    time.sleep(0.05)
            yield f"redis://127.0.0.1:{port}/0"
        finally:
            server.terminate()
            server.wait()
