"""The full-grid forward pass in chunks, and the progress measures computed from it as it streams.

The measures read the model on all p*p pairs. Held at once, the logits alone are E x p^3 floats
(p = 509, E = 16: 8.4 GB); here the forward runs ANALYSIS_CHUNK_ROWS // E pairs at a time and every
logit-based measure of fourier.py is a sum over pairs, accumulated chunk by chunk: the
softmax-collapse count, the cross-entropy sums, and the per-(a+b) sums of the logits that the
restricted and excluded losses are filtered from (fourier.sum_frequency_filter). The excluded loss
needs the key frequencies, which need every pair's MLP activations, so it takes a second pass over
the chunks. What stays whole is E x p*p x d_mlp activations (the neuron clustering reads the full
grid) and E x p x p sums; service/contract/budgets.py:analysis_bytes counts the same.

The results equal those of fourier's whole-grid functions, up to the order of floating-point sums.
"""
from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch

from service.contract.budgets import ANALYSIS_CHUNK_ROWS
from worker.analysis.fourier import (
    SUM_OPS,
    circuit_measures,
    collapsed_counts,
    cross_entropy_sums,
    full_grid_tokens,
    logit_totals_by_sum,
    mean_cross_entropy,
    sum_frequency_filter,
    sum_op_labels,
    training_pairs,
)


def chunk_pairs_for(n_members: int) -> int:
    """Pairs per forward chunk: ANALYSIS_CHUNK_ROWS member-pairs shared among the members."""
    return max(1, ANALYSIS_CHUNK_ROWS // max(1, n_members))


def _model_device(model: torch.nn.Module) -> torch.device:
    for tensor in list(model.parameters()) + list(model.buffers()):
        return tensor.device
    return torch.device("cpu")


def grid_chunks(
    model: torch.nn.Module, p: int, chunk_pairs: int | None = None
) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
    """(first pair, logits [E, n, p], MLP acts [E, n, d_mlp]) for consecutive chunks of the
    p*p pairs (a outer), n <= chunk_pairs."""
    tokens = full_grid_tokens(p, _model_device(model))
    chunk_pairs = chunk_pairs or ANALYSIS_CHUNK_ROWS
    for start in range(0, p * p, chunk_pairs):
        chunk = tokens[start:start + chunk_pairs]
        logits, acts = model(chunk, return_mlp_acts=True)
        if logits.dim() != 3 or logits.shape[1] != chunk.shape[0] or logits.shape[2] != p:
            raise ValueError(
                f"model logits must be [E, {chunk.shape[0]} pairs, p={p}] (got {list(logits.shape)})"
            )
        yield start, logits, acts


def grid_mlp_acts(
    model: torch.nn.Module, p: int, chunk_pairs: int | None = None
) -> torch.Tensor:
    """Every member's MLP activations over the full grid, [E, p*p, d_mlp], a chunk at a time."""
    acts = None
    for start, _, chunk in grid_chunks(model, p, chunk_pairs):
        if acts is None:
            acts = torch.empty(chunk.shape[0], p * p, chunk.shape[2], dtype=chunk.dtype,
                               device=chunk.device)
        acts[:, start:start + chunk.shape[1]] = chunk
    assert acts is not None  # p >= 2: at least one chunk
    return acts


def member_train_masks(train_mask: torch.Tensor, p: int, n_members: int) -> list[torch.Tensor]:
    """Each member's [p*p] training mask from one shared mask ([p*p] or [p, p]) or per-member
    masks ([E, p*p] or [E, p, p], row m = member m's)."""
    if train_mask.numel() == p * p:
        return [train_mask.reshape(p * p)] * n_members
    if train_mask.numel() == n_members * p * p and train_mask.shape[0] == n_members:
        return list(train_mask.reshape(n_members, p * p))
    raise ValueError(
        f"train_mask must be [p*p], [p, p], [E, p*p] or [E, p, p] with p={p}, E={n_members} "
        f"(got {list(train_mask.shape)})"
    )


@torch.no_grad()
def progress_measures_all(
    model: torch.nn.Module,
    p: int,
    op: str,
    train_mask: torch.Tensor,
    n_members: int,
    key_freqs: list[list[int]] | None = None,
    chunk_pairs: int | None = None,
) -> list[dict[str, Any]]:
    """Every progress measure of every ensemble member, from the full-grid forward pass run
    chunk_pairs pairs at a time (default chunk_pairs_for(n_members)), so that memory does not
    grow with p^3 (list index = member).

    model(tokens [n, 3], return_mlp_acts=True) -> (logits [E, n, p], mlp_acts [E, n, d_mlp])
    and model.analysis_weights(member) -> {"W_E", "W_U", "W_out" (None for the MLP arch), "W_in"}.
    train_mask: [p*p] (or [p, p]) bool over the grid, a outer, True for training pairs; or one
    per member, [E, p*p] (or [E, p, p]), when the members' training sets differ (a pack).
    Key frequencies are found afresh at each call from the current neurons, so early in training
    there may be none; key_freqs (one list per member) fixes them instead, as the paper does
    with those of the final model (fixed_keys.measures_with_fixed_key_freqs).

    Each member's measures are a JSON-serialisable dict:
        restricted_loss, excluded_loss, full_loss: float | None (None unless op is x+y or x-y;
            full_loss is the unmodified loss over all pairs, for comparison with restricted_loss)
        gini_embed, gini_unembed: float in [0, 1], the Gini of the Fourier norms of the
            embedding and of the neuron-logit map (gini_unembed) over k = 1..p//2; the
            constant row, the same shift for every input, says nothing about sparsity
        key_freq_count: int; key_frequencies: list[int]; key_freq_energy: float in [0, 1]
        frac_neurons_explained: float, share of MLP neurons explained by a key frequency
        embedding_spectrum: list[float] of length p//2 + 1 (fourier.embedding_fourier_norms)
        softmax_collapse: float in [0, 1]
    (fourier.circuit_measures gives the weight- and neuron-based ones; the losses and the
    softmax collapse are fourier's restricted_loss, excluded_loss and
    softmax_collapse_fraction, summed over the chunks.)
    """
    masks = member_train_masks(train_mask, p, n_members)
    has_losses = op in SUM_OPS
    chunk_pairs = chunk_pairs or chunk_pairs_for(n_members)
    acts = totals = labels = collapsed = full = None
    dtype = torch.float32
    for start, logits, chunk_acts in grid_chunks(model, p, chunk_pairs):
        n = logits.shape[1]
        logits = logits[:n_members].detach()
        if acts is None:
            device = logits.device
            acts = torch.empty(n_members, p * p, chunk_acts.shape[2], dtype=chunk_acts.dtype,
                               device=device)
            dtype = logits.dtype if logits.dtype in (torch.float32, torch.float64) else torch.float32
            collapsed = torch.zeros(n_members, dtype=torch.long, device=device)
            full = torch.zeros(n_members, dtype=torch.float64, device=device)
            if has_losses:
                labels = sum_op_labels(p, op, device)  # the answer s, also the sum of the pair
                totals = torch.zeros(n_members, p, p, dtype=dtype, device=device)
        acts[:, start:start + n] = chunk_acts[:n_members]
        collapsed += collapsed_counts(logits)
        if has_losses:
            y = labels[start:start + n]
            logit_totals_by_sum(logits, y, p, totals)
            full += cross_entropy_sums(logits, y)
    assert acts is not None and collapsed is not None and full is not None

    pairs = p * p
    results: list[dict[str, Any]] = []
    key_components: list[torch.Tensor] = []
    for m in range(n_members):
        circuit = circuit_measures(acts[m], model.analysis_weights(m), p,
                                   None if key_freqs is None else key_freqs[m])
        results.append({"restricted_loss": None, "excluded_loss": None, "full_loss": None,
                        **circuit, "softmax_collapse": int(collapsed[m]) / pairs})
        if has_losses:
            means = totals[m].double() / p  # [s, c]
            keys = circuit["key_frequencies"]
            # The restricted logits depend on (a, b) through s only, and so does the answer (s
            # itself): the loss over the p*p pairs is the mean over the p values of s.
            restricted = sum_frequency_filter(means, keys, p, include_constant=True).to(dtype)
            results[m]["restricted_loss"] = mean_cross_entropy(restricted, torch.arange(p, device=means.device))
            results[m]["full_loss"] = float(full[m]) / pairs
            key_components.append(sum_frequency_filter(means, keys, p).to(dtype))
    if not has_losses:
        return results

    # Second pass: the training loss with the key frequencies taken out of the logits.
    train_counts = [training_pairs(mask) for mask in masks]
    components = torch.stack(key_components)  # [E, s, c]
    train = torch.stack([mask.reshape(pairs).bool() for mask in masks]).to(components.device)
    excluded = torch.zeros(n_members, dtype=torch.float64, device=components.device)
    for start, logits, _ in grid_chunks(model, p, chunk_pairs):
        n = logits.shape[1]
        y = labels[start:start + n]
        without_keys = logits[:n_members].detach().to(dtype) - components[:, y]
        excluded += cross_entropy_sums(without_keys, y, train[:, start:start + n])
    for m in range(n_members):
        results[m]["excluded_loss"] = float(excluded[m]) / train_counts[m]
    return results
