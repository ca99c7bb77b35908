"""AdamW and Adam steps of an ensemble through torch's fused multi-tensor kernels
(torch._fused_adamw_ and torch._fused_adam_): what EnsembleOptimizer uses on a GPU.

EnsembleOptimizer's own step is a dozen element-wise ops over its flat buffers, each a pass
over every member's parameters: about 30 reads and writes of 4 bytes per parameter. On a GPU a
pack's step is bound by memory bandwidth, and the fused kernel reads parameter, gradient and
both moments once and writes three of them back (7 passes), with no temporaries.

The kernel takes one lr and one weight decay per call, where a pack has one per member, so the
members are grouped by (lr, weight_decay) and each group's slices of the flat buffers go to one
call (consecutive members of a group are one contiguous slice of each parameter). The update
is the same formula as EnsembleOptimizer.step, rounded differently (the kernel computes the bias
corrections in float32), which is why the CPU keeps the plain step: its runs are compared bit
for bit. Nothing here waits for the GPU: the step count goes to the kernel as a device tensor,
and lr (warmup included) as a Python number.
"""
from __future__ import annotations

import itertools
from typing import Sequence

import torch
from torch import Tensor

FUSED_KERNELS = {"adamw": "_fused_adamw_", "adam": "_fused_adam_"}
# Each run of consecutive members with equal (lr, weight_decay) is one slice per parameter and
# each distinct pair one kernel call. On an H200 at E = 256 (nanda2023, 13 parameters) the plain
# step took 1.5-1.9 ms and the fused one 0.46 / 0.50 / 1.30 / 2.44 / 9.32 ms at 1 / 8 / 32 / 64 /
# 256 runs (bench/README.md). A sweep's grid with its seeds together is a few runs.
FUSED_MAX_RUNS = 32


def member_runs(keys: Sequence[tuple[float, float]]) -> list[tuple[int, int, tuple[float, float]]]:
    """Maximal runs [start, stop) of consecutive members with equal keys, with their key."""
    runs, start = [], 0
    for key, group in itertools.groupby(keys):
        stop = start + len(list(group))
        runs.append((start, stop, key))
        start = stop
    return runs


def fused_pays(lr: Sequence[float], weight_decay: Sequence[float]) -> bool:
    """Whether the fused kernel beats the plain step for members with these hyper-parameters."""
    return len(member_runs(list(zip(lr, weight_decay)))) <= FUSED_MAX_RUNS


class FusedAdamStep:
    """The fused update of an ensemble's flat buffers (laid out as EnsembleOptimizer's: each
    parameter [E, ...] in turn, member_sizes[i] elements per member of parameter i)."""

    def __init__(
        self, name: str, flat: Tensor, grad: Tensor, exp_avg: Tensor, exp_avg_sq: Tensor,
        member_sizes: Sequence[int], lr: Sequence[float], weight_decay: Sequence[float],
    ):
        if name not in FUSED_KERNELS:
            raise ValueError(f"no fused step for optimizer {name!r}; fused: {', '.join(FUSED_KERNELS)}")
        self.kernel = getattr(torch, FUSED_KERNELS[name])
        E = len(lr)
        runs = member_runs([(float(a), float(b)) for a, b in zip(lr, weight_decay)])
        # (lr, weight_decay) -> slices of (params, grads, exp_avgs, exp_avg_sqs)
        self.groups: dict[tuple[float, float], tuple[list[Tensor], ...]] = {}
        offset = 0
        for n in member_sizes:
            for start, stop, key in runs:
                lo, hi = offset + start * n, offset + stop * n
                lists = self.groups.setdefault(key, ([], [], [], []))
                for out, buffer in zip(lists, (flat, grad, exp_avg, exp_avg_sq)):
                    out.append(buffer[lo:hi])
            offset += E * n
        # The kernel reads each tensor's step from state_steps; every slice is at the same step.
        self.step_count = torch.zeros((), dtype=torch.float32, device=flat.device)
        self.state_steps = {key: [self.step_count] * len(lists[0]) for key, lists in self.groups.items()}

    @torch.no_grad()
    def step(self, t: int, lr_factor: float, betas: tuple[float, float], eps: float) -> None:
        """The t-th update (1-based), every group at lr * lr_factor."""
        self.step_count.fill_(t)
        beta1, beta2 = betas
        for (lr, weight_decay), (params, grads, exp_avgs, exp_avg_sqs) in self.groups.items():
            self.kernel(
                params, grads, exp_avgs, exp_avg_sqs, [], self.state_steps[lr, weight_decay],
                lr=lr * lr_factor, beta1=beta1, beta2=beta2, weight_decay=weight_decay, eps=eps,
                amsgrad=False, maximize=False,
            )
