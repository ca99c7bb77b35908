"""What the network learned: the grokking summary and the Fourier progress measures."""
from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query
from fastapi.responses import JSONResponse
from sqlalchemy import select

from service import store
from service.api.deps import OwnedExperiment, SessionDep, invalid
from service.models import AnalysisCache
from service.spec import fourier_unavailable
from service.summary import experiment_summary
from service.grokking import GrokkingThresholds

router = APIRouter(tags=["analysis"])

THRESHOLD_DOC = (
    "Grokking thresholds: a run has memorised at the first eval with train_acc >= acc_threshold "
    "and generalised at the first with val_acc >= acc_threshold (acc_threshold_95 gives the "
    "_95 variants). Phase (after Liu et al. 2022): confusion (never fits), memorization (fits, "
    "never generalises), comprehension (generalises within delay_threshold x the memorisation "
    "step), grokking (generalises later than that)."
)


def fourier_view(document: dict) -> dict:
    """The stored measures of every member, with each key frequency's share of the embedding's
    (non-constant) squared Fourier norm and the spectrum as (frequency, norm) pairs."""
    members = []
    for member, m in enumerate(document["members"]):
        spectrum = m["embedding_spectrum"]
        energy = sum(v * v for v in spectrum[1:]) or 1.0
        members.append({
            "member": member,
            "key_frequencies": [
                {"frequency": k, "share": spectrum[k] ** 2 / energy} for k in m["key_frequencies"]
            ],
            "embedding_spectrum": [{"frequency": k, "norm": v} for k, v in enumerate(spectrum)],
            "measures": {
                k: v for k, v in m.items() if k not in ("embedding_spectrum", "key_frequencies")
            },
        })
    return {"step": document["step"], "members": members}


def thresholds_from(acc_threshold: float, acc_threshold_95: float, delay_threshold: float) -> GrokkingThresholds:
    try:
        return GrokkingThresholds(
            acc_threshold=acc_threshold, acc_threshold_95=acc_threshold_95, delay_threshold=delay_threshold
        )
    except ValueError as exc:
        raise invalid(("query",), str(exc), None) from exc


@router.get("/experiments/{experiment_id}/analysis", description=THRESHOLD_DOC)
def get_analysis(
    experiment: OwnedExperiment,
    session: SessionDep,
    acc_threshold: Annotated[float, Query(gt=0, le=1)] = 0.99,
    acc_threshold_95: Annotated[float, Query(gt=0, le=1)] = 0.95,
    delay_threshold: Annotated[float, Query(ge=1, le=1e6)] = 2.0,
) -> dict[str, Any]:
    """The grokking summary (every task) and the latest Fourier progress measures (modular
    tasks): key frequencies with their share of the norm and the embedding's spectrum."""
    thresholds = thresholds_from(acc_threshold, acc_threshold_95, delay_threshold)
    body: dict[str, Any] = {
        "experiment_id": experiment.id,
        "status": experiment.status,
        "summary": experiment_summary(session, experiment.id, thresholds),
        "fourier": None,
        "fourier_unavailable": fourier_unavailable(experiment.spec),
    }
    if body["fourier_unavailable"] is None:
        latest = session.scalar(
            select(AnalysisCache.data)
            .where(AnalysisCache.experiment_id == experiment.id)
            .order_by(AnalysisCache.step.desc())
            .limit(1)
        )
        session.commit()
        if latest is not None and "members" in latest:
            body["fourier"] = fourier_view(latest)
    return body


@router.get(
    "/experiments/{experiment_id}/checkpoints/{step}/analysis",
    responses={202: {"description": "Queued for a worker; ask again shortly."},
               422: {"description": "Fourier measures do not apply to this experiment."}},
)
def get_checkpoint_analysis(
    experiment: OwnedExperiment,
    step: int,
    session: SessionDep,
) -> Any:
    """The Fourier progress measures of one stored checkpoint.

    Computed by a worker on the first request (202 with Retry-After until it is ready; the API
    itself never loads a model) and cached in the database after that."""
    reason = fourier_unavailable(experiment.spec)
    if reason is not None:
        raise HTTPException(status_code=422, detail=reason)
    cached = store.get_cached_analysis(session, experiment.id, step)
    if cached is not None:
        if "error" in cached:
            raise HTTPException(status_code=409, detail=cached["error"])
        return fourier_view(cached)
    if store.get_checkpoint(session, experiment.id, step) is None:
        steps = [c.step for c in store.list_checkpoints(session, experiment.id)]
        raise HTTPException(
            status_code=404, detail=f"no checkpoint at step {step}; stored steps: {steps}"
        )
    from worker.celery_app import enqueue_checkpoint_analysis

    try:
        enqueue_checkpoint_analysis(experiment.id, step, experiment.queue)
    except Exception as exc:  # noqa: BLE001 - the broker is down: say so, never a 500
        raise HTTPException(
            status_code=503, detail=f"could not queue the analysis (broker unavailable: {exc})"
        ) from exc
    return JSONResponse(
        {"status": "pending", "detail": f"analysis of step {step} queued for a worker; ask again"},
        status_code=202, headers={"Retry-After": "2"},
    )
