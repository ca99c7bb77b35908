"""The experiment spec: the contract between a researcher, the REST API and the training engine.

Torch-free on purpose: the API server validates specs without importing the engine.
A preset fills the defaults; any field given explicitly overrides it (deep merge).
"""
from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BeforeValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    create_model,
    field_validator,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError

from service.contract.limits import Limits, limits_in
from service.contract.members import OPTIONAL_PER_MEMBER, PER_MEMBER_FIELDS, member_values
from service.contract.notify import NOTIFY_EVENTS, url_host_port, url_refusal
from service.contract.presets import PRESETS

MODULAR_OPS: tuple[str, ...] = (
    "x+y", "x-y", "x*y", "x*y, y>0", "x/y", "x/y if y odd else x-y", "x^2+y^2", "x^2+xy+y^2",
    "x^2+xy+y^2+x", "x^3+xy", "x^3+xy^2+y",
)
DIVIDING_OPS: frozenset[str] = frozenset({"x/y", "x/y if y odd else x-y"})
# Ops whose pairs leave out y = 0: x/y (no inverse), and x*y as Power et al. 2022 and Lee et al.
# 2024 train it (0 <= x < p, 0 < y < p: p * (p - 1) pairs, no row of zeros to learn).
NONZERO_Y_OPS: frozenset[str] = frozenset({"x/y", "x*y, y>0"})
PERMUTATION_OPS: tuple[str, ...] = ("x*y", "x*y*x^-1", "x*y*x")
S5_ORDER = 120
# The Fourier progress measures run the model on all p*p pairs and hold p^3 logits.
FOURIER_MAX_P = 512


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Return base with override laid on top; nested dicts merge, everything else replaces."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _array_as_tuple(value: Any) -> Any:
    """A JSON array for a tuple field (strict validation takes only tuples)."""
    return tuple(value) if isinstance(value, list) else value


class _Section(BaseModel):
    # strict: a number is not read from a string, nor a bool from 0, 1 or "yes" (what the
    # OpenAPI schema says is what is accepted); JSON arrays still fill tuples.
    model_config = ConfigDict(extra="forbid", strict=True)


class TaskSpec(_Section):
    kind: Literal["modular", "permutation"] = "modular"
    op: str = "x+y"
    p: int | None = Field(113, description="Modulus for modular tasks (ignored for permutation).")
    group: Literal["S5"] = "S5"
    train_fraction: float = Field(0.3, gt=0, lt=1)
    split_seed: int = 0

    @field_validator("op")
    @classmethod
    def _check_op(cls, op: str, info: ValidationInfo) -> str:
        kind = info.data.get("kind", "modular")
        valid = MODULAR_OPS if kind == "modular" else PERMUTATION_OPS
        if op not in valid:
            raise ValueError(
                f"unknown op {op!r} for kind {kind!r}; valid ops: {', '.join(map(repr, valid))}"
            )
        return op

    @field_validator("p")
    @classmethod
    def _check_p(cls, p: int | None, info: ValidationInfo) -> int | None:
        if info.data.get("kind", "modular") != "modular":
            return p
        if p is None or p < 2:
            raise ValueError(f"p must be an integer >= 2 for modular tasks (got {p})")
        limit = limits_in(info).max_p
        if limit is not None and p > limit:
            raise ValueError(f"p must be at most {limit} (GROKLAB_MAX_P) (got {p})")
        op = info.data.get("op")
        if op in DIVIDING_OPS and not is_prime(p):
            raise ValueError(f"p must be prime for op {op!r} (got {p})")
        return p

    @property
    def n_elements(self) -> int:
        """Size of the group: the number of output classes."""
        return int(self.p) if self.kind == "modular" else S5_ORDER


class ModelSpec(_Section):
    arch: Literal["transformer", "mlp"] = "transformer"
    n_layers: int = Field(1, ge=1, le=12, description="Transformer blocks, or MLP hidden layers.")
    d_model: int = Field(128, ge=1, le=4096, description="Residual / embedding width.")
    n_heads: int = Field(4, ge=1, le=64)
    d_mlp: int = Field(512, ge=1, le=65536, description="MLP hidden width.")
    act: Literal["relu", "gelu", "quadratic"] = "relu"
    layer_norm: bool = False
    init_scale: float = Field(1.0, gt=0, le=1000, description="Omnigrok init-scale multiplier alpha.")
    init: Literal["normal", "pytorch"] = Field("normal", description=(
        "normal: weights N(0, 1/fan_in), the unembedding N(0, 1/n_out) (Nanda et al. 2023); pytorch: "
        "torch.nn's defaults, N(0, 1) embeddings and uniform nn.Linear weights (Lee et al. 2024)."))

    @field_validator("n_heads")
    @classmethod
    def _check_heads(cls, n_heads: int, info: ValidationInfo) -> int:
        d_model = info.data.get("d_model")
        if info.data.get("arch") == "transformer" and d_model and d_model % n_heads != 0:
            raise ValueError(
                f"d_model must be divisible by n_heads (got d_model={d_model}, n_heads={n_heads})"
            )
        return n_heads

    @field_validator("act")
    @classmethod
    def _check_act(cls, act: str, info: ValidationInfo) -> str:
        if info.data.get("arch") == "transformer" and act == "quadratic":
            raise ValueError("act 'quadratic' is for arch 'mlp'; the transformer allows relu, gelu")
        return act


class GradFilterSpec(_Section):
    """Grokfast gradient filters (Lee et al. 2024), applied between backward and step."""

    kind: Literal["ema", "ma"]
    alpha: float = Field(0.98, ge=0, lt=1, description="EMA momentum (kind 'ema').")
    window: int = Field(100, ge=1, le=10000, description="Moving-average window (kind 'ma').")
    lamb: float = Field(2.0, ge=0, le=1000, description="Amplification of the slow gradient.")


class OptimizerSpec(_Section):
    name: Literal["adamw", "adam", "sgd"] = "adamw"
    lr: float = Field(1e-3, gt=0, le=10)
    weight_decay: float = Field(1.0, ge=0, le=100)
    betas: Annotated[tuple[float, float], BeforeValidator(_array_as_tuple)] = (0.9, 0.98)
    eps: float = Field(1e-8, gt=0, le=1)
    momentum: float = Field(0.0, ge=0, lt=1, description="SGD momentum.")
    warmup_steps: int = Field(10, ge=0)
    grad_filter: GradFilterSpec | None = None
    orthogonal_grad: bool = Field(False, description="Perpendicular gradient (Prieto et al. 2025).")
    loss: Literal["cross_entropy", "stablemax"] = "cross_entropy"
    loss_float64: bool = Field(False, description="Compute the loss in float64.")

    @field_validator("betas")
    @classmethod
    def _check_betas(cls, v: tuple[float, float]) -> tuple[float, float]:
        for b in v:
            if not 0 <= b < 1:
                raise ValueError(f"betas must each be in [0, 1) (got {list(v)})")
        return v


# Sections added after specs were first stored: left out of spec_hash while None.
OPTIONAL_SECTIONS: tuple[str, ...] = ("data_schedule", "notify")


class _Ensemble(_Section):
    """E runs trained as one batched computation, each with its own parameters.

    Every list has one entry per member; None means the scalar of the model/task/optimizer
    section for every member. A sweep's pack (service/science/sweeps.py: pack_spec) fills all
    of them."""

    size: int = Field(1, ge=1)

    @model_validator(mode="after")
    def _check_lists(self, info: ValidationInfo) -> "_Ensemble":
        limit = limits_in(info).max_ensemble
        if limit is not None and self.size > limit:
            raise ValueError(f"size must be at most {limit} (GROKLAB_MAX_ENSEMBLE) (got {self.size})")
        for field in PER_MEMBER_FIELDS:
            values = getattr(self, field.name)
            if values is not None and len(values) != self.size:
                raise ValueError(
                    f"{field.name} must have one entry per member: {self.size} (got {len(values)})"
                )
        for field in PER_MEMBER_FIELDS:
            values = getattr(self, field.name)
            if values is not None and field.check is not None and not all(map(field.check, values)):
                raise ValueError(f"{field.name} entries must be in {field.allowed} (got {values})")
        return self

    def per_member(self, name: str, default: Any) -> list[Any]:
        """The list `name`, or [default] * size when it is not given."""
        values = getattr(self, name)
        return list(values) if values is not None else [default] * self.size


# The per-member lists are those of service/contract/members.py's table, in its order:
# ensemble.<name>: list[kind] | None, checked by _Ensemble._check_lists.
EnsembleSpec = create_model(
    "EnsembleSpec",
    __base__=_Ensemble,
    __doc__=_Ensemble.__doc__,
    __module__=__name__,
    **{f.name: (list[f.kind] | None, Field(None, description=f.description))
       for f in PER_MEMBER_FIELDS},
)


class TrainingSpec(_Section):
    steps: int = Field(40000, ge=1)
    batch_size: int | None = Field(None, ge=1, description="None means full batch.")
    seed: int = 0
    eval_every: int = Field(100, ge=1)
    checkpoint_every: int = Field(1000, ge=1)
    stop_on_grok: bool = False
    device: Literal["auto", "cpu", "cuda"] = "auto"
    tf32: bool = Field(False, description="Allow TF32 matmuls on the GPU.")
    autocast_bf16: bool = Field(False, description="bf16 autocast on the GPU.")

    @field_validator("steps")
    @classmethod
    def _check_steps(cls, v: int, info: ValidationInfo) -> int:
        limit = limits_in(info).max_steps
        if limit is not None and v > limit:
            raise ValueError(f"steps must be at most {limit} (GROKLAB_MAX_STEPS) (got {v})")
        return v


class AnalysisSpec(_Section):
    every: int | None = Field(1000, ge=1, description="Progress measures every K steps; null: off.")


class DataStage(_Section):
    """One step of a data curriculum (Varma et al. 2023, "Explaining grokking through circuit
    efficiency"): from at_step on, the training set is a seeded subset of the one before it,
    train_fraction of all pairs. Shrunk below the critical dataset size, a grokked run ungroks."""

    at_step: int = Field(ge=1, description="Completed steps after which the smaller set is used.")
    train_fraction: float = Field(gt=0, lt=1, description="New training set size / all pairs.")


class NotifySpec(_Section):
    """Alerts: the worker POSTs a signed JSON event to url (see service/contract/notify.py)."""

    url: str = Field(max_length=2000, description="http(s) URL on a GROKLAB_NOTIFY_ALLOWED_HOSTS host.")
    events: list[Literal[NOTIFY_EVENTS]] = Field(  # type: ignore[valid-type]
        default_factory=lambda: list(NOTIFY_EVENTS), min_length=1,
        description="Which of memorized, grokked, ungrokked, finished, failed to send (default all).",
    )

    @field_validator("url")
    @classmethod
    def _check_url(cls, url: str, info: ValidationInfo) -> str:
        try:
            url_host_port(url)
            allowed = limits_in(info).notify_allowed_hosts
            refusal = None if allowed is None else url_refusal(url, allowed)
        except ValueError as exc:
            raise ValueError(f"notify.url {exc}") from None
        if refusal is not None:
            raise ValueError(f"notify.url {refusal}")
        return url


class ExperimentSpec(_Section):
    name: str = Field("experiment", min_length=1, max_length=200)
    preset: Literal["nanda2023", "power2022", "ci-small", "grokfast2024", "prieto2025"] | None = (
        "nanda2023"
    )
    task: TaskSpec
    model: ModelSpec
    optimizer: OptimizerSpec
    training: TrainingSpec
    ensemble: EnsembleSpec = EnsembleSpec()
    analysis: AnalysisSpec = AnalysisSpec()
    data_schedule: list[DataStage] | None = Field(
        None, description="Shrink the training set during the run (ungrokking, curricula)."
    )
    notify: NotifySpec | None = None

    @model_validator(mode="before")
    @classmethod
    def _apply_preset(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        preset = data.get("preset", "nanda2023")
        if not isinstance(preset, str) or preset not in PRESETS:
            # An unknown preset is reported by the field validator; no defaults to lay.
            base = PRESETS["nanda2023"]
        else:
            base = PRESETS[preset]
        return deep_merge(base, data)

    @field_validator("data_schedule", mode="before")
    @classmethod
    def _cap_stages(cls, stages: Any, info: ValidationInfo) -> Any:
        limit = limits_in(info).max_data_schedule_stages
        if limit is not None and isinstance(stages, list) and len(stages) > limit:
            raise ValueError(f"data_schedule has {len(stages)} stages; at most {limit} allowed "
                             "(GROKLAB_MAX_DATA_SCHEDULE_STAGES)")
        return stages

    @model_validator(mode="after")
    def _check_budget(self, info: ValidationInfo) -> "ExperimentSpec":
        limit = limits_in(info).max_params
        n = self.param_count()
        if limit is not None and n > limit:
            raise ValueError(
                f"model has {n} parameters per member; at most {limit} allowed (GROKLAB_MAX_PARAMS)"
            )
        if self.ensemble.grad_filter_lamb is not None and self.optimizer.grad_filter is None:
            raise ValueError("ensemble.grad_filter_lamb needs optimizer.grad_filter (got none)")
        if self.training.batch_size is not None and self.training.batch_size > self.n_train:
            # Larger than the training set is the same as full batch; say so instead of guessing.
            raise ValueError(
                f"training.batch_size must be at most the training set size {self.n_train} "
                f"(got {self.training.batch_size}); use null for full batch"
            )
        return self

    @model_validator(mode="after")
    def _check_products(self, info: ValidationInfo) -> "ExperimentSpec":
        """Budgets on products of fields (service/contract/budgets.py), each error at the field to
        change (its loc), saying the product, the limit and what is allowed."""
        from service.contract.budgets import refusals

        found = refusals(self, limits_in(info))
        if found:
            raise ValidationError.from_exception_data("ExperimentSpec", [
                InitErrorDetails(type=PydanticCustomError("value_error", "{msg}", {"msg": r.msg}),
                                 loc=r.loc, input=r.value)
                for r in found
            ])
        return self

    @model_validator(mode="after")
    def _check_data_schedule(self) -> "ExperimentSpec":
        """Steps strictly increase inside (0, training.steps); fractions strictly shrink, below
        the training fraction of every member; each stage keeps at least one example (and a
        minibatch's worth)."""
        fractions = self.member_values("train_fraction")
        before, before_name = min(fractions), (
            "task.train_fraction" if self.ensemble.train_fraction is None
            else "every member's ensemble.train_fraction"
        )
        if self.data_schedule == []:
            self.data_schedule = None  # no stage: the same spec (and spec_hash) as without one
        last_step, steps = 0, self.training.steps
        for i, stage in enumerate(self.data_schedule or []):
            here = f"data_schedule[{i}]"
            if stage.at_step >= steps:
                raise ValueError(f"{here}.at_step must be below training.steps {steps} (got {stage.at_step})")
            if stage.at_step <= last_step:
                raise ValueError(
                    f"{here}.at_step must be greater than data_schedule[{i - 1}].at_step "
                    f"{last_step}: steps strictly increase (got {stage.at_step})"
                )
            if stage.train_fraction >= before:
                raise ValueError(
                    f"{here}.train_fraction must be below {before_name} {before}: the training "
                    f"set only shrinks (got {stage.train_fraction})"
                )
            n = int(round(stage.train_fraction * self.n_pairs))
            if n < 1:
                raise ValueError(
                    f"{here}.train_fraction leaves no training example of the {self.n_pairs} "
                    f"pairs; at least {0.5 / self.n_pairs:.2g} (got {stage.train_fraction})"
                )
            if self.training.batch_size is not None and n < self.training.batch_size:
                raise ValueError(
                    f"{here}.train_fraction leaves {n} training examples, fewer than "
                    f"training.batch_size {self.training.batch_size}"
                )
            last_step, before, before_name = stage.at_step, stage.train_fraction, f"{here}.train_fraction"
        return self

    @model_validator(mode="after")
    def _cap_stored_size(self, info: ValidationInfo) -> "ExperimentSpec":
        limit = limits_in(info).max_spec_bytes
        if limit is not None and (size := len(self.model_dump_json())) > limit:
            raise ValueError(f"the spec is {size} bytes as stored (JSON, presets resolved); at "
                             f"most {limit} allowed (GROKLAB_MAX_SPEC_BYTES)")
        return self

    # ---- derived facts the engine and the service both use -------------------------------
    @property
    def n_pairs(self) -> int:
        n = self.task.n_elements
        if self.task.kind == "modular" and self.task.op in NONZERO_Y_OPS:
            return n * (n - 1)  # y = 0 is excluded; 'x/y if y odd else x-y' has (x, 0) = x
        return n * n

    @property
    def n_train(self) -> int:
        return self.n_examples(self.task.train_fraction)

    def n_examples(self, fraction: float) -> int:
        """Training set size of a fraction of all pairs (at least one example)."""
        return max(1, int(round(fraction * self.n_pairs)))

    def param_count(self) -> int:
        """Parameters of one ensemble member (matches the engine's models)."""
        m, n = self.model, self.task.n_elements
        vocab = n + 1
        if m.arch == "transformer":
            d = m.d_model
            per_layer = 4 * d * d + 2 * d * m.d_mlp + m.d_mlp + d
            if m.layer_norm:
                per_layer += 4 * d
            total = vocab * d + 3 * d + m.n_layers * per_layer + d * n
            if m.layer_norm:
                total += 2 * d
            return total
        d, h = m.d_model, m.d_mlp
        total = vocab * d + (2 * d) * h + h + (m.n_layers - 1) * (h * h + h) + h * n + n
        return total

    def member_values(self, name: str) -> list[Any]:
        """Each member's value of the per-member field `name` (service/contract/members.py): the list
        ensemble.<name>, or the single-run value at the field's path for every member."""
        return member_values(self, name)

    def fourier_unavailable(self) -> str | None:
        return fourier_unavailable(self.model_dump(mode="json"))

    def spec_hash(self) -> str:
        """Stable hash of the full resolved spec (checkpoints carry it). Per-member ensemble
        lists added later (OPTIONAL_PER_MEMBER) count only when given, so a spec
        stored before they existed keeps its hash."""
        data = self.model_dump(mode="json")
        for name in OPTIONAL_PER_MEMBER:
            if data["ensemble"].get(name) is None:
                data["ensemble"].pop(name, None)
        for name in OPTIONAL_SECTIONS:
            if data.get(name) is None:
                data.pop(name, None)
        if data["model"]["init"] == "normal":  # added later: old specs keep their hash
            data["model"].pop("init")
        blob = json.dumps(data, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()


def fourier_unavailable(spec: dict[str, Any]) -> str | None:
    """Why the Fourier progress measures don't apply to a (resolved, stored) spec, or None when
    they do: they need a modular task, a transformer's MLP to read, and p <= FOURIER_MAX_P.
    Takes the plain dict so that a stored spec is judged without validating it again."""
    task, model = spec["task"], spec["model"]
    if task["kind"] != "modular":
        return (
            f"Fourier measures need a modular task; this experiment is S5 "
            f"(kind {task['kind']!r}, op {task['op']!r})"
        )
    if model["arch"] != "transformer":
        return f"Fourier measures are computed for transformer models; this experiment is {model['arch']!r}"
    if task["p"] > FOURIER_MAX_P:
        return f"Fourier measures are computed for p <= {FOURIER_MAX_P}; this experiment has p={task['p']}"
    return None


def is_prime(n: int) -> bool:
    if n < 2:
        return False
    i = 2
    while i * i <= n:
        if n % i == 0:
            return False
        i += 1
    return True


def load_spec(path: str | Path, limits: Limits | None = None) -> ExperimentSpec:
    """Load a spec from a JSON or YAML file (same schema either way), within `limits` if given."""
    path = Path(path)
    text = path.read_text()
    if path.suffix.lower() in (".yaml", ".yml"):
        import yaml

        data = yaml.safe_load(text)
    else:
        data = json.loads(text)
    return ExperimentSpec.model_validate(data, context=limits)


def spec_from_preset(preset: str, **overrides: Any) -> ExperimentSpec:
    """Convenience for notebooks and tests: spec_from_preset('ci-small', training={'steps': 40})."""
    return ExperimentSpec.model_validate({"preset": preset, "name": preset, **overrides})
