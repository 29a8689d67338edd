"""This machine's own 1 -> 2 process scaling, on CPU-only work: no files, no I/O, no Redis.

    python -m bench.cpu --processes N

Runs 8 equal pieces of work (a pure-Python loop and a numpy kernel, as CSV parsing mixes both)
in a pool of N processes and prints the seconds from the first piece started to the last one
done. The 1 -> 2 ratio of this loop is the ceiling any scorer's 1 -> 2 ratio meets on this machine.
"""

from __future__ import annotations

import argparse
import time
from concurrent.futures import ProcessPoolExecutor

import numpy as np


def piece(_: int) -> tuple[float, float]:
    started = time.time()
    total = 0
    for i in range(3_000_000):
        total += i * i
    a = np.random.default_rng(0).normal(size=1_000_000)
    for _ in range(30):
        a = np.sqrt(a * a + 1.0)
    return started, time.time()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--processes", type=int, default=1)
    args = ap.parse_args()
    with ProcessPoolExecutor(args.processes) as pool:
        spans = list(pool.map(piece, range(8)))
    print(f"first piece started to last piece done: {max(e for _, e in spans) - min(s for s, _ in spans):.3f}")


if __name__ == "__main__":
    main()
