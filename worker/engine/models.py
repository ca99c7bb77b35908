"""Ensembles of small networks for the algorithmic tasks.

Every parameter has a leading ensemble dimension E: member e's weights are W[e]. One forward pass
runs all E members (batched matmuls), so a sweep of E runs costs one run's Python overhead.

Inputs are [a, b, =] token rows; the models predict the answer from the last position only, so
they compute only what that prediction needs (each shortcut says why where it lives:
EnsembleTransformer.first_block_inputs and .single_block, TransformerBlock.forward's last_only,
EnsembleMLP.first_layer_inputs, gather_rows).

Weights use the "x @ W" convention: W_E [vocab, d_model], W_Q [d_model, n_heads * d_head]
(head h is columns h*d_head:(h+1)*d_head), W_O [n_heads * d_head, d_model], W_in [d_model, d_mlp],
W_out [d_mlp, d_model], W_U [d_model, n_out]. Attention has no biases (Nanda et al. 2023).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from service.contract.spec import ExperimentSpec

N_CTX = 3  # [a, b, =]

ACTIVATIONS: dict[str, Callable[[Tensor], Tensor]] = {
    "relu": F.relu,
    "gelu": F.gelu,
    "quadratic": lambda x: x * x,
}


@dataclass(frozen=True, kw_only=True)
class ModelConfig:
    """The shape of an ensemble: what both architectures are built from (n_heads is the
    transformer's only). vocab_in counts the '=' token; n_out is the number of answers."""

    arch: str = "transformer"  # "transformer" | "mlp"
    n_members: int = 1
    vocab_in: int
    n_out: int
    n_layers: int
    d_model: int
    n_heads: int = 1
    d_mlp: int
    act: str = "relu"
    layer_norm: bool = False
    init_scale: float = 1.0
    init: str = "normal"  # "normal" | "pytorch" (ModelSpec.init)

    @classmethod
    def from_spec(cls, spec: ExperimentSpec) -> "ModelConfig":
        m, n = spec.model, spec.task.n_elements
        return cls(
            arch=m.arch, n_members=spec.ensemble.size, vocab_in=n + 1, n_out=n,
            n_layers=m.n_layers, d_model=m.d_model, n_heads=m.n_heads, d_mlp=m.d_mlp,
            act=m.act, layer_norm=m.layer_norm, init_scale=m.init_scale, init=m.init,
        )


def member_seeds(spec: ExperimentSpec) -> list[int]:
    """Seed of each ensemble member: ensemble.seeds, or training.seed + i."""
    if spec.ensemble.seeds is not None:
        return list(spec.ensemble.seeds)
    return [spec.training.seed + i for i in range(spec.ensemble.size)]


class _SelectRows(torch.autograd.Function):
    """table.index_select(0, index) whose backward is one index_add_.

    The stock backward (a scatter_add over an expanded index) slows down badly when many rows
    pick the same table row, which is the normal case here: every row's '=' token.
    """

    @staticmethod
    def forward(ctx, table: Tensor, index: Tensor) -> Tensor:
        ctx.save_for_backward(index)
        ctx.table_shape = table.shape
        return table.index_select(0, index)

    @staticmethod
    def backward(ctx, grad: Tensor):
        (index,) = ctx.saved_tensors
        return grad.new_zeros(ctx.table_shape).index_add_(0, index, grad), None


def gather_rows(table: Tensor, index: Tensor) -> Tensor:
    """Row index[e, m] of member e's table: table [E, R, k], index [E, M] (or [M]) -> [E, M, k]."""
    E, R, k = table.shape
    if index.dim() == 1:
        index = index.unsqueeze(0).expand(E, -1)
    if E == 1:
        return _SelectRows.apply(table[0], index[0].contiguous()).unsqueeze(0)
    offsets = torch.arange(E, device=index.device).unsqueeze(1) * R
    rows = _SelectRows.apply(table.reshape(E * R, k), (index + offsets).reshape(-1))
    return rows.view(E, index.shape[1], k)


def member_matmul(x: Tensor, W: Tensor, bias: Tensor | None = None) -> Tensor:
    """x [E, ..., i] @ W [E, i, o] (+ bias [E, o]) -> [E, ..., o], each member with its own W."""
    E = x.shape[0]
    flat = x.reshape(E, -1, x.shape[-1])
    out = torch.bmm(flat, W) if bias is None else torch.baddbmm(bias.unsqueeze(1), flat, W)
    return out.view(*x.shape[:-1], W.shape[-1])


def layer_norm(x: Tensor, weight: Tensor, bias: Tensor, eps: float = 1e-5) -> Tensor:
    """LayerNorm over the last dim with per-member affine weight, bias [E, d]."""
    shape = (x.shape[0],) + (1,) * (x.dim() - 2) + (x.shape[-1],)
    return F.layer_norm(x, x.shape[-1:], eps=eps) * weight.view(shape) + bias.view(shape)


def _stacked(E: int, *shape: int) -> nn.Parameter:
    return nn.Parameter(torch.empty(E, *shape))


class EnsembleModule(nn.Module):
    """Common to both architectures: the config, per-member initialisation and the tokens' shape."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config

    @property
    def n_members(self) -> int:
        return self.config.n_members

    @property
    def vocab_in(self) -> int:
        return self.config.vocab_in

    @property
    def n_out(self) -> int:
        return self.config.n_out

    def init_spec(self, name: str) -> tuple[str, float]:  # pragma: no cover - abstract
        """('normal', std) | ('uniform', bound) | ('ones', 0) | ('zeros', 0) for the parameter
        called name, under config.init."""
        raise NotImplementedError

    @torch.no_grad()
    def init_members(self, seeds: list[int], init_scales: list[float] | None = None) -> None:
        """Member e's weights come from torch.Generator seeded with seeds[e], drawn on the CPU in
        parameter order, so a member equals a one-member model with the same seed on any device.

        Omnigrok (Liu et al. 2022): every weight matrix and embedding of member e is multiplied
        by init_scales[e] (default config.init_scale); LayerNorm gains stay 1 and biases 0
        (or, under init "pytorch", drawn like the weights).
        """
        scales = init_scales if init_scales is not None else [self.config.init_scale] * self.n_members
        if len(seeds) != self.n_members or len(scales) != self.n_members:
            raise ValueError(
                f"need one seed and init scale per member: {self.n_members} (got {len(seeds)}, {len(scales)})"
            )
        for e, (seed, init_scale) in enumerate(zip(seeds, scales)):
            generator = torch.Generator().manual_seed(seed)
            for name, p in self.named_parameters():
                kind, std = self.init_spec(name)
                if kind == "normal":
                    value = torch.randn(p.shape[1:], generator=generator) * (std * init_scale)
                    p[e].copy_(value)
                elif kind == "uniform":  # std is the bound here: U(-std, std)
                    value = torch.rand(p.shape[1:], generator=generator) * 2 - 1
                    p[e].copy_(value * (std * init_scale))
                elif kind == "ones":
                    p[e].fill_(1.0)
                else:
                    p[e].zero_()

    def member_tokens(self, tokens: Tensor) -> Tensor:
        """tokens [N, 3] (shared by all members) or [E, N, 3] (one batch per member) -> [E, N, 3]."""
        if tokens.dim() == 2:
            return tokens.unsqueeze(0).expand(self.n_members, -1, -1)
        if tokens.dim() != 3 or tokens.shape[0] != self.n_members:
            raise ValueError(
                f"tokens must be [N, {N_CTX}] or [{self.n_members}, N, {N_CTX}] (got {list(tokens.shape)})"
            )
        return tokens


class TransformerBlock(nn.Module):
    """Pre-LayerNorm block: x + attn(ln1(x)), then + mlp(ln2(x)). Parameters stacked over E."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        E, d_model, d_mlp = config.n_members, config.d_model, config.d_mlp
        self.n_heads, self.d_head = config.n_heads, d_model // config.n_heads
        self.act = ACTIVATIONS[config.act]
        self.use_ln = layer_norm = config.layer_norm
        if layer_norm:
            self.ln1_w, self.ln1_b = _stacked(E, d_model), _stacked(E, d_model)
        self.W_Q = _stacked(E, d_model, d_model)
        self.W_K = _stacked(E, d_model, d_model)
        self.W_V = _stacked(E, d_model, d_model)
        self.W_O = _stacked(E, d_model, d_model)
        if layer_norm:
            self.ln2_w, self.ln2_b = _stacked(E, d_model), _stacked(E, d_model)
        self.W_in = _stacked(E, d_model, d_mlp)
        self.b_in = _stacked(E, d_mlp)
        self.W_out = _stacked(E, d_mlp, d_model)
        self.b_out = _stacked(E, d_model)

    def ln1(self, x: Tensor) -> Tensor:
        return layer_norm(x, self.ln1_w, self.ln1_b) if self.use_ln else x

    def ln2(self, x: Tensor) -> Tensor:
        return layer_norm(x, self.ln2_w, self.ln2_b) if self.use_ln else x

    def heads(self, x: Tensor) -> Tensor:
        """[..., n_heads * d_head] -> [..., n_heads, d_head]"""
        return x.unflatten(-1, (self.n_heads, self.d_head))

    def attend(self, q: Tensor, k: Tensor, v: Tensor, patterns: list | None = None) -> Tensor:
        """Causal attention of queries at the LAST q.shape[2] positions.

        q [E, N, Tq, H, dh], k and v [E, N, T, H, dh] -> z [E, N, Tq, H * dh]. The query at
        position i sees keys 0..i: with three positions a loop over queries is cheaper than a mask.
        patterns (a list) receives each query's attention weights [E, N, i+1, H], for analysis.
        """
        T, Tq = k.shape[2], q.shape[2]
        scale = 1.0 / math.sqrt(self.d_head)
        out = []
        for j in range(Tq):
            i = T - Tq + j  # absolute position of this query
            scores = (q[:, :, j : j + 1] * k[:, :, : i + 1]).sum(-1) * scale  # [E, N, i+1, H]
            pattern = scores.softmax(dim=2)
            if patterns is not None:
                patterns.append(pattern)
            out.append((pattern.unsqueeze(-1) * v[:, :, : i + 1]).sum(2).flatten(-2))
        return out[0].unsqueeze(2) if Tq == 1 else torch.stack(out, dim=2)

    def mlp(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """x [E, ..., d] -> (mlp output [E, ..., d], post-activation [E, ..., d_mlp])"""
        acts = self.act(member_matmul(self.ln2(x), self.W_in, self.b_in))
        return member_matmul(acts, self.W_out, self.b_out), acts

    def forward(self, x: Tensor, last_only: bool) -> tuple[Tensor, Tensor]:
        """x [E, N, T, d]. last_only: return only the last position ([E, N, d]) and its MLP acts.

        The last block needs keys and values at every position, but the prediction reads only
        the last one: its query, attention output and MLP are computed there alone.
        """
        h = self.ln1(x)
        if last_only:
            kv = member_matmul(h, torch.cat([self.W_K, self.W_V], dim=2))
            k, v = (self.heads(t) for t in kv.chunk(2, dim=-1))
            q = self.heads(member_matmul(h[:, :, -1:], self.W_Q))
            x = x[:, :, -1]
            z = self.attend(q, k, v)[:, :, 0]
        else:
            qkv = member_matmul(h, torch.cat([self.W_Q, self.W_K, self.W_V], dim=2))
            q, k, v = (self.heads(t) for t in qkv.chunk(3, dim=-1))
            z = self.attend(q, k, v)
        x = x + member_matmul(z, self.W_O)
        out, acts = self.mlp(x)
        return x + out, acts


class EnsembleTransformer(EnsembleModule):
    """Decoder-only transformer (Nanda et al. 2023 layout), predicting at the last position."""

    def __init__(self, config: ModelConfig):
        super().__init__(config)
        if config.act not in ("relu", "gelu"):
            raise ValueError(f"transformer act must be relu or gelu (got {config.act!r})")
        E, d_model = config.n_members, config.d_model
        self.d_model, self.d_mlp, self.use_ln = d_model, config.d_mlp, config.layer_norm
        self.W_E = _stacked(E, config.vocab_in, d_model)
        self.W_pos = _stacked(E, N_CTX, d_model)
        self.blocks = nn.ModuleList(TransformerBlock(config) for _ in range(config.n_layers))
        if config.layer_norm:
            self.ln_f_w, self.ln_f_b = _stacked(E, d_model), _stacked(E, d_model)
        self.W_U = _stacked(E, d_model, config.n_out)

    def init_spec(self, name: str) -> tuple[str, float]:
        leaf = name.rsplit(".", 1)[-1]
        if leaf.endswith("_w"):
            return "ones", 0.0
        if leaf.endswith("_b"):
            return "zeros", 0.0
        if self.config.init == "pytorch":
            return self.pytorch_init(leaf)
        if leaf in ("b_in", "b_out"):
            return "zeros", 0.0
        if leaf == "W_U":  # Nanda et al. 2023 scale the unembedding by the output width
            return "normal", 1.0 / math.sqrt(self.n_out)
        return "normal", 1.0 / math.sqrt(self.d_model)

    def pytorch_init(self, leaf: str) -> tuple[str, float]:
        """torch.nn's defaults, as Lee et al. 2024's Decoder (Power et al.'s setting) gets them:
        nn.Embedding N(0, 1) for tokens and positions, nn.MultiheadAttention's xavier-uniform
        Q/K/V (one [3d, d] matrix: bound sqrt(6 / 4d)), and nn.Linear's kaiming-uniform
        U(+-1/sqrt(fan_in)) for weights and biases elsewhere (out_proj, MLP, unembedding)."""
        d = self.d_model
        if leaf in ("W_E", "W_pos"):
            return "normal", 1.0
        if leaf in ("W_Q", "W_K", "W_V"):
            return "uniform", math.sqrt(6.0 / (4 * d))
        fan_in = self.d_mlp if leaf in ("W_out", "b_out") else d
        return "uniform", 1.0 / math.sqrt(fan_in)

    def first_block_inputs(self, tok: Tensor) -> tuple[Tensor, Tensor]:
        """All vocab * 3 possible first-block inputs, and each row's index into them.

        The first block sees embeddings, which depend only on (token, position): its LayerNorm
        and Q/K/V projections are applied once to these vocab * 3 inputs and looked up, instead
        of being recomputed for every one of the N rows.

        Returns (table [E, 3 * vocab, d] with row t * vocab + token = W_E[token] + W_pos[t],
        index [E, N, 3]).
        """
        E, V = self.n_members, self.vocab_in
        table = (self.W_E.unsqueeze(1) + self.W_pos.unsqueeze(2)).reshape(E, N_CTX * V, -1)
        index = tok + torch.arange(N_CTX, device=tok.device) * V
        return table, index

    def single_block(
        self, tok: Tensor, table: Tensor, index: Tensor, all_query_tokens: bool | None = None
    ) -> tuple[Tensor, Tensor]:
        """One block that is both first and last: the residual and MLP acts at the last position.

        With one layer (Nanda et al. 2023) an attention score depends only on (query token, key
        token, key position), so scores are computed for each distinct query token (in practice
        only '=') against the 3 * vocab possible keys, then looked up per row: no per-row query
        or key vectors at all.

        all_query_tokens (default: on CUDA) scores every vocab token as a query instead of the
        distinct ones: torch.unique's output size depends on the data, so the GPU would have to
        stop and tell the host at every step; V queries cost a few more small matmuls.
        """
        block = self.blocks[0]
        E, N, T = tok.shape
        V, H, dh = self.vocab_in, block.n_heads, block.d_head
        h_table = block.ln1(table)  # [E, T*V, d]
        if all_query_tokens is None:
            all_query_tokens = tok.device.type == "cuda"
        if all_query_tokens:
            query_tokens, query_of_row = torch.arange(V, device=tok.device), tok[:, :, -1]
        else:
            query_tokens, query_of_row = torch.unique(tok[:, :, -1], return_inverse=True)
        U = query_tokens.numel()
        q = member_matmul(h_table[:, (T - 1) * V + query_tokens], block.W_Q).view(E, U, H, dh)
        k = member_matmul(h_table, block.W_K).view(E, T * V, H, dh)
        scores = torch.matmul(q.transpose(1, 2), k.permute(0, 2, 3, 1)) / math.sqrt(dh)  # [E, H, U, T*V]
        score_rows = scores.permute(0, 2, 3, 1).reshape(E, U * T * V, H)
        score_index = query_of_row.unsqueeze(-1) * (T * V) + index  # [E, N, T]
        pattern = gather_rows(score_rows, score_index.reshape(E, N * T)).view(E, N, T, H).softmax(dim=2)
        v = gather_rows(member_matmul(h_table, block.W_V), index.reshape(E, N * T)).view(E, N, T, H, dh)
        z = (pattern.unsqueeze(-1) * v).sum(2).flatten(-2)  # [E, N, H*dh]
        x = gather_rows(table, index[:, :, -1]) + member_matmul(z, block.W_O)
        out, acts = block.mlp(x)
        return x + out, acts

    def forward(self, tokens: Tensor, return_mlp_acts: bool = False):
        """tokens [N, 3] or [E, N, 3] -> logits [E, N, n_out] at the last position
        (and the last block's MLP post-activation there, [E, N, d_mlp], if return_mlp_acts)."""
        tok = self.member_tokens(tokens)
        E, N, T = tok.shape
        table, index = self.first_block_inputs(tok)
        first = self.blocks[0]
        if len(self.blocks) == 1:
            x, acts = self.single_block(tok, table, index)
        else:
            qkv_table = member_matmul(first.ln1(table), torch.cat([first.W_Q, first.W_K, first.W_V], dim=2))
            qkv = gather_rows(qkv_table, index.reshape(E, N * T)).view(E, N, T, -1)
            q, k, v = (first.heads(t) for t in qkv.chunk(3, dim=-1))
            x = gather_rows(table, index.reshape(E, N * T)).view(E, N, T, -1)
            x = x + member_matmul(first.attend(q, k, v), first.W_O)
            out, _ = first.mlp(x)
            x = x + out
            for block in self.blocks[1:-1]:
                x, _ = block(x, last_only=False)
            x, acts = self.blocks[-1](x, last_only=True)
        if self.use_ln:
            x = layer_norm(x, self.ln_f_w, self.ln_f_b)
        logits = member_matmul(x, self.W_U)
        return (logits, acts) if return_mlp_acts else logits

    @torch.no_grad()
    def last_position_attention(self, tokens: Tensor) -> Tensor:
        """The last position's ('=') attention weights to each position, in every layer:
        tokens [N, 3] or [E, N, 3] -> [E, n_layers, N, n_heads, 3]. The plain full-sequence
        forward pass (no shortcuts: analysis only, on every layer)."""
        tok = self.member_tokens(tokens)
        E, N, T = tok.shape
        table, index = self.first_block_inputs(tok)
        x = gather_rows(table, index.reshape(E, N * T)).view(E, N, T, -1)
        per_layer = []
        for block in self.blocks:
            qkv = member_matmul(block.ln1(x), torch.cat([block.W_Q, block.W_K, block.W_V], dim=2))
            q, k, v = (block.heads(t) for t in qkv.chunk(3, dim=-1))
            patterns: list[Tensor] = []
            x = x + member_matmul(block.attend(q, k, v, patterns), block.W_O)
            per_layer.append(patterns[-1])  # the last query's [E, N, T, H]
            x = x + block.mlp(x)[0]
        return torch.stack(per_layer, dim=1).transpose(-1, -2)

    @torch.no_grad()
    def analysis_weights(self, member: int) -> dict[str, Tensor | None]:
        """One member's weights as plain detached 2-D tensors ("x @ W" layout; last block for the
        per-layer ones): W_E [vocab, d], W_pos [3, d], W_Q/W_K/W_V [d, H*dh], W_O [H*dh, d],
        W_in [d, d_mlp], b_in [d_mlp], W_out [d_mlp, d], b_out [d], W_U [d, n_out]."""
        last = self.blocks[-1]
        weights = {
            "W_E": self.W_E[member], "W_pos": self.W_pos[member],
            "W_Q": last.W_Q[member], "W_K": last.W_K[member], "W_V": last.W_V[member],
            "W_O": last.W_O[member], "W_in": last.W_in[member], "b_in": last.b_in[member],
            "W_out": last.W_out[member], "b_out": last.b_out[member], "W_U": self.W_U[member],
        }
        return {k: v.detach().clone() for k, v in weights.items()}


class EnsembleMLP(EnsembleModule):
    """Gromov 2023: embeddings of a and b concatenated -> n_layers hidden layers -> logits."""

    def __init__(self, config: ModelConfig):
        super().__init__(config)
        E, d_model, d_mlp, n_layers = config.n_members, config.d_model, config.d_mlp, config.n_layers
        self.d_model, self.d_mlp = d_model, d_mlp
        self.act = ACTIVATIONS[config.act]
        self.W_E = _stacked(E, config.vocab_in, d_model)
        self.hidden_W = nn.ParameterList(
            [_stacked(E, 2 * d_model, d_mlp)] + [_stacked(E, d_mlp, d_mlp) for _ in range(n_layers - 1)]
        )
        self.hidden_b = nn.ParameterList([_stacked(E, d_mlp) for _ in range(n_layers)])
        self.W_U = _stacked(E, d_mlp, config.n_out)
        self.b_U = _stacked(E, config.n_out)

    def init_spec(self, name: str) -> tuple[str, float]:
        if name == "W_E":  # unit-variance embeddings, like nn.Embedding
            return "normal", 1.0
        fan_in = 2 * self.d_model if name in ("hidden_W.0", "hidden_b.0") else self.d_mlp
        if self.config.init == "pytorch":  # nn.Linear's U(+-1/sqrt(fan_in)), weights and biases
            return "uniform", 1.0 / math.sqrt(fan_in)
        if name.startswith("hidden_b") or name == "b_U":
            return "zeros", 0.0
        return "normal", 1.0 / math.sqrt(fan_in)

    def first_layer_inputs(self, tok: Tensor) -> Tensor:
        """The first hidden layer's pre-activation (without bias) [E, N, d_mlp] of tokens [E, N, 3].

        That layer is linear in each embedding, so the whole vocab is projected once (through
        a's half of the weights and through b's) and each row looks its two terms up, instead of
        multiplying N concatenated embeddings.
        """
        E, N, _ = tok.shape
        V, d = self.vocab_in, self.d_model
        W0 = self.hidden_W[0]
        table = torch.cat([torch.bmm(self.W_E, W0[:, :d]), torch.bmm(self.W_E, W0[:, d:])], dim=1)
        # arange, not torch.tensor([0, V], device=...): a tensor built from a list is copied to
        # the GPU synchronously, which would stall every step
        index = tok[:, :, :2] + torch.arange(2, device=tok.device) * V
        return gather_rows(table, index.reshape(E, 2 * N)).view(E, N, 2, -1).sum(2)

    def forward(self, tokens: Tensor, return_mlp_acts: bool = False):
        """tokens [N, 3] or [E, N, 3] ('=' is ignored) -> logits [E, N, n_out]
        (and the last hidden layer's activations [E, N, d_mlp] if return_mlp_acts)."""
        tok = self.member_tokens(tokens)
        h = self.act(self.first_layer_inputs(tok) + self.hidden_b[0].unsqueeze(1))
        for W, b in zip(self.hidden_W[1:], self.hidden_b[1:]):
            h = self.act(member_matmul(h, W, b))
        logits = member_matmul(h, self.W_U, self.b_U)
        return (logits, h) if return_mlp_acts else logits

    @torch.no_grad()
    def analysis_weights(self, member: int) -> dict[str, Tensor | None]:
        """W_E [vocab, d], W_U [d_mlp, n_out] (last hidden -> out), b_U [n_out],
        W_in_a / W_in_b [d, d_mlp] (first hidden layer, acting on a's and b's embedding);
        W_in and W_out are None (they name transformer weights)."""
        W0 = self.hidden_W[0][member]
        weights = {
            "W_E": self.W_E[member], "W_U": self.W_U[member], "b_U": self.b_U[member],
            "W_in_a": W0[: self.d_model], "W_in_b": W0[self.d_model :],
        }
        out: dict[str, Tensor | None] = {k: v.detach().clone() for k, v in weights.items()}
        out["W_in"] = None
        out["W_out"] = None
        return out


ARCHITECTURES: dict[str, type[EnsembleModule]] = {"transformer": EnsembleTransformer, "mlp": EnsembleMLP}


def build_model(spec: ExperimentSpec, device: torch.device | str = "cpu", init: bool = True) -> EnsembleModule:
    """The spec's model with spec.ensemble.size members, each initialised from its own seed and
    init scale (init=False leaves the weights unset, for a caller that loads them)."""
    config = ModelConfig.from_spec(spec)
    model = ARCHITECTURES[config.arch](config)
    if init:
        model.init_members(member_seeds(spec), spec.ensemble.per_member("init_scale", spec.model.init_scale))
    return model.to(device)
