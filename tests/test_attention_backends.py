"""Every fast attention backend computes the dense reference's function (outputs and gradients),
called directly on the packed projection; and the one rule that chooses among them."""

from __future__ import annotations

import pytest
import torch

from cpgformer.nn import attention
from cpgformer.nn.attention import backends, blocked, kernels
from cpgformer.nn.attention.reference import (
    cell_attention_reference,
    site_attention_reference,
    site_cell_attention_reference,
)
from cpgformer.nn.posenc import RelativePositions

pytestmark = pytest.mark.usefixtures("one_thread")


def _backends() -> list[str]:
    return ["tensor", "sdpa"] + (["kernels"] if kernels.available() else [])


def _site_inputs(batch: int, length: int, cells: int, half: int, dtype: torch.dtype, seed: int):
    """Packed ``qkv``, window and dense projected encodings (same projection), biases."""
    g = torch.Generator().manual_seed(seed)
    heads, dim = 2, 4
    qkv = torch.randn(batch, length, cells, 3, heads, dim, generator=g, dtype=dtype)
    positions = torch.cumsum(torch.randint(1, 500, (batch, length), generator=g), 1)
    rel = RelativePositions(positions, half, 16)
    proj = torch.nn.Linear(16, heads * dim).to(dtype)
    window = proj(rel.window(dtype)).unflatten(-1, (heads, dim)).detach()
    dense = proj(rel.dense(dtype)).unflatten(-1, (heads, dim)).detach()
    u, v = (torch.randn(heads, dim, generator=g, dtype=dtype) for _ in range(2))
    return qkv, window, dense, u, v


def _grads(out: torch.Tensor, inputs: list[torch.Tensor], seed: int) -> list[torch.Tensor]:
    weights = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed), dtype=out.dtype)
    return list(torch.autograd.grad((out * weights).sum(), inputs))


TOL = {torch.float64: 1e-10, torch.float32: 2e-5}


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["fp64", "fp32"])
@pytest.mark.parametrize(
    ("length", "cells", "half"), [(37, 3, 3), (5, 2, 10), (1, 2, 3), (150, 2, 10), (70, 1, 30)]
)
@pytest.mark.parametrize("backend", _backends())
def test_site_backends_equal_the_reference(backend, length, cells, half, dtype) -> None:
    """Window attention: several query blocks and a partial one, segments shorter than the
    window, a halo wider than a block."""
    qkv, window, dense, u, v = _site_inputs(2, length, cells, half, dtype, seed=length)
    leaves = [t.clone().requires_grad_(True) for t in (qkv, window, u, v)]
    with attention.use(backend):
        fast = backends.site_attention(*leaves[:2], *leaves[2:], half)
    fast_grads = _grads(fast, leaves, 1)
    ref_leaves = [t.clone().requires_grad_(True) for t in (qkv, dense, u, v)]
    q, k, val = ref_leaves[0].unbind(3)
    ref = site_attention_reference(q, k, val, ref_leaves[1], *ref_leaves[2:], half)
    ref_grads = _grads(ref, ref_leaves, 1)
    tol = TOL[dtype]
    torch.testing.assert_close(fast, ref, rtol=tol, atol=tol)
    # the window encodings' gradient is the dense one's band (slot o of site i = key i + o - w)
    width = 2 * half + 1
    band = torch.zeros_like(fast_grads[1])
    for i in range(length):
        for o in range(width):
            if 0 <= i + o - half < length:
                band[:, i, o] = ref_grads[1][:, i, i + o - half]
    for name, a, b in zip(
        ("qkv", "rel", "u", "v"), fast_grads, [ref_grads[0], band, *ref_grads[2:]]
    ):
        torch.testing.assert_close(a, b, rtol=tol, atol=tol, msg=lambda m, n=name: f"{n}: {m}")


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["fp64", "fp32"])
@pytest.mark.parametrize("cells", [1, 7, backends.SDPA_MIN_CELLS + 1])
@pytest.mark.parametrize("backend", _backends())
def test_cell_backends_equal_the_reference(backend, cells, dtype) -> None:
    g = torch.Generator().manual_seed(cells)
    qkv = torch.randn(2, 3, cells, 3, 2, 4, generator=g, dtype=dtype, requires_grad=True)
    with attention.use(backend):
        fast = backends.cell_attention(qkv)
    ref = cell_attention_reference(*qkv.unbind(3))
    tol = TOL[dtype]
    torch.testing.assert_close(fast, ref, rtol=tol, atol=tol)
    torch.testing.assert_close(
        _grads(fast, [qkv], 2)[0], _grads(ref, [qkv], 2)[0], rtol=tol, atol=tol
    )


@pytest.mark.parametrize("backend", ["tensor", "sdpa"])
@pytest.mark.parametrize(("length", "half"), [(37, 3), (4, 5), (40, 20)])
def test_2d_backends_equal_the_reference(backend, length, half) -> None:
    qkv, window, dense, u, v = _site_inputs(1, length, 3, half, torch.float64, seed=half)
    leaves = [t.clone().requires_grad_(True) for t in (qkv, window, u, v)]
    with attention.use(backend):
        q, k, val = leaves[0].unbind(3)
        fast = backends.site_cell_attention(q, k, val, leaves[1], *leaves[2:], half)
    ref_leaves = [t.clone().requires_grad_(True) for t in (qkv, dense, u, v)]
    q, k, val = ref_leaves[0].unbind(3)
    ref = site_cell_attention_reference(q, k, val, ref_leaves[1], *ref_leaves[2:], half)
    torch.testing.assert_close(fast, ref, rtol=1e-10, atol=1e-10)
    picked = (0, 2, 3)  # qkv and the biases (the encodings' gradient: see the site test)
    got = _grads(fast, [leaves[i] for i in picked], 3)
    want = _grads(ref, [ref_leaves[i] for i in picked], 3)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("block", [4, 16, 64])
def test_sdpa_window_block_size_changes_nothing(block: int) -> None:
    qkv, window, _, u, v = _site_inputs(1, 50, 2, 6, torch.float64, seed=0)
    want = blocked.site_attention_sdpa(qkv, window, u, v, 6, block=7)
    got = blocked.site_attention_sdpa(qkv, window, u, v, 6, block=block)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def test_sdpa_dropout_keeps_the_expectation() -> None:
    """The SDPA path's dropout (SDPA's own, exact rate) is active in training and unbiased."""
    qkv, window, _, u, v = _site_inputs(1, 30, 2, 3, torch.float64, seed=5)
    plain = blocked.site_attention_sdpa(qkv, window, u, v, 3)
    torch.manual_seed(0)
    runs = torch.stack([blocked.site_attention_sdpa(qkv, window, u, v, 3, 0.3) for _ in range(400)])
    assert not torch.equal(runs[0], runs[1])
    assert (runs.mean(0) - plain).abs().mean() < 0.1 * plain.abs().mean()


def test_the_rule(monkeypatch) -> None:
    monkeypatch.delenv(backends.ENV, raising=False)
    cpu64 = torch.zeros(1, 2, 3, 3, 2, 4, dtype=torch.float64)
    many = torch.zeros(1, 2, backends.SDPA_MIN_CELLS, 3, 1, 2)
    half = cpu64.to(torch.bfloat16)
    if kernels.available():
        assert backends.choose("sites", cpu64) == backends.choose("cells", cpu64) == "kernels"
        assert backends.choose("cells", many) == "kernels"
    monkeypatch.setattr(kernels, "supports", lambda qkv: False)  # as on a machine without them
    assert backends.choose("sites", cpu64) == backends.choose("cells", cpu64) == "tensor"
    assert backends.choose("cells", many) == "sdpa"  # inference from SDPA_MIN_CELLS cells
    assert backends.choose("cells", many, dropout=0.1) == "tensor"
    assert backends.choose("cells", many.requires_grad_(True)) == "tensor"
    with torch.no_grad():
        assert backends.choose("cells", many) == "sdpa"
    assert backends.choose("sites", half) == "tensor"
    assert backends.choose("sites_cells", cpu64) == "tensor"
    with attention.use("sdpa"):
        assert backends.choose("sites_cells", cpu64) == "sdpa"
    with pytest.raises(ValueError, match="'kernels' forced"), attention.use("kernels"):
        backends.choose("sites", half)
