"""The fast path's Linear layers (:mod:`cpgformer.nn.linear`): oneDNN's fused Linear (+ ReLU)
for CPU fp32 inference equals ``F.linear``; gradients, fp64 and hooked modules take ``F.linear``;
FLOP counts see the fused operator."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from cpgformer.nn import linear as fused
from cpgformer.nn.config import ModelConfig
from cpgformer.nn.model import CpGTransformer

needs_onednn = pytest.mark.skipif(not fused.ONEDNN, reason="this PyTorch build has no oneDNN")


@needs_onednn
@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("shape", [(300, 64), (2, 7, 5, 64)])
def test_fused_linear_equals_f_linear(shape: tuple[int, ...], relu: bool) -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(*shape, generator=g)
    weight, bias = torch.randn(256, 64, generator=g), torch.randn(256, generator=g)
    with torch.inference_mode():
        assert fused._fused(x, weight, bias)
        got = fused.linear(x, weight, bias, relu=relu)
    want = F.linear(x, weight, bias)
    want = torch.relu(want) if relu else want
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    if relu:
        assert (got == 0).any() and (got >= 0).all()


def test_gradients_and_other_dtypes_take_f_linear() -> None:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(40, 16, generator=g, requires_grad=True)
    layer = torch.nn.Linear(16, 8)
    assert not fused._fused(x, layer.weight, layer.bias)
    out = fused.linear(x, layer.weight, layer.bias, relu=True)
    out.sum().backward()
    want_x = x.detach().clone().requires_grad_(True)
    torch.relu(layer(want_x)).sum().backward()
    torch.testing.assert_close(x.grad, want_x.grad)
    with torch.no_grad():
        assert not fused._fused(x.double(), layer.weight.double(), layer.bias.double())


@needs_onednn
def test_model_inference_matches_the_reference_and_counts_the_same_flops(monkeypatch) -> None:
    torch.manual_seed(0)
    model = CpGTransformer(ModelConfig(n_cells=6, dna_window=0)).eval()
    states = torch.randint(0, 3, (1, 50, 6))
    positions = torch.cumsum(torch.randint(1, 300, (1, 50)), 1)
    cells = torch.arange(6).unsqueeze(0)
    with torch.inference_mode():
        with FlopCounterMode(display=False) as with_onednn:
            fast = model(states, positions, cells)
        reference = model(states, positions, cells, attention_impl="reference")
        monkeypatch.setattr(fused, "ONEDNN", False)
        with FlopCounterMode(display=False) as without:
            plain_fast = model(states, positions, cells)
    torch.testing.assert_close(fast, reference, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(fast, plain_fast, rtol=1e-5, atol=1e-5)
    assert with_onednn.get_total_flops() == without.get_total_flops() > 0


def test_hooked_feed_forward_keeps_its_modules() -> None:
    model = CpGTransformer(ModelConfig(n_cells=4, dna_window=0)).eval()
    seen = []
    handle = model.layers[0].ff[0].register_forward_hook(lambda m, a, o: seen.append(o.shape))
    try:
        with torch.inference_mode():
            model(
                torch.randint(0, 3, (1, 9, 4)),
                torch.arange(9).unsqueeze(0) * 50,
                torch.arange(4).unsqueeze(0),
            )
    finally:
        handle.remove()
    assert seen == [torch.Size([36, 256])]


@needs_onednn
def test_an_operator_that_cannot_run_falls_back_for_good(monkeypatch) -> None:
    calls = []

    def broken(*args, **kwargs):
        calls.append(1)
        raise RuntimeError("no kernel for this CPU")

    monkeypatch.setattr(fused, "ONEDNN", True)
    monkeypatch.setattr(torch.ops.mkldnn, "_linear_pointwise", broken, raising=False)
    x, weight, bias = torch.randn(5, 4), torch.randn(3, 4), torch.randn(3)
    with torch.inference_mode():
        first = fused.linear(x, weight, bias, relu=True)
        second = fused.linear(x, weight, bias)
    torch.testing.assert_close(first, torch.relu(F.linear(x, weight, bias)))
    torch.testing.assert_close(second, F.linear(x, weight, bias))
    assert calls == [1] and fused.ONEDNN is False
