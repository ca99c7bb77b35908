"""The training loop: a Trainer owns the data, the ensemble, the optimiser and the run's state,
and reports through plain callbacks (no database, no queue).

    trainer = Trainer(spec)                      # or Trainer.from_checkpoint(spec, blob)
    summary = trainer.run(on_metrics=print)

Evaluation happens at step 0, at log-spaced early steps (1, 2, 4, ... below eval_every), every
eval_every steps, and at the last step; each is one on_metrics call with rows
{"step", "member", "name", "value"} for train_loss, train_acc, val_loss, val_acc and weight_norm
(L2 norm of all of a member's parameters), plus any rows on_analysis returned for that step.
"""
from __future__ import annotations

import contextlib
import json
import math
import time
from typing import Any, Callable

import torch
from torch import Tensor

from service.spec import ExperimentSpec
from worker.engine import ENGINE_VERSION
from worker.engine.checkpoint import (
    CHECKPOINT_FORMAT,
    load_checkpoint,
    load_rng_state_tensors,
    read_metadata,
    rng_state_tensors,
    save_checkpoint,
)
from worker.engine.data import build_dataset
from worker.engine.models import build_model, member_seeds
from worker.engine.optim import (
    build_grad_filter,
    build_optimizer,
    member_losses,
    orthogonalize_gradients_,
    per_example_loss,
)

ACC_THRESHOLD = 0.99  # "fits" / "generalises" (Power et al. 2022)
GROK_PATIENCE = 3  # stop_on_grok: consecutive evals with val_acc >= ACC_THRESHOLD, every member
EVAL_ROWS = 1 << 18  # rows (members * examples) per evaluation forward pass
METRIC_NAMES = ("train_loss", "train_acc", "val_loss", "val_acc", "weight_norm")

MetricRow = dict[str, Any]


def resolve_device(device: str | torch.device | None) -> torch.device:
    """'auto' (or None) is cuda when available, else cpu."""
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("training.device is 'cuda' but no CUDA device is available; use 'auto' or 'cpu'")
    return device


def is_eval_step(step: int, eval_every: int) -> bool:
    """Step 0, powers of two below eval_every, and multiples of eval_every."""
    if step % eval_every == 0:
        return True
    return step < eval_every and step & (step - 1) == 0


def batch_seed(seed: int) -> int:
    """The minibatch stream of a member: a seed apart from its initialisation seed."""
    return (seed * 0x9E3779B97F4A7C15 + 0x5EED) % (1 << 63)


class Trainer:
    def __init__(self, spec: ExperimentSpec, device: str | torch.device | None = None):
        self.spec = spec
        self.device = resolve_device(device if device is not None else spec.training.device)
        self.n_members = E = spec.ensemble.size
        self.seeds = member_seeds(spec)
        self.lrs = list(spec.ensemble.lr or [spec.optimizer.lr] * E)
        self.weight_decays = list(spec.ensemble.weight_decay or [spec.optimizer.weight_decay] * E)

        self.data = build_dataset(spec, self.device)
        self.train_tokens = self.data.tokens[self.data.train_idx]
        self.train_labels = self.data.labels[self.data.train_idx]
        self.val_tokens = self.data.tokens[self.data.val_idx]
        self.val_labels = self.data.labels[self.data.val_idx]

        self.model = build_model(spec, self.device)
        self.params = list(self.model.parameters())
        self.optimizer = build_optimizer(self.params, spec.optimizer, self.lrs, self.weight_decays)
        self.grad_filter = build_grad_filter(spec.optimizer.grad_filter, self.optimizer.flat.numel(), self.device)
        self.batch_generators = (
            [torch.Generator().manual_seed(batch_seed(s)) for s in self.seeds]
            if spec.training.batch_size is not None else []
        )

        self.step = 0
        self.memorization_step: list[int | None] = [None] * E
        self.generalization_step: list[int | None] = [None] * E
        self.grok_streak = [0] * E
        self.last_metrics: list[dict[str, float]] = []

        on_cuda = self.device.type == "cuda"
        if on_cuda and spec.training.tf32:
            torch.backends.cuda.matmul.allow_tf32 = True
        self._autocast = on_cuda and spec.training.autocast_bf16

    # ---- one step ----------------------------------------------------------------------------
    def next_batch(self) -> tuple[Tensor, Tensor]:
        """Full batch: the shared training set. Minibatch: per member, batch_size examples drawn
        without replacement from the training set by that member's own generator."""
        B = self.spec.training.batch_size
        if B is None:
            return self.train_tokens, self.train_labels
        n = self.train_tokens.shape[0]
        picks = torch.stack([torch.randperm(n, generator=g)[:B] for g in self.batch_generators])
        picks = picks.to(self.device)
        return self.train_tokens[picks], self.train_labels[picks]

    def _autocast_context(self):
        if self._autocast:
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def train_step(self) -> Tensor:
        """One optimiser step of every member; returns the members' losses [E] (detached)."""
        tokens, labels = self.next_batch()
        with self._autocast_context():
            logits = self.model(tokens)
        opt = self.spec.optimizer
        losses = member_losses(logits, labels, opt.loss, opt.loss_float64)
        self.optimizer.zero_grad()
        losses.sum().backward()
        if self.grad_filter is not None:
            self.grad_filter.apply_(self.optimizer.grad)
        if opt.orthogonal_grad:
            orthogonalize_gradients_(self.params)
        self.optimizer.step()
        self.step += 1
        return losses.detach()

    # ---- evaluation --------------------------------------------------------------------------
    @torch.no_grad()
    def _loss_and_accuracy(self, tokens: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        E, N = self.n_members, tokens.shape[0]
        if N == 0:
            nan = torch.full((E,), math.nan, dtype=torch.float64)
            return nan, nan
        loss_sum = torch.zeros(E, dtype=torch.float64, device=self.device)
        correct = torch.zeros(E, dtype=torch.int64, device=self.device)
        chunk = max(1, EVAL_ROWS // E)
        opt = self.spec.optimizer
        for i in range(0, N, chunk):
            logits = self.model(tokens[i : i + chunk]).float()
            y = labels[i : i + chunk]
            loss_sum += per_example_loss(logits, y, opt.loss, opt.loss_float64).double().sum(1)
            correct += (logits.argmax(-1) == y).sum(1)
        return (loss_sum / N).cpu(), (correct.double() / N).cpu()

    @torch.no_grad()
    def weight_norms(self) -> Tensor:
        """L2 norm over all of each member's parameters [E]."""
        sq = sum(p.detach().double().pow(2).flatten(1).sum(1) for p in self.params)
        return sq.sqrt().cpu()

    def evaluate(self) -> list[dict[str, float]]:
        """Per member: train_loss, train_acc, val_loss, val_acc, weight_norm on the full sets."""
        was_training = self.model.training
        self.model.eval()
        train_loss, train_acc = self._loss_and_accuracy(self.train_tokens, self.train_labels)
        val_loss, val_acc = self._loss_and_accuracy(self.val_tokens, self.val_labels)
        norms = self.weight_norms()
        self.model.train(was_training)
        return [
            {
                "train_loss": float(train_loss[e]), "train_acc": float(train_acc[e]),
                "val_loss": float(val_loss[e]), "val_acc": float(val_acc[e]),
                "weight_norm": float(norms[e]),
            }
            for e in range(self.n_members)
        ]

    def _eval_rows(self) -> list[MetricRow]:
        metrics = self.evaluate()
        self.last_metrics = metrics
        rows = []
        for e, values in enumerate(metrics):
            if self.memorization_step[e] is None and values["train_acc"] >= ACC_THRESHOLD:
                self.memorization_step[e] = self.step
            if self.generalization_step[e] is None and values["val_acc"] >= ACC_THRESHOLD:
                self.generalization_step[e] = self.step
            self.grok_streak[e] = self.grok_streak[e] + 1 if values["val_acc"] >= ACC_THRESHOLD else 0
            rows.extend(
                {"step": self.step, "member": e, "name": name, "value": values[name]}
                for name in METRIC_NAMES
                if not math.isnan(values[name])
            )
        return rows

    def train_mask_grid(self) -> Tensor:
        """[n, n] bool: which (a, b) pairs are in the training set."""
        return self.data.train_mask_grid()

    # ---- the run -----------------------------------------------------------------------------
    def run(
        self,
        on_metrics: Callable[[list[MetricRow]], None] | None = None,
        on_checkpoint: Callable[[int, bytes, dict], None] | None = None,
        should_stop: Callable[[], bool] | None = None,
        on_progress: Callable[[int, int], None] | None = None,
        on_analysis: Callable[["Trainer", int], list[MetricRow]] | None = None,
        until_step: int | None = None,
    ) -> dict[str, Any]:
        """Train from self.step to until_step (default training.steps).

        should_stop() is polled before every step; on_progress(step, total) after it.
        on_checkpoint(step, blob, meta) runs every checkpoint_every steps and once at the end
        (whatever ended the run). on_analysis(trainer, step) runs every analysis.every steps and
        at the end; its rows go to on_metrics with that step's evaluation rows.
        Returns the summary (see summary()).
        """
        t = self.spec.training
        target = t.steps if until_step is None else until_step
        analysis_every = self.spec.analysis.every
        start_step, started = self.step, time.perf_counter()
        last_eval = last_analysis = last_checkpoint = None
        stopped = "completed"

        def report(final: bool = False) -> None:
            """Evaluate (and analyse) this step if it is due; at the end, if not done yet."""
            nonlocal last_eval, last_analysis
            rows: list[MetricRow] = []
            if last_eval != self.step and (final or is_eval_step(self.step, t.eval_every)):
                rows += self._eval_rows()
                last_eval = self.step
            if (
                on_analysis is not None and analysis_every is not None and last_analysis != self.step
                and (final or self.step % analysis_every == 0)
            ):
                rows += list(on_analysis(self, self.step) or [])
                last_analysis = self.step
            if rows and on_metrics is not None:
                on_metrics(rows)

        def checkpoint() -> None:
            nonlocal last_checkpoint
            if on_checkpoint is not None:
                on_checkpoint(self.step, self.to_checkpoint(), self.checkpoint_meta())
            last_checkpoint = self.step

        if self.step == 0:
            report()
        while self.step < target:
            if t.stop_on_grok and min(self.grok_streak) >= GROK_PATIENCE:
                stopped = "grokked"
                break
            if should_stop is not None and should_stop():
                stopped = "cancelled"
                break
            self.train_step()
            if on_progress is not None:
                on_progress(self.step, target)
            report(final=self.step == target)
            if self.step % t.checkpoint_every == 0:
                checkpoint()
        # A run resumed from its last checkpoint that trains no further step reports nothing
        # again: that step's metrics and checkpoint were sent before the checkpoint was taken.
        if self.step != start_step or start_step == 0:
            report(final=True)
            if last_checkpoint != self.step:
                checkpoint()
        return self.summary(stopped, self.step - start_step, time.perf_counter() - started)

    def summary(self, stopped: str, steps_run: int, wall_s: float) -> dict[str, Any]:
        """steps (completed), steps_run (this call), stopped ("completed" | "grokked" |
        "cancelled"), wall_s, steps_per_s, and per member: seed, lr, weight_decay, final metrics,
        memorization_step (first eval with train_acc >= 0.99) and generalization_step (val_acc)."""
        metrics = self.last_metrics or self.evaluate()
        return {
            "steps": self.step,
            "steps_run": steps_run,
            "stopped": stopped,
            "wall_s": wall_s,
            "steps_per_s": steps_run / wall_s if wall_s > 0 else None,
            "members": [
                {
                    "member": e, "seed": self.seeds[e], "lr": self.lrs[e],
                    "weight_decay": self.weight_decays[e], "final": metrics[e],
                    "memorization_step": self.memorization_step[e],
                    "generalization_step": self.generalization_step[e],
                }
                for e in range(self.n_members)
            ],
        }

    # ---- checkpoints -------------------------------------------------------------------------
    def checkpoint_meta(self) -> dict[str, Any]:
        return {
            "format": CHECKPOINT_FORMAT, "engine_version": ENGINE_VERSION,
            "spec_hash": self.spec.spec_hash(), "step": self.step,
        }

    def to_checkpoint(self) -> bytes:
        """Everything needed to continue bit-for-bit: parameters (param.<name>, [E, ...]),
        optimiser and grad-filter state (flat, in parameter order), every RNG state, progress."""
        tensors: dict[str, Tensor] = {f"param.{n}": p for n, p in self.model.named_parameters()}
        tensors.update(self.optimizer.state_tensors())
        if self.grad_filter is not None:
            tensors.update(self.grad_filter.state_tensors())
        tensors.update(rng_state_tensors(self.batch_generators))
        missing = -1
        tensors["trainer.step"] = torch.tensor([self.step], dtype=torch.int64)
        tensors["trainer.memorization_step"] = torch.tensor(
            [missing if s is None else s for s in self.memorization_step], dtype=torch.int64)
        tensors["trainer.generalization_step"] = torch.tensor(
            [missing if s is None else s for s in self.generalization_step], dtype=torch.int64)
        tensors["trainer.grok_streak"] = torch.tensor(self.grok_streak, dtype=torch.int64)
        meta = self.checkpoint_meta()
        meta["spec"] = json.dumps(self.spec.model_dump(mode="json"), sort_keys=True)
        return save_checkpoint(tensors, meta)

    @classmethod
    def from_checkpoint(
        cls, spec: ExperimentSpec, blob: bytes, device: str | torch.device | None = None
    ) -> "Trainer":
        """A trainer that continues exactly where the checkpoint's run stopped. The checkpoint
        must have been written for this very spec (same spec_hash)."""
        metadata = read_metadata(blob)
        expected = spec.spec_hash()
        if metadata.get("spec_hash") != expected:
            raise ValueError(
                f"checkpoint was written for spec hash {metadata.get('spec_hash')!r}, but this spec "
                f"hashes to {expected!r}; resume with the exact spec the checkpoint was trained with"
            )
        tensors, _ = load_checkpoint(blob)
        trainer = cls(spec, device)
        try:
            trainer.load_state_tensors(tensors)
        except (KeyError, RuntimeError, IndexError) as exc:
            # A well-formed file that lacks a tensor, or holds one of the wrong shape.
            raise ValueError(
                f"checkpoint does not match this spec's model and optimiser "
                f"({type(exc).__name__}: {exc}); it may be truncated or crafted"
            ) from exc
        return trainer

    @torch.no_grad()
    def load_state_tensors(self, tensors: dict[str, Tensor]) -> None:
        for name, p in self.model.named_parameters():
            p.copy_(tensors[f"param.{name}"])
        self.optimizer.load_state_tensors(tensors)
        if self.grad_filter is not None:
            self.grad_filter.load_state_tensors(tensors)
        load_rng_state_tensors(tensors, self.batch_generators)
        self.step = int(tensors["trainer.step"][0])
        self.memorization_step = [None if s < 0 else int(s) for s in tensors["trainer.memorization_step"]]
        self.generalization_step = [None if s < 0 else int(s) for s in tensors["trainer.generalization_step"]]
        self.grok_streak = [int(s) for s in tensors["trainer.grok_streak"]]
