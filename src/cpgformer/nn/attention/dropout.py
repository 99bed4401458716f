"""Cheap dropout masks for the attention cores.

One byte of a 64-bit random word decides each entry (far cheaper than ``F.dropout``'s Bernoulli
draws), so the drop probability is rounded to a multiple of 1/256 (0.2 -> 51/256 = 0.1992) and
survivors are scaled by the exact inverse keep rate of the rounded value: the expected output is
unchanged. Draws can be made again from a seed (the cores' backward redraws masks it did not keep).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def dropout_threshold(p: float) -> tuple[int, float]:
    """``p`` rounded to a multiple of 1/256, as a count of 256ths, and the survivors' scale
    ``1 / (1 - rounded p)``. A positive ``p`` never rounds to zero."""
    threshold = min(max(round(p * 256), 1 if p > 0 else 0), 255)
    return threshold, 256 / (256 - threshold)


def random_draws(
    shape: torch.Size | tuple[int, ...], device: torch.device, seed: int | None = None
) -> Tensor:
    """Uniform int8 draws (one byte of a 64-bit random word each), from the default generator or
    from a fresh generator seeded with ``seed`` (so that the same draws can be made again)."""
    generator = None
    if seed is not None:
        generator = torch.Generator(device=device)
        generator.manual_seed(seed)
    n = math.prod(shape)
    words = torch.empty((n + 7) // 8, dtype=torch.int64, device=device)
    words.random_(-(2**63), None, generator=generator)
    return words.view(torch.int8)[:n].view(shape)


def keep_from_draws(draws: Tensor, threshold: int, dtype: torch.dtype) -> Tensor:
    """Float mask: 1 where a draw is kept (probability ``1 - threshold / 256``), 0 elsewhere."""
    out = torch.empty(draws.shape, dtype=dtype, device=draws.device)
    return torch.ge(draws, threshold - 128, out=out)


def keep_mask(
    shape: torch.Size | tuple[int, ...],
    threshold: int,
    dtype: torch.dtype,
    device: torch.device,
    seed: int | None = None,
) -> Tensor:
    """Float mask of 1 (kept, probability ``1 - threshold / 256``) and 0 (dropped), from
    :func:`random_draws`."""
    return keep_from_draws(random_draws(shape, device, seed), threshold, dtype)


def fast_dropout(x: Tensor, p: float, training: bool = True) -> Tensor:
    """Dropout with the cheap keep decisions of :func:`keep_mask` (the drop probability rounded to
    a multiple of 1/256, survivors scaled by the exact inverse keep rate of the rounded value, so
    the expectation is unchanged). Seeded by the default generator."""
    if not training or p <= 0:
        return x
    threshold, scale = dropout_threshold(p)
    return x * keep_mask(x.shape, threshold, x.dtype, x.device).mul_(scale)
