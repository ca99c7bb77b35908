"""What a sweep's pruner reads and writes: the sweep's early_stopping, the scores the other
members recorded at a check step, and each running member's latest forecast."""
from __future__ import annotations

from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from service.contract.finite import finite_or_none
from service.contract.models import RUNNING, Experiment, Metric, Sweep


def sweep_early_stopping(session: Session, sweep_id: str | None) -> dict[str, Any] | None:
    """The sweep's early_stopping as submitted, or None (no sweep, or none asked for)."""
    if sweep_id is None:
        return None
    spec = session.execute(select(Sweep.spec).where(Sweep.id == sweep_id)).scalar_one_or_none()
    session.commit()
    return (spec or {}).get("early_stopping")


def sweep_scores_at(
    session: Session, sweep_id: str, name: str, step: int, exclude: list[str]
) -> dict[str, float]:
    """{member id: its `name` at `step`} for the sweep's members that recorded it, but those
    in `exclude` (one indexed probe per member: the metrics' primary key)."""
    rows = session.execute(
        select(Metric.experiment_id, Metric.value)
        .join(Experiment, Experiment.id == Metric.experiment_id)
        .where(Experiment.sweep_id == sweep_id, Metric.name == name, Metric.member == 0,
               Metric.step == step, Experiment.id.not_in(exclude or [""]))
    ).all()
    session.commit()
    return {row.experiment_id: row.value for row in rows if row.value is not None}


def set_forecasts(session: Session, forecasts: dict[tuple[str, int], dict[str, Any]]) -> int:
    """Store running members' latest forecasts ({(id, attempt): forecast}) in one transaction;
    a member that no longer runs this attempt is left as it is. Returns how many were stored."""
    stored = 0
    for (experiment_id, attempt), forecast in forecasts.items():
        clean = {**forecast, "will_generalize": finite_or_none(forecast.get("will_generalize")),
                 "signals": {k: finite_or_none(v) for k, v in (forecast.get("signals") or {}).items()}}
        stored += session.execute(
            update(Experiment)
            .where(Experiment.id == experiment_id, Experiment.attempt == attempt,
                   Experiment.status == RUNNING)
            .values(forecast=clean)
            .execution_options(synchronize_session=False)
        ).rowcount
    session.commit()
    return stored
