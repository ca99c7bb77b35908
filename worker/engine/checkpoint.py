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
import struct
from typing import Any

import torch
from safetensors.torch import load as safetensors_load
from safetensors.torch import save as safetensors_save
from torch import Tensor

CHECKPOINT_FORMAT = "groklab-checkpoint/1"


def save_checkpoint(tensors: dict[str, Tensor], metadata: dict[str, Any]) -> bytes:
    """Serialise tensors (copied to contiguous CPU tensors) and metadata (values become strings)."""
    plain = {name: t.detach().to("cpu", copy=True).contiguous() for name, t in tensors.items()}
    meta = {k: v if isinstance(v, str) else json.dumps(v) for k, v in metadata.items()}
    return safetensors_save(plain, metadata={"format": CHECKPOINT_FORMAT, **meta})


def read_metadata(blob: bytes) -> dict[str, str]:
    """The "__metadata__" of a safetensors blob, read from its JSON header without the tensors."""
    if len(blob) < 8:
        raise ValueError("not a checkpoint: fewer than 8 bytes")
    (header_len,) = struct.unpack("<Q", blob[:8])
    if header_len > len(blob) - 8:
        raise ValueError("not a checkpoint: the safetensors header is longer than the blob")
    try:
        header = json.loads(blob[8 : 8 + header_len])
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"not a checkpoint: unreadable safetensors header ({exc})") from None
    return dict(header.get("__metadata__") or {})


def load_checkpoint(blob: bytes) -> tuple[dict[str, Tensor], dict[str, str]]:
    """(tensors on the CPU, metadata); refuses blobs that are not groklab checkpoints."""
    metadata = read_metadata(blob)
    if metadata.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(
            f"not a groklab checkpoint: format is {metadata.get('format')!r}, expected {CHECKPOINT_FORMAT!r}"
        )
    return safetensors_load(bytes(blob)), metadata


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
