"""One transformer layer: the mode's attention sublayers, then the feed-forward, post-LayerNorm."""

from __future__ import annotations

from torch import Tensor, nn

from cpgformer.nn.attention import Attention
from cpgformer.nn.config import ModelConfig
from cpgformer.nn.posenc import RelativePositions


def _norm(config: ModelConfig) -> nn.Module:
    return nn.LayerNorm(config.hidden) if config.layernorm else nn.Identity()


class TransformerLayer(nn.Module):
    """``x <- LN_k(attn_k(x) + x)`` for each sublayer of the mode, then ``x <- LN(FF(x) + x)``.

    FF = Linear(D -> 4D), ReLU or GELU, Linear(4D -> D). Dropout only on attention probabilities.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.half_window = config.half_window
        self.attentions = nn.ModuleList(
            Attention(
                kind, config.hidden, config.n_heads, config.head_dim, config.attention_dropout
            )
            for kind in config.attention_kinds
        )
        self.attention_norms = nn.ModuleList(_norm(config) for _ in config.attention_kinds)
        # in place: the ReLU overwrites the first Linear's output (its backward needs only its input)
        activation = nn.ReLU(inplace=True) if config.activation == "relu" else nn.GELU()
        self.ff = nn.Sequential(
            nn.Linear(config.hidden, 4 * config.hidden),
            activation,
            nn.Linear(4 * config.hidden, config.hidden),
        )
        self.ff_norm = _norm(config)

    def forward(self, x: Tensor, rel: RelativePositions | None, impl: str = "fast") -> Tensor:
        # out of place on purpose: module outputs stay what forward hooks saw (explain uses them)
        for attention, norm in zip(self.attentions, self.attention_norms):
            x = norm(attention(x, rel, self.half_window, impl) + x)
        return self.ff_norm(self.ff(x) + x)
