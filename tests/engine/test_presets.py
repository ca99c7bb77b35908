"""The paper presets: each is a valid spec that the engine trains, with the setting it cites."""
from __future__ import annotations

import math

import pytest

from service.contract.presets import PRESETS
from service.contract.spec import ExperimentSpec, spec_from_preset
from worker.engine.train import Trainer


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_every_preset_validates_and_trains_two_steps(preset):
    spec = spec_from_preset(preset, training={"device": "cpu"})
    assert ExperimentSpec.model_validate({"preset": preset}).preset == preset
    # The preset as it is (task, model, optimiser, loss): two real steps, finite losses.
    trainer = Trainer(spec)
    losses = [trainer.train_step() for _ in range(2)]
    assert all(math.isfinite(float(x)) for loss in losses for x in loss)


def test_grokfast2024_is_nanda2023_with_the_ema_filter():
    spec, nanda = spec_from_preset("grokfast2024"), spec_from_preset("nanda2023")
    assert spec.model == nanda.model and spec.task == nanda.task
    f = spec.optimizer.grad_filter
    assert (f.kind, f.alpha, f.lamb) == ("ema", 0.98, 2.0)
    assert (spec.optimizer.lr, spec.optimizer.weight_decay) == (1e-3, 0.005)


def test_prieto2025_uses_stablemax_and_perpendicular_adamw():
    opt = spec_from_preset("prieto2025").optimizer
    assert opt.loss == "stablemax" and opt.orthogonal_grad and opt.name == "adamw"
    assert opt.weight_decay == 0.0  # they grok without regularisation
