"""Early stopping for sweeps: which members to stop before their budget, and a forecast of
whether (and when) a run will generalise.

Pure Python, no torch, no database: the worker's live pruner (worker/pruning.py), the benchmark
that replays policies on recorded series (bench/bench_pruning.py) and the unit tests call the
same functions on the same series, so a decision made live is the one the replay makes.

Two policies, a sweep's `early_stopping`:

- **asha**: plain successive halving on a validation metric, as W&B's Hyperband, Ray Tune's
  ASHA and Determined's adaptive searcher do it. At every check step a member is kept when its
  metric is within the best `keep_fraction` of the members that reached that step (all of them
  in a replay; those recorded so far, live: ASHA's asynchronous rule).
- **grokking_aware**: at every check step a member whose forecast gives it a probability of
  generalising below `threshold` is pruned (reason and score in its summary). The forecast
  reads the member's own series only (module docstring of `forecast`), so it needs no peers.
  With `keep_fraction`, no more than 1 - keep_fraction of the members that reached a check are
  pruned there (the lowest probabilities first).

Check steps are the evaluation steps that are multiples of `check_every`, from `after` (a step,
or "memorization": the first evaluation with train accuracy >= 0.99) on.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from service.science.grokking import (
    ACC_THRESHOLD,
    TRAIN_ACC,
    VAL_ACC,
    VAL_LOSS,
    WEIGHT_NORM,
    clean_series,
    first_step_reaching,
)

GROKKING_AWARE, ASHA = "grokking_aware", "asha"
AFTER_MEMORIZATION = "memorization"
# The series the forecast reads (every evaluation records them, at no extra cost).
FORECAST_SERIES: tuple[str, ...] = (TRAIN_ACC, VAL_ACC, VAL_LOSS, WEIGHT_NORM)
# The metric series a check records per member: the score the policy ranked it by.
SCORE_SERIES = {GROKKING_AWARE: "will_generalize"}
# Metrics where larger is better (asha ranks the others, losses, the other way round).
HIGHER_IS_BETTER = frozenset({VAL_ACC, "will_generalize"})

Series = Sequence[Sequence[Any]]  # [(step, value), ...]


class EarlyStoppingSpec(BaseModel):
    """A sweep's `early_stopping`."""

    # strict, as the experiment spec: a number is not read from a string, nor a step from a bool
    model_config = ConfigDict(extra="forbid", strict=True)

    policy: Literal["grokking_aware", "asha"] = Field(
        description="grokking_aware: prune members whose forecast says they will not generalise; "
        "asha: successive halving on a validation metric (what other sweep tools do)."
    )
    after: Literal["memorization"] | Annotated[int, Field(ge=0)] = Field(
        AFTER_MEMORIZATION,
        description="The first step checked: a step, or 'memorization' (the first evaluation "
        "with train accuracy >= 0.99).",
    )
    check_every: int = Field(
        100, ge=1, description="Steps between checks; a multiple of training.eval_every."
    )
    keep_fraction: float | None = Field(
        None, gt=0, le=1,
        description="asha: the share of the members reaching a check that it keeps (default "
        "0.5). grokking_aware: the least share kept at a check (default: the rule alone decides).",
    )
    metric: Literal["val_acc", "val_loss"] = Field(
        "val_acc", description="asha only: the metric it ranks members by."
    )
    threshold: float = Field(
        0.5, gt=0, lt=1,
        description="grokking_aware only: prune below this probability of generalising.",
    )

    @model_validator(mode="after")
    def _check(self) -> "EarlyStoppingSpec":
        if self.policy == ASHA and self.keep_fraction is None:
            self.keep_fraction = 0.5
        return self

    @property
    def score_metric(self) -> str:
        """The series members are ranked by at a check."""
        return SCORE_SERIES.get(self.policy, self.metric)


def early_stopping_problem(
    es: EarlyStoppingSpec, eval_every: int, steps: int, task_kind: str = "modular"
) -> str | None:
    """What is wrong with early stopping for members with this eval_every, budget and task, or
    None."""
    if es.policy == GROKKING_AWARE and task_kind != "modular":
        return (f"early_stopping policy 'grokking_aware' reads the forecast, made for modular "
                f"tasks (got task.kind {task_kind!r}); use policy 'asha'")
    if es.check_every % eval_every:
        return (f"early_stopping.check_every must be a multiple of training.eval_every "
                f"({eval_every}) (got {es.check_every})")
    if isinstance(es.after, int) and es.after >= steps:
        return f"early_stopping.after must be below training.steps ({steps}) (got {es.after})"
    return None


# ---- the checks ----------------------------------------------------------------------------
def memorized_by(series: Mapping[str, Series], step: int) -> int | None:
    """The memorisation step (the first evaluation with train accuracy >= 0.99), if by `step`."""
    reached = first_step_reaching(clean_series(series.get(TRAIN_ACC)), ACC_THRESHOLD)
    return reached if reached is not None and reached <= step else None


def first_check_from(es: EarlyStoppingSpec, memorization_step: int | None) -> int | None:
    """The step checks start at: `after`, or the memorisation step (None before it)."""
    if es.after == AFTER_MEMORIZATION:
        return memorization_step
    return int(es.after)


def is_check_step(es: EarlyStoppingSpec, step: int, memorization_step: int | None) -> bool:
    start = first_check_from(es, memorization_step)
    return start is not None and step > start and step % es.check_every == 0


# ---- the forecast --------------------------------------------------------------------------
@dataclass(frozen=True)
class ForecastRule:
    """The constants of `forecast` (chosen on bench/bench_pruning.py's tuning grid): each a
    logistic's midpoint and scale."""

    # Weight decay at work: the weight norm's fall from its peak since memorisation.
    norm_drop_mid: float = 0.01
    norm_drop_scale: float = 0.003
    # Circuit formation under way: the val loss' fall from its peak since memorisation, or val
    # accuracy gained since memorisation.
    val_loss_drop_mid: float = 0.3
    val_loss_drop_scale: float = 0.03
    val_acc_gain_mid: float = 0.2
    val_acc_gain_scale: float = 0.03
    # Still moving: the val loss' fall, and the val accuracy's rise, over the last recent_steps.
    recent_steps: int = 200
    val_loss_fall_mid: float = 0.02
    val_loss_fall_scale: float = 0.01
    val_acc_rise_mid: float = 0.02
    val_acc_rise_scale: float = 0.01
    # How long after memorisation a run is given to show it, in steps.
    patience_mid: float = 350.0
    patience_scale: float = 50.0


RULE = ForecastRule()


def _logistic(x: float, mid: float, scale: float) -> float:
    z = (x - mid) / scale
    return 1.0 / (1.0 + math.exp(-max(-50.0, min(50.0, z))))


def _upto(series: Series | None, step: int) -> list[tuple[int, float]]:
    return [(s, v) for s, v in clean_series(series) if s <= step]


def forecast(
    series: Mapping[str, Series], step: int | None = None, rule: ForecastRule = RULE,
) -> dict[str, Any] | None:
    """Will this run generalise, and when? From its own series up to `step` (default: all).

    None before it has memorised (train accuracy >= 0.99: nothing to tell apart yet). After:
    {"will_generalize": p in [0, 1], "generalization_step": an estimate or None, "signals":
    {...}, "step", "memorization_step"}.

    The signals, each measured from the memorisation step m to `step`:
    - weight_norm_drop = 1 - w(step) / max w over [m, step]: weight decay shrinking the
      memorising solution as the circuit forms and cleans up (Nanda et al. 2023, Sec. 5; Liu et
      al. 2023, Omnigrok: generalising solutions have smaller norms). Without weight decay the
      norm does not fall, and the run does not grok.
    - val_loss_drop = 1 - val_loss(step) / max val_loss over [m, step]: the test loss turns
      before the test accuracy does.
    - val_acc_gain = val_acc(step) - min val_acc over [m, step].
    p is the largest of the three signals' logistic scores (any one of them is evidence); once
    val accuracy has reached 0.99, p is 1. generalization_step: the step it reached 0.99, else a
    linear extrapolation of val accuracy's last rise, else None.
    """
    if step is None:
        step = max((s for name in FORECAST_SERIES for s, _ in clean_series(series.get(name))), default=0)
    memorized = memorized_by(series, step)
    if memorized is None:
        return None
    after = {name: [(s, v) for s, v in _upto(series.get(name), step) if s >= memorized]
             for name in FORECAST_SERIES}
    signals: dict[str, float | None] = {}
    norm = after[WEIGHT_NORM]
    signals["weight_norm_drop"] = 1 - norm[-1][1] / max(v for _, v in norm) if norm and max(
        v for _, v in norm) > 0 else None
    loss = after[VAL_LOSS]
    signals["val_loss_drop"] = 1 - loss[-1][1] / max(v for _, v in loss) if loss and max(
        v for _, v in loss) > 0 else None
    acc = after[VAL_ACC]
    signals["val_acc_gain"] = acc[-1][1] - min(v for _, v in acc) if acc else None
    signals["val_loss_fall"] = _recent_change(loss, step - rule.recent_steps, fall=True)
    signals["val_acc_rise"] = _recent_change(acc, step - rule.recent_steps, fall=False)
    signals["steps_since_memorization"] = step - memorized
    generalized = first_step_reaching(acc, ACC_THRESHOLD)
    p = 1.0 if generalized is not None else will_generalize(signals, rule)
    return {
        "step": step,
        "memorization_step": memorized,
        "will_generalize": round(p, 6),
        "generalization_step": generalized if generalized is not None else _extrapolate(acc),
        "signals": {k: (round(v, 4) if v is not None else None) for k, v in signals.items()},
    }


def will_generalize(signals: Mapping[str, float | None], rule: ForecastRule = RULE) -> float:
    """p = decay x max(progress, patience): weight decay must be shrinking the weights
    (decay, the weight norm's fall), and either the circuit is forming (progress: the val loss'
    fall or the val accuracy's rise, whichever is further along) or it is still early
    (patience: the first steps after memorisation, when neither has had time to move)."""
    def score(name: str, mid: float, scale: float) -> float:
        value = signals.get(name)
        return 0.0 if value is None else _logistic(value, mid, scale)

    decay = score("weight_norm_drop", rule.norm_drop_mid, rule.norm_drop_scale)
    progress = max(score("val_loss_drop", rule.val_loss_drop_mid, rule.val_loss_drop_scale),
                   score("val_acc_gain", rule.val_acc_gain_mid, rule.val_acc_gain_scale),
                   score("val_loss_fall", rule.val_loss_fall_mid, rule.val_loss_fall_scale),
                   score("val_acc_rise", rule.val_acc_rise_mid, rule.val_acc_rise_scale))
    patience = 1.0 - score("steps_since_memorization", rule.patience_mid, rule.patience_scale)
    return decay * max(progress, patience)


def _recent_change(points: list[tuple[int, float]], since: int, fall: bool) -> float | None:
    """The relative fall (fall=True: 1 - now / then) or the rise (now - then) of a series since
    its last point at or before `since`; None without such a point."""
    before = [(s, v) for s, v in points if s <= since]
    if not before or not points:
        return None
    then, now = before[-1][1], points[-1][1]
    if fall:
        return 1 - now / then if then > 0 else None
    return now - then


def _extrapolate(acc: list[tuple[int, float]]) -> int | None:
    """When a rising val accuracy would reach 0.99, on the line through its last two points
    (its rise steepens as the circuit cleans up: the latest slope is the best guess); None
    when it does not rise."""
    if len(acc) < 2:
        return None
    (s0, v0), (s1, v1) = acc[-2], acc[-1]
    slope = (v1 - v0) / (s1 - s0) if s1 > s0 else 0.0
    if slope <= 1e-6:
        return None
    return int(round(s1 + (ACC_THRESHOLD - v1) / slope))


# ---- the decisions -------------------------------------------------------------------------
def kept_by_rank(score: float, peers: Sequence[float], keep_fraction: float, higher_is_better: bool) -> bool:
    """Is `score` within the best keep_fraction of itself and its peers? The best
    ceil(keep_fraction * n) of n are kept (at least one); ties keep each other."""
    scores = [score, *peers]
    n_keep = max(1, math.ceil(keep_fraction * len(scores) - 1e-9))
    ordered = sorted(scores, reverse=higher_is_better)
    cutoff = ordered[n_keep - 1]
    return score >= cutoff if higher_is_better else score <= cutoff


@dataclass(frozen=True)
class Decision:
    """What a check decided of one member: prune it or not, its score, and why."""

    prune: bool
    score: float | None
    reason: str


def decide(
    es: EarlyStoppingSpec, step: int, own: dict[str, Any] | None, value: float | None,
    peers: Sequence[float],
) -> Decision:
    """The check of one member at `step`. own: its forecast there (grokking_aware); value: its
    es.metric there (asha); peers: the score_metric of the other members at this step."""
    if es.policy == ASHA:
        if value is None:
            return Decision(False, None, f"no {es.metric} at step {step}")
        better = es.metric in HIGHER_IS_BETTER
        if kept_by_rank(value, peers, es.keep_fraction or 0.5, better):
            return Decision(False, value, f"{es.metric} {value:.3g} within the best {es.keep_fraction:g}")
        return Decision(True, value, f"asha: {es.metric} {value:.3g} at step {step} below the best "
                        f"{es.keep_fraction:g} of {len(peers) + 1} members")
    if own is None:
        return Decision(False, None, "not memorised yet")
    p = own["will_generalize"]
    if p >= es.threshold:
        return Decision(False, p, f"will_generalize {p:.3f} >= {es.threshold:g}")
    if es.keep_fraction is not None and kept_by_rank(p, peers, es.keep_fraction, True):
        return Decision(False, p, f"will_generalize {p:.3f}, kept by keep_fraction {es.keep_fraction:g}")
    signals = ", ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}"
                        for k, v in own["signals"].items() if v is not None)
    return Decision(True, p, f"grokking_aware: will_generalize {p:.3f} < {es.threshold:g} at step "
                    f"{step}, {step - own['memorization_step']} steps after memorisation ({signals})")


# ---- replay (the benchmark, the tests) -----------------------------------------------------
def replay(
    es: EarlyStoppingSpec, members: Sequence[Mapping[str, Series]], budget: int,
    rule: ForecastRule = RULE,
) -> list[dict[str, Any]]:
    """Each member's fate under `es`, from its full recorded series (every member trained to
    `budget`): {"pruned_at": step or None, "score", "reason"}. At a check step s a member is
    judged on its series up to s only, against the members still running at s (synchronous:
    every member that reached s)."""
    fates: list[dict[str, Any]] = [{"pruned_at": None, "score": None, "reason": None} for _ in members]
    steps = sorted({int(s) for m in members for s, _ in m.get(VAL_ACC, ())})
    for step in steps:
        due = [i for i, fate in enumerate(fates)
               if fate["pruned_at"] is None and step < budget
               and is_check_step(es, step, memorized_by(members[i], step))]
        if not due:
            continue
        forecasts = {i: forecast(members[i], step, rule) for i in due}
        values = {i: _value_at(members[i].get(es.metric), step) for i in due}
        scores = {
            i: (forecasts[i]["will_generalize"] if forecasts[i] else None) if es.policy == GROKKING_AWARE
            else values[i]
            for i in due
        }
        for i in due:
            peers = [s for j, s in scores.items() if j != i and s is not None]
            decision = decide(es, step, forecasts[i], values[i], peers)
            if decision.prune:
                fates[i] = {"pruned_at": step, "score": decision.score, "reason": decision.reason}
    return fates


def _value_at(series: Series | None, step: int) -> float | None:
    for s, v in clean_series(series):
        if s == step:
            return v
    return None
