"""The FastAPI application: `create_app(settings=None)`.

`uvicorn --factory service.app:create_app` (what `groklab api` runs) reads the settings from the
environment; tests pass their own Settings.
"""
from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import InterfaceError, OperationalError

from service.api import openapi
from service.api.deps import get_enqueue
from service.api.middleware import BodySizeLimit, SecurityHeaders
from service.api.routes import analysis, checkpoints, experiments, health, metrics, sweeps
from service.api.routes import circuit, events, llc, reproductions, web
from service.contract.finite import without_non_finite
from service.contract.settings import Settings, get_settings
from service.infra import observability
from service.infra.db import make_engine, make_sessionmaker
from service.infra.lifecycle import LifecycleLoop

log = logging.getLogger(__name__)

DESCRIPTION = """
Train and analyse **grokking** experiments. POST an experiment spec to `/api/v1/experiments`;
a worker trains it and writes metrics and checkpoints back; poll the job, read its metrics
(downsampled on the server), download its checkpoints. POST a grid to `/api/v1/sweeps` for one
experiment per point (trained together in packs), then read its phase diagram.

Every `/api/v1` call needs a bearer token (`Authorization: Bearer <token>`), made with
`groklab token create --owner NAME --scope read|write|admin`. Scopes nest (admin ⊇ write ⊇
read): read to look, write to submit and cancel. A token sees its owner's experiments only; an
admin token sees everyone's. `groklab up` prints a local admin token on the first start.

Errors: 422 with the field paths of an invalid input (`detail[].loc`), 401 for a missing,
unknown or revoked token, 403 for a token whose scope is too small, 404 for an unknown id (or
another owner's), 413 for a body over GROKLAB_MAX_BODY_BYTES, 409 when the state forbids the
action.
"""


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    engine = make_engine(settings.resolved_database_url)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        loop = None
        if settings.reaper_interval_s > 0:
            # The reaper and the reconciler live in the API process (see service.infra.lifecycle).
            loop = LifecycleLoop(app.state.sessions, settings, get_enqueue())
            loop.start()
        yield
        if loop is not None:
            loop.stop()
        engine.dispose()

    app = FastAPI(title="groklab", version="1", description=DESCRIPTION, lifespan=lifespan)
    app.state.settings = settings
    app.state.engine = engine
    app.state.sessions = make_sessionmaker(engine)

    app.add_middleware(
        BodySizeLimit, max_bytes=settings.max_body_bytes, drain_bytes=settings.body_drain_bytes
    )
    app.add_middleware(SecurityHeaders)  # outside the size limit: its 413 gets them too
    observability.install(app)  # GET /metrics; the latency middleware wraps the others
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(OperationalError, _database_unavailable)
    app.add_exception_handler(InterfaceError, _database_unavailable)
    openapi.install(app, settings)  # settings' limits in the document; 405 with every method

    app.include_router(health.router)
    app.include_router(web.router)  # the dashboard at / and GET /api/v1/whoami
    for router in (
        experiments.router, metrics.router, checkpoints.router, analysis.router, circuit.router,
        llc.router, sweeps.router, events.router, reproductions.router, reproductions.sweep_reports,
    ):
        app.include_router(router, prefix="/api/v1")
    return app


async def _database_unavailable(_request: Request, exc: Exception) -> JSONResponse:
    log.error("database error: %s", exc)
    return JSONResponse({"detail": "database unavailable; try again later"}, status_code=503)


async def _validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
    """FastAPI's 422 (detail: [{loc, msg, type, input}]), safe for inputs such as 1e999 that
    JSON cannot carry: a non-finite number is echoed as null instead of failing with a 500."""
    detail = without_non_finite(jsonable_encoder(exc.errors()))
    return JSONResponse({"detail": detail}, status_code=422)
