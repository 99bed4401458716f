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

:func:`induced_attention_reference` writes both steps with explicit score matrices (for tests);
the module runs them with ``scaled_dot_product_attention``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def _attend_reference(q: Tensor, k: Tensor, v: Tensor, dropout: float, training: bool) -> Tensor:
    """``q [N, H, Q, d]``, ``k, v [N, H, K, d]`` -> ``[N, H, Q, d]`` (explicit softmax)."""
    scores = torch.einsum("nhqd,nhkd->nhqk", q, k) * q.shape[-1] ** -0.5
    probs = scores.softmax(-1)
    if training and dropout > 0:
        probs = F.dropout(probs, dropout, training=True)
    return torch.einsum("nhqk,nhkd->nhqd", probs, v)


def _attend_fast(q: Tensor, k: Tensor, v: Tensor, dropout: float, training: bool) -> Tensor:
    return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout if training else 0.0)


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

    def summaries(self, x: Tensor, impl: str = "fast") -> Tensor:
        """The ``M`` summary tokens of each site: ``x [B, L, C, D]`` -> ``[B, L, M, D]``."""
        batch, length, cells, hidden = x.shape
        attend = _attend_fast if impl == "fast" else _attend_reference
        tokens = x.reshape(batch * length, cells, hidden)
        k, v = self.read_kv(tokens).chunk(2, dim=-1)
        q = self._heads(self.read_q(self.inducing).unsqueeze(0))  # [1, H, M, d]
        q = q.expand(batch * length, -1, -1, -1)
        read = attend(q, self._heads(k), self._heads(v), self.dropout, self.training)
        read = read.transpose(1, 2).reshape(batch * length, self.n_inducing, -1)
        summary = self.read_norm(self.inducing + self.read_out(read))
        return summary.view(batch, length, self.n_inducing, hidden)

    def forward(self, x: Tensor, impl: str = "fast") -> Tensor:
        batch, length, cells, hidden = x.shape
        attend = _attend_fast if impl == "fast" else _attend_reference
        summary = self.summaries(x, impl).reshape(batch * length, self.n_inducing, hidden)
        k, v = self.write_kv(summary).chunk(2, dim=-1)
        q = self._heads(self.write_q(x.reshape(batch * length, cells, hidden)))
        z = attend(q, self._heads(k), self._heads(v), self.dropout, self.training)
        z = z.transpose(1, 2).reshape(batch, length, cells, self.heads * self.head_dim)
        return self.out(z)


def induced_attention_reference(module: InducedCellAttention, x: Tensor) -> Tensor:
    """The module's function with explicit score matrices (the readable reference)."""
    return module(x, impl="reference")
