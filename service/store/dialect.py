"""SQL dialect helpers of the store: what differs between PostgreSQL (psycopg 3) and SQLite.

The ORM covers most of it; what is left is INSERT ... ON CONFLICT (a dialect construct in
SQLAlchemy), raw driver rows for reading many points fast, `?` placeholders rewritten for
psycopg, PostgreSQL array literals, and psycopg's own IntegrityError (COPY bypasses SQLAlchemy).
"""
from __future__ import annotations

from typing import Any

from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session


def is_postgresql(session: Session) -> bool:
    return session.get_bind().dialect.name == "postgresql"


def upsert_insert(session: Session, table: Any):
    """INSERT with ON CONFLICT support for the session's dialect (PostgreSQL or SQLite)."""
    return postgresql_insert(table) if is_postgresql(session) else sqlite_insert(table)


def driver_sql(sql: str, postgresql: bool) -> str:
    """SQL written with ? placeholders, for the driver of the dialect (psycopg wants %s)."""
    return sql.replace("?", "%s") if postgresql else sql


def fetch(session: Session, sql: str, params: tuple) -> list[tuple]:
    """Rows as plain tuples straight from the driver: the fast way to read many points. `sql`
    uses ? placeholders on both dialects."""
    postgresql = is_postgresql(session)
    cursor = session.connection().connection.driver_connection.cursor()
    try:
        cursor.execute(driver_sql(sql, postgresql), params)
        return cursor.fetchall()
    finally:
        cursor.close()


def pg_array_literal(items: list[Any], pg_type: str) -> str:
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


def is_integrity_error(exc: BaseException) -> bool:
    """A unique or foreign key violation, from SQLAlchemy or straight from psycopg."""
    if isinstance(exc, IntegrityError):
        return True
    try:  # COPY goes to psycopg directly, which raises its own IntegrityError
        import psycopg
    except ImportError:  # pragma: no cover - psycopg is a dependency
        return False
    return isinstance(exc, psycopg.errors.IntegrityError)
