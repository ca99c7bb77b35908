"""Reproductions: the list, a submitted run and its report."""
from __future__ import annotations

from typing import Any, Literal

from fastapi import HTTPException
from pydantic import BaseModel, ConfigDict, Field

from service.contract.models import FINISHED_STATUSES, Experiment, Sweep
from service.contract.settings import Settings
from service.schemas.errors import invalid
from service.schemas.sweeps import MemberOut, SweepOut
from service.science.reproductions import DEFAULT_DIR, Reproduction, reproductions
from service.store import SweepStatus


class ReproduceBody(BaseModel):
    """A POST /api/v1/reproductions/{name} body."""

    model_config = ConfigDict(extra="forbid")

    scale: Literal["ci", "paper"] = Field(
        "ci", description="ci: a few minutes on 2 CPU cores; paper: the paper's own budget.")


class ClaimOut(BaseModel):
    says: str
    kind: str
    metric: str | None = Field(description="The metric it reads; null for an order claim.")
    metrics: list[str] | None = Field(description="An order claim's step metrics, in order.")
    paper: str | None = Field(description="The paper's own figure.")


class ScaleOut(BaseModel):
    n_members: int
    sweep: dict[str, Any] = Field(description="The sweep it submits (a POST /sweeps body).")


class ReproductionOut(BaseModel):
    name: str
    version: int
    paper: str
    summary: str
    claims: list[ClaimOut]
    scales: dict[str, ScaleOut]

    @classmethod
    def of(cls, r: Reproduction) -> ReproductionOut:
        return cls(
            name=r.name, version=r.version, paper=r.paper, summary=r.summary,
            claims=[ClaimOut(says=c.says, kind=c.kind, metric=c.metric, metrics=c.metrics,
                             paper=c.paper)
                    for c in r.claims],
            scales={s: ScaleOut(n_members=r.n_members(s), sweep=r.sweep_body(s)) for s in r.scales},
        )


class ReproductionList(BaseModel):
    items: list[ReproductionOut] = Field(description="By name.")


class ClaimReport(BaseModel):
    says: str
    expected: str = Field(description="The claim as a comparison on the members' summaries.")
    measured: str = Field(description="What this run measured ('> x': not reached within x steps).")
    verdict: Literal["pass", "fail"]
    paper: str | None
    values: dict[str, Any] = Field(description="The measured numbers.")


class ReproductionRunOut(BaseModel):
    """A run of a reproduction: its sweep and, once every member has finished, the report."""

    reproduction: str
    version: int
    scale: str
    sweep: SweepOut
    verdict: Literal["pass", "fail"] | None = Field(
        description="pass when every claim holds; null until every member has finished.")
    claims: list[ClaimReport] | None = Field(description="Null until every member has finished.")
    members: list[MemberOut] = Field(description="The sweep's members, by index.")
    plot_axis: str = Field(description="The grid axis the report's plot of steps to memorise and "
                           "to generalise is drawn against (the reproduction's plot.axis, else "
                           "the trend claim's, else the first that is not the seed).")
    plot_members: dict[str, Any] = Field(
        description="The grid point the plotted members match ({} for all): e.g. "
        "{\"optimizer.weight_decay\": 1.0} plots only the members at weight decay 1.")

    @classmethod
    def of(cls, r: Reproduction, scale: str, sweep: SweepOut, state: SweepStatus,
           members: list[Experiment]) -> ReproductionRunOut:
        rows = [MemberOut.of(m) for m in members]
        report = None
        if state.status in FINISHED_STATUSES:
            report = r.report(scale, [row.model_dump(mode="json") for row in rows])
        return cls(reproduction=r.name, version=r.version, scale=scale, sweep=sweep,
                   verdict=report and report["verdict"], claims=report and report["claims"],
                   members=rows, plot_axis=r.plot_axis(scale), plot_members=r.plot_members(scale))


def known_reproductions(settings: Settings) -> dict[str, Reproduction]:
    return reproductions(settings.reproductions_dir or DEFAULT_DIR)


def reproduction_named(settings: Settings, name: str) -> Reproduction:
    """The reproduction, or a 422 at path.name that lists the known ones."""
    known = known_reproductions(settings)
    if name not in known:
        raise invalid(("path", "name"), f"unknown reproduction {name!r}; known: "
                      f"{', '.join(sorted(known)) or 'none'}", name)
    return known[name]


def scale_of_run(r: Reproduction, sweep: Sweep) -> str:
    """The scale this sweep ran the reproduction at; a 422 at path.sweep_id when it is not a run
    of this reproduction's version."""
    scale = r.scale_of(sweep.spec)
    if scale is None:
        raise invalid(("path", "sweep_id"), f"sweep {sweep.id} ({sweep.name!r}) is not a run of "
                      f"{r.name} v{r.version}", sweep.id)
    return scale


def run_of(settings: Settings, sweep: Sweep) -> tuple[Reproduction, str]:
    """(the reproduction, the scale) this sweep is a run of; a 404 naming the sweep when it is
    a run of none of the known reproductions' versions."""
    for reproduction in known_reproductions(settings).values():
        scale = reproduction.scale_of(sweep.spec)
        if scale is not None:
            return reproduction, scale
    raise HTTPException(404, f"sweep {sweep.id} ({sweep.name!r}) is not a run of any reproduction "
                             f"(GET /api/v1/reproductions lists them)")
