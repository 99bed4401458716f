"""Band attention in query blocks, as tensor ops: the layout helpers, the 2D (sites x cells)
window attention, and the window attention along sites by ``scaled_dot_product_attention``.

The window of query site i is the keys ``[i - w, i + w]``. Query sites are taken in blocks of
``block`` sites; a block's keys are its sites with ``w`` halo sites either side (a span of
``block + 2w``), so each block is one dense attention problem, and the position term
``(q + v)·R_{i,o}`` enters as an additive bias placed on the band (slots outside the window or the
segment get the lowest finite value, which masks them in the softmax).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from cpgformer.nn.attention.dropout import fast_dropout

BLOCK = 16
"""Query sites per block of the 2D attention (CPU-sized: the scores of a block stay in cache)."""
SDPA_BLOCK = 64
"""Query sites per block of the SDPA window attention (fewer, larger problems for a GPU; the halo
of 2w keys is then a small part of each span)."""


def n_blocks(length: int, block: int = BLOCK) -> int:
    return max(1, math.ceil(length / block))


def query_blocks(t: Tensor, count: int, block: int = BLOCK) -> Tensor:
    """``[N, L, f]`` -> ``[N, nblk, block, f]`` (zero padded at the end)."""
    n, length, f = t.shape
    t = F.pad(t, (0, 0, 0, count * block - length))
    return t.view(n, count, block, f)


def halo_blocks(t: Tensor, count: int, halo: int, block: int = BLOCK) -> Tensor:
    """``[N, L, f]`` -> ``[N, nblk, block + 2*halo, f]``: each block's keys with ``halo`` each side
    (zero outside the segment)."""
    length = t.shape[1]
    t = F.pad(t, (0, 0, halo, count * block - length + halo))
    return t.unfold(1, block + 2 * halo, block).transpose(-1, -2)


class OnBand(torch.autograd.Function):
    """Window-slot scores ``[N, L, W]`` -> block layout ``[N, nblk, block, block + W - 1]``.

    Entry (block b, query j, key slot j + o) holds slot o of site ``b*block + j``; every other entry,
    and every slot whose key lies outside ``[0, L)``, holds ``fill`` (the lowest finite value, which
    masks it in the softmax). Backward gathers the band back with the same reshape trick instead of
    autograd's zero-filled pad/slice gradients.
    """

    @staticmethod
    def forward(ctx, scores: Tensor, half_window: int, fill: float, block: int = BLOCK) -> Tensor:  # noqa: ANN001
        n, length, width = scores.shape
        count = n_blocks(length, block)
        span = block + width - 1
        buffer = scores.new_full((n, count * block, span + 1), fill)
        buffer[:, :length, :width] = scores
        head = min(half_window, length)
        for row in range(head):  # slots before the segment start
            buffer[:, row, : half_window - row] = fill
        for row in range(max(length - half_window, 0), length):  # slots past the segment end
            buffer[:, row, length - row + half_window : width] = fill
        flat = buffer.view(n, count, block * (span + 1))[..., : block * span]
        ctx.shape = (n, length, width, count, span, half_window, block)
        return flat.reshape(n, count, block, span)

    @staticmethod
    def backward(ctx, grad: Tensor):  # noqa: ANN001, ANN205
        n, length, width, count, span, half_window, block = ctx.shape
        flat = F.pad(grad.reshape(n, count, block * span), (0, block))
        band = flat.view(n, count * block, span + 1)[:, :length, :width]
        out = band.contiguous()
        for row in range(min(half_window, length)):
            out[:, row, : half_window - row] = 0
        for row in range(max(length - half_window, 0), length):
            out[:, row, length - row + half_window : width] = 0
        return out, None, None, None


def site_attention_sdpa(
    qkv: Tensor,
    rel: Tensor,
    content_bias: Tensor,
    position_bias: Tensor,
    half_window: int,
    dropout: float = 0.0,
    block: int = SDPA_BLOCK,
) -> Tensor:
    """Window attention along sites by ``scaled_dot_product_attention`` on query blocks (the GPU
    path): ``qkv [B, L, C, 3, H, d]`` (q pre-scaled), ``rel [B, L, W, H, d]`` (projected window
    encodings) -> ``z [B, L, C, H, d]``. Each (batch, cell, head) sequence is cut into blocks of
    ``block`` queries against their ``block + 2w`` keys; the position term is the additive mask.
    Dropout is SDPA's own (rate ``dropout``, exact)."""
    batch, length, cells, _, heads, dim = qkv.shape
    count = n_blocks(length, block)
    q, k, v = qkv.unbind(3)  # [B, L, C, H, d]
    position = torch.einsum("blchd,blwhd->bchlw", q + position_bias, rel)
    lowest = torch.finfo(qkv.dtype).min
    bias = OnBand.apply(position.reshape(-1, length, rel.shape[2]), half_window, lowest, block)

    def sequences(t: Tensor) -> Tensor:  # [B, L, C, H, d] -> [B*C*H, L, d]
        return t.permute(0, 2, 3, 1, 4).reshape(-1, length, dim)

    queries = query_blocks(sequences(q + content_bias), count, block)
    keys = halo_blocks(sequences(k), count, half_window, block)
    values = halo_blocks(sequences(v), count, half_window, block)
    z = F.scaled_dot_product_attention(
        queries, keys, values, attn_mask=bias, dropout_p=dropout, scale=1.0
    )
    z = z.reshape(batch, cells, heads, count * block, dim)[:, :, :, :length]
    return z.permute(0, 3, 1, 2, 4)


def site_cell_attention_blocked(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    rel: Tensor,
    content_bias: Tensor,
    position_bias: Tensor,
    half_window: int,
    dropout: float = 0.0,
    training: bool = False,
    sdpa: bool = False,
) -> Tensor:
    """Blocked 2D window attention (keys = window sites x all cells): ``[B, L, C, H, d]`` in and
    out. The scores of a block of ``BLOCK`` query sites x C cells against ``BLOCK + 2w`` key sites
    x C cells as one matmul, softmax and dropout (:func:`fast_dropout`) as tensor ops; or with
    ``sdpa`` the same blocks by ``scaled_dot_product_attention`` (its own exact-rate dropout)."""
    batch, length, cells, heads, dim = q.shape
    width = 2 * half_window + 1
    span = BLOCK + 2 * half_window
    n = batch * heads
    count = n_blocks(length)
    lowest = torch.finfo(q.dtype).min
    position = torch.einsum("blcnd,blwnd->bnclw", q + position_bias, rel)
    position = OnBand.apply(position.reshape(n * cells, length, width), half_window, lowest)
    position = position.view(n, cells, count, BLOCK, span).permute(0, 2, 3, 1, 4).unsqueeze(-1)
    queries = (q + content_bias).permute(0, 3, 1, 2, 4).reshape(n, length, cells * dim)
    queries = query_blocks(queries, count).reshape(n, count, BLOCK * cells, dim)
    keys = halo_blocks(k.permute(0, 3, 1, 2, 4).reshape(n, length, cells * dim), count, half_window)
    keys = keys.reshape(n, count, span * cells, dim)
    values = halo_blocks(
        v.permute(0, 3, 1, 2, 4).reshape(n, length, cells * dim), count, half_window
    ).reshape(n, count, span * cells, dim)
    if sdpa:
        bias = position.expand(n, count, BLOCK, cells, span, cells)
        bias = bias.reshape(n, count, BLOCK * cells, span * cells)
        p = dropout if training else 0.0
        z = F.scaled_dot_product_attention(
            queries, keys, values, attn_mask=bias, dropout_p=p, scale=1.0
        )
        z = z.view(n, count * BLOCK, cells, dim)[:, :length]
    else:
        scores = torch.matmul(queries, keys.transpose(-1, -2))
        scores = scores.view(n, count, BLOCK, cells, span, cells) + position
        probs = scores.view(n, count, BLOCK * cells, span * cells).softmax(-1)
        probs = fast_dropout(probs, dropout, training)
        z = torch.matmul(probs, values).view(n, count * BLOCK, cells, dim)[:, :length]
    return z.reshape(batch, heads, length, cells, dim).permute(0, 2, 3, 1, 4)
