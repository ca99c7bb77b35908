"""Packs: the members of a sweep that a worker trains together, as one unit of work.

A pack has no row of its own: it is the experiments that share a `pack_id`, and that id is the job
id its queue message carries. Its members are claimed in one compare-and-swap UPDATE, beat and
report progress in one UPDATE each, and each finishes on its own (finish_experiment), when it
leaves the batch or when the pack ends. Every write checks each member's (status, attempt), so a
worker whose pack was requeued changes nothing of the next attempt's.
"""
from __future__ import annotations

from typing import Any

from sqlalchemy import and_, select, tuple_, update
from sqlalchemy.orm import Session

from service.contract.finite import finite_or_none
from service.contract.models import FAILED, QUEUED, RUNNING, Experiment, utcnow
from service.store.clock import db_utcnow

Claim = tuple[str, int]  # (experiment id, attempt)


def is_pack(session: Session, job_id: str) -> bool:
    """Whether a queue message's job id names a pack (else it names an experiment)."""
    found = session.scalar(select(Experiment.id).where(Experiment.pack_id == job_id).limit(1))
    session.commit()
    return found is not None


def claim_pack(session: Session, pack_id: str, worker: str) -> list[Experiment]:
    """Move every queued member of the pack to 'running' for this worker, in one UPDATE; returns
    the claimed members by sweep_index (empty when there was nothing to claim: another worker
    holds the pack, or it is finished). Members that used up max_attempts fail instead, with the
    reason. Of two workers holding the same (redelivered) message, one claims the members and
    the other finds none queued."""
    now = utcnow()
    session.execute(
        update(Experiment)
        .where(Experiment.pack_id == pack_id, Experiment.status == QUEUED,
               Experiment.attempt >= Experiment.max_attempts)
        .values(status=FAILED, finished_at=now,
                error="gave up after max_attempts attempts (max_attempts)")
        .execution_options(synchronize_session=False)
    )
    queued = session.execute(
        select(Experiment.id, Experiment.attempt)
        .where(Experiment.pack_id == pack_id, Experiment.status == QUEUED)
    ).all()
    if not queued:
        session.commit()
        return []
    session.execute(
        update(Experiment)
        .where(tuple_(Experiment.id, Experiment.attempt).in_([tuple(row) for row in queued]),
               Experiment.status == QUEUED)
        .values(status=RUNNING, attempt=Experiment.attempt + 1, worker=worker, started_at=now,
                heartbeat_at=db_utcnow(), finished_at=None, error=None)
        .execution_options(synchronize_session=False)
    )
    session.commit()
    claimed = list(session.scalars(
        select(Experiment)
        .where(tuple_(Experiment.id, Experiment.attempt).in_(
            [(exp_id, attempt + 1) for exp_id, attempt in queued]),
            Experiment.status == RUNNING, Experiment.worker == worker)
        .order_by(Experiment.sweep_index)
        .execution_options(populate_existing=True)
    ))
    session.commit()
    return claimed


def _still_running(claims: list[Claim]) -> Any:
    return and_(tuple_(Experiment.id, Experiment.attempt).in_(claims),
                Experiment.status == RUNNING)


def _update_members(session: Session, claims: list[Claim], **values: Any) -> set[str]:
    """Update the members this worker still runs (same attempt); returns their ids."""
    if not claims:
        return set()
    ours = set(session.scalars(select(Experiment.id).where(_still_running(claims))))
    if ours:
        session.execute(
            update(Experiment)
            .where(_still_running(claims))
            .values(**values)
            .execution_options(synchronize_session=False)
        )
    session.commit()
    return ours


def pack_heartbeat(session: Session, claims: list[Claim]) -> set[str]:
    """Mark the pack's members alive in one UPDATE; returns the ids still this worker's."""
    return _update_members(session, claims, heartbeat_at=db_utcnow())


def update_pack_progress(
    session: Session, claims: list[Claim], *, step: int, steps_per_s: float | None,
    eta_s: float | None,
) -> set[str]:
    """Progress and heartbeat of every member still training; returns the ids still ours."""
    return _update_members(
        session, claims, step=step, steps_per_s=finite_or_none(steps_per_s),
        eta_s=finite_or_none(eta_s), heartbeat_at=db_utcnow(),
    )


def cancel_requested_members(session: Session, experiment_ids: list[str]) -> set[str]:
    """The members whose cancel was requested (each leaves the pack, finished 'cancelled')."""
    if not experiment_ids:
        return set()
    ids = set(session.scalars(
        select(Experiment.id).where(Experiment.id.in_(experiment_ids),
                                    Experiment.cancel_requested.is_(True))
    ))
    session.commit()
    return ids
