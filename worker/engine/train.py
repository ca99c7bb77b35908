"""The training loop: a Trainer owns the data, the ensemble, the optimiser and the run's state,
and reports through plain callbacks (no database, no queue).

    trainer = Trainer(spec)                      # or Trainer.from_checkpoint(spec, blob)
    summary = trainer.run(on_metrics=print)

A trainer trains the **members** of one job as one batched ensemble: one experiment (whose spec
may itself be an ensemble of E rows), or a sweep's pack of single-row experiments
(Trainer.for_members). Either way each member trains exactly as it would alone, is checkpointed
on its own, and leaves the batch the same way (see Trainer.run).

Evaluation happens at step 0, at log-spaced early steps (1, 2, 4, ... below eval_every), every
eval_every steps, and at the last step; each is one on_metrics call with rows
{"step", "member", "name", "value"} for train_loss, train_acc, val_loss, val_acc and weight_norm
(L2 norm of all of a row's parameters), plus any rows on_analysis returned for that step.
"member" is the row's original index in the ensemble (Trainer.row_owner says which job member
it belongs to).
"""
from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import Tensor

from service.science.grokking import ACC_THRESHOLD, EVAL_METRICS, GROK_PATIENCE
from service.science.progress import steps_per_second
from service.contract.spec import ExperimentSpec
from service.science.sweeps import pack_spec
from worker.engine.checkpoint import (checkpoint_metadata, load_checkpoint_for, load_trainer_state,
                                      state_checkpoint, trainer_checkpoint, trainer_state_tensors)
from worker.engine.compiled import training_forward
from worker.engine.evaluate import loss_and_accuracy, masked_loss_and_accuracy, weight_norms
from worker.engine.models import build_model, member_seeds
from worker.engine.optim import (
    build_grad_filter,
    build_optimizer,
    member_losses,
    orthogonalize_gradients_,
    per_example_loss,
)
from worker.engine.pack import merge_states, split_state
from worker.engine.schedule import schedule_stage
from worker.engine.sets import training_sets

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
    """One job's training. Trainer(spec) trains one experiment (its spec.ensemble.size rows);
    Trainer.for_members(member_specs) a **pack**: single-row experiments whose shapes agree,
    trained as one ensemble whose row e trains exactly as member_specs[e] would alone.

    self.member_specs are the job's members (experiments); self.members maps the current
    ensemble rows to their original rows, and self.row_owner[original row] is the member that
    row belongs to. self.spec is the engine spec of the rows still training."""

    def __init__(
        self, spec: ExperimentSpec, device: str | torch.device | None = None,
        member_specs: list[ExperimentSpec] | None = None, compile_model: bool | str = False,
    ):
        self.device = resolve_device(device if device is not None else spec.training.device)
        self.compile_model = compile_model  # worker/engine/compiled.py: an execution option
        self.member_specs = list(member_specs) if member_specs is not None else [spec]
        if len(self.member_specs) > 1 and any(s.ensemble.size != 1 for s in self.member_specs):
            raise ValueError("the members of a pack are single runs (ensemble.size 1 each)")
        self.row_owner: list[int] = (
            [0] * spec.ensemble.size if len(self.member_specs) == 1 else list(range(len(self.member_specs)))
        )
        self.members: list[int] = list(range(spec.ensemble.size))
        self.left: dict[int, dict[str, Any]] = {}  # original row -> its summary when it left
        self._build(spec, init=True)
        E = self.n_members
        self.step = 0
        self.memorization_step: list[int | None] = [None] * E
        self.generalization_step: list[int | None] = [None] * E
        self.grok_streak = [0] * E
        self.last_metrics: list[dict[str, float]] = []

    def job_members(self) -> list[int]:
        """The members (indices into member_specs) that still train, in order."""
        return sorted({self.row_owner[row] for row in self.members})

    def rows_of(self, member: int) -> list[int]:
        """The current ensemble rows of a member."""
        return [e for e, row in enumerate(self.members) if self.row_owner[row] == member]

    def _build(self, spec: ExperimentSpec, init: bool) -> None:
        """Data, model, optimiser, filter and generators of spec (weights drawn if init)."""
        self.spec = spec
        self.n_members = spec.ensemble.size
        self.seeds = member_seeds(spec)
        self.lrs = spec.member_values("lr")
        self.weight_decays = spec.member_values("weight_decay")
        self.sets = training_sets(spec, self.device)

        self.model = build_model(spec, self.device, init=init)
        self._train_forward = training_forward(self.model, self.compile_model)
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
        if on_cuda and spec.training.tf32:
            torch.backends.cuda.matmul.allow_tf32 = True
        self._autocast = on_cuda and spec.training.autocast_bf16

    def sync_data_schedule(self) -> None:
        """The sets of this step's data_schedule stage (rebuilt when the stage changed)."""
        stage = schedule_stage(self.spec, self.step)
        if stage != self.sets.stage:
            self.sets = training_sets(self.spec, self.device, stage)

    # ---- one step ----------------------------------------------------------------------------
    def next_batch(self) -> tuple[Tensor, Tensor]:
        """This step's batch of every row (worker/engine/sets.py: TrainingSets.batch)."""
        self.sync_data_schedule()
        return self.sets.batch(self.spec, self.batch_generators, self.device)

    def _autocast_context(self):
        if self._autocast:
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def train_step(self) -> Tensor:
        """One optimiser step of every member; returns the members' losses [E] (detached)."""
        tokens, labels = self.next_batch()
        with self._autocast_context():
            logits = self._train_forward(tokens)
        opt = self.spec.optimizer
        if self.sets.train_weights is None or self.spec.training.batch_size is not None:
            losses = member_losses(logits, labels, opt.loss, opt.loss_float64)
        else:  # members with training sets of different sizes: a weighted (masked) mean
            losses = (per_example_loss(logits, labels, opt.loss, opt.loss_float64) * self.sets.train_weights).sum(1)
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
    def weight_norms(self) -> Tensor:
        """L2 norm over all of each row's parameters [E]."""
        return weight_norms(self.params)

    def evaluate(self) -> list[dict[str, float]]:
        """Per row: train_loss, train_acc, val_loss, val_acc, weight_norm on the full sets."""
        self.sync_data_schedule()
        was_training = self.model.training
        self.model.eval()
        E, opt, sets = self.n_members, self.spec.optimizer, self.sets
        if sets.shared_split:
            train_loss, train_acc = loss_and_accuracy(self.model, sets.train_tokens, sets.train_labels, E, opt)
            val_loss, val_acc = loss_and_accuracy(self.model, sets.val_tokens, sets.val_labels, E, opt)
        else:
            (train_loss, train_acc), (val_loss, val_acc) = masked_loss_and_accuracy(
                self.model, sets.data.tokens, sets.data.labels, [sets.train_masks, sets.val_masks], E, opt
            )
        norms = self.weight_norms()
        self.model.train(was_training)
        return [
            {
                "train_loss": float(train_loss[e]), "train_acc": float(train_acc[e]),
                "val_loss": float(val_loss[e]), "val_acc": float(val_acc[e]),
                "weight_norm": float(norms[e]),
            }
            for e in range(E)
        ]

    def _eval_rows(self, only: list[int] | None = None) -> list[MetricRow]:
        """Evaluate; update the memorisation/generalisation steps and grok streaks and return the
        metric rows (with original row indices) of every row, or of the rows `only`."""
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
        """Which (a, b) pairs are in the training set: [n, n], or [E, n, n] when rows differ."""
        self.sync_data_schedule()
        return self.sets.train_mask_grid(self.n_members)

    # ---- the run -----------------------------------------------------------------------------
    def run(
        self,
        on_metrics: MetricsCallback | None = None,
        on_checkpoint: CheckpointCallback | None = None,
        should_stop: Callable[[], bool] | None = None,
        on_progress: Callable[[int, int], None] | None = None,
        on_analysis: AnalysisCallback | None = None,
        until_step: int | None = None,
        members_to_stop: Callable[[], dict[int, str]] | None = None,
        on_member_left: MemberLeftCallback | None = None,
    ) -> dict[str, Any]:
        """Train from self.step to until_step (default training.steps).

        should_stop() is polled before every step and stops the whole run ("cancelled");
        on_progress(step, total) runs after each step. on_checkpoint(step, blob, meta) runs
        every checkpoint_every steps and once at the end (whatever ended the run), once per
        member with that member's own single-run checkpoint and meta["member"] = its index.
        on_analysis(trainer, step) runs every analysis.every steps and at the end; its rows
        (member = the current ensemble row) go to on_metrics with that step's evaluation rows,
        rows mapped to their original indices (NaN values dropped, as evaluation's are).

        A member leaves the batch (on_member_left(member, reason, step), after its rows of that
        step and its last checkpoint) when an evaluation finds the train loss of every one of
        its rows NaN or infinite ("nonfinite"), when all its rows have grokked under
        training.stop_on_grok ("grokked"), or when members_to_stop(), polled before every step,
        names it (member -> reason: "cancelled", "paused", "pruned"); the others train on, and the
        run ends when none is left. A member that leaves "paused" gets its checkpoint but no
        extra evaluation: resumed from that checkpoint, it records exactly the points of a run
        that was never paused.
        Returns the summary (see summary()).
        """
        t = self.spec.training
        target = t.steps if until_step is None else until_step
        run = _RunState(on_metrics, on_checkpoint, on_analysis, on_member_left)
        start_step, started = self.step, time.perf_counter()
        stopped = "completed"

        if self.step == 0:
            self._report(run, final=False)
            self._leave_after_eval(run)
        while self.step < target and self.members:
            if should_stop is not None and should_stop():
                stopped = "cancelled"
                break
            if members_to_stop is not None:
                wanted = members_to_stop()
                stopping = {m: wanted[m] for m in self.job_members() if m in wanted}
                if stopping:
                    self._leave(run, stopping)
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
        if not self.members:  # every member left: for one reason, that reason
            stopped = run.reasons[0] if len(set(run.reasons)) == 1 else "members_left"
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
                if not (isinstance(row["value"], float) and math.isnan(row["value"]))
            ]
            run.last_analysis = self.step
        if rows and run.on_metrics is not None:
            run.on_metrics(rows)

    def _checkpoint(self, run: "_RunState", members: list[int] | None = None) -> None:
        """The checkpoint of this step, one per member (of `members`, default all)."""
        if run.on_checkpoint is not None:
            for member, blob in self.member_checkpoints(members).items():
                meta = {**checkpoint_metadata(self.member_specs[member], self.step), "member": member}
                run.on_checkpoint(self.step, blob, meta)
        if members is None:
            run.last_checkpoint = self.step

    # ---- members leaving the batch -----------------------------------------------------------
    def _leave_after_eval(self, run: "_RunState") -> None:
        """Right after an evaluation: members whose rows' train losses are all not finite, or
        that have all grokked under stop_on_grok, leave."""
        if run.last_eval != self.step or run.last_leave_check == self.step:
            return
        run.last_leave_check = self.step
        leaving: dict[int, str] = {}
        for member in self.job_members():
            rows = self.rows_of(member)
            if not any(math.isfinite(self.last_metrics[e]["train_loss"]) for e in rows):
                leaving[member] = "nonfinite"
            elif self.spec.training.stop_on_grok and min(self.grok_streak[e] for e in rows) >= GROK_PATIENCE:
                leaving[member] = "grokked"
        if leaving:
            self._leave(run, leaving)

    def _leave(self, run: "_RunState", leaving: dict[int, str]) -> None:
        """Members `leaving` (member -> reason) leave the batch: their rows of this step (if not
        sent yet) and last checkpoint first, then on_member_left; then the ensemble shrinks."""
        rows = sorted(e for member in leaving for e in self.rows_of(member))
        evaluated = [e for e in rows if leaving[self.row_owner[self.members[e]]] != "paused"]
        if run.last_eval != self.step and evaluated:
            eval_rows = self._eval_rows(only=evaluated)
            if eval_rows and run.on_metrics is not None:
                run.on_metrics(eval_rows)
        if run.last_checkpoint != self.step:
            self._checkpoint(run, sorted(leaving))
        for e in rows:
            reason = leaving[self.row_owner[self.members[e]]]
            self.left[self.members[e]] = {**self._member_summary(e), "left": reason, "left_at_step": self.step}
        for member in sorted(leaving):
            run.reasons.append(leaving[member])
            if run.on_member_left is not None:
                run.on_member_left(member, leaving[member], self.step)
        self._keep_rows([e for e in range(self.n_members) if e not in rows])

    def _keep_rows(self, rows: list[int]) -> None:
        """Shrink the ensemble to these rows (each a single-row member of a pack): rebuild the
        model, optimiser, filter and generators from the split and merged state of the old ones."""
        if not rows:
            self.members = []
            return
        sizes = self.optimizer.member_sizes
        states = split_state(trainer_state_tensors(self), sizes, self.n_members)
        merged = merge_states([states[e] for e in rows], sizes)
        last_metrics = [self.last_metrics[e] for e in rows] if self.last_metrics else []
        self.members = [self.members[e] for e in rows]
        self._build(pack_spec([self.member_specs[self.row_owner[row]] for row in self.members]), init=False)
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
        """steps (completed), steps_run (this call), stopped ("completed" | "cancelled" | the
        reason every member left: "grokked", "nonfinite", or "members_left" for mixed reasons),
        wall_s, steps_per_s, and per row: seed, lr, weight_decay, final metrics,
        memorization_step (first eval with train_acc >= 0.99) and generalization_step (val_acc),
        listed by original row; one that left has "left" (its reason) and "left_at_step"."""
        rows = []
        if self.members:
            metrics = self.last_metrics or self.evaluate()
            rows = [self._member_summary(e, metrics) for e in range(self.n_members)]
        rows = sorted(rows + list(self.left.values()), key=lambda m: m["member"])
        return {
            "steps": self.step,
            "steps_run": steps_run,
            "stopped": stopped,
            "wall_s": wall_s,
            "steps_per_s": steps_per_second(steps_run, wall_s),
            "members": rows,
        }

    # ---- checkpoints (worker/engine/checkpoint.py, worker/engine/pack.py) --------------------
    def checkpoint_meta(self) -> dict[str, Any]:
        return checkpoint_metadata(self.spec, self.step)

    def to_checkpoint(self) -> bytes:
        """Everything needed to continue bit-for-bit (see worker/engine/checkpoint.py)."""
        return trainer_checkpoint(self)

    def member_checkpoints(self, members: list[int] | None = None) -> dict[int, bytes]:
        """Each member's checkpoint (of `members`, default all still training): the single-run
        checkpoint of its own spec, so Trainer.from_checkpoint(member_spec, blob) continues it
        alone. A trainer of one member holds exactly that member's state."""
        members = self.job_members() if members is None else members
        state = trainer_state_tensors(self)
        if len(self.job_members()) == 1:
            return {m: state_checkpoint(state, self.member_specs[m], self.step) for m in members}
        states = split_state(state, self.optimizer.member_sizes, self.n_members)
        return {
            m: state_checkpoint(states[self.rows_of(m)[0]], self.member_specs[m], self.step)
            for m in members
        }

    @classmethod
    def from_checkpoint(
        cls, spec: ExperimentSpec, blob: bytes, device: str | torch.device | None = None,
        compile_model: bool | str = False,
    ) -> "Trainer":
        """A trainer that continues exactly where the checkpoint's run stopped. The checkpoint
        must have been written for this very spec (same spec_hash)."""
        tensors = load_checkpoint_for(spec, blob)
        trainer = cls(spec, device, compile_model=compile_model)
        load_trainer_state(trainer, tensors)
        return trainer

    @classmethod
    def for_members(
        cls, member_specs: list[ExperimentSpec], device: str | torch.device | None = None,
        compile_model: bool | str = False,
    ) -> "Trainer":
        """The job of these members: one experiment, or a pack of single runs whose shapes
        agree, trained as one ensemble."""
        if len(member_specs) == 1:
            return cls(member_specs[0], device, compile_model=compile_model)
        return cls(pack_spec(member_specs), device, member_specs=member_specs, compile_model=compile_model)

    @classmethod
    def from_member_checkpoints(
        cls, member_specs: list[ExperimentSpec], blobs: list[bytes], device: str | torch.device | None = None,
        compile_model: bool | str = False,
    ) -> "Trainer":
        """The job resumed from one checkpoint per member (each written for its own spec), all
        at the same step."""
        if len(blobs) != len(member_specs):
            raise ValueError(f"need one checkpoint per member: {len(member_specs)} (got {len(blobs)})")
        if len(member_specs) == 1:
            return cls.from_checkpoint(member_specs[0], blobs[0], device, compile_model)
        states = [load_checkpoint_for(spec, blob) for spec, blob in zip(member_specs, blobs)]
        trainer = cls.for_members(member_specs, device, compile_model)
        merged = merge_states(states, trainer.optimizer.member_sizes)
        load_trainer_state(trainer, merged)
        return trainer


@dataclass
class _RunState:
    """One Trainer.run call: its callbacks, the last step each was done for (so that the final
    report and checkpoint never repeat the loop's), and why members left."""

    on_metrics: MetricsCallback | None
    on_checkpoint: CheckpointCallback | None
    on_analysis: AnalysisCallback | None
    on_member_left: MemberLeftCallback | None = None
    last_eval: int | None = None
    last_analysis: int | None = None
    last_checkpoint: int | None = None
    last_leave_check: int | None = None
    reasons: list[str] = field(default_factory=list)
