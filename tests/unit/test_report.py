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


def year_like(seed: int, shift: float = 0.0, rows: int = 100_000) -> Stats:
    """A feature whose spread is tiny beside its values (2020 ± 3), with a 0/1 flag beside it."""
    rng = np.random.default_rng(seed)
    s = Stats()
    s.start(["year", "flag"], labels=True)
    year = rng.normal(2020 + 3 * shift, 3, rows)
    flag = (rng.random(rows) < 0.3).astype(float)
    s.update([year, flag], (flag > 0).astype(int))
    return Stats.from_json(s.to_json())  # as stored: the coarser buckets a batch keeps


def test_a_shift_of_a_feature_with_a_tiny_spread_beside_its_values_is_seen_from_its_moments():
    ref = year_like(1)
    # 0.3 standard deviations of a year: all within two of the histogram's buckets, which see nothing
    shifted = compare(year_like(2, shift=0.3), ref)
    year = next(f for f in shifted["features"] if f["feature"] == "year")
    assert shifted["drifted"] == ["year"] and year["resolution"] == "moments" and year["ks"] > 0.1
    # And the same data resampled, and a 0/1 flag whose share holds, do not drift
    calm = compare(year_like(3), ref)
    assert calm["drifted"] == []
    flag = next(f for f in calm["features"] if f["feature"] == "flag")
    assert flag["ks"] < 0.02


def test_the_normal_ks_distance():
    from dispatcher.report import normal_ks

    assert normal_ks(0, 1, 0, 1) == 0
    assert abs(normal_ks(0.3, 1, 0, 1) - 0.1192) < 1e-3  # 2 Phi(0.15) - 1
    assert abs(normal_ks(0, 2, 0, 1) - 0.1613) < 1e-3  # spread doubled: Phi(1.36) - Phi(0.68)
    assert normal_ks(5, 0, 5, 0) == 0 and normal_ks(5, 0, 6, 0) == 1
