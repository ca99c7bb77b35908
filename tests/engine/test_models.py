"""The ensemble models against the plain per-run reference, and their interface."""
from __future__ import annotations

import pytest
import torch

from tests.engine.reference import reference_from_engine
from worker.engine.data import build_dataset
from worker.engine.models import EnsembleMLP, ModelConfig, build_model

CONFIGS = {
    "nanda-1-layer": {},
    "2-layers": {"n_layers": 2},
    "3-layers-layernorm-gelu": {"n_layers": 3, "layer_norm": True, "act": "gelu"},
    "layernorm-init-scale": {"layer_norm": True, "init_scale": 3.0},
    "mlp-quadratic": {"arch": "mlp", "n_layers": 1, "act": "quadratic"},
    "mlp-3-layers-gelu": {"arch": "mlp", "n_layers": 3, "act": "gelu"},
}


@pytest.mark.parametrize("config", CONFIGS.values(), ids=CONFIGS.keys())
def test_logits_and_mlp_acts_equal_the_reference(tiny_spec, config):
    spec = tiny_spec(task={"p": 13}, model=config, ensemble={"size": 3})
    model = build_model(spec)
    tokens = build_dataset(spec).tokens
    logits, acts = model(tokens, return_mlp_acts=True)
    assert logits.shape == (3, 169, 13) and acts.shape == (3, 169, 64)
    assert torch.equal(model(tokens), logits)
    for member in range(3):
        ref_logits, ref_acts = reference_from_engine(model, member, spec)(tokens, return_mlp_acts=True)
        torch.testing.assert_close(logits[member], ref_logits, rtol=1e-5, atol=2e-5)
        torch.testing.assert_close(acts[member], ref_acts, rtol=1e-5, atol=2e-5)


@pytest.mark.parametrize("config", [{}, {"n_layers": 2, "layer_norm": True}, {"arch": "mlp", "n_layers": 2}],
                         ids=["1-layer", "2-layers-layernorm", "mlp"])
def test_training_steps_match_the_reference(tiny_spec, config):
    """Gradients through the shortcuts are the reference's: 5 SGD steps (linear in the
    gradient, unlike Adam's sign-like first steps), same weights after."""
    from torch.nn.functional import cross_entropy

    from worker.engine.train import Trainer

    sgd = {"name": "sgd", "lr": 0.1, "momentum": 0.9, "weight_decay": 0.01, "warmup_steps": 0}
    spec = tiny_spec(model=config, optimizer=sgd)
    trainer = Trainer(spec)
    ref = reference_from_engine(trainer.model, 0, spec)
    opt = torch.optim.SGD(ref.parameters(), lr=0.1, momentum=0.9, weight_decay=0.01)
    for _ in range(5):
        trainer.train_step()
        loss = cross_entropy(ref(trainer.sets.train_tokens), trainer.sets.train_labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = reference_from_engine(trainer.model, 0, spec)
    moved = 0.0
    for (name, p), q, p0 in zip(ref.named_parameters(), after.parameters(), reference_from_engine(
            build_model(spec), 0, spec).parameters()):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-5, msg=name)
        moved += float((p - p0).detach().abs().max())
    assert moved > 1e-2  # the steps did something


@pytest.mark.parametrize("n_layers", [1, 2])
def test_any_token_sequence_matches_the_reference(tiny_spec, n_layers):
    """The shortcuts (score lookup per query token) hold for arbitrary tokens, not only [a, b, =]."""
    spec = tiny_spec(model={"n_layers": n_layers, "layer_norm": True}, ensemble={"size": 2})
    model = build_model(spec)
    tokens = torch.randint(0, 12, (200, 3), generator=torch.Generator().manual_seed(0))
    assert tokens[:, 2].unique().numel() > 5
    logits = model(tokens)
    for member in range(2):
        ref = reference_from_engine(model, member, spec)
        torch.testing.assert_close(logits[member], ref(tokens), rtol=1e-5, atol=2e-5)


@pytest.mark.parametrize("config", CONFIGS.values(), ids=CONFIGS.keys())
def test_param_count_matches_the_spec(tiny_spec, config):
    spec = tiny_spec(model=config, ensemble={"size": 2})
    model = build_model(spec)
    per_member = sum(p[0].numel() for p in model.parameters())
    assert per_member == spec.param_count()


def test_nanda_param_count(tiny_spec):
    from service.contract.spec import spec_from_preset

    spec = spec_from_preset("nanda2023")
    assert sum(p[0].numel() for p in build_model(spec).parameters()) == spec.param_count() == 226_688


def test_each_member_is_initialised_like_a_single_run_with_its_seed(tiny_spec):
    ensemble = build_model(tiny_spec(ensemble={"size": 3, "seeds": [5, 6, 7]}))
    single = build_model(tiny_spec(training={"seed": 6}))
    for (name, p_ens), (_, p_one) in zip(ensemble.named_parameters(), single.named_parameters()):
        assert torch.equal(p_ens[1], p_one[0]), name
    assert not torch.equal(ensemble.W_E[0], ensemble.W_E[1])
    default = build_model(tiny_spec(training={"seed": 5}, ensemble={"size": 2}))  # seeds 5, 6
    assert torch.equal(default.W_E[1], single.W_E[0])


def test_init_scale_multiplies_every_weight(tiny_spec):
    base = build_model(tiny_spec(model={"layer_norm": True}))
    scaled = build_model(tiny_spec(model={"layer_norm": True, "init_scale": 4.0}))
    for (name, p), (_, q) in zip(base.named_parameters(), scaled.named_parameters()):
        if name.rsplit(".", 1)[-1].startswith("W_"):
            torch.testing.assert_close(q, 4.0 * p)
        else:  # LayerNorm gains and biases keep their init
            assert torch.equal(q, p), name


def test_pytorch_init_draws_like_torch_nn(tiny_spec):
    """model.init "pytorch": nn.Embedding's N(0, 1) embeddings, nn.MultiheadAttention's
    xavier-uniform Q/K/V and nn.Linear's U(+-1/sqrt(fan_in)) weights and biases elsewhere."""
    spec = tiny_spec(task={"p": 97}, model={"n_layers": 2, "d_model": 128, "d_mlp": 512,
                                            "layer_norm": True, "init": "pytorch"})
    model = build_model(spec)
    block = model.blocks[0]
    assert model.W_E.std().item() == pytest.approx(1.0, rel=0.05)
    assert model.W_pos.std().item() == pytest.approx(1.0, rel=0.5)
    xavier = (6 / (4 * 128)) ** 0.5
    for weights, bound in ((block.W_Q, xavier), (block.W_O, 128 ** -0.5), (block.W_in, 128 ** -0.5),
                           (block.b_in, 128 ** -0.5), (block.W_out, 512 ** -0.5),
                           (block.b_out, 512 ** -0.5), (model.W_U, 128 ** -0.5)):
        assert weights.abs().max().item() <= bound
        assert weights.std().item() == pytest.approx(bound / 3 ** 0.5, rel=0.1)  # uniform's std
    assert torch.equal(block.ln1_w, torch.ones_like(block.ln1_w))
    assert torch.equal(block.ln1_b, torch.zeros_like(block.ln1_b))
    # the default draws N(0, 1/d) embeddings, about 11x smaller at d 128
    normal = build_model(tiny_spec(task={"p": 97}, model={"d_model": 128}))
    assert normal.W_E.std().item() == pytest.approx(128 ** -0.5, rel=0.05)
    assert torch.equal(normal.blocks[0].b_in, torch.zeros_like(normal.blocks[0].b_in))


def test_per_member_tokens(tiny_spec):
    spec = tiny_spec(ensemble={"size": 2})
    model = build_model(spec)
    tokens = build_dataset(spec).tokens
    batches = torch.stack([tokens[:30], tokens[30:60]])
    logits = model(batches)
    torch.testing.assert_close(logits[0], model(tokens[:30])[0])
    torch.testing.assert_close(logits[1], model(tokens[30:60])[1])
    with pytest.raises(ValueError, match="tokens must be"):
        model(torch.stack([tokens[:30]] * 3))


def test_analysis_weights_are_one_members_plain_matrices(tiny_spec):
    spec = tiny_spec(model={"n_layers": 2}, ensemble={"size": 2})
    model = build_model(spec)
    w = model.analysis_weights(1)
    assert w["W_E"].shape == (12, 32) and w["W_U"].shape == (32, 11)
    assert w["W_in"].shape == (32, 64) and w["W_out"].shape == (64, 32)
    assert torch.equal(w["W_in"], model.blocks[-1].W_in[1])  # the last layer's
    assert not w["W_E"].requires_grad
    w["W_E"].zero_()  # a copy: the model is untouched
    assert model.W_E[1].abs().sum() > 0

    mlp = build_model(tiny_spec(model={"arch": "mlp", "n_layers": 2}, ensemble={"size": 2}))
    w = mlp.analysis_weights(0)
    assert w["W_E"].shape == (12, 32) and w["W_U"].shape == (64, 11)
    assert w["W_out"] is None and w["W_in"] is None
    assert w["W_in_a"].shape == w["W_in_b"].shape == (32, 64)


def test_model_config_is_the_specs_shape(tiny_spec):
    spec = tiny_spec(model={"arch": "mlp", "act": "quadratic", "init_scale": 2.0}, ensemble={"size": 2})
    config = ModelConfig.from_spec(spec)
    assert (config.arch, config.n_members, config.vocab_in, config.n_out) == ("mlp", 2, 12, 11)
    assert (config.d_model, config.d_mlp, config.act, config.init_scale) == (32, 64, "quadratic", 2.0)
    model = build_model(spec)
    assert isinstance(model, EnsembleMLP) and model.config == config
