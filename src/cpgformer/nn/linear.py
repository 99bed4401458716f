"""Linear layers of the fast path: oneDNN's fused Linear (+ ReLU) for CPU fp32 inference, where
PyTorch has it, else :func:`torch.nn.functional.linear` (same function: tested equal).

On the CPU, ``F.linear`` broadcasts the bias into the output and then accumulates the matrix
product onto it (one extra pass over every output); oneDNN adds the bias (and the ReLU) in the
product's epilogue. oneDNN's operator has no backward, so anything that needs gradients, other
devices and other dtypes take ``F.linear``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def _has_onednn() -> bool:
    try:
        return bool(torch.backends.mkldnn.is_available()) and hasattr(
            torch.ops.mkldnn, "_linear_pointwise"
        )
    except (AttributeError, RuntimeError):  # builds without oneDNN
        return False


ONEDNN = _has_onednn()


def _fused(x: Tensor, weight: Tensor, bias: Tensor | None) -> bool:
    grads = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (x, weight, bias)
    )
    return (
        ONEDNN
        and not grads
        and x.device.type == "cpu"
        and x.dtype == torch.float32
        and weight.dtype == torch.float32
    )


def linear(x: Tensor, weight: Tensor, bias: Tensor | None = None, relu: bool = False) -> Tensor:
    """``F.linear(x, weight, bias)`` (then ReLU when ``relu``) over the last dimension of ``x``."""
    global ONEDNN
    if _fused(x, weight, bias):
        flat = x.reshape(-1, x.shape[-1])
        try:
            out = torch.ops.mkldnn._linear_pointwise(
                flat, weight, bias, "relu" if relu else "none", [None], ""
            )
            return out.view(*x.shape[:-1], weight.shape[0])
        except RuntimeError:  # a build or CPU where the operator exists but cannot run
            ONEDNN = False
    out = F.linear(x, weight, bias)
    return torch.relu_(out) if relu else out


def module_linear(module: nn.Linear, x: Tensor, relu: bool = False) -> Tensor:
    """``module(x)`` (then ReLU in place when ``relu``): through :func:`linear` unless forward
    hooks watch ``module`` (explain and other tools then see its output as usual)."""
    if module._forward_hooks or module._forward_pre_hooks:
        out = module(x)
        return torch.relu_(out) if relu else out
    return linear(x, module.weight, module.bias, relu)


if ONEDNN:  # FLOP counts (torch.utils.flop_counter) see the fused operator as the Linear it is
    from torch.utils.flop_counter import register_flop_formula

    @register_flop_formula(torch.ops.mkldnn._linear_pointwise)
    def _linear_flops(input_shape, weight_shape, *args, out_shape=None, **kwargs) -> int:
        rows = 1
        for size in input_shape[:-1]:
            rows *= size
        return 2 * rows * input_shape[-1] * weight_shape[0]
