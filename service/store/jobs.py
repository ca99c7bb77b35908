"""Jobs: the unit of work on the queue. A job is a list of member experiments claimed together:
one experiment alone (its job id is its own id), or a sweep's pack (the experiments that share a
`pack_id`; that id is the job id its queue message carries). A job has no row of its own.

Its members are claimed in one compare-and-swap per member, beat and report progress in one
UPDATE each, and each finishes on its own (finish_experiment), when it leaves the batch or when
the job ends. Every write checks each member's (status, attempt), so a worker whose job was
requeued changes nothing of the next attempt's.
"""
from __future__ import annotations

from typing import Any

from sqlalchemy import and_, or_, select, tuple_, update
from sqlalchemy.orm import Session

from service.contract.finite import finite_or_none
from service.contract.models import FAILED, PAUSED, QUEUED, RUNNING, Experiment, utcnow
from service.store.clock import db_utcnow

Claim = tuple[str, int]  # (experiment id, attempt)


def _in_job(job_id: str) -> Any:
    return or_(Experiment.pack_id == str(job_id), Experiment.id == str(job_id))


def claim_job(session: Session, job_id: str, worker: str) -> list[Experiment]:
    """Move every queued member of the job to 'running' for this worker; returns the claimed
    members in their order (sweep_index), empty when there was nothing to claim: another worker
    holds the job, or it is finished. Each member is a compare-and-swap on (status 'queued',
    the attempt just read), and the UPDATE returns the rows it changed, so of two workers
    holding the same (redelivered) message each member goes to exactly one. A queued member
    that used up max_attempts fails instead, with the reason."""
    now = utcnow()
    queued = session.execute(
        select(Experiment.id, Experiment.attempt, Experiment.max_attempts)
        .where(_in_job(job_id), Experiment.status == QUEUED)
    ).all()
    for exp_id, attempt, _ in (row for row in queued if row.attempt >= row.max_attempts):
        session.execute(
            update(Experiment)
            .where(Experiment.id == exp_id, Experiment.status == QUEUED, Experiment.attempt == attempt)
            .values(status=FAILED, finished_at=now,
                    error=f"gave up after {attempt} attempts (max_attempts)")
            .execution_options(synchronize_session=False)
        )
    ready = [(row.id, row.attempt) for row in queued if row.attempt < row.max_attempts]
    if not ready:
        session.commit()
        return []
    won = session.execute(
        update(Experiment)
        .where(tuple_(Experiment.id, Experiment.attempt).in_(ready), Experiment.status == QUEUED)
        .values(status=RUNNING, attempt=Experiment.attempt + 1, worker=worker, started_at=now,
                heartbeat_at=db_utcnow(),  # judged by the reaper against the database's clock
                finished_at=None, error=None)
        .returning(Experiment.id)
        .execution_options(synchronize_session=False)
    ).scalars().all()
    session.commit()
    if not won:
        return []
    claimed = list(session.scalars(
        select(Experiment)
        .where(Experiment.id.in_(won))
        .order_by(Experiment.sweep_index)
        .execution_options(populate_existing=True)
    ))
    session.commit()
    return claimed


def claim_experiment(session: Session, experiment_id: str, worker: str) -> Experiment | None:
    """The claim of one experiment (claim_job of its id): None if it can't be claimed."""
    claimed = [m for m in claim_job(session, experiment_id, worker) if m.id == str(experiment_id)]
    return claimed[0] if claimed else None


def _still_running(claims: list[Claim]) -> Any:
    return and_(tuple_(Experiment.id, Experiment.attempt).in_(claims),
                Experiment.status == RUNNING)


def _update_members(session: Session, claims: list[Claim], **values: Any) -> set[str]:
    """Update the members this worker still runs (same attempt); returns their ids."""
    if not claims:
        return set()
    ours = set(session.execute(
        update(Experiment)
        .where(_still_running(claims))
        .values(**values)
        .returning(Experiment.id)
        .execution_options(synchronize_session=False)
    ).scalars().all())
    session.commit()
    return ours


def members_heartbeat(session: Session, claims: list[Claim], ran_s: float = 0.0) -> set[str]:
    """Mark the job's members alive in one UPDATE, adding ran_s seconds (the time run since the
    last beat) to each one's run_s: the running time of every attempt, which the time limit
    counts. Returns the ids still this worker's."""
    return _update_members(session, claims, heartbeat_at=db_utcnow(),
                           run_s=Experiment.run_s + max(0.0, ran_s))


def heartbeat(session: Session, experiment_id: str, attempt: int) -> bool:
    """members_heartbeat of one member: False unless it still runs this attempt."""
    return bool(members_heartbeat(session, [(str(experiment_id), attempt)]))


def update_members_progress(
    session: Session, claims: list[Claim], *, step: int, steps_per_s: float | None,
    eta_s: float | None,
) -> set[str]:
    """Progress and heartbeat of every member still training; returns the ids still ours."""
    return _update_members(
        session, claims, step=step, steps_per_s=finite_or_none(steps_per_s),
        eta_s=finite_or_none(eta_s), heartbeat_at=db_utcnow(),
    )


def update_progress(
    session: Session, experiment_id: str, attempt: int, *, step: int,
    steps_per_s: float | None, eta_s: float | None,
) -> bool:
    """update_members_progress of one member: False (nothing changed) unless it runs this attempt."""
    return bool(update_members_progress(
        session, [(str(experiment_id), attempt)], step=step, steps_per_s=steps_per_s, eta_s=eta_s
    ))


def stop_requests(session: Session, experiment_ids: list[str]) -> dict[str, str]:
    """The members asked to leave the batch, with why: "cancelled" (a cancel, which wins) or
    "paused" (a pause request)."""
    if not experiment_ids:
        return {}
    rows = session.execute(
        select(Experiment.id, Experiment.cancel_requested)
        .where(Experiment.id.in_(experiment_ids),
               or_(Experiment.cancel_requested.is_(True), Experiment.pause_requested.is_(True)))
    ).all()
    session.commit()
    return {row.id: "cancelled" if row.cancel_requested else "paused" for row in rows}


def pause_member(session: Session, experiment_id: str, attempt: int, step: int) -> bool:
    """A member that left its batch paused (its checkpoint stored): 'paused' at `step`, off
    this worker. A pause is not a failure: max_attempts grows by one, so pausing never uses up
    the job's retries (each claim still counts a new attempt, which keeps stale writers out).
    False unless it still runs this attempt."""
    result = session.execute(
        update(Experiment)
        .where(Experiment.id == str(experiment_id), Experiment.status == RUNNING,
               Experiment.attempt == attempt)
        .values(status=PAUSED, pause_requested=False, step=step, steps_per_s=None, eta_s=None,
                worker=None, max_attempts=Experiment.max_attempts + 1)
        .execution_options(synchronize_session=False)
    )
    session.commit()
    return result.rowcount == 1


def cancel_requested_members(session: Session, experiment_ids: list[str]) -> set[str]:
    """The members whose cancel was requested (each leaves the batch, finished 'cancelled')."""
    if not experiment_ids:
        return set()
    ids = set(session.scalars(
        select(Experiment.id).where(Experiment.id.in_(experiment_ids),
                                    Experiment.cancel_requested.is_(True))
    ))
    session.commit()
    return ids


def cancel_requested(session: Session, experiment_id: str) -> bool:
    return bool(cancel_requested_members(session, [str(experiment_id)]))
