"""Checkpoints: list an experiment's, download one, verified, or export its weights."""
from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, HTTPException, Path, Query, Response
from fastapi.responses import JSONResponse
from sqlalchemy.orm import Session

from service import export, store
from service.api.deps import OwnedExperiment, SessionDep
from service.api.responses import NOT_FOUND, UNAUTHORIZED
from service.models import Checkpoint
from service.schemas.checkpoints import CheckpointOut
from service.schemas.errors import ErrorOut, invalid

router = APIRouter(prefix="/experiments", tags=["experiments"], responses=UNAUTHORIZED)


@router.get("/{experiment_id}/checkpoints", response_model=list[CheckpointOut], responses=NOT_FOUND)
def list_checkpoints(experiment: OwnedExperiment, session: SessionDep) -> list[CheckpointOut]:
    """Checkpoints by step: size, sha256, created_at and the engine's metadata."""
    return [CheckpointOut.of(c) for c in store.list_checkpoints(session, experiment.id)]


def verified_or_error(session: Session, experiment_id: str, step: int) -> Checkpoint:
    """The stored checkpoint, verified (sha256 and safetensors layout): 409 with the reason when
    it is corrupt, 404 when there is none at this step."""
    try:
        checkpoint = store.verified_checkpoint(session, experiment_id, step)
    except store.CheckpointCorrupt as exc:
        raise HTTPException(409, str(exc)) from None
    if checkpoint is None:
        raise HTTPException(404, f"experiment {experiment_id} has no checkpoint at step {step}")
    return checkpoint


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
    checkpoint = verified_or_error(session, experiment.id, step)
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


@router.get(
    "/{experiment_id}/checkpoints/{step}/export",
    response_class=Response,
    responses={
        200: {
            "content": {"application/octet-stream": {}},
            "description": "The member's weights as a TransformerLens HookedTransformer state "
            "dict (safetensors); metadata transformer_lens_config holds the config's arguments.",
        },
        404: {"model": ErrorOut, "description": "No such experiment or checkpoint."},
        409: {"model": ErrorOut, "description": "The stored checkpoint is corrupt."},
        422: {"model": ErrorOut, "description": "No export for this model (an MLP), or no "
              "such ensemble member."},
    },
)
def export_checkpoint(
    experiment: OwnedExperiment,
    session: SessionDep,
    step: Annotated[int, Path(ge=0, le=store.MAX_STEP)],
    export_format: Annotated[
        Literal["transformer_lens"], Query(alias="format", description="The export format.")
    ] = "transformer_lens",
    member: Annotated[int, Query(ge=0, description="The ensemble member to export.")] = 0,
) -> Response:
    """One ensemble member of a checkpoint as a TransformerLens model: tensor names are
    `HookedTransformer(HookedTransformerConfig(**cfg)).state_dict()`'s, with cfg the JSON in
    the file's metadata `transformer_lens_config`. Transformers only (422 for an MLP)."""
    reason = export.transformer_lens_unavailable(experiment.spec)
    if reason is not None:
        raise HTTPException(status_code=422, detail=reason)
    checkpoint = verified_or_error(session, experiment.id, step)
    try:
        blob = export.export_transformer_lens(
            checkpoint.data, experiment.spec, member,
            metadata={"groklab_experiment_id": str(experiment.id), "groklab_step": str(step)},
        )
    except export.ExportUnavailable as exc:
        raise invalid(("query", "member"), str(exc), member) from None
    except export.CheckpointUnreadable as exc:
        detail = f"checkpoint at step {step} of experiment {experiment.id} is corrupt: {exc}"
        return JSONResponse({"detail": detail}, status_code=409)
    return Response(
        content=blob,
        media_type="application/octet-stream",
        headers={
            "Content-Disposition": f'attachment; filename="{experiment.id}-step{step}'
            f'-member{member}.{export_format}.safetensors"',
        },
    )
