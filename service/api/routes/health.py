"""Liveness and readiness, outside /api/v1 (what orchestrators probe)."""
from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from sqlalchemy import text

from service.api.deps import SettingsDep
from service.schemas.health import Health, Readiness
from service.settings import Settings

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
    part that failed."""
    checks = {
        "database": _check_database(request),
        "broker": _check_broker(settings),
    }
    ready = all(result == "ok" for result in checks.values())
    body = Readiness(status="ready" if ready else "not ready", checks=checks)
    return JSONResponse(body.model_dump(), status_code=200 if ready else 503)


def _check_database(request: Request) -> str:
    try:
        with request.app.state.engine.connect() as connection:
            connection.execute(text("SELECT 1"))
    except Exception as exc:  # noqa: BLE001 - any failure means not ready
        return f"unreachable: {type(exc).__name__}: {exc}"[:500]
    return "ok"


def _check_broker(settings: Settings) -> str:
    url = settings.resolved_broker_url
    if url.startswith("filesystem://"):
        folder = settings.broker_dir
        return "ok" if folder.is_dir() else f"broker folder {folder} does not exist"
    from kombu import Connection

    try:
        with Connection(url, connect_timeout=3) as connection:
            connection.ensure_connection(
                max_retries=1, interval_start=0, interval_step=0.5, interval_max=0.5, timeout=3
            )
    except Exception as exc:  # noqa: BLE001
        return f"unreachable: {type(exc).__name__}: {exc}"[:500]
    return "ok"
