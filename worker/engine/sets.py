"""A job's training and validation sets on the device, per data_schedule stage, and the batches
drawn from them.

When every ensemble row has the same split (the usual ensemble), the sets are shared:
train_tokens [n, 3]. Otherwise (a pack whose members differ in train_fraction or split_seed)
each row has its own training rows, padded to the largest: train_tokens [E, n_max, 3],
train_labels [E, n_max], and train_weights [E, n_max] (1/n_e on row e's examples, 0 on padding;
None when all n_e agree); validation then goes through masks over all pairs.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import Tensor

from service.contract.spec import ExperimentSpec
from worker.engine.data import AlgorithmicDataset, build_dataset
from worker.engine.schedule import scheduled_splits


@dataclass
class TrainingSets:
    stage: int  # the data_schedule stage these sets are of (worker/engine/schedule.py)
    data: AlgorithmicDataset  # every pair, with the task's (or the shared) split
    shared_split: bool
    member_train_idx: list[Tensor]  # per row, its training pairs (CPU, for minibatch picks)
    train_tokens: Tensor
    train_labels: Tensor
    train_weights: Tensor | None = None
    train_masks: Tensor | None = None  # [E, N] over all pairs, when splits differ
    val_masks: Tensor | None = None
    val_tokens: Tensor | None = None  # when the split is shared
    val_labels: Tensor | None = None

    def batch(self, spec: ExperimentSpec, generators: list[torch.Generator],
              device: torch.device) -> tuple[Tensor, Tensor]:
        """Full batch: the training set (shared, or each row's own). Minibatch: per row,
        batch_size examples drawn without replacement from its training set by its own
        generator (on the CPU, so a member draws exactly what it draws alone)."""
        B = spec.training.batch_size
        if B is None:
            return self.train_tokens, self.train_labels
        if self.shared_split:
            n = self.train_tokens.shape[0]
            picks = to_device(torch.stack([torch.randperm(n, generator=g)[:B] for g in generators]), device)
            return self.train_tokens[picks], self.train_labels[picks]
        rows = torch.stack([
            train[torch.randperm(train.numel(), generator=g)[:B]]
            for train, g in zip(self.member_train_idx, generators)
        ])
        rows = to_device(rows, device)
        return self.data.tokens[rows], self.data.labels[rows]

    def train_mask_grid(self, n_members: int) -> Tensor:
        """[n, n] bool: which (a, b) pairs are in the training set; [E, n, n] (row e's in row
        e) when the rows' training sets differ."""
        if self.shared_split:
            return self.data.train_mask_grid()
        n = self.data.n_elements
        grid = torch.zeros(n_members, n, n, dtype=torch.bool, device=self.train_masks.device)
        a, b = self.data.tokens[:, 0], self.data.tokens[:, 1]
        grid[:, a, b] = self.train_masks
        return grid


def to_device(t: Tensor, device: torch.device) -> Tensor:
    """A CPU tensor on the device; on CUDA through pinned memory, without waiting for it."""
    if device.type == "cuda":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


def training_sets(spec: ExperimentSpec, device: torch.device, stage: int = 0) -> TrainingSets:
    """The sets of data_schedule stage `stage` of spec (an engine spec: its ensemble lists
    give each row's split)."""
    splits = scheduled_splits(spec, stage)
    shared = all(torch.equal(train, splits[0][0]) for train, _ in splits)
    data = build_dataset(spec, device)
    if shared and not torch.equal(data.train_idx.cpu(), splits[0][0]):
        # ensemble lists that all name one split other than the task's
        data = dataclasses.replace(
            data, train_idx=splits[0][0].to(device), val_idx=splits[0][1].to(device)
        )
    member_train_idx = [train for train, _ in splits]
    if shared:
        return TrainingSets(
            stage, data, True, member_train_idx,
            train_tokens=data.tokens[data.train_idx], train_labels=data.labels[data.train_idx],
            val_tokens=data.tokens[data.val_idx], val_labels=data.labels[data.val_idx],
        )
    N, sizes = spec.n_pairs, [train.numel() for train, _ in splits]
    n_max = max(sizes)
    masks = torch.zeros(len(splits), N, dtype=torch.bool)
    val_masks = torch.zeros(len(splits), N, dtype=torch.bool)
    padded = torch.empty(len(splits), n_max, dtype=torch.int64)
    for e, (train, val) in enumerate(splits):
        masks[e, train] = val_masks[e, val] = True
        padded[e, : train.numel()] = train
        padded[e, train.numel():] = train[0]  # any real row; its weight is 0
    rows = padded.to(device)
    weights = None
    if len(set(sizes)) > 1:
        n = torch.tensor(sizes, dtype=torch.float32).unsqueeze(1)
        weights = ((torch.arange(n_max).unsqueeze(0) < n) / n).to(device)
    return TrainingSets(
        stage, data, False, member_train_idx,
        train_tokens=data.tokens[rows], train_labels=data.labels[rows], train_weights=weights,
        train_masks=masks.to(device), val_masks=val_masks.to(device),
    )
