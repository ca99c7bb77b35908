"""Reads for live events and cheap validators: metric points after a step, whole steps at a time.

A worker stores each training step's rows in one transaction (the recorder flushes whole steps),
so "every point with step > N" is exactly what a watcher that has seen step N still needs.
"""
from __future__ import annotations

import math

from typing import Any

from sqlalchemy import bindparam, func, select
from sqlalchemy.orm import Session

from service.contract.models import Experiment, Metric, MetricSeries

_EXPERIMENT = select(Experiment.__table__).where(Experiment.__table__.c.id == bindparam("id"))


def experiment_snapshot(session: Session, experiment_id: str) -> Any | None:
    """The job as it is now, read-only: a row with the Experiment's attribute names (what
    ExperimentOut.of and Principal.sees read). A plain Core read, 2-3x cheaper than loading the
    ORM object: it serves the status route that pollers call every second."""
    row = session.connection().execute(_EXPERIMENT, {"id": str(experiment_id)}).first()
    session.commit()
    return row


def latest_metric_step(session: Session, experiment_id: str) -> int:
    """The largest stored step of any series of the experiment; -1 when none."""
    step = session.scalar(
        select(func.max(MetricSeries.last_step)).where(MetricSeries.experiment_id == experiment_id)
    )
    session.commit()
    return -1 if step is None else int(step)


def metrics_validator(session: Session, experiment_id: str) -> tuple[int, int, int]:
    """(series, points, largest step) of the experiment's metrics, read from the per-series
    summaries: it changes whenever a point is stored, at the cost of one tiny query."""
    row = session.execute(
        select(func.count(), func.coalesce(func.sum(MetricSeries.n), 0),
               func.coalesce(func.max(MetricSeries.last_step), -1))
        .where(MetricSeries.experiment_id == experiment_id)
    ).one()
    session.commit()
    return int(row[0]), int(row[1]), int(row[2])


def metric_points_after(
    session: Session, experiment_id: str, after_step: int, max_points: int = 20_000
) -> tuple[list[dict], bool]:
    """The stored points with step > after_step, by step (then name, member), as
    {"name", "member", "step", "value"} (NaN as None), and whether that was all of them. Whole
    steps only: about max_points at most (more when a single step has more); when not all, ask
    again after the last step for the rest."""
    series = session.execute(
        select(MetricSeries.name, MetricSeries.member).where(
            MetricSeries.experiment_id == experiment_id, MetricSeries.last_step > after_step
        )
    ).all()
    if not series:
        session.commit()
        return [], True
    names = sorted({name for name, _ in series})
    members = sorted({member for _, member in series})
    base = (
        select(Metric.name, Metric.member, Metric.step, Metric.value)
        .where(Metric.experiment_id == experiment_id, Metric.name.in_(names),
               Metric.member.in_(members), Metric.step > after_step)
        .order_by(Metric.step, Metric.name, Metric.member)
    )
    rows = session.execute(base.limit(max_points + 1)).all()
    complete = len(rows) <= max_points
    if not complete:  # the last step may be cut: end at the step before it
        last = rows[-1].step
        rows = [row for row in rows if row.step < last]
        if not rows:  # one step holds more than max_points: all of it
            rows = session.execute(base.where(Metric.step == last)).all()
    session.commit()
    return [
        {"name": r.name, "member": r.member, "step": r.step,
         "value": None if r.value is None or not math.isfinite(r.value) else r.value}
        for r in rows
    ], complete
