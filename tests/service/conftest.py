"""Fixtures for the service tests: migrated databases on both backends, and an API client.

Store tests run on SQLite and on PostgreSQL (a database created for this test session and
dropped at its end). PostgreSQL unreachable: skipped with the reason, or failed under CI=true
(the `postgres_server_url` fixture in tests/conftest.py decides).
"""
from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from service.access import auth
from service.contract.settings import Settings
from service.infra.db import make_engine, make_sessionmaker, migrate
from tests.support import create_pg_database, drop_pg_database

BACKENDS = ("sqlite", "postgresql")


@pytest.fixture(scope="session")
def sqlite_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    url = f"sqlite:///{tmp_path_factory.mktemp('sqlite') / 'groklab.db'}"
    migrate(url)
    return url


@pytest.fixture(scope="session")
def pg_url(postgres_server_url: str) -> Iterator[str]:
    url = create_pg_database(postgres_server_url, prefix="groklab_service_test")
    try:
        migrate(url)
        yield url
    finally:
        drop_pg_database(postgres_server_url, url)


@pytest.fixture(scope="session")
def _engines() -> Iterator[dict]:
    engines: dict = {}
    yield engines
    for engine in engines.values():
        engine.dispose()


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def db_url(backend: str, request: pytest.FixtureRequest) -> str:
    return request.getfixturevalue("sqlite_url" if backend == "sqlite" else "pg_url")


@pytest.fixture
def sessions(db_url: str, _engines: dict) -> sessionmaker[Session]:
    """A session factory on a migrated database of the backend under test."""
    if db_url not in _engines:
        _engines[db_url] = make_engine(db_url)
    return make_sessionmaker(_engines[db_url])


@pytest.fixture
def session(sessions: sessionmaker[Session]) -> Iterator[Session]:
    with sessions() as s:
        yield s


@pytest.fixture
def api_settings(tmp_path: Path) -> Settings:
    """Embedded-mode settings in a fresh folder: SQLite, filesystem broker; sweeps are packed
    for workers of two training processes without GPUs, whatever the test host has."""
    settings = Settings(data_dir=tmp_path, max_body_bytes=64 * 1024, max_page_size=20,
                        worker_processes=2, worker_gpus=0)
    migrate(settings.resolved_database_url)
    return settings


@pytest.fixture
def celery_app(monkeypatch: pytest.MonkeyPatch, api_settings: Settings):
    """A real Celery app on the test's own filesystem broker, standing in for the process's
    app (service.infra.celery_app.get_celery_app, which service.infra.queueing sends through)."""
    from service.infra import celery_app as celery_module

    app = celery_module.make_celery(api_settings)
    monkeypatch.setattr(celery_module, "get_celery_app", lambda: app)
    yield app
    app.close()


@pytest.fixture
def enqueued(monkeypatch: pytest.MonkeyPatch, celery_app) -> list:
    """The (experiment_id, queue) of each message sent through the test's Celery app."""
    sent: list = []
    real_send = celery_app.send_task

    def recording_send(name, args=None, queue=None, **kwargs):
        sent.append((args[0], queue))
        return real_send(name, args=args, queue=queue, **kwargs)

    monkeypatch.setattr(celery_app, "send_task", recording_send)
    return sent


@pytest.fixture
def api_app(api_settings: Settings, enqueued: list) -> FastAPI:
    from service.app import create_app

    return create_app(api_settings)


@pytest.fixture
def make_token(api_app: FastAPI) -> Callable[[str, str], str]:
    """make_token(owner, scope) -> a new bearer token in the API's database."""

    def make(owner: str, scope: str) -> str:
        with api_app.state.sessions() as session:
            return auth.create_token(session, owner, scope)[1]

    return make


@pytest.fixture
def client(api_app: FastAPI, make_token: Callable[[str, str], str]) -> Iterator[TestClient]:
    """A client whose requests carry a write token of the owner 'alice'."""
    headers = {"Authorization": f"Bearer {make_token('alice', 'write')}"}
    with TestClient(api_app, raise_server_exceptions=False, headers=headers) as test_client:
        yield test_client


@pytest.fixture
def api_sessions(client: TestClient) -> sessionmaker[Session]:
    """Sessions on the API's own database, to arrange state the API cannot create."""
    return client.app.state.sessions
