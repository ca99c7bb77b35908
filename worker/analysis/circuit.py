"""The circuit of a modular-arithmetic model, drawn as Nanda et al. 2023 draw it
("Progress measures for grokking via mechanistic interpretability", arXiv:2301.05217):
the embedding's clocks (Fig. 3), the neurons clustered by frequency (Fig. 5), the neurons'
activation waves and the logits over the (a, b) grid (Fig. 4), and the attention of '=' to the
two inputs. service/contract/circuit.py says what is served and its bounds.

Pure functions on tensors (embedding_clocks, neuron_table, top_wave_neurons, round_significant),
and the documents of one model's pictures from its full-grid forward pass (circuit_pictures,
waves_picture), which grid.py's chunks feed. Grids are [p][p] nested lists, values[a][b].
"""
from __future__ import annotations

import math
from typing import Any

import torch

from service.contract.circuit import (
    MAX_CLOCKS,
    WAVE_DIGITS,
    WAVES_DEFAULT_NEURONS,
    default_waves_kind,
    picture_kind,
)
from worker.analysis.fourier import (
    embedding_fourier_norms,
    full_grid_tokens,
    key_frequency_clusters,
    neuron_frequencies,
)
from worker.analysis.grid import chunk_pairs_for, grid_chunks

# A neuron "is" its frequency when that frequency explains more than this share of its
# variance: the share of such neurons is the neurons picture's headline (Nanda et al. 2023,
# Fig. 5, read most neurons of their trained model above it).
WELL_EXPLAINED = 0.9


def round_significant(values: torch.Tensor, digits: int = WAVE_DIGITS) -> torch.Tensor:
    """values rounded to `digits` significant digits, in float64 so that each one prints as
    its short decimal (0.1234, not 0.12340000271797180). Raises ValueError on NaN or inf: a
    diverged model has no picture to draw."""
    x = values.detach().double()
    if not bool(torch.isfinite(x).all()):
        raise ValueError("the model gives non-finite values (NaN or inf): it has diverged")
    decimals = digits - 1 - torch.floor(torch.log10(x.abs().clamp_min(1e-300)))
    up = torch.pow(10.0, decimals.clamp(min=0))
    down = torch.pow(10.0, (-decimals).clamp(min=0))
    return torch.round(x * up / down) * down / up


def grid_values(values: torch.Tensor, p: int) -> list[list[float]]:
    """[p*p] values over the grid (a outer) as values[a][b], rounded (round_significant)."""
    return round_significant(values.reshape(p, p)).tolist()


def clock_projection(W_E: torch.Tensor, p: int, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The p residues' embeddings on the plane of frequency k: (x [p], y [p]).

    u_c = W_E[:p]^T cos(w_k r), u_s = W_E[:p]^T sin(w_k r), each normalised (w_k = 2 pi k / p);
    x_r = (W_E[r] - mean) . u_c and y_r = (W_E[r] - mean) . u_s, the mean embedding of the
    residues taken out so that the circle is centred on the origin. An embedding that holds
    cos(w_k r) and sin(w_k r) in two orthogonal directions of equal norm puts residue r at the
    angle w_k r on a circle (Nanda et al. 2023, Fig. 3)."""
    W = W_E[:p].detach().double()
    r = torch.arange(p, dtype=torch.float64, device=W.device)
    angle = 2 * math.pi * k * r / p
    u_c, u_s = W.T @ torch.cos(angle), W.T @ torch.sin(angle)
    centred = W - W.mean(dim=0)
    return (centred @ (u_c / u_c.norm().clamp_min(1e-30)),
            centred @ (u_s / u_s.norm().clamp_min(1e-30)))


def embedding_clocks(
    W_E: torch.Tensor, p: int, key_freqs: list[int], max_clocks: int = MAX_CLOCKS
) -> list[dict[str, Any]]:
    """One clock per key frequency, at most max_clocks, ordered by the frequency's share of the
    embedding's (non-constant) squared Fourier norm, largest first.

    Each: {"frequency": k, "share": that share, "points": [{"residue": r, "x", "y"}] for
    r = 0..p-1 (clock_projection), "radius_mean": the mean of the points' radii,
    "radius_spread": their standard deviation / their mean (0 on a perfect circle)}."""
    norms = embedding_fourier_norms(W_E, p).double().pow(2)
    total = float(norms[1:].sum()) or 1.0
    shares = {int(k): float(norms[k]) / total for k in key_freqs if 1 <= int(k) <= p // 2}
    clocks = []
    for k in sorted(shares, key=lambda f: (-shares[f], f))[:max_clocks]:
        x, y = clock_projection(W_E, p, k)
        radius = torch.sqrt(x * x + y * y)
        mean = float(radius.mean())
        spread = float(radius.std(unbiased=False)) / mean if mean > 0 else 0.0
        xs, ys = round_significant(x).tolist(), round_significant(y).tolist()
        clocks.append({
            "frequency": k, "share": shares[k],
            "points": [{"residue": r, "x": xs[r], "y": ys[r]} for r in range(p)],
            "radius_mean": mean, "radius_spread": spread,
        })
    return clocks


def neuron_table(neuron_acts: torch.Tensor, p: int) -> dict[str, Any]:
    """Every neuron with its best frequency and the share of its variance that frequency's
    Fourier terms explain (fourier.neuron_frequencies; Nanda et al. 2023, Fig. 5), sorted by
    that share, largest first; and the share of neurons above WELL_EXPLAINED.

    neuron_acts [p*p, d_mlp] over the grid. A dead neuron (no variance) has frequency 0 and
    fraction 0. Returns {"n_neurons", "neurons": [{"neuron", "frequency", "fraction"}],
    "share_above_0_9"}."""
    freq, frac = neuron_frequencies(neuron_acts, p)
    freqs, exact, fractions = freq.tolist(), frac.tolist(), round_significant(frac).tolist()
    n_neurons = len(freqs)
    order = sorted(range(n_neurons), key=lambda n: (-exact[n], n))
    return {
        "n_neurons": n_neurons,
        "neurons": [{"neuron": n, "frequency": freqs[n], "fraction": fractions[n]}
                    for n in order],
        "share_above_0_9": float((frac > WELL_EXPLAINED).sum()) / n_neurons if n_neurons else 0.0,
    }


def top_wave_neurons(neurons: list[dict[str, Any]], count: int = WAVES_DEFAULT_NEURONS) -> list[int]:
    """The first `count` neurons of a neuron_table's list (best explained first) whose
    frequencies differ from each other's: one wave per frequency. Dead neurons are skipped."""
    chosen, seen = [], set()
    for entry in neurons:
        if entry["frequency"] > 0 and entry["frequency"] not in seen:
            chosen.append(entry["neuron"])
            seen.add(entry["frequency"])
            if len(chosen) == count:
                break
    return chosen


@torch.no_grad()
def grid_forward(
    model: torch.nn.Module, p: int, n_members: int, answers: list[int],
    attention: bool = False, chunk_pairs: int | None = None,
) -> dict[str, torch.Tensor | None]:
    """The full-grid forward pass a chunk at a time: {"acts": [E, p*p, d_mlp] (last MLP layer
    at the last position), "logits": [E, p*p, len(answers)] (the answers' columns only: never
    the p^3 logits), "attention": [E, n_layers, p*p, n_heads, 3] or None}."""
    chunk_pairs = chunk_pairs or chunk_pairs_for(n_members)
    acts = logits = None
    for start, chunk_logits, chunk_acts in grid_chunks(model, p, chunk_pairs):
        if acts is None:
            acts = chunk_acts.new_empty(n_members, p * p, chunk_acts.shape[2])
            logits = chunk_logits.new_empty(n_members, p * p, len(answers))
        n = chunk_acts.shape[1]
        acts[:, start:start + n] = chunk_acts[:n_members]
        logits[:, start:start + n] = chunk_logits[:n_members][:, :, answers]
    patterns = None
    if attention:
        tokens = full_grid_tokens(p, acts.device)
        patterns = torch.cat([model.last_position_attention(tokens[s:s + chunk_pairs])
                              for s in range(0, p * p, chunk_pairs)], dim=2)[:n_members]
    return {"acts": acts, "logits": logits, "attention": patterns}


def _waves(acts: torch.Tensor, logits: torch.Tensor, p: int, neurons: list[int],
           table: dict[int, tuple[int, float]], answer: int) -> dict[str, Any]:
    return {
        "neurons": [{"neuron": n, "frequency": table[n][0], "fraction": table[n][1],
                     "values": grid_values(acts[:, n], p)} for n in neurons],
        "logit": {"answer": answer, "values": grid_values(logits, p)},
    }


def circuit_pictures(
    model: torch.nn.Module, p: int, n_members: int, step: int, attention: bool
) -> dict[str, dict[str, Any]]:
    """Every member's embedding, neurons and (with `attention`) attention pictures, and its
    default waves (top_wave_neurons, answer 0), by cache kind (service/contract/circuit.py),
    from one forward pass over the grid."""
    grids = grid_forward(model, p, n_members, [0], attention)
    documents: dict[str, dict[str, Any]] = {}
    for m in range(n_members):
        head = {"step": step, "member": m, "p": p}
        acts = grids["acts"][m]
        keys = key_frequency_clusters(acts, p)["key_frequencies"]
        neurons = neuron_table(acts, p)
        documents[picture_kind("neurons", m)] = {**head, "key_frequencies": keys, **neurons}
        W_E = model.analysis_weights(m)["W_E"]
        documents[picture_kind("embedding", m)] = {
            **head, "key_frequencies": keys, "clocks": embedding_clocks(W_E, p, keys),
        }
        table = {e["neuron"]: (e["frequency"], e["fraction"]) for e in neurons["neurons"]}
        documents[default_waves_kind(m)] = {
            **head, **_waves(acts, grids["logits"][m, :, 0], p,
                             top_wave_neurons(neurons["neurons"]), table, 0),
        }
        if attention:
            pattern = grids["attention"][m]  # [L, p*p, H, 3]
            documents[picture_kind("attention", m)] = {**head, "heads": [
                {"layer": layer, "head": h, "to_a": grid_values(pattern[layer, :, h, 0], p),
                 "to_b": grid_values(pattern[layer, :, h, 1], p)}
                for layer in range(pattern.shape[0]) for h in range(pattern.shape[2])
            ]}
    return documents


def waves_picture(
    model: torch.nn.Module, p: int, n_members: int, step: int, member: int,
    neurons: list[int] | None, answer: int,
) -> dict[str, Any]:
    """One member's waves: the chosen neurons' activations (None: top_wave_neurons) and the
    logit of `answer` over the grid, each neuron with its frequency and fraction."""
    grids = grid_forward(model, p, n_members, [answer])
    acts = grids["acts"][member]
    entries = neuron_table(acts, p)["neurons"]
    table = {e["neuron"]: (e["frequency"], e["fraction"]) for e in entries}
    chosen = top_wave_neurons(entries) if neurons is None else neurons
    return {"step": step, "member": member, "p": p,
            **_waves(acts, grids["logits"][member, :, 0], p, chosen, table, answer)}
