"""Fair scheduling: which queued job a woken worker claims next.

A queue message only wakes a worker; the database, the source of truth, says which job it runs:
among the queued jobs of the message's queue (a job is a pack, or an experiment outside packs),
the owner with the fewest running jobs first, then the owner who least recently started one
(so that one worker alternates between owners), then the oldest job. One owner's 500 queued
jobs therefore never starve another owner's one. The claim itself stays the compare-and-swap
of claim_job: of two workers that pick the same job, one wins and the other
picks again.
"""
from __future__ import annotations

from sqlalchemy import case, func, select
from sqlalchemy.orm import Session

from service.contract.models import QUEUED, RUNNING, Experiment

JOB_ID = func.coalesce(Experiment.pack_id, Experiment.id)


def job_state(session: Session, job_id: str) -> tuple[str, str] | None:
    """(queue, status) of a job (a pack's or an experiment's id): a pack is 'queued' while any
    member is, else the status of one of them. None when there is no such job."""
    rows = session.execute(
        select(Experiment.queue, Experiment.status)
        .where((Experiment.id == job_id) | (Experiment.pack_id == job_id))
    ).all()
    session.commit()
    if not rows:
        return None
    statuses = {status for _, status in rows}
    return rows[0][0], QUEUED if QUEUED in statuses else sorted(statuses)[0]


def fair_queue(session: Session, queue: str, limit: int = 1) -> list[str]:
    """The next `limit` job ids of `queue` in fair order (see the module doc)."""
    running = (
        select(Experiment.owner, func.count(func.distinct(JOB_ID)).label("n"))
        .where(Experiment.status == RUNNING)
        .group_by(Experiment.owner)
        .subquery()
    )
    queued = (
        select(JOB_ID.label("job_id"), Experiment.owner,
               func.min(Experiment.created_at).label("created"))
        .where(Experiment.status == QUEUED, Experiment.queue == queue)
        .group_by(JOB_ID, Experiment.owner)
        .subquery()
    )
    last_start = (
        select(Experiment.owner, func.max(Experiment.started_at).label("started"))
        .where(Experiment.owner.in_(select(queued.c.owner)))
        .group_by(Experiment.owner)
        .subquery()
    )
    rows = session.scalars(
        select(queued.c.job_id)
        .outerjoin(running, running.c.owner == queued.c.owner)
        .outerjoin(last_start, last_start.c.owner == queued.c.owner)
        .order_by(
            func.coalesce(running.c.n, 0),
            case((last_start.c.started.is_(None), 0), else_=1),
            last_start.c.started,
            queued.c.created,
            queued.c.job_id,
        )
        .limit(limit)
    ).all()
    session.commit()
    return list(rows)


def next_fair_job(session: Session, queue: str) -> str | None:
    """The job a worker woken on `queue` should claim now, or None when none is queued."""
    found = fair_queue(session, queue, 1)
    return found[0] if found else None
