"""Progress measures with fixed key frequencies: one row per experiment (ProgressMeasures),
requested by the API, computed by a worker, read back by the API.

A request marks the row pending before anything is enqueued, so repeated GETs enqueue once. A
row is tied to the checkpoint the key frequencies come from (final_step): a newer checkpoint
makes it out of date and the next request computes it again. The worker writes its result only
onto the pending row of the step it computed, so a late result never overwrites a newer request.
"""
from __future__ import annotations

from datetime import timedelta

from sqlalchemy import delete, or_, select, update
from sqlalchemy.orm import Session

from service.contract.models import (
    PROGRESS_DONE,
    PROGRESS_FAILED,
    PROGRESS_PENDING,
    PROGRESS_RUNNING,
    ProgressMeasures,
    utcnow,
)
from service.store.dialect import upsert_insert

# A request pending this long is sent to a worker again: its broker message may have been lost.
PENDING_RETRY_S = 600.0


def get_progress_measures(session: Session, experiment_id: str) -> ProgressMeasures | None:
    """The progress-measures row of an experiment (any status), or None."""
    row = session.scalar(
        select(ProgressMeasures)
        .where(ProgressMeasures.experiment_id == str(experiment_id))
        .execution_options(populate_existing=True)
    )
    session.commit()
    return row


def request_progress_measures(
    session: Session, experiment_id: str, final_step: int, retry_after_s: float = PENDING_RETRY_S
) -> bool:
    """Mark the measures with key frequencies from the checkpoint at final_step pending.

    True when the caller must enqueue the worker task: no row yet, a row for another checkpoint,
    or a request pending for more than retry_after_s. False when one is pending already, or the
    row for final_step is done or failed (a stored failure stays until a newer checkpoint)."""
    now = utcnow()
    fresh = dict(status=PROGRESS_PENDING, final_step=final_step, data=None, error=None,
                 requested_at=now, finished_at=None)
    # RETURNING, not rowcount: psycopg reports -1 for INSERT ... ON CONFLICT DO NOTHING.
    inserted = session.execute(
        upsert_insert(session, ProgressMeasures.__table__)
        .values(experiment_id=str(experiment_id), **fresh)
        .on_conflict_do_nothing(index_elements=["experiment_id"])
        .returning(ProgressMeasures.__table__.c.experiment_id)
    ).first() is not None
    if not inserted:
        inserted = session.execute(
            update(ProgressMeasures)
            .where(
                ProgressMeasures.experiment_id == str(experiment_id),
                or_(
                    ProgressMeasures.final_step != final_step,
                    ProgressMeasures.status.in_((PROGRESS_PENDING, PROGRESS_RUNNING))
                    & (ProgressMeasures.requested_at < now - timedelta(seconds=retry_after_s)),
                ),
            )
            .values(**fresh)
        ).rowcount == 1
    session.commit()
    return inserted


def withdraw_progress_measures(session: Session, experiment_id: str, final_step: int) -> None:
    """Forget a pending request that could not be enqueued, so that the next one tries again."""
    session.execute(
        delete(ProgressMeasures).where(
            ProgressMeasures.experiment_id == str(experiment_id),
            ProgressMeasures.final_step == final_step,
            ProgressMeasures.status == PROGRESS_PENDING,
        )
    )
    session.commit()


def _finish(session: Session, experiment_id: str, final_step: int, **values) -> bool:
    finished = session.execute(
        update(ProgressMeasures)
        .where(
            ProgressMeasures.experiment_id == str(experiment_id),
            ProgressMeasures.final_step == final_step,
            ProgressMeasures.status.in_((PROGRESS_PENDING, PROGRESS_RUNNING)),
        )
        .values(finished_at=utcnow(), **values)
    ).rowcount
    session.commit()
    return finished == 1


def put_progress_measures(session: Session, experiment_id: str, final_step: int, data: dict) -> bool:
    """Store the computed measures on the pending request for final_step; False when there is
    none (a newer request replaced it)."""
    return _finish(session, experiment_id, final_step, status=PROGRESS_DONE, data=data)


def fail_progress_measures(session: Session, experiment_id: str, final_step: int, error: str) -> bool:
    """Store why the measures for final_step could not be computed (the API answers 409 with it)."""
    return _finish(session, experiment_id, final_step, status=PROGRESS_FAILED, error=error[-4000:])
