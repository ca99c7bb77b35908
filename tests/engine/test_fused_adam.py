"""The fused AdamW/Adam step (the GPU's) against the plain one, on the CPU where both run."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from worker.engine.fused_adam import member_runs
from worker.engine.optim import EnsembleOptimizer

SHAPES = ((4, 3), (5,), (2, 2, 2))


def ensemble_params(E: int, seed: int = 0) -> list[nn.Parameter]:
    g = torch.Generator().manual_seed(seed)
    return [nn.Parameter(torch.randn(E, *shape, generator=g)) for shape in SHAPES]


def test_member_runs_group_consecutive_members():
    keys = [(1e-3, 0.0), (1e-3, 0.0), (1e-3, 1.0), (1e-3, 0.0)]
    assert member_runs(keys) == [(0, 2, (1e-3, 0.0)), (2, 3, (1e-3, 1.0)), (3, 4, (1e-3, 0.0))]


@pytest.mark.parametrize("name", ["adamw", "adam"])
def test_fused_step_matches_the_plain_step_member_by_member(name):
    """Five members, lr and weight decay in runs and repeats, through warmup and past it: every
    member's parameters and moments match the plain step's."""
    lr = [1e-2, 1e-2, 3e-3, 1e-2, 3e-3]
    wd = [0.0, 0.0, 1.0, 0.5, 1.0]
    plain_params, fused_params = ensemble_params(5), ensemble_params(5)
    kwargs = dict(lr=lr, weight_decay=wd, betas=(0.9, 0.98), eps=1e-8, warmup_steps=3)
    plain = EnsembleOptimizer(plain_params, name, fused=False, **kwargs)
    fused = EnsembleOptimizer(fused_params, name, fused=True, **kwargs)
    assert plain.fused is None and fused.fused is not None
    g = torch.Generator().manual_seed(1)
    for _ in range(8):
        grads = [torch.randn(p.shape, generator=g) for p in plain_params]
        for opt, params in ((plain, plain_params), (fused, fused_params)):
            opt.zero_grad()
            for p, grad in zip(params, grads):
                p.grad.copy_(grad)
            opt.step()
    for p, q in zip(plain_params, fused_params):
        torch.testing.assert_close(q.detach(), p.detach(), rtol=1e-5, atol=1e-6)
    for key in ("exp_avg", "exp_avg_sq"):
        torch.testing.assert_close(fused.state[key], plain.state[key], rtol=1e-5, atol=1e-7)
    assert fused.step_count == plain.step_count == 8


def test_fused_step_resumes_from_loaded_state():
    """A fused optimiser loaded from another's state continues exactly as the original."""
    kwargs = dict(lr=[1e-2, 2e-2], weight_decay=[0.1, 1.0], warmup_steps=2, fused=True)
    first_params = ensemble_params(2)
    first = EnsembleOptimizer(first_params, "adamw", **kwargs)
    g = torch.Generator().manual_seed(2)
    grads = [[torch.randn(p.shape, generator=g) for p in first_params] for _ in range(6)]

    def step(opt, params, grad):
        opt.zero_grad()
        for p, x in zip(params, grad):
            p.grad.copy_(x)
        opt.step()

    for grad in grads[:3]:
        step(first, first_params, grad)
    second_params = [nn.Parameter(p.detach().clone()) for p in first_params]
    second = EnsembleOptimizer(second_params, "adamw", **kwargs)
    second.load_state_tensors({k: v.clone() for k, v in first.state_tensors().items()})
    for grad in grads[3:]:
        step(first, first_params, grad)
        step(second, second_params, grad)
    for p, q in zip(first_params, second_params):
        assert torch.equal(p.detach(), q.detach())


def test_fused_is_refused_for_sgd():
    with pytest.raises(ValueError, match="fused steps are for adamw, adam"):
        EnsembleOptimizer(ensemble_params(1), "sgd", lr=[1e-2], weight_decay=[0.0], fused=True)


def test_cpu_optimisers_keep_the_plain_step():
    assert EnsembleOptimizer(ensemble_params(2), "adamw", lr=[1e-2] * 2, weight_decay=[0.0] * 2).fused is None
