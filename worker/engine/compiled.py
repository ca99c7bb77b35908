"""torch.compile of the model's forward for training: an execution option, not part of the spec.

A compiled step trains the same weights with the same updates within float tolerance (the
compiler fuses the element-wise ops between the gathers and matmuls and may sum in another
order), so spec_hash and checkpoints do not change with it. On a GPU it takes a nanda2023 pack
of 256 from ~32 to ~20 ms a step after ~12 s of compiling (bench/README.md); on a CPU the
compiling costs more than a run gains, which is why GROKLAB_TORCH_COMPILE=auto is on for CUDA
devices only.

Only `model.forward` is compiled, never the module wrapped (torch.compile(model) would prefix
every parameter and checkpoint name with `_orig_mod.`), and only the training step calls it:
evaluation calls the module itself and stays eager, so its other shapes and no_grad mode cost no
recompile. The model's sizes are compiled in as constants, so a pack that shrinks (the Trainer
builds a new model) compiles once more for its new size.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor, nn

COMPILE_SETTINGS = ("auto", "on", "off")


def compile_wanted(setting: str, device: torch.device) -> bool:
    """GROKLAB_TORCH_COMPILE for a job on `device`: 'on', 'off', or 'auto', which is on for CUDA
    devices only (on a CPU, compiling the first step costs more than a short run gains)."""
    if setting not in COMPILE_SETTINGS:
        raise ValueError(f"torch_compile must be one of {', '.join(COMPILE_SETTINGS)} (got {setting!r})")
    return setting == "on" or (setting == "auto" and device.type == "cuda")


def training_forward(model: nn.Module, compile_model: bool | str) -> Callable[[Tensor], Tensor]:
    """What a training step runs the tokens through: the module itself when compile_model is
    False, else its forward compiled by torch.compile with the backend compile_model names
    (True: the default, inductor; e.g. "aot_eager" traces forward and backward without
    generating code, which needs no C compiler)."""
    if not compile_model:
        return model
    backend = "inductor" if compile_model is True else compile_model
    # Dynamo keeps its graphs per code object, for every model of the class, and after 8 of them
    # (sizes, or models of other jobs in a long-lived worker) silently runs the rest eager: a
    # new model starts from empty caches, as in a fresh process.
    torch.compiler.reset()
    return torch.compile(model.forward, backend=backend)
