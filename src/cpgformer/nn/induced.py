"""Attention across cells through a few learned summary tokens per site (inducing points).

The published ``cells`` attention lets every cell attend to every other cell at a site: its cost per
token grows with the number of cells C. ``induced`` attention replaces it by two steps of cost
``O(M)`` per token for ``M`` learned inducing tokens (``n_inducing``), whatever C is:

1. **read**: at each site, ``M`` learned query vectors attend over the site's C cell tokens; each
   summary is ``S_m = LN(I_m + W_r · attn(I_m, cells))`` — one soft cluster of cells per token;
2. **write**: every cell token attends over its site's ``M`` summaries: ``z_c = W_o · attn(x_c, S)``.

Summaries depend on which cells are present (an average over them), not on how many: the same model
applies to any number of cells, new cells included. The two attentions are plain softmax attention
(scaled by ``d**-0.5``) with dropout on the probabilities in training.

The reference implementation writes both steps head by head with explicit score matrices; the fast
one folds the projections into a few large per-site matrix products (same function, tested equal).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cpgformer.nn.attention import fast_dropout


def _attend_reference(q: Tensor, k: Tensor, v: Tensor, dropout: float, training: bool) -> Tensor:
    """``q [N, H, Q, d]``, ``k, v [N, H, K, d]`` -> ``[N, H, Q, d]`` (explicit softmax)."""
    scores = torch.einsum("nhqd,nhkd->nhqk", q, k) * q.shape[-1] ** -0.5
    probs = scores.softmax(-1)
    if training and dropout > 0:
        probs = F.dropout(probs, dropout, training=True)
    return torch.einsum("nhqk,nhkd->nhqd", probs, v)


class InducedCellAttention(nn.Module):
    """One ``induced`` attention sublayer: ``x [B, L, C, D] -> [B, L, C, D]``.

    Parameters: ``inducing`` [M, D]; read step ``read_q`` (D -> H·d), ``read_kv`` (D -> 2·H·d),
    ``read_out`` (H·d -> D), ``read_norm`` (LayerNorm D); write step ``write_q`` (D -> H·d),
    ``write_kv`` (D -> 2·H·d), ``out`` (H·d -> D).
    """

    kind = "induced"

    def __init__(
        self, hidden: int, heads: int, head_dim: int, n_inducing: int, dropout: float
    ) -> None:
        super().__init__()
        self.heads = heads
        self.head_dim = head_dim
        self.dropout = dropout
        inner = heads * head_dim
        self.inducing = nn.Parameter(torch.randn(n_inducing, hidden) / math.sqrt(hidden))
        self.read_q = nn.Linear(hidden, inner)
        self.read_kv = nn.Linear(hidden, 2 * inner)
        self.read_out = nn.Linear(inner, hidden)
        self.read_norm = nn.LayerNorm(hidden)
        self.write_q = nn.Linear(hidden, inner)
        self.write_kv = nn.Linear(hidden, 2 * inner)
        self.out = nn.Linear(inner, hidden)

    @property
    def n_inducing(self) -> int:
        return int(self.inducing.shape[0])

    def _heads(self, t: Tensor) -> Tensor:
        """``[N, T, H·d]`` -> ``[N, H, T, d]``."""
        n, tokens, _ = t.shape
        return t.view(n, tokens, self.heads, self.head_dim).transpose(1, 2)

    def forward(self, x: Tensor, impl: str = "fast") -> Tensor:
        if impl == "fast":
            return self._forward_fast(x)
        return self._forward_reference(x)

    # ---- reference: the definition, head by head ----------------------------------------------
    def _forward_reference(self, x: Tensor) -> Tensor:
        batch, length, cells, hidden = x.shape
        n = batch * length
        tokens = x.reshape(n, cells, hidden)
        summary = self.summaries(x).reshape(n, self.n_inducing, hidden)
        k, v = self.write_kv(summary).chunk(2, dim=-1)
        q = self._heads(self.write_q(tokens))
        z = _attend_reference(q, self._heads(k), self._heads(v), self.dropout, self.training)
        z = z.transpose(1, 2).reshape(batch, length, cells, self.heads * self.head_dim)
        return self.out(z)

    # ---- fast: the projections folded into the per-site matrices -------------------------------
    def _forward_fast(self, x: Tensor) -> Tensor:
        """Same function as the reference, written as a few large matrix products.

        Read: the inducing queries are the same at every site, so ``q_hm · (W_k x + b_k)`` is
        ``x · (W_kᵀ q_hm) + b_k · q_hm``: one GEMM of the tokens with a ``[D, H·M]`` matrix; values
        enter through ``Σ_c p_c (W_v x_c + b_v) = W_v (Σ_c p_c x_c) + b_v Σ_c p_c``. Write: the keys
        and the output projection of the values are folded per site into ``[D, H·M]`` and
        ``[H·M, D]`` matrices, so each token costs two products of width ``H·M``."""
        batch, length, cells, hidden = x.shape
        n, heads, dim, m = batch * length, self.heads, self.head_dim, self.n_inducing
        scale = dim**-0.5
        p = self.dropout if self.training else 0.0
        tokens = x.reshape(n, cells, hidden)
        # read
        q = self.read_q(self.inducing).view(m, heads, dim) * scale
        w_k, w_v = self.read_kv.weight.view(2, heads, dim, hidden).unbind(0)
        b_k, b_v = self.read_kv.bias.view(2, heads, dim).unbind(0)
        key_map = torch.einsum("mhd,hde->ehm", q, w_k).reshape(hidden, heads * m)
        key_bias = torch.einsum("mhd,hd->hm", q, b_k).reshape(heads * m)
        scores = torch.addmm(key_bias, tokens.reshape(n * cells, hidden), key_map)
        probs = _dropout(scores.view(n, cells, heads * m).softmax(1), p)
        pooled = torch.bmm(probs.transpose(1, 2), tokens).view(n, heads, m, hidden)
        weight_sum = probs.sum(1).view(n, heads, m)
        values = torch.einsum("nhme,hde->nmhd", pooled, w_v)
        values = values + weight_sum.transpose(1, 2).unsqueeze(-1) * b_v
        read = values.reshape(n, m, heads * dim)
        summary = self.read_norm(self.inducing + self.read_out(read))
        # write
        k_s, v_s = self.write_kv(summary).view(n, m, 2, heads, dim).unbind(2)
        w_q = self.write_q.weight.view(heads, dim, hidden)
        b_q = self.write_q.bias.view(heads, dim)
        query_map = torch.einsum("nmhd,hde->nehm", k_s, w_q * scale).reshape(n, hidden, heads * m)
        query_bias = torch.einsum("nmhd,hd->nhm", k_s, b_q * scale).reshape(n, 1, heads * m)
        scores = torch.baddbmm(query_bias, tokens, query_map)
        probs = _dropout(scores.view(n, cells, heads, m).softmax(-1), p)
        w_o = self.out.weight.view(hidden, heads, dim)
        value_map = torch.einsum("nmhd,ehd->nhme", v_s, w_o).reshape(n, heads * m, hidden)
        out = torch.baddbmm(self.out.bias, probs.view(n, cells, heads * m), value_map)
        return out.view(batch, length, cells, hidden)

    def summaries(self, x: Tensor) -> Tensor:
        """The ``M`` summary tokens of each site (reference math): ``[B, L, C, D] -> [B, L, M, D]``."""
        batch, length, cells, hidden = x.shape
        n = batch * length
        tokens = x.reshape(n, cells, hidden)
        k, v = self.read_kv(tokens).chunk(2, dim=-1)
        q = self._heads(self.read_q(self.inducing).unsqueeze(0)).expand(n, -1, -1, -1)
        read = _attend_reference(q, self._heads(k), self._heads(v), self.dropout, self.training)
        read = read.transpose(1, 2).reshape(n, self.n_inducing, -1)
        summary = self.read_norm(self.inducing + self.read_out(read))
        return summary.view(batch, length, self.n_inducing, hidden)


def _dropout(probs: Tensor, p: float) -> Tensor:
    """Dropout on attention probabilities with the fast path's cheap keep decisions."""
    return fast_dropout(probs, p, True) if p > 0 else probs


def induced_attention_reference(module: InducedCellAttention, x: Tensor) -> Tensor:
    """The module's function with explicit score matrices (the readable reference)."""
    return module(x, impl="reference")
