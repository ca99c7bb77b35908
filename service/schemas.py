"""API response models (pydantic). The tables live in models.py; the request body is the spec."""
from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from service.models import STATUSES, Checkpoint, Experiment

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
    spec: dict[str, Any] = Field(description="The full spec, presets resolved.")
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
    summary: dict[str, Any] | None = Field(
        description="Written by the worker at the end: final metrics, memorization_step, "
        "generalization_step, ..."
    )

    @classmethod
    def of(cls, experiment: Experiment) -> ExperimentOut:
        return cls(
            id=experiment.id,
            name=experiment.name,
            owner=experiment.owner,
            status=experiment.status,  # type: ignore[arg-type]
            queue=experiment.queue,
            spec=experiment.spec,
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
            summary=experiment.summary,
        )


class ExperimentPage(BaseModel):
    items: list[ExperimentOut] = Field(description="Newest first.")
    next_cursor: str | None = Field(
        description="Pass as `cursor` for the next page; null on the last page."
    )


class MetricSeriesOut(BaseModel):
    name: str
    member: int = Field(description="Ensemble member (0 for a single run).")
    points: int = Field(description="Raw points of this series in the step window.")
    downsampled: bool = Field(description="True when fewer points are returned than stored.")
    steps: list[int]
    values: list[float | None] = Field(description="null where the value was NaN or infinite.")


class MetricsOut(BaseModel):
    experiment_id: str
    method: str = Field(description="Downsampling method: 'minmax-pow2' (see the endpoint).")
    max_points: int | None
    from_step: int | None
    to_step: int | None
    series: list[MetricSeriesOut] = Field(
        description="One entry per (name, member) with points in the window, by name then member."
    )


class CheckpointOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    step: int
    size: int = Field(description="Bytes.")
    sha256: str = Field(description="Hex digest of the stored bytes.")
    created_at: datetime
    meta: dict[str, Any]

    @classmethod
    def of(cls, checkpoint: Checkpoint) -> CheckpointOut:
        return cls.model_validate(checkpoint)


class Health(BaseModel):
    status: Literal["ok"] = "ok"


class Readiness(BaseModel):
    status: Literal["ready", "not ready"]
    checks: dict[str, str] = Field(
        description="Each dependency: 'ok', or what failed.",
        examples=[{"database": "ok", "broker": "ok"}],
    )


class ErrorOut(BaseModel):
    detail: str


class CancelConflict(BaseModel):
    detail: str
    status: Status
