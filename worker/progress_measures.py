"""Compute an experiment's progress measures at every stored checkpoint with the key frequencies
fixed from its final checkpoint (worker.analysis.fixed_keys), for GET .../progress-measures.

The API marks the request pending (service.store.progress_measures) and enqueues it on the
analysis queue, where a worker takes it in fair order across owners (worker/analysis_queue.py);
each checkpoint is loaded verified, one at a time, so memory stays that of one model. Whatever goes wrong is stored with its reason, and the API answers 409 with it.
"""
from __future__ import annotations

import logging

from sqlalchemy.orm import Session, sessionmaker

from service import store
from service.contract.models import PROGRESS_PENDING, PROGRESS_RUNNING
from service.contract.settings import Settings, get_settings
from service.contract.spec import ExperimentSpec
from worker.db import sessions_for

log = logging.getLogger(__name__)

WAITING = (PROGRESS_PENDING, PROGRESS_RUNNING)  # asked for, and not computed yet


def compute_progress_measures(
    experiment_id: str, final_step: int, settings: Settings | None = None
) -> str:
    """Compute and store the measures of the pending request for final_step (the checkpoint
    whose key frequencies are used); returns what happened."""
    sessions = sessions_for(settings or get_settings())
    with sessions() as s:
        row = store.get_progress_measures(s, experiment_id)
        if row is None or row.status not in WAITING or row.final_step != final_step:
            return "not-requested"  # done already, or replaced by a newer request
        exp = store.get_experiment(s, experiment_id)
        if exp is None:
            return "missing"
        spec = ExperimentSpec.model_validate(exp.spec)
        steps = [c.step for c in store.list_checkpoints(s, experiment_id) if c.step <= final_step]
    try:
        reason = spec.fourier_unavailable()
        if reason is not None:
            raise ValueError(reason)
        document = measures_at_checkpoints(sessions, experiment_id, spec, steps, final_step)
    except Exception as exc:  # stored with its reason: the API answers 409 with it
        log.exception("progress measures of %s failed", experiment_id)
        with sessions() as s:
            store.fail_progress_measures(s, experiment_id, final_step, f"{type(exc).__name__}: {exc}")
        return "failed"
    with sessions() as s:
        stored = store.put_progress_measures(s, experiment_id, final_step, document)
    return "computed" if stored else "not-requested"


def measures_at_checkpoints(
    sessions: sessionmaker[Session], experiment_id: str, spec: ExperimentSpec, steps: list[int], final_step: int
) -> dict:
    """{"final_step", "key_frequencies": {member: [k, ...]}, "series": metric-shaped series of
    fixed_keys.FIXED_KEY_MEASURES and weight_norm over the checkpoint steps}."""
    from worker.analysis.callback import member_measures
    from worker.analysis.fixed_keys import FIXED_KEY_MEASURES, key_frequencies_of, measure_series
    from worker.engine.train import Trainer

    def trainer_at(step: int) -> Trainer:
        with sessions() as s:
            blob = store.load_checkpoint_verified(s, experiment_id, step)  # CheckpointCorrupt
        if blob is None:
            raise ValueError(f"the checkpoint at step {step} is gone")
        return Trainer.from_checkpoint(spec, blob)

    final = trainer_at(final_step)
    key_freqs = key_frequencies_of(final.model, spec.task.p, final.n_members)
    points = []
    for step in steps:
        trainer = final if step == final_step else trainer_at(step)
        measures = member_measures(spec, trainer, key_freqs)
        for m, norm in zip(measures, trainer.weight_norms().tolist()):
            m["weight_norm"] = norm
        points.append((step, measures))
    return {
        "final_step": final_step,
        "key_frequencies": {str(m): keys for m, keys in enumerate(key_freqs)},
        "series": measure_series(points, (*FIXED_KEY_MEASURES, "weight_norm")),
    }
