"""The full-grid analysis in chunks gives the measures of one whole-grid pass."""
from __future__ import annotations

import pytest
import torch

from tests.analysis.test_fourier import (
    FREQS,
    OTHER_FREQS,
    P,
    HandBuiltFourierModel,
    random_train_mask,
)
from worker.analysis.fourier import (
    mean_cross_entropy as _cross_entropy,
    full_grid_tokens,
    key_frequency_clusters,
    restricted_loss,
    excluded_loss,
    softmax_collapse_fraction,
    sum_op_labels,
)
from worker.analysis.grid import grid_mlp_acts, progress_measures_all


@torch.no_grad()
def whole_grid(model, p: int, op: str, masks: list[torch.Tensor]) -> list[dict]:
    """The logit measures as computed before chunking: all p^3 logits of a member at once."""
    logits, acts = model(full_grid_tokens(p), return_mlp_acts=True)
    labels = sum_op_labels(p, op)
    out = []
    for m, mask in enumerate(masks):
        keys = key_frequency_clusters(acts[m], p)["key_frequencies"]
        out.append({
            "key_frequencies": keys,
            "softmax_collapse": softmax_collapse_fraction(logits[m]),
            "full_loss": _cross_entropy(logits[m], labels),
            "restricted_loss": restricted_loss(logits[m], labels, keys, p, op),
            "excluded_loss": excluded_loss(logits[m], labels, keys, p, op, mask),
        })
    return out


def engine_model(p: int):
    from worker.engine import models

    config = models.ModelConfig(n_members=2, vocab_in=p + 1, n_out=p, n_layers=1, d_model=32,
                                n_heads=4, d_mlp=64)
    model = models.EnsembleTransformer(config)
    model.init_members([0, 1])
    return model


@pytest.mark.parametrize("which", ["hand-built", "engine"])
@pytest.mark.parametrize("op", ["x+y", "x-y"])
def test_chunked_measures_equal_the_whole_grid_ones(which, op):
    p = P if which == "hand-built" else 23
    model = HandBuiltFourierModel(P, [FREQS, OTHER_FREQS]) if which == "hand-built" \
        else engine_model(p)
    masks = [random_train_mask(p, seed=0), random_train_mask(p, seed=1)]
    expected = whole_grid(model, p, op, masks)
    if which == "hand-built" and op == "x+y":
        assert [e["key_frequencies"] for e in expected] == [list(FREQS), list(OTHER_FREQS)]
    for chunk in (1000, p * p):  # ragged chunks, and one
        found = progress_measures_all(model, p, op, torch.stack(masks), 2, chunk_pairs=chunk)
        for m in range(2):
            assert found[m]["key_frequencies"] == expected[m]["key_frequencies"]
            assert found[m]["softmax_collapse"] == expected[m]["softmax_collapse"]
            for name in ("full_loss", "restricted_loss", "excluded_loss"):
                assert found[m][name] == pytest.approx(expected[m][name], rel=1e-6, abs=1e-9)


def test_grid_mlp_acts_in_chunks_equal_one_pass():
    model = HandBuiltFourierModel(P, [FREQS])
    _, acts = model(full_grid_tokens(P), return_mlp_acts=True)
    assert torch.equal(grid_mlp_acts(model, P, chunk_pairs=500), acts)
