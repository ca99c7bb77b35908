"""Evaluation of an ensemble on full sets: each member's mean loss and accuracy, and its weight
norm. Pure functions of a model and tensors, so a notebook can evaluate a checkpoint too."""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import Tensor, nn

from service.contract.spec import OptimizerSpec
from worker.engine.optim import per_example_loss

EVAL_ROWS = 1 << 18  # rows (members * examples) per evaluation forward pass


@torch.no_grad()
def loss_and_accuracy(
    model: nn.Module, tokens: Tensor, labels: Tensor, n_members: int, opt: OptimizerSpec
) -> tuple[Tensor, Tensor]:
    """Each member's mean loss and accuracy [E] over all rows, float64 on the CPU.

    The rows go through the model EVAL_ROWS // E at a time: a full-set forward of a large
    ensemble (E members * p^2 rows * d_mlp activations) would not fit in memory, and chunks of
    this size are already big enough to keep the device busy.
    """
    E, N = n_members, tokens.shape[0]
    if N == 0:
        nan = torch.full((E,), math.nan, dtype=torch.float64)
        return nan, nan
    loss_sum = torch.zeros(E, dtype=torch.float64, device=tokens.device)
    correct = torch.zeros(E, dtype=torch.int64, device=tokens.device)
    chunk = max(1, EVAL_ROWS // E)
    for i in range(0, N, chunk):
        logits = model(tokens[i : i + chunk]).float()
        y = labels[i : i + chunk]
        loss_sum += per_example_loss(logits, y, opt.loss, opt.loss_float64).double().sum(1)
        correct += (logits.argmax(-1) == y).sum(1)
    return (loss_sum / N).cpu(), (correct.double() / N).cpu()


@torch.no_grad()
def masked_loss_and_accuracy(
    model: nn.Module, tokens: Tensor, labels: Tensor, masks: Sequence[Tensor], n_members: int,
    opt: OptimizerSpec,
) -> list[tuple[Tensor, Tensor]]:
    """Per mask [E, N] (over all pairs): each member's mean loss and accuracy [E] over its own
    rows, float64 on the CPU (NaN for a member with no rows). One forward of all pairs,
    EVAL_ROWS // E at a time, serves every mask."""
    E, N = n_members, tokens.shape[0]
    loss_sums = [torch.zeros(E, dtype=torch.float64, device=tokens.device) for _ in masks]
    corrects = [torch.zeros(E, dtype=torch.int64, device=tokens.device) for _ in masks]
    chunk = max(1, EVAL_ROWS // E)
    for i in range(0, N, chunk):
        logits = model(tokens[i : i + chunk]).float()
        y = labels[i : i + chunk]
        loss = per_example_loss(logits, y, opt.loss, opt.loss_float64).double()
        hit = logits.argmax(-1) == y
        for mask, loss_sum, correct in zip(masks, loss_sums, corrects):
            m = mask[:, i : i + chunk]
            loss_sum += torch.where(m, loss, 0.0).sum(1)
            correct += (hit & m).sum(1)
    out = []
    for mask, loss_sum, correct in zip(masks, loss_sums, corrects):
        count = mask.sum(1).double()
        out.append(((loss_sum / count).cpu(), (correct.double() / count).cpu()))
    return out


@torch.no_grad()
def weight_norms(params: Sequence[Tensor]) -> Tensor:
    """L2 norm over all of each member's parameters [E] (parameters are [E, ...])."""
    sq = sum(p.detach().double().pow(2).flatten(1).sum(1) for p in params)
    return sq.sqrt().cpu()
