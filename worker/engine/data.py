"""The algorithmic datasets of Power et al. 2022: every pair (a, b) of a finite group, labelled a∘b.

Each example is the token sequence [a, b, =] (vocab = n_elements + 1, '=' is token n_elements) and
its label is the result, one of n_elements classes. The train/val split is a fixed random
permutation drawn from task.split_seed, so every run (and every ensemble member) of a spec sees the
same split.

S5 elements are the 120 permutations of (0, 1, 2, 3, 4) in itertools.permutations order; element k
is the tuple PERMUTATIONS_S5[k]. Composition is right to left, as for functions:
(x*y)(i) = x(y(i)), i.e. apply y first, then x.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch

from service.contract.spec import (
    DIVIDING_OPS,
    MODULAR_OPS,
    NONZERO_Y_OPS,
    PERMUTATION_OPS,
    ExperimentSpec,
)

PERMUTATIONS_S5: tuple[tuple[int, ...], ...] = tuple(itertools.permutations(range(5)))


@dataclass(frozen=True)
class AlgorithmicDataset:
    """All examples of a task, and which of them are for training.

    tokens: [N, 3] int64, rows [a, b, =]; labels: [N] int64 in [0, n_elements);
    train_idx / val_idx: int64 row indices into tokens (disjoint, together all rows, sorted).
    """

    tokens: torch.Tensor
    labels: torch.Tensor
    train_idx: torch.Tensor
    val_idx: torch.Tensor
    n_elements: int

    @property
    def vocab_size(self) -> int:
        return self.n_elements + 1

    def train_mask_grid(self) -> torch.Tensor:
        """[n, n] bool: grid[a, b] is True when the pair (a, b) is in the training set."""
        n = self.n_elements
        grid = torch.zeros(n, n, dtype=torch.bool, device=self.tokens.device)
        rows = self.tokens[self.train_idx]
        grid[rows[:, 0], rows[:, 1]] = True
        return grid

    def to(self, device: torch.device | str) -> "AlgorithmicDataset":
        return AlgorithmicDataset(
            self.tokens.to(device), self.labels.to(device), self.train_idx.to(device),
            self.val_idx.to(device), self.n_elements,
        )


def modular_inverse_table(p: int) -> list[int]:
    """inv[y] = y^-1 mod p for y coprime to p (0 where there is none)."""
    inv = [0] * p
    for y in range(1, p):
        try:
            inv[y] = pow(y, -1, p)
        except ValueError:
            inv[y] = 0
    return inv


def modular_pairs(op: str, p: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(a, b, label) int64 vectors for every pair of op over Z_p. Only x/y and 'x*y, y>0' skip
    b = 0 (NONZERO_Y_OPS): for 'x/y if y odd else x-y', 0 is even, so (x, 0) is x - 0 = x
    (Power et al. 2022 have all p^2)."""
    if op not in MODULAR_OPS:
        raise ValueError(f"unknown modular op {op!r}; valid ops: {', '.join(map(repr, MODULAR_OPS))}")
    y_min = 1 if op in NONZERO_Y_OPS else 0
    x = torch.arange(p, dtype=torch.int64).repeat_interleave(p - y_min)
    y = torch.arange(y_min, p, dtype=torch.int64).repeat(p)
    if op == "x+y":
        z = x + y
    elif op == "x-y":
        z = x - y
    elif op in ("x*y", "x*y, y>0"):
        z = x * y
    elif op in DIVIDING_OPS:
        inv = torch.tensor(modular_inverse_table(p), dtype=torch.int64)
        quotient = x * inv[y]
        z = quotient if op == "x/y" else torch.where(y % 2 == 1, quotient, x - y)
    elif op == "x^2+y^2":
        z = x * x + y * y
    elif op == "x^2+xy+y^2":
        z = x * x + x * y + y * y
    elif op == "x^2+xy+y^2+x":
        z = x * x + x * y + y * y + x
    elif op == "x^3+xy":
        z = x * x % p * x + x * y
    elif op == "x^3+xy^2+y":
        z = x * x % p * x + x * (y * y % p) + y
    else:  # pragma: no cover - MODULAR_OPS and this chain are kept in step
        raise AssertionError(op)
    return x, y, torch.remainder(z, p)


def permutation_pairs(op: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(a, b, label) for every pair of S5 elements; see the module docstring for the convention."""
    if op not in PERMUTATION_OPS:
        raise ValueError(f"unknown permutation op {op!r}; valid ops: {', '.join(PERMUTATION_OPS)}")
    perms = torch.tensor(PERMUTATIONS_S5, dtype=torch.int64)  # [120, 5]: perms[k, i] = x_k(i)
    n = len(PERMUTATIONS_S5)
    # Permutation -> index, via the base-5 code of the image tuple.
    code = (perms * (5 ** torch.arange(4, -1, -1))).sum(1)
    index_of = torch.full((5**5,), -1, dtype=torch.int64)
    index_of[code] = torch.arange(n)
    inverse = torch.argsort(perms, dim=1)  # inverse[k, x_k(i)] = i

    def compose(f: torch.Tensor, g: torch.Tensor) -> torch.Tensor:  # (f∘g)(i) = f(g(i))
        return torch.gather(f, 1, g)

    x = torch.arange(n).repeat_interleave(n)
    y = torch.arange(n).repeat(n)
    px, py = perms[x], perms[y]
    if op == "x*y":
        result = compose(px, py)
    elif op == "x*y*x^-1":
        result = compose(compose(px, py), inverse[x])
    else:  # "x*y*x"
        result = compose(compose(px, py), px)
    label = index_of[(result * (5 ** torch.arange(4, -1, -1))).sum(1)]
    return x, y, label


def build_dataset(spec: ExperimentSpec, device: torch.device | str = "cpu") -> AlgorithmicDataset:
    """Every pair of spec.task, with a train split of spec.n_train rows drawn from split_seed."""
    task = spec.task
    if task.kind == "modular":
        a, b, label = modular_pairs(task.op, int(task.p))
    else:
        a, b, label = permutation_pairs(task.op)
    n = task.n_elements
    tokens = torch.stack([a, b, torch.full_like(a, n)], dim=1)
    if tokens.shape[0] != spec.n_pairs:  # pragma: no cover - the spec and the data must agree
        raise AssertionError(f"{tokens.shape[0]} pairs, spec says {spec.n_pairs}")
    train_idx, val_idx = split_indices(tokens.shape[0], spec.n_train, task.split_seed)
    return AlgorithmicDataset(tokens, label, train_idx, val_idx, n).to(device)


def split_indices(n_pairs: int, n_train: int, split_seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(train_idx, val_idx), sorted: the first n_train of a permutation drawn from split_seed."""
    generator = torch.Generator().manual_seed(split_seed)
    order = torch.randperm(n_pairs, generator=generator)
    return order[:n_train].sort().values, order[n_train:].sort().values


def member_splits(spec: ExperimentSpec) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Each ensemble member's (train_idx, val_idx) on the CPU: exactly what build_dataset gives a
    spec with that member's task.train_fraction and task.split_seed (ensemble lists, if any)."""
    fractions = spec.ensemble.per_member("train_fraction", spec.task.train_fraction)
    seeds = spec.ensemble.per_member("split_seed", spec.task.split_seed)
    splits: dict[tuple[float, int], tuple[torch.Tensor, torch.Tensor]] = {}
    for fraction, seed in zip(fractions, seeds):
        if (fraction, seed) not in splits:
            task = spec.task.model_copy(update={"train_fraction": fraction, "split_seed": seed})
            n_train = spec.model_copy(update={"task": task}).n_train
            splits[fraction, seed] = split_indices(spec.n_pairs, n_train, seed)
    return [splits[key] for key in zip(fractions, seeds)]
