"""What the operators' probes read: the stack's counts for Prometheus, and whether the database
answers at all (readiness).

A few aggregate queries over the whole table, whatever its size: each is one GROUP BY or one
sum.
"""
from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Engine, func, select, text
from sqlalchemy.orm import Session

from service.contract.models import RUNNING, Experiment, MetricSeries


@dataclass(frozen=True)
class StackCounts:
    """experiments_by_status: experiments in each status (statuses with none left out);
    running_jobs: jobs being trained (a sweep's pack counts once); steps_per_s_by_worker: the
    training speed of the job each worker runs; metric_points: points stored, over every
    series."""

    experiments_by_status: dict[str, int]
    running_jobs: int
    steps_per_s_by_worker: list[tuple[str, float | None]]
    metric_points: int


def stack_counts(session: Session) -> StackCounts:
    """The counts /metrics reports, read in four aggregate queries."""
    counts = dict(session.execute(
        select(Experiment.status, func.count()).group_by(Experiment.status)
    ).all())
    running = Experiment.status == RUNNING
    jobs = session.scalar(select(func.count(func.distinct(
        func.coalesce(Experiment.pack_id, Experiment.id)
    ))).where(running))
    rates = session.execute(
        select(Experiment.worker, func.max(Experiment.steps_per_s))
        .where(running, Experiment.worker.is_not(None))
        .group_by(Experiment.worker)
    ).all()
    rows = session.scalar(select(func.coalesce(func.sum(MetricSeries.n), 0)))
    session.commit()
    return StackCounts(
        experiments_by_status=counts,
        running_jobs=jobs or 0,
        steps_per_s_by_worker=[(worker, rate) for worker, rate in rates],
        metric_points=rows,
    )


def check_database(engine: Engine) -> None:
    """Raise unless the database answers a query (readiness)."""
    with engine.connect() as connection:
        connection.execute(text("SELECT 1"))
