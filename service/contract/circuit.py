"""The circuit pictures of one checkpoint (Nanda et al. 2023): what the API serves, when they
apply, their bounds, and the keys under which they are cached. Shared by the API (which checks
a request and reads the cache) and the worker (which computes and stores them); torch-free.

Four pictures, each per ensemble member:
- embedding: one "clock" per key frequency k, the p residues projected on the plane of the
  embedding's cos(w_k r) and sin(w_k r) directions;
- neurons: every MLP neuron (last layer, at the '=' position) with its best frequency and the
  share of its variance that frequency explains;
- waves: chosen neurons' activations and one answer's logit over all (a, b) pairs;
- attention: the '=' position's attention to a and to b over all pairs, per layer and head.

Caching (one table, analysis_cache, keyed by kind): a single worker task per (experiment,
step) computes the embedding, neurons and attention pictures and the default waves (the top
WAVES_DEFAULT_NEURONS neurons of distinct frequencies, answer 0) of every member at once, and
caches each as its own row (kind "embedding:<member>", ...), with a small row of kind
CIRCUIT_KIND that records the task's state. Any other waves selection (neurons, answer) is
its own small task and its own row ("waves:<member>:<neurons>:<answer>"), computed once on
first request: caching every neuron's p x p grid would cost d_mlp * p^2 values per member
(13 MB as float16 at p=113, d_mlp=512), more than the checkpoint itself, for grids that are
rarely looked at.

Bounds (values are rounded to WAVE_DIGITS significant digits):
- embedding: at most MAX_CLOCKS * p points per member;
- neurons: d_mlp entries per member;
- waves: at most (WAVES_MAX_NEURONS + 1) * p^2 values per response and row;
- attention: n_layers * n_heads * 2 * p^2 values per member, at most ATTENTION_MAX_VALUES
  (a model with more has no attention picture: 422 with the reason).
"""
from __future__ import annotations

from typing import Any

from service.contract.spec import fourier_unavailable

PICTURES: tuple[str, ...] = ("embedding", "neurons", "waves", "attention")
# The state row of the one task that computes every member's pictures of a checkpoint.
CIRCUIT_KIND = "circuit"
# The kind of the existing Fourier measures of a checkpoint (GET .../checkpoints/{step}/analysis).
FOURIER_KIND = "fourier"
MAX_CLOCKS = 8
WAVES_DEFAULT_NEURONS = 4
WAVES_MAX_NEURONS = 8
WAVE_DIGITS = 4
ATTENTION_MAX_VALUES = 1 << 21
# The default selection of neurons in a waves kind: the worker resolves it (top_wave_neurons).
TOP = "top"


def circuit_unavailable(spec: dict[str, Any], picture: str) -> str | None:
    """Why a picture does not apply to a (resolved, stored) spec, or None when it does.

    Every picture needs a modular task (the residues on a circle, the frequencies of a neuron)
    with p <= FOURIER_MAX_P: the reasons are those of the Fourier measures. The MLP
    architecture has embeddings and neurons too, but no attention; and a transformer whose
    attention picture would exceed ATTENTION_MAX_VALUES per member has none served."""
    task, model = spec["task"], spec["model"]
    reason = fourier_unavailable({**spec, "model": {**model, "arch": "transformer"}})
    if reason is not None:
        return reason
    if picture != "attention":
        return None
    if model["arch"] != "transformer":
        return (f"the attention picture needs a transformer; this experiment is "
                f"{model['arch']!r}, which has no attention")
    values = attention_values(model["n_layers"], model["n_heads"], task["p"])
    if values > ATTENTION_MAX_VALUES:
        return (f"the attention picture is served for at most {ATTENTION_MAX_VALUES} values per "
                f"member; this model has n_layers x n_heads x 2 x p^2 = {values}")
    return None


def attention_values(n_layers: int, n_heads: int, p: int) -> int:
    """How many values one member's attention picture holds: to a and to b, per head, per pair."""
    return n_layers * n_heads * 2 * p * p


def picture_kind(picture: str, member: int) -> str:
    """The cache kind of one member's embedding, neurons or attention picture."""
    return f"{picture}:{member}"


def waves_kind(member: int, neurons: list[int] | None, answer: int) -> str:
    """The cache kind of one member's waves for a selection of neurons (None: the default, TOP)
    and an answer: "waves:<member>:<n1,n2,...|top>:<answer>"."""
    chosen = TOP if neurons is None else ",".join(str(n) for n in neurons)
    return f"waves:{member}:{chosen}:{answer}"


def parse_waves_kind(kind: str) -> tuple[int, list[int] | None, int]:
    """(member, neurons or None for the default, answer) of a waves_kind."""
    _, member, chosen, answer = kind.split(":")
    neurons = None if chosen == TOP else [int(n) for n in chosen.split(",")]
    return int(member), neurons, int(answer)


def default_waves_kind(member: int) -> str:
    """The waves the circuit task computes with the other pictures: top neurons, answer 0."""
    return waves_kind(member, None, 0)


def circuit_kinds(n_members: int, with_attention: bool) -> list[str]:
    """Every row the circuit task writes for a model of n_members members (its state row last)."""
    pictures = ["embedding", "neurons"] + (["attention"] if with_attention else [])
    kinds = [picture_kind(p, m) for m in range(n_members) for p in pictures]
    kinds += [default_waves_kind(m) for m in range(n_members)]
    return [*kinds, CIRCUIT_KIND]
