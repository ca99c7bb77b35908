"""The presets: published grokking setups, each a partial spec that an explicit field overrides
(ExperimentSpec applies them by deep merge)."""
from __future__ import annotations

import copy
from typing import Any

NANDA2023: dict[str, Any] = {
    "task": {"kind": "modular", "op": "x+y", "p": 113, "train_fraction": 0.3, "split_seed": 0},
    "model": {
        "arch": "transformer", "n_layers": 1, "d_model": 128, "n_heads": 4, "d_mlp": 512,
        "act": "relu", "layer_norm": False, "init_scale": 1.0,
    },
    "optimizer": {
        "name": "adamw", "lr": 1e-3, "weight_decay": 1.0, "betas": [0.9, 0.98],
        "warmup_steps": 10, "grad_filter": None,
    },
    "training": {
        "steps": 40000, "batch_size": None, "seed": 0, "eval_every": 100,
        "checkpoint_every": 1000, "stop_on_grok": False, "device": "auto",
    },
    "analysis": {"every": 1000},
}

POWER2022: dict[str, Any] = {
    "task": {"kind": "modular", "op": "x/y", "p": 97, "train_fraction": 0.5, "split_seed": 0},
    "model": {
        "arch": "transformer", "n_layers": 2, "d_model": 128, "n_heads": 4, "d_mlp": 512,
        "act": "relu", "layer_norm": True, "init_scale": 1.0,
    },
    "optimizer": {
        "name": "adamw", "lr": 1e-3, "weight_decay": 1.0, "betas": [0.9, 0.98],
        "warmup_steps": 10, "grad_filter": None,
    },
    "training": {
        "steps": 100000, "batch_size": 512, "seed": 0, "eval_every": 100,
        "checkpoint_every": 5000, "stop_on_grok": False, "device": "auto",
    },
    "analysis": {"every": 1000},
}

# The smallest config that really groks on 2 CPU cores in about a minute (about 15-20 s of
# training). Measured with the engine on CPU (seeds 0-3): train acc >= 0.99 by step 50, val acc
# >= 0.99 at steps 400-750 (seed 0: 450); with weight_decay 0 val acc stays at ~0.58 through 2000
# steps. The Nanda model learns faster than smaller ones here; lr 3e-3 and 60% data make it grok
# about 4x sooner than lr 1e-3 with 50% data (val acc 0.99 at step 1850).
CI_SMALL: dict[str, Any] = {
    "task": {"kind": "modular", "op": "x+y", "p": 47, "train_fraction": 0.6, "split_seed": 0},
    "model": copy.deepcopy(NANDA2023["model"]),
    "optimizer": {
        "name": "adamw", "lr": 3e-3, "weight_decay": 1.0, "betas": [0.9, 0.98],
        "warmup_steps": 10, "grad_filter": None,
    },
    "training": {
        "steps": 1200, "batch_size": None, "seed": 0, "eval_every": 50,
        "checkpoint_every": 400, "stop_on_grok": False, "device": "auto",
    },
    "analysis": {"every": 200},
}

# Lee et al. 2024, "Grokfast: Accelerated Grokking by Amplifying Slow Gradients", in their own
# setting (ironjr/grokfast main.py, which is Power et al. 2022's): x*y mod 97 over 0 < y < 97,
# 50% of the pairs, the 2-layer width-128 LayerNorm transformer with 4 heads and a GELU MLP of
# 4 x 128, minibatches of 512, torch.optim.Adam lr 1e-3 betas (0.9, 0.98) with 10 warmup steps,
# and the EMA filter of their README's run (alpha 0.98, lambda 2.0) with weight decay 0.005
# (Adam's coupled L2; main.py's default is 0, the filtered run passes --weight_decay 0.005).
# Their model is built from torch.nn modules with PyTorch's default initialisation (model.init
# "pytorch": N(0, 1) embeddings, about 11x larger than the "normal" init's at width 128).
# power2022 with their task, activation, initialisation, optimiser and filter.
GROKFAST2024: dict[str, Any] = {
    "task": {**POWER2022["task"], "op": "x*y, y>0"},
    "model": {**POWER2022["model"], "act": "gelu", "init": "pytorch"},
    "optimizer": {
        "name": "adam", "lr": 1e-3, "weight_decay": 0.005, "betas": [0.9, 0.98],
        "warmup_steps": 10, "grad_filter": {"kind": "ema", "alpha": 0.98, "lamb": 2.0},
    },
    "training": {
        "steps": 10000, "batch_size": 512, "seed": 0, "eval_every": 100,
        "checkpoint_every": 1000, "stop_on_grok": False, "device": "auto",
    },
    "analysis": {"every": 1000},
}

# Prieto et al. 2025, "Grokking at the Edge of Numerical Stability": x+y mod 113 with 40% of
# the pairs, full batch, on their MLP (two hidden layers of 200, ReLU), AdamW lr 0.01 with no
# weight decay, betas (0.9, 0.99) and eps 1e-25, no warmup: the StableMax loss (computed in
# float64) and the perpendicular gradient (⊥AdamW) that each let it grok without regularisation.
PRIETO2025: dict[str, Any] = {
    "task": {"kind": "modular", "op": "x+y", "p": 113, "train_fraction": 0.4, "split_seed": 0},
    "model": {
        "arch": "mlp", "n_layers": 2, "d_model": 128, "n_heads": 4, "d_mlp": 200,
        "act": "relu", "layer_norm": False, "init_scale": 1.0,
    },
    "optimizer": {
        "name": "adamw", "lr": 1e-2, "weight_decay": 0.0, "betas": [0.9, 0.99], "eps": 1e-25,
        "warmup_steps": 0, "grad_filter": None, "orthogonal_grad": True, "loss": "stablemax",
        "loss_float64": True,
    },
    "training": {
        "steps": 5000, "batch_size": None, "seed": 0, "eval_every": 50,
        "checkpoint_every": 500, "stop_on_grok": False, "device": "auto",
    },
    "analysis": {"every": None},
}

PRESETS: dict[str, dict[str, Any]] = {
    "nanda2023": NANDA2023,
    "power2022": POWER2022,
    "ci-small": CI_SMALL,
    "grokfast2024": GROKFAST2024,
    "prieto2025": PRIETO2025,
}
