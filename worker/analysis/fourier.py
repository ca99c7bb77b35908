"""Fourier progress measures for modular arithmetic over Z_p.

Nanda et al. 2023, "Progress measures for grokking via mechanistic interpretability"
(arXiv:2301.05217): a 1-layer transformer trained on a+b mod p embeds each input as
cos(w_k x), sin(w_k x) for a few key frequencies w_k = 2*pi*k/p, multiplies them in the MLP and
reads out logits(c) ~ sum_k cos(w_k (a + b - c)). The measures below watch that circuit form:
the Fourier sparsity of W_E and W_L (Gini), the key frequencies the MLP neurons cluster on, the
restricted loss (keep only the key frequencies) and the excluded loss (remove them).

Conventions: inputs range over the full grid (a, b) in Z_p x Z_p, flattened row-major (a outer,
b inner: index a*p + b); logits are [p, p, p] over (a, b, c) or the same flattened to [p*p, p].

Pure functions on tensors, one per quantity. The logit-based ones are built from sums over pairs
(collapsed_counts, cross_entropy_sums, logit_totals_by_sum) and the Fourier filter of the mean
logits per sum (sum_frequency_filter): grid.py runs these same functions over chunks of the grid,
so that a run's measures never hold the p^3 logits.
"""
from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

# A neuron belongs to frequency k if the terms of frequency k (cos/sin in a, in b, and their
# products) explain more than this fraction of its variance over the grid. Nanda et al. read
# their trained model's neurons by eye at about 0.85; 0.5 keeps the assignment unique (at most
# one frequency can hold a majority) and catches clusters while they form.
NEURON_EXPLAINED_THRESHOLD = 0.5
# A frequency is key when at least this share of the MLP neurons belongs to it ...
KEY_FREQ_MIN_NEURON_FRACTION = 0.01
# ... and never fewer than this many neurons: one stray neuron is not a cluster.
KEY_FREQ_MIN_NEURONS = 2
# The ops whose answer depends on a single sum s = a +- b, the case restricted/excluded loss
# are defined for.
SUM_OPS: dict[str, int] = {"x+y": 1, "x-y": -1}


def make_fourier_basis(p: int, device: torch.device | str | None = None) -> tuple[torch.Tensor, list[str]]:
    """The real Fourier basis of functions on Z_p: an orthonormal [p, p] matrix and row names.

    Rows: 1/sqrt(p) ("const"), then cos(w_k x) and sin(w_k x) for k = 1..p//2, w_k = 2*pi*k/p,
    each scaled to unit norm (Nanda et al. 2023, App. D). For even p, sin(w_{p/2} x) = 0, so the
    Nyquist frequency has only its cos row ((-1)^x / sqrt(p)) and the basis stays p x p. Row i
    has frequency (i + 1) // 2 in both cases.
    """
    if p < 2:
        raise ValueError(f"p must be >= 2 for a Fourier basis (got {p})")
    x = torch.arange(p, dtype=torch.float64)
    rows = [torch.ones(p, dtype=torch.float64)]
    names = ["const"]
    for k in range(1, p // 2 + 1):
        angle = 2 * math.pi * k * x / p
        rows.append(torch.cos(angle))
        names.append(f"cos {k}")
        if 2 * k != p:
            rows.append(torch.sin(angle))
            names.append(f"sin {k}")
    basis = torch.stack(rows)
    basis = basis / basis.norm(dim=1, keepdim=True)
    return basis.to(device=device, dtype=torch.float32), names


def basis_frequencies(p: int, device: torch.device | str | None = None) -> torch.Tensor:
    """The frequency of each row of make_fourier_basis(p): [p] long, 0 for the constant."""
    return torch.div(torch.arange(p, device=device) + 1, 2, rounding_mode="floor")


def _frequency_norms(coefficients: torch.Tensor, p: int) -> torch.Tensor:
    """sqrt of the summed squares of [p, ...] Fourier coefficients per frequency: [p//2 + 1]."""
    squares = coefficients.pow(2).reshape(p, -1).sum(dim=1)
    per_freq = torch.zeros(p // 2 + 1, dtype=squares.dtype, device=squares.device)
    per_freq.index_add_(0, basis_frequencies(p, squares.device), squares)
    return per_freq.sqrt()


def embedding_fourier_norms(W_E: torch.Tensor, p: int) -> torch.Tensor:
    """Norm of the embedding per frequency: [p//2 + 1], index 0 = constant, index k = frequency k.

    norm_k = sqrt(||F_cos_k W_E||^2 + ||F_sin_k W_E||^2) with F = make_fourier_basis(p) applied
    over the token axis (Nanda et al. 2023, Fig. 3). Only the p number tokens count: W_E is
    [vocab_in, d_model] and rows p.. (the '=' token) are dropped.
    """
    if W_E.shape[0] < p:
        raise ValueError(f"W_E must have at least p={p} rows, one per number (got {W_E.shape[0]})")
    W = W_E[:p].detach().float()
    basis, _ = make_fourier_basis(p, W.device)
    return _frequency_norms(basis @ W, p)


def neuron_logit_fourier_norms(W_L: torch.Tensor, p: int) -> torch.Tensor:
    """Norm of the neuron-to-logit map W_L [d_mlp, p] per output frequency: [p//2 + 1].

    W_L = W_out @ W_U maps MLP neurons to the logits c (Nanda et al. 2023, Sec. 4.1); the Fourier
    transform runs over c, and norm_k sums the squares over all neurons of the cos_k and sin_k
    columns.
    """
    if W_L.shape[-1] != p:
        raise ValueError(f"W_L must be [d_mlp, p={p}] (got {list(W_L.shape)})")
    W = W_L.detach().float()
    basis, _ = make_fourier_basis(p, W.device)
    return _frequency_norms(basis @ W.T, p)


def gini(x: torch.Tensor) -> float:
    """Gini coefficient of a non-negative vector: 0 when flat, 1 when one-hot.

    G = n/(n-1) * sum_i sum_j |x_i - x_j| / (2 n sum_i x_i), the usual mean-difference Gini with
    the small-sample factor n/(n-1), so that a one-hot vector of any length gives exactly 1.
    Nanda et al. 2023 (Sec. 5.1) track it on the Fourier norms of W_E and W_L. A zero vector, or
    one of length < 2, gives 0.
    """
    x = x.detach().double().flatten()
    if x.numel() and bool((x < 0).any()):
        raise ValueError("gini needs a non-negative vector (got negative entries)")
    n = x.numel()
    total = float(x.sum())
    if n < 2 or total == 0.0:
        return 0.0
    ordered, _ = torch.sort(x)
    rank = torch.arange(1, n + 1, dtype=torch.float64, device=x.device)
    g = 2.0 * float((rank * ordered).sum()) / (n * total) - (n + 1) / n
    return g * n / (n - 1)


def gini_unembed(W_L: torch.Tensor, p: int) -> float:
    """Gini of the neuron-logit map's Fourier norms over k = 1..p//2 (constant left out).

    W_L = W_out @ W_U [d_mlp, p]. A constant over c adds the same to every logit, which the
    softmax ignores.
    """
    return gini(neuron_logit_fourier_norms(W_L, p)[1:])


def neuron_frequencies(neuron_acts: torch.Tensor, p: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Each MLP neuron's dominant frequency and the fraction of its variance it explains.

    neuron_acts [p*p, d_mlp] over the grid (a, b), a outer. The 2-D Fourier transform
    A_hat[f, g] = sum_{a,b} F[f, a] F[g, b] A[a, b] (F = make_fourier_basis(p)) splits each
    neuron's variance (everything but the const x const term) among pairs of basis rows. The
    terms of frequency k are those with each row in {const, cos_k, sin_k} other than
    const x const: cos/sin of w_k a, of w_k b, and their four products (Nanda et al. 2023, Sec. 4.2).

    Returns (freq [d_mlp] long, frac [d_mlp] float): the k with the largest share of variance and
    that share. A neuron with no variance (dead) gets freq 0 and frac 0.
    """
    if neuron_acts.dim() != 2 or neuron_acts.shape[0] != p * p:
        raise ValueError(
            f"neuron_acts must be [p*p={p * p}, d_mlp] over the (a, b) grid (got {list(neuron_acts.shape)})"
        )
    raw = neuron_acts.detach().float()
    # Centre first: a ReLU neuron's mean can dwarf its variance; after centring the const x const
    # term is 0 and the variance is the plain sum of squares (Parseval: the basis is orthonormal).
    acts = raw - raw.mean(dim=0)
    variance = acts.pow(2).sum(dim=0)
    d_mlp = acts.shape[1]
    basis, _ = make_fourier_basis(p, acts.device)
    over_a = (basis @ acts.reshape(p, p * d_mlp)).reshape(p, p, d_mlp)  # [f, b, n]

    def coefficient(g_of_f: torch.Tensor) -> torch.Tensor:
        """A_hat[f, g_of_f[f]] for every row f: [p, n]. Only O(p) of the p^2 terms are needed."""
        return torch.einsum("fb,fbn->fn", basis[g_of_f], over_a)

    # The terms of frequency k pair row f (cos_k or sin_k in a) with itself, with its partner
    # (sin_k for cos_k and back; the Nyquist cos of even p has none) or with the constant in b;
    # and the constant in a with row f in b.
    rows = torch.arange(p, device=acts.device)
    partner = torch.where(rows % 2 == 1, rows + 1, rows - 1)
    has_partner = ((rows > 0) & (partner < p)).to(acts.dtype)[:, None]
    per_row = (
        coefficient(rows).pow(2)
        + coefficient(partner.clamp(0, p - 1)).pow(2) * has_partner
        + coefficient(torch.zeros_like(rows)).pow(2)
        + (basis @ over_a[0]).pow(2)
    )
    energy = torch.zeros(p // 2 + 1, d_mlp, dtype=per_row.dtype, device=acts.device)
    energy.index_add_(0, basis_frequencies(p, acts.device)[1:], per_row[1:])
    energy = energy[1:]  # [p//2, n], k = 1..p//2

    best_energy, best = energy.max(dim=0)
    alive = variance > 1e-10 * raw.pow(2).sum(dim=0) + 1e-30
    frac = torch.where(alive, best_energy / variance.clamp_min(1e-30), torch.zeros_like(variance))
    freq = torch.where(alive, best + 1, torch.zeros_like(best))
    return freq, frac.clamp(0.0, 1.0)


def key_frequency_clusters(
    neuron_acts: torch.Tensor,
    p: int,
    explained_threshold: float = NEURON_EXPLAINED_THRESHOLD,
    min_neurons: int | None = None,
) -> dict[str, Any]:
    """The frequencies that clusters of MLP neurons compute (Nanda et al. 2023, Sec. 4.2).

    A neuron is explained by k (neuron_frequencies) when frequency k carries more than
    explained_threshold of its variance. k is key when at least min_neurons neurons are
    explained by it; by default max(KEY_FREQ_MIN_NEURONS, ceil(1% of d_mlp)).

    Returns {"key_frequencies": list[int] ascending,
             "neuron_freq": [d_mlp] long (0 = explained by no single frequency),
             "neuron_frac": [d_mlp] float (variance share of the neuron's dominant frequency),
             "frac_neurons_explained": float (share of neurons explained by a key frequency)}.
    """
    freq, frac = neuron_frequencies(neuron_acts, p)
    d_mlp = freq.numel()
    if min_neurons is None:
        min_neurons = max(KEY_FREQ_MIN_NEURONS, math.ceil(KEY_FREQ_MIN_NEURON_FRACTION * d_mlp))
    assigned = torch.where(frac > explained_threshold, freq, torch.zeros_like(freq))
    counts = torch.bincount(assigned, minlength=p // 2 + 1)
    counts[0] = 0
    keys = [int(k) for k in torch.nonzero(counts >= min_neurons).flatten()]
    explained = sum(int(counts[k]) for k in keys)
    return {
        "key_frequencies": keys,
        "neuron_freq": assigned,
        "neuron_frac": frac,
        "frac_neurons_explained": explained / d_mlp if d_mlp else 0.0,
    }


def key_frequency_energy(norms: torch.Tensor, key_freqs: list[int]) -> float:
    """Share of the embedding's non-constant squared Fourier norm held by the key frequencies.

    sum_{k in key} norms[k]^2 / sum_{k >= 1} norms[k]^2, with norms from embedding_fourier_norms
    (index 0 = constant, left out). 0 for an all-zero spectrum.
    """
    squares = norms.detach().double().pow(2)
    total = float(squares[1:].sum())
    if total == 0.0:
        return 0.0
    keys = sorted({int(k) for k in key_freqs if 1 <= int(k) < squares.numel()})
    return float(squares[keys].sum()) / total if keys else 0.0


def circuit_measures(
    mlp_acts: torch.Tensor, weights: dict[str, Any], p: int, key_freqs: list[int] | None = None
) -> dict[str, Any]:
    """The progress measures one member's weights and MLP neurons give (Nanda et al. 2023,
    Sec. 5.1), everything but the logit-based losses.

    mlp_acts [p*p, d_mlp] over the grid; weights {"W_E", "W_U", "W_out" (None for the MLP
    arch, whose W_U already reads the neurons)}. key_freqs fixes the key frequencies (default:
    key_frequency_clusters of these neurons). Returns {gini_embed, gini_unembed (of
    W_L = W_out W_U), key_freq_count, key_freq_energy, key_frequencies,
    frac_neurons_explained (by the key frequencies), embedding_spectrum
    (embedding_fourier_norms, as a list)}.
    """
    W_E, W_U, W_out = weights["W_E"], weights["W_U"], weights.get("W_out")
    W_L = W_U if W_out is None else W_out @ W_U
    clusters = key_frequency_clusters(mlp_acts, p)
    if key_freqs is None:
        keys, explained = clusters["key_frequencies"], clusters["frac_neurons_explained"]
    else:  # fixed frequencies: the share of the neurons that they explain
        keys = sorted({int(k) for k in key_freqs})
        neuron_freq = clusters["neuron_freq"]
        explained = sum(int((neuron_freq == k).sum()) for k in keys) / max(neuron_freq.numel(), 1)
    spectrum = embedding_fourier_norms(W_E, p)
    return {
        "gini_embed": gini(spectrum[1:]),
        "gini_unembed": gini_unembed(W_L, p),
        "key_freq_count": len(keys),
        "key_freq_energy": key_frequency_energy(spectrum, keys),
        "key_frequencies": keys,
        "frac_neurons_explained": explained,
        "embedding_spectrum": [float(v) for v in spectrum],
    }


# ---- the logits over the grid: sums over pairs, so that grid.py can stream them ----------------

def full_grid_tokens(p: int, device: torch.device | str | None = None) -> torch.Tensor:
    """All p*p inputs as [p*p, 3] tokens (a, b, '='), a outer; token p is '='."""
    a = torch.arange(p, device=device)
    pairs = torch.cartesian_prod(a, a)
    equals = torch.full((p * p, 1), p, dtype=pairs.dtype, device=device)
    return torch.cat([pairs, equals], dim=1)


def _check_sum_op(op: str, what: str) -> int:
    if op not in SUM_OPS:
        raise ValueError(f"{what} needs op x+y or x-y (got {op!r})")
    return SUM_OPS[op]


def sum_op_labels(p: int, op: str, device: torch.device | str | None = None) -> torch.Tensor:
    """s = (a + b) mod p or (a - b) mod p over the grid: [p*p] long, a outer. It is both the
    answer of every pair and the sum its logits are grouped by (sum_frequency_component)."""
    sign = _check_sum_op(op, "sum_op_labels")
    a = torch.arange(p, device=device)
    return ((a[:, None] + sign * a[None, :]) % p).flatten()


def collapsed_counts(logits: torch.Tensor) -> torch.Tensor:
    """How many samples of logits [..., n, classes] have a softmax, in the logits' own dtype,
    that is exactly one-hot: [...] long (softmax_collapse_fraction's numerator)."""
    probs = torch.softmax(logits, dim=-1)
    one_hot = (probs.max(dim=-1).values == 1.0) & ((probs == 0).sum(dim=-1) == logits.shape[-1] - 1)
    return one_hot.sum(dim=-1)


def softmax_collapse_fraction(logits: torch.Tensor) -> float:
    """Share of samples whose softmax, in the logits' own dtype, is exactly one-hot.

    Prieto et al. 2025, "Grokking at the edge of numerical stability": once a logit gap exceeds
    what float32 can resolve, softmax rounds to 1.0 for the top class and 0.0 elsewhere, the
    gradient of the loss vanishes for that sample and learning stalls ("Softmax Collapse").
    logits [..., n_classes]; every leading index is a sample.
    """
    flat = logits.detach().reshape(-1, logits.shape[-1])
    if flat.shape[0] == 0:
        return 0.0
    return int(collapsed_counts(flat)) / flat.shape[0]


def cross_entropy_sums(
    logits: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """The summed cross-entropy of logits [..., n, classes] against labels [n] (the same for
    every leading index), over the samples where mask [..., n] is True (all by default):
    [...] float64. Float64 because float32 log_softmax bottoms out at ~1e-7 per sample."""
    *lead, n, classes = logits.shape
    targets = labels.long().reshape(n).expand(*lead, n).reshape(-1)
    losses = F.cross_entropy(logits.double().reshape(-1, classes), targets, reduction="none")
    losses = losses.reshape(*lead, n)
    if mask is not None:
        losses = torch.where(mask.bool(), losses, torch.zeros_like(losses))
    return losses.sum(dim=-1)


def mean_cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """The mean float64 cross-entropy of logits [n, classes] against labels [n]."""
    return float(cross_entropy_sums(logits, labels)) / labels.numel()


def logit_totals_by_sum(
    logits: torch.Tensor, sums: torch.Tensor, p: int, totals: torch.Tensor | None = None
) -> torch.Tensor:
    """The logits [..., n, p] of n pairs added up per sum s of the pair (sums [n], e.g. a slice
    of sum_op_labels): [..., s, c], in the logits' dtype (float32 for others), so that a
    [p, p, p] grid is never copied to float64. Over the whole grid each s has p pairs; divided
    by p, these are the mean logits per s that sum_frequency_filter reads. Given totals (a
    chunk's predecessors' sums), the logits are added into it, in place."""
    if logits.dtype not in (torch.float32, torch.float64):
        logits = logits.float()
    if totals is None:
        totals = torch.zeros(*logits.shape[:-2], p, logits.shape[-1], dtype=logits.dtype,
                             device=logits.device)
    return totals.index_add_(totals.dim() - 2, sums, logits.to(totals.dtype))


def sum_frequency_filter(
    means: torch.Tensor, freqs: list[int], p: int, include_constant: bool = False
) -> torch.Tensor:
    """The mean logits per sum s, means [s, c], kept to frequencies freqs of s: [s, c] float64.

    B^T B means, B the rows of make_fourier_basis(p) of frequency k in freqs (cos(w_k s) and
    sin(w_k s)) and the constant row if include_constant. It is the logits' component along
    the directions the Fourier multiplication algorithm writes to, as a function of s
    (sum_frequency_component).
    """
    device = means.device
    basis, _ = make_fourier_basis(p, device)
    basis = basis.double()
    row_freq = basis_frequencies(p, device)
    wanted = {int(k) for k in freqs if 1 <= int(k) <= p // 2}
    if include_constant:
        wanted.add(0)
    keep = torch.tensor([int(f) in wanted for f in row_freq.tolist()], device=device)
    B = basis[keep]  # [kept rows, s]
    return B.T @ (B @ means.double())


def _as_grid_logits(logits: torch.Tensor, p: int) -> torch.Tensor:
    if logits.shape == (p, p, p):
        return logits
    if logits.shape == (p * p, p):
        return logits.reshape(p, p, p)
    raise ValueError(f"logits must be [p, p, p] or [p*p, p] with p={p} (got {list(logits.shape)})")


def sum_frequency_component(
    logits: torch.Tensor, freqs: list[int], p: int, op: str, include_constant: bool = False
) -> torch.Tensor:
    """The part of the logits along cos(w_k s) and sin(w_k s), s = a + b (op x+y) or a - b (x-y).

    For each output c, logits[:, :, c] is projected orthogonally onto the functions of (a, b)
    cos(w_k s), sin(w_k s) for k in freqs (and the constant, if include_constant). These are the
    directions of Nanda et al.'s get_component_cos_xpy / _sin_xpy: the only ones the Fourier
    multiplication algorithm writes to. Since they depend on (a, b) only through s, the
    projection is the 1-D Fourier filter (sum_frequency_filter) of the mean logit over the
    pairs that share s. Returns a [p, p, p] tensor (a, b, c).
    """
    _check_sum_op(op, "sum_frequency_component")
    grid = _as_grid_logits(logits, p)
    s = sum_op_labels(p, op, grid.device)
    means = logit_totals_by_sum(grid.reshape(p * p, p), s, p).double() / p  # [s, c]
    filtered = sum_frequency_filter(means, freqs, p, include_constant)
    return filtered[s].reshape(p, p, p).to(logits.dtype)


def restricted_loss(
    logits: torch.Tensor, labels: torch.Tensor, key_freqs: list[int], p: int, op: str
) -> float:
    """Loss when the logits keep only the key frequencies (Nanda et al. 2023, Sec. 5.1).

    restricted = const + sum_{k in key} [component along cos(w_k s) + along sin(w_k s)],
    s = a + b (x+y) or a - b (x-y), per output c (sum_frequency_component with the constant,
    which is the paper's bias correction). Cross-entropy over ALL p*p pairs, as in the paper's
    code. labels: [p*p] or [p, p] answers over the grid. Raises ValueError for other ops.
    """
    _check_sum_op(op, "restricted loss")
    restricted = sum_frequency_component(logits, key_freqs, p, op, include_constant=True)
    return mean_cross_entropy(restricted.reshape(p * p, p), labels.reshape(p * p))


def excluded_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    key_freqs: list[int],
    p: int,
    op: str,
    train_mask: torch.Tensor,
) -> float:
    """Training loss with the key frequencies removed from the logits (Nanda et al. 2023, Sec. 5.1).

    excluded = logits - sum_{k in key} [component along cos(w_k s) + along sin(w_k s)],
    cross-entropy over the training pairs only (train_mask [p*p] or [p, p] bool): it rises while
    the model still memorises through the key frequencies. Raises ValueError for ops other than
    x+y and x-y.
    """
    _check_sum_op(op, "excluded loss")
    grid = _as_grid_logits(logits, p)
    excluded = grid - sum_frequency_component(grid, key_freqs, p, op)
    mask = train_mask.reshape(p * p).bool()
    pairs = training_pairs(mask)
    return float(cross_entropy_sums(excluded.reshape(p * p, p), labels.reshape(p * p), mask)) / pairs


def training_pairs(train_mask: torch.Tensor) -> int:
    """How many pairs train_mask marks for training: the excluded loss's denominator, which
    must not be 0."""
    pairs = int(train_mask.bool().sum())
    if pairs == 0:
        raise ValueError("excluded loss needs at least one training pair (train_mask is all False)")
    return pairs
