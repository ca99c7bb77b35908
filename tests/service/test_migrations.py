"""Alembic: `upgrade head` on an empty database builds exactly the tables of service.models."""
from __future__ import annotations

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect

from service.db import alembic_config, make_engine, migrate
from service.models import Base
from tests.support import create_pg_database, drop_pg_database


@pytest.fixture(params=["sqlite", "postgresql"])
def empty_url(request, tmp_path):
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'empty.db'}"
        return
    admin = request.getfixturevalue("postgres_server_url")
    url = create_pg_database(admin, prefix="groklab_migrations_test")
    try:
        yield url
    finally:
        drop_pg_database(admin, url)


def diffs(url: str) -> list:
    engine = make_engine(url)
    try:
        with engine.connect() as connection:
            context = MigrationContext.configure(connection, opts={"compare_type": True})
            return compare_metadata(context, Base.metadata)
    finally:
        engine.dispose()


def test_upgrade_head_matches_the_models_and_downgrades_cleanly(empty_url):
    migrate(empty_url)
    assert diffs(empty_url) == []
    migrate(empty_url)  # at head already: nothing to do
    command.downgrade(alembic_config(empty_url), "base")
    engine = make_engine(empty_url)
    try:
        assert set(inspect(engine).get_table_names()) <= {"alembic_version"}
    finally:
        engine.dispose()
    migrate(empty_url)
    assert diffs(empty_url) == []
