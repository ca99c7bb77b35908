"""The datasets: every op's labels against a direct Python computation, S5 against explicit
permutation composition, and the split."""
from __future__ import annotations

import itertools

import pytest
import torch

from service.contract.spec import MODULAR_OPS, PERMUTATION_OPS
from worker.engine.data import PERMUTATIONS_S5, build_dataset

P = 7


def python_label(op: str, x: int, y: int, p: int) -> int | None:
    """The op written out by hand; None where the pair is not in the dataset."""
    if op in ("x/y", "x*y, y>0") and y == 0:  # x - 0 is defined: the mixed op keeps y = 0
        return None
    inverse = pow(y, p - 2, p) if y else None  # Fermat: p is prime
    return {
        "x+y": lambda: x + y,
        "x-y": lambda: x - y,
        "x*y": lambda: x * y,
        "x*y, y>0": lambda: x * y,
        "x/y": lambda: x * inverse,
        "x/y if y odd else x-y": lambda: x * inverse if y % 2 == 1 else x - y,
        "x^2+y^2": lambda: x**2 + y**2,
        "x^2+xy+y^2": lambda: x**2 + x * y + y**2,
        "x^2+xy+y^2+x": lambda: x**2 + x * y + y**2 + x,
        "x^3+xy": lambda: x**3 + x * y,
        "x^3+xy^2+y": lambda: x**3 + x * y**2 + y,
    }[op]() % p


@pytest.mark.parametrize("op", MODULAR_OPS)
def test_every_modular_op_matches_python(tiny_spec, op):
    spec = tiny_spec(task={"op": op, "p": P})
    ds = build_dataset(spec)
    expected = {
        (x, y): python_label(op, x, y, P)
        for x in range(P) for y in range(P) if python_label(op, x, y, P) is not None
    }
    got = {(int(a), int(b)): int(c) for (a, b, _), c in zip(ds.tokens.tolist(), ds.labels.tolist())}
    assert got == expected
    assert len(got) == ds.tokens.shape[0] == spec.n_pairs
    assert (ds.tokens[:, 2] == P).all()  # '=' is token p
    assert ds.vocab_size == P + 1


def test_division_inverts_multiplication(tiny_spec):
    spec = tiny_spec(task={"op": "x/y", "p": 13})
    ds = build_dataset(spec)
    a, b = ds.tokens[:, 0], ds.tokens[:, 1]
    assert ((ds.labels * b) % 13 == a).all()


def compose(f: tuple[int, ...], g: tuple[int, ...]) -> tuple[int, ...]:
    """(f*g)(i) = f(g(i)): apply g first."""
    return tuple(f[g[i]] for i in range(5))


def invert(f: tuple[int, ...]) -> tuple[int, ...]:
    out = [0] * 5
    for i, fi in enumerate(f):
        out[fi] = i
    return tuple(out)


@pytest.mark.parametrize("op", PERMUTATION_OPS)
def test_s5_ops_match_explicit_composition(tiny_spec, op):
    spec = tiny_spec(task={"kind": "permutation", "op": op, "p": None})
    ds = build_dataset(spec)
    perms = list(itertools.permutations(range(5)))
    assert list(PERMUTATIONS_S5) == perms
    index = {perm: k for k, perm in enumerate(perms)}
    for (a, b, eq), label in zip(ds.tokens.tolist(), ds.labels.tolist()):
        x, y = perms[a], perms[b]
        if op == "x*y":
            want = compose(x, y)
        elif op == "x*y*x^-1":
            want = compose(compose(x, y), invert(x))
        else:
            want = compose(compose(x, y), x)
        assert label == index[want]
        assert eq == 120
    assert ds.tokens.shape[0] == 120 * 120 == spec.n_pairs


def test_s5_composition_is_right_to_left(tiny_spec):
    """x*y applies y first, then x: (x*y)(i) = x(y(i))."""
    ds = build_dataset(tiny_spec(task={"kind": "permutation", "op": "x*y", "p": None}))
    index = {perm: k for k, perm in enumerate(PERMUTATIONS_S5)}
    swap01, swap12 = index[(1, 0, 2, 3, 4)], index[(0, 2, 1, 3, 4)]
    row = ((ds.tokens[:, 0] == swap01) & (ds.tokens[:, 1] == swap12)).nonzero().item()
    # i=0: y(0)=0, x(0)=1;  i=1: y(1)=2, x(2)=2;  i=2: y(2)=1, x(1)=0  (x = (0 1), y = (1 2))
    assert PERMUTATIONS_S5[ds.labels[row]] == (1, 2, 0, 3, 4)


def test_split_is_deterministic_from_split_seed(tiny_spec):
    spec = tiny_spec(task={"p": 11, "train_fraction": 0.4, "split_seed": 3})
    a, b = build_dataset(spec), build_dataset(spec)
    assert torch.equal(a.train_idx, b.train_idx) and torch.equal(a.val_idx, b.val_idx)
    assert a.train_idx.numel() == spec.n_train == round(0.4 * 121)
    everything = torch.cat([a.train_idx, a.val_idx]).sort().values
    assert torch.equal(everything, torch.arange(121))
    other = build_dataset(tiny_spec(task={"p": 11, "train_fraction": 0.4, "split_seed": 4}))
    assert not torch.equal(a.train_idx, other.train_idx)


def test_train_mask_grid_marks_exactly_the_training_pairs(tiny_spec):
    ds = build_dataset(tiny_spec(task={"op": "x/y", "p": 11}))
    grid = ds.train_mask_grid()
    assert grid.shape == (11, 11) and grid.sum() == ds.train_idx.numel()
    assert not grid[:, 0].any()  # y = 0 is not a pair of x/y
    for a, b, _ in ds.tokens[ds.train_idx].tolist():
        assert grid[a, b]


def test_x_over_y_if_y_odd_else_x_minus_y_has_all_p_squared_pairs(tiny_spec):
    """0 is even, so (x, 0) is x - 0 = x: Power et al. 2022's dataset for this op has all p^2
    pairs. Only plain x/y leaves y = 0 out."""
    spec = tiny_spec(task={"op": "x/y if y odd else x-y", "p": 11})
    ds = build_dataset(spec)
    assert ds.tokens.shape[0] == spec.n_pairs == 11 * 11
    at_zero = ds.tokens[:, 1] == 0
    assert at_zero.sum() == 11
    assert torch.equal(ds.labels[at_zero], ds.tokens[at_zero, 0])  # label x
    assert tiny_spec(task={"op": "x/y", "p": 11}).n_pairs == 11 * 10


def test_x_times_y_with_y_nonzero_is_power_et_al_multiplication(tiny_spec):
    """'x*y, y>0' is x*y mod p over 0 <= x < p, 0 < y < p (Power et al. 2022, Lee et al. 2024):
    p * (p - 1) pairs, none with y = 0, every label x*y mod p. Plain x*y keeps the p zeros."""
    spec = tiny_spec(task={"op": "x*y, y>0", "p": 11})
    ds = build_dataset(spec)
    assert ds.tokens.shape[0] == spec.n_pairs == 11 * 10
    assert not (ds.tokens[:, 1] == 0).any()
    assert torch.equal(ds.labels, ds.tokens[:, 0] * ds.tokens[:, 1] % 11)
    assert not ds.train_mask_grid()[:, 0].any()
    assert tiny_spec(task={"op": "x*y", "p": 11}).n_pairs == 11 * 11
