"""The local learning coefficient (service/contract/llc.py): at one stored checkpoint, and as a
series over the stored checkpoints, plotted with the progress measures.

Computed by a worker on the `analysis` queue, one task per checkpoint (every member at once),
and cached; the API never loads a model. The series asks for the checkpoints not computed yet,
as many as the owner's pending-analysis limit lets it, and answers 202 with how far it has
got until every one is computed or has failed.
"""
from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Path
from fastapi.responses import JSONResponse

from service import store
from service.api.deps import OwnedExperiment, SessionDep, SettingsDep
from service.api.responses import NOT_FOUND, UNAUTHORIZED
from service.api.routes.analysis import cached_or_requested
from service.contract.llc import LLC_KIND, LLC_SETTING
from service.schemas.errors import ErrorOut
from service.store.summary import experiment_phases

router = APIRouter(tags=["analysis"], responses={**UNAUTHORIZED, **NOT_FOUND})

# The series covers at most this many checkpoints, spread evenly over those stored (the first
# and the last always among them).
LLC_MAX_CHECKPOINTS = 40
PENDING = {202: {"description": "Queued for a worker (or being computed): ask again after "
                 "Retry-After seconds. Body: {status: pending, detail, ...}."},
           503: {"model": ErrorOut, "description": "The broker is down: nothing was queued."}}
EXAMPLE = {"step": 1200, "setting": LLC_SETTING.as_dict(), "epsilon": 1e-4, "took_s": 9.8,
           "members": [{
    "member": 0, "llc": 0.8, "llc_std": 0.2, "chains": [0.7, 1.0, 0.8], "init_loss": 1.2e-05,
    "n": 1325, "nbeta": 184.3, "trace": [[0.001, 0.002]], "diverged": False}]}


@router.get(
    "/experiments/{experiment_id}/checkpoints/{step}/llc",
    responses={200: {"description": "The estimate of every member.",
                     "content": {"application/json": {"example": EXAMPLE}}},
               **PENDING,
               409: {"model": ErrorOut, "description": "The estimate failed for good: the "
                     "detail says why (e.g. the worker lacks groklab[interp], or the chains ran "
                     "past GROKLAB_LLC_TIME_LIMIT_S)."},
               429: {"description": "The owner has GROKLAB_MAX_PENDING_ANALYSES_PER_OWNER "
                     "analyses waiting; Retry-After says when to ask again."}},
)
def get_checkpoint_llc(
    experiment: OwnedExperiment,
    step: Annotated[int, Path(ge=0, le=store.MAX_STEP, description="A stored checkpoint's step.")],
    session: SessionDep,
    settings: SettingsDep,
) -> Any:
    """Every member's local learning coefficient at one stored checkpoint: the mean over the
    SGLD chains (llc), their spread (llc_std, each chain's in chains), the training loss at the
    checkpoint (init_loss), the training-set size n and n_beta, and each chain's loss trace
    (at most 50 points). `setting` is the sampler setting it was estimated with (`epsilon`, the
    step size it gave for this training set: eps_nbeta / n_beta); `diverged`
    marks a member whose chains left the finite losses (llc null)."""
    found = cached_or_requested(session, settings, experiment.id, step, LLC_KIND, experiment.owner)
    return found if isinstance(found, JSONResponse) else JSONResponse(found)


def spread(steps: list[int], most: int) -> list[int]:
    """At most `most` of the steps, evenly spread, the first and last among them."""
    if len(steps) <= most:
        return steps
    picks = {round(i * (len(steps) - 1) / (most - 1)) for i in range(most)}
    return [steps[i] for i in sorted(picks)]


@router.get(
    "/experiments/{experiment_id}/llc",
    responses={200: {"description": "The series over the stored checkpoints."}, **PENDING,
               409: {"model": ErrorOut, "description": "No checkpoint stored yet."}},
)
def get_llc_series(experiment: OwnedExperiment, session: SessionDep, settings: SettingsDep) -> Any:
    """The local learning coefficient over the stored checkpoints (at most 40, evenly spread),
    as metric-shaped series (`llc` and `llc_std`, per member) with the phases of grokking, to
    plot with the progress measures.

    The first request asks a worker for every checkpoint not computed yet (up to the owner's
    GROKLAB_MAX_PENDING_ANALYSES_PER_OWNER; later requests ask for the rest): 202 with
    `computed`, `failed` and `of` (checkpoints) until each is computed or has failed for good;
    then 200, the failed ones listed under `failed` with their reasons."""
    steps = spread([c.step for c in store.list_checkpoints(session, experiment.id, limit=100_000)],
                   LLC_MAX_CHECKPOINTS)
    if not steps:
        raise HTTPException(status_code=409, detail="no checkpoint stored yet: the LLC is "
                            "estimated at stored checkpoints")
    done: dict[int, dict] = {}
    failed: list[dict[str, Any]] = []
    waiting, limited = 0, False
    for step in steps:
        if limited:  # no more asking: only what is computed already
            found = store.get_cached_analysis(session, experiment.id, step, LLC_KIND)
        else:
            try:
                found = cached_or_requested(session, settings, experiment.id, step, LLC_KIND,
                                            experiment.owner)
            except HTTPException as exc:
                if exc.status_code == 409:
                    failed.append({"step": step, "detail": exc.detail})
                    continue
                if exc.status_code == 404:  # removed by retention since it was listed
                    continue
                if exc.status_code != 429:
                    raise
                limited = True  # the owner's limit: the rest are asked for on a later request
                found = None
        if isinstance(found, dict):
            done[step] = found
        else:
            waiting += 1
    if waiting:
        return JSONResponse(
            {"status": "pending", "computed": len(done), "failed": len(failed), "of": len(steps),
             "detail": f"the LLC is estimated at {len(done)} of {len(steps)} checkpoints; "
                       f"a worker computes the rest: ask again"},
            status_code=202, headers={"Retry-After": "5"})
    return {
        "experiment_id": experiment.id,
        "setting": LLC_SETTING.as_dict(),
        "series": _series(done),
        "failed": failed,
        "phases": experiment_phases(session, experiment.id),
    }


def _series(done: dict[int, dict]) -> list[dict[str, Any]]:
    """Metric-shaped series {name, member, steps, values} of llc and llc_std per member, over
    the computed checkpoints in step order (a diverged member's point left out)."""
    series: dict[tuple[str, int], dict[str, Any]] = {}
    for step in sorted(done):
        for m in done[step]["members"]:
            for name in ("llc", "llc_std"):
                if m[name] is None:
                    continue
                s = series.setdefault((name, m["member"]), {
                    "name": name, "member": m["member"], "steps": [], "values": []})
                s["steps"].append(step)
                s["values"].append(m[name])
    return sorted(series.values(), key=lambda s: (s["member"], s["name"]))
