"""The store: every read and write of job state, metrics, checkpoints and cached analysis.

Each function takes a SQLAlchemy Session first and commits its own work (reads commit too, so a
long-lived worker session never sits idle inside a transaction). State changes that race (claim,
progress, cancel, finish) are compare-and-swap UPDATEs: the database, not the broker, decides
which worker runs a job.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import itertools
import math
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from itertools import repeat
from typing import Any

import numpy as np
from sqlalchemy import and_, func, or_, select, update
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, undefer

from service.checkpoint_format import check_checkpoint
from service.downsample import METHOD, bucket_extremes, bucket_level, buckets_for, minmax_downsample
from service.models import (
    CANCELLED,
    FAILED,
    FINISHED_STATUSES,
    LOCAL_OWNER,
    QUEUED,
    ROLLUP_LEVELS,
    RUNNING,
    STATUSES,
    AnalysisCache,
    Checkpoint,
    Experiment,
    MetricSeries,
    utcnow,
)
from service.spec import ExperimentSpec

MAX_STEP = 2**31 - 1  # steps, members and bucket numbers are 32-bit integers in the tables
MAX_NAME_LENGTH = 200


class ExperimentNotFound(LookupError):
    def __init__(self, experiment_id: str) -> None:
        super().__init__(f"experiment {experiment_id} not found")
        self.experiment_id = experiment_id


class CheckpointCorrupt(ValueError):
    """A stored checkpoint that must not be loaded or served: its bytes no longer hash to the
    sha256 recorded when it was written, or they are not a groklab safetensors checkpoint."""

    def __init__(self, checkpoint: Checkpoint, problem: str) -> None:
        super().__init__(
            f"checkpoint at step {checkpoint.step} of experiment {checkpoint.experiment_id} is "
            f"corrupt: {problem}"
        )
        self.experiment_id = checkpoint.experiment_id
        self.step = checkpoint.step


def _insert(session: Session, table: Any):
    """INSERT with ON CONFLICT support for the session's dialect (PostgreSQL or SQLite)."""
    dialect = session.get_bind().dialect.name
    return postgresql_insert(table) if dialect == "postgresql" else sqlite_insert(table)


def _is_postgresql(session: Session) -> bool:
    return session.get_bind().dialect.name == "postgresql"


# ---- experiments -------------------------------------------------------------------------


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


def _encode_cursor(experiment: Experiment) -> str:
    raw = f"{experiment.created_at.isoformat()}|{experiment.id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        created, experiment_id = raw.split("|")
        created_at = datetime.fromisoformat(created)
        uuid.UUID(experiment_id)
        if created_at.tzinfo is None:
            raise ValueError("naive timestamp")
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValueError(
            f"invalid cursor {cursor!r}: pass next_cursor from a previous page"
        ) from exc
    return created_at, experiment_id


def list_experiments(
    session: Session,
    *,
    status: str | None = None,
    name: str | None = None,
    owner: str | None = None,
    limit: int = 50,
    cursor: str | None = None,
) -> tuple[list[Experiment], str | None]:
    """A page of jobs, newest first, and the cursor of the next page (None on the last page).

    Keyset pagination on (created_at, id): stable while new jobs arrive, O(limit) per page.
    `name` and `owner` match exactly. Raises ValueError on an unknown status or a malformed
    cursor.
    """
    if status is not None and status not in STATUSES:
        raise ValueError(f"unknown status {status!r}; valid: {', '.join(STATUSES)}")
    if limit < 1:
        raise ValueError(f"limit must be at least 1 (got {limit})")
    query = select(Experiment)
    if status is not None:
        query = query.where(Experiment.status == status)
    if name is not None:
        query = query.where(Experiment.name == name)
    if owner is not None:
        query = query.where(Experiment.owner == owner)
    if cursor:
        created_at, last_id = _decode_cursor(cursor)
        query = query.where(
            or_(
                Experiment.created_at < created_at,
                and_(Experiment.created_at == created_at, Experiment.id < last_id),
            )
        )
    query = query.order_by(Experiment.created_at.desc(), Experiment.id.desc()).limit(limit + 1)
    experiments = list(session.scalars(query.execution_options(populate_existing=True)))
    session.commit()
    next_cursor = _encode_cursor(experiments[limit - 1]) if len(experiments) > limit else None
    return experiments[:limit], next_cursor


def claim_experiment(session: Session, experiment_id: str, worker: str) -> Experiment | None:
    """Move a queued job to 'running' for this worker, or return None if it can't be claimed.

    A compare-and-swap: UPDATE ... WHERE status='queued' AND attempt=<the attempt just read>.
    Of two workers holding the same (redelivered) message exactly one wins; a job that is
    already running, finished or cancelled is never started again. A queued job that has used up
    max_attempts is marked failed instead of being started.
    """
    experiment = get_experiment(session, experiment_id)
    if experiment is None or experiment.status != QUEUED:
        return None
    now = utcnow()
    is_current = and_(
        Experiment.id == experiment.id,
        Experiment.status == QUEUED,
        Experiment.attempt == experiment.attempt,
    )
    if experiment.attempt >= experiment.max_attempts:
        session.execute(
            update(Experiment)
            .where(is_current)
            .values(
                status=FAILED,
                finished_at=now,
                error=f"gave up after {experiment.attempt} attempts (max_attempts)",
            )
            .execution_options(synchronize_session=False)
        )
        session.commit()
        return None
    result = session.execute(
        update(Experiment)
        .where(is_current)
        .values(
            status=RUNNING,
            attempt=Experiment.attempt + 1,
            worker=worker,
            started_at=now,
            heartbeat_at=now,
            finished_at=None,
            error=None,
        )
        .execution_options(synchronize_session=False)
    )
    session.commit()
    if result.rowcount != 1:
        return None
    return get_experiment(session, experiment.id)


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


def update_progress(
    session: Session,
    experiment_id: str,
    attempt: int,
    *,
    step: int,
    steps_per_s: float | None,
    eta_s: float | None,
) -> bool:
    """Record progress and the heartbeat. False (nothing changed) unless running this attempt."""
    return _update_running(
        session,
        experiment_id,
        attempt,
        step=step,
        steps_per_s=_finite_or_none(steps_per_s),
        eta_s=_finite_or_none(eta_s),
        heartbeat_at=utcnow(),
    )


def heartbeat(session: Session, experiment_id: str, attempt: int) -> bool:
    """Mark this attempt alive. False when the job is no longer running this attempt."""
    return _update_running(session, experiment_id, attempt, heartbeat_at=utcnow())


def cancel_requested(session: Session, experiment_id: str) -> bool:
    """Whether someone asked to cancel this job (the worker polls this and stops cooperatively)."""
    flag = session.scalar(
        select(Experiment.cancel_requested).where(Experiment.id == str(experiment_id))
    )
    session.commit()
    return bool(flag)


def request_cancel(session: Session, experiment_id: str) -> Experiment | None:
    """Cancel a job: queued -> 'cancelled' at once; running -> cancel_requested=True (the worker
    finishes it 'cancelled'); finished -> unchanged. None for an unknown id."""
    for _ in range(5):  # a claim may slip in between the read and the CAS: read again
        experiment = get_experiment(session, experiment_id)
        if experiment is None or experiment.status in FINISHED_STATUSES:
            return experiment
        now = utcnow()
        if experiment.status == QUEUED:
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
        heartbeat_at=now,
    )


def _finite_or_none(value: float | None) -> float | None:
    return None if value is None or not math.isfinite(value) else float(value)


def _require_experiment(session: Session, experiment_id: str) -> None:
    if session.scalar(select(Experiment.id).where(Experiment.id == experiment_id)) is None:
        raise ExperimentNotFound(experiment_id)


# ---- metrics: ingestion ------------------------------------------------------------------


class _Points:
    """A batch of metric points as columns, validated. Names are also coded as integers
    (name_code indexes unique_names) so that grouping by name is a numpy operation."""

    def __init__(self, rows: list[dict]) -> None:
        try:
            self.names: list[str] = [row["name"] for row in rows]
            members = [row["member"] for row in rows]
            steps = [row["step"] for row in rows]
            values = [row["value"] for row in rows]
        except (KeyError, TypeError) as exc:
            raise ValueError(
                f"each metric row must be a dict with step, member, name, value ({exc})"
            ) from exc
        codes: dict[str, int] = {}
        self.name_code = np.fromiter(
            (codes.setdefault(name, len(codes)) for name in self.names),
            dtype=np.int64,
            count=len(self.names),
        )
        self.unique_names = list(codes)
        for name in self.unique_names:
            if not isinstance(name, str) or not 0 < len(name) <= MAX_NAME_LENGTH or "\x00" in name:
                raise ValueError(
                    f"metric name must be a string of 1..{MAX_NAME_LENGTH} characters without NUL"
                    f" (got {name!r})"
                )
        self.members = _int_column("member", members)
        self.steps = _int_column("step", steps)
        try:
            self.values = np.asarray(values, dtype=np.float64)
        except (TypeError, ValueError, OverflowError) as exc:
            raise ValueError(f"metric values must be numbers ({exc})") from exc
        if self.values.ndim != 1:
            raise ValueError("metric values must be plain numbers")

    def __len__(self) -> int:
        return len(self.names)

    def take(self, index: np.ndarray) -> _Points:
        out = object.__new__(_Points)
        out.names = [self.names[i] for i in index.tolist()]
        out.unique_names = self.unique_names
        out.name_code, out.members, out.steps, out.values = (
            self.name_code[index], self.members[index], self.steps[index], self.values[index],
        )
        return out

    def db_values(self) -> list[float | None]:
        """Values for the database: NaN becomes NULL (SQLite cannot store NaN)."""
        values = self.values.tolist()
        if np.isnan(self.values).any():
            return [None if v != v else v for v in values]
        return values


def _int_column(what: str, items: list[Any]) -> np.ndarray:
    column = np.asarray(items)
    if column.ndim != 1 or (len(column) and column.dtype.kind not in "iu"):
        raise ValueError(f"metric {what} must be integers")
    column = column.astype(np.int64)
    if len(column) and (column.min() < 0 or column.max() > MAX_STEP):
        raise ValueError(f"metric {what} must be in [0, {MAX_STEP}]")
    return column


def ingest_metrics(session: Session, experiment_id: str, rows: list[dict]) -> int:
    """Store metric points `{"step", "member", "name", "value"}`; returns how many were new.

    Idempotent: a point already stored for (experiment, name, member, step) is skipped, so a
    retried or redelivered batch never duplicates anything (the first value written wins).
    NaN values are stored as NULL. The summaries that serve downsampled queries (metric_series,
    metric_rollups) are updated in the same transaction, from exactly the points that were new.
    Raises ExperimentNotFound, or ValueError for a malformed row.

    Fast path: one bulk insert that assumes every point is new (binary COPY on PostgreSQL,
    executemany on SQLite). If a point exists already it fails on the primary key; the
    transaction is rolled back and the batch goes again through INSERT ... ON CONFLICT DO NOTHING
    RETURNING, which reports the points that were new. On PostgreSQL the transaction commits
    with synchronous_commit=off: a crash of the database server can lose the last fraction of a
    second of metric points, never corrupt anything (the next synchronous commit flushes them).
    """
    experiment_id = str(experiment_id)
    points = _Points(rows)
    if not len(points):
        return 0
    postgresql = _is_postgresql(session)
    try:
        if not postgresql:  # PostgreSQL checks within _write_summaries, saving a round trip
            _require_experiment(session, experiment_id)
        try:
            _insert_new_points(session, experiment_id, points, postgresql)
            new = points
        except Exception as exc:
            if not _is_integrity_error(exc):
                raise
            session.rollback()
            new = _insert_skipping_existing(session, experiment_id, points, postgresql)
        if len(new):
            _write_summaries(session, experiment_id, new, postgresql)
        session.commit()
    except BaseException:
        session.rollback()
        raise
    return len(new)


def _is_integrity_error(exc: BaseException) -> bool:
    if isinstance(exc, IntegrityError):
        return True
    try:  # COPY goes to psycopg directly, which raises its own IntegrityError
        import psycopg
    except ImportError:  # pragma: no cover - psycopg is a dependency
        return False
    return isinstance(exc, psycopg.errors.IntegrityError)


def _insert_new_points(
    session: Session, experiment_id: str, points: _Points, postgresql: bool
) -> None:
    """One bulk INSERT of points assumed new; fails (IntegrityError) if any exists already."""
    if postgresql:
        dbapi = session.connection().connection.driver_connection
        with dbapi.cursor() as cursor:
            with cursor.copy(
                "COPY metrics (experiment_id, name, member, step, value) FROM STDIN (FORMAT BINARY)"
            ) as copy:
                copy.write(_copy_binary(experiment_id, points))
        return
    session.connection().exec_driver_sql(
        "INSERT INTO metrics (experiment_id, name, member, step, value) VALUES (?, ?, ?, ?, ?)",
        list(zip(
            repeat(experiment_id), points.names, points.members.tolist(), points.steps.tolist(),
            points.db_values(),
        )),
    )


_PGCOPY_HEADER = b"PGCOPY\n\xff\r\n\x00" + bytes(8)  # signature, flags, header extension
_PGCOPY_TRAILER = b"\xff\xff"


def _copy_binary(experiment_id: str, points: _Points) -> bytes:
    """The points in COPY's binary format, laid out by numpy: the rows of one metric name (and
    one NULL-ness of the value) share a fixed-size record, so each group is one array."""
    eid = experiment_id.encode()
    null = np.isnan(points.values)
    chunks = [_PGCOPY_HEADER]
    for (code, name), is_null in itertools.product(enumerate(points.unique_names), (False, True)):
        index = np.flatnonzero((points.name_code == code) & (null == is_null))
        if not len(index):
            continue
        encoded = name.encode()
        fields = [
            ("n_fields", ">i2"), ("eid_len", ">i4"), ("eid", f"S{len(eid)}"),
            ("name_len", ">i4"), ("name", f"S{len(encoded)}"),
            ("member_len", ">i4"), ("member", ">i4"), ("step_len", ">i4"), ("step", ">i4"),
            ("value_len", ">i4"),
        ]
        if not is_null:
            fields.append(("value", ">f8"))
        records = np.empty(len(index), dtype=np.dtype(fields))
        records["n_fields"] = 5
        records["eid_len"], records["eid"] = len(eid), eid
        records["name_len"], records["name"] = len(encoded), encoded
        records["member_len"], records["member"] = 4, points.members[index]
        records["step_len"], records["step"] = 4, points.steps[index]
        if is_null:
            records["value_len"] = -1  # NULL
        else:
            records["value_len"], records["value"] = 8, points.values[index]
        chunks.append(records.tobytes())
    chunks.append(_PGCOPY_TRAILER)
    return b"".join(chunks)


def _insert_skipping_existing(
    session: Session, experiment_id: str, points: _Points, postgresql: bool
) -> _Points:
    """INSERT ... ON CONFLICT DO NOTHING RETURNING: the points that were new."""
    columns = [points.names, points.members.tolist(), points.steps.tolist(), points.db_values()]
    insert = "INSERT INTO metrics (experiment_id, name, member, step, value) "
    returning = " ON CONFLICT DO NOTHING RETURNING name, member, step"
    if postgresql:
        literals = map(_pg_array_literal, columns, ("varchar", "int", "int", "float8"))
        inserted = _fetch(
            session,
            insert + "SELECT %s, * FROM unnest(%s::varchar[], %s::int[], %s::int[], "
            "%s::float8[])" + returning,
            (experiment_id, *literals),
        )
    else:
        rows = list(zip(repeat(experiment_id), *columns))
        inserted = []
        for start in range(0, len(rows), 5000):  # SQLite binds at most 32766 parameters
            chunk = rows[start:start + 5000]
            inserted += _fetch(
                session,
                insert + "VALUES " + ", ".join(["(?, ?, ?, ?, ?)"] * len(chunk)) + returning,
                tuple(x for row in chunk for x in row),
            )
    new = {tuple(row) for row in inserted}
    # Keep the first occurrence of each new key (a batch may repeat a key itself).
    keep = []
    for i, key in enumerate(zip(*columns[:3])):
        if key in new:
            new.discard(key)
            keep.append(i)
    return points.take(np.asarray(keep, dtype=np.int64))


# The summaries. Each ON CONFLICT clause keeps the more extreme of the stored and the new value,
# so batches may arrive in any order and still agree. Every SET expression sees the row as it
# was before the update.
_TAKE_EXTREME = (
    "(metric_rollups.{c}_value IS NULL OR (excluded.{c}_value IS NOT NULL AND "
    "(excluded.{c}_value {op} metric_rollups.{c}_value OR (excluded.{c}_value = "
    "metric_rollups.{c}_value AND excluded.{c}_step < metric_rollups.{c}_step))))"
)
_ROLLUP_MERGE = """
ON CONFLICT (experiment_id, level, name, member, bucket) DO UPDATE SET
    n = metric_rollups.n + excluded.n,
    min_step = CASE WHEN {take_min} THEN excluded.min_step ELSE metric_rollups.min_step END,
    min_value = CASE WHEN {take_min} THEN excluded.min_value ELSE metric_rollups.min_value END,
    max_step = CASE WHEN {take_max} THEN excluded.max_step ELSE metric_rollups.max_step END,
    max_value = CASE WHEN {take_max} THEN excluded.max_value ELSE metric_rollups.max_value END
""".format(
    take_min=_TAKE_EXTREME.format(c="min", op="<"), take_max=_TAKE_EXTREME.format(c="max", op=">")
)
_SERIES_MERGE = """
ON CONFLICT (experiment_id, name, member) DO UPDATE SET
    n = metric_series.n + excluded.n,
    first_value = CASE WHEN excluded.first_step < metric_series.first_step
        THEN excluded.first_value ELSE metric_series.first_value END,
    first_step = CASE WHEN excluded.first_step < metric_series.first_step
        THEN excluded.first_step ELSE metric_series.first_step END,
    last_value = CASE WHEN excluded.last_step > metric_series.last_step
        THEN excluded.last_value ELSE metric_series.last_value END,
    last_step = CASE WHEN excluded.last_step > metric_series.last_step
        THEN excluded.last_step ELSE metric_series.last_step END
"""
# (table, [(column, PostgreSQL type)] after experiment_id, ON CONFLICT clause)
_SERIES_UPSERT = (
    "metric_series",
    [("name", "varchar"), ("member", "int"), ("n", "int"), ("first_step", "int"),
     ("first_value", "float8"), ("last_step", "int"), ("last_value", "float8")],
    _SERIES_MERGE,
)
_ROLLUP_UPSERT = (
    "metric_rollups",
    [("level", "int"), ("name", "varchar"), ("member", "int"), ("bucket", "int"), ("n", "int"),
     ("min_step", "int"), ("min_value", "float8"), ("max_step", "int"), ("max_value", "float8")],
    _ROLLUP_MERGE,
)


def _upsert_sql(upsert: tuple[str, list[tuple[str, str]], str], postgresql: bool) -> str:
    """SQLite: VALUES for executemany. PostgreSQL: SELECT over unnest()ed arrays, one statement
    for all rows (a statement per row would run the executor once per row)."""
    table, typed, merge = upsert
    columns = ", ".join(["experiment_id"] + [column for column, _ in typed])
    if postgresql:
        arrays = ", ".join(f"%s::{pg_type}[]" for _, pg_type in typed)
        return f"INSERT INTO {table} ({columns}) SELECT %s, * FROM unnest({arrays}) {merge}"
    marks = ", ".join("?" * (len(typed) + 1))
    return f"INSERT INTO {table} ({columns}) VALUES ({marks}) {merge}"


# PostgreSQL: both upserts, the experiment check and the asynchronous commit in one round trip.
_PG_SUMMARIES_SQL = (
    f"WITH series AS ({_upsert_sql(_SERIES_UPSERT, True)}), "
    f"rollups AS ({_upsert_sql(_ROLLUP_UPSERT, True)}) "
    "SELECT EXISTS (SELECT 1 FROM experiments WHERE id = %s), "
    "set_config('synchronous_commit', 'off', true)"
)
_SQLITE_SERIES_SQL = _upsert_sql(_SERIES_UPSERT, False)
_SQLITE_ROLLUPS_SQL = _upsert_sql(_ROLLUP_UPSERT, False)


def _write_summaries(
    session: Session, experiment_id: str, points: _Points, postgresql: bool
) -> None:
    """Fold new points into metric_series (count, first and last point) and metric_rollups (per
    level and bucket: count, smallest and largest value, earliest step on ties)."""
    series, rollups = _summaries(points)
    connection = session.connection()
    if postgresql:
        series_types = [pg_type for _, pg_type in _SERIES_UPSERT[1]]
        rollup_types = [pg_type for _, pg_type in _ROLLUP_UPSERT[1]]
        exists, _ = connection.exec_driver_sql(_PG_SUMMARIES_SQL, (
            experiment_id, *map(_pg_array_literal, series, series_types),
            experiment_id, *map(_pg_array_literal, rollups, rollup_types),
            experiment_id,
        )).one()
        if not exists:
            raise ExperimentNotFound(experiment_id)
        return
    connection.exec_driver_sql(_SQLITE_SERIES_SQL, list(zip(repeat(experiment_id), *series)))
    connection.exec_driver_sql(_SQLITE_ROLLUPS_SQL, list(zip(repeat(experiment_id), *rollups)))


def _summaries(points: _Points) -> tuple[list[list], list[list]]:
    """The metric_series and metric_rollups rows of a batch of new points, as columns."""
    n = len(points)
    # A series is (name, member): number them 0..k-1 in numpy.
    members = int(points.members.max()) + 1
    keys, group = np.unique(points.name_code * members + points.members, return_inverse=True)
    key_names = [points.unique_names[k] for k in (keys // members).tolist()]
    key_members = (keys % members).tolist()
    order = np.lexsort((points.steps, group))
    group, steps, values = group[order], points.steps[order], points.values[order]
    step_list = steps.tolist()
    value_list = values.tolist()
    if np.isnan(values).any():
        value_list = [None if v != v else v for v in value_list]

    starts = np.flatnonzero(np.diff(group, prepend=-1))
    ends = np.append(starts[1:], n) - 1
    first_group = group[starts].tolist()
    series_rows = [
        [key_names[g] for g in first_group],
        [key_members[g] for g in first_group],
        (ends - starts + 1).tolist(),
        [step_list[i] for i in starts.tolist()],
        [value_list[i] for i in starts.tolist()],
        [step_list[i] for i in ends.tolist()],
        [value_list[i] for i in ends.tolist()],
    ]

    # Every level at once: one copy of the sorted points per level, grouped by (level, series).
    levels = np.asarray(ROLLUP_LEVELS, dtype=np.int64)
    ext = bucket_extremes(
        np.repeat(np.arange(len(levels)) * len(keys), n) + np.tile(group, len(levels)),
        np.tile(steps, len(levels)) >> np.repeat(levels, n),
        np.tile(values, len(levels)),
    )
    level_index, series_index = np.divmod(ext.group, len(keys))
    point_of_min, point_of_max = (ext.min_index % n).tolist(), (ext.max_index % n).tolist()
    min_steps = [step_list[i] for i in point_of_min]
    min_values = [value_list[i] for i in point_of_min]
    max_steps = [step_list[i] for i in point_of_max]
    max_values = [value_list[i] for i in point_of_max]
    for missing in np.flatnonzero(ext.min_index < 0).tolist():  # buckets of only NaN
        min_steps[missing] = min_values[missing] = max_steps[missing] = max_values[missing] = None
    bucket_series = series_index.tolist()
    rollup_rows = [
        levels[level_index].tolist(),
        [key_names[g] for g in bucket_series],
        [key_members[g] for g in bucket_series],
        ext.bucket.tolist(),
        ext.n.tolist(),
        min_steps, min_values, max_steps, max_values,
    ]
    return series_rows, rollup_rows


def _pg_array_literal(items: list[Any], pg_type: str) -> str:
    """A PostgreSQL array literal. psycopg adapts a list element by element in Python, which
    costs more than the rest of an ingestion batch; joining reprs runs at C speed."""
    if pg_type == "varchar":
        quoted = {
            item: '"' + item.replace("\\", "\\\\").replace('"', '\\"') + '"' for item in set(items)
        }
        return "{" + ",".join([quoted[item] for item in items]) + "}"
    if None in items:
        return "{" + ",".join(["NULL" if item is None else repr(item) for item in items]) + "}"
    return "{" + ",".join(map(repr, items)) + "}"


def _driver_sql(sql: str, postgresql: bool) -> str:
    """SQL written with ? placeholders, for the driver of the dialect (psycopg wants %s)."""
    return sql.replace("?", "%s") if postgresql else sql


# ---- metrics: queries --------------------------------------------------------------------


@dataclass
class _Window:
    """What a query needs of one series: its points in the window, planned before reading."""

    name: str
    member: int
    steps: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    values: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.float64))
    points: int = 0
    # Set when the answer comes from the rollups:
    first: tuple[int, float] | None = None
    last: tuple[int, float] | None = None
    level: int = 0
    inner: tuple[int, int] = (0, -1)  # buckets served from metric_rollups (inclusive)
    # Per bucket: n, min_step, min_value, max_step, max_value (NaN for NULL), as float arrays.
    facts: list[np.ndarray] = field(default_factory=list)


def query_metrics(
    session: Session,
    experiment_id: str,
    *,
    names: list[str] | None,
    from_step: int | None = None,
    to_step: int | None = None,
    max_points: int | None,
    member: int | None = None,
) -> dict:
    """Metric series of one experiment in a step window, downsampled on the server.

    Returns::

        {"experiment_id": str, "method": "minmax-pow2", "max_points": int | None,
         "from_step": int | None, "to_step": int | None,
         "series": [{"name": str, "member": int, "points": int, "downsampled": bool,
                     "steps": [int, ...], "values": [float | None, ...]}, ...]}

    One entry per (name, member) with points in the window, sorted by name then member; `names`
    None means every name, `member` None every ensemble member. `points` counts the raw points in
    the window; `values` are null where the metric was NaN.

    Downsampling, when max_points is given and a series has more points in the window: at most
    max_points points per series; always the first and the last point of the window; and in
    each of at most (max_points - 2) // 2 aligned power-of-two step buckets, the points with the
    smallest and the largest value. service.downsample gives the exact method. It is served from
    the precomputed rollups, so its cost grows with max_points, not with the length of the run.
    """
    experiment_id = str(experiment_id)
    n_buckets = None if max_points is None else buckets_for(max_points)
    if from_step is not None and to_step is not None and from_step > to_step:
        raise ValueError(f"from_step must be at most to_step (got {from_step} > {to_step})")
    lo = 0 if from_step is None else max(0, from_step)
    hi = MAX_STEP if to_step is None else min(MAX_STEP, to_step)

    windows: list[_Window] = []
    planned: list[_Window] = []
    for s in _series_of(session, experiment_id, names, member):
        window = _Window(s.name, s.member)
        if s.last_step < lo or s.first_step > hi:
            continue
        whole = lo <= s.first_step and s.last_step <= hi
        windows.append(window)
        if max_points is None or (whole and s.n <= max_points):
            _read_raw(session, experiment_id, window, lo, hi, max_points)
            continue
        first = (s.first_step, _nan(s.first_value)) if s.first_step >= lo else None
        last = (s.last_step, _nan(s.last_value)) if s.last_step <= hi else None
        first = first or _end_point(session, experiment_id, window, lo, hi, last=False)
        last = last or _end_point(session, experiment_id, window, lo, hi, last=True)
        if first is None or last is None:
            windows.pop()  # the window falls between two points
            continue
        level = bucket_level(first[0], last[0], max(n_buckets, 1))
        if level < ROLLUP_LEVELS[0]:
            # A narrow window (fewer than 16 steps per bucket) is cheap to read whole.
            _read_raw(session, experiment_id, window, first[0], last[0], max_points)
            continue
        width = 1 << level
        first_bucket, last_bucket = first[0] >> level, last[0] >> level
        # Buckets wholly inside the window come from the rollups; an edge bucket that the window
        # cuts through is summarised from its raw points inside the window.
        window.first, window.last, window.level = first, last, level
        window.inner = (
            first_bucket + (1 if lo > first_bucket * width else 0),
            last_bucket - (1 if hi < (last_bucket + 1) * width - 1 else 0),
        )
        planned.append(window)

    _read_rollups(session, experiment_id, planned)
    for window in planned:
        _add_edge_facts(session, experiment_id, window)
        facts = np.concatenate(window.facts) if window.facts else np.zeros((0, 5))
        window.points = int(facts[:, 0].sum())
        if window.points <= max_points:
            _read_raw(session, experiment_id, window, window.first[0], window.last[0], max_points)
            continue
        steps = [np.array([window.first[0], window.last[0]], dtype=np.float64)]
        values = [np.array([window.first[1], window.last[1]])]
        if n_buckets >= 1:
            extreme = ~np.isnan(facts[:, 1])
            steps += [facts[extreme, 1], facts[extreme, 3]]
            values += [facts[extreme, 2], facts[extreme, 4]]
        kept_steps, index = np.unique(np.concatenate(steps), return_index=True)
        window.steps = kept_steps.astype(np.int64)
        window.values = np.concatenate(values)[index]
    session.commit()
    return {
        "experiment_id": experiment_id,
        "method": METHOD,
        "max_points": max_points,
        "from_step": from_step,
        "to_step": to_step,
        "series": [
            {
                "name": w.name,
                "member": w.member,
                "points": w.points,
                "downsampled": len(w.steps) < w.points,
                "steps": w.steps.tolist(),
                "values": _json_values(w.values),
            }
            for w in windows
        ],
    }


def count_metric_series(
    session: Session, experiment_id: str, *, names: list[str] | None, member: int | None
) -> int:
    """How many series (name, member) a metrics query with these filters can return."""
    query = select(func.count()).select_from(MetricSeries).where(
        MetricSeries.experiment_id == str(experiment_id)
    )
    if names is not None:
        query = query.where(MetricSeries.name.in_(names))
    if member is not None:
        query = query.where(MetricSeries.member == member)
    count = session.scalar(query)
    session.commit()
    return int(count or 0)


def list_metric_series(session: Session, experiment_id: str) -> list[MetricSeries]:
    """Every series of an experiment (name, member, point count, first and last step)."""
    series = _series_of(session, str(experiment_id), None, None)
    session.commit()
    return series


def _series_of(
    session: Session, experiment_id: str, names: list[str] | None, member: int | None
) -> list[MetricSeries]:
    query = (
        select(MetricSeries)
        .where(MetricSeries.experiment_id == experiment_id)
        .order_by(MetricSeries.name, MetricSeries.member)
        .execution_options(populate_existing=True)
    )
    if names is not None:
        query = query.where(MetricSeries.name.in_(names))
    if member is not None:
        query = query.where(MetricSeries.member == member)
    return list(session.scalars(query))


def _nan(value: float | None) -> float:
    return math.nan if value is None else float(value)


def _json_values(values: np.ndarray) -> list[float | None]:
    out = values.tolist()
    if np.isnan(values).any():
        return [None if v != v else v for v in out]
    return out


_RAW_SQL = (
    "SELECT step, value FROM metrics WHERE experiment_id = ? AND name = ? AND member = ? "
    "AND step >= ? AND step <= ? ORDER BY step"
)
_END_SQL = (
    "SELECT step, value FROM metrics WHERE experiment_id = ? AND name = ? AND member = ? "
    "AND step >= ? AND step <= ? ORDER BY step {order} LIMIT 1"
)


def _fetch(session: Session, sql: str, params: tuple) -> list[tuple]:
    """Rows as plain tuples straight from the driver: the fast way to read many points."""
    postgresql = _is_postgresql(session)
    cursor = session.connection().connection.driver_connection.cursor()
    try:
        cursor.execute(_driver_sql(sql, postgresql), params)
        return cursor.fetchall()
    finally:
        cursor.close()


def _read_raw(
    session: Session,
    experiment_id: str,
    window: _Window,
    lo: int,
    hi: int,
    max_points: int | None = None,
) -> None:
    """The raw points of the window, downsampled here if they are more than max_points (the
    summaries said they fit, but a worker may have added points since)."""
    rows = _fetch(session, _RAW_SQL, (experiment_id, window.name, window.member, lo, hi))
    table = np.array(rows, dtype=np.float64).reshape(-1, 2)  # NULL (None) becomes NaN
    window.steps, window.values = table[:, 0].astype(np.int64), table[:, 1]
    window.points = len(rows)
    if max_points is not None and window.points > max_points:
        window.steps, window.values = minmax_downsample(window.steps, window.values, max_points)


def _end_point(
    session: Session, experiment_id: str, window: _Window, lo: int, hi: int, *, last: bool
) -> tuple[int, float] | None:
    rows = _fetch(
        session,
        _END_SQL.format(order="DESC" if last else "ASC"),
        (experiment_id, window.name, window.member, lo, hi),
    )
    return (int(rows[0][0]), _nan(rows[0][1])) if rows else None


def _read_rollups(session: Session, experiment_id: str, windows: list[_Window]) -> None:
    """The inner buckets of every planned window. They are read at the finest stored level at
    or below the window's level and merged up to it: one query per stored level."""
    by_stored: dict[int, dict[tuple[str, int], _Window]] = {}
    for window in windows:
        if window.inner[0] <= window.inner[1]:
            stored = max(level for level in ROLLUP_LEVELS if level <= window.level)
            by_stored.setdefault(stored, {})[(window.name, window.member)] = window
    for stored, group in by_stored.items():
        windows_here = list(group.values())
        wanted = np.array([
            (w.inner[0] << (w.level - stored), ((w.inner[1] + 1) << (w.level - stored)) - 1)
            for w in windows_here
        ])
        names = sorted({w.name for w in windows_here})
        members = sorted({w.member for w in windows_here})
        # Numbering the series in SQL keeps every column numeric: one conversion to numpy.
        series_number = " ".join(["WHEN name = ? AND member = ? THEN ?"] * len(windows_here))
        rows = _fetch(
            session,
            f"SELECT CASE {series_number} END, bucket, n, min_step, min_value, max_step, "
            "max_value FROM metric_rollups WHERE experiment_id = ? AND level = ? "
            f"AND name IN ({', '.join('?' * len(names))}) "
            f"AND member IN ({', '.join('?' * len(members))}) AND bucket >= ? AND bucket <= ?",
            (
                *(x for i, w in enumerate(windows_here) for x in (w.name, w.member, i)),
                experiment_id, stored, *names, *members,
                int(wanted[:, 0].min()), int(wanted[:, 1].max()),
            ),
        )
        table = np.array(rows, dtype=np.float64).reshape(-1, 7)  # NULL becomes NaN
        for i, window in enumerate(windows_here):
            lo, hi = wanted[i]
            mine = table[(table[:, 0] == i) & (table[:, 1] >= lo) & (table[:, 1] <= hi), 1:]
            if len(mine):
                window.facts.append(_merge_buckets(mine, window.level - stored))


def _merge_buckets(table: np.ndarray, shift: int) -> np.ndarray:
    """Rollup rows (bucket, n, min_step, min_value, max_step, max_value) merged into buckets
    2**shift times wider: counts add up, the smallest minimum and the largest maximum win, the
    earliest step on ties. Returns rows of (n, min_step, min_value, max_step, max_value)."""
    bucket = table[:, 0].astype(np.int64) >> shift
    no_extreme = np.isnan(table[:, 2])  # a bucket of only NaN values
    by_min = np.lexsort((table[:, 2], table[:, 3], no_extreme, bucket))
    by_max = np.lexsort((table[:, 4], -table[:, 5], no_extreme, bucket))
    starts = np.flatnonzero(np.diff(bucket[by_min], prepend=-1))  # same groups in both orders
    merged = np.empty((len(starts), 5))
    merged[:, 0] = np.add.reduceat(table[by_min, 1], starts)
    merged[:, 1:3] = table[by_min[starts]][:, 2:4]
    merged[:, 3:5] = table[by_max[starts]][:, 4:6]
    return merged


def _add_edge_facts(session: Session, experiment_id: str, window: _Window) -> None:
    """Summarise the edge buckets that the window cuts through from their raw points."""
    level, (first_step, _), (last_step, _) = window.level, window.first, window.last
    first_bucket, last_bucket = first_step >> level, last_step >> level
    edges = []
    if window.inner[0] > first_bucket:
        edges.append((first_step, min(last_step, ((first_bucket + 1) << level) - 1)))
    if window.inner[1] < last_bucket and (last_bucket != first_bucket or not edges):
        edges.append((max(first_step, last_bucket << level), last_step))
    for lo, hi in edges:
        edge = _Window(window.name, window.member)
        _read_raw(session, experiment_id, edge, lo, hi)
        ext = bucket_extremes(
            np.zeros(edge.points, dtype=np.int64), edge.steps >> level, edge.values
        )
        facts = np.full((len(ext.n), 5), np.nan)
        facts[:, 0] = ext.n
        extreme = ext.min_index >= 0
        facts[extreme, 1] = edge.steps[ext.min_index[extreme]]
        facts[extreme, 2] = edge.values[ext.min_index[extreme]]
        facts[extreme, 3] = edge.steps[ext.max_index[extreme]]
        facts[extreme, 4] = edge.values[ext.max_index[extreme]]
        window.facts.append(facts)


# ---- checkpoints -------------------------------------------------------------------------


def add_checkpoint(
    session: Session, experiment_id: str, step: int, blob: bytes, meta: dict
) -> Checkpoint:
    """Store a checkpoint with its sha256 and size. Idempotent on (experiment, step): the first
    one written for a step is kept and returned. Raises ExperimentNotFound."""
    experiment_id = str(experiment_id)
    if not 0 <= step <= MAX_STEP:
        raise ValueError(f"step must be in [0, {MAX_STEP}] (got {step})")
    _require_experiment(session, experiment_id)
    blob = bytes(blob)
    session.execute(
        _insert(session, Checkpoint)
        .values(
            experiment_id=experiment_id,
            step=step,
            size=len(blob),
            sha256=hashlib.sha256(blob).hexdigest(),
            data=blob,
            meta=meta,
            created_at=utcnow(),
        )
        .on_conflict_do_nothing()
    )
    session.commit()
    checkpoint = get_checkpoint(session, experiment_id, step)
    assert checkpoint is not None
    return checkpoint


def list_checkpoints(session: Session, experiment_id: str) -> list[Checkpoint]:
    """Checkpoints of an experiment by step, without their data."""
    checkpoints = list(
        session.scalars(
            select(Checkpoint)
            .where(Checkpoint.experiment_id == str(experiment_id))
            .order_by(Checkpoint.step)
            .execution_options(populate_existing=True)
        )
    )
    session.commit()
    return checkpoints


def _load_checkpoint(
    session: Session, experiment_id: str, *, step: int | None
) -> Checkpoint | None:
    query = (
        select(Checkpoint)
        .options(undefer(Checkpoint.data))
        .where(Checkpoint.experiment_id == str(experiment_id))
        .execution_options(populate_existing=True)
    )
    if step is None:
        query = query.order_by(Checkpoint.step.desc()).limit(1)
    else:
        query = query.where(Checkpoint.step == step)
    checkpoint = session.scalars(query).first()
    session.commit()
    return checkpoint


def get_checkpoint(session: Session, experiment_id: str, step: int) -> Checkpoint | None:
    """One checkpoint with its data, or None."""
    return _load_checkpoint(session, experiment_id, step=step)


def latest_checkpoint(session: Session, experiment_id: str) -> Checkpoint | None:
    """The checkpoint with the highest step, with its data (for resuming), or None."""
    return _load_checkpoint(session, experiment_id, step=None)


def checkpoint_intact(checkpoint: Checkpoint) -> bool:
    """Whether the stored data still hashes to the sha256 recorded when it was written."""
    return hmac.compare_digest(hashlib.sha256(checkpoint.data).hexdigest(), checkpoint.sha256)


def verified_checkpoint(
    session: Session, experiment_id: str, step: int | None = None
) -> Checkpoint | None:
    """The checkpoint at `step` (None: the latest) with its data, checked: its sha256, and its
    layout (a groklab safetensors checkpoint, never a pickle); None when there is no such
    checkpoint. Raises CheckpointCorrupt saying which check failed."""
    checkpoint = _load_checkpoint(session, experiment_id, step=step)
    if checkpoint is None:
        return None
    if not checkpoint_intact(checkpoint):
        raise CheckpointCorrupt(
            checkpoint,
            f"its {len(checkpoint.data)} bytes have sha256 "
            f"{hashlib.sha256(checkpoint.data).hexdigest()}, but {checkpoint.sha256} was stored "
            "when it was written",
        )
    try:
        check_checkpoint(checkpoint.data)
    except ValueError as exc:
        raise CheckpointCorrupt(checkpoint, str(exc)) from None
    return checkpoint


def load_checkpoint_verified(
    session: Session, experiment_id: str, step: int | None = None
) -> bytes | None:
    """The bytes of the checkpoint at `step` (None: the latest, what a resumed job loads),
    checked against their sha256; None when there is no such checkpoint. Raises
    CheckpointCorrupt, never returning bytes that changed since they were written."""
    checkpoint = verified_checkpoint(session, experiment_id, step)
    return None if checkpoint is None else bytes(checkpoint.data)


# ---- analysis cache ----------------------------------------------------------------------


def get_cached_analysis(session: Session, experiment_id: str, step: int) -> dict | None:
    data = session.scalar(
        select(AnalysisCache.data).where(
            AnalysisCache.experiment_id == str(experiment_id), AnalysisCache.step == step
        )
    )
    session.commit()
    return data


def put_cached_analysis(session: Session, experiment_id: str, step: int, data: dict) -> None:
    """Store (or replace) the analysis of an experiment at a checkpoint step."""
    statement = _insert(session, AnalysisCache).values(
        experiment_id=str(experiment_id), step=step, data=data, created_at=utcnow()
    )
    session.execute(
        statement.on_conflict_do_update(
            index_elements=["experiment_id", "step"],
            set_={"data": statement.excluded.data, "created_at": statement.excluded.created_at},
        )
    )
    session.commit()
