"""Experiments: submit, list, inspect, cancel."""
from __future__ import annotations

import logging
from typing import Annotated

from uuid import UUID

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import JSONResponse
from sqlalchemy.orm import Session, sessionmaker
from starlette.concurrency import run_in_threadpool

from service import store
from service.access.auth import Principal
from service.api.deps import (
    EnqueueDep,
    ExperimentIdPath,
    OwnedExperimentForWrite,
    ReadPrincipal,
    SessionDep,
    SettingsDep,
    SubmittedSpec,
    WritePrincipal,
    require_quota,
    require_webhook_secret,
    visible,
)
from service.api.etag import json_with_etag
from service.api.responses import FORBIDDEN, NOT_FOUND, QUOTA, UNAUTHORIZED
from service.contract.models import FINISHED_STATUSES
from service.infra.queueing import queue_for
from service.schemas.errors import ErrorOut, invalid
from service.schemas.experiments import (
    CancelConflict,
    ExperimentListQuery,
    ExperimentOut,
    ExperimentPage,
)
from service.store.live import experiment_snapshot

log = logging.getLogger(__name__)

router = APIRouter(prefix="/experiments", tags=["experiments"], responses=UNAUTHORIZED)


@router.post(
    "",
    status_code=201,
    response_model=ExperimentOut,
    responses={
        **FORBIDDEN,
        413: {"model": ErrorOut, "description": "Body larger than GROKLAB_MAX_BODY_BYTES."},
        422: {"description": "Invalid spec: `detail` lists each field (`loc`) and the problem."},
        **QUOTA,
    },
)
def submit_experiment(
    principal: WritePrincipal,
    spec: SubmittedSpec,
    session: SessionDep,
    settings: SettingsDep,
    enqueue: EnqueueDep,
) -> ExperimentOut:
    """Submit an experiment spec. A `preset` fills the defaults; any field given overrides it.
    The experiment belongs to the token's owner.

    The job is stored as `queued` and a worker is woken on the `gpu` queue when
    `training.device` is `cuda`, otherwise on the default queue (GROKLAB_DEFAULT_QUEUE).
    """
    require_webhook_secret(session, principal.owner, [spec], ("body", "notify", "url"))
    require_quota(session, settings, principal)
    queue = queue_for(spec, settings.default_queue)
    experiment = store.create_experiment(session, spec, queue, owner=principal.owner)
    try:
        enqueue(experiment.id, queue)
    except Exception:  # noqa: BLE001 - the database holds the job; it can be re-enqueued
        log.exception("experiment %s stored but not enqueued on %r", experiment.id, queue)
    return ExperimentOut.of(experiment)


@router.get("", response_model=ExperimentPage)
def list_experiments(
    principal: ReadPrincipal,
    session: SessionDep,
    settings: SettingsDep,
    query: Annotated[ExperimentListQuery, Query()],
) -> ExperimentPage:
    """Jobs, newest first, a page at a time (stable cursor pagination): the token owner's own,
    or everyone's for an admin token."""
    limit = query.page_size(settings)
    owner = query.owner_for(principal)
    try:
        items, next_cursor = store.list_experiments(
            session, status=query.status, name=query.name, owner=owner,
            sweep_id=query.sweep_id, limit=limit, cursor=query.cursor,
        )
    except ValueError as exc:
        raise invalid(("query", "cursor"), str(exc), query.cursor) from exc
    return ExperimentPage(items=[ExperimentOut.of(e) for e in items], next_cursor=next_cursor)


@router.get(
    "/{experiment_id}",
    response_model=ExperimentOut,
    responses={**NOT_FOUND, 304: {"description": "Unchanged since the ETag in If-None-Match."}},
)
async def get_experiment(
    principal: ReadPrincipal, experiment_id: ExperimentIdPath, request: Request
) -> Response:
    """A job's status, spec, progress, timestamps, error and summary. With `If-None-Match`
    (the `ETag` of an earlier answer): 304 while nothing changed."""
    # The route pollers call: one thread hop reads and encodes the job (the token is usually
    # checked already, see get_principal), and the body is not validated a second time.
    body = await run_in_threadpool(
        _status_body, request.app.state.sessions, principal, experiment_id
    )
    return json_with_etag(request, body)


def _status_body(sessions: sessionmaker[Session], principal: Principal, experiment_id: UUID) -> bytes:
    with sessions() as session:
        found = experiment_snapshot(session, str(experiment_id))
    experiment = visible(found, principal, "experiment", experiment_id)
    return ExperimentOut.of(experiment).model_dump_json().encode()


@router.post(
    "/{experiment_id}/cancel",
    response_model=ExperimentOut,
    responses={
        **FORBIDDEN,
        **NOT_FOUND,
        409: {"model": CancelConflict, "description": "The job had already finished."},
    },
)
def cancel_experiment(
    experiment: OwnedExperimentForWrite, session: SessionDep
) -> ExperimentOut | Response:
    """Cancel a job. A queued job is cancelled at once; a running one gets `cancel_requested`
    and its worker stops at the next step it checks, finishing it `cancelled`."""
    if experiment.status in FINISHED_STATUSES:
        conflict = CancelConflict(
            detail=f"experiment {experiment.id} already finished ({experiment.status}); "
            "only queued or running jobs can be cancelled",
            status=experiment.status,  # type: ignore[arg-type]
        )
        return JSONResponse(conflict.model_dump(), status_code=409)
    cancelled = store.request_cancel(session, experiment.id)
    assert cancelled is not None  # experiments are never deleted
    return ExperimentOut.of(cancelled)
