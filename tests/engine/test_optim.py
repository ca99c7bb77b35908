"""Optimisers, per-member hyper-parameters, Grokfast, ⊥Grad and the losses."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from worker.engine.optim import (
    EnsembleOptimizer,
    GrokfastEMA,
    GrokfastMA,
    member_losses,
    orthogonalize_gradients_,
    per_example_loss,
)
from worker.engine.train import Trainer


def random_params(seed: int, E: int = 1) -> list[nn.Parameter]:
    g = torch.Generator().manual_seed(seed)
    return [nn.Parameter(torch.randn(E, *shape, generator=g)) for shape in ((4, 3), (5,), (2, 2, 2))]


TORCH_EQUIVALENTS = {
    "adamw": lambda ps: torch.optim.AdamW(ps, lr=1e-2, weight_decay=0.5, betas=(0.9, 0.98), eps=1e-8),
    "adam": lambda ps: torch.optim.Adam(ps, lr=1e-2, weight_decay=0.5, betas=(0.9, 0.98), eps=1e-8),
    "sgd": lambda ps: torch.optim.SGD(ps, lr=1e-2, weight_decay=0.5, momentum=0.9),
}


@pytest.mark.parametrize("name", TORCH_EQUIVALENTS)
def test_single_member_matches_torch_optim(name):
    ours, theirs = random_params(0), random_params(0)
    opt = EnsembleOptimizer(ours, name, lr=[1e-2], weight_decay=[0.5], betas=(0.9, 0.98), eps=1e-8, momentum=0.9)
    ref = TORCH_EQUIVALENTS[name](theirs)
    g = torch.Generator().manual_seed(1)
    for _ in range(6):
        grads = [torch.randn(p.shape, generator=g) for p in ours]
        opt.zero_grad()
        for p, q, grad in zip(ours, theirs, grads):
            p.grad.copy_(grad)
            q.grad = grad.clone()
        opt.step()
        ref.step()
    for p, q in zip(ours, theirs):
        torch.testing.assert_close(p.detach(), q.detach(), rtol=1e-5, atol=1e-6)


def test_linear_warmup():
    opt = EnsembleOptimizer(random_params(0), "adamw", lr=[1.0], weight_decay=[0.0], warmup_steps=4)
    assert [opt.lr_factor(t) for t in (1, 2, 3, 4, 5, 100)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    no_warmup = EnsembleOptimizer(random_params(0), "adamw", lr=[1.0], weight_decay=[0.0], warmup_steps=0)
    assert no_warmup.lr_factor(1) == 1.0


def test_each_member_trains_with_its_own_lr_and_weight_decay(tiny_spec):
    """Two members from the same init, different lr and wd: each equals a single run with its
    own hyper-parameters, and they end up apart."""
    lrs, wds = [1e-3, 4e-3], [1.0, 0.1]
    ensemble = Trainer(tiny_spec(training={"steps": 15}, ensemble={"size": 2, "seeds": [0, 0], "lr": lrs, "weight_decay": wds}))
    singles = [Trainer(tiny_spec(training={"steps": 15}, optimizer={"lr": lr, "weight_decay": wd})) for lr, wd in zip(lrs, wds)]
    for _ in range(15):
        ensemble.train_step()
        for t in singles:
            t.train_step()
    for member, single in enumerate(singles):
        for (name, p), (_, q) in zip(ensemble.model.named_parameters(), single.model.named_parameters()):
            torch.testing.assert_close(p[member], q[0], rtol=1e-4, atol=1e-5, msg=name)
    W = ensemble.model.W_E
    assert (W[0] - W[1]).abs().max() > 1e-2


def test_weight_decay_only_shrinks_the_member_that_has_it(tiny_spec):
    """lr tiny so the loss barely moves the weights; wd 100 vs 0 then decides the norm."""
    spec = tiny_spec(ensemble={"size": 2, "seeds": [0, 0], "lr": [1e-3, 1e-3], "weight_decay": [100.0, 0.0]},
                     optimizer={"warmup_steps": 0})
    trainer = Trainer(spec)
    before = trainer.weight_norms()
    for _ in range(10):
        trainer.train_step()
    after = trainer.weight_norms()
    # AdamW: w <- w * (1 - lr * wd) each step, so about 0.9^10 = 0.35 of the norm is left.
    assert after[0] < 0.5 * before[0]
    assert abs(after[1] - before[1]) < 0.05 * before[1]


def test_grokfast_ema_adds_the_amplified_running_average():
    alpha, lamb = 0.9, 2.0
    f = GrokfastEMA(3, alpha, lamb)
    grads = [torch.tensor([1.0, 0.0, -1.0]), torch.tensor([3.0, 1.0, 1.0]), torch.tensor([0.0, 2.0, 0.0])]
    ema = grads[0].clone()
    for i, g in enumerate(grads):
        if i:
            ema = alpha * ema + (1 - alpha) * g
        out = g.clone()
        f.apply_(out)
        torch.testing.assert_close(out, g + lamb * ema)


def test_grokfast_ma_waits_for_a_full_window_then_adds_the_mean():
    f = GrokfastMA(2, window=3, lamb=5.0)
    grads = [torch.tensor([float(i), -2.0 * i]) for i in range(1, 6)]
    outputs = []
    for g in grads:
        out = g.clone()
        f.apply_(out)
        outputs.append(out)
    torch.testing.assert_close(outputs[0], grads[0])  # window not full yet: unchanged
    torch.testing.assert_close(outputs[1], grads[1])
    for i in (2, 3, 4):
        window_mean = torch.stack(grads[i - 2 : i + 1]).mean(0)
        torch.testing.assert_close(outputs[i], grads[i] + 5.0 * window_mean)


def test_orthogonal_grad_is_perpendicular_to_the_weights_with_the_same_norm():
    params = random_params(0, E=3)
    g = torch.Generator().manual_seed(2)
    originals = []
    for p in params:
        p.grad = torch.randn(p.shape, generator=g)
        originals.append(p.grad.clone())
    with torch.no_grad():
        params[1][2].zero_()  # a zero tensor (a bias at init) keeps its gradient
    orthogonalize_gradients_(params)
    for p, g0 in zip(params, originals):
        for e in range(3):
            w, new, old = p[e].detach().flatten(), p.grad[e].flatten(), g0[e].flatten()
            if w.abs().sum() == 0:
                torch.testing.assert_close(new, old)
                continue
            assert abs(torch.dot(w, new)) < 1e-5 * w.norm() * new.norm()
            torch.testing.assert_close(new.norm(), old.norm())
            assert not torch.allclose(new, old)  # it really changed direction


def test_stablemax_loss_on_a_hand_example():
    # s(2) = 3, s(0) = 1, s(-1) = 1/2: probabilities 3/4.5, 1/4.5, 0.5/4.5
    logits = torch.tensor([[[2.0, 0.0, -1.0], [2.0, 0.0, -1.0]]])
    labels = torch.tensor([0, 2])
    loss = per_example_loss(logits, labels, "stablemax")
    torch.testing.assert_close(loss, torch.tensor([[-math.log(3 / 4.5), -math.log(0.5 / 4.5)]]))
    ce = per_example_loss(logits, labels, "cross_entropy")
    torch.testing.assert_close(ce, -torch.log_softmax(logits, -1)[0, [0, 1], [0, 2]].unsqueeze(0))


def test_stablemax_has_finite_gradients_for_huge_logits():
    logits = torch.tensor([[[1e4, -1e4, 0.5]]], requires_grad=True)
    member_losses(logits, torch.tensor([1]), "stablemax").sum().backward()
    assert torch.isfinite(logits.grad).all()


def test_float64_loss_and_members_are_independent():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 5, 4, generator=g)
    labels = torch.randint(0, 4, (5,), generator=g)
    wide = member_losses(logits, labels, "cross_entropy", float64=True)
    assert wide.dtype == torch.float64
    torch.testing.assert_close(wide.float(), member_losses(logits, labels))
    for e in range(2):  # each member's loss is its own mean
        torch.testing.assert_close(wide[e].float(), torch.nn.functional.cross_entropy(logits[e], labels))
