"""The chunked attention cores (hand-written backward) equal plain autograd math, dropout included."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from cpgformer.nn.attention import cores

pytestmark = pytest.mark.usefixtures("one_thread")


class _Recorder:
    """Wraps a function of ``cores`` (``keep_mask`` or ``random_draws``) and keeps every tensor it
    hands out, in call order."""

    def __init__(self, name: str = "keep_mask") -> None:
        self.masks: list[torch.Tensor] = []
        self._real = getattr(cores, name)

    def __call__(self, *args, **kwargs) -> torch.Tensor:
        mask = self._real(*args, **kwargs)
        self.masks.append(mask.clone())
        return mask


def _site_inputs(batch: int, cells: int, length: int, half: int, block: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    dtype, heads, dim = torch.float64, 2, 3
    n_blocks = -(-length // block)
    width = 2 * half + 1
    qkv = torch.randn(batch, length, cells, 3, heads, dim, generator=g, dtype=dtype)
    rel = torch.randn(batch, heads, n_blocks * block, dim, width, generator=g, dtype=dtype)
    rel[:, :, length:] = 0
    u, v = (torch.randn(heads, dim, generator=g, dtype=dtype) for _ in range(2))
    # window slots whose key lies outside the segment are masked
    key = torch.arange(n_blocks * block).view(-1, 1) + torch.arange(width).view(1, width) - half
    valid = (key >= 0) & (key < length)
    mask = torch.zeros(valid.shape, dtype=dtype).masked_fill(~valid, torch.finfo(dtype).min)
    inputs = [t.requires_grad_(True) for t in (qkv, rel, u, v)]
    return inputs, mask.view(n_blocks, block, width)


def _site_plain(qkv, rel, u, v, mask, keep, scale):
    """Plain autograd: every site against its W window slots (unfolded keys), dense everything."""
    batch, length, cells, _, heads, dim = qkv.shape
    width = mask.shape[-1]
    half = (width - 1) // 2
    q, k, val = (t.permute(0, 3, 2, 1, 4) for t in qkv.unbind(3))  # [B, H, C, L, d]
    k = F.pad(k, (0, 0, half, half)).unfold(3, width, 1)  # [B, H, C, L, d, W]
    val = F.pad(val, (0, 0, half, half)).unfold(3, width, 1)
    rel = rel[:, :, :length]
    position = torch.einsum("bhcid,bhidw->bhciw", q + v.view(1, heads, 1, 1, dim), rel)
    content = torch.einsum("bhcid,bhcidw->bhciw", q + u.view(1, heads, 1, 1, dim), k)
    probs = (content + position + mask.reshape(-1, width)[:length]).softmax(-1)
    if keep is not None:
        probs = probs * keep[..., :length, :] * scale
    z = torch.einsum("bhciw,bhcidw->bhcid", probs, val)
    return z.permute(0, 3, 2, 1, 4)  # [B, L, C, H, d]


def _grads(out, inputs, weights):
    for t in inputs:
        t.grad = None
    (out * weights).sum().backward()
    return [t.grad.clone() for t in inputs]


@pytest.mark.parametrize("dropout", [0.0, 0.3])
@pytest.mark.parametrize("chunk", [1 << 18, 97])
def test_site_band_core_equals_autograd(monkeypatch, dropout: float, chunk: int) -> None:
    monkeypatch.setattr(cores, "CHUNK_ELEMENTS", chunk)  # 97: one cell per chunk
    monkeypatch.setattr(cores, "SITE_CHUNK_ELEMENTS", chunk)
    recorder = _Recorder("random_draws")
    monkeypatch.setattr(cores, "random_draws", recorder)
    inputs, mask = _site_inputs(batch=2, cells=3, length=29, half=3, block=8, seed=1)
    out = cores.SiteBandCore.apply(*inputs, mask, dropout)
    weights = torch.randn(out.shape, dtype=torch.float64)
    got = _grads(out, inputs, weights)
    keep, scale = None, 1.0
    if dropout:
        n_blocks, block, width = mask.shape
        per_block = 2 * block * (block + width - 1)
        items = cores._site_items(2, 3, n_blocks, per_block, torch.device("cpu"))
        # 97 entries: one cell per item (blocks: at least MIN_SITE_BLOCKS, here all 4)
        assert len(items) == (6 if chunk == 97 else 2)
        assert len(recorder.masks) == len(items)  # drawn once, stored for backward
        threshold, scale = cores.dropout_threshold(dropout)
        keep = torch.empty(2, 2, 3, n_blocks * block, width, dtype=torch.float64)
        for (b, s, bs), draws in zip(items, recorder.masks):
            kept = cores.keep_from_draws(draws, threshold, torch.float64)
            sites = slice(bs.start * block, bs.stop * block)
            keep[b, :, s, sites] = kept.view(2, s.stop - s.start, -1, width)
        assert 0.6 < keep.mean().item() < 0.8
    plain = _site_plain(*inputs, mask, keep, scale)
    want = _grads(plain, inputs, weights)
    torch.testing.assert_close(out, plain, rtol=0, atol=1e-12)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


def test_site_band_core_gradcheck() -> None:
    inputs, mask = _site_inputs(batch=1, cells=2, length=11, half=2, block=4, seed=2)
    assert torch.autograd.gradcheck(lambda *t: cores.SiteBandCore.apply(*t, mask, 0.0), inputs)


def test_window_fold_is_adjoint_of_gather() -> None:
    g = torch.Generator().manual_seed(3)
    span, block = 13, 4  # span > 3 blocks: four pieces
    x = torch.randn(3, 5 * block + span - block, 2, generator=g, dtype=torch.float64)
    y = torch.randn(3 * 5, span, 2, generator=g, dtype=torch.float64)
    gathered = cores._windows(x, span, block)
    assert gathered.shape == y.shape
    assert torch.equal(gathered[7], x[1, 2 * block : 2 * block + span])
    out = torch.zeros_like(x)
    cores._fold_windows(y.view(3, 5, span, 2), out, span, block)
    torch.testing.assert_close((gathered * y).sum(), (x * out).sum(), rtol=1e-12, atol=0)
    # rows rounded up to whole blocks: folded in place, same result on the rows that exist
    rounded = torch.zeros(3, 8 * block, 2, dtype=torch.float64)
    cores._fold_windows(y.view(3, 5, span, 2), rounded, span, block)
    torch.testing.assert_close(rounded[:, : x.shape[1]], out, rtol=0, atol=0)
    assert not rounded[:, x.shape[1] :].any()


def test_site_items_cover_every_site_block_and_cell_once() -> None:
    cpu = torch.device("cpu")
    budget = cores.SITE_CHUNK_ELEMENTS
    for cells, n_blocks, per in ((20, 64, 4608), (122, 32, 4608), (1000, 1, 4608), (3, 7, 1 << 20)):
        items = cores._site_items(2, cells, n_blocks, per, cpu)
        seen = torch.zeros(2, cells, n_blocks, dtype=torch.int64)
        for b, s, bs in items:
            seen[b, s, bs] += 1
            size = (s.stop - s.start) * (bs.stop - bs.start) * per
            # within budget, unless one cell needs more for the fewest blocks allowed
            blocks = min(n_blocks, cores.MIN_SITE_BLOCKS)
            assert size <= max(budget, blocks * per) or s.stop - s.start == 1
        assert bool((seen == 1).all())


def test_site_core_items_split_sites_and_cells(monkeypatch) -> None:
    """Items that split the segment into runs of blocks (halo gradients added across items) and
    the cells into chunks give the same outputs and gradients as one item."""
    inputs, mask = _site_inputs(batch=1, cells=5, length=75, half=3, block=4, seed=12)
    weights = torch.randn(1, 75, 5, 2, 3, dtype=torch.float64)
    results = []
    per_block = 2 * 4 * 10  # heads x block x span
    for chunk, n_items in ((1 << 20, 1), (1600, 8), (60, 40)):  # one; runs of blocks; + cells
        monkeypatch.setattr(cores, "SITE_CHUNK_ELEMENTS", chunk)
        assert len(cores._site_items(1, 5, 19, per_block, torch.device("cpu"))) == n_items
        out = cores.SiteBandCore.apply(*inputs, mask, 0.0)
        results.append((out.detach(), _grads(out, inputs, weights)))
    for out, grads in results[1:]:
        torch.testing.assert_close(out, results[0][0], rtol=0, atol=1e-12)
        for a, b in zip(grads, results[0][1]):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


def _cell_plain(qkv, keep, scale):
    q, k, v = (t.transpose(2, 3) for t in qkv.unbind(3))  # [B, L, H, C, d]
    probs = torch.matmul(q, k.transpose(-1, -2)).softmax(-1)
    if keep is not None:
        probs = probs * keep.view(probs.shape) * scale
    return torch.matmul(probs, v).transpose(2, 3)  # [B, L, C, H, d]


@pytest.mark.parametrize("store", [True, False], ids=["stored", "recomputed"])
@pytest.mark.parametrize("dropout", [0.0, 0.3])
def test_cell_core_equals_autograd(monkeypatch, dropout: float, store: bool) -> None:
    cells = 9
    monkeypatch.setattr(cores, "CHUNK_ELEMENTS", 2 * cells * cells * 3)  # 3 sites per chunk
    monkeypatch.setattr(cores, "STORE_CELL_PROBS_UP_TO", cells if store else cells - 1)
    recorder = _Recorder("random_draws")
    monkeypatch.setattr(cores, "random_draws", recorder)
    g = torch.Generator().manual_seed(5)
    qkv = torch.randn(2, 6, cells, 3, 2, 4, generator=g, dtype=torch.float64).requires_grad_(True)
    torch.manual_seed(11)
    out = cores.CellCore.apply(qkv, dropout)
    weights = torch.randn(out.shape, dtype=torch.float64)
    got = _grads(out, [qkv], weights)
    keep, scale = None, 1.0
    if dropout:
        if store:  # 4 chunks, drawn once and kept for backward
            assert len(recorder.masks) == 4
        else:  # drawn again (identical) in backward
            assert len(recorder.masks) == 8
            for a, b in zip(recorder.masks[:4], recorder.masks[4:]):
                assert torch.equal(a, b)
        threshold, scale = cores.dropout_threshold(dropout)
        keep = torch.cat(
            [cores.keep_from_draws(m, threshold, torch.float64) for m in recorder.masks[:4]]
        )
    plain = _cell_plain(qkv, keep, scale)
    want = _grads(plain, [qkv], weights)
    torch.testing.assert_close(out, plain, rtol=0, atol=1e-12)
    torch.testing.assert_close(got[0], want[0], rtol=0, atol=1e-12)
    if dropout:
        with torch.no_grad():
            no_dropout = cores.CellCore.apply(qkv, 0.0)
        assert (out - no_dropout).abs().max().item() > 1e-3  # dropout really applied


def test_cell_core_gradcheck() -> None:
    g = torch.Generator().manual_seed(6)
    qkv = torch.randn(1, 3, 5, 3, 2, 3, generator=g, dtype=torch.float64).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda t: cores.CellCore.apply(t, 0.0), [qkv])


def test_seeded_runs_are_reproducible_with_dropout() -> None:
    g = torch.Generator().manual_seed(8)
    qkv = torch.randn(1, 6, 7, 3, 2, 4, generator=g)
    torch.manual_seed(3)
    first = cores.CellCore.apply(qkv, 0.2)
    torch.manual_seed(3)
    second = cores.CellCore.apply(qkv, 0.2)
    third = cores.CellCore.apply(qkv, 0.2)
    assert torch.equal(first, second) and not torch.equal(first, third)


def test_cell_core_matches_sdpa_in_inference() -> None:
    g = torch.Generator().manual_seed(7)
    qkv = torch.randn(1, 4, 60, 3, 2, 8, generator=g)
    with torch.no_grad():
        out = cores.CellCore.apply(qkv, 0.0)
    q, k, v = (t.transpose(2, 3) for t in qkv.unbind(3))
    want = F.scaled_dot_product_attention(q, k, v, scale=1.0).transpose(2, 3)
    torch.testing.assert_close(out, want)


def test_keep_mask_rate_and_seed() -> None:
    threshold, scale = cores.dropout_threshold(0.3)
    assert threshold == 77 and scale == 256 / (256 - 77)
    assert cores.dropout_threshold(0.0) == (0, 1.0)
    assert cores.dropout_threshold(0.001)[0] == 1  # a positive rate never rounds to no dropout
    device = torch.device("cpu")
    kept = cores.keep_mask((200_000,), threshold, torch.float32, device, seed=1)
    assert kept.dtype == torch.float32 and set(kept.unique().tolist()) == {0.0, 1.0}
    assert abs(kept.double().mean().item() - (1 - 77 / 256)) < 0.005
    assert torch.equal(kept, cores.keep_mask((200_000,), threshold, torch.float32, device, seed=1))
    assert not torch.equal(
        kept, cores.keep_mask((200_000,), threshold, torch.float32, device, seed=2)
    )
    # odd sizes: every decision comes from its own byte
    odd = cores.keep_mask((3, 5, 7), threshold, torch.float64, device, seed=3)
    assert odd.shape == (3, 5, 7) and odd.dtype == torch.float64


def test_thread_count_changes_nothing_in_training_with_dropout(monkeypatch) -> None:
    """Chunks run on a thread pool: outputs and gradients (dropout included) are those of one
    thread."""
    from cpgformer.nn import CpGTransformer, ModelConfig

    monkeypatch.setattr(cores, "CHUNK_ELEMENTS", 512)  # many chunks
    monkeypatch.setattr(cores, "SITE_CHUNK_ELEMENTS", 512)
    torch.manual_seed(0)
    config = ModelConfig(
        n_cells=7, dna_window=0, hidden=16, n_heads=2, head_dim=8, n_layers=2, site_window=5
    )
    model = CpGTransformer(config).double().train()
    g = torch.Generator().manual_seed(1)
    states = torch.randint(0, 3, (2, 23, 7), generator=g)
    positions = torch.cumsum(torch.randint(1, 90, (2, 23), generator=g), dim=1)
    cell_ids = torch.arange(7).repeat(2, 1)
    results = []
    for threads in (1, 2):
        torch.set_num_threads(threads)
        torch.manual_seed(5)
        model.zero_grad(set_to_none=True)
        out = model(states, positions, cell_ids)
        (out * torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view(out.shape)).sum().backward()
        results.append((out.detach(), [p.grad.clone() for p in model.parameters()]))
    (out_1, grads_1), (out_2, grads_2) = results
    torch.testing.assert_close(out_1, out_2, rtol=0, atol=1e-12)
    for a, b in zip(grads_1, grads_2):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


def test_buffers_survive_switching_between_inference_and_no_grad() -> None:
    """The per-thread band buffers made under ``inference_mode`` are not reused outside it."""
    inputs, mask = _site_inputs(batch=1, cells=3, length=20, half=2, block=8, seed=9)
    qkv, rel, u, v = (t.detach() for t in inputs)
    with torch.inference_mode():
        first = cores.SiteBandCore.apply(qkv, rel, u, v, mask, 0.0)
    with torch.no_grad():
        second = cores.SiteBandCore.apply(qkv, rel, u, v, mask, 0.0)
    torch.testing.assert_close(first, second, rtol=0, atol=0)


def test_scratch_buffers_do_not_pile_up_across_segment_lengths() -> None:
    """Imputation runs segments of many lengths: the per-thread scratch buffers are reused (one per
    name and mode), and results do not depend on what an earlier call left in them."""
    results = {}
    sizes = []
    for length in (29, 61, 13, 29):
        inputs, mask = _site_inputs(batch=1, cells=3, length=length, half=3, block=8, seed=length)
        out = cores.SiteBandCore.apply(*inputs, mask, 0.0)
        out.backward(torch.ones_like(out))
        grads = [t.grad.clone() for t in inputs]
        if length in results:  # the same inputs after other lengths: bit-identical
            torch.testing.assert_close(out, results[length][0], rtol=0, atol=0)
            for a, b in zip(grads, results[length][1]):
                torch.testing.assert_close(a, b, rtol=0, atol=0)
        results[length] = (out.detach(), grads)
        sizes.append(len(cores._BUFFERS.cache))
    assert len(set(sizes[1:])) == 1  # no new buffers per length
