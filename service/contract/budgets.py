"""Budgets as products: what a spec asks for in total, checked against the GROKLAB_MAX_* caps.

Each cap of limits.Limits bounds one field; these bound the products of several (a checkpoint
every step of a million-step run, a moving-average filter of window x members x parameters
floats). Pure arithmetic on a validated spec, torch-free: the API refuses a spec over any of
them with a 422 naming the fields (see spec.ExperimentSpec._check_products).

Units: compute is members x parameters per member x examples per step x steps (a multiply-add
per parameter per example, up to a constant); memory is bytes of float32.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

# A validated service.contract.spec.ExperimentSpec. Not imported, even for typing: the spec
# calls these checks while it validates, so this module stays below it.
ExperimentSpec = Any

if TYPE_CHECKING:
    from service.contract.limits import Limits
    from service.contract.settings import Settings

FLOAT_BYTES = 4
# The full-grid analysis runs the model on ANALYSIS_CHUNK_ROWS // members pairs at a time
# (worker/analysis/grid.py reads it from here); per chunk it holds the logits and a few float64
# copies for the losses, and the forward pass's activations at the 3 token positions.
ANALYSIS_CHUNK_ROWS = 65536
ANALYSIS_LOGIT_COPIES = 4


@dataclass(frozen=True)
class Refusal:
    """One budget a spec exceeds: the fields it is made of and the sentence that says so."""

    loc: tuple[str, ...]
    msg: str
    value: object


def members(spec: ExperimentSpec) -> int:
    return spec.ensemble.size


def examples_per_step(spec: ExperimentSpec) -> int:
    """The minibatch, or the largest member's training set for full batch."""
    if spec.training.batch_size is not None:
        return spec.training.batch_size
    fractions = spec.member_values("train_fraction")
    return max(spec.n_examples(f) for f in fractions)


def compute(spec: ExperimentSpec) -> int:
    """members x parameters x examples per step x steps."""
    return members(spec) * spec.param_count() * examples_per_step(spec) * spec.training.steps


def checkpoints(spec: ExperimentSpec) -> int:
    """Checkpoints one run writes: one every checkpoint_every steps."""
    return spec.training.steps // spec.training.checkpoint_every


def evaluations(spec: ExperimentSpec) -> int:
    return spec.training.steps // spec.training.eval_every


def analyses(spec: ExperimentSpec) -> int:
    """Progress-measure analyses during training (none when analysis.every is null or the
    Fourier measures do not apply)."""
    every = spec.analysis.every
    if every is None or spec.fourier_unavailable() is not None:
        return 0
    return spec.training.steps // every


def optimizer_states(spec: ExperimentSpec) -> int:
    """Floats of optimizer state per parameter: Adam's two moments, SGD's momentum buffer."""
    opt = spec.optimizer
    if opt.name in ("adam", "adamw"):
        return 2
    return 1 if opt.momentum > 0 else 0


def grad_filter_states(spec: ExperimentSpec) -> int:
    """Floats of Grokfast filter state per parameter: the EMA, or the MA window."""
    f = spec.optimizer.grad_filter
    if f is None:
        return 0
    return f.window if f.kind == "ma" else 1


def activation_floats(spec: ExperimentSpec) -> int:
    """Floats of the forward pass's activations per example: at the 3 token positions, per layer
    the residual stream, q, k, v (4 d_model) and the MLP's hidden layer (d_mlp)."""
    m = spec.model
    return 3 * m.n_layers * (4 * m.d_model + m.d_mlp)


@dataclass(frozen=True)
class MemberMemory:
    """What one member of an ensemble holds, in bytes: the one memory model that both the
    budgets (checkpoint, Grokfast filter, analysis) and the packer (sweeps.default_pack_size:
    how many members share a GPU) read.

    weights, gradients, optimizer_state (Adam's two moments, SGD's momentum), grad_filter (the
    Grokfast EMA, or the MA window): float32, one of each per parameter. activations: a training
    step's forward and backward over its examples (the full grid for full batch), the hidden
    activations and the logits with their gradients. analysis: this member's share of one
    progress-measure analysis (its MLP activations over the grid, its [p, p] float64 tables and
    its rows of a chunk), 0 when no analysis runs."""

    weights: int
    gradients: int
    optimizer_state: int
    grad_filter: int
    activations: int
    analysis: int

    @property
    def checkpoint(self) -> int:
        """What a checkpoint stores of the member: weights, optimizer and filter state."""
        return self.weights + self.optimizer_state + self.grad_filter

    @property
    def training(self) -> int:
        """What the member holds while it trains."""
        return self.weights + self.gradients + self.optimizer_state + self.grad_filter + self.activations


def analysis_chunk_pairs(spec: ExperimentSpec) -> int:
    """Pairs per chunk of the full-grid forward: ANALYSIS_CHUNK_ROWS member-pairs shared among
    the members (worker/analysis/grid.py: chunk_pairs_for), at most the whole grid."""
    p = spec.task.n_elements
    return min(max(1, ANALYSIS_CHUNK_ROWS // members(spec)), p * p)


def member_memory(spec: ExperimentSpec) -> MemberMemory:
    """One member's memory (MemberMemory) under this spec."""
    param_bytes = spec.param_count() * FLOAT_BYTES
    p, m = spec.task.n_elements, spec.model
    rows = spec.n_pairs if spec.training.batch_size is None else spec.training.batch_size
    # per example the hidden activations, the logits and their probabilities; x2: the backward
    activations = FLOAT_BYTES * rows * (activation_floats(spec) + 2 * p) * 2
    analysis = 0
    if analyses(spec):
        held = p * p * (m.d_mlp * FLOAT_BYTES + 3 * 8)
        per_pair = ANALYSIS_LOGIT_COPIES * p * 8 + activation_floats(spec) * FLOAT_BYTES
        analysis = held + analysis_chunk_pairs(spec) * per_pair
    return MemberMemory(
        weights=param_bytes,
        gradients=param_bytes,
        optimizer_state=optimizer_states(spec) * param_bytes,
        grad_filter=grad_filter_states(spec) * param_bytes,
        activations=activations,
        analysis=analysis,
    )


def checkpoint_bytes(spec: ExperimentSpec) -> int:
    """members x parameters x 4 x (weights + optimizer state + filter state)."""
    return members(spec) * member_memory(spec).checkpoint


def grad_filter_bytes(spec: ExperimentSpec) -> int:
    """The moving-average filter's buffer: window x members x parameters x 4 (0 for EMA)."""
    f = spec.optimizer.grad_filter
    if f is None or f.kind != "ma":
        return 0
    return members(spec) * member_memory(spec).grad_filter


def analysis_bytes(spec: ExperimentSpec) -> int:
    """One progress-measure analysis, its full-grid forward run in chunks: every member's MLP
    activations over the grid, members x p*p x d_mlp x 4 (the neuron clustering reads them
    whole), three [p, p] float64 tables per member, and one chunk of members x
    analysis_chunk_pairs pairs, each with ANALYSIS_LOGIT_COPIES x p float64 logits and its
    activations. It grows with p^2, not with the p^3 logits. 0 when no analysis runs."""
    return members(spec) * member_memory(spec).analysis


def time_limit_s(spec: ExperimentSpec, settings: Settings) -> float | None:
    """The job's time limit: time_limit_floor_s + time_limit_s_per_compute x compute; None
    when both are 0 (no limit)."""
    if not settings.time_limit_floor_s and not settings.time_limit_s_per_compute:
        return None
    return settings.time_limit_floor_s + settings.time_limit_s_per_compute * compute(spec)


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"  # unreachable


def refusals(spec: ExperimentSpec, limits: Limits) -> list[Refusal]:
    """Every product budget of `limits` that the spec exceeds. A limit that is None is not
    checked; 0 allows nothing (a token made with --max-compute 0)."""
    out: list[Refusal] = []
    t, e = spec.training, spec.ensemble.size
    n = spec.param_count()

    def over(limit: int | float | None, value: int | float) -> bool:
        return limit is not None and value > limit

    if over(limits.max_compute, c := compute(spec)):
        out.append(Refusal(
            ("training", "steps"),
            f"compute ensemble.size x parameters x examples per step x training.steps = "
            f"{e} x {n} x {examples_per_step(spec)} x {t.steps} = {c:.3g}; at most "
            f"{limits.max_compute:.3g} allowed (GROKLAB_MAX_COMPUTE_PER_JOB): fewer steps, "
            "members, a smaller model or a minibatch (training.batch_size)",
            t.steps,
        ))
    if over(limits.max_checkpoints, k := checkpoints(spec)):
        out.append(Refusal(
            ("training", "checkpoint_every"),
            f"training.steps / training.checkpoint_every = {t.steps} / {t.checkpoint_every} = "
            f"{k} checkpoints; at most {limits.max_checkpoints} allowed "
            f"(GROKLAB_MAX_CHECKPOINTS_PER_JOB): checkpoint_every must be at least "
            f"{-(-t.steps // (limits.max_checkpoints + 1)) if t.steps > limits.max_checkpoints else 1}",
            t.checkpoint_every,
        ))
    if over(limits.max_evals, k := evaluations(spec)):
        out.append(Refusal(
            ("training", "eval_every"),
            f"training.steps / training.eval_every = {t.steps} / {t.eval_every} = {k} "
            f"evaluations; at most {limits.max_evals} allowed (GROKLAB_MAX_EVALS_PER_JOB): "
            f"eval_every must be at least {-(-t.steps // (limits.max_evals + 1))}",
            t.eval_every,
        ))
    if over(limits.max_analyses, k := analyses(spec)):
        every = spec.analysis.every
        out.append(Refusal(
            ("analysis", "every"),
            f"training.steps / analysis.every = {t.steps} / {every} = {k} analyses; at most "
            f"{limits.max_analyses} allowed (GROKLAB_MAX_ANALYSES_PER_JOB): analysis.every "
            f"must be at least {-(-t.steps // (limits.max_analyses + 1))}, or null",
            every,
        ))
    if over(limits.max_checkpoint_bytes, b := checkpoint_bytes(spec)):
        per = 1 + optimizer_states(spec) + grad_filter_states(spec)
        out.append(Refusal(
            ("ensemble", "size"),
            f"one checkpoint is ensemble.size x parameters x 4 bytes x {per} (weights, "
            f"optimizer and gradient-filter state) = {e} x {n} x 4 x {per} = {_size(b)}; at "
            f"most {_size(limits.max_checkpoint_bytes)} allowed (GROKLAB_MAX_CHECKPOINT_BYTES): "
            "fewer members or a smaller model",
            e,
        ))
    if over(limits.max_grad_filter_bytes, b := grad_filter_bytes(spec)):
        window = spec.optimizer.grad_filter.window  # type: ignore[union-attr]
        out.append(Refusal(
            ("optimizer", "grad_filter", "window"),
            f"the moving-average filter holds optimizer.grad_filter.window x ensemble.size x "
            f"parameters x 4 bytes = {window} x {e} x {n} x 4 = {_size(b)}; at most "
            f"{_size(limits.max_grad_filter_bytes)} allowed (GROKLAB_MAX_GRAD_FILTER_BYTES): a "
            "smaller window, fewer members, or kind 'ema'",
            window,
        ))
    if over(limits.max_analysis_bytes, b := analysis_bytes(spec)):
        p = spec.task.n_elements
        out.append(Refusal(
            ("task", "p"),
            f"one progress-measure analysis holds ensemble.size x p^2 x (model.d_mlp x 4 + 24) "
            f"bytes and a chunk of {ANALYSIS_CHUNK_ROWS} member-pairs = {_size(b)} (p={p}, "
            f"ensemble.size={e}, d_mlp={spec.model.d_mlp}); at most "
            f"{_size(limits.max_analysis_bytes)} allowed "
            "(GROKLAB_MAX_ANALYSIS_BYTES): a smaller p or ensemble, or analysis.every null",
            p,
        ))
    return out


def most_members(spec: ExperimentSpec, limits: Limits, at_most: int) -> int:
    """The largest ensemble of copies of this single-run spec (at most at_most) that keeps
    within the per-job budgets of `limits`: how many sweep members may train together as one
    pack, which is one job (compute, checkpoint bytes, filter and analysis memory grow with the
    members). The spec itself passed them, so at least 1."""

    def fits(n: int) -> bool:
        ensemble = spec.ensemble.model_copy(update={"size": n})
        return not refusals(spec.model_copy(update={"ensemble": ensemble}), limits)

    low, high = 1, max(1, at_most)
    while low < high:  # the budgets grow with the members: the largest n that fits
        middle = (low + high + 1) // 2
        low, high = (middle, high) if fits(middle) else (low, middle - 1)
    return low
