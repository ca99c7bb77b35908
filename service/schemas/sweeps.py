"""Sweeps: the submitted grid (expanded and packed with the app's limits), the sweep as returned,
its phase diagram and its members, as JSON or CSV."""
from __future__ import annotations

import csv
import io
import json
from datetime import datetime
from typing import Any, ClassVar, Literal

from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, Field

from service.access.auth import Principal
from service.contract.limits import Limits
from service.contract.models import Experiment, Sweep
from service.contract.settings import Settings
from service.schemas.errors import invalid
from service.schemas.experiments import NO_NUL, PageQuery, Status
from service.science.phase_diagram import AxisInvalid, MemberResult, phase_columns, phase_diagram
from service.science.sweeps import (
    Member,
    SweepInvalid,
    SweepSpec,
    check_size,
    expand,
    plan_packs,
)
from service.store import SweepStatus
from service.science.worker_plan import worker_plan

SWEEP_EXAMPLES = {
    "wd-by-fraction": {
        "summary": "Weight decay x training fraction x seed on ci-small (8 members)",
        "value": {
            "name": "wd-by-fraction",
            "base": {"preset": "ci-small", "training": {"steps": 800}},
            "grid": {
                "optimizer.weight_decay": [0, 1],
                "task.train_fraction": [0.4, 0.6],
                "training.seed": [0, 1],
            },
        },
    },
}


def check_sweep_size(sweep: SweepSpec, settings: Settings, principal: Principal) -> None:
    """FastAPI's 422 for what the request alone shows too large (science.sweeps.check_size:
    the member count, pack_size, a data_schedule's stages, the base's bytes), before any
    member is built."""
    try:
        check_size(sweep, Limits.from_settings(settings, principal), settings.max_sweep_members)
    except SweepInvalid as exc:
        raise RequestValidationError(exc.errors) from None


def plan_sweep(
    sweep: SweepSpec, settings: Settings, principal: Principal | None = None
) -> list[list[Member]]:
    """The sweep's members, validated within the app's limits and grouped into packs no larger
    than the per-job budgets allow; or FastAPI's 422 naming each bad axis value
    (`grid.task.p[2]: ...`) or the member cap."""
    limits = Limits.from_settings(settings, principal)
    try:
        members = expand(sweep, limits, settings.max_sweep_members)
    except SweepInvalid as exc:
        raise RequestValidationError(exc.errors) from None
    workers = worker_plan(settings)  # the worker hosts are taken to be like this host's plan
    return plan_packs(members, sweep.pack_size, settings.pack_memory_bytes, settings.max_ensemble,
                      processes=workers.processes, worker_gpus=workers.gpus, limits=limits)


class SweepSummaryOut(BaseModel):
    """A sweep as listed: its state, derived from its members."""

    id: str
    name: str
    owner: str = Field(description="Owner of the token that submitted it.")
    status: Status = Field(
        description="queued (no member started yet), running (any member queued or running), "
        "paused (none queued or running, some paused), or once every member finished: "
        "succeeded (all did, or were pruned by early stopping), failed (any failed; see counts), "
        "cancelled."
    )
    counts: dict[str, int] = Field(description="Members by status.")
    progress: float = Field(
        description="Members' steps over their total steps; a finished member counts as done."
    )
    created_at: datetime
    finished_at: datetime | None = Field(description="The last member's finish, once all have.")
    n_members: int
    n_packs: int = Field(description="Queue jobs: members with the same shapes train together.")
    grid: dict[str, list[Any]] = Field(description="The axes and their values, in grid order.")
    pack_size: int | None = Field(description="As asked for; null: the default.")
    early_stopping: dict[str, Any] | None = Field(
        None, description="As asked for, defaults filled in; null: every member runs its budget.")

    @classmethod
    def fields_of(cls, sweep: Sweep, state: SweepStatus) -> dict[str, Any]:
        return {
            "id": sweep.id,
            "name": sweep.name,
            "owner": sweep.owner,
            "status": state.status,
            "counts": state.counts,
            "progress": state.progress,
            "created_at": sweep.created_at,
            "finished_at": state.finished_at,
            "n_members": sweep.n_members,
            "n_packs": sweep.n_packs,
            "grid": sweep.spec["grid"],
            "pack_size": sweep.spec.get("pack_size"),
            "early_stopping": sweep.spec.get("early_stopping"),
        }

    @classmethod
    def of(cls, sweep: Sweep, state: SweepStatus) -> SweepSummaryOut:
        return cls(**cls.fields_of(sweep, state))


class SweepOut(SweepSummaryOut):
    """A sweep: its state and its members' experiment ids, in grid order."""

    experiment_ids: list[str] = Field(
        description="Each member, an ordinary experiment, by its index in the grid (the last "
        "axis varying fastest)."
    )

    @classmethod
    def of_members(cls, sweep: Sweep, state: SweepStatus, experiment_ids: list[str]) -> SweepOut:
        return cls(**cls.fields_of(sweep, state), experiment_ids=experiment_ids)


class SweepPage(BaseModel):
    items: list[SweepSummaryOut] = Field(description="Newest first.")
    next_cursor: str | None = Field(
        description="Pass as `cursor` for the next page; null on the last page."
    )


class SweepListQuery(PageQuery):
    """The query string of GET /sweeps."""

    listing: ClassVar[str] = "sweeps"


# ---- phase diagram ---------------------------------------------------------------------------


class Axis(BaseModel):
    axis: str
    values: list[Any] = Field(description="In grid order.")


class PhaseCell(BaseModel):
    x: Any
    y: Any = Field(description="null without a y axis.")
    n: int = Field(description="Members in the cell (every other axis aggregated).")
    finished: int
    phases: dict[str, int] = Field(description="Members by the phase of their summary; a member "
                                   "pruned by early stopping counts as `pruned`.")
    grokked_fraction: float | None = Field(
        description="Of the members with a summary, the fraction that generalised."
    )
    median_memorization_step: float | None
    median_generalization_step: float | None
    median_final_val_acc: float | None


class PhaseDiagramOut(BaseModel):
    x: Axis
    y: Axis | None
    cells: list[PhaseCell] = Field(description="x in grid order, y varying fastest.")


class PhaseDiagramQuery(BaseModel):
    x: str = Field(max_length=200, pattern=NO_NUL, description="A grid axis, e.g. "
                   "optimizer.weight_decay.")
    y: str | None = Field(None, max_length=200, pattern=NO_NUL,
                          description="Another grid axis, e.g. task.train_fraction.")
    format: Literal["json", "csv"] = "json"

    def diagram(self, sweep: Sweep, members: list[Experiment]) -> dict[str, Any]:
        """The diagram of these members over x (and y); 422 naming an axis not in the grid."""
        results = [MemberResult(m.sweep_point or {}, m.status, m.summary) for m in members]
        try:
            return phase_diagram(sweep.spec["grid"], results, self.x, self.y)
        except AxisInvalid as exc:
            raise invalid(("query", exc.param), str(exc), exc.value) from exc


def _csv_value(value: Any) -> str:
    """A cell of a CSV: empty for null, strings as they are, anything else as JSON."""
    if value is None:
        return ""
    return value if isinstance(value, str) else json.dumps(value)


def _csv(header: list[str], rows: list[list[Any]]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(header)
    writer.writerows([_csv_value(v) for v in row] for row in rows)
    return out.getvalue()


PHASE_DIAGRAM_COLUMNS = [
    "x", "y", "n", "finished", "grokked_fraction", "median_memorization_step",
    "median_generalization_step", "median_final_val_acc",
]


def phase_diagram_csv(diagram: dict[str, Any]) -> str:
    """One row per cell: the columns of PHASE_DIAGRAM_COLUMNS, then one count per phase."""
    phases = phase_columns(diagram)
    return _csv(
        PHASE_DIAGRAM_COLUMNS + phases,
        [[c[k] for k in PHASE_DIAGRAM_COLUMNS] + [c["phases"].get(p, 0) for p in phases]
         for c in diagram["cells"]],
    )


# ---- members ---------------------------------------------------------------------------------

SUMMARY_COLUMNS = (
    "phase", "memorization_step", "generalization_step", "final_train_acc", "final_val_acc",
)
# A member's early stopping: the last forecast's probability, and the check that pruned it.
PRUNING_COLUMNS = ("will_generalize", "pruned_at_step", "prune_score", "prune_reason")


class MemberOut(BaseModel):
    experiment_id: str
    index: int = Field(description="Place in the grid (the last axis varying fastest).")
    status: Status
    point: dict[str, Any] = Field(description="The member's value of each axis.")
    phase: str | None
    memorization_step: int | None
    generalization_step: int | None
    final_train_acc: float | None
    final_val_acc: float | None
    will_generalize: float | None = Field(
        None, description="The last forecast's probability of generalising (modular tasks).")
    pruned_at_step: int | None = Field(None, description="The check step that pruned it.")
    prune_score: float | None = Field(None, description="Its score at that check.")
    prune_reason: str | None = Field(None, description="Why the rule pruned it.")
    summary: dict[str, Any] | None = Field(description="The member's whole summary.")

    @classmethod
    def of(cls, member: Experiment) -> MemberOut:
        summary = member.summary or {}
        return cls(
            experiment_id=member.id,
            index=member.sweep_index or 0,
            status=member.status,  # type: ignore[arg-type]
            point=member.sweep_point or {},
            **{k: summary.get(k) for k in SUMMARY_COLUMNS},
            will_generalize=((member.forecast or summary.get("forecast")) or {}).get("will_generalize"),
            pruned_at_step=(summary.get("pruning") or {}).get("step"),
            prune_score=(summary.get("pruning") or {}).get("score"),
            prune_reason=(summary.get("pruning") or {}).get("reason"),
            summary=member.summary,
        )


class MembersOut(BaseModel):
    sweep_id: str
    axes: list[str] = Field(description="The grid's axes, in order.")
    members: list[MemberOut] = Field(description="By index.")


class MembersQuery(BaseModel):
    format: Literal["json", "csv"] = "json"


def members_out(sweep: Sweep, members: list[Experiment]) -> MembersOut:
    return MembersOut(sweep_id=sweep.id, axes=list(sweep.spec["grid"]),
                      members=[MemberOut.of(m) for m in members])


def members_csv(members: MembersOut) -> str:
    """One row per member: experiment_id, index, status, one column per axis, then the
    summary's phase, memorization_step, generalization_step, final_train_acc, final_val_acc,
    and the early stopping's will_generalize, pruned_at_step, prune_score, prune_reason."""
    columns = (*SUMMARY_COLUMNS, *PRUNING_COLUMNS)
    return _csv(
        ["experiment_id", "index", "status", *members.axes, *columns],
        [[m.experiment_id, m.index, m.status, *(m.point.get(a) for a in members.axes),
          *(getattr(m, k) for k in columns)] for m in members.members],
    )
