"""Checkpoints as safetensors bytes: tensors plus JSON metadata, never pickle.

A blob is exactly the safetensors layout: an 8-byte little-endian header length, a JSON header
(tensor names, dtypes, shapes, offsets and "__metadata__"), then raw tensor bytes. Loading it
cannot run code. The metadata holds strings only; ours are:
    format          "groklab-checkpoint/1"
    engine_version  worker.engine.ENGINE_VERSION
    spec_hash       ExperimentSpec.spec_hash() of the run
    step            completed steps, as a decimal string
    spec            the resolved spec as JSON (a downloaded checkpoint says what it is)

A trainer's checkpoint holds everything needed to continue bit-for-bit:
    param.<name>            the model's parameters, [E, ...]
    optim.<state>, optim.step          the optimiser's flat state (parameter order)
    grad_filter.<state>     the Grokfast filter's, if any
    rng.torch_cpu, rng.torch_cuda, rng.batches.<member>   every random state the run touches
    trainer.step, trainer.memorization_step, trainer.generalization_step, trainer.grok_streak
        progress (int64; -1 for a step not reached yet)
"""
from __future__ import annotations

import json
from typing import Any, Protocol

import torch
from safetensors import SafetensorError
from safetensors.torch import load as safetensors_load
from safetensors.torch import save as safetensors_save
from torch import Tensor

# The layout is read without torch in one place, shared with the API (which checks what it serves).
from service.contract.checkpoint_format import CHECKPOINT_FORMAT, check_checkpoint, read_metadata
from service.contract.spec import ExperimentSpec
from worker.engine import ENGINE_VERSION



class Trainer(Protocol):
    """What the trainer's state functions read and write of a worker.engine.train.Trainer
    (structurally: this module is below train.py, which imports it)."""

    spec: ExperimentSpec
    model: Any
    optimizer: Any
    grad_filter: Any
    batch_generators: list[torch.Generator]
    step: int
    memorization_step: list[int | None]
    generalization_step: list[int | None]
    grok_streak: list[int]

NOT_REACHED = -1  # trainer.memorization_step / generalization_step of a member that has none yet


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


# ---- a trainer's state ---------------------------------------------------------------------------
def checkpoint_metadata(spec: ExperimentSpec, step: int) -> dict[str, Any]:
    """What on_checkpoint receives beside the blob (the blob's metadata, without the spec)."""
    return {
        "format": CHECKPOINT_FORMAT, "engine_version": ENGINE_VERSION,
        "spec_hash": spec.spec_hash(), "step": step,
    }


def _steps_tensor(steps: list[int | None]) -> Tensor:
    return torch.tensor([NOT_REACHED if s is None else s for s in steps], dtype=torch.int64)


def _steps_list(tensor: Tensor) -> list[int | None]:
    return [None if s < 0 else int(s) for s in tensor]


def trainer_checkpoint(trainer: Trainer) -> bytes:
    """The trainer's whole state as a checkpoint blob (tensor names in the module docstring)."""
    return state_checkpoint(trainer_state_tensors(trainer), trainer.spec, trainer.step)


def state_checkpoint(tensors: dict[str, Tensor], spec: ExperimentSpec, step: int) -> bytes:
    """A checkpoint blob of trainer state tensors written for spec at step."""
    meta = checkpoint_metadata(spec, step)
    meta["spec"] = json.dumps(spec.model_dump(mode="json"), sort_keys=True)
    return save_checkpoint(tensors, meta)


def trainer_state_tensors(trainer: Trainer) -> dict[str, Tensor]:
    """The trainer's whole state as named tensors (not copied; names in the module docstring)."""
    tensors: dict[str, Tensor] = {f"param.{n}": p for n, p in trainer.model.named_parameters()}
    tensors.update(trainer.optimizer.state_tensors())
    if trainer.grad_filter is not None:
        tensors.update(trainer.grad_filter.state_tensors())
    tensors.update(rng_state_tensors(trainer.batch_generators))
    tensors["trainer.step"] = torch.tensor([trainer.step], dtype=torch.int64)
    tensors["trainer.memorization_step"] = _steps_tensor(trainer.memorization_step)
    tensors["trainer.generalization_step"] = _steps_tensor(trainer.generalization_step)
    tensors["trainer.grok_streak"] = torch.tensor(trainer.grok_streak, dtype=torch.int64)
    return tensors


def load_checkpoint_for(spec: ExperimentSpec, blob: bytes) -> dict[str, Tensor]:
    """The tensors of a checkpoint written for this very spec (same spec_hash); ValueError if
    it was written for another spec or is not a groklab checkpoint."""
    metadata = read_metadata(blob)
    expected = spec.spec_hash()
    if metadata.get("spec_hash") != expected:
        raise ValueError(
            f"checkpoint was written for spec hash {metadata.get('spec_hash')!r}, but this spec "
            f"hashes to {expected!r}; resume with the exact spec the checkpoint was trained with"
        )
    tensors, _ = load_checkpoint(blob)
    return tensors


@torch.no_grad()
def load_trainer_state(trainer: Trainer, tensors: dict[str, Tensor]) -> None:
    """Put a checkpoint's state into a trainer built from the same spec; ValueError when a
    tensor is missing or has the wrong shape."""
    try:
        for name, p in trainer.model.named_parameters():
            p.copy_(tensors[f"param.{name}"])
        trainer.optimizer.load_state_tensors(tensors)
        if trainer.grad_filter is not None:
            trainer.grad_filter.load_state_tensors(tensors)
        load_rng_state_tensors(tensors, trainer.batch_generators)
        trainer.step = int(tensors["trainer.step"][0])
        trainer.memorization_step = _steps_list(tensors["trainer.memorization_step"])
        trainer.generalization_step = _steps_list(tensors["trainer.generalization_step"])
        trainer.grok_streak = [int(s) for s in tensors["trainer.grok_streak"]]
    except (KeyError, RuntimeError, IndexError) as exc:
        # A well-formed file that lacks a tensor, or holds one of the wrong shape.
        raise ValueError(
            f"checkpoint does not match this spec's model and optimiser "
            f"({type(exc).__name__}: {exc}); it may be truncated or crafted"
        ) from exc
