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
import math
import time
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import Tensor

from service.grokking import ACC_THRESHOLD, EVAL_METRICS, GROK_PATIENCE
from service.progress import steps_per_second
from service.spec import ExperimentSpec
from worker.engine.checkpoint import (
    checkpoint_metadata,
    load_checkpoint_for,
    load_trainer_state,
    trainer_checkpoint,
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

EVAL_ROWS = 1 << 18  # rows (members * examples) per evaluation forward pass

MetricRow = dict[str, Any]
MetricsCallback = Callable[[list[MetricRow]], None]
CheckpointCallback = Callable[[int, bytes, dict], None]
AnalysisCallback = Callable[["Trainer", int], list[MetricRow]]


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
        """Each member's mean loss and accuracy [E] over all rows, float64 on the CPU.

        The rows go through the model EVAL_ROWS // E at a time: a full-set forward of a large
        ensemble (E members * p^2 rows * d_mlp activations) would not fit in memory, and chunks
        of this size are already big enough to keep the device busy.
        """
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
                for name in EVAL_METRICS
                if not math.isnan(values[name])
            )
        return rows

    def train_mask_grid(self) -> Tensor:
        """[n, n] bool: which (a, b) pairs are in the training set."""
        return self.data.train_mask_grid()

    # ---- the run -----------------------------------------------------------------------------
    def run(
        self,
        on_metrics: MetricsCallback | None = None,
        on_checkpoint: CheckpointCallback | None = None,
        should_stop: Callable[[], bool] | None = None,
        on_progress: Callable[[int, int], None] | None = None,
        on_analysis: AnalysisCallback | None = None,
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
        run = _RunState(on_metrics, on_checkpoint, on_analysis)
        start_step, started = self.step, time.perf_counter()
        stopped = "completed"

        if self.step == 0:
            self._report(run, final=False)
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
            self._report(run, final=self.step == target)
            if self.step % t.checkpoint_every == 0:
                self._checkpoint(run)
        # A run resumed from its last checkpoint that trains no further step reports nothing
        # again: that step's metrics and checkpoint were sent before the checkpoint was taken.
        if self.step != start_step or start_step == 0:
            self._report(run, final=True)
            if run.last_checkpoint != self.step:
                self._checkpoint(run)
        return self.summary(stopped, self.step - start_step, time.perf_counter() - started)

    def _report(self, run: "_RunState", final: bool) -> None:
        """Evaluate (and analyse) this step if it is due; at the end, if not done yet."""
        rows: list[MetricRow] = []
        if run.last_eval != self.step and (final or is_eval_step(self.step, self.spec.training.eval_every)):
            rows += self._eval_rows()
            run.last_eval = self.step
        every = self.spec.analysis.every
        if (
            run.on_analysis is not None and every is not None and run.last_analysis != self.step
            and (final or self.step % every == 0)
        ):
            rows += list(run.on_analysis(self, self.step) or [])
            run.last_analysis = self.step
        if rows and run.on_metrics is not None:
            run.on_metrics(rows)

    def _checkpoint(self, run: "_RunState") -> None:
        if run.on_checkpoint is not None:
            run.on_checkpoint(self.step, self.to_checkpoint(), self.checkpoint_meta())
        run.last_checkpoint = self.step

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
            "steps_per_s": steps_per_second(steps_run, wall_s),
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

    # ---- checkpoints (worker/engine/checkpoint.py) -------------------------------------------
    def checkpoint_meta(self) -> dict[str, Any]:
        return checkpoint_metadata(self.spec, self.step)

    def to_checkpoint(self) -> bytes:
        """Everything needed to continue bit-for-bit (see worker/engine/checkpoint.py)."""
        return trainer_checkpoint(self)

    @classmethod
    def from_checkpoint(
        cls, spec: ExperimentSpec, blob: bytes, device: str | torch.device | None = None
    ) -> "Trainer":
        """A trainer that continues exactly where the checkpoint's run stopped. The checkpoint
        must have been written for this very spec (same spec_hash)."""
        tensors = load_checkpoint_for(spec, blob)
        trainer = cls(spec, device)
        load_trainer_state(trainer, tensors)
        return trainer


@dataclass
class _RunState:
    """One Trainer.run call: its callbacks, and the last step each was done for (so that the
    final report and checkpoint never repeat the loop's)."""

    on_metrics: MetricsCallback | None
    on_checkpoint: CheckpointCallback | None
    on_analysis: AnalysisCallback | None
    last_eval: int | None = None
    last_analysis: int | None = None
    last_checkpoint: int | None = None
