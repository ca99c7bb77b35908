"""Typed dependencies: a route's signature says what it needs."""
from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Annotated, Any
from uuid import UUID

from fastapi import Body, Depends, HTTPException, Path, Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import WrapValidator
from sqlalchemy.orm import Session, sessionmaker
from starlette.concurrency import run_in_threadpool

from service import store
from service.access import auth
from service.access.auth import Principal
from service.access.quotas import (
    QuotaExceeded,
    StorageQuotaExceeded,
    analysis_held,
    check_quota,
    quota_held,
)
from service.contract.limits import Limits
from service.contract.models import Experiment, Sweep
from service.contract.settings import Settings
from service.contract.spec import ExperimentSpec
from service.infra import queueing
from service.schemas.errors import invalid
from service.schemas.experiments import SPEC_EXAMPLES, parse_spec


async def get_app_settings(request: Request) -> Settings:
    """The settings this app was created with (create_app(settings))."""
    return request.app.state.settings


def get_db(request: Request) -> Iterator[Session]:
    with request.app.state.sessions() as session:
        yield session


def get_enqueue() -> Callable[[str, str], None]:
    """How a stored job wakes a worker: enqueue_experiment(experiment_id, queue)."""
    return queueing.enqueue_experiment


SettingsDep = Annotated[Settings, Depends(get_app_settings)]
SessionDep = Annotated[Session, Depends(get_db)]
EnqueueDep = Annotated[Callable[[str, str], None], Depends(get_enqueue)]


def _unvalidated(value: Any, _handler: Any) -> Any:
    return value


def get_submitted_spec(
    body: Annotated[
        ExperimentSpec, WrapValidator(_unvalidated), Body(openapi_examples=SPEC_EXAMPLES)
    ],
    settings: SettingsDep,
    principal: Annotated[Principal, Depends(require_write)],
) -> ExperimentSpec:
    """The request body as a spec, validated within this app's limits (GROKLAB_MAX_*, the
    token's max_compute override).

    FastAPI cannot hand a validation context to a body, so here it only reads the JSON (the
    wrap validator skips the spec's validation; the OpenAPI schema is still the spec's) and
    parse_spec validates it with the limits as context."""
    return parse_spec(body, Limits.from_settings(settings, principal))


SubmittedSpec = Annotated[ExperimentSpec, Depends(get_submitted_spec)]


def require_quota(
    session: Session, settings: Settings, principal: Principal, new_jobs: int = 1
) -> None:
    """507 or 429 unless the owner may submit `new_jobs` more experiments now
    (service.access.quotas): over the storage quota a 507, over a quota that waiting frees a
    429 with Retry-After (whole seconds, at least 1). A check before costly work (a sweep's
    expansion); the insert is admitted again under the owner's lock (admitted)."""
    with _quota_answers():
        check_quota(session, settings, principal, new_jobs)


@contextmanager
def admitted(
    session: Session, settings: Settings, principal: Principal, new_jobs: int = 1,
    *, resuming: bool = False,
) -> Iterator[None]:
    """The quota check (require_quota's answers: 507, 429) and the block that stores what it
    admitted, in one transaction under the owner's lock (service.access.quotas.quota_held).
    `resuming`: paused jobs queued again count against the active-jobs quota alone (a paused
    job is inactive; a resume is not a submission)."""
    with _quota_answers(), quota_held(session, settings, principal, new_jobs, resuming=resuming):
        yield


@contextmanager
def analysis_admitted(
    session: Session, settings: Settings, owner: str, already_pending: Callable[[], bool],
) -> Iterator[None]:
    """429 with Retry-After when the owner has GROKLAB_MAX_PENDING_ANALYSES_PER_OWNER analyses
    waiting and this request would add one; else the block that requests it, under the owner's
    lock (service.access.quotas.analysis_held)."""
    with _quota_answers(), analysis_held(session, settings, owner, already_pending):
        yield


@contextmanager
def _quota_answers() -> Iterator[None]:
    """A quota refusal as the API answers it: StorageQuotaExceeded a 507, QuotaExceeded a 429
    with Retry-After."""
    try:
        yield
    except StorageQuotaExceeded as exc:
        raise HTTPException(507, str(exc)) from None
    except QuotaExceeded as exc:
        retry_after = max(1, int(exc.retry_after_s + 0.999))
        raise HTTPException(429, str(exc), headers={"Retry-After": str(retry_after)}) from None


def require_webhook_secret(
    session: Session, owner: str, specs: list[ExperimentSpec], loc: tuple[str, ...]
) -> None:
    """A 422 at loc when a spec asks for alerts (notify) and the owner has no webhook secret to
    sign them with: it would otherwise run without sending any."""
    notify = next((spec.notify for spec in specs if spec.notify is not None), None)
    if notify is not None and store.get_webhook_secret(session, owner) is None:
        raise invalid(
            loc, f"notify needs a webhook secret for owner {owner!r} to sign its alerts; an admin "
            f"sets one with `groklab webhook-secret set --owner {owner}`", notify.url,
        )


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


async def get_principal(
    credentials: Annotated[HTTPAuthorizationCredentials | None, Security(bearer)],
    request: Request,
) -> Principal:
    """The owner and scope of the request's bearer token; 401 when it is missing or not valid.
    A token checked in the last GROKLAB_TOKEN_CACHE_S seconds is not read again (no thread, no
    query: the hot path of a polling client)."""
    if credentials is None:
        raise _unauthorized(
            "missing bearer token: send 'Authorization: Bearer <token>' "
            "(create one with `groklab token create --owner NAME --scope read|write|admin`)"
        )
    token, ttl_s = credentials.credentials, request.app.state.settings.token_cache_s
    principal = auth.checked_principal(token, ttl_s)
    if principal is None:
        principal = await run_in_threadpool(_authenticate, request.app.state.sessions, token, ttl_s)
    if principal is None:
        raise _unauthorized("invalid or revoked bearer token", error="invalid_token")
    return principal


def _authenticate(sessions: sessionmaker[Session], token: str, ttl_s: float) -> Principal | None:
    with sessions() as session:
        return auth.authenticate_and_remember(session, token, ttl_s)


def _require(principal: Principal, scope: str) -> Principal:
    if not principal.can(scope):
        raise HTTPException(
            status_code=403,
            detail=f"this needs a token with scope {scope!r} or above "
            f"(read < write < admin); this token has scope {principal.scope!r}",
        )
    return principal


async def require_read(principal: Annotated[Principal, Depends(get_principal)]) -> Principal:
    return _require(principal, "read")


async def require_write(principal: Annotated[Principal, Depends(get_principal)]) -> Principal:
    return _require(principal, "write")


async def require_admin(principal: Annotated[Principal, Depends(get_principal)]) -> Principal:
    return _require(principal, "admin")


ReadPrincipal = Annotated[Principal, Depends(require_read)]
WritePrincipal = Annotated[Principal, Depends(require_write)]
AdminPrincipal = Annotated[Principal, Depends(require_admin)]

ExperimentIdPath = Annotated[UUID, Path(description="The experiment's id (a UUID).")]
SweepIdPath = Annotated[UUID, Path(description="The sweep's id (a UUID).")]


def visible(found: Experiment | Sweep | None, principal: Principal, kind: str, id_: UUID):
    """The row if this token may see it; 404 (the same for missing and another owner's)."""
    if found is None or not principal.sees(found):
        raise HTTPException(status_code=404, detail=f"{kind} {id_} not found")
    return found


def get_owned_experiment(
    principal: ReadPrincipal, experiment_id: ExperimentIdPath, session: SessionDep
) -> Experiment:
    """The path's experiment, readable by this token; 404 when missing or another owner's."""
    return visible(store.get_experiment(session, str(experiment_id)), principal, "experiment",
                    experiment_id)


def get_owned_experiment_for_write(
    principal: WritePrincipal, experiment_id: ExperimentIdPath, session: SessionDep
) -> Experiment:
    """The path's experiment, changeable by this token: 403 for a read-only token (whatever
    the id), then 404 when missing or another owner's."""
    return visible(store.get_experiment(session, str(experiment_id)), principal, "experiment",
                    experiment_id)


def get_owned_sweep(principal: ReadPrincipal, sweep_id: SweepIdPath, session: SessionDep) -> Sweep:
    """The path's sweep, readable by this token; 404 when missing or another owner's."""
    return visible(store.get_sweep(session, str(sweep_id)), principal, "sweep", sweep_id)


def get_owned_sweep_for_write(
    principal: WritePrincipal, sweep_id: SweepIdPath, session: SessionDep
) -> Sweep:
    """The path's sweep, changeable by this token (403 for read-only, then 404)."""
    return visible(store.get_sweep(session, str(sweep_id)), principal, "sweep", sweep_id)


OwnedExperiment = Annotated[Experiment, Depends(get_owned_experiment)]
OwnedExperimentForWrite = Annotated[Experiment, Depends(get_owned_experiment_for_write)]
OwnedSweep = Annotated[Sweep, Depends(get_owned_sweep)]
OwnedSweepForWrite = Annotated[Sweep, Depends(get_owned_sweep_for_write)]

