"""An experiment's summary, computed from its stored metric series.

Computed from the database rather than from the engine's in-memory state, so that a job resumed
from a checkpoint (whose engine saw only the second half of the run) still summarises the whole
run.
"""
from __future__ import annotations

from sqlalchemy.orm import Session

from service import store
from service.grokking import GrokkingThresholds, grokking_summary
from service.phases import EXCLUDED_LOSS, PHASE_SERIES, phases_by_member

FINAL_METRICS = ("train_loss", "train_acc", "val_loss", "val_acc", "weight_norm")


def experiment_summary(
    session: Session, experiment_id: str, thresholds: GrokkingThresholds | None = None
) -> dict:
    """Final metrics and the grokking summary of member 0 at the top level; every member's
    own under "members" (one entry per ensemble member)."""
    thresholds = thresholds or GrokkingThresholds()
    data = store.query_metrics(
        session, experiment_id, names=list(FINAL_METRICS), max_points=None
    )
    by_member: dict[int, dict[str, dict]] = {}
    for series in data["series"]:
        by_member.setdefault(series["member"], {})[series["name"]] = series
    members = []
    for member in sorted(by_member):
        named = by_member[member]

        def pairs(name: str) -> list[tuple[int, float]]:
            s = named.get(name)
            return list(zip(s["steps"], s["values"])) if s else []

        entry = {"member": member}
        entry.update(grokking_summary(pairs("train_acc"), pairs("val_acc"), thresholds))
        entry["final"] = {
            name: {"step": s["steps"][-1], "value": s["values"][-1]}
            for name, s in named.items() if s["steps"]
        }
        members.append(entry)
    if not members:
        return {"members": [], "final": {}}
    top = {k: v for k, v in members[0].items() if k != "member"}
    top["members"] = members
    return top


def experiment_phases(
    session: Session, experiment_id: str, measure_series: list[dict] | None = None
) -> dict | None:
    """The three phases of grokking of every member (service.phases), from the stored series:
    train_acc, val_loss and weight_norm of the evaluations, and the excluded_loss the worker
    recorded during training, or the one of measure_series (metric-shaped series, such as the
    progress measures with fixed key frequencies) in its place. None without those series."""
    data = store.query_metrics(session, experiment_id, names=list(PHASE_SERIES), max_points=None)
    by_member: dict[int, dict[str, list[tuple[int, float]]]] = {}
    for series in data["series"]:
        by_member.setdefault(series["member"], {})[series["name"]] = list(
            zip(series["steps"], series["values"])
        )
    for series in measure_series or []:
        named = by_member.setdefault(series["member"], {})
        if series["name"] == EXCLUDED_LOSS or series["name"] not in named:
            named[series["name"]] = list(zip(series["steps"], series["values"]))
    return phases_by_member(by_member)
