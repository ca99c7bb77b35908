"""Metric ingestion: validated batches of points into `metrics`, and the summaries that serve
downsampled queries (`metric_series`, `metric_rollups`) updated in the same transaction.

PostgreSQL takes new points by binary COPY (encoded by psycopg) and the summaries by one upsert
over unnest()ed arrays; SQLite by executemany. A batch that repeats stored points goes again
through INSERT ... ON CONFLICT DO NOTHING RETURNING, so that only new points reach the summaries.
"""
from __future__ import annotations

from collections.abc import Iterator
from itertools import repeat
from typing import Any

import numpy as np
from sqlalchemy.orm import Session

from service.contract.finite import nan_to_none
from service.contract.models import ROLLUP_LEVELS
from service.science.downsample import bucket_extremes
from service.store.dialect import fetch, is_integrity_error, is_postgresql, pg_array_literal
from service.store.experiments import (
    MAX_STEP,
    ExperimentNotFound,
    holds_attempt,
    require_experiment,
)

MAX_NAME_LENGTH = 200


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
        return nan_to_none(self.values)


def _int_column(what: str, items: list[Any]) -> np.ndarray:
    column = np.asarray(items)
    if column.ndim != 1 or (len(column) and column.dtype.kind not in "iu"):
        raise ValueError(f"metric {what} must be integers")
    column = column.astype(np.int64)
    if len(column) and (column.min() < 0 or column.max() > MAX_STEP):
        raise ValueError(f"metric {what} must be in [0, {MAX_STEP}]")
    return column


def ingest_metrics(
    session: Session, experiment_id: str, rows: list[dict], attempt: int | None = None
) -> int:
    """Store metric points `{"step", "member", "name", "value"}`; returns how many were new.

    Idempotent: a point already stored for (experiment, name, member, step) is skipped, so a
    retried or redelivered batch never duplicates anything (the first value written wins).
    NaN values are stored as NULL. The summaries that serve downsampled queries (metric_series,
    metric_rollups) are updated in the same transaction, from exactly the points that were new.
    Raises ExperimentNotFound, or ValueError for a malformed row. With `attempt` (a worker's
    write), nothing is stored, and 0 returned, unless that attempt is running the job (checked
    in the same transaction: store.holds_attempt): a worker whose job was requeued and claimed
    again cannot add points to the new attempt's run.

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
    postgresql = is_postgresql(session)
    try:
        if attempt is not None:
            if not holds_attempt(session, experiment_id, attempt):
                session.rollback()
                return 0
        elif not postgresql:  # PostgreSQL checks within _write_summaries, saving a round trip
            require_experiment(session, experiment_id)
        try:
            _insert_new_points(session, experiment_id, points, postgresql)
            new = points
        except Exception as exc:
            if not is_integrity_error(exc):
                raise
            session.rollback()
            if attempt is not None and not holds_attempt(session, experiment_id, attempt):
                session.rollback()
                return 0
            new = _insert_skipping_existing(session, experiment_id, points, postgresql)
        if len(new):
            _write_summaries(session, experiment_id, new, postgresql)
        session.commit()
    except BaseException:
        session.rollback()
        raise
    return len(new)


def _insert_new_points(
    session: Session, experiment_id: str, points: _Points, postgresql: bool
) -> None:
    """One bulk INSERT of points assumed new; fails (IntegrityError) if any exists already."""
    if postgresql:
        with session.connection().connection.driver_connection.cursor() as cursor:
            copy_points(cursor, experiment_id, points)
        return
    session.connection().exec_driver_sql(
        "INSERT INTO metrics (experiment_id, name, member, step, value) VALUES (?, ?, ?, ?, ?)",
        list(_point_rows(experiment_id, points)),
    )


def _point_rows(experiment_id: str, points: _Points) -> Iterator[tuple]:
    """(experiment_id, name, member, step, value) per point, NaN as None."""
    return zip(
        repeat(experiment_id), points.names, points.members.tolist(), points.steps.tolist(),
        points.db_values(),
    )


_COPY_SQL = "COPY metrics (experiment_id, name, member, step, value) FROM STDIN (FORMAT BINARY)"
_COPY_TYPES = ["varchar", "varchar", "int4", "int4", "float8"]


def copy_points(cursor: Any, experiment_id: str, points: _Points) -> None:
    """The points by binary COPY on a psycopg cursor, encoded by psycopg row by row.

    A hand-written numpy encoder of the binary format was measured against this one
    (bench/bench_copy.py): the server's COPY into the primary key dominates, and the encoder was
    at most about 1.2x faster end to end, short of the 1.5x that would pay for its code.
    """
    with cursor.copy(_COPY_SQL) as copy:
        copy.set_types(_COPY_TYPES)
        for row in _point_rows(experiment_id, points):
            copy.write_row(row)


def _insert_skipping_existing(
    session: Session, experiment_id: str, points: _Points, postgresql: bool
) -> _Points:
    """INSERT ... ON CONFLICT DO NOTHING RETURNING: the points that were new."""
    columns = [points.names, points.members.tolist(), points.steps.tolist(), points.db_values()]
    insert = "INSERT INTO metrics (experiment_id, name, member, step, value) "
    returning = " ON CONFLICT DO NOTHING RETURNING name, member, step"
    if postgresql:
        literals = map(pg_array_literal, columns, ("varchar", "int", "int", "float8"))
        inserted = fetch(
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
            inserted += fetch(
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
            experiment_id, *map(pg_array_literal, series, series_types),
            experiment_id, *map(pg_array_literal, rollups, rollup_types),
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
    value_list = nan_to_none(values)

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
