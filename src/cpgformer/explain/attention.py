"""Attention maps, recomputed from each attention module's own inputs and parameters."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from cpgformer.explain.attribution import eval_mode
from cpgformer.nn.attention import Attention

log = logging.getLogger(__name__)


def attention_probabilities(attention: Any, x: Any, rel: Any, half_window: int) -> tuple[Any, Any]:
    """Dense attention probabilities of one attention sublayer and its output, from its parameters.

    ``x`` ``[B, L, C, D]`` is the sublayer's input, ``rel`` the batch's
    :class:`~cpgformer.nn.posenc.RelativePositions`. Plain dense math with a band mask (the
    reference path). Returns ``(probs, output)`` with probs of shape

    * ``cells``: ``[B, L, H, C, C]`` (query cell, key cell at each site);
    * ``sites``: ``[B, C, H, L, L]`` (query site, key site within each cell; 0 outside the band);
    * ``sites_cells``: ``[B, H, C, L, L, C]`` (query cell, query site, key site, key cell).
    """

    batch, length, n_cells, _ = x.shape
    heads, dim = attention.heads, attention.head_dim
    q, k, v = attention.qkv(x).view(batch, length, n_cells, 3, heads, dim).unbind(3)
    q = q * dim**-0.5
    if attention.kind == "cells":
        scores = torch.einsum("bicnd,bisnd->bincs", q, k)
        probs = scores.softmax(-1)
        z = torch.einsum("bincs,bisnd->bicnd", probs, v)
    else:
        projected = attention.pos_proj(rel.dense(x.dtype))
        projected = projected.view(batch, length, length, heads, dim)
        index = torch.arange(length, device=x.device)
        band = (index[None, :] - index[:, None]).abs() <= half_window  # [Lq, Lk]
        q_content = q + attention.content_bias
        q_position = q + attention.position_bias
        if attention.kind == "sites":
            scores = torch.einsum("bicnd,bjcnd->bcnij", q_content, k)
            scores = scores + torch.einsum("bicnd,bijnd->bcnij", q_position, projected)
            probs = scores.masked_fill(~band, float("-inf")).softmax(-1)
            z = torch.einsum("bcnij,bjcnd->bicnd", probs, v)
        elif attention.kind == "sites_cells":
            scores = torch.einsum("bicnd,bjsnd->bncijs", q_content, k)
            scores = scores + torch.einsum("bicnd,bijnd->bncij", q_position, projected)[..., None]
            scores = scores.masked_fill(~band[:, :, None], float("-inf"))
            shape = scores.shape
            probs = scores.flatten(-2).softmax(-1).view(shape)
            z = torch.einsum("bncijs,bjsnd->bicnd", probs, v)
        else:
            raise ValueError(f"unknown attention kind {attention.kind!r}")
    output = attention.out(z.reshape(batch, length, n_cells, heads * dim))
    return probs, output


@dataclass
class AttentionMaps:
    """Attention of the queries at one site, per layer (N layers, H heads, C cells, S = 2w+1).

    ``site[n, h, c, s]``: weight that (site t, cell c) gives to site t + offsets[s] of the same cell
    (NaN where that site is outside the chromosome). ``cell[n, h, c, c']``: weight that (t, c) gives
    to (t, c'). For 2D attention (keys = sites x cells) both are marginals of the one distribution.
    Either is ``None`` when the model's mode has no such attention.
    """

    site: np.ndarray | None
    cell: np.ndarray | None
    offsets: np.ndarray
    max_abs_error: float  # recomputed vs the model's own sublayer outputs


def attention_maps(
    model: Any,
    states: Any,
    positions: Any,
    cell_ids: Any,
    target_site: int,
    dna: Any = None,
    check_tolerance: float = 1e-4,
) -> AttentionMaps:
    """Attention weights of every query at ``target_site`` in every layer, for one segment.

    The model runs once (eval mode); forward hooks capture each attention sublayer's input and
    output; the probabilities are recomputed densely from the sublayer's parameters
    (:func:`attention_probabilities`) and the recomputed sublayer outputs are checked against the
    model's own (fast or reference path) to ``check_tolerance`` (relative to the output scale), so
    the maps are provably the ones the model used.
    """

    config = model.config
    half = config.half_window
    offsets = np.arange(-half, half + 1, dtype=np.int64)
    captured: list[tuple[int, Any, tuple, Any]] = []
    handles = []
    for layer_index, layer in enumerate(model.layers):
        for module in layer.modules():
            if isinstance(module, Attention):

                def hook(mod: Any, args: tuple, kwargs: dict, output: Any, i: int = layer_index):
                    captured.append((i, mod, args, output.detach()))

                handles.append(module.register_forward_hook(hook, with_kwargs=True))
    try:
        with eval_mode(model), torch.no_grad():
            model(states, positions, cell_ids, dna=None if dna is None else dna.long())
    finally:
        for handle in handles:
            handle.remove()
    n_layers = len(model.layers)
    heads = config.n_heads
    n_cells = states.shape[2]
    length = states.shape[1]
    site = cell = None
    kinds = set()
    worst = 0.0
    for layer_index, module, args, output in captured:
        x, rel = args[0], args[1]
        with torch.no_grad():
            probs, recomputed = attention_probabilities(module, x, rel, half)
        scale = max(1.0, float(output.abs().max()))
        error = float((recomputed - output).abs().max()) / scale
        worst = max(worst, error)
        if error > check_tolerance:
            raise RuntimeError(
                f"recomputed attention of layer {layer_index + 1} ({module.kind}) differs from the "
                f"model's output by {error:.2e}: attention maps would not be the model's"
            )
        kinds.add(module.kind)
        probs = probs.double().cpu().numpy()[0]
        if module.kind in ("sites", "sites_cells"):
            if module.kind == "sites":
                along = probs[:, :, target_site, :].transpose(1, 0, 2)  # [H, C, Lk]
            else:
                along = probs[:, :, target_site].sum(-1)  # [H, C, Lk]
            if site is None:
                site = np.full((n_layers, heads, n_cells, len(offsets)), np.nan)
            keys = target_site + offsets
            inside = (keys >= 0) & (keys < length)
            site[layer_index][:, :, inside] = along[:, :, keys[inside]]
        if module.kind in ("cells", "sites_cells"):
            if module.kind == "cells":
                across = probs[target_site]  # [H, C, C]
            else:
                across = probs[:, :, target_site].sum(-2)  # [H, C, C]
            if cell is None:
                cell = np.zeros((n_layers, heads, n_cells, n_cells))
            cell[layer_index] = across
    log.debug("attention maps recomputed for kinds %s, max error %.2e", sorted(kinds), worst)
    return AttentionMaps(
        site=None if site is None else site.astype(np.float32),
        cell=None if cell is None else cell.astype(np.float32),
        offsets=offsets,
        max_abs_error=worst,
    )
