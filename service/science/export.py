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
import struct
from typing import Any, Callable

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load as safetensors_load
from safetensors.numpy import save as safetensors_save

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


# safetensors dtypes of parameters, as numpy reads them (little-endian)
NUMPY_DTYPES = {"F16": "<f2", "F32": "<f4", "F64": "<f8"}


def member_params(
    head: bytes, read: Callable[[int, int], bytes], member: int
) -> dict[str, np.ndarray]:
    """One ensemble member's parameters ([1, ...] each, names without "param.") from a
    checkpoint's head (the 8-byte length and the safetensors header) and `read(start, end)`,
    which returns those bytes of the checkpoint: each parameter is [E, ...] with the members
    along the first axis, so a member's part is one contiguous range, and only those ranges are
    read. ExportUnavailable for a member the checkpoint does not hold; CheckpointUnreadable for
    tensors that are not parameters of an ensemble."""
    (length,) = struct.unpack("<Q", head[:8])
    try:
        header = json.loads(head[8 : 8 + length])
    except ValueError as exc:
        raise CheckpointUnreadable(f"unreadable safetensors header ({exc})") from None
    entries = {name.removeprefix("param."): entry for name, entry in header.items()
               if name.startswith("param.") and isinstance(entry, dict)}
    if "W_E" not in entries:
        raise CheckpointUnreadable("the checkpoint has no tensor param.W_E: it holds no model")
    n_members = int(entries["W_E"]["shape"][0])
    if not 0 <= member < n_members:
        raise ExportUnavailable(
            f"member must be in [0, {n_members - 1}]: this checkpoint holds {n_members} "
            f"ensemble member(s) (got {member})"
        )
    params = {}
    for name, entry in entries.items():
        shape, (begin, end) = [int(n) for n in entry["shape"]], entry["data_offsets"]
        dtype = NUMPY_DTYPES.get(entry.get("dtype"))
        if dtype is None or not shape or shape[0] != n_members:
            raise CheckpointUnreadable(
                f"param.{name} is not an ensemble parameter ({entry.get('dtype')} {shape})")
        stride, rest = divmod(end - begin, n_members)
        if rest or stride != int(np.prod(shape[1:])) * np.dtype(dtype).itemsize:
            raise CheckpointUnreadable(f"param.{name}'s bytes do not fit its shape {shape}")
        start = 8 + length + begin + member * stride
        data = read(start, start + stride)
        params[name] = np.frombuffer(data, dtype=dtype).reshape([1, *shape[1:]])
    return params


def export_member_transformer_lens(
    head: bytes, read: Callable[[int, int], bytes], spec: dict[str, Any], member: int,
    metadata: dict[str, str] | None = None,
) -> bytes:
    """export_transformer_lens of a stored checkpoint read by ranges (member_params): the
    API's path, which never holds more than the one member's parameters."""
    reason = transformer_lens_unavailable(spec)
    if reason is not None:
        raise ExportUnavailable(reason)
    return _export(member_params(head, read, member), spec, 0, member, metadata)


def export_transformer_lens(
    blob: bytes, spec: dict[str, Any], member: int, metadata: dict[str, str] | None = None
) -> bytes:
    """A groklab checkpoint (already verified) as a TransformerLens safetensors file.

    ExportUnavailable for a model or member that has no export; CheckpointUnreadable when the
    checkpoint's tensors are not the spec's model."""
    reason = transformer_lens_unavailable(spec)
    if reason is not None:
        raise ExportUnavailable(reason)
    try:
        tensors = safetensors_load(bytes(blob))
    except (SafetensorError, TypeError, ValueError) as exc:  # e.g. a dtype numpy has no type for
        raise CheckpointUnreadable(f"unreadable safetensors tensors ({exc})") from None
    params = {name.removeprefix("param."): t for name, t in tensors.items() if name.startswith("param.")}
    if "W_E" not in params:
        raise CheckpointUnreadable("the checkpoint has no tensor param.W_E: it holds no model")
    n_members = params["W_E"].shape[0]
    if not 0 <= member < n_members:
        raise ExportUnavailable(
            f"member must be in [0, {n_members - 1}]: this checkpoint holds {n_members} "
            f"ensemble member(s) (got {member})"
        )
    return _export(params, spec, member, member, metadata)


def _export(
    params: dict[str, np.ndarray], spec: dict[str, Any], index: int, member: int,
    metadata: dict[str, str] | None,
) -> bytes:
    """The file of params[...][index], which is ensemble member `member`."""
    try:
        state = transformer_lens_state(params, spec, index)
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
