"""When did a run memorise, when did it generalise, and which phase was it in?

Pure Python, no torch: the one home of the grokking rules that the API (summaries of stored
series) and the engine (memorisation, generalisation, stop_on_grok) both apply.

The phases follow Liu et al. 2022, "Towards Understanding Grokking: An Effective Theory of
Representation Learning" (arXiv:2205.10343), Sec. 5: after training a run is in one of four
phases, told apart by whether and when it fits the training set and the validation set.

- comprehension: it fits and generalises at about the same time
  (generalization_step <= delay_threshold * memorization_step);
- grokking: it fits, then generalises much later (the delay is above delay_threshold);
- memorization: it fits the training set but never generalises;
- confusion: it never fits the training set.

Liu et al. measure the delay as a difference of steps (10^3 steps on their budget); here it is
the ratio generalization_step / memorization_step, which does not depend on the length of the run.
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

PHASE_COMPREHENSION = "comprehension"
PHASE_GROKKING = "grokking"
PHASE_MEMORIZATION = "memorization"
PHASE_CONFUSION = "confusion"

# The metric series every evaluation records, per member (the engine writes them, the summary
# and the dashboards read them).
TRAIN_LOSS, TRAIN_ACC, VAL_LOSS, VAL_ACC, WEIGHT_NORM = (
    "train_loss", "train_acc", "val_loss", "val_acc", "weight_norm",
)
EVAL_METRICS: tuple[str, ...] = (TRAIN_LOSS, TRAIN_ACC, VAL_LOSS, VAL_ACC, WEIGHT_NORM)

# Accuracy that counts as "fits" (train) or "generalises" (val), as in Power et al. 2022.
ACC_THRESHOLD = 0.99
# The looser variant reported beside it (memorization_step_95, generalization_step_95).
ACC_THRESHOLD_95 = 0.95
# A run that generalises within this many times its memorization step is "comprehension".
DELAY_THRESHOLD = 2.0
# stop_on_grok: consecutive evaluations with val_acc >= ACC_THRESHOLD, every member.
GROK_PATIENCE = 3


@dataclass(frozen=True)
class GrokkingThresholds:
    """The cut-offs of grokking_summary; the API fills them from query parameters.

    acc_threshold: accuracy at which train "fits" and val "generalises" (default 0.99).
    acc_threshold_95: the looser accuracy of the *_95 steps (default 0.95).
    delay_threshold: largest generalization_step / memorization_step still called
        comprehension; above it the run grokked (default 2.0).
    """

    acc_threshold: float = ACC_THRESHOLD
    acc_threshold_95: float = ACC_THRESHOLD_95
    delay_threshold: float = DELAY_THRESHOLD

    def __post_init__(self) -> None:
        for name in ("acc_threshold", "acc_threshold_95"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and 0 < value <= 1):
                raise ValueError(f"{name} must be in (0, 1] (got {value!r})")
        if not (isinstance(self.delay_threshold, (int, float)) and self.delay_threshold >= 1):
            raise ValueError(f"delay_threshold must be >= 1 (got {self.delay_threshold!r})")


def clean_series(series: Iterable[Sequence[Any]] | None) -> list[tuple[int, float]]:
    """(step, value) pairs sorted by step, dropping points whose value is None or not finite.

    Steps may come unsorted, with gaps, or as lists (from JSON); the sort is stable, so points that
    share a step keep their order.
    """
    points: list[tuple[int, float]] = []
    for step, value in series or ():
        if value is None:
            continue
        value = float(value)
        if math.isfinite(value):
            points.append((int(step), value))
    points.sort(key=lambda point: point[0])
    return points


def first_step_reaching(series: list[tuple[int, float]], threshold: float) -> int | None:
    """The first step (of a clean_series) whose value is >= threshold; None if none is."""
    for step, value in series:
        if value >= threshold:
            return step
    return None


def grokking_delay(memorization_step: int | None, generalization_step: int | None) -> float | None:
    """generalization_step / memorization_step: how many times longer generalising took.

    None when either step is missing, or when memorization_step is 0 (the ratio is undefined).
    """
    if memorization_step is None or generalization_step is None or memorization_step <= 0:
        return None
    return generalization_step / memorization_step


def grokking_phase(
    memorization_step: int | None,
    generalization_step: int | None,
    delay_threshold: float = DELAY_THRESHOLD,
) -> str:
    """The phase of Liu et al. 2022 (module docstring) from the two steps.

    A run that never fits is confusion, even if its val accuracy crossed the threshold. A fit at
    step 0 counts as a fit at step 1 for the ratio, so such a run is never divided by zero.
    """
    if memorization_step is None:
        return PHASE_CONFUSION
    if generalization_step is None:
        return PHASE_MEMORIZATION
    if generalization_step <= delay_threshold * max(memorization_step, 1):
        return PHASE_COMPREHENSION
    return PHASE_GROKKING


def grokking_summary(
    train_acc: list[tuple[int, float]],
    val_acc: list[tuple[int, float]],
    thresholds: GrokkingThresholds = GrokkingThresholds(),
) -> dict[str, Any]:
    """Summarise a run's accuracy curves: memorization, generalization, delay and phase.

    memorization_step = first eval step with train_acc >= acc_threshold (Power et al. 2022);
    generalization_step = first eval step with val_acc >= acc_threshold;
    grokking_delay = generalization_step / memorization_step;
    phase per Liu et al. 2022 (see the module docstring).

    Returns a JSON-serialisable dict:
        memorization_step, generalization_step: int | None  (at acc_threshold)
        memorization_step_95, generalization_step_95: int | None  (at acc_threshold_95)
        grokking_delay: float | None
        grokked: bool  (the run generalised: generalization_step is not None)
        phase: "comprehension" | "grokking" | "memorization" | "confusion"
        last_step: int | None  (the last step seen in either series; a run still going may
            be in "memorization" only so far)
        final_train_acc, final_val_acc: float | None  (the value at the last step of each)
        thresholds: the thresholds used, as a dict
    """
    train = clean_series(train_acc)
    val = clean_series(val_acc)
    memorization_step = first_step_reaching(train, thresholds.acc_threshold)
    generalization_step = first_step_reaching(val, thresholds.acc_threshold)
    steps = [step for step, _ in train] + [step for step, _ in val]
    return {
        "memorization_step": memorization_step,
        "generalization_step": generalization_step,
        "memorization_step_95": first_step_reaching(train, thresholds.acc_threshold_95),
        "generalization_step_95": first_step_reaching(val, thresholds.acc_threshold_95),
        "grokking_delay": grokking_delay(memorization_step, generalization_step),
        "grokked": generalization_step is not None,
        "phase": grokking_phase(memorization_step, generalization_step, thresholds.delay_threshold),
        "last_step": max(steps) if steps else None,
        "final_train_acc": train[-1][1] if train else None,
        "final_val_acc": val[-1][1] if val else None,
        "thresholds": asdict(thresholds),
    }
