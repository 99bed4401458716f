"""Inference of the transformer stack as loops fused by ``torch.compile`` (CPU, opt-in).

In eager inference every op of a layer is a pass over memory: the window attention along sites
(21 dot products of length 8 per token and head) runs as band matmuls, layout copies and a softmax
over a band buffer, and the token-wise work (bias, residual, LayerNorm, ReLU) as separate passes
around the GEMMs. Written slot by slot, a layer is a few loops that TorchInductor fuses (the GEMMs
stay library calls): the window attention reads q, k and v once and materializes nothing of the
band; across up to ``MAX_CELLS`` cells the C x C attention is fused loops too. Measured on this
project's 2-core CPU (fp32, 20 cells x 1024 sites, 2 threads): window attention 26 vs 47 ms,
token-wise work of two layers' worth of sublayers 37 vs 63 ms, the 4-layer stack 1.5x faster
(``docs/benchmarks.md``). At 122 cells it was not faster, so more cells stay eager.

Training is not compiled: generated backward kernels were slower than the eager path's
hand-written cores here (window attention forward + backward 106 vs 125 ms at best, token-wise
work slower).

Opt-in: ``CPGFORMER_COMPILE=1`` (or :data:`ENABLED` = True). It needs a C++ compiler; each new
shape signature compiles once per process (tens of seconds when PyTorch's on-disk cache is cold,
seconds when warm), so it pays off for long imputations, not for a few segments. Modes ``axial``,
``intracell``, ``intercell`` and ``none``; ``2D`` stays eager. Where compiling fails the eager path
runs, with one warning (:func:`available`).
"""

from __future__ import annotations

import functools
import os
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor

from cpgformer.nn.config import MODES

if TYPE_CHECKING:
    from cpgformer.nn.layers import TransformerLayer
    from cpgformer.nn.posenc import RelativePositions

ENABLED: bool | None = None
"""None (default): compiled inference when the environment variable ``CPGFORMER_COMPILE`` is 1 and
:func:`available`; True or False to force (tests, A/B timing)."""

SUPPORTED_KINDS = tuple(MODES[mode] for mode in ("axial", "intracell", "intercell", "none"))
"""Attention sublayers of the modes compiled."""


def enabled() -> bool:
    """Forced on or off by :data:`ENABLED`, else by ``CPGFORMER_COMPILE``; never after a failure."""
    wanted = os.environ.get("CPGFORMER_COMPILE", "0") == "1" if ENABLED is None else ENABLED
    return wanted and available()


def _site_attention(
    qkv: Tensor, rel: Tensor, u: Tensor, v: Tensor, valid: Tensor, half: int
) -> Tensor:
    """``qkv [B, L, C, 3, H, d]`` (q scaled), ``rel [B, L, W, H, d]``, ``valid [L, W]`` (window
    slot inside the segment) -> ``z [B, L, C, H, d]``."""
    length = qkv.shape[1]
    width = 2 * half + 1
    q, k, val = qkv.unbind(3)
    keys = F.pad(k, (0, 0, 0, 0, 0, 0, half, half)).unfold(1, width, 1)  # [B, L, C, H, d, W]
    values = F.pad(val, (0, 0, 0, 0, 0, 0, half, half)).unfold(1, width, 1)
    content = ((q + u).unsqueeze(-1) * keys).sum(-2)  # [B, L, C, H, W]
    position = ((q + v).unsqueeze(-1) * rel.permute(0, 1, 3, 4, 2).unsqueeze(2)).sum(-2)
    scores = (content + position).masked_fill(~valid.view(1, length, 1, 1, width), float("-inf"))
    return (scores.softmax(-1).unsqueeze(-2) * values).sum(-1)


MAX_CELLS = 32
"""Compiled inference is used up to this many cells. The fused attention across cells loses to
matmuls as C grows, and with the eager cell attention in the graph the stack was slower than the
eager path at 122 cells (32k vs 36k tokens/s); at 20 cells it is 1.5x faster."""


def _cell_attention(qkv: Tensor) -> Tensor:
    """``qkv [B, L, C, 3, H, d]`` (q scaled) -> ``z [B, L, C, H, d]``: C x C scores per site and
    head as fused loops (C <= ``MAX_CELLS``)."""
    q, k, v = qkv.unbind(3)
    scores = (q.unsqueeze(3) * k.unsqueeze(2)).sum(-1)  # [B, L, C, C', H]
    probs = scores.softmax(3)
    return (probs.unsqueeze(-1) * v.unsqueeze(2)).sum(3)


def _norm(x: Tensor, weight: Tensor | None, bias: Tensor | None) -> Tensor:
    if weight is None:
        return x
    return F.layer_norm(x, x.shape[-1:], weight, bias)


def _layer(
    x: Tensor,
    rel_window: Tensor | None,
    valid: Tensor | None,
    attentions: tuple,
    ff: tuple,
    kinds: tuple[str, ...],
    heads: int,
    half: int,
    gelu: bool,
) -> Tensor:
    """One transformer layer, inference (no dropout), parameters as plain tensors."""
    batch, length, cells, _ = x.shape
    for kind, (w_qkv, b_qkv, w_out, b_out, w_pos, b_pos, u, v, g, beta) in zip(kinds, attentions):
        qkv = F.linear(x, w_qkv, b_qkv).view(batch, length, cells, 3, heads, -1)
        if kind == "sites":
            rel = F.linear(rel_window, w_pos, b_pos).view(batch, length, 2 * half + 1, heads, -1)
            z = _site_attention(qkv, rel, u, v, valid, half)
        else:
            z = _cell_attention(qkv)
        x = _norm(F.linear(z.reshape(batch, length, cells, -1), w_out, b_out) + x, g, beta)
    w1, b1, w2, b2, g, beta = ff
    hidden = F.linear(x, w1, b1)
    hidden = F.gelu(hidden) if gelu else torch.relu(hidden)
    return _norm(F.linear(hidden, w2, b2) + x, g, beta)


@functools.cache
def _compiled_layer():  # noqa: ANN202
    return torch.compile(_layer, dynamic=None)


def _layer_params(layer: TransformerLayer) -> tuple[tuple, tuple]:
    attentions = []
    for attention, norm in zip(layer.attentions, layer.attention_norms):
        positional = attention.positional
        attentions.append(
            (
                *attention.scaled_qkv(),
                attention.out.weight,
                attention.out.bias,
                attention.pos_proj.weight if positional else None,
                attention.pos_proj.bias if positional else None,
                attention.content_bias if positional else None,
                attention.position_bias if positional else None,
                getattr(norm, "weight", None),
                getattr(norm, "bias", None),
            )
        )
    first, _, second = layer.ff
    ff = (
        first.weight,
        first.bias,
        second.weight,
        second.bias,
        getattr(layer.ff_norm, "weight", None),
        getattr(layer.ff_norm, "bias", None),
    )
    return tuple(attentions), ff


def supports(layer: TransformerLayer) -> bool:
    kinds = tuple(a.kind for a in layer.attentions)
    return kinds in SUPPORTED_KINDS


def usable(layers: list[TransformerLayer], x: Tensor) -> bool:
    """Whether the compiled inference may replace these layers' eager forward for ``x``: enabled,
    no gradients, eval mode, CPU, at most ``MAX_CELLS`` cells, a supported mode, and no hooks on
    the layers' modules (they would not see the compiled computation)."""
    if torch.is_grad_enabled() or x.device.type != "cpu" or not layers or not enabled():
        return False
    if x.shape[2] > MAX_CELLS:
        return False
    for layer in layers:
        if layer.training or not supports(layer):
            return False
        for module in layer.modules():
            if module._forward_hooks or module._forward_pre_hooks:  # noqa: SLF001
                return False
    return True


def layer_inference(layer: TransformerLayer, x: Tensor, rel: RelativePositions | None) -> Tensor:
    """``layer(x)`` in eval mode without gradients, compiled (see the module docstring)."""
    attentions, ff = _layer_params(layer)
    kinds = tuple(a.kind for a in layer.attentions)
    heads = layer.attentions[0].heads if layer.attentions else 1
    gelu = not isinstance(layer.ff[1], torch.nn.ReLU)
    window, valid = (rel.window(x.dtype), rel.valid()) if rel is not None else (None, None)
    return _compiled_layer()(
        x, window, valid, attentions, ff, kinds, heads, layer.half_window, gelu
    )


_FAILED: list[str] = []


def available() -> bool:
    """False once compiling has failed in this process (no C++ compiler, unsupported platform)."""
    return not _FAILED


def fail(error: BaseException) -> None:
    """Record that compiling failed (the fast path then stays eager in this process), with a
    one-time warning."""
    import warnings

    _FAILED.append(str(error).splitlines()[0] if str(error) else type(error).__name__)
    warnings.warn(
        f"compiled inference unavailable, using the eager path: {_FAILED[-1]}", stacklevel=3
    )


def compile_errors() -> tuple[type[BaseException], ...]:
    from torch._dynamo.exc import BackendCompilerFailed

    errors: list[type[BaseException]] = [BackendCompilerFailed]
    try:
        from torch._inductor.exc import InductorError

        errors.append(InductorError)
    except ImportError:  # older PyTorch
        pass
    return tuple(errors)
