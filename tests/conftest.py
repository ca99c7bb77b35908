"""Fixtures shared by every test folder: the real PostgreSQL and Redis of this machine.

Under CI=true a missing service fails the test; elsewhere it skips with the reason.
"""
from __future__ import annotations

import os
import uuid

import pytest


PG_URL = os.environ.get(
    "GROKLAB_TEST_DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
REDIS_URL = os.environ.get("GROKLAB_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


def service_missing(what: str, exc: BaseException) -> None:
    message = f"{what} is not reachable ({type(exc).__name__}: {exc})"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{message}; CI=true requires it")
    pytest.skip(message)


@pytest.fixture(scope="session")
def postgres_server_url() -> str:
    """The admin URL of the machine's PostgreSQL, checked reachable."""
    import sqlalchemy as sa

    try:
        engine = sa.create_engine(PG_URL, isolation_level="AUTOCOMMIT")
        with engine.connect() as conn:
            conn.execute(sa.text("select 1"))
        engine.dispose()
    except Exception as exc:  # noqa: BLE001
        service_missing("PostgreSQL", exc)
    return PG_URL


@pytest.fixture(scope="session")
def redis_test_url() -> str:
    """A Redis database of its own for this test session (flushed before and after)."""
    import redis

    base = redis.Redis.from_url(REDIS_URL)
    try:
        base.ping()
    except Exception as exc:  # noqa: BLE001
        service_missing("Redis", exc)
    # Pick a database number from the session id so parallel sessions rarely meet.
    db = 1 + uuid.uuid4().int % 15
    url = REDIS_URL.rsplit("/", 1)[0] + f"/{db}"
    client = redis.Redis.from_url(url)
    client.flushdb()
    yield url
    client.flushdb()
