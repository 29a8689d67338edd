"""`velo report`'s comparison (dispatcher.report.compare) and HTML page, from statistics alone."""

from __future__ import annotations

import numpy as np

from dispatcher.report import compare, render_html
from velosiped.sketch import Stats

NAMES = ["a", "b", "c"]


def stats_of(seed: int, shift: float = 0.0, labels: bool = True, nulls: int = 0, scale: float = 1.0) -> Stats:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(30_000, 3))
    x[:, 1] = x[:, 1] * scale + shift
    x[:nulls, 2] = np.nan
    s = Stats()
    s.start(NAMES, labels=labels)
    prediction = (x[:, 0] > 0).astype(int) if labels else x[:, 0] * 2
    s.update(list(x.T), prediction)
    return s


def test_a_shift_a_spread_and_nothing():
    ref = stats_of(1)
    shifted = compare(stats_of(2, shift=0.5), ref)
    assert shifted["drifted"] == ["b"] and shifted["features"][0]["feature"] == "b"
    assert shifted["features"][0]["psi"] > 0.1
    wider = compare(stats_of(3, scale=1.5), ref)  # the same mean, a wider spread: values outside the range too
    assert wider["drifted"] == ["b"] and wider["features"][0]["outside"] > 0
    calm = compare(stats_of(4), ref)
    assert calm["drifted"] == [] and not calm["drift"]


def test_nulls_and_the_prediction():
    r = compare(stats_of(5, nulls=3_000), stats_of(1))
    c = next(f for f in r["features"] if f["feature"] == "c")
    assert c["null_share"] == 0.1 and c["nulls"] == 3_000
    assert r["prediction"]["kind"] == "classes" and set(r["prediction"]["shares"]) == {"0", "1"}
    assert r["prediction"]["psi"] < 0.01
    numeric = compare(stats_of(6, labels=False), stats_of(1, labels=False))
    assert numeric["prediction"]["kind"] == "number" and not numeric["prediction"]["drift"]


def test_alone_and_html_is_self_contained():
    cur = stats_of(2, shift=0.5)
    alone = compare(cur, None)
    assert alone["reference_rows"] is None and [f["feature"] for f in alone["features"]] == NAMES
    page = render_html({"batch": "B<1>", "reference": None, **alone}, cur, None)
    assert "<svg" in page and "B&lt;1&gt;" in page and "http" not in page
    ref = stats_of(1)
    page = render_html({"batch": "B", "reference": "R", **compare(cur, ref)}, cur, ref)
    assert page.count("<svg") == 3 and "DRIFT" in page and "http" not in page
