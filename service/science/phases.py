"""The three phases of grokking of Nanda et al. 2023 (arXiv:2301.05217, Sec. 5.2), with their
step ranges, read off a run's stored series.

Pure Python, no torch. The paper tells three phases apart with its progress measures:

- memorization: the network fits its training set; the test loss does not fall;
- circuit formation: the Fourier circuit forms while the memorised solution is kept: the
  excluded loss (training loss with the key frequencies removed from the logits) rises while the
  test loss stays flat;
- cleanup: weight decay removes the memorising components: the test loss falls together with
  the weight norm, and the network generalises.

The rule. Memorization runs from the first evaluation to the memorisation step (the first eval with
train_acc >= ACC_THRESHOLD, as in service.science.grokking). The other two are read on the steps of
the excluded-loss series (the sparsest of the three; the test loss and the weight norm are read at
those steps, linearly interpolated between their own points). Each interval between two consecutive
steps that ends after the memorisation step is

- a circuit-formation interval when the excluded loss rises by at least EXCLUDED_RISE
  (end >= (1 + EXCLUDED_RISE) x start) and the test loss stays flat: it changes by less than
  TEST_FLAT ((1 - TEST_FLAT) x start < end < (1 + TEST_FLAT) x start);
- a cleanup interval when the test loss falls by at least TEST_FALL
  (end <= (1 - TEST_FALL) x start) from above TEST_LOSS_FLOOR (start > TEST_LOSS_FLOOR) and the
  weight norm falls by more than NORM_FALL (end < (1 - NORM_FALL) x start). Below the floor the
  network has generalised; its loss keeps shrinking as weight decay and the margin trade off,
  which is not cleanup.

Circuit formation starts at the first circuit-formation interval (not before the memorisation
step) and lasts until cleanup starts; without a cleanup, to the end of its run of consecutive
circuit-formation intervals. Cleanup is the first run of consecutive cleanup intervals after
circuit formation began (after memorisation when no circuit formation was seen). A phase that
was not seen is None. The thresholds are relative changes per interval, so they hold for any
loss scale; a series sampled very densely (hundreds of points per phase) changes little per
interval and may need smaller ones.
"""
from __future__ import annotations

import bisect
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from service.science.grokking import (
    ACC_THRESHOLD,
    TRAIN_ACC,
    VAL_LOSS,
    WEIGHT_NORM,
    clean_series,
    first_step_reaching,
)

EXCLUDED_LOSS = "excluded_loss"
RESTRICTED_LOSS = "restricted_loss"
KEY_FREQ_COUNT = "key_freq_count"
# The series the phases are read from (train_acc for the memorisation step).
PHASE_SERIES: tuple[str, ...] = (TRAIN_ACC, VAL_LOSS, WEIGHT_NORM, EXCLUDED_LOSS)

# Circuit formation: the excluded loss rises by at least 5% over an interval ...
EXCLUDED_RISE = 0.05
# ... while the test loss changes by less than 10%.
TEST_FLAT = 0.10
# Cleanup: the test loss falls by at least 10% over an interval ...
TEST_FALL = 0.10
# ... and the weight norm falls (by any amount: it is smooth, and falls slowly) ...
NORM_FALL = 0.0
# ... from a test loss above 0.01 nats (a mean probability of about 0.99 on the right answer).
TEST_LOSS_FLOOR = 0.01
# A loss has fallen (progress_summary) once it is at most a tenth of its value at the
# memorisation step: a decade on the log scale the paper plots its losses on.
LOSS_FALL = 0.1
# The series progress_summary reads (train_acc for the memorisation step).
PROGRESS_SERIES: tuple[str, ...] = (*PHASE_SERIES, RESTRICTED_LOSS, KEY_FREQ_COUNT)

Points = Sequence[tuple[int, float]]


@dataclass(frozen=True)
class PhaseThresholds:
    """The relative changes per interval that mark the phases (module docstring)."""

    excluded_rise: float = EXCLUDED_RISE
    test_flat: float = TEST_FLAT
    test_fall: float = TEST_FALL
    norm_fall: float = NORM_FALL
    test_loss_floor: float = TEST_LOSS_FLOOR
    acc_threshold: float = ACC_THRESHOLD


def value_at(points: Points, step: int) -> float | None:
    """The value of a clean series at step, linearly interpolated between its neighbours; None
    outside the series' range."""
    steps = [s for s, _ in points]
    i = bisect.bisect_left(steps, step)
    if i < len(steps) and steps[i] == step:
        return points[i][1]
    if i == 0 or i == len(steps):
        return None
    (s0, v0), (s1, v1) = points[i - 1], points[i]
    return v0 + (v1 - v0) * (step - s0) / (s1 - s0)


def _ratio(start: float, end: float) -> float | None:
    return end / start if start > 0 else None


def _run_end(flags: list[bool], first: int) -> int:
    """The last index of the run of True flags that starts at `first`."""
    last = first
    while last + 1 < len(flags) and flags[last + 1]:
        last += 1
    return last


def grokking_phases(
    excluded_loss: Iterable[Sequence[Any]] | None,
    test_loss: Iterable[Sequence[Any]] | None,
    weight_norm: Iterable[Sequence[Any]] | None,
    train_acc: Iterable[Sequence[Any]] | None = None,
    thresholds: PhaseThresholds = PhaseThresholds(),
) -> dict[str, Any] | None:
    """The memorization, circuit formation and cleanup phases (module docstring) from
    (step, value) series; None when the excluded loss, the test loss or the weight norm has
    fewer than two points.

    Returns {"memorization", "circuit_formation", "cleanup": {"start_step", "end_step"} | None,
    "thresholds": the thresholds as a dict}.
    """
    excluded = clean_series(excluded_loss)
    test, norm = clean_series(test_loss), clean_series(weight_norm)
    if len(excluded) < 2 or len(test) < 2 or len(norm) < 2:
        return None
    train = clean_series(train_acc)
    memorized = first_step_reaching(train, thresholds.acc_threshold)
    memorization = (
        {"start_step": min(train[0][0], excluded[0][0]), "end_step": memorized}
        if memorized is not None else None
    )

    intervals = list(zip(excluded, excluded[1:]))
    steps = [s0 for (s0, _), _ in intervals]
    ends = [s1 for _, (s1, _) in intervals]
    circuit: list[bool] = []
    cleanup: list[bool] = []
    for (s0, e0), (s1, e1) in intervals:
        t0, t1, n0, n1 = value_at(test, s0), value_at(test, s1), value_at(norm, s0), value_at(norm, s1)
        if (memorized is not None and s1 <= memorized) or None in (t0, t1, n0, n1):
            circuit.append(False)
            cleanup.append(False)
            continue
        rise, change, shrink = _ratio(e0, e1), _ratio(t0, t1), _ratio(n0, n1)
        circuit.append(
            rise is not None and change is not None
            and rise >= 1 + thresholds.excluded_rise
            and 1 - thresholds.test_flat < change < 1 + thresholds.test_flat
        )
        cleanup.append(
            change is not None and shrink is not None
            and t0 > thresholds.test_loss_floor
            and change <= 1 - thresholds.test_fall and shrink < 1 - thresholds.norm_fall
        )

    formation_at = next((i for i, flag in enumerate(circuit) if flag), None)
    search_from = formation_at + 1 if formation_at is not None else 0
    cleanup_at = next((i for i in range(search_from, len(cleanup)) if cleanup[i]), None)

    cleanup_phase = None
    if cleanup_at is not None:
        last = _run_end(cleanup, cleanup_at)
        start = max(steps[cleanup_at], memorized or 0)
        cleanup_phase = {"start_step": start, "end_step": ends[last]}
    formation_phase = None
    if formation_at is not None:
        start = max(steps[formation_at], memorized or 0)
        if cleanup_phase is not None:
            end = cleanup_phase["start_step"]
        else:
            end = ends[_run_end(circuit, formation_at)]
        formation_phase = {"start_step": start, "end_step": end}
    return {
        "memorization": memorization,
        "circuit_formation": formation_phase,
        "cleanup": cleanup_phase,
        "thresholds": asdict(thresholds),
    }


def phases_by_member(
    series: dict[int, dict[str, Points]], thresholds: PhaseThresholds = PhaseThresholds()
) -> dict[str, Any] | None:
    """The phases of every member from its named series ({member: {name: [(step, value)]}},
    names of PHASE_SERIES): member 0's (the first member's) at the top level, every member's
    under "members". None when no member has the series the phases need."""
    members = []
    for member in sorted(series):
        named = series[member]
        phases = grokking_phases(
            named.get(EXCLUDED_LOSS), named.get(VAL_LOSS), named.get(WEIGHT_NORM),
            named.get(TRAIN_ACC), thresholds,
        )
        if phases is not None:
            members.append({"member": member, **phases})
    if not members:
        return None
    top = {k: v for k, v in members[0].items() if k != "member"}
    top["members"] = members
    return top


def loss_fall_step(points: Points, since: int, factor: float = LOSS_FALL) -> int | None:
    """The first step after `since` at which a clean loss series is at most factor x its value
    at `since` (interpolated); None when it never is, or has no value there."""
    start = value_at(points, since)
    if start is None:
        return None
    return next((s for s, v in points if s > since and v <= factor * start), None)


def progress_summary(series: dict[str, Points]) -> dict[str, Any]:
    """Nanda et al. 2023's claims about one run, read off its named series (PROGRESS_SERIES,
    recorded by the analysis during training): the phases' start steps, when the restricted and
    the test loss fell, how the excluded loss moved over circuit formation, and the key
    frequencies the network ended with.

    Returns {circuit_formation_step, cleanup_step: the phase's start_step (None: not seen),
    restricted_loss_fall_step, test_loss_fall_step: loss_fall_step since the memorisation step,
    excluded_loss_rise: excluded loss at circuit formation's end / at its start, key_freq_count:
    the last count, phases: grokking_phases' answer}; every value None that cannot be read."""
    excluded, test = clean_series(series.get(EXCLUDED_LOSS)), clean_series(series.get(VAL_LOSS))
    phases = grokking_phases(excluded, test, series.get(WEIGHT_NORM), series.get(TRAIN_ACC))
    memorized = first_step_reaching(clean_series(series.get(TRAIN_ACC)), ACC_THRESHOLD)
    formation = (phases or {}).get("circuit_formation")
    cleanup = (phases or {}).get("cleanup")
    rise = None
    if formation is not None:
        start, end = value_at(excluded, formation["start_step"]), value_at(excluded, formation["end_step"])
        rise = _ratio(start, end) if start is not None and end is not None else None
    restricted = clean_series(series.get(RESTRICTED_LOSS))
    counts = clean_series(series.get(KEY_FREQ_COUNT))
    return {
        "circuit_formation_step": formation and formation["start_step"],
        "cleanup_step": cleanup and cleanup["start_step"],
        "restricted_loss_fall_step": None if memorized is None else loss_fall_step(restricted, memorized),
        "test_loss_fall_step": None if memorized is None else loss_fall_step(test, memorized),
        "excluded_loss_rise": rise,
        "key_freq_count": int(counts[-1][1]) if counts else None,
        "phases": phases,
    }
