"""Relative positional encoding from base-pair distances (Transformer-XL style sinusoid).

The encoding of a distance ``d`` (key minus query, in bp) has width ``dim`` with *interleaved*
sin/cos pairs: ``E(d)[2k] = sin(d * f_k)``, ``E(d)[2k+1] = cos(d * f_k)``, ``f_k = 10000^(-2k/dim)``.
Distances are formed in int64 before conversion, so shifting all positions changes nothing.
"""

from __future__ import annotations

import torch
from torch import Tensor


def inverse_frequencies(dim: int, dtype: torch.dtype, device: torch.device | None = None) -> Tensor:
    """``1 / 10000^(2k/dim)`` for k = 0 .. dim/2 - 1."""
    exponents = torch.arange(0, dim, 2, dtype=dtype, device=device) / dim
    return 1.0 / (10000.0**exponents)


def sinusoid(distances: Tensor, dim: int, dtype: torch.dtype) -> Tensor:
    """Encode integer distances ``[...]`` as ``[..., dim]`` (angles in ``dtype``; use fp32 or fp64)."""
    if dtype in (torch.float16, torch.bfloat16):
        dtype = torch.float32
    angles = distances.to(dtype).unsqueeze(-1) * inverse_frequencies(dim, dtype, distances.device)
    return torch.stack((angles.sin(), angles.cos()), dim=-1).flatten(-2)


def window_distances(positions: Tensor, half_window: int) -> tuple[Tensor, Tensor]:
    """Distances to the ``2*half_window+1`` window slots of every site.

    positions ``[B, L]`` int64 -> (distances ``[B, L, W]`` int64 = pos[i+o] - pos[i] with out-of-range
    slots using a padded position 0, valid ``[L, W]`` bool: slot ``i+o`` inside ``[0, L)``).
    """
    batch, length = positions.shape
    width = 2 * half_window + 1
    padded = torch.nn.functional.pad(positions, (half_window, half_window))  # [B, L + 2w]
    keys = padded.unfold(1, width, 1)  # [B, L, W]
    distances = keys - positions.unsqueeze(-1)
    index = torch.arange(length, device=positions.device).unsqueeze(1) + torch.arange(
        -half_window, half_window + 1, device=positions.device
    )
    valid = (index >= 0) & (index < length)
    return distances, valid


class RelativePositions:
    """Positional encodings of one batch, computed lazily once and shared by all layers.

    ``window(dtype)``: ``[B, L, W, dim]`` encodings of the window slots (fast path);
    ``valid()``: ``[L, W]`` bool, window slot inside the segment;
    ``dense(dtype)``: ``[B, L, L, dim]`` encodings of every (query, key) pair (reference path).
    """

    def __init__(self, positions: Tensor, half_window: int, dim: int) -> None:
        self.positions = positions.long()
        self.half_window = half_window
        self.dim = dim
        self._cache: dict[tuple[str, torch.dtype], Tensor] = {}
        self._valid: Tensor | None = None

    def window(self, dtype: torch.dtype) -> Tensor:
        key = ("window", dtype)
        if key not in self._cache:
            distances, self._valid = window_distances(self.positions, self.half_window)
            self._cache[key] = sinusoid(distances, self.dim, dtype).to(dtype)
        return self._cache[key]

    def valid(self) -> Tensor:
        if self._valid is None:
            _, self._valid = window_distances(self.positions, self.half_window)
        return self._valid

    def dense(self, dtype: torch.dtype) -> Tensor:
        key = ("dense", dtype)
        if key not in self._cache:
            distances = self.positions.unsqueeze(1) - self.positions.unsqueeze(2)  # [B, Lq, Lk]
            self._cache[key] = sinusoid(distances, self.dim, dtype).to(dtype)
        return self._cache[key]
