"""Reproductions: list them, run one as a sweep, and read its report."""
from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, Path
from sqlalchemy.orm import Session

from service import store
from service.api.deps import (
    EnqueueDep,
    OwnedSweep,
    ReadPrincipal,
    SessionDep,
    SettingsDep,
    WritePrincipal,
)
from service.api.responses import FORBIDDEN, QUOTA, UNAUTHORIZED
from service.api.routes.sweeps import NOT_FOUND, create_sweep
from service.schemas.reproductions import (
    ReproduceBody,
    ReproductionList,
    ReproductionOut,
    ReproductionRunOut,
    known_reproductions,
    reproduction_named,
    run_of,
    scale_of_run,
)
from service.schemas.sweeps import SweepOut
from service.contract.models import Sweep
from service.science.reproductions import Reproduction
from service.science.sweeps import SweepSpec

router = APIRouter(prefix="/reproductions", tags=["reproductions"], responses=UNAUTHORIZED)
# GET /api/v1/sweeps/{id}/report: the same report, found from the sweep alone.
sweep_reports = APIRouter(prefix="/sweeps", tags=["reproductions"], responses=UNAUTHORIZED)

NamePath = Annotated[str, Path(max_length=200, description="A reproduction's name.")]
UNKNOWN = {422: {"description": "Unknown reproduction (`path.name`, with the known ones) or "
                 "scale (`body.scale`)."}}


@router.get("", response_model=ReproductionList)
def list_reproductions(principal: ReadPrincipal, settings: SettingsDep) -> ReproductionList:
    """Every reproduction: the paper, its claims and the sweep each scale submits."""
    known = known_reproductions(settings)
    return ReproductionList(items=[ReproductionOut.of(known[n]) for n in sorted(known)])


@router.post(
    "/{name}", status_code=201, response_model=ReproductionRunOut,
    responses={**FORBIDDEN, **QUOTA, **UNKNOWN},
)
def run_reproduction(
    name: NamePath,
    principal: WritePrincipal,
    session: SessionDep,
    settings: SettingsDep,
    enqueue: EnqueueDep,
    body: Annotated[ReproduceBody, Body()] = ReproduceBody(),
) -> ReproductionRunOut:
    """Submit the reproduction's sweep at this scale (an ordinary sweep, like POST /sweeps).
    GET .../runs/{sweep_id} gives the report once every member has finished."""
    reproduction = reproduction_named(settings, name)
    sweep_body = SweepSpec.model_validate(reproduction.sweep_body(body.scale))
    out = create_sweep(sweep_body, principal, session, settings, enqueue)
    return ReproductionRunOut(reproduction=reproduction.name, version=reproduction.version,
                              scale=body.scale, sweep=out, verdict=None, claims=None, members=[],
                              plot_axis=reproduction.plot_axis(body.scale),
                              plot_members=reproduction.plot_members(body.scale))


@router.get(
    "/{name}/runs/{sweep_id}", response_model=ReproductionRunOut,
    responses={**NOT_FOUND, **UNKNOWN},
)
def get_reproduction_run(
    name: NamePath, sweep: OwnedSweep, session: SessionDep, settings: SettingsDep,
) -> ReproductionRunOut:
    """The run's sweep and members; once every member has finished, each claim's expected and
    measured values and its verdict (pass or fail), and the verdict of the whole."""
    reproduction = reproduction_named(settings, name)
    return _run_report(reproduction, scale_of_run(reproduction, sweep), sweep, session)


@sweep_reports.get(
    "/{sweep_id}/report", response_model=ReproductionRunOut,
    responses={404: {"description": "No such sweep, or it is not a run of any reproduction "
                     "(the detail says which)."}},
)
def get_sweep_report(sweep: OwnedSweep, session: SessionDep, settings: SettingsDep) -> ReproductionRunOut:
    """The report of a sweep that is a run of a reproduction (the reproduction found from the
    sweep's grid and base): the same body as GET /reproductions/{name}/runs/{sweep_id}, so a
    notebook or CI can assert on the verdicts knowing only the sweep's id."""
    reproduction, scale = run_of(settings, sweep)
    return _run_report(reproduction, scale, sweep, session)


def _run_report(reproduction: Reproduction, scale: str, sweep: Sweep, session: Session) -> ReproductionRunOut:
    state = store.sweep_status(session, sweep)
    members = store.sweep_members(session, sweep.id)
    out = SweepOut.of_members(sweep, state, [m.id for m in members])
    return ReproductionRunOut.of(reproduction, scale, out, state, members)
