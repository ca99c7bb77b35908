"""Cached analysis of an experiment's checkpoints, one row per (checkpoint step, kind), written
by the worker and served by the API. Kinds: "fourier" (the Fourier progress measures, the
default) and the circuit pictures (service/contract/circuit.py).

A row is pending (a worker was asked), done (data holds the measures) or failed (error says
why). The API asks a worker only after it inserted the pending row itself, so concurrent
requests for one step queue one task; a failure is retried on request while its attempts are
under the limit, and served as the failure after that.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from service.contract.models import (
    ANALYSIS_DONE,
    ANALYSIS_FAILED,
    ANALYSIS_PENDING,
    AnalysisCache,
    utcnow,
)
from service.store.dialect import upsert_insert

FOURIER = "fourier"
KEY = ["experiment_id", "step", "kind"]

# A pending analysis older than this is asked of a worker again (one more attempt).
STALE_PENDING = timedelta(minutes=15)


def _row(experiment_id: str, step: int, kind: str) -> tuple:
    return (AnalysisCache.experiment_id == str(experiment_id), AnalysisCache.step == step,
            AnalysisCache.kind == kind)


def get_cached_analysis(
    session: Session, experiment_id: str, step: int, kind: str = FOURIER
) -> dict | None:
    """The computed analysis of a kind of an experiment at a checkpoint step, or None (none,
    pending or failed)."""
    data = session.scalar(
        select(AnalysisCache.data).where(
            *_row(experiment_id, step, kind), AnalysisCache.status == ANALYSIS_DONE,
        )
    )
    session.commit()
    return data


def latest_cached_analysis(session: Session, experiment_id: str) -> dict | None:
    """The computed Fourier analysis document with the highest step, or None when there is
    none."""
    data = session.scalar(
        select(AnalysisCache.data)
        .where(
            AnalysisCache.experiment_id == str(experiment_id), AnalysisCache.kind == FOURIER,
            AnalysisCache.status == ANALYSIS_DONE,
        )
        .order_by(AnalysisCache.step.desc())
        .limit(1)
    )
    session.commit()
    return data


def put_cached_analysis(
    session: Session, experiment_id: str, step: int, data: dict, kind: str = FOURIER
) -> None:
    """Store (or replace) the analysis of a kind of an experiment at a checkpoint step."""
    put_cached_analyses(session, experiment_id, step, {kind: data})


def put_cached_analyses(
    session: Session, experiment_id: str, step: int, documents: dict[str, dict]
) -> None:
    """Store (or replace) several kinds of analysis of one checkpoint step in one transaction
    (the circuit pictures of every member, with the row of the task that computed them)."""
    for kind, data in documents.items():
        statement = upsert_insert(session, AnalysisCache).values(
            experiment_id=str(experiment_id), step=step, kind=kind, status=ANALYSIS_DONE,
            data=data, error=None, attempts=0, created_at=utcnow(),
        )
        session.execute(
            statement.on_conflict_do_update(
                index_elements=KEY,
                set_={"data": statement.excluded.data, "status": statement.excluded.status,
                      "error": None, "created_at": statement.excluded.created_at},
            )
        )
    session.commit()


@dataclass(frozen=True)
class AnalysisRequest:
    """What a request for one step's analysis found. status: "done" (data), "pending" (a worker
    has it), "queued" (this request inserted or re-armed the pending row: it must enqueue the
    task), "failed" (error; attempts reached the limit)."""

    status: str
    data: dict | None = None
    error: str | None = None
    attempts: int = 0


def request_checkpoint_analysis(
    session: Session, experiment_id: str, step: int, max_attempts: int, kind: str = FOURIER
) -> AnalysisRequest:
    """Find or claim the analysis of a kind of one step: a single caller among concurrent ones
    gets "queued" (the row's pending state is set by an INSERT ... ON CONFLICT DO NOTHING, or
    by a compare-and-swap UPDATE of a failed row with attempts left)."""
    experiment_id = str(experiment_id)
    inserted = session.execute(
        upsert_insert(session, AnalysisCache).values(
            experiment_id=experiment_id, step=step, kind=kind, status=ANALYSIS_PENDING,
            attempts=1, created_at=utcnow(),
        ).on_conflict_do_nothing().returning(AnalysisCache.step)
    ).first() is not None
    session.commit()
    if inserted:
        return AnalysisRequest("queued", attempts=1)
    row = session.execute(
        select(AnalysisCache.status, AnalysisCache.data, AnalysisCache.error,
               AnalysisCache.attempts, AnalysisCache.created_at)
        .where(*_row(experiment_id, step, kind))
    ).one_or_none()
    session.commit()
    if row is None:  # deleted in between: ask again
        return request_checkpoint_analysis(session, experiment_id, step, max_attempts, kind)
    status, data, error, attempts, since = row
    # A task lost with its message (a broker flushed) would leave the row pending for ever.
    stale = status == ANALYSIS_PENDING and utcnow() - since > STALE_PENDING
    if (status == ANALYSIS_FAILED or stale) and attempts < max_attempts:
        retried = session.execute(
            update(AnalysisCache)
            .where(*_row(experiment_id, step, kind),
                   AnalysisCache.status == status, AnalysisCache.attempts == attempts)
            .values(status=ANALYSIS_PENDING, attempts=attempts + 1, created_at=utcnow())
        ).rowcount
        session.commit()
        return AnalysisRequest("queued" if retried else ANALYSIS_PENDING, error=error,
                               attempts=attempts + 1)
    return AnalysisRequest(status, data=data, error=error, attempts=attempts)


def fail_cached_analysis(
    session: Session, experiment_id: str, step: int, error: str, *, final: bool = False,
    kind: str = FOURIER,
) -> None:
    """Record that the analysis of a kind of a step failed, and why; `final` (a corrupt
    checkpoint: no retry can help) makes it the served answer at once."""
    statement = upsert_insert(session, AnalysisCache).values(
        experiment_id=str(experiment_id), step=step, kind=kind, status=ANALYSIS_FAILED,
        error=error, attempts=1_000_000 if final else 1, created_at=utcnow(),
    )
    session.execute(statement.on_conflict_do_update(
        index_elements=KEY,
        set_={"status": ANALYSIS_FAILED, "error": error, "data": None,
              **({"attempts": statement.excluded.attempts} if final else {})},
    ))
    session.commit()


def withdraw_analysis_request(
    session: Session, experiment_id: str, step: int, kind: str = FOURIER
) -> None:
    """Forget a pending request whose task could not be queued (the broker was down)."""
    session.execute(delete(AnalysisCache).where(
        *_row(experiment_id, step, kind), AnalysisCache.status == ANALYSIS_PENDING,
    ))
    session.commit()
