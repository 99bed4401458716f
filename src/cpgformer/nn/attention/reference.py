"""The attention of the CpG Transformer, written as its definition: dense score matrices.

All functions take per-token projections ``q, k, v`` of shape ``[B, L, C, H, d]`` (B batch, L sites,
C cells, H heads, d head dim) with ``q`` already multiplied by ``d**-0.5`` and return ``z`` of the same
shape. Three kinds of attention exist (which axis is a matter of the wrapper, see ``MODES`` in config):

* ``sites``: within each cell, every site attends to the ``W = 2w+1`` sites around it (rows, not bp);
  score(i, o) = (q_i + u)·k_{i+o} + (q_i + v)·R_{i,o}, R = projected sinusoid of pos[i+o] - pos[i];
  slots outside the segment are excluded.
* ``cells``: at each site, every cell attends to all cells; score = q·k.
* ``sites_cells`` (2D): keys = W sites x all C cells; score = (q + u)·k + (q + v)·R_{i,o} (the position
  term depends on the site offset only); one softmax over all W·C keys.

These are O(L²), obviously correct, and the yardstick every fast backend is tested against
(:mod:`cpgformer.nn.attention.backends` chooses among those).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def _dropout(probs: Tensor, p: float, training: bool) -> Tensor:
    """Standard dropout."""
    return F.dropout(probs, p, training=True) if training and p > 0 else probs


def band(length: int, half_window: int, device: torch.device) -> Tensor:
    """``[L, L]`` boolean: key j is in the window of query i (``|i - j| <= w``)."""
    index = torch.arange(length, device=device)
    return (index.unsqueeze(0) - index.unsqueeze(1)).abs() <= half_window


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
    mask = band(q.shape[1], half_window, q.device)
    scores = (content + position).masked_fill(~mask, float("-inf"))
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
    mask = band(q.shape[1], half_window, q.device).unsqueeze(-1)  # [Lq, Lk, 1]
    scores = (content + position).masked_fill(~mask, float("-inf"))
    shape = scores.shape
    probs = scores.flatten(-2).softmax(-1).view(shape)
    probs = _dropout(probs, dropout, training)
    return torch.einsum("bncijs,bjsnd->bicnd", probs, v)
