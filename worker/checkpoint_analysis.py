"""The on-demand analysis of one stored checkpoint (GET .../checkpoints/{step}/analysis): computed
by a worker on the analysis queue and cached in the database with its outcome."""
from __future__ import annotations

import logging

from service import store
from service.contract.settings import Settings, get_settings
from service.contract.spec import ExperimentSpec
from worker.analysis.callback import member_measures
from worker.db import sessions_for

log = logging.getLogger(__name__)


def analyze_checkpoint(experiment_id: str, step: int, settings: Settings | None = None) -> str:
    """Compute and cache the analysis of one stored checkpoint (the on-demand API path)."""
    from worker.engine.train import Trainer

    sessions = sessions_for(settings or get_settings())
    with sessions() as s:
        if store.get_cached_analysis(s, experiment_id, step) is not None:
            return "cached"
        exp = store.get_experiment(s, experiment_id)
        if exp is None:
            return "missing"
        spec = ExperimentSpec.model_validate(exp.spec)
        if spec.fourier_unavailable() is not None:
            return "not-applicable"
        try:
            blob = store.load_checkpoint_verified(s, experiment_id, step)
        except store.CheckpointCorrupt as exc:
            # No retry can mend stored bytes: the failure is final at once.
            store.fail_cached_analysis(s, experiment_id, step, str(exc), final=True)
            return "corrupt"
        if blob is None:
            store.fail_cached_analysis(s, experiment_id, step, f"no checkpoint at step {step}")
            return "missing"
    try:
        trainer = Trainer.from_checkpoint(spec, blob)
        document = {"step": trainer.step, "members": member_measures(spec, trainer)}
    except Exception as exc:  # cached with its reason; a later request may retry it
        log.exception("analysis of %s at step %d failed", experiment_id, step)
        with sessions() as s:
            store.fail_cached_analysis(s, experiment_id, step, f"{type(exc).__name__}: {exc}")
        return "failed"
    with sessions() as s:
        store.put_cached_analysis(s, experiment_id, step, document)
    return "computed"
