"""Attention math, written once, in two implementations of the same function.

All functions take per-token projections ``q, k, v`` of shape ``[B, L, C, H, d]`` (B batch, L sites,
C cells, H heads, d head dim) with ``q`` already multiplied by ``d**-0.5`` and return ``z`` of the same
shape. Three kinds of attention exist (which axis is a matter of the wrapper, see ``MODES`` in config):

* ``sites``: within each cell, every site attends to the ``W = 2w+1`` sites around it (rows, not bp);
  score(i, o) = (q_i + u)·k_{i+o} + (q_i + v)·R_{i,o}, R = projected sinusoid of pos[i+o] - pos[i];
  slots outside the segment are excluded.
* ``cells``: at each site, every cell attends to all cells; score = q·k.
* ``sites_cells`` (2D): keys = W sites x all C cells; score = (q + u)·k + (q + v)·R_{i,o} (the position
  term depends on the site offset only); one softmax over all W·C keys.

``*_reference``: dense score matrices with a band mask, obviously correct, O(L²) — for tests.
``*_fast``: blocked band attention along sites (query blocks of ``BLOCK`` sites with a ``w``-site halo
of keys), the position term computed once per site as a matmul with cells as the M dimension
(never repeated per cell), and chunked matmul-softmax or SDPA across cells chosen by size.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cpgformer.nn import native
from cpgformer.nn.cores import CellCore, SiteBandCore, dropout_threshold, keep_mask
from cpgformer.nn.posenc import RelativePositions

BLOCK = 16
"""Query sites per block in the fast band attention."""
SDPA_MIN_CELLS = 160
"""Inference across cells uses ``scaled_dot_product_attention`` from this many cells, the chunked
:class:`~cpgformer.nn.cores.CellCore` below (faster there on this project's 2-core CPU: 22 vs 32 ms
at 20 cells x 1024 sites, 140 vs 167 ms at 122 x 512; equal at 160)."""


def _dropout(probs: Tensor, p: float, training: bool) -> Tensor:
    """Standard dropout (reference path)."""
    return F.dropout(probs, p, training=True) if training and p > 0 else probs


def fast_dropout(x: Tensor, p: float, training: bool = True) -> Tensor:
    """Dropout with the cheap keep decisions of :func:`cpgformer.nn.cores.keep_mask` (the drop
    probability rounded to a multiple of 1/256, survivors scaled by the exact inverse keep rate of
    the rounded value, so the expectation is unchanged). Seeded by the default generator."""
    if not training or p <= 0:
        return x
    threshold, scale = dropout_threshold(p)
    return x * keep_mask(x.shape, threshold, x.dtype, x.device).mul_(scale)


def _band(length: int, half_window: int, device: torch.device) -> Tensor:
    index = torch.arange(length, device=device)
    return (index.unsqueeze(0) - index.unsqueeze(1)).abs() <= half_window  # [Lq, Lk]


# ----------------------------------------------------------------------------------------------
# reference implementations


def site_attention_reference(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    rel: Tensor,
    content_bias: Tensor,
    position_bias: Tensor,
    half_window: int,
    dropout: float = 0.0,
    training: bool = False,
) -> Tensor:
    """Window attention along sites; ``rel`` ``[B, Lq, Lk, H, d]`` = projected dense encodings."""
    content = torch.einsum("bicnd,bjcnd->bcnij", q + content_bias, k)
    position = torch.einsum("bicnd,bijnd->bcnij", q + position_bias, rel)
    band = _band(q.shape[1], half_window, q.device)
    scores = (content + position).masked_fill(~band, float("-inf"))
    probs = _dropout(scores.softmax(-1), dropout, training)
    return torch.einsum("bcnij,bjcnd->bicnd", probs, v)


def cell_attention_reference(
    q: Tensor, k: Tensor, v: Tensor, dropout: float = 0.0, training: bool = False
) -> Tensor:
    """Full attention across cells at each site."""
    scores = torch.einsum("bicnd,bisnd->bincs", q, k)
    probs = _dropout(scores.softmax(-1), dropout, training)
    return torch.einsum("bincs,bisnd->bicnd", probs, v)


def site_cell_attention_reference(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    rel: Tensor,
    content_bias: Tensor,
    position_bias: Tensor,
    half_window: int,
    dropout: float = 0.0,
    training: bool = False,
) -> Tensor:
    """2D window attention: keys are (site within the window) x (every cell)."""
    content = torch.einsum("bicnd,bjsnd->bncijs", q + content_bias, k)
    position = torch.einsum("bicnd,bijnd->bncij", q + position_bias, rel).unsqueeze(-1)
    band = _band(q.shape[1], half_window, q.device).unsqueeze(-1)  # [Lq, Lk, 1]
    scores = (content + position).masked_fill(~band, float("-inf"))
    shape = scores.shape
    probs = scores.flatten(-2).softmax(-1).view(shape)
    probs = _dropout(probs, dropout, training)
    return torch.einsum("bncijs,bjsnd->bicnd", probs, v)


# ----------------------------------------------------------------------------------------------
# fast implementations


def _n_blocks(length: int) -> int:
    return max(1, math.ceil(length / BLOCK))


def _query_blocks(t: Tensor, n_blocks: int) -> Tensor:
    """``[N, L, f]`` -> ``[N, nblk, BLOCK, f]`` (zero padded at the end)."""
    n, length, f = t.shape
    t = F.pad(t, (0, 0, 0, n_blocks * BLOCK - length))
    return t.view(n, n_blocks, BLOCK, f)


def _halo_blocks(t: Tensor, n_blocks: int, halo: int) -> Tensor:
    """``[N, L, f]`` -> ``[N, nblk, BLOCK + 2*halo, f]``: each block's keys with ``halo`` each side."""
    length = t.shape[1]
    t = F.pad(t, (0, 0, halo, n_blocks * BLOCK - length + halo))
    return t.unfold(1, BLOCK + 2 * halo, BLOCK).transpose(-1, -2)


class _OnBand(torch.autograd.Function):
    """Window-slot scores ``[N, L, W]`` -> block layout ``[N, nblk, BLOCK, BLOCK + W - 1]``.

    Entry (block b, query j, key slot j + o) holds slot o of site ``b*BLOCK + j``; every other entry,
    and every slot whose key lies outside ``[0, L)``, holds ``fill`` (the lowest finite value, which
    masks it in the softmax). Backward gathers the band back with the same reshape trick instead of
    autograd's zero-filled pad/slice gradients.
    """

    @staticmethod
    def forward(ctx, scores: Tensor, half_window: int, fill: float) -> Tensor:  # noqa: ANN001
        n, length, width = scores.shape
        n_blocks = _n_blocks(length)
        span = BLOCK + width - 1
        buffer = scores.new_full((n, n_blocks * BLOCK, span + 1), fill)
        buffer[:, :length, :width] = scores
        head = min(half_window, length)
        for row in range(head):  # slots before the segment start
            buffer[:, row, : half_window - row] = fill
        for row in range(max(length - half_window, 0), length):  # slots past the segment end
            buffer[:, row, length - row + half_window : width] = fill
        flat = buffer.view(n, n_blocks, BLOCK * (span + 1))[..., : BLOCK * span]
        ctx.shape = (n, length, width, n_blocks, span, half_window)
        return flat.reshape(n, n_blocks, BLOCK, span)

    @staticmethod
    def backward(ctx, grad: Tensor):  # noqa: ANN001, ANN205
        n, length, width, n_blocks, span, half_window = ctx.shape
        flat = F.pad(grad.reshape(n, n_blocks, BLOCK * span), (0, BLOCK))
        band = flat.view(n, n_blocks * BLOCK, span + 1)[:, :length, :width]
        out = band.contiguous()
        for row in range(min(half_window, length)):
            out[:, row, : half_window - row] = 0
        for row in range(max(length - half_window, 0), length):
            out[:, row, length - row + half_window : width] = 0
        return out, None, None


def _window_encodings(rel: Tensor, n_blocks: int) -> Tensor:
    """Window encodings ``[B, L, W, H, d]`` -> ``[B, H, nblk*BLOCK, d, W]`` (zero on padded sites)."""
    length = rel.shape[1]
    rel = F.pad(rel, (0, 0, 0, 0, 0, 0, 0, n_blocks * BLOCK - length))
    return rel.permute(0, 3, 1, 4, 2).contiguous()


def _window_mask(
    length: int, half_window: int, n_blocks: int, dtype: torch.dtype, device
) -> Tensor:  # noqa: ANN001
    """``[nblk, BLOCK, W]``: 0 where window slot o of site i has its key inside the segment, the
    lowest finite value elsewhere (masks it in the softmax)."""
    width = 2 * half_window + 1
    site = torch.arange(n_blocks * BLOCK, device=device).unsqueeze(1)
    key = site + torch.arange(width, device=device).unsqueeze(0) - half_window
    valid = (key >= 0) & (key < length)
    mask = torch.zeros(valid.shape, dtype=dtype, device=device)
    return mask.masked_fill_(~valid, torch.finfo(dtype).min).view(n_blocks, BLOCK, width)


def site_attention_fast_packed(
    qkv: Tensor,
    rel: Tensor,
    content_bias: Tensor,
    position_bias: Tensor,
    half_window: int,
    dropout: float = 0.0,
    training: bool = False,
) -> Tensor:
    """Window attention along sites from the packed projection ``qkv [B, L, C, 3, H, d]`` (q
    pre-scaled); ``rel [B, L, W, H, d]`` = projected window encodings -> ``z [B, L, C, H, d]``."""
    p = dropout if training else 0.0
    if native.usable(qkv):  # fused C++ kernels (same math)
        return native.site_attention(qkv, rel, content_bias, position_bias, p)
    length = qkv.shape[1]
    n_blocks = _n_blocks(length)
    return SiteBandCore.apply(
        qkv,
        _window_encodings(rel, n_blocks),
        content_bias,
        position_bias,
        _window_mask(length, half_window, n_blocks, qkv.dtype, qkv.device),
        p,
    )


def cell_attention_fast_packed(qkv: Tensor, dropout: float = 0.0, training: bool = False) -> Tensor:
    """Attention across cells from the packed projection ``qkv [B, L, C, 3, H, d]`` (q pre-scaled)
    -> ``z [B, L, C, H, d]``.

    On CPU in fp32/fp64 where the fused kernels build: :class:`~cpgformer.nn.native.NativeCellCore`
    (as fast as the chunked core at 20 cells, 1.5-1.8x faster from ~100 cells, no C x C storage;
    on par with SDPA in inference at 122 and 1,000 cells). Otherwise: training (gradients or
    dropout) and inference below ``SDPA_MIN_CELLS`` cells :class:`~cpgformer.nn.cores.CellCore`
    (chunked, hand-written backward; keeps C x C probabilities only up to
    ``STORE_CELL_PROBS_UP_TO`` cells), inference from ``SDPA_MIN_CELLS`` cells
    ``scaled_dot_product_attention``.
    """
    p = dropout if training else 0.0
    batch, length, cells, _, heads, dim = qkv.shape
    if native.usable(qkv):  # fused C++ kernels (same math)
        return native.cell_attention(qkv, p)
    if p > 0 or (torch.is_grad_enabled() and qkv.requires_grad) or cells < SDPA_MIN_CELLS:
        return CellCore.apply(qkv, p)
    q, k, v = qkv.view(batch * length, cells, 3, heads, dim).permute(0, 2, 3, 1, 4).unbind(1)
    z = F.scaled_dot_product_attention(q, k, v, scale=1.0)
    return z.transpose(1, 2).reshape(batch, length, cells, heads, dim)


def site_cell_attention_fast(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    rel: Tensor,
    content_bias: Tensor,
    position_bias: Tensor,
    half_window: int,
    dropout: float = 0.0,
    training: bool = False,
) -> Tensor:
    """Blocked 2D window attention (keys = window sites x all cells)."""
    batch, length, cells, heads, dim = q.shape
    width = 2 * half_window + 1
    span = BLOCK + 2 * half_window
    n = batch * heads
    n_blocks = _n_blocks(length)
    lowest = torch.finfo(q.dtype).min
    position = torch.einsum("blcnd,blwnd->bnclw", q + position_bias, rel)
    position = _OnBand.apply(position.reshape(n * cells, length, width), half_window, lowest)
    position = position.view(n, cells, n_blocks, BLOCK, span).permute(0, 2, 3, 1, 4).unsqueeze(-1)
    queries = (q + content_bias).permute(0, 3, 1, 2, 4).reshape(n, length, cells * dim)
    queries = _query_blocks(queries, n_blocks).reshape(n, n_blocks, BLOCK * cells, dim)
    keys = _halo_blocks(
        k.permute(0, 3, 1, 2, 4).reshape(n, length, cells * dim), n_blocks, half_window
    )
    keys = keys.reshape(n, n_blocks, span * cells, dim)
    values = _halo_blocks(
        v.permute(0, 3, 1, 2, 4).reshape(n, length, cells * dim), n_blocks, half_window
    ).reshape(n, n_blocks, span * cells, dim)
    scores = torch.matmul(queries, keys.transpose(-1, -2))
    scores = scores.view(n, n_blocks, BLOCK, cells, span, cells) + position
    probs = scores.view(n, n_blocks, BLOCK * cells, span * cells).softmax(-1)
    probs = fast_dropout(probs, dropout, training)
    z = torch.matmul(probs, values).view(n, n_blocks * BLOCK, cells, dim)[:, :length]
    return z.reshape(batch, heads, length, cells, dim).permute(0, 2, 3, 1, 4)


# ----------------------------------------------------------------------------------------------
# the module: projections + one of the kinds above


class Attention(nn.Module):
    """One attention sublayer of a given kind (``sites``, ``cells`` or ``sites_cells``).

    Parameters: ``qkv`` Linear(D -> 3·H·d) (q | k | v, head-major), ``out`` Linear(H·d -> D), and for
    the positional kinds ``pos_proj`` Linear(D -> H·d) on the sinusoid plus the content and position
    biases ``u``, ``v`` (``content_bias``, ``position_bias``, [H, d]).
    """

    def __init__(self, kind: str, hidden: int, heads: int, head_dim: int, dropout: float) -> None:
        super().__init__()
        if kind not in ("sites", "cells", "sites_cells"):
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
            qkv = F.linear(x, *self.scaled_qkv())
        else:
            qkv = self.qkv(x)
        qkv = qkv.view(batch, length, cells, 3, self.heads, self.head_dim)
        args: tuple = (self.dropout, self.training)
        if self.positional:
            assert rel is not None
            projected = self.pos_proj(rel.window(x.dtype) if fast else rel.dense(x.dtype))
            projected = projected.view(*projected.shape[:-1], self.heads, self.head_dim)
            args = (projected, self.content_bias, self.position_bias, half_window, *args)
        if fast and self.kind == "cells":  # the cores read the packed projection directly
            z = cell_attention_fast_packed(qkv, *args)
        elif fast and self.kind == "sites":
            z = site_attention_fast_packed(qkv, *args)
        else:
            q, k, v = qkv.unbind(3)
            if not fast:
                q = q * scale
            fn = {
                "cells": cell_attention_reference,
                "sites": site_attention_reference,
                "sites_cells": site_cell_attention_fast if fast else site_cell_attention_reference,
            }[self.kind]
            z = fn(q, k, v, *args)
        return self.out(z.reshape(batch, length, cells, self.heads * self.head_dim))
