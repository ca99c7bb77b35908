"""Checkpoint bytes for the service tests, without torch: real safetensors in groklab's format."""
from __future__ import annotations

import numpy as np
from safetensors.numpy import save

from service.contract.checkpoint_format import CHECKPOINT_FORMAT


def checkpoint_bytes(payload: bytes = b"weights", **metadata: str) -> bytes:
    """A groklab checkpoint holding `payload` as one uint8 tensor (what the API checks and
    serves; the engine would refuse it for lacking a model's tensors)."""
    tensor = np.frombuffer(payload, dtype=np.uint8).copy()
    return save({"payload": tensor}, metadata={"format": CHECKPOINT_FORMAT, **metadata})


def overwrite_checkpoint_bytes(session, experiment_id: str, step: int | None, data: bytes) -> None:
    """Replace the stored bytes of a checkpoint (every one of the experiment's when step is
    None) behind the store's back, keeping its recorded sha256 and size: what a disk fault or
    a tampering hand would leave."""
    from sqlalchemy import delete, insert, select

    from service.contract.models import CHECKPOINT_CHUNK_BYTES, Checkpoint, CheckpointChunk

    query = select(Checkpoint.step).where(Checkpoint.experiment_id == str(experiment_id))
    steps = list(session.scalars(query)) if step is None else [step]
    for each in steps:
        session.execute(delete(CheckpointChunk).where(
            CheckpointChunk.experiment_id == str(experiment_id), CheckpointChunk.step == each
        ))
        for seq, start in enumerate(range(0, max(len(data), 1), CHECKPOINT_CHUNK_BYTES)):
            session.execute(insert(CheckpointChunk).values(
                experiment_id=str(experiment_id), step=each, seq=seq,
                data=data[start:start + CHECKPOINT_CHUNK_BYTES],
            ))
    session.commit()
