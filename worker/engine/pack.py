"""Packs: a sweep's members trained together as one ensemble, each checkpointed on its own.

A pack's state (worker/engine/checkpoint.py: trainer_state_tensors, E rows) splits into one
single-run state per member (E=1, the tensor names and layout of that member's own run), and
single-run states merge back into a pack's. Splitting and merging are exact copies, so

    Trainer.from_checkpoint(member_spec, member_blob)     # one member alone, or
    Trainer.from_member_checkpoints(member_specs, blobs)  # the pack again

continue where the member inside the pack was. The same two functions let a pack drop members
(Trainer._keep_rows): split, keep the others, merge.

Which tensors are what:
    per member, rows on dim 0   param.*, trainer.memorization_step / generalization_step / grok_streak
    per member, flat layout     optim.exp_avg, ... and grad_filter.ema / .window: the optimiser's
                                flat buffer holds each parameter [E, ...] in turn, so member e's
                                part of parameter i is a slice of it (its last dim)
    per member, by name         rng.batches.<row>
    shared                      optim.step, grad_filter.count, trainer.step, rng.torch_cpu/_cuda
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

PER_MEMBER_ROWS = ("trainer.memorization_step", "trainer.generalization_step", "trainer.grok_streak")
BATCH_RNG = "rng.batches."


def _is_flat(name: str, tensor: Tensor, total: int) -> bool:
    return name.startswith(("optim.", "grad_filter.")) and tensor.dim() >= 1 and tensor.shape[-1] == total


def split_state(tensors: dict[str, Tensor], member_sizes: Sequence[int], n_members: int) -> list[dict[str, Tensor]]:
    """One single-run state per member from a pack's state. member_sizes: the elements of one
    member in each parameter, in the optimiser's order (EnsembleOptimizer.member_sizes)."""
    E, total = n_members, n_members * sum(member_sizes)
    states: list[dict[str, Tensor]] = [{} for _ in range(E)]
    for name, t in tensors.items():
        if name.startswith("param.") or name in PER_MEMBER_ROWS:
            for e in range(E):
                states[e][name] = t[e : e + 1]
        elif name.startswith(BATCH_RNG):
            states[int(name[len(BATCH_RNG):])][BATCH_RNG + "0"] = t
        elif _is_flat(name, t, total):
            pieces, offset = [], 0
            for n in member_sizes:
                pieces.append(t[..., offset : offset + E * n].unflatten(-1, (E, n)))
                offset += E * n
            for e in range(E):
                states[e][name] = torch.cat([piece[..., e, :] for piece in pieces], dim=-1)
        else:
            for e in range(E):
                states[e][name] = t
    return states


def merge_states(states: Sequence[dict[str, Tensor]], member_sizes: Sequence[int]) -> dict[str, Tensor]:
    """The pack state of single-run states (member e = states[e]): split_state's inverse.
    Shared tensors come from the first; ValueError if the members are at different steps."""
    first = states[0]
    steps = {int(s["trainer.step"][0]) for s in states}
    if len(steps) != 1:
        raise ValueError(f"a pack's members must be at the same step to train together (got {sorted(steps)})")
    per_member = sum(member_sizes)
    out: dict[str, Tensor] = {}
    for name, t in first.items():
        if name.startswith("param.") or name in PER_MEMBER_ROWS:
            out[name] = torch.cat([s[name] for s in states], dim=0)
        elif name.startswith(BATCH_RNG):
            for e, s in enumerate(states):
                out[f"{BATCH_RNG}{e}"] = s[name]
        elif _is_flat(name, t, per_member):
            parts, offset = [], 0
            for n in member_sizes:
                rows = torch.stack([s[name][..., offset : offset + n] for s in states], dim=-2)
                parts.append(rows.flatten(-2))
                offset += n
            out[name] = torch.cat(parts, dim=-1)
        else:
            out[name] = t
    return out
