"""The full-grid forward pass in chunks, and the progress measures computed from it as it streams.

The measures read the model on all p*p pairs. Held at once, the logits alone are E x p^3 floats
(p = 509, E = 16: 8.4 GB); here the forward runs ANALYSIS_CHUNK_ROWS // E pairs at a time and every
logit-based measure is a sum over pairs, accumulated chunk by chunk: the softmax-collapse count,
the cross-entropy sums, and the per-(a+b) sums of the logits that the restricted and excluded
losses are filtered from (fourier.sum_frequency_component). The excluded loss needs the key
frequencies, which need every pair's MLP activations, so it takes a second pass over the chunks.
What stays whole is E x p*p x d_mlp activations (the neuron clustering reads the full grid) and
E x p x p sums; service/budgets.py:analysis_bytes counts the same.

The results equal those of one full-grid pass, up to the order of floating-point sums.
"""
from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F

# Member-pairs per forward chunk: ANALYSIS_CHUNK_ROWS // E pairs of E members (service/budgets.py
# counts the same).
ANALYSIS_CHUNK_ROWS = 65536


def chunk_pairs_for(n_members: int) -> int:
    return max(1, ANALYSIS_CHUNK_ROWS // max(1, n_members))


def grid_chunks(
    model: torch.nn.Module, p: int, chunk_pairs: int | None = None
) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
    """(first pair, logits [E, n, p], MLP acts [E, n, d_mlp]) for consecutive chunks of the
    p*p pairs (a outer), n <= chunk_pairs."""
    from worker.analysis.fourier import _model_device, full_grid_tokens

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


def _one_hot_counts(logits: torch.Tensor) -> torch.Tensor:
    """fourier.softmax_collapse_fraction's numerator over these rows, per member: [E]."""
    probs = torch.softmax(logits, dim=-1)
    one_hot = (probs.max(dim=-1).values == 1.0) & ((probs == 0).sum(dim=-1) == logits.shape[-1] - 1)
    return one_hot.sum(dim=-1)


def _ce_sums(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-member sums of the float64 cross-entropy of logits [E, n, p] against labels [n]."""
    E, n, p = logits.shape
    losses = F.cross_entropy(logits.double().reshape(E * n, p), labels.long().repeat(E),
                             reduction="none")
    return losses.reshape(E, n).sum(dim=1)


def _ce_sum(logits: torch.Tensor, labels: torch.Tensor) -> float:
    return float(F.cross_entropy(logits.double(), labels.long(), reduction="sum"))


def _filter(per_s: torch.Tensor, freqs: list[int], p: int, include_constant: bool) -> torch.Tensor:
    """fourier.sum_frequency_component's [s, c] table from the per-s mean logits."""
    from worker.analysis.fourier import basis_frequencies, make_fourier_basis

    device = per_s.device
    basis, _ = make_fourier_basis(p, device)
    basis = basis.double()
    row_freq = basis_frequencies(p, device)
    wanted = {int(k) for k in freqs if 1 <= int(k) <= p // 2}
    if include_constant:
        wanted.add(0)
    keep = torch.tensor([int(f) in wanted for f in row_freq.tolist()], device=device)
    B = basis[keep]
    return B.T @ (B @ per_s)


@torch.no_grad()
def streamed_measures(
    model: torch.nn.Module,
    p: int,
    op: str,
    train_mask: torch.Tensor,
    n_members: int,
    key_freqs: list[list[int]] | None = None,
    chunk_pairs: int | None = None,
) -> list[dict[str, Any]]:
    """fourier.progress_measures_all, a chunk of pairs at a time (see the module doc)."""
    from worker.analysis.fourier import (
        SUM_OPS,
        _measures_from,
        member_train_masks,
        sum_op_labels,
    )

    masks = member_train_masks(train_mask, p, n_members)
    sign = SUM_OPS.get(op)
    chunk_pairs = chunk_pairs or chunk_pairs_for(n_members)
    acts = per_s = labels = s_of = collapsed = full = None
    dtype, device = torch.float32, None
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
            if sign is not None:
                a = torch.arange(p, device=device)
                s_of = ((a[:, None] + sign * a[None, :]) % p).flatten()
                labels = sum_op_labels(p, op, device)
                per_s = torch.zeros(n_members, p, p, dtype=dtype, device=device)
        acts[:, start:start + n] = chunk_acts[:n_members]
        collapsed += _one_hot_counts(logits)
        if sign is not None:
            per_s.index_add_(1, s_of[start:start + n], logits.to(dtype))
            full += _ce_sums(logits, labels[start:start + n])
    assert acts is not None and collapsed is not None and full is not None

    pairs = p * p
    results: list[dict[str, Any]] = []
    tables: list[tuple[torch.Tensor, torch.Tensor] | None] = []
    for m in range(n_members):
        stats: dict[str, Any] = {"softmax_collapse": int(collapsed[m]) / pairs}
        result = _measures_from(stats, acts[m], model.analysis_weights(m), p,
                                None if key_freqs is None else key_freqs[m])
        if sign is not None:
            mean = per_s[m].double() / p  # [s, c]
            keys = result["key_frequencies"]
            # The restricted logits depend on (a, b) through s only, and so does the label (s
            # itself): the loss over the p*p pairs is the mean over the p values of s.
            restricted = _filter(mean, keys, p, include_constant=True).to(dtype)
            result["restricted_loss"] = _ce_sum(restricted, torch.arange(p, device=device)) / p
            result["full_loss"] = float(full[m]) / pairs
            tables.append((_filter(mean, keys, p, include_constant=False).to(dtype), masks[m]))
        else:
            tables.append(None)
        results.append(result)
    if sign is None:
        return results

    # Second pass: the training loss with the key frequencies taken out of the logits.
    excluded = [0.0] * n_members
    for m, (_, mask) in enumerate(tables):  # type: ignore[misc]
        if not bool(mask.bool().any()):
            raise ValueError("excluded loss needs at least one training pair (train_mask is all False)")
    components = torch.stack([t[0] for t in tables])  # type: ignore[index]  [E, s, c]
    train = torch.stack([t[1].reshape(pairs).bool() for t in tables]).to(components.device)
    for start, logits, _ in grid_chunks(model, p, chunk_pairs):
        n = logits.shape[1]
        s_chunk, y = s_of[start:start + n], labels[start:start + n]
        out = logits[:n_members].detach().to(dtype) - components[:, s_chunk]
        losses = F.cross_entropy(out.double().reshape(n_members * n, p), y.long().repeat(
            n_members), reduction="none").reshape(n_members, n)
        sums = torch.where(train[:, start:start + n], losses, torch.zeros_like(losses)).sum(dim=1)
        for m in range(n_members):
            excluded[m] += float(sums[m])
    for m, (_, mask) in enumerate(tables):  # type: ignore[misc]
        results[m]["excluded_loss"] = excluded[m] / int(mask.bool().sum())
    return results
