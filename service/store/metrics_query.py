"""Metric queries: series in a step window, downsampled on the server from the rollups.

A query plans each series from its metric_series row (count, first and last point), reads the
buckets wholly inside the window from metric_rollups (one query per stored level), summarises
the edge buckets the window cuts through from their raw points, and reads raw points when they
fit in max_points. service.science.downsample defines the method and holds its reference
implementation; the answer here is the same points.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from service.contract.finite import nan_to_none
from service.contract.models import ROLLUP_LEVELS, MetricSeries
from service.science.downsample import (
    METHOD,
    bucket_extremes,
    bucket_level,
    buckets_for,
    minmax_downsample,
)
from service.store.dialect import fetch
from service.store.experiments import MAX_STEP


@dataclass
class _Window:
    """What a query needs of one series: its points in the window, planned before reading."""

    name: str
    member: int
    steps: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    values: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.float64))
    points: int = 0
    # Set when the answer comes from the rollups:
    first: tuple[int, float] | None = None
    last: tuple[int, float] | None = None
    level: int = 0
    inner: tuple[int, int] = (0, -1)  # buckets served from metric_rollups (inclusive)
    # Per bucket: n, min_step, min_value, max_step, max_value (NaN for NULL), as float arrays.
    facts: list[np.ndarray] = field(default_factory=list)


def query_metrics(
    session: Session,
    experiment_id: str,
    *,
    names: list[str] | None,
    from_step: int | None = None,
    to_step: int | None = None,
    max_points: int | None,
    member: int | None = None,
) -> dict:
    """Metric series of one experiment in a step window, downsampled on the server.

    Returns::

        {"experiment_id": str, "method": "minmax-pow2", "max_points": int | None,
         "from_step": int | None, "to_step": int | None,
         "series": [{"name": str, "member": int, "points": int, "downsampled": bool,
                     "steps": [int, ...], "values": [float | None, ...]}, ...]}

    One entry per (name, member) with points in the window, sorted by name then member; `names`
    None means every name, `member` None every ensemble member. `points` counts the raw points in
    the window; `values` are null where the metric was NaN.

    Downsampling, when max_points is given and a series has more points in the window: at most
    max_points points per series; always the first and the last point of the window; and in each of
    at most (max_points - 2) // 2 aligned power-of-two step buckets, the points with the smallest
    and the largest value. service.science.downsample gives the exact method. It is served from the
    precomputed rollups, so its cost grows with max_points, not with the length of the run.
    """
    experiment_id = str(experiment_id)
    n_buckets = None if max_points is None else buckets_for(max_points)
    if from_step is not None and to_step is not None and from_step > to_step:
        raise ValueError(f"from_step must be at most to_step (got {from_step} > {to_step})")
    lo = 0 if from_step is None else max(0, from_step)
    hi = MAX_STEP if to_step is None else min(MAX_STEP, to_step)

    windows: list[_Window] = []
    planned: list[_Window] = []
    for s in _series_of(session, experiment_id, names, member):
        window = _Window(s.name, s.member)
        if s.last_step < lo or s.first_step > hi:
            continue
        whole = lo <= s.first_step and s.last_step <= hi
        windows.append(window)
        if max_points is None or (whole and s.n <= max_points):
            _read_raw(session, experiment_id, window, lo, hi, max_points)
            continue
        first = (s.first_step, _nan(s.first_value)) if s.first_step >= lo else None
        last = (s.last_step, _nan(s.last_value)) if s.last_step <= hi else None
        first = first or _end_point(session, experiment_id, window, lo, hi, last=False)
        last = last or _end_point(session, experiment_id, window, lo, hi, last=True)
        if first is None or last is None:
            windows.pop()  # the window falls between two points
            continue
        level = bucket_level(first[0], last[0], max(n_buckets, 1))
        if level < ROLLUP_LEVELS[0]:
            # A narrow window (fewer than 16 steps per bucket) is cheap to read whole.
            _read_raw(session, experiment_id, window, first[0], last[0], max_points)
            continue
        width = 1 << level
        first_bucket, last_bucket = first[0] >> level, last[0] >> level
        # Buckets wholly inside the window come from the rollups; an edge bucket that the window
        # cuts through is summarised from its raw points inside the window.
        window.first, window.last, window.level = first, last, level
        window.inner = (
            first_bucket + (1 if lo > first_bucket * width else 0),
            last_bucket - (1 if hi < (last_bucket + 1) * width - 1 else 0),
        )
        planned.append(window)

    _read_rollups(session, experiment_id, planned)
    for window in planned:
        _add_edge_facts(session, experiment_id, window)
        facts = np.concatenate(window.facts) if window.facts else np.zeros((0, 5))
        window.points = int(facts[:, 0].sum())
        if window.points <= max_points:
            _read_raw(session, experiment_id, window, window.first[0], window.last[0], max_points)
            continue
        steps = [np.array([window.first[0], window.last[0]], dtype=np.float64)]
        values = [np.array([window.first[1], window.last[1]])]
        if n_buckets >= 1:
            extreme = ~np.isnan(facts[:, 1])
            steps += [facts[extreme, 1], facts[extreme, 3]]
            values += [facts[extreme, 2], facts[extreme, 4]]
        kept_steps, index = np.unique(np.concatenate(steps), return_index=True)
        window.steps = kept_steps.astype(np.int64)
        window.values = np.concatenate(values)[index]
    session.commit()
    return {
        "experiment_id": experiment_id,
        "method": METHOD,
        "max_points": max_points,
        "from_step": from_step,
        "to_step": to_step,
        "series": [
            {
                "name": w.name,
                "member": w.member,
                "points": w.points,
                "downsampled": len(w.steps) < w.points,
                "steps": w.steps.tolist(),
                "values": nan_to_none(w.values),
            }
            for w in windows
        ],
    }


def count_metric_series(
    session: Session, experiment_id: str, *, names: list[str] | None, member: int | None
) -> int:
    """How many series (name, member) a metrics query with these filters can return."""
    query = select(func.count()).select_from(MetricSeries).where(
        MetricSeries.experiment_id == str(experiment_id)
    )
    if names is not None:
        query = query.where(MetricSeries.name.in_(names))
    if member is not None:
        query = query.where(MetricSeries.member == member)
    count = session.scalar(query)
    session.commit()
    return int(count or 0)


def _series_of(
    session: Session, experiment_id: str, names: list[str] | None, member: int | None
) -> list[MetricSeries]:
    query = (
        select(MetricSeries)
        .where(MetricSeries.experiment_id == experiment_id)
        .order_by(MetricSeries.name, MetricSeries.member)
        .execution_options(populate_existing=True)
    )
    if names is not None:
        query = query.where(MetricSeries.name.in_(names))
    if member is not None:
        query = query.where(MetricSeries.member == member)
    return list(session.scalars(query))


def _nan(value: float | None) -> float:
    return math.nan if value is None else float(value)


_RAW_SQL = (
    "SELECT step, value FROM metrics WHERE experiment_id = ? AND name = ? AND member = ? "
    "AND step >= ? AND step <= ? ORDER BY step"
)
_END_SQL = (
    "SELECT step, value FROM metrics WHERE experiment_id = ? AND name = ? AND member = ? "
    "AND step >= ? AND step <= ? ORDER BY step {order} LIMIT 1"
)


def _read_raw(
    session: Session,
    experiment_id: str,
    window: _Window,
    lo: int,
    hi: int,
    max_points: int | None = None,
) -> None:
    """The raw points of the window, downsampled here if they are more than max_points (the
    summaries said they fit, but a worker may have added points since)."""
    rows = fetch(session, _RAW_SQL, (experiment_id, window.name, window.member, lo, hi))
    table = np.array(rows, dtype=np.float64).reshape(-1, 2)  # NULL (None) becomes NaN
    window.steps, window.values = table[:, 0].astype(np.int64), table[:, 1]
    window.points = len(rows)
    if max_points is not None and window.points > max_points:
        window.steps, window.values = minmax_downsample(window.steps, window.values, max_points)


def _end_point(
    session: Session, experiment_id: str, window: _Window, lo: int, hi: int, *, last: bool
) -> tuple[int, float] | None:
    rows = fetch(
        session,
        _END_SQL.format(order="DESC" if last else "ASC"),
        (experiment_id, window.name, window.member, lo, hi),
    )
    return (int(rows[0][0]), _nan(rows[0][1])) if rows else None


def _read_rollups(session: Session, experiment_id: str, windows: list[_Window]) -> None:
    """The inner buckets of every planned window. They are read at the finest stored level at
    or below the window's level and merged up to it: one query per stored level."""
    by_stored: dict[int, dict[tuple[str, int], _Window]] = {}
    for window in windows:
        if window.inner[0] <= window.inner[1]:
            stored = max(level for level in ROLLUP_LEVELS if level <= window.level)
            by_stored.setdefault(stored, {})[(window.name, window.member)] = window
    for stored, group in by_stored.items():
        windows_here = list(group.values())
        wanted = np.array([
            (w.inner[0] << (w.level - stored), ((w.inner[1] + 1) << (w.level - stored)) - 1)
            for w in windows_here
        ])
        names = sorted({w.name for w in windows_here})
        members = sorted({w.member for w in windows_here})
        # Numbering the series in SQL keeps every column numeric: one conversion to numpy.
        series_number = " ".join(["WHEN name = ? AND member = ? THEN ?"] * len(windows_here))
        rows = fetch(
            session,
            f"SELECT CASE {series_number} END, bucket, n, min_step, min_value, max_step, "
            "max_value FROM metric_rollups WHERE experiment_id = ? AND level = ? "
            f"AND name IN ({', '.join('?' * len(names))}) "
            f"AND member IN ({', '.join('?' * len(members))}) AND bucket >= ? AND bucket <= ?",
            (
                *(x for i, w in enumerate(windows_here) for x in (w.name, w.member, i)),
                experiment_id, stored, *names, *members,
                int(wanted[:, 0].min()), int(wanted[:, 1].max()),
            ),
        )
        table = np.array(rows, dtype=np.float64).reshape(-1, 7)  # NULL becomes NaN
        for i, window in enumerate(windows_here):
            lo, hi = wanted[i]
            mine = table[(table[:, 0] == i) & (table[:, 1] >= lo) & (table[:, 1] <= hi), 1:]
            if len(mine):
                window.facts.append(_merge_buckets(mine, window.level - stored))


def _merge_buckets(table: np.ndarray, shift: int) -> np.ndarray:
    """Rollup rows (bucket, n, min_step, min_value, max_step, max_value) merged into buckets
    2**shift times wider: counts add up, the smallest minimum and the largest maximum win, the
    earliest step on ties. Returns rows of (n, min_step, min_value, max_step, max_value)."""
    bucket = table[:, 0].astype(np.int64) >> shift
    no_extreme = np.isnan(table[:, 2])  # a bucket of only NaN values
    by_min = np.lexsort((table[:, 2], table[:, 3], no_extreme, bucket))
    by_max = np.lexsort((table[:, 4], -table[:, 5], no_extreme, bucket))
    starts = np.flatnonzero(np.diff(bucket[by_min], prepend=-1))  # same groups in both orders
    merged = np.empty((len(starts), 5))
    merged[:, 0] = np.add.reduceat(table[by_min, 1], starts)
    merged[:, 1:3] = table[by_min[starts]][:, 2:4]
    merged[:, 3:5] = table[by_max[starts]][:, 4:6]
    return merged


def _add_edge_facts(session: Session, experiment_id: str, window: _Window) -> None:
    """Summarise the edge buckets that the window cuts through from their raw points."""
    level, (first_step, _), (last_step, _) = window.level, window.first, window.last
    first_bucket, last_bucket = first_step >> level, last_step >> level
    edges = []
    if window.inner[0] > first_bucket:
        edges.append((first_step, min(last_step, ((first_bucket + 1) << level) - 1)))
    if window.inner[1] < last_bucket and (last_bucket != first_bucket or not edges):
        edges.append((max(first_step, last_bucket << level), last_step))
    for lo, hi in edges:
        edge = _Window(window.name, window.member)
        _read_raw(session, experiment_id, edge, lo, hi)
        ext = bucket_extremes(
            np.zeros(edge.points, dtype=np.int64), edge.steps >> level, edge.values
        )
        facts = np.full((len(ext.n), 5), np.nan)
        facts[:, 0] = ext.n
        extreme = ext.min_index >= 0
        facts[extreme, 1] = edge.steps[ext.min_index[extreme]]
        facts[extreme, 2] = edge.values[ext.min_index[extreme]]
        facts[extreme, 3] = edge.steps[ext.max_index[extreme]]
        facts[extreme, 4] = edge.values[ext.max_index[extreme]]
        window.facts.append(facts)
