"""The engine, the session factory, and migrations.

PostgreSQL in production (psycopg 3), SQLite embedded. One code path: the differences live in
make_engine (SQLite pragmas) and in service/store/metrics_ingest.py (the bulk metric insert).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

from service.contract.finite import without_non_finite
from service.contract.settings import get_settings

MIGRATIONS_DIR = Path(__file__).resolve().parents[2] / "migrations"
SQLITE_BUSY_TIMEOUT_MS = 30_000


def is_sqlite(url: str) -> bool:
    return make_url(url).get_backend_name() == "sqlite"


def make_engine(url: str, **kwargs: Any) -> Engine:
    """An engine for `url`. SQLite gets WAL, a busy timeout and foreign keys on every connection.

    WAL lets the API read while a worker writes; busy_timeout makes a writer wait for the lock
    instead of failing with "database is locked"; synchronous=NORMAL is safe under WAL (a power
    cut can lose the last commits, never corrupt the file).
    """
    kwargs.setdefault("json_serializer", json_dumps)
    sqlite = is_sqlite(url)
    if sqlite:
        connect_args = dict(kwargs.pop("connect_args", {}))
        connect_args.setdefault("check_same_thread", False)
        kwargs["connect_args"] = connect_args
        database = make_url(url).database
        if database and database != ":memory:" and not database.startswith("file:"):
            create_private_file(Path(database))
    else:
        kwargs.setdefault("pool_pre_ping", True)
        if make_url(url).get_backend_name() == "postgresql":
            connect_args = dict(kwargs.pop("connect_args", {}))
            connect_args.setdefault("connect_timeout", 10)  # an unreachable server fails fast
            kwargs["connect_args"] = connect_args
    engine = create_engine(url, **kwargs)
    if sqlite:
        event.listen(engine, "connect", _sqlite_pragmas)
    return engine


def create_private_file(path: Path) -> None:
    """Create `path` (and its folder) readable by its owner only (0600), unless it exists.

    An empty file is a valid SQLite database; SQLite gives its -wal and -shm files the database
    file's permissions, so they are 0600 too."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except FileExistsError:
        pass


def json_dumps(value: Any) -> str:
    """The JSON columns' serializer: a summary with a NaN final loss is stored with null."""
    return json.dumps(without_non_finite(value))


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def make_sessionmaker(engine: Engine) -> sessionmaker[Session]:
    """Sessions whose objects stay readable after commit (the store commits its own work)."""
    return sessionmaker(bind=engine, expire_on_commit=False)


def alembic_config(url: str):  # -> alembic.config.Config
    """An Alembic config for `url` that works from any working directory."""
    from alembic.config import Config

    ini = MIGRATIONS_DIR.parent / "alembic.ini"
    config = Config(str(ini)) if ini.exists() else Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    # Passed as an attribute, not an ini option: configparser would choke on '%' in passwords.
    config.attributes["url"] = url
    return config


def migrate(url: str | None = None) -> None:
    """`alembic upgrade head` on `url` (default: the settings' database)."""
    from alembic import command

    url = url or get_settings().resolved_database_url
    if is_sqlite(url):
        make_engine(url).dispose()  # creates the data folder
    command.upgrade(alembic_config(url), "head")
