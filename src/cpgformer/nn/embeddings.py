"""Call-state embeddings (binary: a lookup table; continuous: a linear map plus a learned mask vector)."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


class BinaryStateEmbedding(nn.Module):
    """Model-input codes {0 unknown/masked, 1 unmethylated, 2 methylated} -> ``[..., dim]``."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(3, dim)

    def forward(self, states: Tensor) -> Tensor:
        return self.embed(states.long())


class ContinuousStateEmbedding(nn.Module):
    """Input 0 (unknown/masked) -> learned ``mask_embed``; input ``1 + beta`` -> ``Linear(1 -> dim)(beta)``."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.linear = nn.Linear(1, dim)
        bound = 1.0 / math.sqrt(dim)
        self.mask_embed = nn.Parameter(torch.empty(1, dim).uniform_(-bound, bound))

    def forward(self, states: Tensor) -> Tensor:
        dtype = self.linear.weight.dtype
        values = states.to(dtype)
        embedded = self.linear((values - 1).unsqueeze(-1))
        unknown = (values == 0).unsqueeze(-1)
        return torch.where(unknown, self.mask_embed.to(dtype), embedded)
