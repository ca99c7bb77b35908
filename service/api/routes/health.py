"""Liveness and readiness, outside /api/v1 (what orchestrators probe)."""
from __future__ import annotations

import logging

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from service import store
from service.api.deps import SettingsDep
from service.contract.settings import Settings
from service.schemas.health import Health, Readiness

log = logging.getLogger(__name__)

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health)
def healthz() -> Health:
    """The process answers. Touches nothing else (no database, no broker)."""
    return Health()


@router.get(
    "/readyz",
    response_model=Readiness,
    responses={503: {"model": Readiness, "description": "A dependency is not reachable."}},
)
def readyz(request: Request, settings: SettingsDep) -> JSONResponse:
    """Ready to serve: the database answers a query and the broker is reachable (Redis or
    RabbitMQ: a connection; the embedded filesystem broker: its folder exists). 503 names the
    part that failed, in words that say nothing of hosts, ports or paths (this route needs no
    token); the details go to the log."""
    checks = {
        "database": _check_database(request),
        "broker": _check_broker(settings),
    }
    ready = all(result == "ok" for result in checks.values())
    body = Readiness(status="ready" if ready else "not ready", checks=checks)
    return JSONResponse(body.model_dump(), status_code=200 if ready else 503)


def _check_database(request: Request) -> str:
    try:
        store.check_database(request.app.state.engine)
    except Exception:  # noqa: BLE001 - any failure means not ready
        log.exception("readiness: the database does not answer")
        return "database unavailable"
    return "ok"


def _check_broker(settings: Settings) -> str:
    url = settings.resolved_broker_url
    if url.startswith("filesystem://"):
        folder = settings.broker_dir
        if folder.is_dir():
            return "ok"
        log.error("readiness: the broker folder %s does not exist", folder)
        return "broker unavailable"
    from kombu import Connection

    try:
        with Connection(url, connect_timeout=3) as connection:
            connection.ensure_connection(
                max_retries=1, interval_start=0, interval_step=0.5, interval_max=0.5, timeout=3
            )
    except Exception:  # noqa: BLE001
        log.exception("readiness: the broker is not reachable")
        return "broker unavailable"
    return "ok"
