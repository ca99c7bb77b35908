"""Checkpoints: stored with their sha256 and size, listed without their data, and loaded only
after the sha256 and the safetensors layout have been checked (CheckpointCorrupt otherwise).
"""
from __future__ import annotations

import hashlib
import hmac

from sqlalchemy import select
from sqlalchemy.orm import Session, undefer

from service.checkpoint_format import check_checkpoint
from service.models import Checkpoint, utcnow
from service.store.dialect import upsert_insert
from service.store.experiments import MAX_STEP, require_experiment


class CheckpointCorrupt(ValueError):
    """A stored checkpoint that must not be loaded or served: its bytes no longer hash to the
    sha256 recorded when it was written, or they are not a groklab safetensors checkpoint."""

    def __init__(self, checkpoint: Checkpoint, problem: str) -> None:
        super().__init__(
            f"checkpoint at step {checkpoint.step} of experiment {checkpoint.experiment_id} is "
            f"corrupt: {problem}"
        )
        self.experiment_id = checkpoint.experiment_id
        self.step = checkpoint.step


def add_checkpoint(
    session: Session, experiment_id: str, step: int, blob: bytes, meta: dict
) -> Checkpoint:
    """Store a checkpoint with its sha256 and size. Idempotent on (experiment, step): the first
    one written for a step is kept and returned. Raises ExperimentNotFound."""
    experiment_id = str(experiment_id)
    if not 0 <= step <= MAX_STEP:
        raise ValueError(f"step must be in [0, {MAX_STEP}] (got {step})")
    require_experiment(session, experiment_id)
    blob = bytes(blob)
    session.execute(
        upsert_insert(session, Checkpoint)
        .values(
            experiment_id=experiment_id,
            step=step,
            size=len(blob),
            sha256=hashlib.sha256(blob).hexdigest(),
            data=blob,
            meta=meta,
            created_at=utcnow(),
        )
        .on_conflict_do_nothing()
    )
    session.commit()
    checkpoint = get_checkpoint(session, experiment_id, step)
    assert checkpoint is not None
    return checkpoint


def list_checkpoints(session: Session, experiment_id: str) -> list[Checkpoint]:
    """Checkpoints of an experiment by step, without their data."""
    checkpoints = list(
        session.scalars(
            select(Checkpoint)
            .where(Checkpoint.experiment_id == str(experiment_id))
            .order_by(Checkpoint.step)
            .execution_options(populate_existing=True)
        )
    )
    session.commit()
    return checkpoints


def _load_checkpoint(
    session: Session, experiment_id: str, *, step: int | None
) -> Checkpoint | None:
    query = (
        select(Checkpoint)
        .options(undefer(Checkpoint.data))
        .where(Checkpoint.experiment_id == str(experiment_id))
        .execution_options(populate_existing=True)
    )
    if step is None:
        query = query.order_by(Checkpoint.step.desc()).limit(1)
    else:
        query = query.where(Checkpoint.step == step)
    checkpoint = session.scalars(query).first()
    session.commit()
    return checkpoint


def get_checkpoint(session: Session, experiment_id: str, step: int) -> Checkpoint | None:
    """One checkpoint with its data, or None."""
    return _load_checkpoint(session, experiment_id, step=step)


def checkpoint_intact(checkpoint: Checkpoint) -> bool:
    """Whether the stored data still hashes to the sha256 recorded when it was written."""
    return hmac.compare_digest(hashlib.sha256(checkpoint.data).hexdigest(), checkpoint.sha256)


def verified_checkpoint(
    session: Session, experiment_id: str, step: int | None = None
) -> Checkpoint | None:
    """The checkpoint at `step` (None: the latest) with its data, checked: its sha256, and its
    layout (a groklab safetensors checkpoint, never a pickle); None when there is no such
    checkpoint. Raises CheckpointCorrupt saying which check failed."""
    checkpoint = _load_checkpoint(session, experiment_id, step=step)
    if checkpoint is None:
        return None
    if not checkpoint_intact(checkpoint):
        raise CheckpointCorrupt(
            checkpoint,
            f"its {len(checkpoint.data)} bytes have sha256 "
            f"{hashlib.sha256(checkpoint.data).hexdigest()}, but {checkpoint.sha256} was stored "
            "when it was written",
        )
    try:
        check_checkpoint(checkpoint.data)
    except ValueError as exc:
        raise CheckpointCorrupt(checkpoint, str(exc)) from None
    return checkpoint


def load_checkpoint_verified(
    session: Session, experiment_id: str, step: int | None = None
) -> bytes | None:
    """The bytes of the checkpoint at `step` (None: the latest, what a resumed job loads),
    checked against their sha256; None when there is no such checkpoint. Raises
    CheckpointCorrupt, never returning bytes that changed since they were written."""
    checkpoint = verified_checkpoint(session, experiment_id, step)
    return None if checkpoint is None else bytes(checkpoint.data)
