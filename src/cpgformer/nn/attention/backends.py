"""The one place where the fast attention path picks its implementation (backend).

Backends of the window attention along sites (``sites``) and across cells (``cells``); all compute
the function of :mod:`cpgformer.nn.attention.reference` (tested equal, outputs and gradients):

* ``kernels``: the fused C++ operators of :mod:`cpgformer.nn.attention.kernels` (CPU, fp32/fp64,
  where a C++ compiler built them);
* ``sdpa``: ``torch.nn.functional.scaled_dot_product_attention`` — along sites on query blocks with
  the position term and the band as its additive mask (:func:`~cpgformer.nn.attention.blocked.
  site_attention_sdpa`), across cells directly; any device (fused flash / memory-efficient kernels
  on CUDA), dropout at the exact rate;
* ``tensor``: the chunked tensor-op cores with hand-written backward of
  :mod:`cpgformer.nn.attention.cores`; any device and dtype.

The rule (:func:`choose`):

1. ``CPGFORMER_ATTENTION`` (``kernels``, ``sdpa`` or ``tensor``) or :func:`use` forces one;
2. on CUDA: ``sdpa``;
3. on the CPU in fp32/fp64 where the kernels load: ``kernels``;
4. otherwise ``tensor`` — except inference across cells (no gradients, no dropout) from
   ``SDPA_MIN_CELLS`` cells, which is ``sdpa``.

The 2D kind (``sites_cells``) has one blocked formulation
(:func:`~cpgformer.nn.attention.blocked.site_cell_attention_blocked`); it runs through SDPA where
rule 1 or 2 gives ``sdpa``, as tensor ops otherwise.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor

from cpgformer.nn.attention import blocked, cores, kernels

BACKENDS = ("kernels", "sdpa", "tensor")
ENV = "CPGFORMER_ATTENTION"
SDPA_MIN_CELLS = 160
"""Inference across cells without the kernels uses SDPA from this many cells, the chunked
:class:`~cpgformer.nn.attention.cores.CellCore` below (the faster of the two on either side of this count: docs/benchmarks.md#model-speed)."""

_forced: list[str] = []


@contextlib.contextmanager
def use(backend: str) -> Iterator[None]:
    """Force ``backend`` for the attention computed inside the ``with`` block (tests, benchmarks)."""
    _check(backend, "backend")
    _forced.append(backend)
    try:
        yield
    finally:
        _forced.pop()


def _check(name: str, what: str) -> str:
    if name not in BACKENDS:
        raise ValueError(f"unknown attention {what} {name!r}: choose one of {', '.join(BACKENDS)}")
    return name


def forced() -> str | None:
    """The backend forced by :func:`use` or by ``CPGFORMER_ATTENTION``, if any."""
    if _forced:
        return _forced[-1]
    name = os.environ.get(ENV, "").strip()
    return _check(name, f"backend in ${ENV}") if name and name != "auto" else None


def choose(kind: str, qkv: Tensor, dropout: float = 0.0) -> str:
    """The backend for attention of ``kind`` (``sites``, ``cells`` or ``sites_cells``) on the packed
    projection ``qkv [B, L, C, 3, H, d]`` (see the module docstring for the rule)."""
    name = forced()
    if name is not None:
        if name == "kernels" and not kernels.supports(qkv):
            raise ValueError(
                "attention backend 'kernels' forced, but the fused kernels take CPU fp32/fp64 "
                f"tensors only and are built here ({kernels.unavailable_reason() or 'they are'})"
            )
        return name
    if qkv.device.type == "cuda":
        return "sdpa"
    if kind == "sites_cells":
        return "tensor"
    if kernels.supports(qkv):
        return "kernels"
    if kind == "cells":
        training = dropout > 0 or (torch.is_grad_enabled() and qkv.requires_grad)
        if not training and qkv.shape[2] >= SDPA_MIN_CELLS:
            return "sdpa"
    return "tensor"


def site_attention(
    qkv: Tensor, rel: Tensor, u: Tensor, v: Tensor, half_window: int, dropout: float = 0.0
) -> Tensor:
    """Window attention along sites: ``qkv [B, L, C, 3, H, d]`` (q pre-scaled), projected window
    encodings ``rel [B, L, W, H, d]``, content and position biases ``u, v [H, d]``, dropout rate
    (0 in eval) -> ``z [B, L, C, H, d]``."""
    backend = choose("sites", qkv, dropout)
    if backend == "kernels":
        return kernels.site_attention(qkv, rel, u, v, dropout)
    if backend == "sdpa":
        return blocked.site_attention_sdpa(qkv, rel, u, v, half_window, dropout)
    return cores.site_attention(qkv, rel, u, v, half_window, dropout)


def cell_attention(qkv: Tensor, dropout: float = 0.0) -> Tensor:
    """Attention across cells: ``qkv [B, L, C, 3, H, d]`` (q pre-scaled) -> ``z [B, L, C, H, d]``."""
    backend = choose("cells", qkv, dropout)
    if backend == "kernels":
        return kernels.cell_attention(qkv, dropout)
    if backend == "sdpa":
        return cell_attention_sdpa(qkv, dropout)
    return cores.cell_attention(qkv, dropout)


def cell_attention_sdpa(qkv: Tensor, dropout: float = 0.0) -> Tensor:
    """Attention across cells by ``scaled_dot_product_attention`` (one problem per site)."""
    batch, length, cells, _, heads, dim = qkv.shape
    q, k, v = qkv.view(batch * length, cells, 3, heads, dim).permute(0, 2, 3, 1, 4).unbind(1)
    z = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout, scale=1.0)
    return z.transpose(1, 2).reshape(batch, length, cells, heads, dim)


def site_cell_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    rel: Tensor,
    u: Tensor,
    position_bias: Tensor,
    half_window: int,
    dropout: float = 0.0,
) -> Tensor:
    """2D window attention (keys = window sites x all cells), ``[B, L, C, H, d]`` in and out;
    dropout rate ``dropout`` (0 in eval)."""
    sdpa = choose("sites_cells", q) == "sdpa"
    return blocked.site_cell_attention_blocked(
        q, k, v, rel, u, position_bias, half_window, dropout, dropout > 0, sdpa=sdpa
    )
