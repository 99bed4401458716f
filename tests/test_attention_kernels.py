"""The fused C++ attention operators (``cpgformer.nn.attention.kernels``): the same function as
plain autograd math, dropout included, whatever the window width, segment length and thread count;
registered operators that pass ``torch.library.opcheck``; the build, its cache and the tensor path
where they cannot be built. Skipped, with the reason, where no C++ compiler (or ninja) exists."""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from test_cores import _grads, _site_plain

from cpgformer.nn import attention
from cpgformer.nn.attention import kernels
from cpgformer.nn.attention.dropout import dropout_threshold, keep_from_draws
from cpgformer.nn.attention.kernels import cell_attention, site_attention

pytestmark = pytest.mark.usefixtures("one_thread")
SRC = Path(__file__).resolve().parents[1] / "src"


def _no_toolchain() -> str | None:
    """Why the kernels cannot be built here at all (no compiler or no ninja), else None."""
    from torch.utils.cpp_extension import is_ninja_available

    if kernels.compiler() is None:
        return "no C++ compiler"
    if not is_ninja_available():
        return "ninja is not installed"
    return None


NO_BUILD = {
    "test_without_a_compiler_warns_once_and_uses_the_tensor_path",
    "test_backend_forced_by_environment",
}
"""Tests that do not need the kernels built."""


@pytest.fixture(autouse=True)
def _built(request) -> None:
    if request.function.__name__ in NO_BUILD:
        return
    reason = kernels.unavailable_reason()
    if reason is None:
        return
    missing = _no_toolchain()
    if missing:
        pytest.skip(f"fused kernels cannot be built here: {missing}")
    pytest.fail(f"the fused kernels failed to build although a toolchain exists: {reason}")


def _inputs(
    batch: int,
    cells: int,
    length: int,
    half: int,
    dtype=torch.float64,
    seed: int = 0,
    heads: int = 2,
    dim: int = 3,
):
    """qkv ``[B, L, C, 3, H, d]``, rel ``[B, L, W, H, d]``, u, v; and the band-mask layout of
    ``test_cores._site_plain`` (rel ``[B, H, L, d, W]``, mask ``[L, 1, W]``)."""
    g = torch.Generator().manual_seed(seed)
    width = 2 * half + 1
    qkv = torch.randn(batch, length, cells, 3, heads, dim, generator=g, dtype=dtype)
    rel = torch.randn(batch, length, width, heads, dim, generator=g, dtype=dtype)
    u, v = (torch.randn(heads, dim, generator=g, dtype=dtype) for _ in range(2))
    key = torch.arange(length).view(-1, 1) + torch.arange(width).view(1, -1) - half
    valid = (key >= 0) & (key < length)
    mask = torch.zeros(valid.shape, dtype=dtype).masked_fill(~valid, torch.finfo(dtype).min)
    return [t.requires_grad_(True) for t in (qkv, rel, u, v)], mask.view(length, 1, width)


def _plain(qkv, rel, u, v, mask, keep=None, scale=1.0):
    """``test_cores._site_plain`` with rel in the kernels' layout."""
    rel_t = rel.permute(0, 3, 1, 4, 2)  # [B, H, L, d, W]
    return _site_plain(qkv, rel_t, u, v, mask, keep, scale)


class _Draws:
    """Records the dropout draws the kernels are given."""

    def __init__(self) -> None:
        self.draws: list[torch.Tensor] = []
        self._real = kernels.random_draws

    def __call__(self, *args, **kwargs) -> torch.Tensor:
        draws = self._real(*args, **kwargs)
        self.draws.append(draws.clone())
        return draws


# widths 7, 9, 21, 27, 41: padded to 8, 16, 24, 32 slots (specialised kernels) and 48 (generic)
CASES = [(2, 3, 29, 3), (1, 4, 40, 4), (2, 5, 70, 10), (1, 2, 33, 13), (1, 3, 50, 20)]
SHORT = [(1, 3, 1, 3), (2, 2, 2, 3), (1, 2, 5, 10), (1, 1, 6, 2)]  # shorter than the window


@pytest.mark.parametrize("dropout", [0.0, 0.3])
@pytest.mark.parametrize(("batch", "cells", "length", "half"), CASES + SHORT)
def test_kernel_site_core_equals_plain_autograd(
    monkeypatch, batch: int, cells: int, length: int, half: int, dropout: float
) -> None:
    recorder = _Draws()
    monkeypatch.setattr(kernels, "random_draws", recorder)
    torch.manual_seed(0)
    inputs, mask = _inputs(batch, cells, length, half)
    out = site_attention(*inputs, dropout)
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


def test_kernel_site_core_float32_matches_float64_math() -> None:
    inputs, mask = _inputs(2, 4, 45, 10)
    single = [t.detach().float().requires_grad_(True) for t in inputs]
    out = site_attention(*single, 0.0)
    weights = torch.randn(out.shape, generator=torch.Generator().manual_seed(1))
    got = _grads(out, single, weights)
    plain = _plain(*inputs, mask)
    want = _grads(plain, inputs, weights.double())
    assert (out.double() - plain).abs().max().item() <= 1e-5
    for a, b in zip(got, want):
        assert (a.double() - b).abs().max().item() <= 1e-5 * max(1.0, b.abs().max().item())


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("dropout", [0.0, 0.3])
def test_kernel_site_core_head_size_8_equals_plain_math(
    monkeypatch, dtype: torch.dtype, dropout: float
) -> None:
    """The published head size (8, the unrolled loops), several tiles of sites and cells and the
    published window (21): the plain float64 math, exactly in float64, to float32 rounding."""
    recorder = _Draws()
    monkeypatch.setattr(kernels, "random_draws", recorder)
    torch.manual_seed(0)
    inputs, mask = _inputs(1, 11, 150, 10, heads=8, dim=8)
    used = [t.detach().to(dtype).requires_grad_(True) for t in inputs]
    out = site_attention(*used, dropout)
    weights = torch.randn(
        out.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(2)
    )
    got = _grads(out.double(), used, weights)
    keep, scale = None, 1.0
    if dropout:
        threshold, scale = dropout_threshold(dropout)
        keep = keep_from_draws(recorder.draws[0], threshold, torch.float64).permute(0, 3, 2, 1, 4)
    plain = _plain(*inputs, mask, keep, scale)
    want = _grads(plain, inputs, weights)
    tol = 1e-12 if dtype == torch.float64 else 2e-5
    assert (out.double() - plain).abs().max().item() <= tol
    for a, b in zip(got, want):
        assert (a.double() - b).abs().max().item() <= tol * max(1.0, b.abs().max().item())


def test_kernel_site_core_gradcheck() -> None:
    inputs, _ = _inputs(1, 2, 9, 2)
    assert torch.autograd.gradcheck(lambda *t: site_attention(*t, 0.0), inputs)


def test_thread_count_changes_nothing() -> None:
    """The sites are split into a fixed number of ranges, whatever the thread count: outputs and
    gradients are bit-identical on one and two threads (dropout included, same seed)."""
    inputs, _ = _inputs(2, 5, 83, 10)
    weights = torch.randn(2, 83, 5, 2, 3, dtype=torch.float64)
    results = []
    for threads in (1, 2):
        torch.set_num_threads(threads)
        torch.manual_seed(4)
        out = site_attention(*inputs, 0.2)
        results.append((out.detach().clone(), _grads(out, inputs, weights)))
    (out_1, grads_1), (out_2, grads_2) = results
    assert torch.equal(out_1, out_2)
    for a, b in zip(grads_1, grads_2):
        assert torch.equal(a, b)


def test_fast_path_uses_the_kernels(monkeypatch) -> None:
    """The model's window and cell attention run on the operators on CPU in fp32 and fp64."""
    from cpgformer.nn import CpGTransformer, ModelConfig

    monkeypatch.delenv(attention.backends.ENV, raising=False)
    calls = []
    for name in ("site_attention", "cell_attention"):
        real = getattr(kernels, name)

        def spy(qkv, *args, _real=real, _name=name):
            calls.append((_name, qkv.dtype))
            return _real(qkv, *args)

        monkeypatch.setattr(kernels, name, spy)
    config = ModelConfig(n_cells=3, dna_window=0, hidden=16, n_heads=2, head_dim=8, n_layers=1)
    for dtype in (torch.float32, torch.float64):
        model = CpGTransformer(config).to(dtype)
        states = torch.randint(0, 3, (1, 30, 3))
        positions = torch.arange(30).view(1, -1) * 7
        model(states, positions, torch.arange(3).view(1, -1)).sum().backward()
    want = [
        (kind, dtype)
        for dtype in (torch.float32, torch.float64)
        for kind in ("site_attention", "cell_attention")
    ]
    assert calls == want


def _load_in_fresh_process(env: dict[str, str]) -> tuple[float, str]:
    """Seconds a fresh process takes to build or load the kernels and run one op; the library path."""
    code = (
        "import time, torch; t = time.perf_counter();"
        "from cpgformer.nn.attention import kernels; path = kernels.build();"
        "z = kernels.cell_attention(torch.randn(1, 2, 3, 3, 1, 2), 0.0);"
        "print(time.perf_counter() - t, path)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, "PYTHONPATH": str(SRC), **env},
        capture_output=True,
        text=True,
        check=True,
    )
    seconds, path = done.stdout.split()
    return float(seconds), path


def test_warm_cache_loads_without_rebuilding() -> None:
    """A fresh process finds the library this one built and loads it (seconds, no compiling)."""
    _, path = _load_in_fresh_process({})
    library = Path(path)
    assert library.parent == kernels.build_dir()
    stamp = library.stat().st_mtime_ns
    seconds, again = _load_in_fresh_process({})
    assert Path(again) == library and library.stat().st_mtime_ns == stamp
    assert seconds < 15


@pytest.mark.slow
def test_cold_build_into_an_empty_cache(tmp_path) -> None:
    """An empty cache directory gets one build, under the per-torch, per-CPU folder; a second
    process reuses it untouched."""
    seconds, path = _load_in_fresh_process({"CPGFORMER_KERNELS_CACHE": str(tmp_path)})
    library = Path(path)
    assert library.parent.parent == tmp_path and library.suffix == ".so"
    stamp = library.stat().st_mtime_ns
    again, path_again = _load_in_fresh_process({"CPGFORMER_KERNELS_CACHE": str(tmp_path)})
    assert Path(path_again) == library and library.stat().st_mtime_ns == stamp
    assert again < seconds
    print(f"cold build {seconds:.1f} s, warm load {again:.1f} s")


def test_without_a_compiler_warns_once_and_uses_the_tensor_path(monkeypatch, tmp_path) -> None:
    """Simulated machine without a C++ compiler: one warning naming the cause, the model runs on the
    tensor path and equals the dense reference (outputs and gradients)."""
    from cpgformer.nn import CpGTransformer, ModelConfig

    monkeypatch.delenv(attention.backends.ENV, raising=False)
    monkeypatch.setattr(kernels, "_STATE", {})  # forget the loaded library
    monkeypatch.setenv("CPGFORMER_KERNELS_CACHE", str(tmp_path))
    monkeypatch.setenv("CXX", "no-such-compiler-here")
    with pytest.warns(RuntimeWarning, match="no C\\+\\+ compiler"):
        assert not kernels.available()
    config = ModelConfig(n_cells=3, dna_window=0, hidden=16, n_heads=2, head_dim=8, n_layers=2)
    model = CpGTransformer(config).double().eval()  # no dropout: the paths draw differently
    states = torch.randint(0, 3, (1, 25, 3))
    positions = torch.arange(25).view(1, -1) * 5
    cells = torch.arange(3).view(1, -1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the reason is given once, not per call
        qkv = torch.zeros(1, 2, 3, 3, 2, 4, dtype=torch.float64)
        assert attention.choose("sites", qkv) == attention.choose("cells", qkv) == "tensor"
        results = []
        for impl in ("fast", "reference"):
            model.zero_grad()
            out = model(states, positions, cells, attention_impl=impl)
            out.sum().backward()
            results.append((out.detach(), [p.grad.clone() for p in model.parameters()]))
    (fast, fast_grads), (reference, reference_grads) = results
    torch.testing.assert_close(fast, reference, rtol=0, atol=1e-10)
    for a, b in zip(fast_grads, reference_grads):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-9)
    assert list(tmp_path.iterdir()) == []  # nothing half-built


def test_backend_forced_by_environment(monkeypatch) -> None:
    qkv = torch.zeros(1, 2, 3, 3, 2, 4)
    for name in ("tensor", "sdpa"):
        monkeypatch.setenv(attention.backends.ENV, name)
        assert attention.choose("sites", qkv) == attention.choose("cells", qkv) == name
    monkeypatch.setenv(attention.backends.ENV, "fastest")
    with pytest.raises(ValueError, match="unknown attention backend"):
        attention.choose("sites", qkv)
    monkeypatch.setenv(attention.backends.ENV, "auto")
    with attention.use("tensor"):
        assert attention.choose("cells", qkv) == "tensor"


# ----------------------------------------------------------------------------------------------
# registered operators


def _site_op_args(dropout: bool, dtype=torch.float64):
    inputs, _ = _inputs(2, 3, 11, 3, dtype=dtype, seed=3)
    qkv, rel, u, v = inputs
    width = rel.shape[2]
    threshold, scale = dropout_threshold(0.3 if dropout else 0.0)
    draws = kernels.random_draws((2, 11, 3, 2, width), qkv.device) if dropout else None
    relt = kernels.relt(rel.detach()).requires_grad_(True)
    return (qkv, relt, u, v, draws, width, threshold, scale, True)


@pytest.mark.parametrize("dropout", [False, True])
def test_site_operator_passes_opcheck(dropout: bool) -> None:
    torch.library.opcheck(torch.ops.cpgformer.site_attention.default, _site_op_args(dropout))
    qkv, relt, u, v, draws, width, threshold, scale, _ = _site_op_args(dropout)
    z, probs = torch.ops.cpgformer.site_attention(*_site_op_args(dropout))
    grad = torch.randn_like(z)
    qkv, relt, u, v, probs = (t.detach() for t in (qkv, relt, u, v, probs))  # no double backward
    args = (grad, qkv, relt, u, v, probs, draws, width, threshold, scale)
    torch.library.opcheck(torch.ops.cpgformer.site_attention_backward.default, args)


@pytest.mark.parametrize("threshold", [0, 77])
def test_cell_operators_pass_opcheck(threshold: int) -> None:
    g = torch.Generator().manual_seed(1)
    qkv = torch.randn(2, 3, 5, 3, 2, 4, generator=g, dtype=torch.float64, requires_grad=True)
    scale = 256 / (256 - threshold)
    torch.library.opcheck(
        torch.ops.cpgformer.cell_attention.default, (qkv, 12345, threshold, scale)
    )
    grad = torch.randn(2, 3, 5, 2, 4, generator=g, dtype=torch.float64)
    args = (grad, qkv.detach(), 12345, threshold, scale)
    torch.library.opcheck(torch.ops.cpgformer.cell_attention_backward.default, args)
    torch.library.opcheck(torch.ops.cpgformer.cell_draws.default, (7, 3, 2, 5))


def test_operators_reject_bad_inputs_with_a_message() -> None:
    """The schema and the C++ checks replace the old hand-declared interface: wrong shapes, dtypes
    or devices raise instead of reading the wrong memory."""
    qkv, relt, u, v, draws, width, threshold, scale, store = _site_op_args(False)
    op = torch.ops.cpgformer.site_attention
    with pytest.raises(RuntimeError, match="relt has shape"):
        op(qkv, relt[:, :-1].contiguous(), u, v, draws, width, threshold, scale, store)
    with pytest.raises(RuntimeError, match="dtype"):
        op(qkv, relt.float(), u, v, draws, width, threshold, scale, store)
    with pytest.raises(RuntimeError, match="dropout needs draws"):
        op(qkv, relt, u, v, None, width, 51, scale, store)
    with pytest.raises(RuntimeError, match="float32 or float64"):
        torch.ops.cpgformer.cell_attention(qkv.half(), 0, 0, 1.0)


def test_operators_run_on_fake_tensors() -> None:
    """With fake implementations registered, the operators trace shapes without data (what
    ``torch.compile`` and ``torch.export`` need)."""
    qkv = torch.randn(1, 6, 4, 3, 2, 4)

    def f(t: torch.Tensor) -> torch.Tensor:
        return torch.ops.cpgformer.cell_attention(t, 0, 0, 1.0) * 2

    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode() as mode:
        out = f(mode.from_tensor(qkv))
    assert out.shape == (1, 6, 4, 2, 4)


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
def test_kernel_cell_core_equals_plain_autograd(
    batch: int, length: int, cells: int, heads: int, dim: int, dropout: float
) -> None:
    g = torch.Generator().manual_seed(cells)
    qkv = torch.randn(batch, length, cells, 3, heads, dim, generator=g, dtype=torch.float64)
    qkv.requires_grad_(True)
    torch.manual_seed(5)
    out = cell_attention(qkv, dropout)
    keep, scale = None, 1.0
    if dropout:  # the kernels' draws: a hash of the seed they took from the default generator
        torch.manual_seed(5)
        seed = int(torch.randint(0, 2**62, (1,)).item())
        threshold, scale = dropout_threshold(dropout)
        draws = kernels.cell_draws(seed, batch * length, heads, cells)
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


def test_kernel_cell_core_float32_gradcheck_and_threads() -> None:
    g = torch.Generator().manual_seed(2)
    qkv = torch.randn(1, 3, 6, 3, 2, 4, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: cell_attention(t, 0.0), [qkv])
    single = qkv.detach().float().requires_grad_(True)
    out = cell_attention(single, 0.0)
    assert (out.double() - _cell_plain(qkv, None, 1.0)).abs().max().item() <= 1e-5
    big = torch.randn(2, 37, 9, 3, 2, 4, generator=g, dtype=torch.float64, requires_grad=True)
    weights = torch.randn(2, 37, 9, 2, 4, generator=g, dtype=torch.float64)
    results = []
    for threads in (1, 2):
        torch.set_num_threads(threads)
        torch.manual_seed(4)
        out = cell_attention(big, 0.2)
        (grad,) = torch.autograd.grad((out * weights).sum(), big)
        results.append((out.detach(), grad))
    assert torch.equal(results[0][0], results[1][0]) and torch.equal(results[0][1], results[1][1])


@pytest.mark.parametrize("dropout", [0.0, 0.2])
def test_kernel_cell_core_float32_head_size_8_matches_float64_math(dropout: float) -> None:
    """The published head size (8) runs unrolled register-blocked loops in float32: equal to the
    plain float64 math within float32 rounding, across query blocks (130 cells: three blocks)."""
    g = torch.Generator().manual_seed(8)
    qkv = torch.randn(1, 3, 130, 3, 8, 8, generator=g, dtype=torch.float64)
    single = qkv.float().requires_grad_(True)
    torch.manual_seed(3)
    out = cell_attention(single, dropout)
    keep, scale = None, 1.0
    if dropout:
        torch.manual_seed(3)
        seed = int(torch.randint(0, 2**62, (1,)).item())
        threshold, scale = dropout_threshold(dropout)
        draws = kernels.cell_draws(seed, 3, 8, 130)
        keep = keep_from_draws(draws, threshold, torch.float64).view(1, 3, 8, 130, 130)
    weights = torch.randn(out.shape, generator=g, dtype=torch.float64)
    (got,) = torch.autograd.grad((out.double() * weights).sum(), single)
    qkv.requires_grad_(True)
    plain = _cell_plain(qkv, keep, scale)
    (want,) = torch.autograd.grad((plain * weights).sum(), qkv)
    assert (out.double() - plain).abs().max().item() < 2e-5
    assert (got.double() - want).abs().max().item() < 2e-4


def test_kernel_cell_core_keeps_nothing_of_size_cells_squared() -> None:
    """Only ``qkv`` is kept for backward, whatever C (probabilities are recomputed, dropout
    draws rehashed)."""
    qkv = torch.randn(1, 2, 300, 3, 2, 4, requires_grad=True)
    out = cell_attention(qkv * 1, 0.2)
    saved = out.grad_fn.saved_tensors
    assert [tuple(t.shape) for t in saved] == [tuple(qkv.shape)]
