"""What the network learned: the grokking summary and the Fourier progress measures."""
from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, HTTPException, Path, Query, Request, Response
from fastapi.responses import JSONResponse
from sqlalchemy.orm import Session

from service import store
from service.api.deps import OwnedExperiment, SessionDep, SettingsDep
from service.api.etag import json_with_etag
from service.contract.models import ANALYSIS_DONE, ANALYSIS_FAILED, PROGRESS_DONE, PROGRESS_FAILED
from service.contract.settings import Settings
from service.contract.spec import fourier_unavailable
from service.infra import queueing
from service.schemas.analysis import THRESHOLD_DOC, fourier_view, grokking_thresholds
from service.science.grokking import GrokkingThresholds
from service.store.summary import experiment_phases, experiment_summary

router = APIRouter(tags=["analysis"])


@router.get("/experiments/{experiment_id}/analysis", description=THRESHOLD_DOC,
            response_model=dict[str, Any],
            responses={304: {"description": "Unchanged since the ETag in If-None-Match."}})
def get_analysis(
    experiment: OwnedExperiment,
    session: SessionDep,
    thresholds: Annotated[GrokkingThresholds, Depends(grokking_thresholds)],
    request: Request,
) -> Response:
    """The grokking summary (every task) and the latest Fourier progress measures (modular
    tasks): key frequencies with their share of the norm and the embedding's spectrum. With
    `If-None-Match` (the `ETag` of an earlier answer): 304 while nothing changed."""
    unavailable = fourier_unavailable(experiment.spec)
    latest = store.latest_cached_analysis(session, experiment.id) if unavailable is None else None
    return json_with_etag(request, {
        "experiment_id": experiment.id,
        "status": experiment.status,
        "summary": experiment_summary(session, experiment.id, thresholds),
        # A checkpoint whose analysis failed is cached as {"error": ...}: no measures to show.
        "fourier": fourier_view(latest) if latest is not None and "members" in latest else None,
        "fourier_unavailable": unavailable,
        # Memorization, circuit formation, cleanup (Nanda et al. 2023) from the recorded series.
        "phases": experiment_phases(session, experiment.id),
    })


@router.get(
    "/experiments/{experiment_id}/checkpoints/{step}/analysis",
    responses={202: {"description": "Queued for a worker; ask again shortly."},
               409: {"description": "The analysis failed (why) and will not be retried."},
               422: {"description": "Fourier measures do not apply to this experiment."}},
)
def get_checkpoint_analysis(
    experiment: OwnedExperiment,
    step: Annotated[int, Path(ge=0, le=store.MAX_STEP)],
    session: SessionDep,
    settings: SettingsDep,
) -> Any:
    """The Fourier progress measures of one stored checkpoint.

    Computed by a worker on the `analysis` queue on the first request (202 with Retry-After
    until it is ready; the API itself never loads a model) and cached in the database after
    that. Concurrent requests queue one task. A failure is retried on a later request up to
    GROKLAB_ANALYSIS_MAX_ATTEMPTS tries, then served as 409 with its reason."""
    reason = fourier_unavailable(experiment.spec)
    if reason is not None:
        raise HTTPException(status_code=422, detail=reason)
    found = cached_or_requested(session, settings, experiment.id, step, "fourier")
    return found if isinstance(found, JSONResponse) else fourier_view(found)


def cached_or_requested(
    session: Session, settings: Settings, experiment_id: str, step: int, kind: str,
) -> dict | JSONResponse:
    """The cached analysis of a kind of one checkpoint, or what stands for it while there is
    none: a 202 JSONResponse (status pending, Retry-After) once a worker was asked (one task
    for concurrent requests); HTTPException 404 (no checkpoint at that step: the stored steps
    listed), 409 (failed GROKLAB_ANALYSIS_MAX_ATTEMPTS times, or for good: why) or 503 (the
    broker is down)."""
    cached = store.get_cached_analysis(session, experiment_id, step, kind)
    if cached is not None:
        return cached
    if store.get_checkpoint(session, experiment_id, step) is None:
        steps = [c.step for c in store.list_checkpoints(session, experiment_id, limit=1000)]
        raise HTTPException(
            status_code=404, detail=f"no checkpoint at step {step}; stored steps: {steps}"
        )
    found = store.request_checkpoint_analysis(
        session, experiment_id, step, settings.analysis_max_attempts, kind
    )
    if found.status == ANALYSIS_DONE:
        return found.data
    if found.status == ANALYSIS_FAILED:
        raise HTTPException(
            status_code=409,
            detail=f"the analysis of step {step} failed: {found.error}",
        )
    if found.status == "queued":
        try:
            queueing.enqueue_checkpoint_analysis(experiment_id, step, kind=kind)
        except Exception as exc:  # noqa: BLE001 - the broker is down: say so, never a 500
            store.withdraw_analysis_request(session, experiment_id, step, kind)
            raise HTTPException(
                status_code=503, detail=f"could not queue the analysis (broker unavailable: {exc})"
            ) from exc
    detail = f"analysis of step {step} queued for a worker; ask again"
    if found.error:
        detail += (f" (attempt {found.attempts} of {settings.analysis_max_attempts}; the "
                   f"last one failed: {found.error})")
    return JSONResponse({"status": "pending", "detail": detail},
                        status_code=202, headers={"Retry-After": "2"})


@router.get(
    "/experiments/{experiment_id}/progress-measures",
    responses={202: {"description": "Queued for a worker; ask again shortly."},
               409: {"description": "No checkpoint yet, or the computation failed (why)."},
               422: {"description": "Fourier measures do not apply to this experiment."}},
)
def get_progress_measures(
    experiment: OwnedExperiment,
    session: SessionDep,
    key_freqs: Annotated[Literal["final"], Query(
        description="Where the key frequencies come from: 'final', those of the final "
        "(latest stored) checkpoint, fixed for every checkpoint as in Nanda et al. 2023."
    )] = "final",
) -> Any:
    """Restricted loss, excluded loss, Gini coefficients and weight norm at every stored
    checkpoint, with the key frequencies fixed from the final checkpoint, as metric-shaped
    series; and the phases of grokking they show.

    Computed by a worker on the first request (202 with Retry-After until it is ready; again
    after a newer checkpoint is stored) and kept in the database after that."""
    reason = fourier_unavailable(experiment.spec)
    if reason is not None:
        raise HTTPException(status_code=422, detail=reason)
    checkpoints = store.list_checkpoints(session, experiment.id)
    if not checkpoints:
        raise HTTPException(
            status_code=409,
            detail="no checkpoint stored yet: the progress measures are computed from checkpoints",
        )
    final_step = checkpoints[-1].step
    row = store.get_progress_measures(session, experiment.id)
    if row is not None and row.final_step == final_step:
        if row.status == PROGRESS_FAILED:
            raise HTTPException(status_code=409, detail=row.error)
        if row.status == PROGRESS_DONE:
            return {
                "experiment_id": experiment.id,
                "key_freqs": key_freqs,
                **row.data,
                "phases": experiment_phases(session, experiment.id, row.data["series"]),
            }
    if store.request_progress_measures(session, experiment.id, final_step):
        try:
            queueing.enqueue_progress_measures(experiment.id, final_step, experiment.queue)
        except Exception as exc:  # noqa: BLE001 - the broker is down: say so, never a 500
            store.withdraw_progress_measures(session, experiment.id, final_step)
            raise HTTPException(
                status_code=503,
                detail=f"could not queue the progress measures (broker unavailable: {exc})",
            ) from exc
    return JSONResponse(
        {"status": "pending",
         "detail": f"progress measures with the key frequencies of step {final_step} are "
                   f"being computed by a worker; ask again"},
        status_code=202, headers={"Retry-After": "2"},
    )
