"""Champion vs challenger statistics (velosiped.comparison): exact counts, merges in any order, a
JSON round trip, and a home in a file's Stats."""

from __future__ import annotations

import json

import numpy as np

from velosiped.comparison import MAX_LABELS, OTHER, Comparison
from velosiped.sketch import Stats

FEATURES = ["a", "b"]


def block(seed: int, n: int = 500) -> tuple[list[np.ndarray], np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    cols = [rng.normal(size=n), rng.normal(3, 2, size=n)]
    champion = (cols[0] > 0).astype(int)
    challenger = (cols[0] + 0.5 * cols[1] > 1.5).astype(int)
    p1 = rng.uniform(size=n)
    p2 = rng.uniform(size=n)
    return cols, champion, challenger, np.column_stack([1 - p1, p1]), np.column_stack([1 - p2, p2])


def gathered(seed: int) -> Comparison:
    c = Comparison("m1", "m2", FEATURES)
    c.files = 1
    cols, y1, y2, p1, p2 = block(seed)
    c.update(cols, y1, y2, labels=True, champion_proba=p1, challenger_proba=p2)
    return c


def as_dict(c: Comparison) -> str:
    return json.dumps(c.to_dict(), sort_keys=True)


def close(a: object, b: object) -> bool:
    """Equal, floats within rounding (a sum's last bits depend on its order)."""
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(close(a[k], b[k]) for k in a)
    if isinstance(a, float) and isinstance(b, float):
        return bool(np.isclose(a, b, rtol=1e-12, atol=1e-12))
    return a == b


def test_counts_equal_numpy() -> None:
    cols, y1, y2, p1, p2 = block(1)
    c = Comparison("m1", "m2", FEATURES)
    c.update(cols, y1, y2, labels=True, champion_proba=p1, challenger_proba=p2)
    assert c.rows == len(y1)
    assert c.agreement == np.mean(y1 == y2)
    for x in (0, 1):
        for y in (0, 1):
            assert c.confusion.get(str(x), {}).get(str(y), 0) == int(np.sum((y1 == x) & (y2 == y)))
    delta = np.abs(p1 - p2).max(axis=1)
    assert np.isclose(c.delta_mean, delta.mean()) and c.delta_max == delta.max()
    differ = y1 != y2
    assert c.disagree["a"].count == differ.sum() and c.all["a"].count == len(y1)
    assert np.isclose(c.disagree["b"].mean, cols[1][differ].mean())


def test_regressor_deltas() -> None:
    a, b = np.array([1.0, 2.0, 3.0]), np.array([1.5, 2.0, 1.0])
    c = Comparison("m1", "m2", ["x"])
    c.update([np.zeros(3)], a, b, labels=False)
    assert c.agreement is None and not c.confusion
    assert c.delta_mean == np.mean(np.abs(a - b)) and c.delta_max == 2.0


def test_merge_is_associative_and_commutative() -> None:
    a, b, c = gathered(1), gathered(2), gathered(3)
    left = Comparison().merge(gathered(1)).merge(gathered(2)).merge(gathered(3))
    right = Comparison().merge(gathered(1).merge(gathered(2).merge(gathered(3))))
    other = Comparison().merge_all([c, a, b])
    assert close(left.to_dict(), right.to_dict()) and close(left.to_dict(), other.to_dict())
    assert left.rows == 1500 and left.files == 3


def test_round_trip() -> None:
    c = gathered(4)
    c.fail("s3://b/in/x.csv", "s3://b/in/x.csv: challenger rejected rows 1-10")
    again = Comparison.from_dict(json.loads(json.dumps(c.to_dict())))
    assert as_dict(again) == as_dict(c)
    assert again.failed_files == 1


def test_labels_bounded() -> None:
    n = 3 * MAX_LABELS
    c = Comparison("m1", "m2", [])
    c.update([], np.arange(n), np.arange(n), labels=True)
    assert len(c.confusion) == MAX_LABELS + 1 and OTHER in c.confusion
    assert sum(sum(row.values()) for row in c.confusion.values()) == n


def test_stats_carry_it() -> None:
    s1, s2 = Stats(), Stats()
    s1.start(FEATURES, labels=True)
    s2.start(FEATURES, labels=True)
    s1.comparison, s2.comparison = gathered(5), gathered(6)
    merged = Stats().merge_all([Stats.from_json(s1.to_json()), Stats.from_json(s2.to_json())])
    assert merged.comparison is not None
    assert close(merged.comparison.to_dict(), gathered(5).merge(gathered(6)).to_dict())
    plain = Stats()
    assert Stats.from_json(plain.to_json()).comparison is None
