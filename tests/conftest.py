"""Fixtures shared by every test folder: the real PostgreSQL and Redis of this machine.

Under CI=true a missing service fails the test; elsewhere it skips with the reason.
"""
from __future__ import annotations

import os
import uuid
from contextlib import ExitStack

import pytest

from tests import background


PG_URL = os.environ.get(
    "GROKLAB_TEST_DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
REDIS_URL = os.environ.get("GROKLAB_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
# The Redis database numbers the tests may take (comma-separated, e.g. "8,9,10"), for a Redis
# shared with other test runs; default every one of 1-15.
REDIS_DBS = [int(n) for n in os.environ.get("GROKLAB_TEST_REDIS_DBS", "").split(",") if n.strip()]


@pytest.fixture(scope="session", autouse=True)
def one_torch_thread():
    """Tests train in-process on one torch thread, as a CPU worker's training process does
    (service/science/worker_plan.py): a float sum split over two threads rounds differently,
    and a run that grokks right at a threshold must not pass or fail by the test's order."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


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


class RedisDatabases:
    """Hands out Redis database numbers of their own to this test session, flushed on the way in
    and out, so that two stacks alive at once never share a queue."""

    def __init__(self, base_url: str, numbers: list[int] | None = None) -> None:
        self.base = base_url.rsplit("/", 1)[0]
        self.numbers = numbers or list(range(1, 16))
        self.next = uuid.uuid4().int % len(self.numbers)
        self.used: list[str] = []
        self.held: set[str] = set()  # for the whole session (the shared stack's): never handed out again

    def allocate(self, hold: bool = False) -> str:
        """The next database number in turn (round robin over 1-15, or GROKLAB_TEST_REDIS_DBS),
        skipping the held ones: a session-long stack's worker must never share a queue with a
        later test's."""
        import redis

        for _ in range(len(self.numbers)):
            url = f"{self.base}/{self.numbers[self.next]}"
            self.next = (self.next + 1) % len(self.numbers)
            if url not in self.held:
                break
        else:
            raise RuntimeError(f"every Redis database of {self.numbers} is held by this session")
        redis.Redis.from_url(url).flushdb()
        self.used.append(url)
        if hold:
            self.held.add(url)
        return url

    def flush_all_used(self) -> None:
        import redis

        for url in self.used:
            redis.Redis.from_url(url).flushdb()


@pytest.fixture(scope="session")
def redis_databases():
    import redis

    try:
        redis.Redis.from_url(REDIS_URL).ping()
    except Exception as exc:  # noqa: BLE001
        service_missing("Redis", exc)
    dbs = RedisDatabases(REDIS_URL, REDIS_DBS)
    yield dbs
    try:
        dbs.flush_all_used()
    except Exception:  # noqa: BLE001  (a test may have restarted Redis)
        pass


@pytest.fixture(scope="session")
def redis_test_url(redis_databases) -> str:
    """A Redis database of its own for this test session."""
    return redis_databases.allocate(hold=True)


def pytest_collection_modifyitems(session, config, items):
    """The tests that read the background reproductions run last (tests/background.py), so
    that their runs train while every other test runs."""
    items.sort(key=lambda item: item.get_closest_marker(background.MARKER) is not None)


@pytest.fixture(scope="session", autouse=True)
def background_reproductions(request, tmp_path_factory):
    """The selected tests' reproductions, submitted at the session's first test to a stack of
    their own that trains them at the lowest CPU priority (tests/background.py); None when no
    selected test reads one, or when PostgreSQL or Redis is missing (the tests that read them
    then fail under CI=true, else skip, through their own fixtures)."""
    names = background.wanted(request.session.items)
    if not names:
        yield None
        return
    try:
        admin_url = request.getfixturevalue("postgres_server_url")
        redis_url = request.getfixturevalue("redis_databases").allocate(hold=True)
    except (pytest.skip.Exception, pytest.fail.Exception):
        yield None
        return
    with ExitStack() as exits:
        yield background.start(names, admin_url, redis_url, tmp_path_factory.mktemp("background"), exits)
