"""Typed dependencies: a route's signature says what it needs."""
from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Annotated, Any
from uuid import UUID

from fastapi import Depends, HTTPException, Path, Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session

from service import auth, store
from service.auth import Principal
from service.models import Experiment
from service.settings import Settings


def get_app_settings(request: Request) -> Settings:
    """The settings this app was created with (create_app(settings))."""
    return request.app.state.settings


def get_db(request: Request) -> Iterator[Session]:
    with request.app.state.sessions() as session:
        yield session


def get_enqueue() -> Callable[[str, str], None]:
    """worker.celery_app.enqueue_experiment, imported on first use (it builds the Celery app)."""
    from worker.celery_app import enqueue_experiment

    return enqueue_experiment


SettingsDep = Annotated[Settings, Depends(get_app_settings)]
SessionDep = Annotated[Session, Depends(get_db)]
EnqueueDep = Annotated[Callable[[str, str], None], Depends(get_enqueue)]


# ---- authentication and tenancy ------------------------------------------------------------
#
# Every /api/v1 route takes one of these. ReadPrincipal / WritePrincipal / AdminPrincipal: the
# token's owner and scope, with at least that scope. OwnedExperiment / OwnedExperimentForWrite:
# the {experiment_id} of the path, if the token may see it (its own, or any for admin); another
# owner's experiment is 404, exactly like a missing one, so ids cannot be probed.

bearer = HTTPBearer(
    auto_error=False,
    description="A token from `groklab token create --owner NAME --scope read|write|admin`, "
    "sent as `Authorization: Bearer <token>`. Scopes nest: admin ⊇ write ⊇ read.",
)


def _unauthorized(detail: str, error: str | None = None) -> HTTPException:
    challenge = "Bearer" if error is None else f'Bearer error="{error}"'
    return HTTPException(status_code=401, detail=detail, headers={"WWW-Authenticate": challenge})


def get_principal(
    credentials: Annotated[HTTPAuthorizationCredentials | None, Security(bearer)],
    session: SessionDep,
) -> Principal:
    """The owner and scope of the request's bearer token; 401 when it is missing or not valid."""
    if credentials is None:
        raise _unauthorized(
            "missing bearer token: send 'Authorization: Bearer <token>' "
            "(create one with `groklab token create --owner NAME --scope read|write|admin`)"
        )
    principal = auth.authenticate(session, credentials.credentials)
    if principal is None:
        raise _unauthorized("invalid or revoked bearer token", error="invalid_token")
    return principal


def _require(principal: Principal, scope: str) -> Principal:
    if not principal.can(scope):
        raise HTTPException(
            status_code=403,
            detail=f"this needs a token with scope {scope!r} or above "
            f"(read < write < admin); this token has scope {principal.scope!r}",
        )
    return principal


def require_read(principal: Annotated[Principal, Depends(get_principal)]) -> Principal:
    return _require(principal, "read")


def require_write(principal: Annotated[Principal, Depends(get_principal)]) -> Principal:
    return _require(principal, "write")


def require_admin(principal: Annotated[Principal, Depends(get_principal)]) -> Principal:
    return _require(principal, "admin")


ReadPrincipal = Annotated[Principal, Depends(require_read)]
WritePrincipal = Annotated[Principal, Depends(require_write)]
AdminPrincipal = Annotated[Principal, Depends(require_admin)]

ExperimentIdPath = Annotated[UUID, Path(description="The experiment's id (a UUID).")]


def _owned_experiment(session: Session, principal: Principal, experiment_id: UUID) -> Experiment:
    experiment = store.get_experiment(session, str(experiment_id))
    if experiment is None or not principal.sees(experiment):
        raise HTTPException(status_code=404, detail=f"experiment {experiment_id} not found")
    return experiment


def get_owned_experiment(
    principal: ReadPrincipal, experiment_id: ExperimentIdPath, session: SessionDep
) -> Experiment:
    """The path's experiment, readable by this token; 404 when missing or another owner's."""
    return _owned_experiment(session, principal, experiment_id)


def get_owned_experiment_for_write(
    principal: WritePrincipal, experiment_id: ExperimentIdPath, session: SessionDep
) -> Experiment:
    """The path's experiment, changeable by this token: 403 for a read-only token (whatever
    the id), then 404 when missing or another owner's."""
    return _owned_experiment(session, principal, experiment_id)


OwnedExperiment = Annotated[Experiment, Depends(get_owned_experiment)]
OwnedExperimentForWrite = Annotated[Experiment, Depends(get_owned_experiment_for_write)]


def invalid(loc: tuple[str, ...], msg: str, value: Any) -> HTTPException:
    """A 422 shaped like FastAPI's own validation errors (detail: [{loc, msg, type, input}])."""
    return HTTPException(
        status_code=422,
        detail=[{"type": "value_error", "loc": list(loc), "msg": msg, "input": value}],
    )
