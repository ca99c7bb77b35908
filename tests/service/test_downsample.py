"""The min/max downsampling method, on series whose answer is worked out by hand."""
from __future__ import annotations

import math

import numpy as np
import pytest

from service.science.downsample import bucket_level, minmax_downsample

# 16 points; with max_points=10 there are (10 - 2) // 2 = 4 buckets of 4 steps:
#   steps 0-3:   5 3 8 1    -> min 1 @3,  max 8 @2
#   steps 4-7:   9 2 7 4    -> min 2 @5,  max 9 @4
#   steps 8-11:  6 0 10 12  -> min 0 @9,  max 12 @11
#   steps 12-15: 11 13 14 15 -> min 11 @12, max 15 @15
# plus the first point (0, 5) and the last (15, 15).
KNOWN_VALUES = [5, 3, 8, 1, 9, 2, 7, 4, 6, 0, 10, 12, 11, 13, 14, 15]


def test_known_series_keeps_each_buckets_min_and_max_and_both_ends():
    steps, values = minmax_downsample(np.arange(16), np.array(KNOWN_VALUES, float), 10)
    assert steps.tolist() == [0, 2, 3, 4, 5, 9, 11, 12, 15]
    assert values.tolist() == [5, 8, 1, 9, 2, 0, 12, 11, 15]


def test_known_series_with_few_points_keeps_the_extremes():
    # max_points=6: 2 buckets of 8 steps: min 1 @3, max 9 @4; min 0 @9, max 15 @15.
    steps, values = minmax_downsample(np.arange(16), np.array(KNOWN_VALUES, float), 6)
    assert steps.tolist() == [0, 3, 4, 9, 15]
    assert values.tolist() == [5, 1, 9, 0, 15]


def test_series_that_fits_is_returned_raw():
    steps, values = minmax_downsample(np.arange(16), np.array(KNOWN_VALUES, float), 16)
    assert steps.tolist() == list(range(16))
    assert values.tolist() == KNOWN_VALUES


def test_two_points_leave_only_first_and_last():
    steps, values = minmax_downsample(np.arange(16), np.array(KNOWN_VALUES, float), 2)
    assert steps.tolist() == [0, 15] and values.tolist() == [5, 15]


def test_ties_go_to_the_earliest_step_and_nan_is_skipped():
    values = np.array([1, 7, 7, math.nan, 2, 2, math.nan, math.nan, 3, 4], float)
    # 10 points, max_points=6: 2 buckets of 8 steps (0-7, 8-9)
    steps, kept = minmax_downsample(np.arange(10), values, 6)
    # bucket 0: min 1 @0, max 7 @1 (not @2); bucket 1: min 3 @8, max 4 @9
    assert steps.tolist() == [0, 1, 8, 9]
    assert kept.tolist() == [1, 7, 3, 4]


def test_all_nan_bucket_contributes_nothing_but_the_ends_stay():
    values = np.array([math.nan] * 12, float)
    steps, kept = minmax_downsample(np.arange(12), values, 6)
    assert steps.tolist() == [0, 11]
    assert all(math.isnan(v) for v in kept)


def test_buckets_follow_steps_not_positions():
    # Sparse steps (eval every 100): the buckets are in step units.
    steps = np.arange(0, 4000, 100)  # 40 points
    values = np.arange(40, dtype=float)[::-1]  # falling
    kept_steps, kept = minmax_downsample(steps, values, 12)
    # 5 buckets; smallest power of two with at most 5 buckets over [0, 3900] is 1024:
    # buckets 0-1023, 1024-2047, 2048-3071, 3072-4095 -> max at each start, min at each end.
    assert kept_steps.tolist() == [0, 1000, 1100, 2000, 2100, 3000, 3100, 3900]
    assert kept.tolist() == [39 - s // 100 for s in kept_steps.tolist()]


@pytest.mark.parametrize("max_points", [2, 3, 4, 5, 10, 101, 1000])
@pytest.mark.parametrize("seed", range(5))
def test_random_series_invariants(max_points, seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 5000))
    steps = np.sort(rng.choice(100_000, size=n, replace=False))
    values = rng.normal(size=n).cumsum()
    kept_steps, kept = minmax_downsample(steps, values, max_points)
    assert len(kept_steps) <= max_points
    assert kept_steps[0] == steps[0] and kept_steps[-1] == steps[-1]
    assert np.all(np.diff(kept_steps) > 0)
    index = np.searchsorted(steps, kept_steps)
    assert np.array_equal(steps[index], kept_steps) and np.array_equal(values[index], kept)
    if max_points >= 4:  # at least one bucket: the global extremes survive
        assert values.min() in kept and values.max() in kept
    if n > max_points >= 10:  # a dense enough series fills a good part of the budget
        assert len(kept_steps) >= min(n, max_points) // 4


def test_bucket_level_is_the_smallest_that_fits():
    assert bucket_level(0, 15, 4) == 2
    assert bucket_level(0, 15, 16) == 0
    assert bucket_level(3, 4, 1) == 3  # 3 and 4 share a bucket only from width 8
    with pytest.raises(ValueError):
        bucket_level(0, 1, 0)


def test_max_points_below_two_is_refused():
    with pytest.raises(ValueError, match="at least 2"):
        minmax_downsample(np.arange(3), np.zeros(3), 1)
