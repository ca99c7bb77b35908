"""The circuit of one checkpoint, drawn (Nanda et al. 2023): embedding clocks, neurons by
frequency, activation waves and attention, per ensemble member.

Computed by a worker on the `analysis` queue on the first request: one task computes every
member's embedding, neurons and attention pictures and default waves at once, and caches each
(service/contract/circuit.py says how, and the bounds); a waves request for other neurons or
another answer is one more small task. The API itself never loads a model: it answers 202 with
Retry-After until the worker is done, then serves the cached rows as they are.
"""
from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Path, Query
from fastapi.responses import JSONResponse

from service import store
from service.api.deps import OwnedExperiment, SessionDep, SettingsDep
from service.api.responses import NOT_FOUND
from service.api.routes.analysis import cached_or_requested
from service.contract.circuit import (
    CIRCUIT_KIND,
    WAVES_DEFAULT_NEURONS,
    WAVES_MAX_NEURONS,
    circuit_unavailable,
    default_waves_kind,
    picture_kind,
    waves_kind,
)
from service.contract.settings import Settings
from service.schemas.errors import ErrorOut, invalid

router = APIRouter(tags=["circuit"])

Step = Annotated[int, Path(ge=0, le=store.MAX_STEP, description="A stored checkpoint's step.")]
Member = Annotated[int, Query(ge=0, le=1_000_000, description="The ensemble member (row), "
                              "below the experiment's ensemble.size.")]


def _responses(picture: str, example: dict[str, Any], unavailable: str) -> dict:
    return {
        200: {"description": f"The {picture} picture.",
              "content": {"application/json": {"example": example}}},
        202: {"description": "Queued for a worker (or being computed): ask again after "
              "Retry-After seconds. Body: {status: pending, detail}."},
        404: {"model": ErrorOut, "description": NOT_FOUND[404]["description"] + " Or no "
              "checkpoint at this step (the detail lists the stored steps)."},
        409: {"model": ErrorOut, "description": "The computation failed for good (after "
              "GROKLAB_ANALYSIS_MAX_ATTEMPTS tries, or a corrupt checkpoint): the detail says why."},
        422: {"model": ErrorOut, "description": f"{unavailable} Or a query parameter out of "
              "range (the detail names it: member must be below the ensemble size)."},
        503: {"model": ErrorOut, "description": "The broker is down: the computation could not "
              "be queued."},
    }


NOT_MODULAR = "The picture does not apply: not a modular task (S5), or p > 512."
HEAD = {"step": 10000, "member": 0, "p": 113}
GRID = [[0.0, 0.5], [0.5, 1.0]]  # p x p in a real answer


def _member(spec: dict[str, Any], member: int) -> None:
    size = spec["ensemble"]["size"]
    if member >= size:
        raise invalid(("query", "member"), f"member must be below the experiment's ensemble "
                      f"size {size} (got {member})", member)


def _applicable(spec: dict[str, Any], picture: str) -> None:
    reason = circuit_unavailable(spec, picture)
    if reason is not None:
        raise HTTPException(status_code=422, detail=reason)


def _served(
    session: Any, settings: Settings, experiment_id: str, step: int, kind: str, task_kind: str,
) -> JSONResponse:
    """The cached row of `kind`, or the answer that stands for it while the task of
    `task_kind` (which writes it) is asked for, pending or failed."""
    cached = store.get_cached_analysis(session, experiment_id, step, kind)
    if cached is None:
        found = cached_or_requested(session, settings, experiment_id, step, task_kind)
        if isinstance(found, JSONResponse):
            return found
        cached = found if task_kind == kind else store.get_cached_analysis(
            session, experiment_id, step, kind)
        if cached is None:
            raise HTTPException(status_code=409, detail=f"the circuit of step {step} was "
                                f"computed without {kind} (the checkpoint lacks it)")
    # As stored: the documents are built for JSON by the worker (no re-encoding per request).
    return JSONResponse(cached)


def _picture(
    experiment: Any, step: int, member: int, picture: str, session: Any, settings: Settings,
) -> JSONResponse:
    _applicable(experiment.spec, picture)
    _member(experiment.spec, member)
    return _served(session, settings, experiment.id, step, picture_kind(picture, member),
                   CIRCUIT_KIND)


@router.get(
    "/experiments/{experiment_id}/checkpoints/{step}/embedding",
    responses=_responses("embedding", {**HEAD, "key_frequencies": [14, 35], "clocks": [{
        "frequency": 14, "share": 0.41, "radius_mean": 3.2, "radius_spread": 0.04,
        "points": [{"residue": 0, "x": 3.21, "y": 0.02}]}]}, NOT_MODULAR),
)
def get_embedding(
    experiment: OwnedExperiment, step: Step, session: SessionDep, settings: SettingsDep,
    member: Member = 0,
) -> Any:
    """The embedding's clocks: for each key frequency k (at most 8, by the frequency's share
    of the embedding's Fourier norm, largest first), the p residues projected on the plane of
    the embedding's cos(2 pi k r / p) and sin(2 pi k r / p) directions (the mean embedding
    taken out). A grokked model puts residue r at angle ~ +-2 pi k r / p on a circle:
    radius_spread (std / mean of the radii) near 0."""
    return _picture(experiment, step, member, "embedding", session, settings)


@router.get(
    "/experiments/{experiment_id}/checkpoints/{step}/neurons",
    responses=_responses("neurons", {**HEAD, "key_frequencies": [14, 35], "n_neurons": 512,
                         "neurons": [{"neuron": 17, "frequency": 14, "fraction": 0.97}],
                         "share_above_0_9": 0.83}, NOT_MODULAR),
)
def get_neurons(
    experiment: OwnedExperiment, step: Step, session: SessionDep, settings: SettingsDep,
    member: Member = 0,
) -> Any:
    """Every MLP neuron (the last MLP layer, at the '=' position) with its best frequency k
    (1..p//2; 0 for a dead neuron) and the share of its activation variance over all (a, b)
    pairs that frequency's Fourier terms explain, sorted by that share, largest first
    (Nanda et al. 2023, Fig. 5); share_above_0_9: the share of neurons above 0.9."""
    return _picture(experiment, step, member, "neurons", session, settings)


def _neurons(neurons: str | None, n_neurons: int) -> list[int] | None:
    if neurons is None:
        return None
    try:
        chosen = [int(n) for n in neurons.split(",")]
    except ValueError:
        raise invalid(("query", "neurons"), "neurons must be comma-separated neuron indices "
                      "(e.g. 3,17)", neurons) from None
    chosen = list(dict.fromkeys(chosen))  # each once, in the order given
    if len(chosen) > WAVES_MAX_NEURONS:
        raise invalid(("query", "neurons"), f"at most {WAVES_MAX_NEURONS} neurons (got "
                      f"{len(chosen)})", neurons)
    bad = [n for n in chosen if not 0 <= n < n_neurons]
    if bad:
        raise invalid(("query", "neurons"), f"neuron indices must be in 0..{n_neurons - 1}, "
                      f"the model's d_mlp is {n_neurons} (got {bad})", neurons)
    return chosen


@router.get(
    "/experiments/{experiment_id}/checkpoints/{step}/waves",
    responses=_responses("waves", {**HEAD, "neurons": [
        {"neuron": 17, "frequency": 14, "fraction": 0.97, "values": GRID}],
        "logit": {"answer": 0, "values": GRID}}, NOT_MODULAR),
)
def get_waves(
    experiment: OwnedExperiment, step: Step, session: SessionDep, settings: SettingsDep,
    member: Member = 0,
    neurons: Annotated[str | None, Query(
        max_length=200, description=f"Comma-separated neuron indices, at most "
        f"{WAVES_MAX_NEURONS}; default: the top {WAVES_DEFAULT_NEURONS} neurons of distinct "
        f"best frequencies.")] = None,
    answer: Annotated[int, Query(ge=0, le=1_000_000, description="The answer c whose logit is "
                                 "drawn, 0..p-1.")] = 0,
) -> Any:
    """Chosen neurons' activations over all (a, b) pairs (values[a][b], 4 significant
    digits), each with its best frequency and fraction as in /neurons, and the logit of one
    answer c over the pairs: the waves of Nanda et al. 2023, Fig. 4. The default selection
    with answer 0 is computed with the other pictures; any other selection is computed (202,
    then cached) on its first request."""
    spec = experiment.spec
    _applicable(spec, "waves")
    _member(spec, member)
    chosen = _neurons(neurons, spec["model"]["d_mlp"])
    p = spec["task"]["p"]
    if answer >= p:
        raise invalid(("query", "answer"), f"answer must be in 0..{p - 1} (got {answer})", answer)
    kind = waves_kind(member, chosen, answer)
    task_kind = CIRCUIT_KIND if kind == default_waves_kind(member) else kind
    return _served(session, settings, experiment.id, step, kind, task_kind)


@router.get(
    "/experiments/{experiment_id}/checkpoints/{step}/attention",
    responses=_responses("attention", {**HEAD, "heads": [
        {"layer": 0, "head": 0, "to_a": GRID, "to_b": GRID}]},
        NOT_MODULAR + " Or the model has no attention (an MLP), or more than "
        "2^21 attention values per member (n_layers x n_heads x 2 x p^2)."),
)
def get_attention(
    experiment: OwnedExperiment, step: Step, session: SessionDep, settings: SettingsDep,
    member: Member = 0,
) -> Any:
    """The '=' position's attention to the a and to the b position over all (a, b) pairs
    (to_a[a][b], to_b[a][b]), for every layer and head. Transformers only."""
    return _picture(experiment, step, member, "attention", session, settings)
