"""Grokfast (Lee et al. 2024) in their own setting, the grokfast2024 preset: the EMA gradient
filter makes the run generalise in a fraction of the steps the same spec takes without it.

Both runs are trained once per session (conftest.grokfast_runs): the filtered one until it has
grokked, the unfiltered one for GROKFAST_K times as many steps.

Measured on 2 loaded CPU cores (one torch thread): the filtered run memorises at step 750 and
reaches val acc 0.99 at 800 (124 s, 900 steps); the same spec without the filter memorises at
350 and reaches val acc 0.99 at 600 (193 s for its 1600 steps). Lee et al. report 910 and 39890
steps to 95% (their baseline without weight decay, PyTorch's default initialisation). So the
second test FAILS here: this engine's unfiltered run groks without delay on this task, and the
filter does not accelerate it. It is left failing, not tuned.
"""
from __future__ import annotations

import pytest

from tests.engine.conftest import GROKFAST_FILTERED_STEPS, GROKFAST_K

pytestmark = pytest.mark.slow


def test_filtered_run_memorises_then_generalises(grokfast_runs):
    run = grokfast_runs["filtered"]
    member = run["summary"]["members"][0]
    assert member["generalization_step"] is not None, member
    assert member["generalization_step"] <= GROKFAST_FILTERED_STEPS
    assert member["memorization_step"] is not None
    assert member["memorization_step"] <= member["generalization_step"]
    assert run["summary"]["stopped"] == "grokked"
    assert member["final"]["val_acc"] >= 0.99


def test_unfiltered_run_has_not_generalised_by_k_times_the_filtered_steps(grokfast_runs):
    filtered = grokfast_runs["filtered"]["summary"]["members"][0]["generalization_step"]
    run = grokfast_runs["unfiltered"]
    member = run["summary"]["members"][0]
    assert run["summary"]["steps"] >= GROKFAST_K * filtered
    assert member["weight_decay"] == 0.005  # the same spec, less the filter
    assert member["generalization_step"] is None, member
    val_acc = [r["value"] for r in run["rows"] if r["name"] == "val_acc"]
    assert max(val_acc) < 0.99
