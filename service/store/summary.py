"""An experiment's summary, computed from its stored metric series.

Computed from the database rather than from the engine's in-memory state, so that a job resumed
from a checkpoint (whose engine saw only the second half of the run) still summarises the whole
run.
"""
from __future__ import annotations

import math
from dataclasses import asdict

from sqlalchemy.orm import Session

from service.contract.models import MetricSeries
from service.science.grokking import (
    TRAIN_ACC,
    VAL_ACC,
    GrokkingThresholds,
    grokking_delay,
    grokking_phase,
)
from service.science.phases import (
    EXCLUDED_LOSS,
    PHASE_SERIES,
    PROGRESS_SERIES,
    phases_by_member,
    progress_summary,
)
from service.store.metrics_query import count_metric_series, query_metrics
from service.store.series_summary import first_step_reaching, last_finite_point, series_of

FINAL_METRICS = ("train_loss", "train_acc", "val_loss", "val_acc", "weight_norm")
# The phases are read from each series downsampled to at most this many points (min/max per
# bucket, service.science.downsample): every point of a run evaluated fewer times, a bounded
# read of a longer one.
PHASE_MAX_POINTS = 2048


def experiment_summary(
    session: Session, experiment_id: str, thresholds: GrokkingThresholds | None = None
) -> dict:
    """Final metrics and the grokking summary of member 0 at the top level; every member's
    own under "members" (one entry per ensemble member). A run whose analysis recorded the
    progress measures has their summary too (service.science.phases.progress_summary, without
    its phases).

    The same answer as service.science.grokking.grokking_summary on the whole series, read in a
    bounded number of small queries whatever the length of the run (series_summary: the last
    points from metric_series, the threshold crossings from the rollups)."""
    thresholds = thresholds or GrokkingThresholds()
    by_member: dict[int, dict[str, MetricSeries]] = {}
    for series in series_of(session, experiment_id, FINAL_METRICS):
        by_member.setdefault(series.member, {})[series.name] = series
    progress = experiment_progress(session, experiment_id)
    members = []
    for member in sorted(by_member):
        named = by_member[member]

        def reaching(name: str, threshold: float) -> int | None:
            if name not in named:
                return None
            return first_step_reaching(session, experiment_id, name, member, threshold)

        last = {
            name: last_finite_point(session, named[name])
            for name in (TRAIN_ACC, VAL_ACC) if name in named
        }
        memorization_step = reaching(TRAIN_ACC, thresholds.acc_threshold)
        generalization_step = reaching(VAL_ACC, thresholds.acc_threshold)
        last_steps = [point[0] for point in last.values() if point is not None]
        entry = {
            "member": member,
            "memorization_step": memorization_step,
            "generalization_step": generalization_step,
            "memorization_step_95": reaching(TRAIN_ACC, thresholds.acc_threshold_95),
            "generalization_step_95": reaching(VAL_ACC, thresholds.acc_threshold_95),
            "grokking_delay": grokking_delay(memorization_step, generalization_step),
            "grokked": generalization_step is not None,
            "phase": grokking_phase(
                memorization_step, generalization_step, thresholds.delay_threshold
            ),
            "last_step": max(last_steps) if last_steps else None,
            "final_train_acc": (last.get(TRAIN_ACC) or (None, None))[1],
            "final_val_acc": (last.get(VAL_ACC) or (None, None))[1],
            "thresholds": asdict(thresholds),
        }
        if member in progress:
            entry.update({k: v for k, v in progress[member].items() if k != "phases"})
        entry["final"] = {
            name: {"step": s.last_step, "value": s.last_value if _finite(s.last_value) else None}
            for name, s in sorted(named.items())
        }
        members.append(entry)
    if not members:
        return {"members": [], "final": {}}
    top = {k: v for k, v in members[0].items() if k != "member"}
    top["members"] = members
    return top


def _series_by_member(session: Session, experiment_id: str, names: tuple[str, ...]) -> dict[
        int, dict[str, list[tuple[int, float]]]]:
    """{member: {name: [(step, value)]}} of the named series, each downsampled to at most
    PHASE_MAX_POINTS points."""
    data = query_metrics(session, experiment_id, names=list(names), max_points=PHASE_MAX_POINTS)
    by_member: dict[int, dict[str, list[tuple[int, float]]]] = {}
    for series in data["series"]:
        by_member.setdefault(series["member"], {})[series["name"]] = list(
            zip(series["steps"], series["values"])
        )
    return by_member


def experiment_progress(session: Session, experiment_id: str) -> dict[int, dict]:
    """Each member's progress_summary, from the progress measures its analysis recorded
    during training; {} when it recorded none (no excluded loss)."""
    if not count_metric_series(session, experiment_id, names=[EXCLUDED_LOSS], member=None):
        return {}
    by_member = _series_by_member(session, experiment_id, PROGRESS_SERIES)
    return {member: progress_summary(named) for member, named in by_member.items()}


def _finite(value: float | None) -> bool:
    return value is not None and math.isfinite(value)


def experiment_phases(
    session: Session, experiment_id: str, measure_series: list[dict] | None = None
) -> dict | None:
    """The three phases of grokking of every member (service.science.phases), from the stored
    series: train_acc, val_loss and weight_norm of the evaluations, and the excluded_loss the
    worker recorded during training, or the one of measure_series (metric-shaped series, such
    as the progress measures with fixed key frequencies) in its place. None without those
    series."""
    if not measure_series and not count_metric_series(
        session, experiment_id, names=[EXCLUDED_LOSS], member=None
    ):
        return None  # no excluded loss, no phases: nothing to read
    by_member = _series_by_member(session, experiment_id, PHASE_SERIES)
    for series in measure_series or []:
        named = by_member.setdefault(series["member"], {})
        if series["name"] == EXCLUDED_LOSS or series["name"] not in named:
            named[series["name"]] = list(zip(series["steps"], series["values"]))
    return phases_by_member(by_member)
