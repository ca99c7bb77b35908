"""Min/max downsampling of a metric series on power-of-two step buckets.

The method, as served by GET /experiments/{id}/metrics?max_points=M:

1. If the step window holds at most M points, every raw point is returned.
2. Otherwise let B = (M - 2) // 2 and choose the smallest power of two w = 2**L such that the
   window [first_step, last_step] touches at most B aligned buckets [k*w, (k+1)*w).
3. From every bucket keep the point with the smallest and the point with the largest value
   (the earliest step on ties; NaN values are skipped; a bucket of only NaN contributes nothing).
4. Always keep the first and the last point of the window. Return the kept points by step.

So the result has at most 2*B + 2 <= M points, the first and last points are always there, and
every bucket's extremes survive: spikes, the global minimum and maximum, a loss that drops to
zero, are never averaged away. Because w/2 would have needed more than B buckets, a dense series
fills at least about half of the budget.

The buckets are aligned powers of two so that the server can precompute them at ingestion
(table metric_rollups) and answer a query from about M stored rows instead of reading every
point. `minmax_downsample` here is the reference; the store's rollup path gives the same points.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

METHOD = "minmax-pow2"


@dataclass(frozen=True)
class BucketExtremes:
    """Per-bucket facts of points sorted by (group, step). Indices point into those points."""

    group: np.ndarray  # group code of each bucket
    bucket: np.ndarray  # bucket number: step >> level
    n: np.ndarray  # points in the bucket (NaN values included)
    min_index: np.ndarray  # index of the smallest value, -1 when the bucket has only NaN
    max_index: np.ndarray  # index of the largest value, -1 when the bucket has only NaN


def bucket_extremes(group: np.ndarray, bucket: np.ndarray, values: np.ndarray) -> BucketExtremes:
    """Extremes per (group, bucket) of points sorted by group, then step; a bucket is typically
    `steps >> level`. Sorted input means each (group, bucket) is one contiguous run."""
    n = len(bucket)
    if n == 0:
        empty = np.zeros(0, dtype=np.int64)
        return BucketExtremes(empty, empty, empty, empty, empty)
    starts_mask = np.ones(n, dtype=bool)
    starts_mask[1:] = (bucket[1:] != bucket[:-1]) | (group[1:] != group[:-1])
    starts = np.flatnonzero(starts_mask)
    counts = np.diff(np.append(starts, n))
    owner = np.cumsum(starts_mask) - 1  # bucket of each point

    finite = ~np.isnan(values)
    low = np.where(finite, values, np.inf)
    high = np.where(finite, values, -np.inf)
    index = np.arange(n)
    bucket_min = np.minimum.reduceat(low, starts)
    bucket_max = np.maximum.reduceat(high, starts)
    # The first index holding the extreme: ties go to the earliest step.
    is_min = finite & (low == bucket_min[owner])
    is_max = finite & (high == bucket_max[owner])
    min_index = np.minimum.reduceat(np.where(is_min, index, n), starts)
    max_index = np.minimum.reduceat(np.where(is_max, index, n), starts)
    min_index[min_index == n] = -1
    max_index[max_index == n] = -1
    return BucketExtremes(group[starts], bucket[starts], counts, min_index, max_index)


def bucket_level(first_step: int, last_step: int, max_buckets: int) -> int:
    """The smallest L such that [first_step, last_step] touches at most max_buckets aligned
    buckets of 2**L steps."""
    if max_buckets < 1:
        raise ValueError(f"max_buckets must be at least 1 (got {max_buckets})")
    level = 0
    while (last_step >> level) - (first_step >> level) + 1 > max_buckets:
        level += 1
    return level


def buckets_for(max_points: int) -> int:
    """B: buckets that fit in max_points once the first and last points are kept."""
    if max_points < 2:
        raise ValueError(f"max_points must be at least 2 (got {max_points})")
    return (max_points - 2) // 2


def minmax_downsample(
    steps: np.ndarray, values: np.ndarray, max_points: int
) -> tuple[np.ndarray, np.ndarray]:
    """At most max_points points of the series (steps ascending), by the method in this module's
    docstring. Returns (steps, values) arrays; the raw series when it already fits."""
    steps = np.asarray(steps, dtype=np.int64)
    values = np.asarray(values, dtype=np.float64)
    n = len(steps)
    n_buckets = buckets_for(max_points)
    if n <= max_points:
        return steps.copy(), values.copy()
    keep = [np.array([0, n - 1])]
    if n_buckets >= 1:
        level = bucket_level(int(steps[0]), int(steps[-1]), n_buckets)
        ext = bucket_extremes(np.zeros(n, dtype=np.int64), steps >> level, values)
        keep += [ext.min_index[ext.min_index >= 0], ext.max_index[ext.max_index >= 0]]
    index = np.unique(np.concatenate(keep))
    return steps[index], values[index]
