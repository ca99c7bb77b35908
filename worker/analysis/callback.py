"""The on_analysis callback of a training run: the Fourier progress measures every
analysis.every steps, as metric rows. The worker (runner, packs) and `groklab train` (local)
pass the same one, so a run records the same series wherever it trains.

Torch-side and database-free: whoever stores the full measures (key frequencies, spectrum)
hands in a store_measures callback.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
    from service.contract.spec import ExperimentSpec
    from worker.engine.train import AnalysisCallback, Trainer

# The progress measures recorded as metric series at every analysis step (the full measures,
# key frequencies and spectrum included, go to store_measures).
PROGRESS_MEASURE_NAMES: tuple[str, ...] = (
    "restricted_loss",
    "excluded_loss",
    "gini_embed",
    "gini_unembed",
    "key_freq_count",
    "key_freq_energy",
)


def analysis_callback(
    spec: ExperimentSpec, store_measures: Callable[[int, list[dict]], None] | None = None
) -> AnalysisCallback | None:
    """Progress measures every analysis.every steps, for the tasks they make sense for (None
    otherwise: analysis.every unset, or spec.fourier_unavailable()).

    Returns on_analysis(trainer, step) -> metric rows (measure_rows); with
    store_measures(step, measures), the full measures of every member are handed over too."""
    if spec.analysis.every is None or spec.fourier_unavailable() is not None:
        return None
    def on_analysis(trainer: Trainer, step: int) -> list[dict]:
        # trainer.spec, not spec: a pack shrinks as its members leave.
        measures = member_measures(trainer.spec, trainer)
        if store_measures is not None:
            store_measures(step, measures)
        return measure_rows(step, measures)

    return on_analysis


def member_measures(
    spec: ExperimentSpec, trainer: Trainer, key_freqs: list[list[int]] | None = None
) -> list[dict[str, Any]]:
    """The Fourier progress measures of every current ensemble row (in trainer.members order),
    from one forward pass. spec gives the task (the same for every member of a pack); the size
    and the training masks (per member in a pack) are the trainer's current ones. key_freqs
    (one list per row) fixes the key frequencies; by default each row's are found afresh."""
    from worker.analysis.grid import progress_measures_all

    return progress_measures_all(
        trainer.model, spec.task.p, spec.task.op, trainer.train_mask_grid(), trainer.n_members,
        key_freqs=key_freqs,
    )


def measure_rows(step: int, measures: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Metric rows {"step", "member", "name", "value"} for PROGRESS_MEASURE_NAMES.

    Measures that do not apply (restricted/excluded loss for ops other than x+y and x-y) are
    left out rather than stored as None.
    """
    return [
        {"step": int(step), "member": member, "name": name, "value": float(m[name])}
        for member, m in enumerate(measures)
        for name in PROGRESS_MEASURE_NAMES
        if m[name] is not None
    ]
