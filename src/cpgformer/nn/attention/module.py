"""The attention sublayer: projections, then one kind of attention computed by the dense
reference (``impl="reference"``) or by the fast path (``impl="fast"``, backend chosen in
:mod:`cpgformer.nn.attention.backends`)."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from cpgformer.nn.attention import backends
from cpgformer.nn.attention.reference import (
    cell_attention_reference,
    site_attention_reference,
    site_cell_attention_reference,
)
from cpgformer.nn.linear import linear, module_linear
from cpgformer.nn.posenc import RelativePositions

KINDS = ("sites", "cells", "sites_cells")


class Attention(nn.Module):
    """One attention sublayer of a given kind (``sites``, ``cells`` or ``sites_cells``).

    Parameters: ``qkv`` Linear(D -> 3·H·d) (q | k | v, head-major), ``out`` Linear(H·d -> D), and for
    the positional kinds ``pos_proj`` Linear(D -> H·d) on the sinusoid plus the content and position
    biases ``u``, ``v`` (``content_bias``, ``position_bias``, [H, d]).
    """

    def __init__(self, kind: str, hidden: int, heads: int, head_dim: int, dropout: float) -> None:
        super().__init__()
        if kind not in KINDS:
            raise ValueError(f"unknown attention kind {kind!r}")
        self.kind = kind
        self.heads = heads
        self.head_dim = head_dim
        self.dropout = dropout
        inner = heads * head_dim
        self.qkv = nn.Linear(hidden, 3 * inner)
        self.out = nn.Linear(inner, hidden)
        self.positional = kind != "cells"
        if self.positional:
            self.pos_proj = nn.Linear(hidden, inner)
            bound = 1.0 / math.sqrt(head_dim)
            self.content_bias = nn.Parameter(torch.empty(heads, head_dim).uniform_(-bound, bound))
            self.position_bias = nn.Parameter(torch.empty(heads, head_dim).uniform_(-bound, bound))

    def scaled_qkv(self) -> tuple[Tensor, Tensor]:
        """Weight and bias of the qkv projection with the query rows multiplied by ``d**-0.5``
        (the original scales q before any bias is added)."""
        inner = self.heads * self.head_dim
        weight = self.qkv.weight
        factor = torch.ones(3 * inner, dtype=weight.dtype, device=weight.device)
        factor[:inner] = self.head_dim**-0.5
        return weight * factor.unsqueeze(1), self.qkv.bias * factor

    def forward(
        self, x: Tensor, rel: RelativePositions | None, half_window: int, impl: str = "fast"
    ) -> Tensor:
        """``x`` ``[B, L, C, D]`` -> ``[B, L, C, D]``."""
        batch, length, cells, _ = x.shape
        fast = impl == "fast"
        scale = self.head_dim**-0.5
        if fast:  # fold the query scaling into the projection (saves a pass over q)
            qkv = linear(x, *self.scaled_qkv())
        else:
            qkv = self.qkv(x)
        qkv = qkv.view(batch, length, cells, 3, self.heads, self.head_dim)
        p = self.dropout if self.training else 0.0
        if self.positional:
            assert rel is not None
            projected = self.pos_proj(rel.window(x.dtype) if fast else rel.dense(x.dtype))
            rel_proj = projected.view(*projected.shape[:-1], self.heads, self.head_dim)
        if fast and self.kind == "cells":  # the backends read the packed projection directly
            z = backends.cell_attention(qkv, p)
        elif fast and self.kind == "sites":
            u, v = self.content_bias, self.position_bias
            z = backends.site_attention(qkv, rel_proj, u, v, half_window, p)
        elif fast:
            q, k, v = qkv.unbind(3)
            z = backends.site_cell_attention(
                q, k, v, rel_proj, self.content_bias, self.position_bias, half_window, p
            )
        else:
            q, k, v = qkv.unbind(3)
            q = q * scale
            if self.kind == "cells":
                z = cell_attention_reference(q, k, v, self.dropout, self.training)
            else:
                fn = (
                    site_attention_reference
                    if self.kind == "sites"
                    else site_cell_attention_reference
                )
                args = (self.content_bias, self.position_bias, half_window)
                z = fn(q, k, v, rel_proj, *args, self.dropout, self.training)
        z = z.reshape(batch, length, cells, self.heads * self.head_dim)
        return module_linear(self.out, z) if fast else self.out(z)
