"""Checkpoints: list an experiment's, download one, verified, or export its weights."""
from __future__ import annotations

import hashlib
from collections.abc import Iterator
from typing import Annotated, Literal

from fastapi import APIRouter, HTTPException, Path, Query, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse
from sqlalchemy.orm import Session, sessionmaker

from service import store
from service.api.deps import OwnedExperiment, SessionDep, SettingsDep
from service.api.responses import NOT_FOUND, UNAUTHORIZED
from service.contract.models import Checkpoint
from service.schemas.checkpoints import CheckpointOut
from service.schemas.errors import ErrorOut, invalid
from service.science import export

router = APIRouter(prefix="/experiments", tags=["experiments"], responses=UNAUTHORIZED)


@router.get(
    "/{experiment_id}/checkpoints",
    response_model=list[CheckpointOut],
    responses={
        **NOT_FOUND,
        200: {"headers": {"X-Next-Cursor": {
            "description": "Pass as `cursor` for the next page; absent on the last page.",
            "schema": {"type": "string"},
        }}},
    },
)
def list_checkpoints(
    experiment: OwnedExperiment,
    session: SessionDep,
    settings: SettingsDep,
    response: Response,
    limit: Annotated[int | None, Query(
        ge=1, description="Page size (default and most: GROKLAB_MAX_PAGE_SIZE)."
    )] = None,
    cursor: Annotated[str | None, Query(
        max_length=20, description="X-Next-Cursor of the previous page."
    )] = None,
) -> list[CheckpointOut]:
    """Checkpoints by step, a page at a time: size, sha256, created_at and the engine's
    metadata. The header X-Next-Cursor (and a Link rel="next") names the next page."""
    if limit is not None and limit > settings.max_page_size:
        raise invalid(("query", "limit"),
                      f"limit must be at most {settings.max_page_size} (got {limit})", limit)
    if cursor is not None and not (
        cursor.isascii() and cursor.isdigit() and int(cursor) <= store.MAX_STEP
    ):
        raise invalid(("query", "cursor"),
                      f"cursor must be the X-Next-Cursor of a previous page (got {cursor!r})",
                      cursor)
    limit = limit or settings.max_page_size
    page = store.list_checkpoints(
        session, experiment.id, after_step=None if cursor is None else int(cursor),
        limit=limit + 1,
    )
    if len(page) > limit:
        page = page[:limit]
        response.headers["X-Next-Cursor"] = str(page[-1].step)
        response.headers["Link"] = (
            f'</api/v1/experiments/{experiment.id}/checkpoints?limit={limit}'
            f'&cursor={page[-1].step}>; rel="next"'
        )
    return [CheckpointOut.of(c) for c in page]


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
    request: Request,
    step: Annotated[int, Path(ge=0, le=store.MAX_STEP)],
) -> Response:
    """Download a checkpoint, streamed a chunk at a time (the API holds one chunk, whatever the
    size). Its sha256 and its safetensors layout are verified before the first byte is sent; a
    corrupt one is refused with 409 rather than served. Bytes that change while they stream
    break the connection rather than complete a download."""
    checkpoint = verified_or_error(session, experiment.id, step)
    return StreamingResponse(
        _verified_stream(request.app.state.sessions, checkpoint),
        media_type="application/octet-stream",
        headers={
            "Content-Length": str(checkpoint.size),
            "X-Checksum-Sha256": checkpoint.sha256,
            "Content-Disposition": (
                f'attachment; filename="{experiment.id}-step{step}.safetensors"'
            ),
        },
    )


def _verified_stream(sessions: sessionmaker[Session], checkpoint: Checkpoint) -> Iterator[bytes]:
    """The chunks of a verified checkpoint, in a session of their own (the request's is closed
    by the time the body streams); raises before the last chunk if the bytes no longer match."""
    digest = hashlib.sha256()
    with sessions() as session:
        chunks = store.checkpoint_chunks(session, checkpoint)
        previous = next(chunks, b"")
        for chunk in chunks:
            digest.update(previous)
            yield previous
            previous = chunk
        digest.update(previous)
        if digest.hexdigest() != checkpoint.sha256:
            raise store.CheckpointCorrupt(checkpoint, "its bytes changed while they streamed")
        yield previous


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
    the file's metadata `transformer_lens_config`. Transformers only (422 for an MLP).

    The checkpoint's sha256 is checked a chunk at a time; then only its header and the chunks
    holding that member's parameters are read (never the other members or optimizer state)."""
    reason = export.transformer_lens_unavailable(experiment.spec)
    if reason is not None:
        raise HTTPException(status_code=422, detail=reason)
    try:  # checked a chunk at a time; then only its header and the member's weights are read
        stored = store.verified_checkpoint(session, experiment.id, step)
        if stored is None:
            raise HTTPException(404, f"experiment {experiment.id} has no checkpoint at step {step}")
        blob = export.export_member(
            lambda start, end: store.checkpoint_range(session, stored, start, end), stored.size,
            experiment.spec, member,
            metadata={"groklab_experiment_id": str(experiment.id), "groklab_step": str(step)},
        )
    except store.CheckpointCorrupt as exc:
        raise HTTPException(409, str(exc)) from None
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
