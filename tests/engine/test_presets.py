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


def test_grokfast2024_is_their_power2022_setting_with_the_ema_filter():
    """Lee et al. 2024's main.py: Power et al.'s model on x*y mod 97 (0 < y < 97), 50% of the
    pairs, minibatches of 512, torch.nn's default initialisation; Adam with coupled L2 0.005 and
    the EMA filter (0.98, 2.0)."""
    spec, power = spec_from_preset("grokfast2024"), spec_from_preset("power2022")
    assert (spec.task.op, spec.task.p, spec.task.train_fraction) == ("x*y, y>0", 97, 0.5)
    assert spec.n_pairs == 97 * 96 and spec.n_train == 97 * 96 // 2
    assert spec.model == power.model.model_copy(update={"act": "gelu", "init": "pytorch"})
    assert (spec.model.n_layers, spec.model.d_model, spec.model.n_heads) == (2, 128, 4)
    assert spec.model.layer_norm and spec.training.batch_size == 512
    f, opt = spec.optimizer.grad_filter, spec.optimizer
    assert (f.kind, f.alpha, f.lamb) == ("ema", 0.98, 2.0)
    assert (opt.name, opt.lr, opt.weight_decay, opt.betas, opt.warmup_steps) == (
        "adam", 1e-3, 0.005, (0.9, 0.98), 10
    )


def test_prieto2025_uses_stablemax_and_perpendicular_adamw():
    opt = spec_from_preset("prieto2025").optimizer
    assert opt.loss == "stablemax" and opt.orthogonal_grad and opt.name == "adamw"
    assert opt.weight_decay == 0.0  # they grok without regularisation
