"""The circuit pictures on models whose pictures are known in advance: an embedding built of
cos/sin of chosen frequencies draws circles in residue order, a neuron that is a wave of one
frequency is explained by it, and the grids are the model's own activations, logits and
attention."""
from __future__ import annotations

import json
import math

import pytest
import torch

from service.contract.circuit import ATTENTION_MAX_VALUES, circuit_unavailable
from tests.analysis.test_fourier import FREQS, OTHER_FREQS, P, HandBuiltFourierModel
from tests.builders import tiny_spec
from worker.analysis.circuit import (
    circuit_pictures,
    embedding_clocks,
    neuron_table,
    round_significant,
    top_wave_neurons,
    waves_picture,
)
from worker.analysis.fourier import full_grid_tokens


def angle_error(points: list[dict], k: int, p: int) -> float:
    """The largest distance (radians, on the circle) between residue r's angle and
    sign * 2 pi k r / p, for the better of the two signs."""
    worst = []
    for sign in (1, -1):
        errors = []
        for point in points:
            expected = sign * 2 * math.pi * k * point["residue"] / p
            delta = math.atan2(point["y"], point["x"]) - expected
            errors.append(abs(math.atan2(math.sin(delta), math.cos(delta))))
        worst.append(max(errors))
    return min(worst)


def test_an_embedding_of_cos_and_sin_draws_circles_in_residue_order_largest_share_first():
    p, d = 31, 6
    r = torch.arange(p, dtype=torch.float64)
    W_E = torch.zeros(p + 1, d)
    W_E[p] = torch.randn(d)  # the '=' row is no residue
    W_E[:p, 0], W_E[:p, 1] = 2 * torch.cos(2 * math.pi * 4 * r / p), 2 * torch.sin(2 * math.pi * 4 * r / p)
    W_E[:p, 2], W_E[:p, 3] = torch.cos(2 * math.pi * 9 * r / p), torch.sin(2 * math.pi * 9 * r / p)
    W_E[:p, 4:] = 0.5  # the same offset for every residue: it moves no point
    clocks = embedding_clocks(W_E, p, [9, 4])
    assert [c["frequency"] for c in clocks] == [4, 9]  # frequency 4 holds 4x the norm
    assert clocks[0]["share"] == pytest.approx(0.8, abs=1e-6)
    assert [c["radius_mean"] for c in clocks] == pytest.approx([2.0, 1.0], rel=1e-3)
    for clock in clocks:
        assert [pt["residue"] for pt in clock["points"]] == list(range(p))
        assert clock["radius_spread"] < 1e-3
        assert angle_error(clock["points"], clock["frequency"], p) < 1e-3


def test_at_most_eight_clocks_and_none_without_key_frequencies():
    p = 37
    W_E = torch.randn(p + 1, 64, generator=torch.Generator().manual_seed(0))
    assert len(embedding_clocks(W_E, p, list(range(1, 13)))) == 8
    assert embedding_clocks(W_E, p, []) == []


def test_a_neuron_that_is_a_wave_of_one_frequency_is_explained_by_it():
    p = 23
    a = torch.arange(p, dtype=torch.float64)[:, None]
    b = torch.arange(p, dtype=torch.float64)[None, :]
    w = lambda k: 2 * math.pi * k / p  # noqa: E731
    neurons = torch.stack([
        torch.cos(w(5) * (a + b)),                                   # frequency 5, all of it
        torch.zeros(p, p, dtype=torch.float64),                      # dead
        torch.sin(w(3) * a) * torch.cos(w(3) * b) + 0.2 * torch.cos(w(8) * a),  # mostly 3
        torch.randn(p, p, generator=torch.Generator().manual_seed(1), dtype=torch.float64),
        (2 * torch.cos(w(3) * b) + 1.0).expand(p, p),                # frequency 3 again
    ], dim=-1).reshape(p * p, -1).float()
    table = neuron_table(neurons, p)
    by_neuron = {n["neuron"]: n for n in table["neurons"]}
    assert table["n_neurons"] == 5 and len(table["neurons"]) == 5
    assert by_neuron[0]["frequency"] == 5 and by_neuron[0]["fraction"] == pytest.approx(1, abs=1e-3)
    assert by_neuron[2]["frequency"] == 3 and 0.9 < by_neuron[2]["fraction"] < 0.99
    assert by_neuron[1] == {"neuron": 1, "frequency": 0, "fraction": 0.0}
    assert by_neuron[3]["fraction"] < 0.5  # noise: no frequency explains it
    fractions = [n["fraction"] for n in table["neurons"]]
    assert fractions == sorted(fractions, reverse=True)
    assert table["share_above_0_9"] == pytest.approx(3 / 5)
    # one wave per frequency: neuron 4 (frequency 3 too) gives way to the next frequency's
    top = top_wave_neurons(table["neurons"])
    assert top[:2] in ([0, 4], [4, 0]) and 2 not in top and 1 not in top


def test_values_are_rounded_to_four_significant_digits():
    values = torch.tensor([0.123456, 123456.0, -0.00098765, 0.0, 1.0])
    assert round_significant(values).tolist() == [0.1235, 123500.0, -0.0009877, 0.0, 1.0]
    assert json.dumps(round_significant(torch.tensor([0.1 + 0.2])).tolist()) == "[0.3]"
    with pytest.raises(ValueError, match="non-finite"):
        round_significant(torch.tensor([1.0, float("nan")]))


def test_the_hand_built_fourier_model_draws_its_own_frequencies_for_each_member():
    model = HandBuiltFourierModel(P, [FREQS, OTHER_FREQS])
    documents = circuit_pictures(model, P, 2, step=7, attention=False)
    assert set(documents) == {"embedding:0", "embedding:1", "neurons:0", "neurons:1",
                              "waves:0:top:0", "waves:1:top:0"}
    for member, freqs in enumerate((FREQS, OTHER_FREQS)):
        embedding = documents[f"embedding:{member}"]
        assert embedding["key_frequencies"] == list(freqs)
        assert (embedding["step"], embedding["member"], embedding["p"]) == (7, member, P)
        assert sorted(c["frequency"] for c in embedding["clocks"]) == list(freqs)
        for clock in embedding["clocks"]:
            assert clock["radius_spread"] < 1e-3
            assert angle_error(clock["points"], clock["frequency"], P) < 1e-3
        waves = documents[f"waves:{member}:top:0"]
        assert 1 <= len(waves["neurons"]) <= 4
        assert len({n["frequency"] for n in waves["neurons"]}) == len(waves["neurons"])
        assert {n["frequency"] for n in waves["neurons"]} <= set(freqs)


def test_grids_are_the_models_own_activations_logits_and_attention():
    """A random 2-layer, 2-member transformer: the waves are its MLP activations and logits
    over the grid, and the attention of a 1-layer model is the softmax of its '=' query's
    scores, computed here from the weights."""
    from worker.engine.models import build_model

    p = 11
    spec = tiny_spec(width=16, heads=2, task={"p": p}, model={"n_layers": 2},
                     ensemble={"size": 2})
    model = build_model(spec)
    documents = circuit_pictures(model, p, 2, step=0, attention=True)
    logits, acts = model(full_grid_tokens(p), return_mlp_acts=True)
    attention = documents["attention:1"]["heads"]
    assert [(h["layer"], h["head"]) for h in attention] == [(0, 0), (0, 1), (1, 0), (1, 1)]
    for head in attention:
        to_a, to_b = torch.tensor(head["to_a"]), torch.tensor(head["to_b"])
        assert to_a.shape == to_b.shape == (p, p)
        assert bool(((to_a >= 0) & (to_a + to_b <= 1.0005)).all())

    chosen = waves_picture(model, p, 2, step=0, member=1, neurons=[5, 2], answer=3)
    assert [n["neuron"] for n in chosen["neurons"]] == [5, 2]
    for entry in chosen["neurons"]:
        expected = acts[1, :, entry["neuron"]].reshape(p, p)
        assert torch.allclose(torch.tensor(entry["values"], dtype=torch.float64), expected.double(), rtol=1e-3, atol=1e-6)
    assert chosen["logit"]["answer"] == 3
    assert torch.allclose(torch.tensor(chosen["logit"]["values"], dtype=torch.float64),
                          logits[1, :, 3].reshape(p, p).double(), rtol=1e-3, atol=1e-6)
    neurons = {n["neuron"]: n for n in documents["neurons:1"]["neurons"]}
    assert chosen["neurons"][0]["fraction"] == neurons[5]["fraction"]

    one_layer = build_model(tiny_spec(width=16, heads=2, task={"p": p}))
    pattern = circuit_pictures(one_layer, p, 1, step=0, attention=True)["attention:0"]["heads"]
    w = one_layer.analysis_weights(0)
    x = w["W_E"] + 0  # position embeddings added per position below
    q = (x[p] + w["W_pos"][2]) @ w["W_Q"]
    for head in (0, 1):
        cols = slice(8 * head, 8 * head + 8)
        key = lambda token, pos: ((x[token] + w["W_pos"][pos]) @ w["W_K"])[..., cols]  # noqa: E731
        tokens = torch.arange(p)
        scores = torch.stack([
            (key(tokens, 0)[:, None, :] * q[cols]).sum(-1).expand(p, p),
            (key(tokens, 1)[None, :, :] * q[cols]).sum(-1).expand(p, p),
            (key(torch.tensor(p), 2) * q[cols]).sum(-1).expand(p, p),
        ]) / math.sqrt(8)
        expected = scores.softmax(dim=0)
        assert torch.allclose(torch.tensor(pattern[head]["to_a"], dtype=torch.float64), expected[0].double(), rtol=1e-3, atol=1e-6)
        assert torch.allclose(torch.tensor(pattern[head]["to_b"], dtype=torch.float64), expected[1].double(), rtol=1e-3, atol=1e-6)


def test_which_pictures_apply():
    spec = tiny_spec(task={"p": 11}).model_dump(mode="json")
    assert all(circuit_unavailable(spec, pic) is None for pic in ("embedding", "waves", "attention"))
    mlp = tiny_spec(task={"p": 11}, model={"arch": "mlp"}).model_dump(mode="json")
    assert circuit_unavailable(mlp, "neurons") is None
    assert "no attention" in circuit_unavailable(mlp, "attention")
    s5 = tiny_spec(task={"kind": "permutation", "op": "x*y", "p": None}).model_dump(mode="json")
    assert "need a modular task; this experiment is S5" in circuit_unavailable(s5, "embedding")
    wide = tiny_spec(task={"p": 11}, model={"n_layers": 12, "n_heads": 8, "d_model": 64})
    wide = wide.model_dump(mode="json")
    assert 12 * 8 * 2 * 121 < ATTENTION_MAX_VALUES and circuit_unavailable(wide, "attention") is None
    huge = {**wide, "task": {**wide["task"], "p": 509}}
    assert "at most" in circuit_unavailable(huge, "attention")
