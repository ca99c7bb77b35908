"""Fixtures of the engine tests: tiny specs for plumbing, and the ci-small runs (trained once per
session, shared by every test that inspects them)."""
from __future__ import annotations

import time
from typing import Any, Callable

import pytest

from service.contract.spec import ExperimentSpec, deep_merge, spec_from_preset
from tests import builders

# The engine's tiny run on the one test builder (tests/builders.py): p=11, d_model 32 with 4
# heads, 40 steps on the CPU, no progress measures.
TINY_RUN: dict[str, Any] = {
    "task": {"p": 11},
    "training": {"steps": 40, "eval_every": 10, "checkpoint_every": 20, "device": "cpu"},
    "analysis": {"every": None},
}


@pytest.fixture
def tiny_spec() -> Callable[..., ExperimentSpec]:
    """tiny_spec(**overrides): the ci-small preset shrunk to p=11 and d_model 32, 40 steps."""

    def make(**overrides: Any) -> ExperimentSpec:
        return builders.tiny_spec(width=32, heads=4, **deep_merge(TINY_RUN, overrides))

    return make


def train_recording(spec: ExperimentSpec) -> dict[str, Any]:
    """Run spec to the end; return its summary, metric rows and wall time."""
    from worker.engine.train import Trainer

    rows: list[dict] = []
    started = time.perf_counter()
    summary = Trainer(spec).run(on_metrics=rows.extend)
    return {"summary": summary, "rows": rows, "wall_s": time.perf_counter() - started}


@pytest.fixture(scope="session")
def ci_small_runs() -> dict[str, dict[str, Any]]:
    """The ci-small preset as shipped ("grokking"), and the same spec with weight_decay 0."""
    preset = spec_from_preset("ci-small", training={"device": "cpu"})
    no_decay = spec_from_preset("ci-small", training={"device": "cpu"}, optimizer={"weight_decay": 0.0})
    runs = {"grokking": train_recording(preset), "no_weight_decay": train_recording(no_decay)}
    for name, run in runs.items():
        member = run["summary"]["members"][0]
        print(
            f"\nci-small {name}: {run['wall_s']:.1f} s, memorised at {member['memorization_step']}, "
            f"val acc 0.99 at {member['generalization_step']}, final val acc {member['final']['val_acc']:.3f}"
        )
    return runs
