"""The fast attention path computes the same function as the dense reference path (outputs + grads)."""

from __future__ import annotations

import pytest
import torch

from cpgformer.nn import MODES, CpGTransformer, ModelConfig
from cpgformer.nn import attention as attn

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(params=["kernels", "sdpa", "tensor"])
def kernels(request) -> str:
    """Runs a test with each fast attention backend forced (``cpgformer.nn.attention.backends``):
    the fused C++ operators (skipped where they cannot be built), SDPA on query blocks (the CUDA
    path, here on the CPU) and the tensor-op cores."""
    from cpgformer.nn.attention import kernels as fused

    if request.param == "kernels" and not fused.available():
        pytest.skip(f"fused kernels unavailable: {fused.unavailable_reason()}")
    with attn.use(request.param):
        yield request.param


TOLERANCE = {torch.float64: 1e-6, torch.float32: 1e-5}


def _tiny_model(mode: str, data_mode: str, dna: bool, n_cells: int, dtype: torch.dtype, **kw):
    config = ModelConfig(
        n_cells=n_cells,
        dna_window=31 if dna else 0,
        dna_embed=8,
        cell_embed=8,
        state_embed=8,
        hidden=16,
        n_layers=2,
        n_heads=2,
        head_dim=4,
        site_window=kw.pop("site_window", 7),
        mode=mode,
        data_mode=data_mode,
        **kw,
    )
    return CpGTransformer(config).to(dtype).eval()


def _inputs(model: CpGTransformer, batch: int, length: int, cells: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    if model.config.data_mode == "binary":
        states = torch.randint(0, 3, (batch, length, cells), generator=g)
    else:
        beta = torch.rand(batch, length, cells, generator=g, dtype=torch.float64)
        observed = torch.rand(batch, length, cells, generator=g) < 0.6
        states = torch.where(observed, 1 + beta, torch.zeros_like(beta)).to(model.head.weight.dtype)
    positions = torch.cumsum(torch.randint(1, 3000, (batch, length), generator=g), dim=1) + 10**6
    cell_ids = torch.stack(
        [torch.randperm(model.config.n_cells, generator=g)[:cells] for _ in range(batch)]
    )
    dna = None
    if model.config.has_dna:
        dna = torch.randint(0, 5, (batch, length, model.config.dna_window), generator=g)
    return states, positions, cell_ids, dna


def _run(model: CpGTransformer, inputs, impl: str, weights: torch.Tensor):
    model.zero_grad(set_to_none=True)
    states, positions, cell_ids, dna = inputs
    out = model(states, positions, cell_ids, dna=dna, attention_impl=impl)
    (out * weights).sum().backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
    return out.detach(), grads


def _assert_same(model: CpGTransformer, inputs, dtype: torch.dtype) -> None:
    tol = TOLERANCE[dtype]
    states = inputs[0]
    weights = torch.randn(states.shape, generator=torch.Generator().manual_seed(3), dtype=dtype)
    out_ref, grads_ref = _run(model, inputs, "reference", weights)
    out_fast, grads_fast = _run(model, inputs, "fast", weights)
    assert torch.isfinite(out_fast).all()
    assert (out_fast - out_ref).abs().max().item() <= tol
    assert set(grads_fast) == set(grads_ref)
    scale = max(g.abs().max().item() for g in grads_ref.values())
    assert scale > 0
    for name, g_ref in grads_ref.items():
        err = (grads_fast[name] - g_ref).abs().max().item() / scale
        assert err <= tol, f"{name}: relative gradient error {err:.2e}"


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["fp64", "fp32"])
@pytest.mark.parametrize("dna", [True, False], ids=["dna", "nodna"])
@pytest.mark.parametrize("data_mode", ["binary", "continuous"])
@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.usefixtures("kernels")
def test_fast_equals_reference(mode: str, data_mode: str, dna: bool, dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    model = _tiny_model(mode, data_mode, dna, n_cells=5, dtype=dtype)
    # 37 sites: several query blocks, a partial last block, sites at both segment edges
    _assert_same(model, _inputs(model, batch=2, length=37, cells=4), dtype)


@pytest.mark.parametrize("length", [1, 2, 5])
@pytest.mark.parametrize("mode", ["axial", "2D", "intracell"])
@pytest.mark.usefixtures("kernels")
def test_segments_shorter_than_window(mode: str, length: int) -> None:
    torch.manual_seed(1)
    model = _tiny_model(mode, "binary", False, n_cells=3, dtype=torch.float64, site_window=11)
    _assert_same(model, _inputs(model, batch=2, length=length, cells=3), torch.float64)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["fp64", "fp32"])
@pytest.mark.usefixtures("kernels")
def test_many_cells_uses_sdpa_and_matches(dtype: torch.dtype) -> None:
    torch.manual_seed(2)
    cells = attn.SDPA_MIN_CELLS + 3
    model = _tiny_model("axial", "binary", False, n_cells=cells, dtype=dtype)
    _assert_same(model, _inputs(model, batch=1, length=18, cells=cells), dtype)


@pytest.mark.usefixtures("kernels")
def test_window_wider_than_block_halo() -> None:
    # a window of 41 (halo 20 > block 16) still exercises the blocked layout correctly
    torch.manual_seed(4)
    model = _tiny_model("axial", "binary", False, n_cells=3, dtype=torch.float64, site_window=41)
    _assert_same(model, _inputs(model, batch=1, length=50, cells=3), torch.float64)


def test_band_layout_and_its_gradient() -> None:
    """Window slot (i, o) lands at block i // BLOCK, row i % BLOCK, key column row + o; slots whose key
    is outside the segment and off-band entries hold the fill; backward gathers the band back."""
    length, half = 20, 2
    width = 2 * half + 1
    scores = torch.arange(1, length * width + 1, dtype=torch.float64).view(1, length, width)
    scores.requires_grad_(True)
    fill = -1000.0
    band = attn.OnBand.apply(scores, half, fill)
    n_blocks = -(-length // attn.BLOCK)
    expected = torch.full(
        (1, n_blocks, attn.BLOCK, attn.BLOCK + width - 1), fill, dtype=torch.float64
    )
    for i in range(length):
        for o in range(width):
            if 0 <= i + o - half < length:
                expected[0, i // attn.BLOCK, i % attn.BLOCK, i % attn.BLOCK + o] = scores[0, i, o]
    assert torch.equal(band.detach(), expected)
    weights = torch.randn(band.shape, dtype=torch.float64)
    (band * weights).sum().backward()
    want = torch.zeros(1, length, width, dtype=torch.float64)
    for i in range(length):
        for o in range(width):
            if 0 <= i + o - half < length:
                want[0, i, o] = weights[0, i // attn.BLOCK, i % attn.BLOCK, i % attn.BLOCK + o]
    assert torch.equal(scores.grad, want)


def test_fast_dropout_rate_scale_and_seed() -> None:
    x = torch.ones(200_000, dtype=torch.float64)
    torch.manual_seed(0)
    a = attn.fast_dropout(x, 0.2)
    torch.manual_seed(0)
    b = attn.fast_dropout(x, 0.2)
    assert torch.equal(a, b)  # seeded by the default generator
    kept = a != 0
    assert abs(kept.double().mean().item() - 0.8) < 0.005
    threshold = round(0.2 * 256)
    assert torch.allclose(a[kept], torch.full_like(a[kept], 256 / (256 - threshold)))
    assert abs(a.mean().item() - 1.0) < 0.01  # expectation preserved
    assert torch.equal(attn.fast_dropout(x, 0.2, training=False), x)
    assert torch.equal(attn.fast_dropout(x, 0.0), x)


def test_training_mode_dropout_is_active_and_differentiable() -> None:
    torch.manual_seed(6)
    model = _tiny_model("axial", "binary", True, n_cells=4, dtype=torch.float32)
    model.train()
    states, positions, cell_ids, dna = _inputs(model, batch=1, length=20, cells=4)
    first = model(states, positions, cell_ids, dna=dna)
    second = model(states, positions, cell_ids, dna=dna)
    assert (first - second).abs().max().item() > 1e-4
    first.sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def _saved_bytes_per_token_layer(cells: int, length: int = 32) -> float:
    torch.manual_seed(0)
    model = CpGTransformer(ModelConfig(n_cells=cells, dna_window=0, n_layers=2)).train()
    x = torch.randn(1, length, cells, 64, requires_grad=True)
    positions = torch.arange(length).unsqueeze(0) * 100
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        if not (t.requires_grad and t.grad_fn is None):  # parameters are not activations
            storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = model.transform(x, positions)
    out.sum().backward()
    return sum(storages.values()) / (length * cells * 2)


def test_activation_memory_per_token_does_not_grow_with_cells(kernels: str, monkeypatch) -> None:
    """Training-mode (dropout 0.2) activations kept for backward: <= 12 KB per token per layer,
    bounded whatever C. The fused cell kernels keep nothing of size C x C; the tensor-op cell core
    keeps its probabilities and draws only up to ``STORE_CELL_PROBS_UP_TO`` cells (8 heads x C x
    5 bytes <= 1.3 KB per token), no C x C tensor beyond."""
    from cpgformer.nn.attention import cores

    if kernels == "sdpa":
        pytest.skip("SDPA keeps what PyTorch's attention kernels keep (the CUDA path)")
    limit = cores.STORE_CELL_PROBS_UP_TO
    few = _saved_bytes_per_token_layer(8)
    kept = _saved_bytes_per_token_layer(limit)
    many = _saved_bytes_per_token_layer(attn.SDPA_MIN_CELLS + 24)
    assert max(few, kept, many) <= 12_000
    assert many <= few * 1.1
    if kernels == "kernels":  # per-site tensors spread over more cells: never more per token
        assert many <= kept <= few
        return
    monkeypatch.setattr(cores, "STORE_CELL_PROBS_UP_TO", 0)
    recomputed = _saved_bytes_per_token_layer(limit)
    assert kept - recomputed == 8 * limit * 5  # exactly the kept probabilities and draws
