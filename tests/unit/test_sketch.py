"""Statistics gathered while scoring (velosiped.sketch): exact moments, 1 % quantiles, merges in any
order, compact JSON, bounded size; stored per file in the batch, a failed file's dropped."""

from __future__ import annotations

import io

import numpy as np
import pytest

from tests.helpers import a_payload, csv_bytes, fit_model, make_frame
from velosiped import keys
from velosiped.jobs import validate
from velosiped.sketch import MAX_BUCKETS, STORED_BUCKETS, Sketch, Stats, load_batch, store
from velosiped.state import FileState, set_state
from worker.scoring import score_stream

QS = [0.01, 0.05, 0.1, 0.25, 0.75, 0.9, 0.95, 0.99]


def sketch_of(values, blocks: int = 1) -> Sketch:
    s = Sketch()
    for part in np.array_split(np.asarray(values, dtype=float), blocks):
        s.update(part)
    return s


def same(a: Sketch, b: Sketch) -> None:
    assert (a.count, a.nulls, a.min, a.max) == (b.count, b.nulls, b.min, b.max)
    assert a.keys.tolist() == b.keys.tolist() and a.weights.tolist() == b.weights.tolist()
    assert a.mean == pytest.approx(b.mean, rel=1e-12, abs=1e-12)
    assert a.variance == pytest.approx(b.variance, rel=1e-12)


def test_moments_are_exact_and_quantiles_within_one_percent_of_numpy():
    x = np.random.default_rng(1).normal(size=100_000)
    s = sketch_of(x, blocks=7)
    assert s.count == x.size and s.min == x.min() and s.max == x.max()
    assert s.mean == pytest.approx(x.mean(), abs=1e-12)
    assert s.variance == pytest.approx(x.var(), rel=1e-12)
    got, want = s.quantile(QS), np.quantile(x, QS)
    assert np.all(np.abs(got / want - 1) <= 0.015), got / want - 1
    # Away from zero every quantile is within the relative accuracy
    y = np.random.default_rng(2).normal(50, 10, size=100_000)
    qs = np.linspace(0.01, 0.99, 99)
    assert np.all(np.abs(sketch_of(y).quantile(qs) / np.quantile(y, qs) - 1) <= 0.015)
    # and the CDF at a quantile gives its share back
    assert s.cdf(np.quantile(x, [0.1, 0.5, 0.9])) == pytest.approx([0.1, 0.5, 0.9], abs=0.01)


def test_merge_is_associative_commutative_and_equals_one_pass():
    rng = np.random.default_rng(3)
    a, b, c = rng.normal(size=5_000), rng.exponential(size=7_000) * 100, -rng.lognormal(size=3_000)
    left = sketch_of(a).merge(sketch_of(b)).merge(sketch_of(c))
    right = sketch_of(a).merge(sketch_of(b).merge(sketch_of(c)))
    swapped = sketch_of(c).merge(sketch_of(a)).merge(sketch_of(b))
    whole = sketch_of(np.concatenate([a, b, c]))
    for other in (right, swapped, whole):
        same(left, other)
    assert left.merge(Sketch()).count == whole.count  # the empty sketch merges as nothing


def test_variance_far_from_zero_stays_exact():
    x = 1e9 + np.random.default_rng(6).normal(size=50_000)  # e.g. timestamps: cancellation in sum of squares
    assert sketch_of(x, blocks=5).variance == pytest.approx(x.var(), rel=1e-6)


def test_nulls_zeros_and_infinities():
    s = sketch_of([np.nan, 0.0, -0.0, 1e-12, 1.0, -1.0, np.nan, np.inf])
    assert (s.count, s.nulls) == (6, 2)
    assert s.max == np.inf and s.quantile(1.0) == np.inf
    assert s.quantile(0.0) == -1.0
    assert s.cdf(0.0) == pytest.approx(4 / 6)  # -1 and the three zeros
    assert Sketch().quantile(0.5) != Sketch().quantile(0.5)  # NaN: nothing seen


def test_json_round_trip_is_exact_and_compact():
    rng = np.random.default_rng(4)
    stats = Stats([f"f{i}" for i in range(20)], labels=True)
    x = rng.normal(size=(20_000, 20))
    stats.update(list(x.T), np.where(x[:, 0] > 0, "yes", "no"))
    text = stats.to_json()
    back = Stats.from_json(text)
    assert back.rows == 20_000 and back.labels and back.classes == stats.classes
    for name, sketch in stats.features.items():
        same(sketch, back.features[name])
    assert back.features["f3"].quantile(0.9) == stats.features["f3"].quantile(0.9)
    # 20 features of 20,000 normal rows: well under 2 KB a feature
    assert len(text) < 20 * 2_000, len(text)


def test_size_is_bounded_whatever_the_spread():
    rng = np.random.default_rng(5)
    spread = 10.0 ** rng.uniform(-300, 300, size=200_000) * rng.choice([-1, 1], size=200_000)
    s = sketch_of(spread, blocks=20)
    assert s.keys.size <= MAX_BUCKETS and s.count == 200_000
    # the largest magnitudes keep their accuracy (the smallest were folded)
    assert s.quantile(0.9995) / np.quantile(spread, 0.9995) == pytest.approx(1, abs=0.02)
    assert len(s.to_dict()["b"]) < 24_000


def test_a_number_prediction_gets_a_sketch_a_label_class_counts():
    numbers = Stats(["a"], labels=False)
    numbers.update([np.arange(10.0)], np.arange(10.0))
    assert numbers.prediction.count == 10 and not numbers.classes
    labels = Stats(["a"], labels=True)
    labels.update([np.arange(4.0)], np.array([1, 0, 1, 1]))
    assert labels.classes == {"0": 1, "1": 3} and labels.prediction.count == 0


def test_score_stream_gathers_the_files_statistics():
    df = make_frame(3_000)
    stats = Stats()
    rows = score_stream(
        io.BytesIO(csv_bytes(df)), io.BytesIO(), fit_model(), name="a.csv", block_size=4096, stats=stats
    )
    assert rows == 3_000 and stats.rows == 3_000 and stats.files == 1
    assert list(stats.features) == ["f0", "f1", "f2", "f3"]
    assert stats.features["f2"].mean == pytest.approx(df["f2"].mean())
    assert sum(stats.classes.values()) == 3_000 and set(stats.classes) <= {"0", "1"}


def test_stored_per_file_merged_on_read_a_failed_file_dropped_expiring_with_the_batch(redis, monkeypatch):
    batch = "b1"
    redis.hset(keys.batch(batch), mapping={"total": 0, "retention": 100})
    for f in ("/d/a.csv", "/d/b.csv"):
        set_state(redis, batch, f, FileState.RUNNING)
    one = Stats(["x"])
    one.start(["x"], labels=False)
    one.update([np.arange(100.0)], np.zeros(100))
    assert store(redis, batch, "/d/a.csv", one) and store(redis, batch, "/d/b.csv", one)
    assert load_batch(redis, batch).rows == 200
    # The merge is kept, stamped with the hash's version: read again, it is the kept one
    assert redis.hget(keys.batch_stats(batch), "velo:merged").startswith(b"2 ")
    redis.hset(keys.batch_stats(batch), "velo:merged", b"2 " + Stats().to_json().encode())
    assert load_batch(redis, batch).rows == 0  # (the kept merge, doctored: proof it was read)
    store(redis, batch, "/d/b.csv", one)  # a change (a file stored again) makes it stale
    assert load_batch(redis, batch).files == 2
    set_state(redis, batch, "/d/a.csv", FileState.DONE, rows=100)
    assert redis.ttl(keys.batch_stats(batch)) == -1  # the batch has work still
    set_state(redis, batch, "/d/b.csv", FileState.FAILED, error="bad")
    merged = load_batch(redis, batch)
    assert merged.rows == 100 and merged.features["x"].count == 100  # b.csv contributes nothing
    assert 0 < redis.ttl(keys.batch_stats(batch)) <= 100  # finished: expires with the batch
    assert keys.batch_stats(batch) == keys.batch(batch) + ":stats"  # as state.lua names it
    # A batch gone keeps nothing
    assert not store(redis, "gone", "/d/a.csv", one)
    assert not redis.exists(keys.batch_stats("gone"))


def test_payload_stats_option():
    base = a_payload()
    assert validate({**base, "stats": True})["stats"] is True
    assert "stats" not in validate(dict(base))
    with pytest.raises(Exception, match="stats"):
        validate({**base, "stats": "no"})


def test_big_files_bucket_a_systematic_sample_with_exact_moments():
    from velosiped.sketch import CHUNK, EXACT_ROWS, STEP, _sample

    # Which rows are bucketed, and how much each counts, whatever the blocks: the first
    # EXACT_ROWS, then a run of CHUNK rows every STEP * CHUNK
    for start in (0, 100, EXACT_ROWS - 1, EXACT_ROWS, EXACT_ROWS + CHUNK - 1, EXACT_ROWS + STEP * CHUNK, 50_001):
        for n in (1, CHUNK - 1, CHUNK + 1, 1_000, 11_000):
            rows = np.arange(start, start + n, dtype=float)
            got = sorted((int(v), w) for part, w in _sample(rows[None, :], start) for v in part.ravel())
            want = [
                (int(r), 1 if r < EXACT_ROWS else STEP)
                for r in rows
                if r < EXACT_ROWS or (r - EXACT_ROWS) % (STEP * CHUNK) < CHUNK
            ]
            assert got == want, (start, n)

    # A file sorted by one feature, in blocks: the moments exact, the histogram's shares within 0.5 %
    rng = np.random.default_rng(7)
    n = 200_000
    x = np.stack([np.sort(rng.normal(size=n)), rng.exponential(size=n), rng.normal(5, 2, size=n)])
    x[2, ::1000] = np.nan
    stats = Stats()
    stats.start(["sorted", "exp", "nulls"], labels=True)
    for block in np.array_split(np.arange(n), 17):
        stats.update(x[:, block], (x[0, block] > 0).astype(int))
    for name, column in zip(stats.features, x, strict=True):
        s, values = stats.features[name], column[~np.isnan(column)]
        assert s.count == values.size and s.nulls == n - values.size
        assert (s.min, s.max) == (values.min(), values.max())
        assert s.mean == pytest.approx(values.mean(), rel=1e-12) and s.variance == pytest.approx(values.var(), rel=1e-9)
        assert abs(int(s.weights.sum()) - s.count) <= STEP * CHUNK  # estimated counts, about the exact total
        at = np.quantile(values, [0.05, 0.25, 0.5, 0.75, 0.95])
        # as good as ~13,000 values bucketed: a share within 3 standard errors (0.0044 each), buckets aside
        assert s.cdf(at) == pytest.approx([0.05, 0.25, 0.5, 0.75, 0.95], abs=0.015), name
    # a small file is bucketed whole: its counts exact
    small = Stats(["a"])
    small.update(rng.normal(size=(1, EXACT_ROWS)), np.zeros(EXACT_ROWS))
    assert int(small.features["a"].weights.sum()) == EXACT_ROWS


def test_stored_entries_are_small_and_merge_at_the_coarser_resolution(redis):
    from velosiped.sketch import MIN_STORED_BITS, STORED_BUCKETS

    rng = np.random.default_rng(8)
    redis.hset(keys.batch("b"), mapping={"total": 3})
    sizes = {}
    for rows in (10, 1_000, 200_000):
        stats = Stats()
        stats.start([f"f{i}" for i in range(20)], labels=True)
        for block in np.array_split(np.arange(rows), max(rows // 11_000, 1)):
            x = rng.normal(size=(20, block.size)).round(6)
            stats.update(x, (x[0] > 0).astype(int))
        assert store(redis, "b", f"/d/{rows}.csv", stats)
        raw = redis.hget(keys.batch_stats("b"), f"/d/{rows}.csv")
        sizes[rows] = len(raw)
        back = Stats.from_json(raw)
        for name, sketch in back.features.items():
            assert sketch.keys.size <= STORED_BUCKETS and sketch.bits >= MIN_STORED_BITS
            assert (sketch.count, sketch.min, sketch.max) == (rows, stats.features[name].min, stats.features[name].max)
            assert sketch.mean == stats.features[name].mean and sketch.m2 == stats.features[name].m2
            assert sketch.quantile(0.5) == pytest.approx(stats.features[name].quantile(0.5), abs=0.1)
    # 20 features: a 10-row file's entry a few KB, a 200,000-row file's well under the 57 KB it was
    assert sizes[10] < 4_000 and sizes[1_000] < 9_000 and sizes[200_000] < 16_000, sizes
    # Stored again (a file scored again), a file's entry replaces its own: never counted twice
    store(redis, "b", "/d/10.csv", Stats.from_json(redis.hget(keys.batch_stats("b"), "/d/10.csv")))
    merged = load_batch(redis, "b")
    assert merged.features["f0"].count == 201_010 and merged.files == 3
    assert merged.features["f0"].bits == min(
        Stats.from_json(raw).features["f0"].bits
        for f, raw in redis.hgetall(keys.batch_stats("b")).items()
        if not f.startswith(b"velo:")
    )
    # Coarser buckets merge with finer ones at the coarser resolution, in any order
    fine, coarse = sketch_of(rng.normal(size=5_000)), sketch_of(rng.normal(size=5_000)).compacted(64)
    assert coarse.bits < fine.bits and coarse.keys.size <= 64
    one, other = Sketch().merge(fine).merge(coarse), Sketch().merge(coarse).merge(fine)
    same(one, other)
    assert one.bits == coarse.bits and int(one.weights.sum()) == 10_000
    assert one.cdf(0.0) == pytest.approx(0.5, abs=0.02)


def test_statistics_are_on_by_default_and_no_stats_turns_them_off():
    from dispatcher.cli import cli
    from dispatcher.serve.batches import DispatchOptions
    from velosiped.api import DISPATCH_DEFAULTS

    for command in ("run", "dispatch", "watch"):
        option = next(p for p in cli.commands[command].params if p.name == "stats")
        assert option.default is True and "--no-stats" in option.secondary_opts, command
    assert DISPATCH_DEFAULTS["stats"] is True and DispatchOptions().stats is True


def test_a_column_null_at_first_is_still_bucketed_and_stored():
    from velosiped.sketch import EXACT_ROWS

    x = np.random.default_rng(9).normal(size=(2, 3 * EXACT_ROWS))
    x[1, : 2 * EXACT_ROWS] = np.nan  # values only after EXACT_ROWS rows of nulls
    stats = Stats()
    stats.start(["a", "late"], labels=False)
    for block in np.array_split(np.arange(x.shape[1]), 9):
        stats.update(x[:, block], x[0, block])
    late = Stats.from_json(stats.to_json(64)).features["late"]
    assert (late.count, late.nulls) == (EXACT_ROWS, 2 * EXACT_ROWS)
    assert int(late.weights.sum()) == EXACT_ROWS  # its first EXACT_ROWS values all bucketed
    assert late.cdf(0.0) == pytest.approx(np.mean(x[1, 2 * EXACT_ROWS :] <= 0), abs=0.02)
    empty = Sketch.from_dict({"n": 3, "nulls": 0, "min": 0.0, "max": 1.0, "mean": 0.5, "m2": 0.5})
    assert np.isnan(empty.quantile(0.5)) and np.isnan(empty.cdf(0.5))  # moments without buckets: no crash


def test_class_labels_counted_as_before_whatever_their_type():
    for prediction, want in (
        (np.array([3, 1, 3, -2, 70_000]), {"-2": 1, "1": 1, "3": 2, "70000": 1}),
        (np.array([True, False, True]), {"False": 1, "True": 2}),
        (np.array(["b", "a", "b"], dtype=object), {"a": 1, "b": 2}),
        (np.array([1, "a"], dtype=object), {"1": 1, "a": 1}),
    ):
        stats = Stats(["x"], labels=True)
        stats.update([np.zeros(len(prediction))], prediction)
        assert stats.classes == want


def test_entries_with_coarser_buckets_are_version_2_older_ones_still_read():
    stats = Stats()
    stats.start(["a"], labels=False)
    rng = np.random.default_rng(10)
    stats.update([rng.normal(size=5_000)], rng.normal(size=5_000))
    assert '"v":1' in stats.to_json()  # full resolution: as before
    compact = stats.to_json(64)
    assert '"v":2' in compact  # coarser buckets: a reader of version 1 refuses it rather than misread it
    assert Stats.from_json(compact).features["a"].bits < Stats.from_json(stats.to_json()).features["a"].bits
    with pytest.raises(ValueError, match="version"):
        Stats.from_json(compact.replace('"v":2', '"v":4'))


def test_a_small_files_buckets_are_counted_sorted_and_stored_as_lists_the_same_buckets():
    """A 10-row file's buckets are counted by sorting its few keys (not densely over their span)
    and stored as plain lists (version 3): the same buckets and counts as the dense count and the
    packed form give; a reader of versions 1 and 2 refuses it."""
    rng = np.random.default_rng(11)
    x = rng.normal(size=(20, 10)) * np.logspace(-3, 3, 20)[:, None]
    x[3, 4] = 0.0
    small = Stats()
    small.start([f"f{i}" for i in range(20)], labels=False)
    small.update(list(x), rng.normal(size=10))
    for row, sketch in zip(x, small.features.values(), strict=True):
        dense = Sketch()
        dense._add_dense(*_dense_counts(row))
        assert sketch.keys.tolist() == dense.keys.tolist() and sketch.weights.tolist() == dense.weights.tolist()
    text = small.to_json(STORED_BUCKETS)
    assert '"v":3' in text and '"b"' not in text
    back = Stats.from_json(text)
    for name, sketch in small.features.items():
        assert back.features[name].keys.tolist() == sketch.keys.tolist()
        assert back.features[name].weights.tolist() == sketch.weights.tolist()
        assert back.features[name].quantile(0.5) == sketch.quantile(0.5)
    assert back.prediction.keys.tolist() == small.prediction.keys.tolist()
    merged = Stats().merge_all([back, Stats.from_json(text)])
    assert merged.features["f0"].weights.sum() == 20 and merged.rows == 20
    with pytest.raises(ValueError, match="version"):
        Stats.from_json(text.replace('"v":3', '"v":4'))


def _dense_counts(values: np.ndarray) -> tuple[int, np.ndarray]:
    """Bucket counts of ``values`` the dense way: the lowest key and a count for each key from it."""
    from velosiped.sketch import _keys

    key = _keys(values)
    return int(key.min()), np.bincount(key - key.min())
