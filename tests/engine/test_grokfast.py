"""Grokfast (Lee et al. 2024) in their own setting, the grokfast2024 preset: the run memorises,
then generalises (trained once per session, conftest.grokfast_runs, until it has grokked).

The paper's claim, that the EMA gradient filter makes the run generalise in a fraction of the
steps the same spec takes without it, is checked by bench/bench_grokfast.py and by the
grokfast2024-acceleration reproduction, and it FAILS here:

Measured on 2 loaded CPU cores (one torch thread): the filtered run memorises at step 750 and
reaches val acc 0.99 at 800 (124 s, 900 steps); the same spec without the filter memorises at
350 and reaches val acc 0.99 at 600 (193 s for its 1600 steps). Lee et al. report 910 and 39890
steps to 95% (their baseline without weight decay, PyTorch's default initialisation). So the
unfiltered run groks without delay on this task, and the filter does not accelerate it (ratio
0.75 where the paper reports ~44x). Not tuned: reported as failing (README, "Presets").
"""
from __future__ import annotations

import pytest

from tests.engine.conftest import GROKFAST_FILTERED_STEPS

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
