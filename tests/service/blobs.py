"""Checkpoint bytes for the service tests, without torch: real safetensors in groklab's format."""
from __future__ import annotations

import numpy as np
from safetensors.numpy import save

from service.checkpoint_format import CHECKPOINT_FORMAT


def checkpoint_bytes(payload: bytes = b"weights", **metadata: str) -> bytes:
    """A groklab checkpoint holding `payload` as one uint8 tensor (what the API checks and
    serves; the engine would refuse it for lacking a model's tensors)."""
    tensor = np.frombuffer(payload, dtype=np.uint8).copy()
    return save({"payload": tensor}, metadata={"format": CHECKPOINT_FORMAT, **metadata})
