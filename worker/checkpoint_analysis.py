"""The on-demand analysis of one stored checkpoint, computed by a worker on the analysis queue
and cached in the database with its outcome, by kind:

- "fourier": the Fourier progress measures (GET .../checkpoints/{step}/analysis);
- "circuit": every member's circuit pictures (embedding clocks, neurons, attention, default
  waves), each cached as its own row (GET .../checkpoints/{step}/embedding, ...);
- "waves:<member>:<neurons>:<answer>": one member's waves for a chosen selection;
- "llc": every member's local learning coefficient (GET .../checkpoints/{step}/llc).
"""
from __future__ import annotations

import logging
from typing import Any

from service import store
from service.contract.circuit import (
    CIRCUIT_KIND,
    FOURIER_KIND,
    circuit_kinds,
    circuit_unavailable,
    parse_waves_kind,
)
from service.contract.llc import LLC_KIND
from service.contract.settings import Settings, get_settings
from service.contract.spec import ExperimentSpec
from worker.analysis.callback import member_measures
from worker.db import sessions_for

log = logging.getLogger(__name__)


def unavailable(spec: ExperimentSpec, kind: str) -> str | None:
    """Why this kind of analysis does not apply to the spec (None: it does)."""
    if kind == FOURIER_KIND:
        return spec.fourier_unavailable()
    if kind == LLC_KIND:
        return None  # every model has one
    picture = "waves" if kind.startswith("waves:") else "embedding"
    return circuit_unavailable(spec.model_dump(mode="json"), picture)


def documents_of(
    spec: ExperimentSpec, trainer: Any, kind: str, settings: Settings | None = None
) -> dict[str, dict]:
    """The rows one task of this kind writes, by kind (its own kind among them)."""
    p, step = spec.task.p, trainer.step
    if kind == FOURIER_KIND:
        return {kind: {"step": step, "members": member_measures(spec, trainer)}}
    if kind == LLC_KIND:
        from worker.analysis.llc import estimate_llc

        limit = (settings or get_settings()).llc_time_limit_s
        return {kind: {"step": step, **estimate_llc(trainer, time_limit_s=limit)}}
    from worker.analysis.circuit import circuit_pictures, waves_picture

    if kind == CIRCUIT_KIND:
        attention = circuit_unavailable(spec.model_dump(mode="json"), "attention") is None
        documents = circuit_pictures(trainer.model, p, trainer.n_members, step, attention)
        documents[CIRCUIT_KIND] = {"step": step, "members": trainer.n_members,
                                   "kinds": circuit_kinds(trainer.n_members, attention)}
        return documents
    member, neurons, answer = parse_waves_kind(kind)
    if member >= trainer.n_members:
        raise ValueError(f"the checkpoint has {trainer.n_members} members (asked for {member})")
    return {kind: waves_picture(trainer.model, p, trainer.n_members, step, member, neurons,
                                answer)}


def analyze_checkpoint(
    experiment_id: str, step: int, settings: Settings | None = None, kind: str = FOURIER_KIND
) -> str:
    """Compute and cache one kind of analysis of one stored checkpoint (the on-demand API
    path)."""
    from worker.engine.train import Trainer

    sessions = sessions_for(settings or get_settings())
    with sessions() as s:
        if store.get_cached_analysis(s, experiment_id, step, kind) is not None:
            return "cached"
        exp = store.get_experiment(s, experiment_id)
        if exp is None:
            return "missing"
        spec = ExperimentSpec.model_validate(exp.spec)
        if unavailable(spec, kind) is not None:
            return "not-applicable"
        try:
            blob = store.load_checkpoint_verified(s, experiment_id, step)
        except store.CheckpointCorrupt as exc:
            # No retry can mend stored bytes: the failure is final at once.
            store.fail_cached_analysis(s, experiment_id, step, str(exc), final=True, kind=kind)
            return "corrupt"
        if blob is None:
            store.fail_cached_analysis(s, experiment_id, step, f"no checkpoint at step {step}",
                                       kind=kind)
            return "missing"
    try:
        trainer = Trainer.from_checkpoint(spec, blob)
        documents = documents_of(spec, trainer, kind, settings)
    except Exception as exc:  # cached with its reason; a later request may retry it
        log.exception("analysis %s of %s at step %d failed", kind, experiment_id, step)
        with sessions() as s:
            store.fail_cached_analysis(s, experiment_id, step, f"{type(exc).__name__}: {exc}",
                                       kind=kind)
        return "failed"
    with sessions() as s:
        store.put_cached_analyses(s, experiment_id, step, documents)
    return "computed"
