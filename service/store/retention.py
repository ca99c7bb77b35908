"""Checkpoint retention: which of an experiment's checkpoints are kept as it trains.

Kept: the last keep_last checkpoints (the latest is what a resumed job loads), log-spaced
milestones (the first checkpoint at or after each power of two, and the first one), and the
checkpoints on either side of the memorisation and generalisation steps of member 0 (the
first evals with train_acc, val_acc >= ACC_THRESHOLD), known from the metrics stored so far.
Every other checkpoint is deleted. keep_last 0 keeps every checkpoint.
"""
from __future__ import annotations

import bisect
from dataclasses import dataclass

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from service.contract.models import Checkpoint, CheckpointChunk
from service.science.grokking import ACC_THRESHOLD, TRAIN_ACC, VAL_ACC
from service.store.series_summary import first_step_reaching


@dataclass(frozen=True)
class CheckpointRetention:
    """keep_last: how many of the latest checkpoints are kept (0: all of them);
    milestones: whether the log-spaced milestones are kept too."""

    keep_last: int = 20
    milestones: bool = True

    @classmethod
    def from_settings(cls, settings) -> CheckpointRetention:
        return cls(settings.checkpoint_keep_last, settings.checkpoint_milestones)


def retained_steps(
    steps: list[int], policy: CheckpointRetention, landmarks: tuple[int | None, ...] = ()
) -> set[int]:
    """The steps (sorted) that the policy keeps; landmarks: steps (memorisation,
    generalisation) whose neighbouring checkpoints are kept."""
    if policy.keep_last <= 0 or len(steps) <= policy.keep_last:
        return set(steps)
    kept = set(steps[-policy.keep_last:])
    if policy.milestones:
        kept.add(steps[0])
        power = 1
        while power <= steps[-1]:
            i = bisect.bisect_left(steps, power)
            if i < len(steps):
                kept.add(steps[i])
            power *= 2
    for landmark in landmarks:
        if landmark is None:
            continue
        i = bisect.bisect_left(steps, landmark)
        if i < len(steps):
            kept.add(steps[i])  # at or after
        if i > 0:
            kept.add(steps[i - 1])  # before
    return kept


def apply_retention(
    session: Session, experiment_id: str, policy: CheckpointRetention | None = None
) -> list[int]:
    """Delete the checkpoints the policy does not keep (None: the default policy; a worker
    passes CheckpointRetention.from_settings(its settings)); the steps deleted."""
    policy = policy or CheckpointRetention()
    if policy.keep_last <= 0:
        return []
    steps = list(session.scalars(
        select(Checkpoint.step).where(Checkpoint.experiment_id == str(experiment_id))
        .order_by(Checkpoint.step)
    ))
    session.commit()
    if len(steps) <= policy.keep_last:
        return []
    landmarks = tuple(
        first_step_reaching(session, experiment_id, name, 0, ACC_THRESHOLD)
        for name in (TRAIN_ACC, VAL_ACC)
    )
    doomed = [s for s in steps if s not in retained_steps(steps, policy, landmarks)]
    delete_checkpoints(session, experiment_id, doomed)
    return doomed


def delete_checkpoints(session: Session, experiment_id: str, steps: list[int]) -> None:
    """Remove checkpoints and their chunks."""
    if not steps:
        return
    experiment_id = str(experiment_id)
    session.execute(delete(CheckpointChunk).where(
        CheckpointChunk.experiment_id == experiment_id, CheckpointChunk.step.in_(steps)
    ))
    session.execute(delete(Checkpoint).where(
        Checkpoint.experiment_id == experiment_id, Checkpoint.step.in_(steps)
    ))
    session.commit()
