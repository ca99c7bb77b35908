"""Experiments: submit, list, inspect, cancel; their metrics and checkpoints."""
from __future__ import annotations

import csv
import io
import logging
import math
from typing import Annotated, Literal

from fastapi import APIRouter, Body, HTTPException, Path, Query, Response
from fastapi.responses import JSONResponse

from service import store
from service.api.deps import (
    EnqueueDep,
    OwnedExperiment,
    OwnedExperimentForWrite,
    ReadPrincipal,
    SessionDep,
    SettingsDep,
    WritePrincipal,
    invalid,
)
from service.downsample import __doc__ as DOWNSAMPLING
from service.models import FINISHED_STATUSES
from service.schemas import (
    CancelConflict,
    CheckpointOut,
    ErrorOut,
    ExperimentOut,
    ExperimentPage,
    MetricsOut,
    Status,
)
from service.settings import Settings
from service.spec import CI_SMALL, ExperimentSpec

log = logging.getLogger(__name__)

NO_NUL = r"^[^\x00]*$"
DEFAULT_PAGE_SIZE = 50
NOT_FOUND = {
    404: {
        "model": ErrorOut,
        "description": "No experiment with this id that this token may see (its owner's own; "
        "every experiment for an admin token).",
    }
}
UNAUTHORIZED = {
    401: {"model": ErrorOut, "description": "Missing, unknown or revoked bearer token."}
}
FORBIDDEN = {403: {"model": ErrorOut, "description": "The token's scope is read; this needs write."}}

router = APIRouter(prefix="/experiments", tags=["experiments"], responses=UNAUTHORIZED)

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


@router.post(
    "",
    status_code=201,
    response_model=ExperimentOut,
    responses={
        **FORBIDDEN,
        413: {"model": ErrorOut, "description": "Body larger than GROKLAB_MAX_BODY_BYTES."},
        422: {"description": "Invalid spec: `detail` lists each field (`loc`) and the problem."},
    },
)
def submit_experiment(
    spec: Annotated[ExperimentSpec, Body(openapi_examples=SPEC_EXAMPLES)],
    principal: WritePrincipal,
    session: SessionDep,
    settings: SettingsDep,
    enqueue: EnqueueDep,
) -> ExperimentOut:
    """Submit an experiment spec. A `preset` fills the defaults; any field given overrides it.
    The experiment belongs to the token's owner.

    The job is stored as `queued` and a worker is woken on the `gpu` queue when
    `training.device` is `cuda`, otherwise on the default queue (GROKLAB_DEFAULT_QUEUE).
    """
    if "\x00" in spec.name:
        raise invalid(("body", "name"), "name must not contain NUL characters", spec.name)
    queue = "gpu" if spec.training.device == "cuda" else settings.default_queue
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
    status: Annotated[Status | None, Query(description="Only jobs in this state.")] = None,
    name: Annotated[
        str | None, Query(max_length=200, pattern=NO_NUL, description="Exact name.")
    ] = None,
    owner: Annotated[
        str | None,
        Query(
            max_length=200, pattern=NO_NUL,
            description="Only this owner's jobs (admin tokens; others see only their own).",
        ),
    ] = None,
    limit: Annotated[
        int | None,
        Query(ge=1, description="Page size: default 50, at most GROKLAB_MAX_PAGE_SIZE."),
    ] = None,
    cursor: Annotated[
        str | None, Query(max_length=200, description="next_cursor of the previous page.")
    ] = None,
) -> ExperimentPage:
    """Jobs, newest first, a page at a time (stable cursor pagination): the token owner's own,
    or everyone's for an admin token."""
    if limit is None:
        limit = min(DEFAULT_PAGE_SIZE, settings.max_page_size)
    if limit > settings.max_page_size:
        raise invalid(
            ("query", "limit"),
            f"limit must be at most {settings.max_page_size} (GROKLAB_MAX_PAGE_SIZE) "
            f"(got {limit})",
            limit,
        )
    if not principal.is_admin:
        if owner is not None and owner != principal.owner:
            raise invalid(
                ("query", "owner"),
                f"only admin tokens may list another owner's experiments; this token's owner is "
                f"{principal.owner!r} (got {owner!r})",
                owner,
            )
        owner = principal.owner
    try:
        items, next_cursor = store.list_experiments(
            session, status=status, name=name, owner=owner, limit=limit, cursor=cursor
        )
    except ValueError as exc:
        raise invalid(("query", "cursor"), str(exc), cursor) from exc
    return ExperimentPage(items=[ExperimentOut.of(e) for e in items], next_cursor=next_cursor)


@router.get("/{experiment_id}", response_model=ExperimentOut, responses=NOT_FOUND)
def get_experiment(experiment: OwnedExperiment) -> ExperimentOut:
    """A job's status, spec, progress, timestamps, error and summary."""
    return ExperimentOut.of(experiment)


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


@router.get(
    "/{experiment_id}/metrics",
    response_model=MetricsOut,
    responses={
        **NOT_FOUND,
        200: {
            "content": {"text/csv": {"example": "name,member,step,value\ntrain_loss,0,0,4.6\n"}},
            "description": "JSON, or CSV (name,member,step,value) with format=csv.",
        },
    },
    description="Metric series of an experiment, downsampled on the server.\n\n"
    + (DOWNSAMPLING or ""),
)
def get_metrics(
    experiment: OwnedExperiment,
    session: SessionDep,
    settings: SettingsDep,
    names: Annotated[
        str | None,
        Query(
            max_length=10_000, pattern=NO_NUL,
            description="Comma-separated metric names, e.g. train_loss,val_acc. Default: all.",
        ),
    ] = None,
    from_step: Annotated[int | None, Query(ge=0, le=store.MAX_STEP)] = None,
    to_step: Annotated[int | None, Query(ge=0, le=store.MAX_STEP)] = None,
    max_points: Annotated[
        int | None,
        Query(
            ge=2,
            description="At most this many points per series (min/max downsampling; first and "
            "last always kept). Default and maximum: GROKLAB_MAX_POINTS; and series x "
            "max_points at most GROKLAB_MAX_RESPONSE_POINTS (the default shrinks to fit).",
        ),
    ] = None,
    member: Annotated[
        int | None, Query(ge=0, le=store.MAX_STEP, description="One ensemble member; default all.")
    ] = None,
    format: Annotated[Literal["json", "csv"], Query()] = "json",
) -> dict | Response:
    if max_points is not None and max_points > settings.max_points:
        raise invalid(
            ("query", "max_points"),
            f"max_points must be at most {settings.max_points} (GROKLAB_MAX_POINTS) "
            f"(got {max_points})",
            max_points,
        )
    if from_step is not None and to_step is not None and from_step > to_step:
        raise invalid(
            ("query", "from_step"),
            f"from_step must be at most to_step (got {from_step} > {to_step})",
            from_step,
        )
    name_list = None
    if names is not None:
        name_list = list(dict.fromkeys(n.strip() for n in names.split(",") if n.strip()))
        if not name_list:
            raise invalid(("query", "names"), "names must list at least one metric name", names)
    max_points = _points_per_series(
        store.count_metric_series(session, experiment.id, names=name_list, member=member),
        max_points,
        settings,
    )
    data = store.query_metrics(
        session, experiment.id, names=name_list, from_step=from_step, to_step=to_step,
        max_points=max_points, member=member,
    )
    if format == "csv":
        return Response(_metrics_csv(data), media_type="text/csv")
    return data


def _points_per_series(series: int, max_points: int | None, settings: Settings) -> int:
    """max_points for a query over `series` series, keeping series x max_points within
    GROKLAB_MAX_RESPONSE_POINTS: the default shrinks to fit; an explicit value over it is 422."""
    cap = settings.max_response_points
    if max_points is None:
        max_points = min(settings.max_points, cap // max(series, 1))
        if max_points >= 2:
            return max_points
        max_points = 2  # the fewest a series can have: even that is too many
    if series * max_points > cap:
        fits = cap // series
        hint = (
            f"ask for max_points <= {fits}, or fewer names or one member"
            if fits >= 2 else "ask for fewer names or one member"
        )
        raise invalid(
            ("query", "max_points"),
            f"this query covers {series} series x {max_points} max_points = "
            f"{series * max_points} points, over the {cap} points a response may hold "
            f"(GROKLAB_MAX_RESPONSE_POINTS); {hint}",
            max_points,
        )
    return max_points


def _metrics_csv(data: dict) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["name", "member", "step", "value"])
    for series in data["series"]:
        name, member = series["name"], series["member"]
        writer.writerows(
            (name, member, step, "" if value is None or math.isnan(value) else repr(value))
            for step, value in zip(series["steps"], series["values"])
        )
    return out.getvalue()


@router.get("/{experiment_id}/checkpoints", response_model=list[CheckpointOut], responses=NOT_FOUND)
def list_checkpoints(experiment: OwnedExperiment, session: SessionDep) -> list[CheckpointOut]:
    """Checkpoints by step: size, sha256, created_at and the engine's metadata."""
    return [CheckpointOut.of(c) for c in store.list_checkpoints(session, experiment.id)]


@router.get(
    "/{experiment_id}/checkpoints/{step}",
    response_class=Response,
    responses={
        200: {
            "content": {"application/octet-stream": {}},
            "description": "The checkpoint (safetensors). X-Checksum-Sha256 carries its digest.",
        },
        404: {"model": ErrorOut, "description": "No such experiment or checkpoint."},
        409: {
            "model": ErrorOut,
            "description": "The stored bytes fail their sha256 check, or are not a groklab "
            "safetensors checkpoint.",
        },
    },
)
def download_checkpoint(
    experiment: OwnedExperiment,
    session: SessionDep,
    step: Annotated[int, Path(ge=0, le=store.MAX_STEP)],
) -> Response:
    """Download a checkpoint. Its sha256 and its safetensors layout are verified on every
    download; a corrupt one is refused with 409 rather than served."""
    try:
        checkpoint = store.verified_checkpoint(session, experiment.id, step)
    except store.CheckpointCorrupt as exc:
        return JSONResponse({"detail": str(exc)}, status_code=409)
    if checkpoint is None:
        raise HTTPException(404, f"experiment {experiment.id} has no checkpoint at step {step}")
    return Response(
        content=checkpoint.data,
        media_type="application/octet-stream",
        headers={
            "X-Checksum-Sha256": checkpoint.sha256,
            "Content-Disposition": (
                f'attachment; filename="{experiment.id}-step{step}.safetensors"'
            ),
        },
    )
