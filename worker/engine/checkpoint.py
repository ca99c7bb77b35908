"""Checkpoints as safetensors bytes: tensors plus JSON metadata, never pickle.

A blob is exactly the safetensors layout: an 8-byte little-endian header length, a JSON header
(tensor names, dtypes, shapes, offsets and "__metadata__"), then raw tensor bytes. Loading it
cannot run code. The metadata holds strings only; ours are:
    format          "groklab-checkpoint/1"
    engine_version  worker.engine.ENGINE_VERSION
    spec_hash       ExperimentSpec.spec_hash() of the run
    step            completed steps, as a decimal string
    spec            the resolved spec as JSON (a downloaded checkpoint says what it is)
"""
from __future__ import annotations

import json
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as safetensors_load
from safetensors.torch import save as safetensors_save
from torch import Tensor

# The layout is read without torch in one place, shared with the API (which checks what it serves).
from service.checkpoint_format import (  # noqa: F401  read_metadata: part of this module's API
    CHECKPOINT_FORMAT,
    check_checkpoint,
    read_metadata,
)


def save_checkpoint(tensors: dict[str, Tensor], metadata: dict[str, Any]) -> bytes:
    """Serialise tensors (copied to contiguous CPU tensors) and metadata (values become strings)."""
    plain = {name: t.detach().to("cpu", copy=True).contiguous() for name, t in tensors.items()}
    meta = {k: v if isinstance(v, str) else json.dumps(v) for k, v in metadata.items()}
    return safetensors_save(plain, metadata={"format": CHECKPOINT_FORMAT, **meta})


def load_checkpoint(blob: bytes) -> tuple[dict[str, Tensor], dict[str, str]]:
    """(tensors on the CPU, metadata); refuses blobs that are not groklab checkpoints."""
    metadata = check_checkpoint(blob)
    try:
        tensors = safetensors_load(bytes(blob))
    except SafetensorError as exc:  # offsets, shapes or dtypes that do not fit the bytes
        raise ValueError(f"not a checkpoint: unreadable safetensors tensors ({exc})") from None
    return tensors, metadata


def rng_state_tensors(batch_generators: list[torch.Generator]) -> dict[str, Tensor]:
    """Every random state a run touches: torch's global CPU (and CUDA) generator and ours."""
    out = {"rng.torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        out["rng.torch_cuda"] = torch.cuda.get_rng_state()
    for i, g in enumerate(batch_generators):
        out[f"rng.batches.{i}"] = g.get_state()
    return out


def load_rng_state_tensors(tensors: dict[str, Tensor], batch_generators: list[torch.Generator]) -> None:
    torch.set_rng_state(tensors["rng.torch_cpu"])
    if "rng.torch_cuda" in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state(tensors["rng.torch_cuda"])
    for i, g in enumerate(batch_generators):
        g.set_state(tensors[f"rng.batches.{i}"])
