"""Progress measures with the key frequencies fixed, as Nanda et al. 2023 (arXiv:2301.05217,
Sec. 5) compute them: the key frequencies are read once, from the final model's MLP neurons,
and every checkpoint's restricted and excluded loss and Gini coefficients are measured against
those same frequencies. (During training the worker finds them afresh at each analysis step, so
early on, before the neurons cluster, it may find none.)
"""
from __future__ import annotations

from typing import Any

import torch

from worker.analysis.fourier import key_frequency_clusters
from worker.analysis.grid import grid_mlp_acts, progress_measures_all

# The measures served per checkpoint (with weight_norm, which the caller adds: it is the norm
# of every parameter, the trainer's business).
FIXED_KEY_MEASURES: tuple[str, ...] = (
    "restricted_loss",
    "excluded_loss",
    "full_loss",
    "gini_embed",
    "gini_unembed",
    "key_freq_energy",
    "frac_neurons_explained",
)


@torch.no_grad()
def key_frequencies_of(model: torch.nn.Module, p: int, n_members: int) -> list[list[int]]:
    """Each member's key frequencies (fourier.key_frequency_clusters of its MLP neurons over
    the full grid). Applied to the final model, they are the paper's fixed key frequencies."""
    mlp_acts = grid_mlp_acts(model, p)
    return [key_frequency_clusters(mlp_acts[m], p)["key_frequencies"] for m in range(n_members)]


def measures_with_fixed_key_freqs(
    model: torch.nn.Module, p: int, op: str, train_mask: torch.Tensor, key_freqs: list[list[int]]
) -> list[dict[str, Any]]:
    """Every member's progress measures with its key frequencies fixed (key_freqs[m], one list
    per member, e.g. key_frequencies_of(final_model)); one full-grid forward pass.

    restricted_loss = loss over all pairs with the logits kept to the key frequencies' cos/sin
    of (a+b) plus the constant; excluded_loss = training loss with them removed (both None
    unless op is x+y or x-y); gini_embed, gini_unembed = Gini of the Fourier norms of W_E and of
    W_L = W_out W_U; key_freq_energy = the key frequencies' share of W_E's squared Fourier
    norm; frac_neurons_explained = share of MLP neurons explained by a key frequency. The
    other keys are those of grid.progress_measures_all.
    """
    return progress_measures_all(model, p, op, train_mask, len(key_freqs), key_freqs=key_freqs)


def measure_series(
    points: list[tuple[int, list[dict[str, Any]]]], names: tuple[str, ...] = FIXED_KEY_MEASURES
) -> list[dict[str, Any]]:
    """Metric-shaped series [{"name", "member", "steps", "values"}] from (step, per-member
    measures) points in step order; a measure that is None (does not apply) is left out."""
    series: dict[tuple[str, int], dict[str, Any]] = {}
    for step, measures in points:
        for member, m in enumerate(measures):
            for name in names:
                if m.get(name) is None:
                    continue
                entry = series.setdefault(
                    (name, member), {"name": name, "member": member, "steps": [], "values": []}
                )
                entry["steps"].append(int(step))
                entry["values"].append(float(m[name]))
    return [series[key] for key in sorted(series, key=lambda k: (k[1], k[0]))]
