"""The one builder of tiny specs for the tests: the ci-small recipe on a tiny transformer.

tiny_body is the submit body (a dict, as a client POSTs it); tiny_spec validates it; tiny_job is
the short run that the integration tests submit to a real worker. Each test area lays its own
sections on top (the engine tests: p=11, 40 steps on the CPU, see tests/engine/conftest.py).
"""
from __future__ import annotations

from typing import Any

from service.contract.spec import ExperimentSpec, deep_merge


def tiny_body(
    name: str = "ci-small", *, width: int = 16, heads: int | None = None, **sections: Any
) -> dict[str, Any]:
    """A submit body: the ci-small preset (p=47 modular addition, its optimiser and schedule)
    on a transformer with d_model=width, d_mlp=2*width and `heads` heads (default 2, 1 when
    width <= 8). sections (task=..., training=...) are laid on top, nested dicts merging. The
    name defaults to the preset's, as spec_from_preset names it."""
    model = {"d_model": width, "n_heads": heads or (2 if width > 8 else 1), "d_mlp": 2 * width}
    return deep_merge({"name": name, "preset": "ci-small", "model": model}, sections)


def tiny_spec(
    name: str = "ci-small", *, width: int = 16, heads: int | None = None, **sections: Any
) -> ExperimentSpec:
    """tiny_body, validated: cheap to build, realistic in shape."""
    return ExperimentSpec.model_validate(tiny_body(name, width=width, heads=heads, **sections))


def tiny_job(
    name: str, *, p: int = 11, width: int = 16, steps: int = 60, eval_every: int = 20,
    checkpoint_every: int = 30, analysis_every: int | None = None, **training: Any,
) -> dict[str, Any]:
    """A submit body for a short run on a real worker: tiny_body on p=11 for 60 steps, with
    no progress measures unless analysis_every is given; further training fields as keywords."""
    return tiny_body(
        name, width=width, task={"p": p},
        training={"steps": steps, "eval_every": eval_every, "checkpoint_every": checkpoint_every,
                  **training},
        analysis={"every": analysis_every},
    )
