"""The original implementation's *formulation* of the same model, for benchmarks and as a third check.

Written from the specification (not from the original code): it runs the weights of a
:class:`~cpgformer.nn.model.CpGTransformer` the way the original computes them —

* the relative positional encoding recomputed in every attention sublayer, projected, and then
  **repeated once per cell** (materialised ``[B, L, C, W, H, d]``);
* keys and values **unfolded** into per-offset copies (``[B, L, C, W, H, d]``) and scores formed with
  ``einsum``; masked slots set to ``-finfo.max``;
* cell attention as a full ``C x C`` softmax (probabilities stored with their dropout copy);
* the combine layer applied to the materialised ``[CpG, cell, DNA]`` concatenation per token.

It is deliberately plain and slow: never use it for real work.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from cpgformer.nn.attention import Attention
from cpgformer.nn.layers import TransformerLayer
from cpgformer.nn.model import CpGTransformer
from cpgformer.nn.posenc import window_distances


def _relative_encoding(positions: Tensor, half_window: int, dim: int, dtype: torch.dtype) -> Tensor:
    """``[B, W, L, dim]`` sinusoid as the original lays it out (window slot first)."""
    distances, _ = window_distances(positions, half_window)  # [B, L, W]
    inv_freq = 1.0 / (
        10000.0 ** (torch.arange(0.0, dim, 2.0, dtype=dtype, device=positions.device) / dim)
    )
    angles = torch.einsum("blw,k->bwlk", distances.to(dtype), inv_freq)
    return torch.stack((angles.sin(), angles.cos()), dim=-1).flatten(-2)


def _unfold_sites(t: Tensor, half_window: int) -> Tensor:
    """``[B, L, C, H, d]`` -> ``[B, L, C, H, d, W]`` (zero padded), a copy per window slot."""
    padded = F.pad(t, (0, 0, 0, 0, 0, 0, half_window, half_window))
    return padded.unfold(1, 2 * half_window + 1, 1).contiguous()


def _masked(scores: Tensor, valid: Tensor) -> Tensor:
    return scores.masked_fill(~valid, -torch.finfo(scores.dtype).max)


def _port_attention(
    module: Attention, x: Tensor, positions: Tensor, half_window: int, hidden: int
) -> Tensor:
    batch, length, cells, _ = x.shape
    heads, dim = module.heads, module.head_dim
    width = 2 * half_window + 1
    q, k, v = module.qkv(x).view(batch, length, cells, 3, heads, dim).unbind(3)
    q = q * dim**-0.5
    p = module.dropout if module.training else 0.0
    if module.kind == "cells":
        scores = torch.einsum("blcnd,blsnd->blncs", q, k)
        probs = F.dropout(scores.softmax(-1), p, training=p > 0)
        z = torch.einsum("blncs,blsnd->blcnd", probs, v)
        return module.out(z.reshape(batch, length, cells, heads * dim))
    encoding = _relative_encoding(positions, half_window, hidden, x.dtype)  # [B, W, L, D]
    rel = module.pos_proj(encoding).view(batch, width, length, heads, dim)
    # repeated once per cell, as in the original: [B, L, C, W, H, d]
    rel = rel.permute(0, 2, 1, 3, 4).unsqueeze(2).repeat(1, 1, cells, 1, 1, 1)
    _, valid = window_distances(positions, half_window)  # [L, W]
    qu = q + module.content_bias
    qv = q + module.position_bias
    if module.kind == "sites":
        keys = _unfold_sites(k, half_window)  # [B, L, C, H, d, W]
        values = _unfold_sites(v, half_window)
        content = torch.einsum("blcnd,blcndw->blcnw", qu, keys)
        position = torch.einsum("blcnd,blcwnd->blcnw", qv, rel)
        scores = _masked(content + position, valid.view(1, length, 1, 1, width))
        probs = F.dropout(scores.softmax(-1), p, training=p > 0)
        z = torch.einsum("blcnw,blcndw->blcnd", probs, values)
    else:  # sites_cells: keys = W sites x C cells
        keys = _unfold_sites(k, half_window)  # [B, L, C', H, d, W]
        values = _unfold_sites(v, half_window)
        content = torch.einsum("blcnd,blsndw->blcnws", qu, keys)
        position = torch.einsum("blcnd,blcwnd->blcnw", qv, rel).unsqueeze(-1)
        scores = _masked(content + position, valid.view(1, length, 1, 1, width, 1))
        shape = scores.shape
        probs = scores.flatten(-2).softmax(-1).view(shape)
        probs = F.dropout(probs, p, training=p > 0)
        z = torch.einsum("blcnws,blsndw->blcnd", probs, values)
    return module.out(z.reshape(batch, length, cells, heads * dim))


def _port_layer(layer: TransformerLayer, x: Tensor, positions: Tensor, hidden: int) -> Tensor:
    for attention, norm in zip(layer.attentions, layer.attention_norms):
        x = norm(_port_attention(attention, x, positions, layer.half_window, hidden) + x)
    return layer.ff_norm(layer.ff(x) + x)


def port_forward(
    model: CpGTransformer,
    states: Tensor,
    positions: Tensor,
    cell_ids: Tensor,
    dna: Tensor | None = None,
    dna_embedding: Tensor | None = None,
) -> Tensor:
    """Same inputs and outputs as ``model(...)``, computed with the original's formulation."""
    batch, length, cells = states.shape
    parts = [model.state_embed(states)]
    cell = model.cell_embed(cell_ids)
    parts.append(cell.unsqueeze(1).repeat(1, length, 1, 1))
    if model.dna_encoder is not None:
        if dna_embedding is None:
            if dna is None:
                raise ValueError("this model has a DNA branch: pass dna or dna_embedding")
            dna_embedding = model.dna_encoder(dna.reshape(batch * length, -1))
            dna_embedding = dna_embedding.view(batch, length, -1)
        parts.append(dna_embedding.unsqueeze(2).repeat(1, 1, cells, 1))
    x = torch.relu(model.combine(torch.cat(parts, dim=-1)))
    positions = positions.long()
    for layer in model.layers:
        x = _port_layer(layer, x, positions, model.config.hidden)
    return model.head(x).squeeze(-1)


def port_stack(model: CpGTransformer, x: Tensor, positions: Tensor) -> Tensor:
    """Only the transformer layers (token embeddings ``[B, L, C, D]`` in, ``[B, L, C, D]`` out)."""
    positions = positions.long()
    for layer in model.layers:
        x = _port_layer(layer, x, positions, model.config.hidden)
    return x
