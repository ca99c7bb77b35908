"""Alembic: `upgrade head` on an empty database builds exactly the tables of
service.contract.models."""
from __future__ import annotations

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect

from service.contract.models import Base
from service.infra.db import alembic_config, make_engine, migrate
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


def test_experiments_from_before_tokens_belong_to_the_local_owner(empty_url):
    from sqlalchemy import text

    command.upgrade(alembic_config(empty_url), "0001")
    engine = make_engine(empty_url)
    try:
        with engine.begin() as connection:
            connection.execute(text(
                "INSERT INTO experiments (id, name, status, spec, queue, step, total_steps, "
                "created_at, attempt, max_attempts, cancel_requested) VALUES ('old', 'n', "
                "'queued', '{}', 'cpu', 0, 1, '2026-01-01 00:00:00', 0, 3, false)"
            ))
        migrate(empty_url)
        with engine.connect() as connection:
            assert connection.execute(text("SELECT owner FROM experiments")).all() == [("local",)]
            assert connection.execute(text("SELECT count(*) FROM api_tokens")).scalar() == 0
    finally:
        engine.dispose()


def test_token_overrides_of_zero_become_the_setting_and_jobs_get_no_run_time(empty_url):
    """Before 0010 a token's override of 0 meant no limit; now 0 allows none, so the upgrade
    gives such tokens the setting instead of locking them out."""
    from sqlalchemy import text

    command.upgrade(alembic_config(empty_url), "0008")
    engine = make_engine(empty_url)
    try:
        with engine.begin() as connection:
            connection.execute(text(
                "INSERT INTO api_tokens (id, owner, scope, token_hash, created_at, "
                "max_active_jobs, submissions_per_minute, max_compute) VALUES "
                "('t0', 'a', 'write', 'h0', '2026-01-01 00:00:00', 0, 0, 0), "
                "('t7', 'b', 'write', 'h7', '2026-01-01 00:00:00', 7, 2, 1e12)"
            ))
            connection.execute(text(
                "INSERT INTO experiments (id, name, owner, status, spec, queue, step, "
                "total_steps, created_at, attempt, max_attempts, cancel_requested) VALUES "
                "('old', 'n', 'a', 'queued', '{}', 'cpu', 0, 1, '2026-01-01 00:00:00', 0, 3, "
                "false)"
            ))
        migrate(empty_url)
        with engine.connect() as connection:
            rows = connection.execute(text(
                "SELECT id, max_active_jobs, submissions_per_minute, max_compute FROM api_tokens "
                "ORDER BY id")).all()
            assert [tuple(r) for r in rows] == [("t0", None, None, None), ("t7", 7, 2, 1e12)]
            assert connection.execute(text("SELECT run_s FROM experiments")).scalar() == 0
    finally:
        engine.dispose()
