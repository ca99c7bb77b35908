"""The worker's database sessions: one engine and session factory per database URL, per process."""
from __future__ import annotations

from sqlalchemy.orm import Session, sessionmaker

from service.infra.db import make_engine, make_sessionmaker
from service.contract.settings import Settings

_sessionmakers: dict[str, sessionmaker[Session]] = {}


def sessions_for(settings: Settings) -> sessionmaker[Session]:
    url = settings.resolved_database_url
    if url not in _sessionmakers:
        _sessionmakers[url] = make_sessionmaker(make_engine(url))
    return _sessionmakers[url]
