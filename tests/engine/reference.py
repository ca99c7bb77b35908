"""Plain per-run reference models, written the usual way: one run, nn.Linear layers, the whole
sequence at every position, logits at every position, then the last one taken.

The engine is tested against these (same weights -> same logits), and bench/bench_engine.py
times the engine against ReferenceTransformer trained with torch.optim.AdamW.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

ACTS = {"relu": F.relu, "gelu": F.gelu, "quadratic": lambda x: x * x}


class ReferenceBlock(nn.Module):
    def __init__(self, d_model: int, n_heads: int, d_mlp: int, act: str, layer_norm: bool):
        super().__init__()
        self.n_heads, self.d_head = n_heads, d_model // n_heads
        self.ln1 = nn.LayerNorm(d_model) if layer_norm else nn.Identity()
        self.ln2 = nn.LayerNorm(d_model) if layer_norm else nn.Identity()
        self.q = nn.Linear(d_model, d_model, bias=False)
        self.k = nn.Linear(d_model, d_model, bias=False)
        self.v = nn.Linear(d_model, d_model, bias=False)
        self.o = nn.Linear(d_model, d_model, bias=False)
        self.fc_in = nn.Linear(d_model, d_mlp)
        self.fc_out = nn.Linear(d_mlp, d_model)
        self.act = ACTS[act]
        self.mlp_acts: Tensor | None = None

    def forward(self, x: Tensor) -> Tensor:
        B, T, D = x.shape
        h = self.ln1(x)
        q, k, v = (f(h).view(B, T, self.n_heads, self.d_head).transpose(1, 2) for f in (self.q, self.k, self.v))
        scores = q @ k.transpose(-1, -2) / math.sqrt(self.d_head)
        causal = torch.ones(T, T, dtype=torch.bool, device=x.device).tril()
        scores = scores.masked_fill(~causal, float("-inf"))
        z = (scores.softmax(-1) @ v).transpose(1, 2).reshape(B, T, D)
        x = x + self.o(z)
        acts = self.act(self.fc_in(self.ln2(x)))
        self.mlp_acts = acts
        return x + self.fc_out(acts)


class ReferenceTransformer(nn.Module):
    def __init__(self, vocab: int, n_out: int, n_layers: int, d_model: int, n_heads: int, d_mlp: int,
                 act: str = "relu", layer_norm: bool = False, n_ctx: int = 3):
        super().__init__()
        self.embed = nn.Embedding(vocab, d_model)
        self.pos = nn.Parameter(torch.randn(n_ctx, d_model) / math.sqrt(d_model))
        self.blocks = nn.ModuleList(ReferenceBlock(d_model, n_heads, d_mlp, act, layer_norm) for _ in range(n_layers))
        self.ln_f = nn.LayerNorm(d_model) if layer_norm else nn.Identity()
        self.unembed = nn.Linear(d_model, n_out, bias=False)

    def forward(self, tokens: Tensor, return_mlp_acts: bool = False):
        x = self.embed(tokens) + self.pos
        for block in self.blocks:
            x = block(x)
        logits = self.unembed(self.ln_f(x))[:, -1]
        if return_mlp_acts:
            return logits, self.blocks[-1].mlp_acts[:, -1]
        return logits


class ReferenceMLP(nn.Module):
    def __init__(self, vocab: int, n_out: int, n_layers: int, d_model: int, d_mlp: int, act: str = "relu"):
        super().__init__()
        self.embed = nn.Embedding(vocab, d_model)
        self.hidden = nn.ModuleList(
            nn.Linear(2 * d_model if i == 0 else d_mlp, d_mlp) for i in range(n_layers)
        )
        self.out = nn.Linear(d_mlp, n_out)
        self.act = ACTS[act]

    def forward(self, tokens: Tensor, return_mlp_acts: bool = False):
        h = self.embed(tokens[:, :2]).flatten(1)
        for layer in self.hidden:
            h = self.act(layer(h))
        logits = self.out(h)
        return (logits, h) if return_mlp_acts else logits


@torch.no_grad()
def reference_from_engine(model, member: int, spec) -> nn.Module:
    """A reference model holding member `member`'s weights of an engine model built from spec."""
    m = spec.model
    vocab, n_out = model.vocab_in, model.n_out
    if m.arch == "mlp":
        ref = ReferenceMLP(vocab, n_out, m.n_layers, m.d_model, m.d_mlp, m.act)
        ref.embed.weight.copy_(model.W_E[member])
        for layer, W, b in zip(ref.hidden, model.hidden_W, model.hidden_b):
            layer.weight.copy_(W[member].T)
            layer.bias.copy_(b[member])
        ref.out.weight.copy_(model.W_U[member].T)
        ref.out.bias.copy_(model.b_U[member])
        return ref.to(model.W_E.device)
    ref = ReferenceTransformer(vocab, n_out, m.n_layers, m.d_model, m.n_heads, m.d_mlp, m.act, m.layer_norm)
    ref.embed.weight.copy_(model.W_E[member])
    ref.pos.copy_(model.W_pos[member])
    for rb, eb in zip(ref.blocks, model.blocks):
        for lin, name in ((rb.q, "W_Q"), (rb.k, "W_K"), (rb.v, "W_V"), (rb.o, "W_O"),
                          (rb.fc_in, "W_in"), (rb.fc_out, "W_out")):
            lin.weight.copy_(getattr(eb, name)[member].T)
        rb.fc_in.bias.copy_(eb.b_in[member])
        rb.fc_out.bias.copy_(eb.b_out[member])
        if m.layer_norm:
            rb.ln1.weight.copy_(eb.ln1_w[member]); rb.ln1.bias.copy_(eb.ln1_b[member])
            rb.ln2.weight.copy_(eb.ln2_w[member]); rb.ln2.bias.copy_(eb.ln2_b[member])
    if m.layer_norm:
        ref.ln_f.weight.copy_(model.ln_f_w[member]); ref.ln_f.bias.copy_(model.ln_f_b[member])
    ref.unembed.weight.copy_(model.W_U[member].T)
    return ref.to(model.W_E.device)
