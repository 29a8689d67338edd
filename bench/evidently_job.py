"""Evidently 0.7's DataDriftPreset on the CSVs of two folders: what users would run instead of `velo report`.

python bench/evidently_job.py REFERENCE_DIR CURRENT_DIR  (in a venv with evidently 0.7 and pandas < 3)

Prints one JSON object: seconds to import Evidently, to read the CSVs (pandas), to compute the
drift (Report.run), the columns it flagged with each one's score, method and threshold, and this
process's peak RSS (VmHWM). The ``id`` column is left out, as `velo report` only judges features.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path


def peak_rss() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


def main(reference: str, current: str) -> None:
    started = time.perf_counter()
    import pandas as pd
    from evidently import Report
    from evidently.presets import DataDriftPreset

    imported = time.perf_counter()

    def read(folder: str) -> pd.DataFrame:
        frames = [pd.read_csv(p) for p in sorted(Path(folder).glob("*.csv")) if ".out." not in p.name]
        return pd.concat(frames, ignore_index=True).drop(columns=["id"])

    ref, cur = read(reference), read(current)
    read_done = time.perf_counter()
    snapshot = Report([DataDriftPreset()]).run(current_data=cur, reference_data=ref)
    computed = time.perf_counter()
    columns = {}
    for metric in snapshot.dict()["metrics"]:
        config = metric.get("config", {})
        if not config.get("type", "").endswith("ValueDrift"):
            continue
        method, threshold, value = config["method"], float(config["threshold"]), float(metric["value"])
        # A p-value drifts below its threshold; a distance (Wasserstein, PSI, ...) at or above it
        drifted = value < threshold if "p_value" in method else value >= threshold
        columns[config["column"]] = {"score": value, "method": method, "threshold": threshold, "drift": drifted}
    print(
        json.dumps(
            {
                "import_seconds": imported - started,
                "read_seconds": read_done - imported,
                "drift_seconds": computed - read_done,
                "rows": [len(ref), len(cur)],
                "drifted": sorted((c for c, v in columns.items() if v["drift"]), key=lambda c: (len(c), c)),
                "columns": columns,
                "peak_rss": peak_rss(),
            }
        )
    )


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
