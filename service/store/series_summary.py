"""Facts about a whole metric series read in a bounded number of small queries, whatever the
length of the run: its last finite point (metric_series), and the first step whose value
reaches a threshold (metric_rollups: the first coarse bucket whose maximum reaches it, then the
first fine bucket inside it, then the few raw points of that one).

What GET .../analysis, the stored summary and checkpoint retention need, so none of them reads
every point of a series.
"""
from __future__ import annotations

import math

from sqlalchemy import select
from sqlalchemy.orm import Session

from service.contract.models import ROLLUP_LEVELS, MetricSeries
from service.store.dialect import fetch
from service.store.experiments import MAX_STEP

COARSE, FINE = ROLLUP_LEVELS[-1], ROLLUP_LEVELS[0]

_BUCKET_REACHING = (
    "SELECT bucket FROM metric_rollups WHERE experiment_id = ? AND level = ? AND name = ? "
    "AND member = ? AND bucket >= ? AND bucket <= ? AND max_value >= ? ORDER BY bucket LIMIT 1"
)
_LAST_BUCKET_WITH_VALUES = (
    "SELECT bucket FROM metric_rollups WHERE experiment_id = ? AND level = ? AND name = ? "
    "AND member = ? AND bucket <= ? AND max_value IS NOT NULL ORDER BY bucket DESC LIMIT 1"
)
_RAW = (
    "SELECT step, value FROM metrics WHERE experiment_id = ? AND name = ? AND member = ? "
    "AND step >= ? AND step <= ? ORDER BY step"
)


def _finite(value: float | None) -> bool:
    return value is not None and math.isfinite(value)


def series_of(session: Session, experiment_id: str, names: tuple[str, ...]) -> list[MetricSeries]:
    """The metric_series rows (count, first and last point) of these names, every member."""
    rows = list(session.scalars(
        select(MetricSeries)
        .where(MetricSeries.experiment_id == str(experiment_id), MetricSeries.name.in_(names))
        .order_by(MetricSeries.member, MetricSeries.name)
        .execution_options(populate_existing=True)
    ))
    session.commit()
    return rows


def first_step_reaching(
    session: Session, experiment_id: str, name: str, member: int, threshold: float,
) -> int | None:
    """The first step whose (finite) value is >= threshold; None if none is. Exact, as
    service.science.grokking.first_step_reaching on the whole series, reading at most one level-10
    bucket per 1024 steps, 64 level-4 buckets and 16 points per bucket tried."""
    key = (str(experiment_id), name, member)
    start = 0
    while True:
        coarse = fetch(
            session, _BUCKET_REACHING, (key[0], COARSE, *key[1:], start, MAX_STEP, threshold)
        )
        if not coarse:
            session.commit()
            return None
        (bucket,) = coarse[0]
        shift = COARSE - FINE
        fine_start = bucket << shift
        while True:
            fine = fetch(session, _BUCKET_REACHING, (
                key[0], FINE, *key[1:], fine_start, ((bucket + 1) << shift) - 1, threshold
            ))
            if not fine:
                break
            (fine_bucket,) = fine[0]
            points = fetch(session, _RAW, (
                *key, fine_bucket << FINE, ((fine_bucket + 1) << FINE) - 1
            ))
            for step, value in points:
                # A maximum of +inf reaches every threshold but is no accuracy: look further.
                if _finite(value) and value >= threshold:
                    session.commit()
                    return int(step)
            fine_start = fine_bucket + 1
        start = bucket + 1


def last_finite_point(
    session: Session, series: MetricSeries
) -> tuple[int, float] | None:
    """The last point of a series whose value is finite (what a clean_series ends with)."""
    if _finite(series.last_value):
        return series.last_step, float(series.last_value)
    key = (series.experiment_id, series.name, series.member)
    below = series.last_step >> COARSE
    while below >= 0:
        rows = fetch(session, _LAST_BUCKET_WITH_VALUES, (key[0], COARSE, *key[1:], below))
        if not rows:
            break
        (bucket,) = rows[0]
        points = fetch(session, _RAW, (*key, bucket << COARSE, ((bucket + 1) << COARSE) - 1))
        finite = [(int(s), float(v)) for s, v in points if _finite(v)]
        if finite:
            session.commit()
            return finite[-1]
        below = bucket - 1
    session.commit()
    return None
