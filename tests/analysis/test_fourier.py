"""Fourier progress measures on models whose answers are known in advance.

The hand-built model implements Nanda et al.'s Fourier multiplication algorithm exactly, for
frequencies we choose, so its key frequencies, restricted loss and excluded loss are known.
"""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from worker.analysis.callback import measure_rows
from worker.analysis.fourier import (
    embedding_fourier_norms,
    excluded_loss,
    full_grid_tokens,
    gini,
    gini_unembed,
    key_frequency_clusters,
    key_frequency_energy,
    make_fourier_basis,
    restricted_loss,
    softmax_collapse_fraction,
    sum_op_labels,
)
from worker.analysis.grid import progress_measures_all

P = 67  # prime, and 31 <= p // 2, so frequency 31 is not aliased onto p - 31
FREQS = (5, 17, 31)
OTHER_FREQS = (3, 11, 20)
# The smallest logit gap of sum_k cos(w_k d) for FREQS is 0.40; 30 * 0.40 = 12 nats of margin.
LOGIT_SCALE = 30.0


class HandBuiltFourierModel(nn.Module):
    """The Fourier multiplication algorithm, wired by hand, with the engine's model interface.

    Member e uses frequencies freq_sets[e]. Per frequency k:
    embedding rows: x -> (cos w_k x, sin w_k x);
    8 quadratic neurons (u + v)^2, (u - v)^2 for the pairs (cos a, cos b), (sin a, sin b),
    (sin a, cos b), (cos a, sin b), whose differences are 4 * the products;
    W_out combines them into cos(w_k s), sin(w_k s) with s = a + b (or a - b) by the angle
    sum identities, and W_U reads out scale * cos(w_k (s - c)).
    mlp_arch=True reports weights the way the MLP architecture does: W_out None and
    W_U = W_out @ W_U [d_mlp, p].
    """

    def __init__(self, p: int, freq_sets, op: str = "x+y", scale: float = LOGIT_SCALE, mlp_arch: bool = False):
        super().__init__()
        E, K = len(freq_sets), len(freq_sets[0])
        d_model, d_mlp = 2 * K, 8 * K
        sign = {"x+y": 1.0, "x-y": -1.0}[op]
        x = torch.arange(p, dtype=torch.float64)
        W_E = torch.zeros(E, p + 1, d_model, dtype=torch.float64)
        W_in_a = torch.zeros(E, d_model, d_mlp, dtype=torch.float64)
        W_in_b = torch.zeros(E, d_model, d_mlp, dtype=torch.float64)
        W_out = torch.zeros(E, d_mlp, d_model, dtype=torch.float64)
        W_U = torch.zeros(E, d_model, p, dtype=torch.float64)
        for e, freqs in enumerate(freq_sets):
            for j, k in enumerate(freqs):
                w = 2 * math.pi * k / p
                cos_dim, sin_dim = 2 * j, 2 * j + 1
                W_E[e, :p, cos_dim] = torch.cos(w * x)
                W_E[e, :p, sin_dim] = torch.sin(w * x)
                pairs = [(cos_dim, cos_dim), (sin_dim, sin_dim), (sin_dim, cos_dim), (cos_dim, sin_dim)]
                for i, (from_a, from_b) in enumerate(pairs):
                    plus, minus = 8 * j + 2 * i, 8 * j + 2 * i + 1
                    W_in_a[e, from_a, plus] = W_in_a[e, from_a, minus] = 1.0
                    W_in_b[e, from_b, plus], W_in_b[e, from_b, minus] = 1.0, -1.0
                # (u+v)^2 - (u-v)^2 = 4uv; cos(w s) = ca cb -+ sa sb, sin(w s) = sa cb +- ca sb
                for i, (out_dim, weight) in enumerate(
                    [(cos_dim, 1.0), (cos_dim, -sign), (sin_dim, 1.0), (sin_dim, sign)]
                ):
                    W_out[e, 8 * j + 2 * i, out_dim] = weight / 4
                    W_out[e, 8 * j + 2 * i + 1, out_dim] = -weight / 4
                c = torch.arange(p, dtype=torch.float64)
                W_U[e, cos_dim] = scale * torch.cos(w * c)
                W_U[e, sin_dim] = scale * torch.sin(w * c)
        self.mlp_arch = mlp_arch
        weights = {"W_E": W_E, "W_in_a": W_in_a, "W_in_b": W_in_b, "W_out": W_out, "W_U": W_U}
        for name, value in weights.items():
            setattr(self, name, nn.Parameter(value.float(), requires_grad=False))

    def forward(self, tokens: torch.Tensor, return_mlp_acts: bool = False):
        embed_a = self.W_E[:, tokens[:, 0]]  # [E, N, d_model]
        embed_b = self.W_E[:, tokens[:, 1]]
        acts = (embed_a @ self.W_in_a + embed_b @ self.W_in_b).pow(2)  # [E, N, d_mlp]
        logits = acts @ self.W_out @ self.W_U  # [E, N, p]
        return (logits, acts) if return_mlp_acts else logits

    def analysis_weights(self, member: int) -> dict:
        W_in = torch.cat([self.W_in_a[member], self.W_in_b[member]], dim=0)
        if self.mlp_arch:
            return {"W_E": self.W_E[member], "W_U": self.W_out[member] @ self.W_U[member],
                    "W_out": None, "W_in": W_in}
        return {"W_E": self.W_E[member], "W_U": self.W_U[member], "W_out": self.W_out[member], "W_in": W_in}


def random_train_mask(p: int, fraction: float = 0.3, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    mask = torch.zeros(p * p, dtype=torch.bool)
    mask[torch.randperm(p * p, generator=generator)[: int(fraction * p * p)]] = True
    return mask


def grid_outputs(model: nn.Module, p: int, member: int = 0):
    logits, acts = model(full_grid_tokens(p), return_mlp_acts=True)
    return logits[member], acts[member]


# ---- the Fourier basis ------------------------------------------------------------------------

@pytest.mark.parametrize("p", [7, 8, 67])
def test_fourier_basis_is_orthonormal_with_one_row_per_name(p):
    basis, names = make_fourier_basis(p)
    assert basis.shape == (p, p) and len(names) == p
    assert torch.allclose(basis @ basis.T, torch.eye(p), atol=1e-5)
    assert names[:3] == ["const", "cos 1", "sin 1"]
    if p % 2 == 0:  # Nyquist: cos only, alternating +-1/sqrt(p)
        assert names[-1] == f"cos {p // 2}"
        assert torch.allclose(basis[-1].abs(), torch.full((p,), p ** -0.5))


def test_embedding_norms_read_each_frequency_and_drop_the_equals_row():
    x = torch.arange(P, dtype=torch.float32)
    W_E = torch.zeros(P + 1, 4)
    W_E[:P, 0] = torch.cos(2 * math.pi * 7 * x / P)
    W_E[:P, 1] = 3 * torch.sin(2 * math.pi * 2 * x / P)
    W_E[:P, 2] = 0.5  # constant
    W_E[P] = 1000.0  # the '=' token must not count
    norms = embedding_fourier_norms(W_E, P)
    assert norms.shape == (P // 2 + 1,)
    half = math.sqrt(P / 2)
    assert norms[7].item() == pytest.approx(half, rel=1e-4)
    assert norms[2].item() == pytest.approx(3 * half, rel=1e-4)
    assert norms[0].item() == pytest.approx(0.5 * math.sqrt(P), rel=1e-4)
    others = [k for k in range(1, P // 2 + 1) if k not in (2, 7)]
    assert norms[others].abs().max().item() < 1e-3


def test_neuron_frequency_counts_single_frequency_terms_only():
    p = 31
    a = torch.arange(p, dtype=torch.float64)[:, None].expand(p, p)
    b = a.T
    w = lambda k: 2 * math.pi * k / p
    neuron = (
        torch.cos(w(3) * a)  # freq 3, variance 1/2
        + 0.5 * torch.sin(w(3) * a) * torch.cos(w(3) * b)  # freq 3, variance 1/16
        + 0.7 * torch.cos(w(5) * b)  # freq 5, variance 0.245
        + torch.cos(w(3) * a) * torch.cos(w(5) * b)  # mixed: no single frequency, variance 1/4
        + 2.0  # the mean is not variance
    )
    acts = torch.stack([neuron, torch.zeros(p, p)], dim=-1).reshape(p * p, 2).float()
    clusters = key_frequency_clusters(acts, p, min_neurons=1)
    assert clusters["neuron_freq"].tolist() == [3, 0]  # the dead neuron belongs nowhere
    assert clusters["neuron_frac"][0].item() == pytest.approx(0.5625 / 1.0575, abs=1e-4)
    assert clusters["key_frequencies"] == [3]
    assert clusters["frac_neurons_explained"] == 0.5


@pytest.mark.parametrize("p", [10, 11])
def test_neuron_frequencies_match_the_full_2d_fourier_transform(p):
    """Against the definition: every (f, g) term of the 2-D transform, grouped by frequency."""
    from worker.analysis.fourier import basis_frequencies, neuron_frequencies

    acts = torch.randn(p * p, 5, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    basis, _ = make_fourier_basis(p)
    basis = basis.double()
    power = torch.einsum("fa,gb,abn->fgn", basis, basis, acts.reshape(p, p, 5)).pow(2)
    k = basis_frequencies(p)
    shares = []
    for freq in range(1, p // 2 + 1):
        in_term = ((k[:, None] == freq) | (k[:, None] == 0)) & ((k[None, :] == freq) | (k[None, :] == 0))
        in_term[0, 0] = False
        shares.append(power[in_term].sum(0) / (power.sum((0, 1)) - power[0, 0]))
    shares = torch.stack(shares)  # [p//2, n]
    freq, frac = neuron_frequencies(acts.float(), p)
    assert freq.tolist() == (shares.argmax(0) + 1).tolist()
    assert torch.allclose(frac.double(), shares.max(0).values, atol=1e-5)


def test_neuron_frequency_survives_a_large_mean():
    """A ReLU neuron can sit far from zero; its small periodic part must still be read."""
    p = 31
    a = torch.arange(p, dtype=torch.float64)[:, None].expand(p, p)
    neuron = 1000.0 + 0.05 * torch.cos(2 * math.pi * 4 * a / p)
    clusters = key_frequency_clusters(neuron.reshape(p * p, 1).float(), p, min_neurons=1)
    assert clusters["neuron_freq"].tolist() == [4]
    assert clusters["neuron_frac"].item() > 0.95


# ---- Gini ---------------------------------------------------------------------------------------

def test_gini_of_one_hot_is_one_and_of_flat_is_zero():
    one_hot = torch.zeros(56)
    one_hot[13] = 4.0
    assert gini(one_hot) == pytest.approx(1.0)
    assert gini(torch.full((56,), 2.5)) == pytest.approx(0.0, abs=1e-12)
    assert gini(torch.zeros(10)) == 0.0


def test_gini_rejects_negative_values():
    with pytest.raises(ValueError, match="non-negative"):
        gini(torch.tensor([1.0, -0.5, 2.0]))


# ---- the hand-built model: answers known in advance --------------------------------------------

@pytest.fixture(scope="module")
def fourier_model():
    return HandBuiltFourierModel(P, [FREQS])


def test_hand_built_model_is_exactly_right(fourier_model):
    logits, _ = grid_outputs(fourier_model, P)
    labels = sum_op_labels(P, "x+y")
    assert (logits.argmax(-1) == labels).float().mean().item() == 1.0


def test_key_frequencies_of_hand_built_model_are_the_chosen_ones(fourier_model):
    _, acts = grid_outputs(fourier_model, P)
    assert key_frequency_clusters(acts, P)["key_frequencies"] == list(FREQS)
    clusters = key_frequency_clusters(acts, P)
    assert clusters["frac_neurons_explained"] == 1.0
    # 8 neurons per frequency, each with 80% of its variance at its own frequency
    assert torch.bincount(clusters["neuron_freq"], minlength=P // 2 + 1)[list(FREQS)].tolist() == [8, 8, 8]
    assert clusters["neuron_frac"].min().item() == pytest.approx(0.8, abs=1e-3)


def test_restricted_loss_matches_full_loss_and_excluded_loss_is_chance(fourier_model):
    logits, _ = grid_outputs(fourier_model, P)
    labels = sum_op_labels(P, "x+y")
    full = torch.nn.functional.cross_entropy(logits.double(), labels).item()
    assert full < 1e-3
    restricted = restricted_loss(logits, labels, list(FREQS), P, "x+y")
    assert restricted == pytest.approx(full, abs=1e-4)
    excluded = excluded_loss(logits, labels, list(FREQS), P, "x+y", random_train_mask(P))
    # with the circuit gone, the logits are flat: chance is log p
    assert excluded == pytest.approx(math.log(P), abs=0.05)
    assert excluded > full + 4


def test_restricted_loss_needs_the_key_frequencies(fourier_model):
    logits, _ = grid_outputs(fourier_model, P)
    labels = sum_op_labels(P, "x+y")
    # one key frequency alone cannot tell c apart from its neighbours at 30x scale ...
    assert restricted_loss(logits, labels, [5], P, "x+y") > 0.5
    # ... and frequencies the model does not use carry nothing: chance
    assert restricted_loss(logits, labels, [2, 9], P, "x+y") == pytest.approx(math.log(P), abs=0.05)


def test_hand_built_embedding_and_unembedding_are_sparse(fourier_model):
    weights = fourier_model.analysis_weights(0)
    W_L = weights["W_out"] @ weights["W_U"]
    (measures,) = progress_measures_all(fourier_model, P, "x+y", random_train_mask(P), n_members=1)
    gini_embed = measures["gini_embed"]
    # 3 equal frequencies out of p // 2 = 33: Gini = (33 - 3) / (33 - 1)
    assert gini_embed == pytest.approx(30 / 32, abs=1e-4)
    assert gini_unembed(W_L, P) == pytest.approx(30 / 32, abs=1e-4)
    assert key_frequency_energy(embedding_fourier_norms(weights["W_E"], P), list(FREQS)) == pytest.approx(1.0)


def test_progress_measures_of_hand_built_model(fourier_model):
    (measures,) = progress_measures_all(fourier_model, P, "x+y", random_train_mask(P), n_members=1)
    assert measures["key_frequencies"] == list(FREQS)
    assert measures["key_freq_count"] == 3
    assert measures["key_freq_energy"] == pytest.approx(1.0)
    assert measures["restricted_loss"] == pytest.approx(measures["full_loss"], abs=1e-4)
    assert measures["excluded_loss"] > measures["full_loss"] + 4
    assert measures["gini_embed"] > 0.9 and measures["gini_unembed"] > 0.9
    assert measures["softmax_collapse"] == 0.0
    assert len(measures["embedding_spectrum"]) == P // 2 + 1
    import json

    json.dumps(measures)  # goes straight into the metrics table


def test_progress_measures_for_x_minus_y():
    model = HandBuiltFourierModel(P, [FREQS], op="x-y")
    (measures,) = progress_measures_all(model, P, "x-y", random_train_mask(P), n_members=1)
    assert measures["key_frequencies"] == list(FREQS)
    assert measures["full_loss"] < 1e-3
    assert measures["restricted_loss"] == pytest.approx(measures["full_loss"], abs=1e-4)
    assert measures["excluded_loss"] == pytest.approx(math.log(P), abs=0.05)
    # the same logits read as a + b are not in the x+y directions
    (as_sum,) = progress_measures_all(model, P, "x+y", random_train_mask(P), n_members=1)
    assert as_sum["restricted_loss"] > 3


def test_progress_measures_reads_the_right_member_and_the_mlp_arch():
    model = HandBuiltFourierModel(P, [FREQS, OTHER_FREQS], mlp_arch=True)
    mask = random_train_mask(P)
    first, second = progress_measures_all(model, P, "x+y", mask, n_members=2)
    assert first["key_frequencies"] == list(FREQS)
    assert second["key_frequencies"] == list(OTHER_FREQS)
    assert second["gini_unembed"] == pytest.approx(30 / 32, abs=1e-4)


def test_measure_rows_one_per_member_and_measure():
    model = HandBuiltFourierModel(P, [FREQS, OTHER_FREQS])
    rows = measure_rows(1000, progress_measures_all(model, P, "x+y", random_train_mask(P), n_members=2))
    names = ["restricted_loss", "excluded_loss", "gini_embed", "gini_unembed", "key_freq_count", "key_freq_energy"]
    assert [(r["member"], r["name"]) for r in rows] == [(m, n) for m in (0, 1) for n in names]
    assert all(r["step"] == 1000 and isinstance(r["value"], float) for r in rows)
    counts = {r["member"]: r["value"] for r in rows if r["name"] == "key_freq_count"}
    assert counts == {0: 3.0, 1: 3.0}


def test_measure_rows_skip_losses_for_other_ops(fourier_model):
    rows = measure_rows(5, progress_measures_all(fourier_model, P, "x*y", random_train_mask(P), n_members=1))
    assert {r["name"] for r in rows} == {"gini_embed", "gini_unembed", "key_freq_count", "key_freq_energy"}


# ---- no structure: a random model ---------------------------------------------------------------

def test_random_embedding_has_no_dominant_frequency():
    p = 113
    W_E = torch.randn(p + 1, 128, generator=torch.Generator().manual_seed(0))
    norms = embedding_fourier_norms(W_E, p)[1:]
    assert (norms.max() / norms.mean()).item() < 1.3
    assert gini(norms) < 0.1
    top3 = torch.topk(norms, 3).indices + 1  # the 3 largest frequencies, the worst case
    assert key_frequency_energy(embedding_fourier_norms(W_E, p), top3.tolist()) < 0.07  # 3/56 = 0.054


def test_random_neurons_have_no_key_frequencies():
    acts = torch.randn(P * P, 64, generator=torch.Generator().manual_seed(0))
    clusters = key_frequency_clusters(acts, P)
    assert clusters["key_frequencies"] == []
    assert clusters["frac_neurons_explained"] == 0.0


# ---- errors, softmax collapse --------------------------------------------------------------

@pytest.mark.parametrize("op", ["x*y", "x/y", "x^2+y^2"])
def test_restricted_and_excluded_loss_refuse_other_ops(op):
    logits = torch.zeros(P, P, P)
    labels = torch.zeros(P * P, dtype=torch.long)
    with pytest.raises(ValueError, match="restricted loss needs op x\\+y or x-y"):
        restricted_loss(logits, labels, [1], P, op)
    with pytest.raises(ValueError, match="excluded loss needs op x\\+y or x-y"):
        excluded_loss(logits, labels, [1], P, op, torch.ones(P * P, dtype=torch.bool))


def test_softmax_collapse_counts_exact_one_hots_only():
    huge = torch.zeros(10, P)
    huge[:, 3] = 1000.0
    assert softmax_collapse_fraction(huge) == 1.0
    normal = torch.randn(10, P, generator=torch.Generator().manual_seed(0))
    assert softmax_collapse_fraction(normal) == 0.0
    half = torch.cat([huge[:5], normal[:5]])
    assert softmax_collapse_fraction(half) == 0.5


# ---- the engine's own model ---------------------------------------------------------------------

def test_progress_measures_on_the_engine_transformer():
    """The glue against the real interface: shapes, members and finite values at random init."""
    models = pytest.importorskip("worker.engine.models")
    p, E = 23, 2
    config = models.ModelConfig(n_members=E, vocab_in=p + 1, n_out=p, n_layers=1, d_model=32, n_heads=4, d_mlp=64)
    model = models.EnsembleTransformer(config)
    model.init_members([0, 1])
    mask = random_train_mask(p).reshape(p, p)  # the engine's train_mask_grid() is [p, p]
    rows = measure_rows(7, progress_measures_all(model, p, "x+y", mask, n_members=E))
    assert len(rows) == 6 * E
    assert all(math.isfinite(r["value"]) for r in rows)
    measures = progress_measures_all(model, p, "x-y", mask, n_members=E)[1]
    assert len(measures["embedding_spectrum"]) == p // 2 + 1
    # an untrained model is near chance on every loss
    assert measures["full_loss"] == pytest.approx(math.log(p), abs=1.0)
