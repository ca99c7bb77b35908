"""A stored checkpoint as the weights of a TransformerLens HookedTransformer, without torch.

The API serves the export, so the conversion is numpy on the checkpoint's bytes. The result is a
safetensors file whose tensor names are exactly `HookedTransformer(cfg).state_dict()`'s keys, and
whose metadata "transformer_lens_config" is the JSON of cfg's arguments:

    import json, safetensors, safetensors.torch
    from transformer_lens import HookedTransformer, HookedTransformerConfig
    with safetensors.safe_open(path, "pt") as f:
        cfg = json.loads(f.metadata()["transformer_lens_config"])
    model = HookedTransformer(HookedTransformerConfig(**cfg))
    model.load_state_dict(safetensors.torch.load_file(path))

How groklab's layout (worker/engine/models.py) maps to TransformerLens's:
    W_Q, W_K, W_V [d, H*dh] ("x @ W", head h in columns h*dh:(h+1)*dh)  ->  [H, d, dh]
    W_O [H*dh, d]                                                        ->  [H, dh, d]
    groklab's attention and unembedding have no biases: b_Q, b_K, b_V, b_O and b_U are zeros;
    with layer_norm false there is no LayerNorm (normalization_type None, no ln weights);
    the causal mask and IGNORE buffers are part of TransformerLens's state dict, so they are too.
"""
from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import numpy as np
from safetensors.numpy import save as safetensors_save

from service.contract.checkpoint_format import header_length, read_header
from service.contract.spec import S5_ORDER

EXPORT_FORMATS: tuple[str, ...] = ("transformer_lens",)
N_CTX = 3  # [a, b, =]
LN_EPS = 1e-5  # worker/engine/models.py: layer_norm


class ExportUnavailable(ValueError):
    """The experiment has no such export (an MLP; a member it does not have): a 422."""


class CheckpointUnreadable(ValueError):
    """A checkpoint that passed the store's checks but does not hold the model its spec says."""


def transformer_lens_unavailable(spec: dict[str, Any]) -> str | None:
    """Why a (resolved, stored) spec's model has no TransformerLens export, or None."""
    arch = spec["model"]["arch"]
    if arch != "transformer":
        return (
            f"a TransformerLens export needs arch 'transformer'; this experiment is {arch!r} "
            "(TransformerLens has no MLP-only model)"
        )
    return None


def transformer_lens_config(spec: dict[str, Any]) -> dict[str, Any]:
    """The HookedTransformerConfig arguments of a spec's transformer (as JSON-able values)."""
    model, task = spec["model"], spec["task"]
    n_elements = task["p"] if task["kind"] == "modular" else S5_ORDER
    return {
        "model_name": "groklab",
        "n_layers": model["n_layers"],
        "d_model": model["d_model"],
        "n_heads": model["n_heads"],
        "d_head": model["d_model"] // model["n_heads"],
        "d_mlp": model["d_mlp"],
        "n_ctx": N_CTX,
        "d_vocab": n_elements + 1,  # the elements and '='
        "d_vocab_out": n_elements,
        "act_fn": model["act"],  # relu, or gelu: F.gelu in both (exact, not tanh)
        "normalization_type": "LN" if model["layer_norm"] else None,
        "eps": LN_EPS,
        "attn_only": False,
        "positional_embedding_type": "standard",
        "use_attn_result": False,
        "default_prepend_bos": False,  # the inputs are [a, b, =], no BOS token
        "original_architecture": "groklab",
    }


def transformer_lens_state(
    params: dict[str, np.ndarray], spec: dict[str, Any], member: int
) -> dict[str, np.ndarray]:
    """TransformerLens's state dict (float32 arrays) of ensemble member `member` of groklab's
    parameters (checkpoint names without "param.", each [E, ...])."""
    cfg = transformer_lens_config(spec)
    H, dh, d = cfg["n_heads"], cfg["d_head"], cfg["d_model"]
    use_ln = cfg["normalization_type"] == "LN"

    def p(name: str) -> np.ndarray:
        if name not in params:
            raise CheckpointUnreadable(
                f"the checkpoint has no tensor param.{name}, which its spec's model has"
            )
        return np.ascontiguousarray(params[name][member], dtype=np.float32)

    def zeros(*shape: int) -> np.ndarray:
        return np.zeros(shape, dtype=np.float32)

    state: dict[str, np.ndarray] = {"embed.W_E": p("W_E"), "pos_embed.W_pos": p("W_pos")}
    for i in range(cfg["n_layers"]):
        g, t = f"blocks.{i}.", f"blocks.{i}."
        if use_ln:
            state[t + "ln1.w"], state[t + "ln1.b"] = p(g + "ln1_w"), p(g + "ln1_b")
            state[t + "ln2.w"], state[t + "ln2.b"] = p(g + "ln2_w"), p(g + "ln2_b")
        for name in ("W_Q", "W_K", "W_V"):  # [d, H*dh] -> [H, d, dh]
            state[t + f"attn.{name}"] = np.ascontiguousarray(p(g + name).reshape(d, H, dh).transpose(1, 0, 2))
            state[t + f"attn.b{name[1:]}"] = zeros(H, dh)
        state[t + "attn.W_O"] = np.ascontiguousarray(p(g + "W_O").reshape(H, dh, d))
        state[t + "attn.b_O"] = zeros(d)
        state[t + "attn.mask"] = np.tril(np.ones((N_CTX, N_CTX), dtype=bool))
        state[t + "attn.IGNORE"] = np.array(-np.inf, dtype=np.float32)
        for name in ("W_in", "b_in", "W_out", "b_out"):
            state[t + f"mlp.{name}"] = p(g + name)
    if use_ln:
        state["ln_final.w"], state["ln_final.b"] = p("ln_f_w"), p("ln_f_b")
    state["unembed.W_U"] = p("W_U")
    state["unembed.b_U"] = zeros(cfg["d_vocab_out"])
    return state


# safetensors dtypes that numpy reads (groklab writes float32 parameters)
DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "I64": np.int64,
          "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_}


def member_slices(header: dict[str, Any], data_start: int, member: int) -> dict[str, Any]:
    """Where member `member` of each parameter (`param.<name>`, [E, ...] row-major, so one
    member's values are contiguous) lies in a checkpoint: {name: (start, end, dtype, shape)},
    absolute byte offsets and the member's shape. ExportUnavailable for a member the checkpoint
    does not hold; CheckpointUnreadable for a header that does not describe such tensors."""
    embed = header.get("param.W_E")
    if not isinstance(embed, dict):
        raise CheckpointUnreadable("the checkpoint has no tensor param.W_E: it holds no model")
    out: dict[str, Any] = {}
    for key, entry in header.items():
        if not key.startswith("param."):
            continue
        try:
            dtype, shape = np.dtype(DTYPES[entry["dtype"]]), [int(n) for n in entry["shape"]]
            begin, end = (int(o) for o in entry["data_offsets"])
        except (KeyError, TypeError, ValueError) as exc:
            raise CheckpointUnreadable(f"tensor {key!r} is not one numpy can read ({exc})") from None
        per_member = dtype.itemsize * int(np.prod(shape[1:], dtype=np.int64)) if shape else 0
        if not shape or end - begin != shape[0] * per_member:
            raise CheckpointUnreadable(f"tensor {key!r} of shape {shape} is not [members, ...]")
        if not 0 <= member < shape[0]:
            raise ExportUnavailable(
                f"member must be in [0, {shape[0] - 1}]: this checkpoint holds {shape[0]} "
                f"ensemble member(s) (got {member})"
            )
        start = data_start + begin + member * per_member
        out[key.removeprefix("param.")] = (start, start + per_member, dtype, shape[1:])
    return out


def export_transformer_lens(
    blob: bytes, spec: dict[str, Any], member: int, metadata: dict[str, str] | None = None
) -> bytes:
    """A groklab checkpoint (already verified) as a TransformerLens safetensors file
    (export_member on bytes in memory)."""
    return export_member(lambda start, end: blob[start:end], len(blob), spec, member, metadata)


def export_member(
    read: Callable[[int, int], bytes], size: int, spec: dict[str, Any], member: int,
    metadata: dict[str, str] | None = None,
) -> bytes:
    """One member of a groklab checkpoint of `size` bytes (already verified) as a
    TransformerLens safetensors file, reading with read(start, end) only the checkpoint's header
    and that member's parameters: never its other members, nor any optimizer state.

    ExportUnavailable for a model or member that has no export; CheckpointUnreadable when the
    checkpoint's tensors are not the spec's model."""
    reason = transformer_lens_unavailable(spec)
    if reason is not None:
        raise ExportUnavailable(reason)
    try:
        head = read(0, 8)
        if len(head) < 8 or header_length(head) > size:
            raise ValueError("not a checkpoint: the safetensors header is longer than the blob")
        header, data_start = read_header(head + read(8, header_length(head)), size)
    except ValueError as exc:
        raise CheckpointUnreadable(str(exc)) from None
    params = {name: np.frombuffer(read(start, end), dtype=dtype).reshape([1, *shape])
              for name, (start, end, dtype, shape) in member_slices(header, data_start,
                                                                    member).items()}
    try:
        state = transformer_lens_state(params, spec, 0)
    except CheckpointUnreadable:
        raise
    except (ValueError, IndexError) as exc:  # a tensor whose shape is not the spec's model's
        raise CheckpointUnreadable(
            f"the checkpoint's tensors do not fit its spec's model ({exc})"
        ) from None
    cfg = transformer_lens_config(spec)
    expected = {
        "embed.W_E": (cfg["d_vocab"], cfg["d_model"]),
        "unembed.W_U": (cfg["d_model"], cfg["d_vocab_out"]),
    }
    for name, shape in expected.items():
        if state[name].shape != shape:
            raise CheckpointUnreadable(
                f"{name} is {list(state[name].shape)}, but the spec's model has {list(shape)}"
            )
    meta = {
        "format": "pt",  # torch-layout tensors, what safetensors.torch and TransformerLens expect
        "transformer_lens_config": json.dumps(cfg, sort_keys=True),
        "groklab_member": str(member),
        **(metadata or {}),
    }
    return safetensors_save(state, metadata=meta)
