"""Alembic environment. The URL comes, in this order, from:

1. config.attributes["connection"]: an open Connection (tests, programmatic use);
2. config.attributes["url"]: set by service.infra.db.migrate(url);
3. `alembic -x url=...` on the command line;
4. the settings: GROKLAB_DATABASE_URL, or SQLite under GROKLAB_DATA_DIR.
"""
from __future__ import annotations

from logging.config import fileConfig

from alembic import context
from sqlalchemy import pool
from sqlalchemy.engine import Connection

from service.contract.models import Base
from service.contract.settings import get_settings
from service.infra.db import make_engine

config = context.config
if config.config_file_name and not config.attributes.get("url") and not config.attributes.get(
    "connection"
):
    # Only the alembic command line sets up logging; migrate() leaves the caller's logging alone.
    fileConfig(config.config_file_name, disable_existing_loggers=False)

target_metadata = Base.metadata


def resolve_url() -> str:
    return (
        config.attributes.get("url")
        or context.get_x_argument(as_dictionary=True).get("url")
        or get_settings().resolved_database_url
    )


def configure(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        compare_type=True,
        # SQLite cannot ALTER most things: batch mode copies the table instead.
        render_as_batch=connection.dialect.name == "sqlite",
    )


def run_migrations_offline() -> None:
    url = resolve_url()
    context.configure(
        url=url,
        target_metadata=target_metadata,
        literal_binds=True,
        compare_type=True,
        render_as_batch=url.startswith("sqlite"),
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        configure(connection)
        with context.begin_transaction():
            context.run_migrations()
        return
    engine = make_engine(resolve_url(), poolclass=pool.NullPool)
    try:
        with engine.connect() as connection:
            if connection.dialect.name == "sqlite":
                # Batch mode rebuilds a table (copy, drop, rename). With foreign keys on, dropping
                # the old experiments table would delete every row that references it.
                connection.exec_driver_sql("PRAGMA foreign_keys=OFF")
                connection.commit()
            configure(connection)
            with context.begin_transaction():
                context.run_migrations()
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
