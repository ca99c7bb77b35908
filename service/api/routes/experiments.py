"""Experiments: submit, list, inspect, cancel, pause and resume."""
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
    admitted,
    require_webhook_secret,
    visible,
)
from service.api.etag import json_with_etag
from service.api.responses import FORBIDDEN, NOT_FOUND, QUOTA, RESUME_QUOTA, UNAUTHORIZED
from service.contract.models import FINISHED_STATUSES, PAUSED
from service.infra.queueing import queue_for
from service.schemas.errors import ErrorOut, invalid
from service.schemas.experiments import (
    ExperimentListQuery,
    ExperimentOut,
    ExperimentPage,
    StateConflict,
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
    queue = queue_for(spec, settings.default_queue)
    with admitted(session, settings, principal):
        experiment = store.create_experiment(session, spec, queue, owner=principal.owner)
    try:
        enqueue(experiment.id, queue)
    except Exception:  # noqa: BLE001 - the database holds the job; it can be re-enqueued
        log.exception("experiment %s stored but not enqueued on %r", experiment.id, queue)
    return ExperimentOut.of(experiment, with_spec=True)


@router.get("", response_model=ExperimentPage)
def list_experiments(
    principal: ReadPrincipal,
    session: SessionDep,
    settings: SettingsDep,
    query: Annotated[ExperimentListQuery, Query()],
) -> ExperimentPage:
    """Jobs, newest first, a page at a time (stable cursor pagination): the token owner's own,
    or everyone's for an admin token. Without their specs unless `fields=spec`."""
    limit = query.page_size(settings)
    owner = query.owner_for(principal)
    try:
        items, next_cursor = store.list_experiments(
            session, status=query.status, name=query.name, owner=owner,
            sweep_id=query.sweep_id, limit=limit, cursor=query.cursor,
        )
    except ValueError as exc:
        raise invalid(("query", "cursor"), str(exc), query.cursor) from exc
    with_spec = query.fields == "spec"
    return ExperimentPage(items=[ExperimentOut.of(e, with_spec=with_spec) for e in items],
                          next_cursor=next_cursor)


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
    return ExperimentOut.of(experiment, with_spec=True).model_dump_json().encode()


@router.post(
    "/{experiment_id}/cancel",
    response_model=ExperimentOut,
    responses={
        **FORBIDDEN,
        **NOT_FOUND,
        409: {"model": StateConflict, "description": "The job had already finished."},
    },
)
def cancel_experiment(
    experiment: OwnedExperimentForWrite, session: SessionDep
) -> ExperimentOut | Response:
    """Cancel a job. A queued job is cancelled at once; a running one gets `cancel_requested`
    and its worker stops at the next step it checks, finishing it `cancelled`."""
    if experiment.status in FINISHED_STATUSES:
        return _conflict(f"experiment {experiment.id} already finished ({experiment.status}); "
                         "only queued or running jobs can be cancelled", experiment.status)
    cancelled = store.request_cancel(session, experiment.id)
    assert cancelled is not None  # experiments are never deleted
    return ExperimentOut.of(cancelled, with_spec=True)


def _conflict(detail: str, status: str) -> JSONResponse:
    """409: the job's state does not allow it (cancel, pause, resume)."""
    conflict = StateConflict(detail=detail, status=status)  # type: ignore[arg-type]
    return JSONResponse(conflict.model_dump(), status_code=409)


@router.post(
    "/{experiment_id}/pause",
    response_model=ExperimentOut,
    responses={
        **FORBIDDEN,
        **NOT_FOUND,
        409: {"model": StateConflict, "description": "The job had already finished."},
    },
)
def pause_experiment(
    experiment: OwnedExperimentForWrite, session: SessionDep
) -> ExperimentOut | Response:
    """Pause a job. A queued job is `paused` at once. A running one gets `pause_requested`: its
    worker stores a checkpoint at the step it has reached, within a few seconds, marks it
    `paused` and takes the next job. A paused job stays paused (pausing it again is a no-op).

    A paused job keeps its place and its checkpoints, does not count against the owner's
    active-jobs quota, and uses up none of its attempts; resume continues from the checkpoint."""
    try:
        paused = store.request_pause(session, experiment.id)
    except store.NotPausable as exc:
        return _conflict(str(exc), exc.status)
    assert paused is not None  # experiments are never deleted
    return ExperimentOut.of(paused, with_spec=True)


@router.post(
    "/{experiment_id}/resume",
    response_model=ExperimentOut,
    responses={
        **FORBIDDEN,
        **NOT_FOUND,
        409: {"model": StateConflict,
              "description": "The job is not paused (and no pause of it was requested)."},
        **RESUME_QUOTA,
    },
)
def resume_experiment(
    experiment: OwnedExperimentForWrite,
    principal: WritePrincipal,
    session: SessionDep,
    settings: SettingsDep,
    enqueue: EnqueueDep,
) -> ExperimentOut | Response:
    """Resume a paused job: it is `queued` again, on its own queue, and a worker continues it
    from its last checkpoint (on the CPU its metrics are those of a run never paused). A
    running job whose pause was requested has the request withdrawn and trains on.

    A resumed job counts against the owner's active-jobs quota again: 429 when it would exceed
    it. A resume is not a submission (the submission rate does not count it)."""
    resumed, queued = None, False
    if experiment.status == PAUSED:
        with admitted(session, settings, principal, 1, resuming=True):
            resumed = store.resume_paused(session, experiment.id)
        queued = resumed is not None
    if resumed is None:  # not paused (any more): withdraw a pause request, or 409
        try:
            resumed, queued = store.request_resume(session, experiment.id)
        except store.NotPausable as exc:
            return _conflict(str(exc), exc.status)
    assert resumed is not None  # experiments are never deleted
    if queued:
        try:
            enqueue(resumed.job_id, resumed.queue)
        except Exception:  # noqa: BLE001 - the database holds the job; it can be re-enqueued
            log.exception("experiment %s resumed but not enqueued on %r", resumed.id,
                          resumed.queue)
    return ExperimentOut.of(resumed, with_spec=True)
