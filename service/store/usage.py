"""What an owner uses now, as the submit quotas count it: active jobs and recent submissions.

Counted in the database (the source of truth), so that the quotas hold across several API
processes. The stored checkpoint bytes are counted with the checkpoints
(checkpoints.owner_checkpoint_bytes).
"""
from __future__ import annotations

from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from service.contract.models import QUEUED, RUNNING, Experiment, Sweep


def active_jobs(session: Session, owner: str) -> int:
    """The owner's queued and running experiments (each sweep member counts one)."""
    n = session.scalar(
        select(func.count()).select_from(Experiment)
        .where(Experiment.owner == owner, Experiment.status.in_((QUEUED, RUNNING)))
    )
    session.commit()
    return int(n or 0)


def submission_times(session: Session, owner: str, since: datetime) -> list[datetime]:
    """When the owner submitted since `since`: each single experiment and each sweep once (a
    sweep's members are not submissions of their own)."""
    singles = select(Experiment.created_at).where(
        Experiment.owner == owner, Experiment.sweep_id.is_(None), Experiment.created_at >= since)
    sweeps = select(Sweep.created_at).where(Sweep.owner == owner, Sweep.created_at >= since)
    times = [*session.scalars(singles), *session.scalars(sweeps)]
    session.commit()
    return times
