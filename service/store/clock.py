"""The database's clock, for the timestamps that processes on different machines compare.

A heartbeat written with a worker's clock and judged by the API's clock is wrong by the skew
between the two machines; both sides read the database's clock instead (`db_utcnow()` in an
INSERT, UPDATE or WHERE), so skew does not matter.

PostgreSQL: now(), the start of the transaction. SQLite: the current UTC time in the text form
UTCDateTime stores ('YYYY-MM-DD HH:MM:SS.ffffff', millisecond precision), so that it compares
and reads back like the timestamps written from Python.
"""
from __future__ import annotations

from typing import Any

from sqlalchemy import literal
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.functions import FunctionElement

from service.contract.models import UTCDateTime


class db_utcnow(FunctionElement):  # noqa: N801 - reads like the SQL function it stands for
    """The database's current UTC time, minus `seconds_ago` seconds."""

    type = UTCDateTime()
    inherit_cache = True
    name = "db_utcnow"

    def __init__(self, seconds_ago: float = 0.0) -> None:
        super().__init__(literal(float(seconds_ago)))


@compiles(db_utcnow)
def _generic(element: db_utcnow, compiler: Any, **kw: Any) -> str:
    return f"(CURRENT_TIMESTAMP - {compiler.process(element.clauses, **kw)} * INTERVAL '1' SECOND)"


@compiles(db_utcnow, "postgresql")
def _postgresql(element: db_utcnow, compiler: Any, **kw: Any) -> str:
    seconds = compiler.process(element.clauses, **kw)
    return f"(now() - CAST({seconds} AS float8) * interval '1 second')"


@compiles(db_utcnow, "sqlite")
def _sqlite(element: db_utcnow, compiler: Any, **kw: Any) -> str:
    seconds = compiler.process(element.clauses, **kw)
    return f"strftime('%Y-%m-%d %H:%M:%f000', 'now', (-{seconds}) || ' seconds')"
