"""One transformer layer: the mode's attention sublayers, then the feed-forward, post-LayerNorm."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from cpgformer.nn.attention import Attention
from cpgformer.nn.config import ModelConfig
from cpgformer.nn.induced import InducedCellAttention
from cpgformer.nn.linear import module_linear
from cpgformer.nn.posenc import RelativePositions


def _norm(config: ModelConfig) -> nn.Module:
    return nn.LayerNorm(config.hidden) if config.layernorm else nn.Identity()


def _attention(kind: str, config: ModelConfig) -> nn.Module:
    if kind == "induced":
        return InducedCellAttention(
            config.hidden,
            config.n_heads,
            config.head_dim,
            config.n_inducing,
            config.attention_dropout,
        )
    return Attention(kind, config.hidden, config.n_heads, config.head_dim, config.attention_dropout)


class TransformerLayer(nn.Module):
    """``x <- LN_k(attn_k(x) + x)`` for each sublayer of the mode, then ``x <- LN(FF(x) + x)``.

    FF = Linear(D -> 4D), ReLU or GELU, Linear(4D -> D). Dropout only on attention probabilities.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.half_window = config.half_window
        self.attentions = nn.ModuleList(_attention(kind, config) for kind in config.attention_kinds)
        self.attention_norms = nn.ModuleList(_norm(config) for _ in config.attention_kinds)
        activation = nn.ReLU() if config.activation == "relu" else nn.GELU()
        self.ff = nn.Sequential(
            nn.Linear(config.hidden, 4 * config.hidden),
            activation,
            nn.Linear(4 * config.hidden, config.hidden),
        )
        self.ff_norm = _norm(config)

    def forward(self, x: Tensor, rel: RelativePositions | None, impl: str = "fast") -> Tensor:
        # out of place on purpose: module outputs stay what forward hooks saw (explain uses them)
        for attention, norm in zip(self.attentions, self.attention_norms):
            if isinstance(attention, InducedCellAttention):
                x = norm(attention(x, impl) + x)
            else:
                x = norm(attention(x, rel, self.half_window, impl) + x)
        return self.ff_norm(self._feed_forward(x, impl) + x)

    def _feed_forward(self, x: Tensor, impl: str = "fast") -> Tensor:
        """``self.ff`` on the tokens as one 2-D matrix, the ReLU in place: the first Linear's output
        is then no view (an in-place op on a view costs autograd full-size copies) and its backward
        needs only its input, so the ReLU may overwrite it — saving a pass and a 4·D-wide tensor.
        The fast path runs the Linear layers through :func:`cpgformer.nn.linear.module_linear` (bias
        and ReLU fused where it can, the modules themselves where hooks watch them)."""
        first, activation, second = self.ff
        flat = x.reshape(-1, x.shape[-1])
        relu = isinstance(activation, nn.ReLU)
        if impl == "fast" and relu:
            hidden = module_linear(first, flat, relu=True)
            return module_linear(second, hidden).view(x.shape)
        hidden = first(flat)
        hidden = torch.relu_(hidden) if relu else activation(hidden)
        return second(hidden).view(x.shape)
