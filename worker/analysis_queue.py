"""The analysis queue's one task body: a message only wakes the worker, which takes the next
waiting analysis in fair order across owners (service.store.analysis_queue) and computes it,
a checkpoint's Fourier measures or an experiment's progress measures alike."""
from __future__ import annotations

import logging

from service import store
from service.contract.settings import Settings, get_settings
from worker.checkpoint_analysis import analyze_checkpoint
from worker.db import sessions_for
from worker.progress_measures import compute_progress_measures

log = logging.getLogger(__name__)

MAX_PICKS = 5  # a pick lost to another worker's claim is followed by the next fair one


def run_next_analysis(woken_by: str, settings: Settings | None = None) -> str:
    """Take the next analysis in fair order and compute it; returns "<kind> <experiment>
    <step>: <outcome>", or "nothing waiting"."""
    settings = settings or get_settings()
    sessions = sessions_for(settings)
    for _ in range(MAX_PICKS):
        with sessions() as s:
            pick = store.next_fair_analysis(s)
            if pick is None:
                log.info("woken by %s: no analysis waiting", woken_by)
                return "nothing waiting"
            if not store.claim_analysis(s, pick):
                continue
        if pick.kind == store.CHECKPOINT_ANALYSIS:
            outcome = analyze_checkpoint(pick.experiment_id, pick.step, settings, kind=pick.cache_kind)
        else:
            outcome = compute_progress_measures(pick.experiment_id, pick.step, settings)
        what = f"{pick.kind} ({pick.cache_kind})" if pick.cache_kind not in ("", "fourier") else pick.kind
        log.info("woken by %s: %s of %s at %d: %s", woken_by, what, pick.experiment_id,
                 pick.step, outcome)
        return f"{what} {pick.experiment_id} {pick.step}: {outcome}"
    return "nothing taken"
