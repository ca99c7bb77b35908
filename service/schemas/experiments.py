"""Experiments: the submitted spec (parsed with the app's limits), the job as returned, pages."""
from __future__ import annotations

from datetime import datetime
from typing import Any, ClassVar, Literal
from uuid import UUID

from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, Field, ValidationError

from service.access.auth import Principal
from service.contract.limits import Limits
from service.contract.models import STATUSES, Experiment
from service.contract.presets import CI_SMALL
from service.contract.settings import Settings
from service.contract.spec import ExperimentSpec
from service.schemas.errors import invalid

NO_NUL = r"^[^\x00]*$"
DEFAULT_PAGE_SIZE = 50

SPEC_EXAMPLES = {
    "ci-small": {
        "summary": "ci-small: the smallest preset that groks (x+y mod 47, 60% train, 1200 steps)",
        "value": {"name": "ci-small", "preset": "ci-small"},
    },
    "ci-small-resolved": {
        "summary": "ci-small, every section written out",
        "value": {"name": "ci-small-full", "preset": "ci-small", **CI_SMALL},
    },
    "nanda2023-wd": {
        "summary": "Nanda et al. 2023 with a smaller weight decay, on the GPU",
        "value": {
            "name": "add-113-wd0.3",
            "preset": "nanda2023",
            "optimizer": {"weight_decay": 0.3},
            "training": {"steps": 20000, "device": "cuda"},
        },
    },
    "ensemble": {
        "summary": "An ensemble of 8 seeds trained as one batched computation",
        "value": {"name": "seeds", "preset": "ci-small", "ensemble": {"size": 8}},
    },
}


def parse_spec(body: Any, limits: Limits) -> ExperimentSpec:
    """The submitted body as a spec within the app's limits, or FastAPI's own 422 (locs under
    "body"). Validated like FastAPI validates a body (from_attributes), so that its errors
    read the same as when FastAPI validated the spec itself."""
    try:
        spec = ExperimentSpec.model_validate(body, from_attributes=True, context=limits)
    except ValidationError as exc:
        errors = [{**e, "loc": ("body", *e["loc"])} for e in exc.errors(include_url=False)]
        raise RequestValidationError(errors, body=body) from None
    if "\x00" in spec.name:
        raise invalid(("body", "name"), "name must not contain NUL characters", spec.name)
    return spec


Status = Literal[STATUSES]  # type: ignore[valid-type]


class Progress(BaseModel):
    step: int = Field(description="Last step the worker reported.")
    total_steps: int = Field(description="training.steps of the spec.")
    steps_per_s: float | None = Field(description="Recent training speed.")
    eta_s: float | None = Field(description="Estimated seconds to the end.")


class ExperimentOut(BaseModel):
    """A job: its state, its spec (as resolved and stored at submission) and its progress."""

    id: str
    name: str
    owner: str = Field(description="Owner of the token that submitted it.")
    status: Status
    queue: str = Field(description="Celery queue the job was sent to (gpu or cpu).")
    spec: dict[str, Any] | None = Field(
        None, exclude_if=lambda spec: spec is None,
        description="The full spec, presets resolved. Carried by the answers about one "
        "experiment (GET /experiments/{id}, submit, cancel, pause, resume); left out of lists "
        "unless asked for (fields=spec) and of live events' status frames.",
    )
    progress: Progress
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    heartbeat_at: datetime | None = Field(description="Last sign of life from the worker.")
    error: str | None
    attempt: int = Field(description="How many times a worker has started this job.")
    max_attempts: int
    worker: str | None = Field(description="The worker that runs (or ran) the job.")
    cancel_requested: bool
    pause_requested: bool = Field(
        description="A pause was asked while it ran: its worker checkpoints it and marks it "
        "paused within a few seconds."
    )
    summary: dict[str, Any] | None = Field(
        description="Written by the worker at the end: final metrics, memorization_step, "
        "generalization_step, ...; a pruned sweep member's has `pruning` {policy, step, score, "
        "reason}, and a modular task's its last `forecast`."
    )
    forecast: dict[str, Any] | None = Field(
        None,
        description="Modular tasks, once memorised: the worker's latest forecast after each "
        "evaluation, {will_generalize: p, generalization_step: estimate or null, signals: {...}, "
        "step, memorization_step} (service/science/pruning.py). What a sweep's grokking_aware "
        "early stopping acts on.",
    )

    @classmethod
    def of(cls, experiment: Experiment, *, with_spec: bool = False) -> ExperimentOut:
        """The job as answered; its spec (which may be tens of KiB) only `with_spec`."""
        return cls(
            id=experiment.id,
            name=experiment.name,
            owner=experiment.owner,
            status=experiment.status,  # type: ignore[arg-type]
            queue=experiment.queue,
            spec=experiment.spec if with_spec else None,
            progress=Progress(
                step=experiment.step,
                total_steps=experiment.total_steps,
                steps_per_s=experiment.steps_per_s,
                eta_s=experiment.eta_s,
            ),
            created_at=experiment.created_at,
            started_at=experiment.started_at,
            finished_at=experiment.finished_at,
            heartbeat_at=experiment.heartbeat_at,
            error=experiment.error,
            attempt=experiment.attempt,
            max_attempts=experiment.max_attempts,
            worker=experiment.worker,
            cancel_requested=experiment.cancel_requested,
            pause_requested=experiment.pause_requested,
            summary=experiment.summary,
            forecast=experiment.forecast,
        )


class ExperimentPage(BaseModel):
    items: list[ExperimentOut] = Field(description="Newest first.")
    next_cursor: str | None = Field(
        description="Pass as `cursor` for the next page; null on the last page."
    )


class PageQuery(BaseModel):
    """The query string of a newest-first list (experiments, sweeps): whose, page size, cursor.
    FastAPI validates each parameter; the checks that need the settings or the token are
    methods, run in this order: limit, owner."""

    listing: ClassVar[str] = "experiments"

    owner: str | None = Field(
        None,
        max_length=200,
        pattern=NO_NUL,
        description="Only this owner's (admin tokens; others see only their own).",
    )
    limit: int | None = Field(
        None, ge=1, description="Page size: default 50, at most GROKLAB_MAX_PAGE_SIZE."
    )
    cursor: str | None = Field(
        None, max_length=200, description="next_cursor of the previous page."
    )

    def page_size(self, settings: Settings) -> int:
        if self.limit is None:
            return min(DEFAULT_PAGE_SIZE, settings.max_page_size)
        if self.limit > settings.max_page_size:
            raise invalid(
                ("query", "limit"),
                f"limit must be at most {settings.max_page_size} (GROKLAB_MAX_PAGE_SIZE) "
                f"(got {self.limit})",
                self.limit,
            )
        return self.limit

    def owner_for(self, principal: Principal) -> str | None:
        """Whose rows to list: any owner's (or everyone's) for an admin token, else its own."""
        if principal.is_admin:
            return self.owner
        if self.owner is not None and self.owner != principal.owner:
            raise invalid(
                ("query", "owner"),
                f"only admin tokens may list another owner's {self.listing}; this token's owner "
                f"is {principal.owner!r} (got {self.owner!r})",
                self.owner,
            )
        return principal.owner


class ExperimentListQuery(PageQuery):
    """The query string of GET /experiments."""

    status: Status | None = Field(None, description="Only jobs in this state.")
    name: str | None = Field(None, max_length=200, pattern=NO_NUL, description="Exact name.")
    sweep_id: UUID | None = Field(None, description="Only the members of this sweep.")
    fields: Literal["spec"] | None = Field(
        None, description="spec: also return each experiment's spec (left out by default)."
    )


class StateConflict(BaseModel):
    """A 409: the job's (or sweep's) state does not allow what was asked (cancel or pause a
    finished job, resume one that is not paused); `status` is its state now."""

    detail: str
    status: Status
