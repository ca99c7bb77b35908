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
import dataclasses
import math
import time
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import Tensor

from service.science.grokking import ACC_THRESHOLD, EVAL_METRICS, GROK_PATIENCE
from service.science.progress import steps_per_second
from service.contract.spec import ExperimentSpec
from service.science.sweeps import pack_spec
from worker.engine.checkpoint import (
    checkpoint_metadata,
    load_checkpoint_for,
    load_trainer_state,
    state_checkpoint,
    trainer_checkpoint,
    trainer_state_tensors,
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
from worker.engine.pack import merge_states, split_state
from worker.engine.schedule import schedule_stage, scheduled_splits

EVAL_ROWS = 1 << 18  # rows (members * examples) per evaluation forward pass

MetricRow = dict[str, Any]
MetricsCallback = Callable[[list[MetricRow]], None]
CheckpointCallback = Callable[[int, bytes, dict], None]
AnalysisCallback = Callable[["Trainer", int], list[MetricRow]]
MemberLeftCallback = Callable[[int, str, int], None]


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
    """One ensemble's training. Built with Trainer.for_members(member_specs) it is a **pack**: the
    members of a sweep, each an ordinary single-run spec, trained as one ensemble whose member e
    trains exactly as member_specs[e] would alone; each member is checkpointed on its own and
    leaves the batch when it is done (see run). self.members maps the current ensemble rows to
    the members' original indices; self.spec is the pack spec of the members still training."""

    def __init__(
        self, spec: ExperimentSpec, device: str | torch.device | None = None,
        member_specs: list[ExperimentSpec] | None = None,
    ):
        self.device = resolve_device(device if device is not None else spec.training.device)
        self.member_specs = list(member_specs) if member_specs is not None else None
        self.members: list[int] = list(range(spec.ensemble.size))
        self.left: dict[int, dict[str, Any]] = {}  # original member -> its summary when it left
        self._build(spec, init=True)
        E = self.n_members
        self.step = 0
        self.memorization_step: list[int | None] = [None] * E
        self.generalization_step: list[int | None] = [None] * E
        self.grok_streak = [0] * E
        self.last_metrics: list[dict[str, float]] = []

    @property
    def is_pack(self) -> bool:
        return self.member_specs is not None

    def _build(self, spec: ExperimentSpec, init: bool) -> None:
        """Data, model, optimiser, filter and generators of spec (weights drawn if init)."""
        self.spec = spec
        self.n_members = spec.ensemble.size
        self.seeds = member_seeds(spec)
        self.lrs = spec.ensemble.per_member("lr", spec.optimizer.lr)
        self.weight_decays = spec.ensemble.per_member("weight_decay", spec.optimizer.weight_decay)
        self._build_data(spec)

        self.model = build_model(spec, self.device, init=init)
        self.params = list(self.model.parameters())
        self.optimizer = build_optimizer(self.params, spec.optimizer, self.lrs, self.weight_decays)
        lamb = None
        if spec.ensemble.grad_filter_lamb is not None and len(set(spec.ensemble.grad_filter_lamb)) > 1:
            lamb = self.optimizer.member_vector(spec.ensemble.grad_filter_lamb)
        elif spec.ensemble.grad_filter_lamb is not None:
            lamb = spec.ensemble.grad_filter_lamb[0]
        self.grad_filter = build_grad_filter(
            spec.optimizer.grad_filter, self.optimizer.flat.numel(), self.device, lamb
        )
        self.batch_generators = (
            [torch.Generator().manual_seed(batch_seed(s)) for s in self.seeds]
            if spec.training.batch_size is not None else []
        )

        on_cuda = self.device.type == "cuda"
        if on_cuda and (spec.training.tf32 or self.is_pack):
            torch.backends.cuda.matmul.allow_tf32 = True
        self._autocast = on_cuda and spec.training.autocast_bf16

    def _build_data(self, spec: ExperimentSpec, stage: int = 0) -> None:
        """The training and validation sets (of data_schedule stage `stage`, see
        worker/engine/schedule.py). When every member has the same split (the usual
        ensemble), they are shared: train_tokens [n, 3]. Otherwise (a pack whose members differ
        in train_fraction or split_seed) each member has its own training rows, padded to the
        largest: train_tokens [E, n_max, 3], train_labels [E, n_max], and train_weights
        [E, n_max] (1/n_e on member e's rows, 0 on padding; None when all n_e agree)."""
        splits, self.data_stage = scheduled_splits(spec, stage), stage
        self.shared_split = all(torch.equal(train, splits[0][0]) for train, _ in splits)
        self.data = build_dataset(spec, self.device)
        if self.shared_split and not torch.equal(self.data.train_idx.cpu(), splits[0][0]):
            # ensemble lists that all name one split other than the task's
            self.data = dataclasses.replace(
                self.data, train_idx=splits[0][0].to(self.device), val_idx=splits[0][1].to(self.device)
            )
        self.member_train_idx = [train for train, _ in splits]  # CPU, for minibatch picks
        self.train_weights: Tensor | None = None
        if self.shared_split:
            self.train_masks = self.val_masks = None
            self.train_tokens = self.data.tokens[self.data.train_idx]
            self.train_labels = self.data.labels[self.data.train_idx]
            self.val_tokens = self.data.tokens[self.data.val_idx]
            self.val_labels = self.data.labels[self.data.val_idx]
            return
        N, sizes = spec.n_pairs, [train.numel() for train, _ in splits]
        n_max = max(sizes)
        masks = torch.zeros(len(splits), N, dtype=torch.bool)
        val_masks = torch.zeros(len(splits), N, dtype=torch.bool)
        padded = torch.empty(len(splits), n_max, dtype=torch.int64)
        for e, (train, val) in enumerate(splits):
            masks[e, train] = val_masks[e, val] = True
            padded[e, : train.numel()] = train
            padded[e, train.numel():] = train[0]  # any real row; its weight is 0
        self.train_masks, self.val_masks = masks.to(self.device), val_masks.to(self.device)
        rows = padded.to(self.device)
        self.train_tokens, self.train_labels = self.data.tokens[rows], self.data.labels[rows]
        if len(set(sizes)) > 1:
            n = torch.tensor(sizes, dtype=torch.float32).unsqueeze(1)
            self.train_weights = ((torch.arange(n_max).unsqueeze(0) < n) / n).to(self.device)
        self.val_tokens = self.val_labels = None

    def _sync_data_schedule(self) -> None:
        """The training set of this step's data_schedule stage (rebuilt when the stage changed)."""
        stage = schedule_stage(self.spec, self.step)
        if stage != self.data_stage:
            self._build_data(self.spec, stage)

    # ---- one step ----------------------------------------------------------------------------
    def next_batch(self) -> tuple[Tensor, Tensor]:
        """Full batch: the training set (shared, or each member's own). Minibatch: per member,
        batch_size examples drawn without replacement from its training set by its own
        generator (on the CPU, so a member draws exactly what it draws alone)."""
        self._sync_data_schedule()
        B = self.spec.training.batch_size
        if B is None:
            return self.train_tokens, self.train_labels
        if self.shared_split:
            n = self.train_tokens.shape[0]
            picks = torch.stack([torch.randperm(n, generator=g)[:B] for g in self.batch_generators])
            picks = self._to_device(picks)
            return self.train_tokens[picks], self.train_labels[picks]
        rows = torch.stack([
            train[torch.randperm(train.numel(), generator=g)[:B]]
            for train, g in zip(self.member_train_idx, self.batch_generators)
        ])
        rows = self._to_device(rows)
        return self.data.tokens[rows], self.data.labels[rows]

    def _to_device(self, t: Tensor) -> Tensor:
        """A CPU tensor on the device; on CUDA through pinned memory, without waiting for it."""
        if self.device.type == "cuda":
            return t.pin_memory().to(self.device, non_blocking=True)
        return t.to(self.device)

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
        if self.train_weights is None or self.spec.training.batch_size is not None:
            losses = member_losses(logits, labels, opt.loss, opt.loss_float64)
        else:  # members with training sets of different sizes: a weighted (masked) mean
            losses = (per_example_loss(logits, labels, opt.loss, opt.loss_float64) * self.train_weights).sum(1)
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
    def _masked_loss_and_accuracy(self, masks: list[Tensor]) -> list[tuple[Tensor, Tensor]]:
        """Per mask [E, N] (over all pairs): each member's mean loss and accuracy [E] over its
        own rows, float64 on the CPU (NaN for a member with no rows). One forward of all pairs,
        EVAL_ROWS // E at a time, serves every mask."""
        E, tokens, labels = self.n_members, self.data.tokens, self.data.labels
        N = tokens.shape[0]
        loss_sums = [torch.zeros(E, dtype=torch.float64, device=self.device) for _ in masks]
        corrects = [torch.zeros(E, dtype=torch.int64, device=self.device) for _ in masks]
        chunk = max(1, EVAL_ROWS // E)
        opt = self.spec.optimizer
        for i in range(0, N, chunk):
            logits = self.model(tokens[i : i + chunk]).float()
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
    def weight_norms(self) -> Tensor:
        """L2 norm over all of each member's parameters [E]."""
        sq = sum(p.detach().double().pow(2).flatten(1).sum(1) for p in self.params)
        return sq.sqrt().cpu()

    def evaluate(self) -> list[dict[str, float]]:
        """Per member: train_loss, train_acc, val_loss, val_acc, weight_norm on the full sets."""
        self._sync_data_schedule()
        was_training = self.model.training
        self.model.eval()
        if self.shared_split:
            train_loss, train_acc = self._loss_and_accuracy(self.train_tokens, self.train_labels)
            val_loss, val_acc = self._loss_and_accuracy(self.val_tokens, self.val_labels)
        else:
            (train_loss, train_acc), (val_loss, val_acc) = self._masked_loss_and_accuracy(
                [self.train_masks, self.val_masks]
            )
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

    def _eval_rows(self, only: list[int] | None = None) -> list[MetricRow]:
        """Evaluate; update the memorisation/generalisation steps and grok streaks and return the
        metric rows (with original member indices) of every row, or of the rows `only`."""
        metrics = self.evaluate()
        if only is None:
            self.last_metrics = metrics
        else:
            self.last_metrics = [metrics[e] if e in only or not self.last_metrics else self.last_metrics[e]
                                 for e in range(self.n_members)]
        rows = []
        for e, values in enumerate(metrics):
            if only is not None and e not in only:
                continue
            if self.memorization_step[e] is None and values["train_acc"] >= ACC_THRESHOLD:
                self.memorization_step[e] = self.step
            if self.generalization_step[e] is None and values["val_acc"] >= ACC_THRESHOLD:
                self.generalization_step[e] = self.step
            self.grok_streak[e] = self.grok_streak[e] + 1 if values["val_acc"] >= ACC_THRESHOLD else 0
            rows.extend(
                {"step": self.step, "member": self.members[e], "name": name, "value": values[name]}
                for name in EVAL_METRICS
                if not math.isnan(values[name])
            )
        return rows

    def train_mask_grid(self) -> Tensor:
        """[n, n] bool: which (a, b) pairs are in the training set; [E, n, n] (member e's in
        row e) when the members' training sets differ."""
        self._sync_data_schedule()
        if self.shared_split:
            return self.data.train_mask_grid()
        n = self.data.n_elements
        grid = torch.zeros(self.n_members, n, n, dtype=torch.bool, device=self.device)
        a, b = self.data.tokens[:, 0], self.data.tokens[:, 1]
        grid[:, a, b] = self.train_masks
        return grid

    # ---- the run -----------------------------------------------------------------------------
    def run(
        self,
        on_metrics: MetricsCallback | None = None,
        on_checkpoint: CheckpointCallback | None = None,
        should_stop: Callable[[], bool] | None = None,
        on_progress: Callable[[int, int], None] | None = None,
        on_analysis: AnalysisCallback | None = None,
        until_step: int | None = None,
        members_to_stop: Callable[[], set[int]] | None = None,
        on_member_left: MemberLeftCallback | None = None,
    ) -> dict[str, Any]:
        """Train from self.step to until_step (default training.steps).

        should_stop() is polled before every step; on_progress(step, total) after it.
        on_checkpoint(step, blob, meta) runs every checkpoint_every steps and once at the end
        (whatever ended the run). on_analysis(trainer, step) runs every analysis.every steps and
        at the end; its rows (member = the current ensemble row) go to on_metrics with that
        step's evaluation rows, members mapped to their original indices.

        A pack (Trainer.for_members) differs: on_checkpoint runs once per member with that
        member's own single-run checkpoint and meta["member"] = its original index, and a
        member leaves the batch (on_member_left(member, reason, step), after its rows of that
        step and its last checkpoint) when an evaluation finds its train loss NaN or infinite
        ("nonfinite"), when it has grokked under training.stop_on_grok ("grokked"), or when
        members_to_stop(), polled before every step, names it ("cancelled"); the others train
        on, and the run ends when none is left. Returns the summary (see summary()).
        """
        t = self.spec.training
        target = t.steps if until_step is None else until_step
        run = _RunState(on_metrics, on_checkpoint, on_analysis, on_member_left)
        start_step, started = self.step, time.perf_counter()
        stopped = "completed"

        if self.step == 0:
            self._report(run, final=False)
            self._leave_after_eval(run)
        while self.step < target:
            if not self.members:
                stopped = "members_left"
                break
            if not self.is_pack and t.stop_on_grok and min(self.grok_streak) >= GROK_PATIENCE:
                stopped = "grokked"
                break
            if should_stop is not None and should_stop():
                stopped = "cancelled"
                break
            if self.is_pack and members_to_stop is not None:
                wanted = members_to_stop()
                cancelled = {e: "cancelled" for e, m in enumerate(self.members) if m in wanted}
                if cancelled:
                    self._leave(run, cancelled)
                    continue
            self.train_step()
            if on_progress is not None:
                on_progress(self.step, target)
            self._report(run, final=self.step == target)
            if self.step % t.checkpoint_every == 0:
                self._checkpoint(run)
            self._leave_after_eval(run)
        # A run resumed from its last checkpoint that trains no further step reports nothing
        # again: that step's metrics and checkpoint were sent before the checkpoint was taken.
        if self.members and (self.step != start_step or start_step == 0):
            self._report(run, final=True)
            if run.last_checkpoint != self.step:
                self._checkpoint(run)
        if not self.members:
            stopped = "members_left"
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
            rows += [
                {**row, "member": self.members[row["member"]]}
                for row in run.on_analysis(self, self.step) or []
                if not (self.is_pack and isinstance(row["value"], float) and math.isnan(row["value"]))
            ]
            run.last_analysis = self.step
        if rows and run.on_metrics is not None:
            run.on_metrics(rows)

    def _checkpoint(self, run: "_RunState", rows: list[int] | None = None) -> None:
        """The checkpoint of this step: the trainer's, or in a pack each member's (of `rows`)."""
        if run.on_checkpoint is not None:
            if not self.is_pack:
                run.on_checkpoint(self.step, self.to_checkpoint(), self.checkpoint_meta())
            else:
                blobs = self.member_checkpoints()
                for e in range(self.n_members) if rows is None else rows:
                    member = self.members[e]
                    meta = {**checkpoint_metadata(self.member_specs[member], self.step), "member": member}
                    run.on_checkpoint(self.step, blobs[e], meta)
        if rows is None:
            run.last_checkpoint = self.step

    # ---- members leaving a pack --------------------------------------------------------------
    def _leave_after_eval(self, run: "_RunState") -> None:
        """In a pack, right after an evaluation: members whose loss is not finite, or that have
        grokked under stop_on_grok, leave."""
        if not self.is_pack or run.last_eval != self.step or run.last_leave_check == self.step:
            return
        run.last_leave_check = self.step
        leaving: dict[int, str] = {}
        for e, values in enumerate(self.last_metrics):
            if not math.isfinite(values["train_loss"]):
                leaving[e] = "nonfinite"
            elif self.spec.training.stop_on_grok and self.grok_streak[e] >= GROK_PATIENCE:
                leaving[e] = "grokked"
        if leaving:
            self._leave(run, leaving)

    def _leave(self, run: "_RunState", leaving: dict[int, str]) -> None:
        """Rows `leaving` (current row -> reason) leave the pack: their rows of this step (if not
        sent yet) and last checkpoint first, then on_member_left; then the pack shrinks."""
        rows = sorted(leaving)
        if run.last_eval != self.step:
            eval_rows = self._eval_rows(only=rows)
            if eval_rows and run.on_metrics is not None:
                run.on_metrics(eval_rows)
        if run.last_checkpoint != self.step:
            self._checkpoint(run, rows)
        for e in rows:
            member = self.members[e]
            self.left[member] = {**self._member_summary(e), "left": leaving[e], "left_at_step": self.step}
            if run.on_member_left is not None:
                run.on_member_left(member, leaving[e], self.step)
        self._keep_rows([e for e in range(self.n_members) if e not in leaving])

    def _keep_rows(self, rows: list[int]) -> None:
        """Shrink the pack to these ensemble rows: rebuild the model, optimiser, filter and
        generators for the members left, from the split and merged state of the old ones."""
        if not rows:
            self.members = []
            return
        sizes = self.optimizer.member_sizes
        states = split_state(trainer_state_tensors(self), sizes, self.n_members)
        merged = merge_states([states[e] for e in rows], sizes)
        last_metrics = [self.last_metrics[e] for e in rows] if self.last_metrics else []
        self.members = [self.members[e] for e in rows]
        self._build(pack_spec([self.member_specs[m] for m in self.members]), init=False)
        load_trainer_state(self, merged)
        self.last_metrics = last_metrics

    # ---- summary -----------------------------------------------------------------------------
    def _member_summary(self, e: int, metrics: list[dict[str, float]] | None = None) -> dict[str, Any]:
        metrics = metrics or self.last_metrics or self.evaluate()
        return {
            "member": self.members[e], "seed": self.seeds[e], "lr": self.lrs[e],
            "weight_decay": self.weight_decays[e], "final": metrics[e],
            "memorization_step": self.memorization_step[e],
            "generalization_step": self.generalization_step[e],
        }

    def summary(self, stopped: str, steps_run: int, wall_s: float) -> dict[str, Any]:
        """steps (completed), steps_run (this call), stopped ("completed" | "grokked" |
        "cancelled" | "members_left": every member of a pack left), wall_s, steps_per_s, and per
        member: seed, lr, weight_decay, final metrics, memorization_step (first eval with
        train_acc >= 0.99) and generalization_step (val_acc). In a pack, members are listed by
        original index; one that left has "left" (its reason) and "left_at_step"."""
        members = []
        if self.members:
            metrics = self.last_metrics or self.evaluate()
            members = [self._member_summary(e, metrics) for e in range(self.n_members)]
        members = sorted(members + list(self.left.values()), key=lambda m: m["member"])
        return {
            "steps": self.step,
            "steps_run": steps_run,
            "stopped": stopped,
            "wall_s": wall_s,
            "steps_per_s": steps_per_second(steps_run, wall_s),
            "members": members,
        }

    # ---- checkpoints (worker/engine/checkpoint.py, worker/engine/pack.py) --------------------
    def checkpoint_meta(self) -> dict[str, Any]:
        return checkpoint_metadata(self.spec, self.step)

    def to_checkpoint(self) -> bytes:
        """Everything needed to continue bit-for-bit (see worker/engine/checkpoint.py)."""
        return trainer_checkpoint(self)

    def member_checkpoints(self) -> list[bytes]:
        """A pack's per-member checkpoints (one per current row): each is the single-run
        checkpoint of that member's own spec, so Trainer.from_checkpoint(member_spec, blob)
        continues it alone."""
        states = split_state(trainer_state_tensors(self), self.optimizer.member_sizes, self.n_members)
        return [
            state_checkpoint(state, self.member_specs[m], self.step)
            for state, m in zip(states, self.members)
        ]

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

    @classmethod
    def for_members(
        cls, member_specs: list[ExperimentSpec], device: str | torch.device | None = None
    ) -> "Trainer":
        """A pack: these single-run specs (whose shapes agree) trained as one ensemble."""
        return cls(pack_spec(member_specs), device, member_specs=member_specs)

    @classmethod
    def from_member_checkpoints(
        cls, member_specs: list[ExperimentSpec], blobs: list[bytes], device: str | torch.device | None = None
    ) -> "Trainer":
        """A pack resumed from one checkpoint per member (each written for its own spec), all
        at the same step."""
        if len(blobs) != len(member_specs):
            raise ValueError(f"need one checkpoint per member: {len(member_specs)} (got {len(blobs)})")
        states = [load_checkpoint_for(spec, blob) for spec, blob in zip(member_specs, blobs)]
        trainer = cls.for_members(member_specs, device)
        merged = merge_states(states, trainer.optimizer.member_sizes)
        load_trainer_state(trainer, merged)
        return trainer


@dataclass
class _RunState:
    """One Trainer.run call: its callbacks, and the last step each was done for (so that the
    final report and checkpoint never repeat the loop's)."""

    on_metrics: MetricsCallback | None
    on_checkpoint: CheckpointCallback | None
    on_analysis: AnalysisCallback | None
    on_member_left: MemberLeftCallback | None = None
    last_eval: int | None = None
    last_analysis: int | None = None
    last_checkpoint: int | None = None
    last_leave_check: int | None = None
