"""Data curricula: a spec's data_schedule shrinks the training set during a run.

Varma et al. 2023, "Explaining grokking through circuit efficiency" (arXiv:2309.02390), Sec. 4:
a network that has grokked, trained on fewer examples than the critical dataset size, **ungroks**:
its test accuracy falls back while its training accuracy stays at 1, because under weight decay
the memorising circuit is the more efficient one on a small enough training set.

Stage k (data_schedule[k], in effect once at_step steps are completed) keeps
round(train_fraction * n_pairs) examples of the training set before it, drawn by a generator
seeded from the member's split seed and k. So the training set at any step is a function of the
spec and the step alone: a run resumed from a checkpoint recomputes it and trains on the same
subset, and a pack member (its own split seed and training set) shrinks exactly as it would alone.

The validation set stays the original one, the pairs outside the first training set, as Varma
et al. measure test accuracy on held-out pairs: ungrokking shows as val_acc falling, and the
train metrics are those of the current training set.
"""
from __future__ import annotations

import torch
from torch import Tensor

from service.contract.spec import ExperimentSpec
from worker.engine.data import member_splits


def schedule_stage(spec: ExperimentSpec, step: int) -> int:
    """How many data_schedule stages are in effect after `step` completed steps."""
    return sum(1 for stage in spec.data_schedule or () if stage.at_step <= step)


def stage_seed(split_seed: int, stage: int) -> int:
    """The generator seed of a stage's subset: apart from the split's own seed."""
    return (split_seed * 0x9E3779B97F4A7C15 + 0xC0FFEE + stage) % (1 << 63)


def shrink(train_idx: Tensor, n_keep: int, seed: int) -> Tensor:
    """n_keep of the rows train_idx, drawn by a generator seeded with seed, sorted."""
    generator = torch.Generator().manual_seed(seed)
    keep = torch.randperm(train_idx.numel(), generator=generator)[:n_keep]
    return train_idx[keep].sort().values


def scheduled_splits(spec: ExperimentSpec, stage: int) -> list[tuple[Tensor, Tensor]]:
    """Each member's (train_idx, val_idx) on the CPU once `stage` stages are in effect: the
    training set shrunk by each of them in turn, the validation set as member_splits gives it."""
    splits = member_splits(spec)
    if stage == 0:
        return splits
    seeds = spec.ensemble.per_member("split_seed", spec.task.split_seed)
    stages = spec.data_schedule[:stage]
    out = []
    for (train, val), seed in zip(splits, seeds):
        for k, s in enumerate(stages):
            train = shrink(train, spec.n_examples(s.train_fraction), stage_seed(seed, k))
        out.append((train, val))
    return out
