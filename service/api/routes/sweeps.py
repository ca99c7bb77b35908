"""Sweeps: submit a grid, list, inspect, cancel, pause and resume, and read its phase diagram and
members."""
from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Annotated

from fastapi import APIRouter, Body, Query, Response
from fastapi.responses import JSONResponse
from sqlalchemy.orm import Session

from service import store
from service.api.deps import (
    EnqueueDep,
    OwnedSweep,
    OwnedSweepForWrite,
    ReadPrincipal,
    SessionDep,
    SettingsDep,
    WritePrincipal,
    admitted,
    require_quota,
    require_webhook_secret,
)
from service.access.auth import Principal
from service.api.responses import FORBIDDEN, QUOTA, RESUME_QUOTA, UNAUTHORIZED
from service.contract.models import FINISHED_STATUSES, Sweep
from service.contract.settings import Settings
from service.infra.queueing import queue_for
from service.schemas.errors import ErrorOut, invalid
from service.schemas.experiments import StateConflict
from service.schemas.sweeps import (
    SWEEP_EXAMPLES,
    MembersOut,
    MembersQuery,
    PhaseDiagramOut,
    PhaseDiagramQuery,
    SweepListQuery,
    SweepOut,
    SweepPage,
    SweepSummaryOut,
    check_sweep_size,
    members_csv,
    members_out,
    phase_diagram_csv,
    plan_sweep,
)
from service.science.sweeps import SweepSpec

log = logging.getLogger(__name__)

router = APIRouter(prefix="/sweeps", tags=["sweeps"], responses=UNAUTHORIZED)

NOT_FOUND = {
    404: {
        "model": ErrorOut,
        "description": "No sweep with this id that this token may see (its owner's own; every "
        "sweep for an admin token).",
    }
}
CSV = {"text/csv": {}}

def _sweep_out(session: Session, sweep: Sweep) -> SweepOut:
    return SweepOut.of_members(
        sweep, store.sweep_status(session, sweep), store.sweep_member_ids(session, sweep.id)
    )


@router.post(
    "",
    status_code=201,
    response_model=SweepOut,
    responses={
        **FORBIDDEN,
        413: {"model": ErrorOut, "description": "Body larger than GROKLAB_MAX_BODY_BYTES."},
        **QUOTA,
        422: {"description": "Invalid grid: `detail` names each bad axis value "
              "(`grid.task.p[2]: ...`), an unknown path, an empty axis, or too many members."},
    },
)
def submit_sweep(
    principal: WritePrincipal,
    body: Annotated[SweepSpec, Body(openapi_examples=SWEEP_EXAMPLES)],
    session: SessionDep,
    settings: SettingsDep,
    enqueue: EnqueueDep,
) -> SweepOut:
    """Submit a grid over spec paths: one ordinary experiment per point of the Cartesian product
    of `grid` (at most GROKLAB_MAX_SWEEP_MEMBERS), each `base` with the point's values. Members
    whose shapes agree train together in packs (one queue job each) of at most `pack_size`."""
    return create_sweep(body, principal, session, settings, enqueue)


def create_sweep(
    body: SweepSpec,
    principal: Principal,
    session: Session,
    settings: Settings,
    enqueue: Callable[[str, str], None],
) -> SweepOut:
    """Check the sweep's size and the owner's quota from the grid alone (before a member is
    built: an owner at its quota costs nothing), plan, store and enqueue it (POST /sweeps and
    POST /reproductions/{name})."""
    check_sweep_size(body, settings, principal)
    require_quota(session, settings, principal, new_jobs=body.n_members)
    packs = plan_sweep(body, settings, principal)
    specs = [member.spec for pack in packs for member in pack]
    require_webhook_secret(session, principal.owner, specs, ("body", "base", "notify", "url"))
    with admitted(session, settings, principal, new_jobs=len(specs)):
        sweep, members, jobs = store.create_sweep(
            session, body, packs, lambda spec: queue_for(spec, settings.default_queue),
            owner=principal.owner,
        )
    for pack_id, queue in jobs:
        try:
            enqueue(pack_id, queue)
        except Exception:  # noqa: BLE001 - the database holds the pack; the reconciler re-enqueues
            log.exception("sweep %s: pack %s stored but not enqueued on %r", sweep.id, pack_id,
                          queue)
    return SweepOut.of_members(
        sweep, store.sweep_status(session, sweep), [m.id for m in members]
    )


@router.get("", response_model=SweepPage)
def list_sweeps(
    principal: ReadPrincipal,
    session: SessionDep,
    settings: SettingsDep,
    query: Annotated[SweepListQuery, Query()],
) -> SweepPage:
    """Sweeps, newest first, a page at a time: the token owner's own, or everyone's for an
    admin token."""
    limit = query.page_size(settings)
    owner = query.owner_for(principal)
    try:
        items, next_cursor = store.list_sweeps(
            session, owner=owner, limit=limit, cursor=query.cursor
        )
    except ValueError as exc:
        raise invalid(("query", "cursor"), str(exc), query.cursor) from exc
    states = store.sweep_statuses(session, [s.id for s in items])
    return SweepPage(items=[SweepSummaryOut.of(s, states[s.id]) for s in items],
                     next_cursor=next_cursor)


@router.get("/{sweep_id}", response_model=SweepOut, responses=NOT_FOUND)
def get_sweep(sweep: OwnedSweep, session: SessionDep) -> SweepOut:
    """A sweep's status, counts of members by status, progress, times and member ids."""
    return _sweep_out(session, sweep)


@router.post(
    "/{sweep_id}/cancel",
    response_model=SweepOut,
    responses={
        **FORBIDDEN,
        **NOT_FOUND,
        409: {"model": StateConflict, "description": "Every member had already finished."},
    },
)
def cancel_sweep(sweep: OwnedSweepForWrite, session: SessionDep) -> SweepOut | Response:
    """Cancel every member: queued and paused ones at once, running ones when their worker
    next checks."""
    state = store.sweep_status(session, sweep)
    if state.status in FINISHED_STATUSES:
        return _conflict(state, f"sweep {sweep.id} already finished ({state.status}); only a "
                         "sweep with queued, running or paused members can be cancelled")
    store.cancel_sweep(session, sweep.id)
    return _sweep_out(session, sweep)


def _conflict(state: store.SweepStatus, detail: str) -> JSONResponse:
    conflict = StateConflict(detail=detail, status=state.status)  # type: ignore[arg-type]
    return JSONResponse(conflict.model_dump(), status_code=409)


@router.post(
    "/{sweep_id}/pause",
    response_model=SweepOut,
    responses={
        **FORBIDDEN,
        **NOT_FOUND,
        409: {"model": StateConflict, "description": "Every member had already finished."},
    },
)
def pause_sweep(sweep: OwnedSweepForWrite, session: SessionDep) -> SweepOut | Response:
    """Pause every member that has not finished: queued ones at once, running ones within a
    few seconds (each pack's worker checkpoints them, then takes other work). The sweep is
    `paused` once no member is queued or running. Members already paused stay paused."""
    state = store.sweep_status(session, sweep)
    if state.status in FINISHED_STATUSES:
        return _conflict(state, f"sweep {sweep.id} already finished ({state.status}); only a "
                         "sweep with queued or running members can be paused")
    store.pause_sweep(session, sweep.id)
    return _sweep_out(session, sweep)


@router.post(
    "/{sweep_id}/resume",
    response_model=SweepOut,
    responses={
        **FORBIDDEN,
        **NOT_FOUND,
        409: {"model": StateConflict,
              "description": "No member is paused (or has a pause requested)."},
        **RESUME_QUOTA,
    },
)
def resume_sweep(
    sweep: OwnedSweepForWrite,
    principal: WritePrincipal,
    session: SessionDep,
    settings: SettingsDep,
    enqueue: EnqueueDep,
) -> SweepOut | Response:
    """Resume every paused member: each is `queued` again and continues from its checkpoint
    (one queue message per pack). Running members whose pause was requested train on.

    The resumed members count against the owner's active-jobs quota again: 429 when they would
    exceed it (and none is resumed)."""
    paused, pausing = store.sweep_resumable(session, sweep.id)
    if not paused and not pausing:
        state = store.sweep_status(session, sweep)
        return _conflict(state, f"sweep {sweep.id} is {state.status} and has no paused member; "
                         "only a sweep with paused members (or pauses requested) can be resumed")
    with admitted(session, settings, principal, paused, resuming=True):
        jobs = store.resume_sweep(session, sweep.id)
    for job_id, queue in jobs:
        try:
            enqueue(job_id, queue)
        except Exception:  # noqa: BLE001 - the database holds the pack; the reconciler re-enqueues
            log.exception("sweep %s: pack %s resumed but not enqueued on %r", sweep.id, job_id,
                          queue)
    return _sweep_out(session, sweep)


@router.get(
    "/{sweep_id}/phase-diagram",
    response_model=PhaseDiagramOut,
    responses={
        **NOT_FOUND,
        200: {"content": CSV, "description": "JSON, or CSV (one row per cell) with format=csv."},
        422: {"description": "x or y is not an axis of the sweep, or y is x."},
    },
)
def get_phase_diagram(
    sweep: OwnedSweep, session: SessionDep, query: Annotated[PhaseDiagramQuery, Query()]
) -> dict | Response:
    """Where the sweep memorised or grokked: one cell per value of x (and of y), aggregated
    over every other axis, from the members' summaries: counts by phase, the fraction that
    generalised, and median memorization step, generalization step and final val accuracy.

    CSV columns: x,y,n,finished,grokked_fraction,median_memorization_step,
    median_generalization_step,median_final_val_acc, then one count column per phase."""
    diagram = query.diagram(sweep, store.sweep_members(session, sweep.id))
    if query.format == "csv":
        return Response(phase_diagram_csv(diagram), media_type="text/csv")
    return diagram


@router.get(
    "/{sweep_id}/members",
    response_model=MembersOut,
    responses={
        **NOT_FOUND,
        200: {"content": CSV, "description": "JSON, or CSV (one row per member) with format=csv."},
    },
)
def get_members(
    sweep: OwnedSweep, session: SessionDep, query: Annotated[MembersQuery, Query()]
) -> MembersOut | Response:
    """One row per member, by index: its experiment id, status, axis values, and its summary's
    phase, memorization and generalization steps and final accuracies.

    CSV columns: experiment_id,index,status, one column per axis, then phase,
    memorization_step,generalization_step,final_train_acc,final_val_acc."""
    members = members_out(sweep, store.sweep_members(session, sweep.id))
    if query.format == "csv":
        return Response(members_csv(members), media_type="text/csv")
    return members
