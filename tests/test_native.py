"""The fused C++ window-attention kernels (``cpgformer.nn.native``): the same function as plain
autograd math, dropout included, whatever the window width, segment length and thread count; and
the build, its cache and the fallback when it cannot be built."""

from __future__ import annotations

import warnings

import pytest
import torch
from test_cores import _grads, _site_plain

from cpgformer.nn import native
from cpgformer.nn.cores import dropout_threshold, keep_from_draws

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(autouse=True)
def _built() -> None:
    assert native.available(), "the fused kernels must build here (a C++ compiler is needed)"


def _inputs(batch: int, cells: int, length: int, half: int, dtype=torch.float64, seed: int = 0):
    """qkv ``[B, L, C, 3, H, d]``, rel ``[B, L, W, H, d]``, u, v; and the band-mask layout of
    ``test_cores._site_plain`` (rel ``[B, H, L, d, W]``, mask ``[L, 1, W]``)."""
    g = torch.Generator().manual_seed(seed)
    heads, dim, width = 2, 3, 2 * half + 1
    qkv = torch.randn(batch, length, cells, 3, heads, dim, generator=g, dtype=dtype)
    rel = torch.randn(batch, length, width, heads, dim, generator=g, dtype=dtype)
    u, v = (torch.randn(heads, dim, generator=g, dtype=dtype) for _ in range(2))
    key = torch.arange(length).view(-1, 1) + torch.arange(width).view(1, -1) - half
    valid = (key >= 0) & (key < length)
    mask = torch.zeros(valid.shape, dtype=dtype).masked_fill(~valid, torch.finfo(dtype).min)
    return [t.requires_grad_(True) for t in (qkv, rel, u, v)], mask.view(length, 1, width)


def _plain(qkv, rel, u, v, mask, keep=None, scale=1.0):
    """``test_cores._site_plain`` with rel in the native layout."""
    rel_t = rel.permute(0, 3, 1, 4, 2)  # [B, H, L, d, W]
    return _site_plain(qkv, rel_t, u, v, mask, keep, scale)


class _Draws:
    """Records the dropout draws the kernels are given."""

    def __init__(self) -> None:
        self.draws: list[torch.Tensor] = []
        self._real = native.random_draws

    def __call__(self, *args, **kwargs) -> torch.Tensor:
        draws = self._real(*args, **kwargs)
        self.draws.append(draws.clone())
        return draws


# widths 7, 9, 21, 27, 41: padded to 8, 16, 24, 32 slots (specialised kernels) and 48 (generic)
CASES = [(2, 3, 29, 3), (1, 4, 40, 4), (2, 5, 70, 10), (1, 2, 33, 13), (1, 3, 50, 20)]
SHORT = [(1, 3, 1, 3), (2, 2, 2, 3), (1, 2, 5, 10), (1, 1, 6, 2)]  # shorter than the window


@pytest.mark.parametrize("dropout", [0.0, 0.3])
@pytest.mark.parametrize(("batch", "cells", "length", "half"), CASES + SHORT)
def test_native_site_core_equals_plain_autograd(
    monkeypatch, batch: int, cells: int, length: int, half: int, dropout: float
) -> None:
    recorder = _Draws()
    monkeypatch.setattr(native, "random_draws", recorder)
    torch.manual_seed(0)
    inputs, mask = _inputs(batch, cells, length, half)
    out = native.site_attention(*inputs, dropout)
    weights = torch.randn(
        out.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(9)
    )
    got = _grads(out, inputs, weights)
    keep, scale = None, 1.0
    if dropout:
        assert len(recorder.draws) == 1  # drawn once, kept for backward
        threshold, scale = dropout_threshold(dropout)
        keep = keep_from_draws(recorder.draws[0], threshold, torch.float64).permute(0, 3, 2, 1, 4)
        if keep.numel() > 1000:
            assert 0.6 < keep.mean().item() < 0.8
    plain = _plain(*inputs, mask, keep, scale)
    want = _grads(plain, inputs, weights)
    torch.testing.assert_close(out, plain, rtol=0, atol=1e-12)
    for name, a, b in zip(("qkv", "rel", "u", "v"), got, want):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12, msg=lambda m, n=name: f"{n}: {m}")


def test_native_site_core_float32_matches_float64_math() -> None:
    inputs, mask = _inputs(2, 4, 45, 10)
    single = [t.detach().float().requires_grad_(True) for t in inputs]
    out = native.site_attention(*single, 0.0)
    weights = torch.randn(out.shape, generator=torch.Generator().manual_seed(1))
    got = _grads(out, single, weights)
    plain = _plain(*inputs, mask)
    want = _grads(plain, inputs, weights.double())
    assert (out.double() - plain).abs().max().item() <= 1e-5
    for a, b in zip(got, want):
        assert (a.double() - b).abs().max().item() <= 1e-5 * max(1.0, b.abs().max().item())


def test_native_site_core_gradcheck() -> None:
    inputs, _ = _inputs(1, 2, 9, 2)
    assert torch.autograd.gradcheck(lambda *t: native.site_attention(*t, 0.0), inputs)


def test_thread_count_changes_nothing() -> None:
    """The sites are split into a fixed number of ranges, whatever the thread count: outputs and
    gradients are bit-identical on one and two threads (dropout included, same seed)."""
    inputs, _ = _inputs(2, 5, 83, 10)
    weights = torch.randn(2, 83, 5, 2, 3, dtype=torch.float64)
    results = []
    for threads in (1, 2):
        torch.set_num_threads(threads)
        torch.manual_seed(4)
        out = native.site_attention(*inputs, 0.2)
        results.append((out.detach().clone(), _grads(out, inputs, weights)))
    (out_1, grads_1), (out_2, grads_2) = results
    assert torch.equal(out_1, out_2)
    for a, b in zip(grads_1, grads_2):
        assert torch.equal(a, b)


def test_fast_path_uses_the_kernels() -> None:
    """The model's window attention runs on the kernels on CPU in fp32 and fp64."""
    from cpgformer.nn import CpGTransformer, ModelConfig

    calls = []
    real = native.NativeSiteCore.apply

    def spy(*args):
        calls.append(args[0].dtype)
        return real(*args)

    config = ModelConfig(n_cells=3, dna_window=0, hidden=16, n_heads=2, head_dim=8, n_layers=2)
    for dtype in (torch.float32, torch.float64):
        model = CpGTransformer(config).to(dtype)
        states = torch.randint(0, 3, (1, 30, 3))
        positions = torch.arange(30).view(1, -1) * 7
        with pytest.MonkeyPatch.context() as m:
            m.setattr(native.NativeSiteCore, "apply", spy)
            model(states, positions, torch.arange(3).view(1, -1)).sum().backward()
    assert calls == [torch.float32] * 2 + [torch.float64] * 2


def test_build_is_cached_and_reused(monkeypatch, tmp_path) -> None:
    """A fresh cache directory gets one library, built from the packaged source; a second build
    reuses it untouched."""
    monkeypatch.setenv("CPGFORMER_NATIVE_CACHE", str(tmp_path))
    compiler = native._compiler()
    first = native._build(compiler)
    assert first.parent == tmp_path and first.suffix == ".so"
    stamp = first.stat().st_mtime_ns
    assert native._build(compiler) == first and first.stat().st_mtime_ns == stamp
    assert [p.name for p in tmp_path.iterdir()] == [first.name]  # no temporary files left


def test_without_a_compiler_warns_once_and_uses_the_tensor_path(monkeypatch, tmp_path) -> None:
    from cpgformer.nn import CpGTransformer, ModelConfig

    config = ModelConfig(n_cells=3, dna_window=0, hidden=16, n_heads=2, head_dim=8, n_layers=1)
    model = CpGTransformer(config).double().eval()
    states = torch.randint(0, 3, (1, 25, 3))
    positions = torch.arange(25).view(1, -1) * 5
    cells = torch.arange(3).view(1, -1)
    with_kernels = model(states, positions, cells)

    monkeypatch.setattr(native, "_STATE", {})  # forget the loaded library
    monkeypatch.setenv("CPGFORMER_NATIVE_CACHE", str(tmp_path))
    monkeypatch.setenv("CXX", "no-such-compiler-here")
    with pytest.warns(RuntimeWarning, match="no C\\+\\+ compiler"):
        assert not native.available()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the reason is given once, not per call
        assert not native.available()
        without = model(states, positions, cells)
    torch.testing.assert_close(without, with_kernels, rtol=0, atol=1e-12)


def test_switched_off_by_environment(monkeypatch) -> None:
    monkeypatch.setenv("CPGFORMER_NATIVE", "0")
    assert not native.available()
    assert not native.usable(torch.zeros(1, 2, 3, 3, 2, 4))


# ----------------------------------------------------------------------------------------------
# attention across cells


def _cell_plain(qkv: torch.Tensor, keep: torch.Tensor | None, scale: float) -> torch.Tensor:
    """Plain autograd: ``[B, L, C, 3, H, d]`` -> ``[B, L, C, H, d]``, keep ``[B, L, H, C, C]``."""
    q, k, v = qkv.unbind(3)
    probs = torch.einsum("blchd,blehd->blhce", q, k).softmax(-1)
    if keep is not None:
        probs = probs * keep * scale
    return torch.einsum("blhce,blehd->blchd", probs, v)


@pytest.mark.parametrize("dropout", [0.0, 0.3])
@pytest.mark.parametrize(
    ("batch", "length", "cells", "heads", "dim"),
    [(2, 5, 3, 2, 3), (1, 4, 20, 8, 8), (1, 3, 37, 2, 4), (1, 2, 1, 2, 3), (1, 2, 200, 1, 8)],
)
def test_native_cell_core_equals_plain_autograd(
    batch: int, length: int, cells: int, heads: int, dim: int, dropout: float
) -> None:
    g = torch.Generator().manual_seed(cells)
    qkv = torch.randn(batch, length, cells, 3, heads, dim, generator=g, dtype=torch.float64)
    qkv.requires_grad_(True)
    torch.manual_seed(5)
    out = native.cell_attention(qkv, dropout)
    keep, scale = None, 1.0
    if dropout:  # the kernels' draws: a hash of the seed they took from the default generator
        torch.manual_seed(5)
        seed = int(torch.randint(0, 2**62, (1,)).item())
        threshold, scale = dropout_threshold(dropout)
        draws = native.cell_draws(seed, batch * length, heads, cells)
        keep = keep_from_draws(draws, threshold, torch.float64)
        keep = keep.view(batch, length, heads, cells, cells)
        if keep.numel() > 1000:
            assert 0.6 < keep.mean().item() < 0.8
    weights = torch.randn(out.shape, generator=g, dtype=torch.float64)
    (got,) = torch.autograd.grad((out * weights).sum(), qkv)
    plain = _cell_plain(qkv, keep, scale)
    (want,) = torch.autograd.grad((plain * weights).sum(), qkv)
    torch.testing.assert_close(out, plain, rtol=0, atol=1e-12)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-12)


def test_native_cell_core_float32_gradcheck_and_threads() -> None:
    g = torch.Generator().manual_seed(2)
    qkv = torch.randn(1, 3, 6, 3, 2, 4, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: native.cell_attention(t, 0.0), [qkv])
    single = qkv.detach().float().requires_grad_(True)
    out = native.cell_attention(single, 0.0)
    assert (out.double() - _cell_plain(qkv, None, 1.0)).abs().max().item() <= 1e-5
    big = torch.randn(2, 37, 9, 3, 2, 4, generator=g, dtype=torch.float64, requires_grad=True)
    weights = torch.randn(2, 37, 9, 2, 4, generator=g, dtype=torch.float64)
    results = []
    for threads in (1, 2):
        torch.set_num_threads(threads)
        torch.manual_seed(4)
        out = native.cell_attention(big, 0.2)
        (grad,) = torch.autograd.grad((out * weights).sum(), big)
        results.append((out.detach(), grad))
    assert torch.equal(results[0][0], results[1][0]) and torch.equal(results[0][1], results[1][1])


def test_native_cell_core_keeps_nothing_of_size_cells_squared() -> None:
    """Only ``qkv`` is kept for backward, whatever C (probabilities are recomputed, dropout
    draws rehashed)."""
    qkv = torch.randn(1, 2, 300, 3, 2, 4, requires_grad=True)
    out = native.cell_attention(qkv * 1, 0.2)
    saved = out.grad_fn.saved_tensors
    assert [tuple(t.shape) for t in saved] == [tuple(qkv.shape)]
