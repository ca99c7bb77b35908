"""Experiment (job) state: creation, reads, the cursor-paginated listing, and every state change.

State changes that race (claim, progress, heartbeat, cancel, finish, and the reaper's requeue)
are compare-and-swap UPDATEs on (status, attempt): the database, not the broker, decides which
worker runs a job. service.infra.lifecycle runs the reaper and the reconciler; the rows they
read and write are read and written here.
"""
from __future__ import annotations

import base64
import logging
import uuid
from datetime import datetime, timedelta
from typing import Any, TypeVar

from sqlalchemy import Select, and_, or_, select, update
from sqlalchemy.orm import Session

from service.contract.models import (
    CANCELLED,
    FAILED,
    FINISHED_STATUSES,
    PAUSED,
    LOCAL_OWNER,
    QUEUED,
    RUNNING,
    STATUSES,
    Experiment,
    Sweep,
    utcnow,
)
from service.contract.spec import ExperimentSpec
from service.store.clock import db_utcnow

log = logging.getLogger(__name__)

MAX_STEP = 2**31 - 1  # steps, members and bucket numbers are 32-bit integers in the tables


class ExperimentNotFound(LookupError):
    def __init__(self, experiment_id: str) -> None:
        super().__init__(f"experiment {experiment_id} not found")
        self.experiment_id = experiment_id


def require_experiment(session: Session, experiment_id: str) -> None:
    """Raise ExperimentNotFound unless the experiment exists."""
    if session.scalar(select(Experiment.id).where(Experiment.id == experiment_id)) is None:
        raise ExperimentNotFound(experiment_id)


def create_experiment(
    session: Session, spec: ExperimentSpec, queue: str, owner: str = LOCAL_OWNER
) -> Experiment:
    """Store a new job of `owner`: status 'queued', attempt 0, the resolved spec as JSON."""
    experiment = Experiment(
        id=str(uuid.uuid4()),
        name=spec.name,
        owner=owner,
        status=QUEUED,
        spec=spec.model_dump(mode="json"),
        queue=queue,
        step=0,
        total_steps=spec.training.steps,
        created_at=utcnow(),
        attempt=0,
        max_attempts=3,
        cancel_requested=False,
    )
    session.add(experiment)
    session.commit()
    return experiment


def get_experiment(session: Session, experiment_id: str) -> Experiment | None:
    """The job as it is in the database now (never a stale copy from the session)."""
    experiment = session.get(Experiment, str(experiment_id), populate_existing=True)
    session.commit()
    return experiment


def _encode_cursor(row: Experiment | Sweep) -> str:
    raw = f"{row.created_at.isoformat()}|{row.id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        created, row_id = raw.split("|")
        created_at = datetime.fromisoformat(created)
        uuid.UUID(row_id)
        if created_at.tzinfo is None:
            raise ValueError("naive timestamp")
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValueError(
            f"invalid cursor {cursor!r}: pass next_cursor from a previous page"
        ) from exc
    return created_at, row_id


Row = TypeVar("Row", Experiment, Sweep)


def newest_first_page(
    session: Session, query: Select[tuple[Row]], table: type[Row], limit: int, cursor: str | None
) -> tuple[list[Row], str | None]:
    """A page of `query` (over experiments or sweeps), newest first, and the cursor of the next
    page (None on the last page).

    Keyset pagination on (created_at, id): stable while new rows arrive, O(limit) per page.
    Raises ValueError on a limit under 1 or a malformed cursor."""
    if limit < 1:
        raise ValueError(f"limit must be at least 1 (got {limit})")
    if cursor:
        created_at, last_id = _decode_cursor(cursor)
        query = query.where(
            or_(
                table.created_at < created_at,
                and_(table.created_at == created_at, table.id < last_id),
            )
        )
    query = query.order_by(table.created_at.desc(), table.id.desc()).limit(limit + 1)
    rows = list(session.scalars(query.execution_options(populate_existing=True)))
    session.commit()
    next_cursor = _encode_cursor(rows[limit - 1]) if len(rows) > limit else None
    return rows[:limit], next_cursor


def list_experiments(
    session: Session,
    *,
    status: str | None = None,
    name: str | None = None,
    owner: str | None = None,
    sweep_id: str | uuid.UUID | None = None,
    limit: int = 50,
    cursor: str | None = None,
) -> tuple[list[Experiment], str | None]:
    """A page of jobs, newest first, and the cursor of the next page (None on the last page).

    Keyset pagination on (created_at, id) (newest_first_page). `name`, `owner` and `sweep_id`
    (a sweep's members) match exactly. Raises ValueError on an unknown status or a malformed
    cursor.
    """
    if status is not None and status not in STATUSES:
        raise ValueError(f"unknown status {status!r}; valid: {', '.join(STATUSES)}")
    query = select(Experiment)
    if status is not None:
        query = query.where(Experiment.status == status)
    if name is not None:
        query = query.where(Experiment.name == name)
    if owner is not None:
        query = query.where(Experiment.owner == owner)
    if sweep_id is not None:
        query = query.where(Experiment.sweep_id == str(sweep_id))
    return newest_first_page(session, query, Experiment, limit, cursor)


def _update_running(session: Session, experiment_id: str, attempt: int, **values: Any) -> bool:
    """CAS on (status='running', attempt): a stale worker of an earlier attempt changes nothing."""
    result = session.execute(
        update(Experiment)
        .where(
            Experiment.id == str(experiment_id),
            Experiment.status == RUNNING,
            Experiment.attempt == attempt,
        )
        .values(**values)
        .execution_options(synchronize_session=False)
    )
    session.commit()
    return result.rowcount == 1


def holds_attempt(session: Session, experiment_id: str, attempt: int) -> bool:
    """Whether `attempt` of the experiment is running, in the session's transaction, which then
    holds the job's row (FOR SHARE on PostgreSQL) until it ends: a claim or a requeue waits, so
    a write guarded by this lands only while the writer's attempt owns the job. Raises
    ExperimentNotFound."""
    row = session.execute(
        select(Experiment.status, Experiment.attempt)
        .where(Experiment.id == str(experiment_id))
        .with_for_update(read=True)
    ).one_or_none()
    if row is None:
        raise ExperimentNotFound(str(experiment_id))
    return row.status == RUNNING and row.attempt == attempt


def request_cancel(session: Session, experiment_id: str) -> Experiment | None:
    """Cancel a job: queued or paused -> 'cancelled' at once; running -> cancel_requested=True
    (the worker finishes it 'cancelled'); finished -> unchanged. None for an unknown id."""
    for _ in range(5):  # a claim may slip in between the read and the CAS: read again
        experiment = get_experiment(session, experiment_id)
        if experiment is None or experiment.status in FINISHED_STATUSES:
            return experiment
        now = utcnow()
        if experiment.status in (QUEUED, PAUSED):
            values: dict[str, Any] = {
                "status": CANCELLED, "cancel_requested": True, "finished_at": now,
            }
        else:
            values = {"cancel_requested": True}
        result = session.execute(
            update(Experiment)
            .where(
                Experiment.id == experiment.id,
                Experiment.status == experiment.status,
                Experiment.attempt == experiment.attempt,
            )
            .values(**values)
            .execution_options(synchronize_session=False)
        )
        session.commit()
        if result.rowcount == 1:
            return get_experiment(session, experiment.id)
    raise RuntimeError(f"experiment {experiment_id} kept changing state while cancelling")


def finish_experiment(
    session: Session,
    experiment_id: str,
    attempt: int,
    status: str,
    *,
    error: str | None = None,
    summary: dict | None = None,
) -> bool:
    """End a running job with a final status (succeeded, failed, cancelled). CAS on (running,
    attempt): False, and nothing changed, when this attempt no longer owns the job."""
    if status not in FINISHED_STATUSES:
        raise ValueError(f"status must be one of {sorted(FINISHED_STATUSES)} (got {status!r})")
    now = utcnow()
    return _update_running(
        session,
        experiment_id,
        attempt,
        status=status,
        error=error,
        summary=summary,
        finished_at=now,
        heartbeat_at=db_utcnow(),
    )


# ---- the reaper and the reconciler (run by service.infra.lifecycle) ----------------------------


StaleJob = tuple[str, int, int, bool, datetime, str | None]


def reap_stale_jobs(session: Session, stale_after_s: float) -> tuple[list[str], list[str]]:
    """Requeue running jobs whose heartbeat is older than stale_after_s.

    Returns (requeued ids, ended ids). A job that has used up max_attempts fails with a reason;
    one whose cancel was requested ends 'cancelled'. Each change is a compare-and-swap on
    (status, attempt) that checks the heartbeat again, so a worker that comes back to life
    cannot finish a requeued job, and a heartbeat that lands between the read and the write
    keeps its job. "Older" is by the database's clock, which wrote the heartbeats too.
    """
    return requeue_stale_jobs(session, stale_jobs(session, stale_after_s), stale_after_s)


def stale_jobs(session: Session, stale_after_s: float) -> list[StaleJob]:
    """(id, attempt, max_attempts, cancel_requested, heartbeat_at, worker) of the running jobs
    whose heartbeat is older than stale_after_s by the database's clock."""
    return [tuple(row) for row in session.execute(
        select(Experiment.id, Experiment.attempt, Experiment.max_attempts,
               Experiment.cancel_requested, Experiment.heartbeat_at, Experiment.worker)
        .where(Experiment.status == RUNNING, Experiment.heartbeat_at < db_utcnow(stale_after_s))
    ).all()]


def requeue_stale_jobs(
    session: Session, stale: list[StaleJob], stale_after_s: float
) -> tuple[list[str], list[str]]:
    """The reaper's writes for the jobs stale_jobs read: each UPDATE checks again that the job
    is running this attempt with a heartbeat still older than stale_after_s."""
    now = utcnow()
    requeued, ended = [], []
    for exp_id, attempt, max_attempts, cancel, beat, worker in stale:
        if cancel:
            values = {"status": CANCELLED, "finished_at": now}
        elif attempt >= max_attempts:
            values = {
                "status": FAILED, "finished_at": now,
                "error": (
                    f"gave up after {attempt} attempts (max_attempts={max_attempts}): the worker "
                    f"{worker} stopped sending heartbeats (last at {beat.isoformat()})"
                ),
            }
        else:
            values = {"status": QUEUED, "worker": None, "steps_per_s": None, "eta_s": None}
        result = session.execute(
            update(Experiment)
            .where(Experiment.id == exp_id, Experiment.status == RUNNING,
                   Experiment.attempt == attempt,
                   Experiment.heartbeat_at < db_utcnow(stale_after_s))
            .values(**values)
            .execution_options(synchronize_session=False)
        )
        if result.rowcount == 1:
            (requeued if values["status"] == QUEUED else ended).append(exp_id)
            log.warning("job %s: heartbeat stale since %s on %s -> %s",
                        exp_id, beat, worker, values["status"])
    session.commit()
    return requeued, ended


def queued_jobs(
    session: Session, older_than_s: float, limit: int | None = None
) -> list[tuple[str, str]]:
    """(job id, queue) of jobs queued for longer than older_than_s (by creation or last start),
    of the `limit` oldest queued rows. A pack member's job id is its pack's: a pack is one job
    on the queue."""
    cutoff = utcnow() - timedelta(seconds=older_than_s)
    rows = session.execute(
        select(Experiment.id, Experiment.pack_id, Experiment.queue, Experiment.started_at)
        .where(Experiment.status == QUEUED, Experiment.created_at < cutoff)
        .order_by(Experiment.created_at, Experiment.id)
        .limit(limit)
    ).all()
    session.commit()
    jobs = {
        pack_id or exp_id: queue
        for exp_id, pack_id, queue, started in rows
        if started is None or started < cutoff
    }
    return list(jobs.items())


def job_queues(session: Session, experiment_ids: list[str]) -> dict[str, str]:
    """{job id: queue} of these experiments: the message that runs each of them again (a pack
    member's job is its pack, enqueued once however many of its members were requeued)."""
    if not experiment_ids:
        return {}
    rows = session.execute(
        select(Experiment.id, Experiment.pack_id, Experiment.queue)
        .where(Experiment.id.in_(experiment_ids))
    ).all()
    session.commit()
    return {pack_id or exp_id: queue for exp_id, pack_id, queue in rows}


def sweep_ids(session: Session, experiment_ids: list[str]) -> list[str | None]:
    """Each experiment's sweep id (None: not a sweep's member), in the order given, in one query."""
    rows = dict(session.execute(
        select(Experiment.id, Experiment.sweep_id).where(Experiment.id.in_(experiment_ids))
    ).all()) if experiment_ids else {}
    return [rows.get(exp_id) for exp_id in experiment_ids]

