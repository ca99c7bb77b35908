"""Optimisers, gradient filters and losses for ensembles. Each member is trained exactly as if
it were alone.

Order inside one step (Trainer.train_step): backward -> Grokfast filter -> ⊥Grad -> optimiser
(whose coupled L2 for adam/sgd is added last, as torch.optim does).
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from service.contract.spec import GradFilterSpec, OptimizerSpec
from worker.engine.fused_adam import FUSED_KERNELS, FusedAdamStep, fused_pays

OPTIMIZERS = ("adamw", "adam", "sgd")


class EnsembleOptimizer:
    """AdamW (decoupled weight decay), Adam (coupled L2 added to the gradient, like
    torch.optim.Adam's weight_decay) or SGD with momentum (coupled L2, like torch.optim.SGD),
    with a linear warmup: the t-th update (t = 1, 2, ...) uses lr * min(1, t / warmup_steps).

    params: the model's parameters, each [E, ...]. They are moved into one flat buffer
    (self.flat) and their .grad into another (self.grad); do not replace them afterwards
    (model.zero_grad() is fine: the views are restored before each step).

    The flat buffers are why a step costs a handful of vector ops whatever the number of
    tensors and members (a per-tensor loop would be dozens of small kernel launches), and why
    the gradient filters and checkpoints see one tensor. Per-member hyper-parameters become
    per-element vectors: member e of parameter W gets lr[e] and weight_decay[e].

    fused (default: on CUDA, for adamw and adam, unless the members' hyper-parameters change
    too often along the ensemble, see fused_pays): update through torch's fused kernel
    (worker/engine/fused_adam.py), 7 passes over the buffers where the plain step takes about
    30; the CPU keeps the plain step.
    """

    def __init__(
        self,
        params: Sequence[nn.Parameter],
        name: str,
        lr: Sequence[float],
        weight_decay: Sequence[float],
        betas: tuple[float, float] = (0.9, 0.98),
        eps: float = 1e-8,
        momentum: float = 0.0,
        warmup_steps: int = 0,
        fused: bool | None = None,
    ):
        if name not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer {name!r}; valid: {', '.join(OPTIMIZERS)}")
        if len(lr) != len(weight_decay):
            raise ValueError(f"lr and weight_decay need one entry per member ({len(lr)} vs {len(weight_decay)})")
        self.params = list(params)
        self.name, self.betas, self.eps = name, betas, eps
        self.momentum, self.warmup_steps = momentum, warmup_steps
        self.n_members = E = len(lr)
        device = self.params[0].device
        total = sum(p.numel() for p in self.params)
        self.flat = torch.empty(total, device=device)
        self.grad = torch.zeros(total, device=device)
        self._grad_views: list[Tensor] = []
        self.member_sizes: list[int] = []  # elements of one member in each parameter
        offset = 0
        for p in self.params:
            if p.shape[0] != E:
                raise ValueError(f"parameter of shape {list(p.shape)} has no leading ensemble dim {E}")
            n = p.numel()
            self.flat[offset : offset + n].copy_(p.detach().reshape(-1))
            p.data = self.flat[offset : offset + n].view_as(p)
            self._grad_views.append(self.grad[offset : offset + n].view_as(p))
            p.grad = self._grad_views[-1]
            self.member_sizes.append(n // E)
            offset += n
        self.lr = torch.tensor(lr, dtype=torch.float64)
        self.weight_decay = torch.tensor(weight_decay, dtype=torch.float64)
        self.lr_vec = self.member_vector(lr)
        self.wd_vec = self.member_vector(weight_decay)
        self.uses_decay = bool(any(w != 0 for w in weight_decay))
        self.step_count = 0
        self.state: dict[str, Tensor] = {}
        if name in ("adamw", "adam"):
            self.state["exp_avg"] = torch.zeros_like(self.flat)
            self.state["exp_avg_sq"] = torch.zeros_like(self.flat)
        elif momentum > 0:
            self.state["momentum_buffer"] = torch.zeros_like(self.flat)
        if fused is None:
            fused = device.type == "cuda" and name in FUSED_KERNELS and fused_pays(lr, weight_decay)
        elif fused and name not in FUSED_KERNELS:
            raise ValueError(f"fused steps are for {', '.join(FUSED_KERNELS)} (got optimizer {name!r})")
        self.fused = (
            FusedAdamStep(name, self.flat, self.grad, self.state["exp_avg"], self.state["exp_avg_sq"],
                          self.member_sizes, lr, weight_decay)
            if fused else None
        )

    def member_vector(self, values: Sequence[float]) -> Tensor:
        """A per-element vector laid out like self.flat: values[e] on every element of member e."""
        per_member = torch.tensor(list(values), dtype=torch.float32)
        parts = [per_member.repeat_interleave(n) for n in self.member_sizes]
        return torch.cat(parts).to(self.flat.device)

    def zero_grad(self) -> None:
        self._rebind_grads()
        self.grad.zero_()

    def _rebind_grads(self) -> None:
        """Put the flat-buffer views back if someone replaced a .grad (e.g. zero_grad(set_to_none))."""
        for p, view in zip(self.params, self._grad_views):
            if p.grad is not view:
                if p.grad is None:
                    view.zero_()
                else:
                    view.copy_(p.grad)
                p.grad = view

    def lr_factor(self, t: int) -> float:
        """Warmup multiplier of the t-th update (1-based)."""
        return 1.0 if self.warmup_steps <= 0 else min(1.0, t / self.warmup_steps)

    @torch.no_grad()
    def step(self) -> None:
        self._rebind_grads()
        self.step_count += 1
        t = self.step_count
        if self.fused is not None:
            self.fused.step(t, self.lr_factor(t), self.betas, self.eps)
            return
        lr = self.lr_vec * self.lr_factor(t)
        grad, flat = self.grad, self.flat
        if self.name in ("adam", "sgd") and self.uses_decay:
            grad = grad + self.wd_vec * flat
        if self.name == "sgd":
            if self.momentum > 0:
                buf = self.state["momentum_buffer"]
                buf.mul_(self.momentum).add_(grad)
                grad = buf
            flat.sub_(lr * grad)
            return
        beta1, beta2 = self.betas
        exp_avg, exp_avg_sq = self.state["exp_avg"], self.state["exp_avg_sq"]
        if self.name == "adamw" and self.uses_decay:
            flat.mul_(1 - lr * self.wd_vec)
        exp_avg.lerp_(grad, 1 - beta1)
        exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        bias_correction1 = 1 - beta1**t
        bias_correction2_sqrt = math.sqrt(1 - beta2**t)
        denom = (exp_avg_sq.sqrt() / bias_correction2_sqrt).add_(self.eps)
        flat.sub_(exp_avg.div(denom).mul_(lr / bias_correction1))

    # ---- checkpointing -------------------------------------------------------------------
    def state_tensors(self) -> dict[str, Tensor]:
        out = {f"optim.{k}": v for k, v in self.state.items()}
        out["optim.step"] = torch.tensor([self.step_count], dtype=torch.int64)
        return out

    @torch.no_grad()
    def load_state_tensors(self, tensors: dict[str, Tensor]) -> None:
        for k, v in self.state.items():
            v.copy_(tensors[f"optim.{k}"])
        self.step_count = int(tensors["optim.step"][0])


def build_optimizer(
    params: Sequence[nn.Parameter], spec: OptimizerSpec, lr: Sequence[float], weight_decay: Sequence[float]
) -> EnsembleOptimizer:
    return EnsembleOptimizer(
        params, spec.name, lr, weight_decay, betas=tuple(spec.betas), eps=spec.eps,
        momentum=spec.momentum, warmup_steps=spec.warmup_steps,
    )


# ---- Grokfast (Lee et al. 2024): amplify the slow component of the gradient --------------------
def _add_scaled_(grad: Tensor, x: Tensor, lamb: float | Tensor) -> None:
    """grad += lamb * x, lamb a number or a per-element vector (per-member lambdas)."""
    if isinstance(lamb, Tensor):
        grad.addcmul_(x, lamb)
    else:
        grad.add_(x, alpha=lamb)


class GrokfastEMA:
    """ema <- alpha * ema + (1 - alpha) * g (ema starts at the first g); then g <- g + lamb * ema.

    lamb is a number, or a per-element vector like EnsembleOptimizer.lr_vec (one per member)."""

    def __init__(self, size: int, alpha: float, lamb: float | Tensor, device: torch.device | str = "cpu"):
        self.alpha, self.lamb = alpha, lamb
        self.ema = torch.zeros(size, device=device)
        self.count = 0

    @torch.no_grad()
    def apply_(self, grad: Tensor) -> None:
        if self.count == 0:
            self.ema.copy_(grad)
        else:
            self.ema.mul_(self.alpha).add_(grad, alpha=1 - self.alpha)
        self.count += 1
        _add_scaled_(grad, self.ema, self.lamb)

    def state_tensors(self) -> dict[str, Tensor]:
        return {"grad_filter.ema": self.ema, "grad_filter.count": torch.tensor([self.count])}

    @torch.no_grad()
    def load_state_tensors(self, tensors: dict[str, Tensor]) -> None:
        self.ema.copy_(tensors["grad_filter.ema"])
        self.count = int(tensors["grad_filter.count"][0])


class GrokfastMA:
    """Moving average of the last `window` gradients: g <- g + lamb * mean(window), applied once
    the window is full (Grokfast's warmup=True). The window is a fixed-size deque kept as a ring
    buffer [window, size], so the checkpoint holds it as one tensor."""

    def __init__(self, size: int, window: int, lamb: float | Tensor, device: torch.device | str = "cpu"):
        self.window, self.lamb = window, lamb
        self.buffer = torch.zeros(window, size, device=device)
        self.count = 0

    @torch.no_grad()
    def apply_(self, grad: Tensor) -> None:
        self.buffer[self.count % self.window].copy_(grad)
        self.count += 1
        if self.count >= self.window:
            _add_scaled_(grad, self.buffer.sum(0), self.lamb / self.window)

    def state_tensors(self) -> dict[str, Tensor]:
        return {"grad_filter.window": self.buffer, "grad_filter.count": torch.tensor([self.count])}

    @torch.no_grad()
    def load_state_tensors(self, tensors: dict[str, Tensor]) -> None:
        self.buffer.copy_(tensors["grad_filter.window"])
        self.count = int(tensors["grad_filter.count"][0])


def build_grad_filter(
    spec: GradFilterSpec | None, size: int, device: torch.device | str = "cpu",
    lamb: float | Tensor | None = None,
) -> GrokfastEMA | GrokfastMA | None:
    """The spec's filter; lamb (a per-element vector for per-member lambdas) overrides spec.lamb."""
    if spec is None:
        return None
    lamb = spec.lamb if lamb is None else lamb
    if spec.kind == "ema":
        return GrokfastEMA(size, spec.alpha, lamb, device)
    return GrokfastMA(size, spec.window, lamb, device)


# ---- ⊥Grad (Prieto et al. 2025) ----------------------------------------------------------------
@torch.no_grad()
def orthogonalize_gradients_(params: Sequence[nn.Parameter], eps: float = 1e-30) -> None:
    """⊥Grad: g <- g - (w·g / w·w) w, rescaled to the norm of the original g.

    Per member and per parameter tensor: the step no longer changes the weights' scale, which is
    what lets logits grow until softmax collapse (Prieto et al. 2025, "Grokking at the edge of
    numerical stability"). A zero tensor (e.g. a bias at init) keeps its gradient.
    """
    for p in params:
        w = p.detach().flatten(1)
        g = p.grad.flatten(1)
        projection = (w * g).sum(1, keepdim=True) / ((w * w).sum(1, keepdim=True) + eps)
        g_perp = g - projection * w
        scale = g.norm(dim=1, keepdim=True) / (g_perp.norm(dim=1, keepdim=True) + eps)
        p.grad.copy_((g_perp * scale).view_as(p.grad))


# ---- losses -------------------------------------------------------------------------------------
def stablemax_s(x: Tensor) -> Tensor:
    """s(x) = x + 1 for x >= 0 and 1 / (1 - x) for x < 0 (Prieto et al. 2025)."""
    return torch.where(x >= 0, x + 1, 1 / (1 - x.clamp(max=0)))


def log_stablemax(logits: Tensor, dim: int = -1) -> Tensor:
    """log of StableMax probabilities s(x_i) / sum_j s(x_j)."""
    s = stablemax_s(logits)
    return s.log() - s.sum(dim, keepdim=True).log()


def per_example_loss(logits: Tensor, labels: Tensor, kind: str = "cross_entropy", float64: bool = False) -> Tensor:
    """logits [E, N, C], labels [E, N] or [N] -> loss of every example [E, N]."""
    E, N, C = logits.shape
    labels = labels.expand(E, N) if labels.dim() == 1 else labels
    logits = logits.double() if float64 else logits.float()
    if kind == "cross_entropy":
        return F.cross_entropy(logits.reshape(E * N, C), labels.reshape(E * N), reduction="none").view(E, N)
    if kind == "stablemax":
        return -log_stablemax(logits).gather(-1, labels.unsqueeze(-1)).squeeze(-1)
    raise ValueError(f"unknown loss {kind!r}; valid: cross_entropy, stablemax")


def member_losses(logits: Tensor, labels: Tensor, kind: str = "cross_entropy", float64: bool = False) -> Tensor:
    """Each member's mean loss [E]. Training minimises their SUM, so members stay independent."""
    return per_example_loss(logits, labels, kind, float64).mean(1)
