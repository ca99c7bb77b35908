"""The local learning coefficient of a trained ensemble (service/contract/llc.py says what it is
and the setting): SGLD chains from devinterp (an optional dependency, groklab[interp]) run on
the members' full-batch training loss, and a sampler callback that keeps each member's loss at
every draw.

estimate_llc(trainer) -> {"setting", "members": [...]}: per member its estimate (the mean over
chains), the spread over chains, the loss at the checkpoint and a short loss trace per chain.
Seeded: the same checkpoint and setting give the same numbers on the same machine.
"""
from __future__ import annotations

import math
import time
import warnings
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader

from service.contract.llc import INTERP_EXTRA, LLC_SETTING, TRACE_POINTS, LLCSetting
from worker.engine.optim import per_example_loss


class LLCTimeout(RuntimeError):
    """The chains ran past the time bound."""


class _MemberLosses:
    """A devinterp sampler callback: every member's loss at every draw, by chain. It stops the
    sampling (LLCTimeout) once the deadline has passed."""

    def __init__(self, chains: int, draws: int, members: int, deadline: float | None) -> None:
        self.losses = torch.full((chains, draws, members), math.nan, dtype=torch.float64)
        self.deadline = deadline

    def __call__(self, chain: int, draw: int, results: tuple[Tensor], **_: Any) -> None:
        self.losses[chain, draw] = results[0].double().cpu()
        if self.deadline is not None and time.monotonic() > self.deadline:
            raise LLCTimeout("the LLC ran past its time bound")


def _training_loss(trainer: Any) -> tuple[Tensor, Tensor, Tensor | None, Tensor]:
    """(tokens, labels, weights, n): the rows of every member's full-batch training loss at the
    trainer's step (its data schedule's stage). weights [E, N] (1/n_e on member e's rows) when
    the members' training sets differ, else None (every member: the mean over all rows); n [E]
    the training-set sizes."""
    trainer.sync_data_schedule()
    sets, E = trainer.sets, trainer.n_members
    if sets.shared_split:
        n = torch.full((E,), float(sets.train_tokens.shape[0]), dtype=torch.float64)
        return sets.train_tokens, sets.train_labels, None, n
    masks = sets.train_masks.to(sets.data.tokens.device)
    n = masks.sum(1).double().cpu()
    weights = masks.float() / masks.sum(1, keepdim=True).clamp_min(1).float()
    return sets.data.tokens, sets.data.labels, weights, n


def _only(batch: list) -> Any:
    return batch[0]


def _trace(losses: Tensor, points: int = TRACE_POINTS) -> list[float | None]:
    """One chain's draws [draws] averaged in consecutive groups down to at most `points`."""
    group = max(1, math.ceil(losses.numel() / points))
    means = (float(chunk.mean()) for chunk in losses.split(group))
    return [m if math.isfinite(m) else None for m in means]

def estimate_llc(
    trainer: Any, setting: LLCSetting = LLC_SETTING, time_limit_s: float | None = None
) -> dict[str, Any]:
    """The LLC of every member of the trainer's model at its current weights (the trainer is
    left as it was: devinterp samples on copies of the model)."""
    try:
        from devinterp.optim.sgld import SGLD
        from devinterp.slt.sampler import sample
    except ImportError as exc:
        raise RuntimeError(INTERP_EXTRA) from exc

    tokens, labels, weights, n = _training_loss(trainer)
    E, opt = trainer.n_members, trainer.spec.optimizer
    nbeta = n / torch.log(n)  # per member: n / log n
    ref = float(nbeta.max())
    scale = (nbeta / ref).to(tokens.device, torch.float32)
    epsilon = setting.eps_nbeta / ref

    def member_losses(model: torch.nn.Module, data: tuple[Tensor, Tensor]) -> Tensor:
        x, y = data
        per = per_example_loss(model(x), y, opt.loss, opt.loss_float64)
        return (per * weights).sum(1) if weights is not None else per.mean(1)

    def evaluate(model: torch.nn.Module, data: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
        losses = member_losses(model, data)
        # Each member's parameters get only its own gradient, at its own temperature.
        return (losses.float() * scale).sum(), losses.detach()

    model = trainer.model
    was_training = model.training
    with torch.no_grad():
        init = member_losses(model, (tokens, labels)).double().cpu()
    deadline = None if time_limit_s is None else time.monotonic() + time_limit_s
    recorder = _MemberLosses(setting.chains, setting.draws, E, deadline)
    started = time.monotonic()
    with warnings.catch_warnings(), torch.random.fork_rng(devices=[]):
        warnings.simplefilter("ignore")  # devinterp warns of seeded runs and one-batch loaders
        sample(
            # One batch, the whole training set, every step.
            model, DataLoader([(tokens, labels)], batch_size=1, collate_fn=_only),
            callbacks=[recorder], evaluate=evaluate,
            sampling_method=SGLD,
            optimizer_kwargs={"lr": epsilon, "localization": setting.localization,
                              "nbeta": ref},
            num_chains=setting.chains, num_draws=setting.draws,
            # Given, so that devinterp does not compute its own (0 would read as "not given");
            # the estimate uses each member's own init loss, not this sum.
            num_burnin_steps=setting.burnin, init_loss=float(init.sum()) or 1.0,
            seed=setting.seed, device=tokens.device, verbose=False, cores=1,
        )
    model.train(was_training)
    took = time.monotonic() - started
    members = []
    for e in range(E):
        draws = recorder.losses[:, :, e]  # [chains, draws]
        chains = nbeta[e] * (draws.mean(1) - init[e])
        finite = bool(torch.isfinite(chains).all())
        members.append({
            "member": e,
            "llc": float(chains.mean()) if finite else None,
            "llc_std": float(chains.std()) if finite and setting.chains > 1 else None,
            "chains": [float(c) if math.isfinite(c) else None for c in chains.tolist()],
            "init_loss": float(init[e]),
            "n": int(n[e]),
            "nbeta": float(nbeta[e]),
            "trace": [_trace(draws[c]) for c in range(setting.chains)],
            "diverged": not finite,
        })
    return {"setting": setting.as_dict(), "epsilon": epsilon, "took_s": round(took, 3),
            "members": members}
