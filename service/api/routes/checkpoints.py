"""Checkpoints: list an experiment's, and download one, verified."""
from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Path, Response
from fastapi.responses import JSONResponse

from service import store
from service.api.deps import OwnedExperiment, SessionDep
from service.api.responses import NOT_FOUND, UNAUTHORIZED
from service.schemas.checkpoints import CheckpointOut
from service.schemas.errors import ErrorOut

router = APIRouter(prefix="/experiments", tags=["experiments"], responses=UNAUTHORIZED)


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
