"""Symmetries of the model: cell permutation, position shift, stitching overlapping segments."""

from __future__ import annotations

import pytest
import torch

from cpgformer.nn import MODES, CpGTransformer, ModelConfig

pytestmark = pytest.mark.usefixtures("one_thread")


def _model(mode: str, dna: bool = True, n_cells: int = 6) -> CpGTransformer:
    torch.manual_seed(0)
    config = ModelConfig(
        n_cells=n_cells,
        dna_window=31 if dna else 0,
        hidden=16,
        n_heads=2,
        head_dim=4,
        n_layers=2,
        site_window=7,
        mode=mode,
    )
    return CpGTransformer(config).double().eval()


def _inputs(model: CpGTransformer, length: int, cells: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    states = torch.randint(0, 3, (2, length, cells), generator=g)
    positions = torch.cumsum(torch.randint(1, 800, (2, length), generator=g), dim=1)
    cell_ids = torch.stack(
        [torch.randperm(model.config.n_cells, generator=g)[:cells] for _ in range(2)]
    )
    dna = torch.randint(0, 5, (2, length, 31), generator=g) if model.config.has_dna else None
    return states, positions, cell_ids, dna


@pytest.mark.parametrize("mode", list(MODES))
def test_permuting_cells_permutes_outputs(mode: str) -> None:
    model = _model(mode)
    states, positions, cell_ids, dna = _inputs(model, length=30, cells=5)
    perm = torch.tensor([3, 0, 4, 2, 1])
    with torch.no_grad():
        out = model(states, positions, cell_ids, dna=dna)
        permuted = model(states[:, :, perm], positions, cell_ids[:, perm], dna=dna)
    torch.testing.assert_close(permuted, out[:, :, perm], rtol=0, atol=1e-12)
    # the cell identity matters: permuting the ids alone changes the result
    with torch.no_grad():
        ids_only = model(states, positions, cell_ids[:, perm], dna=dna)
    assert (ids_only - out).abs().max().item() > 1e-6


@pytest.mark.parametrize("impl", ["fast", "reference"])
@pytest.mark.parametrize("mode", ["axial", "2D", "intracell"])
def test_shifting_positions_changes_nothing(mode: str, impl: str) -> None:
    model = _model(mode)
    states, positions, cell_ids, dna = _inputs(model, length=25, cells=4)
    with torch.no_grad():
        out = model(states, positions, cell_ids, dna=dna, attention_impl=impl)
        shifted = model(states, positions + 123_456_789, cell_ids, dna=dna, attention_impl=impl)
    assert torch.equal(out, shifted)
    # but distances matter
    with torch.no_grad():
        stretched = model(states, positions * 2, cell_ids, dna=dna, attention_impl=impl)
    assert (stretched - out).abs().max().item() > 1e-6


def _tiles(n_sites: int, length: int, margin: int) -> list[tuple[int, int, int, int]]:
    """(tile_start, tile_stop, keep_start, keep_stop) covering every site exactly once."""
    stride = length - 2 * margin
    tiles = []
    start = 0
    while True:
        stop = min(start + length, n_sites)
        keep_start = start if start == 0 else start + margin
        keep_stop = stop if stop == n_sites else stop - margin
        tiles.append((start, stop, keep_start, keep_stop))
        if stop == n_sites:
            return tiles
        start += stride


@pytest.mark.parametrize("mode", ["axial", "2D", "intracell"])
def test_stitched_segments_equal_one_pass(mode: str) -> None:
    model = _model(mode)
    margin = model.receptive_field_sites
    assert margin == 2 * 3
    states, positions, cell_ids, dna = _inputs(model, length=83, cells=5, seed=7)
    with torch.no_grad():
        whole = model(states, positions, cell_ids, dna=dna)
        stitched = torch.full_like(whole, float("nan"))
        for start, stop, keep_start, keep_stop in _tiles(83, 24, margin):
            tile_pos = positions[:, start:stop] - positions[:, start : start + 1]
            out = model(states[:, start:stop], tile_pos, cell_ids, dna=dna[:, start:stop])
            stitched[:, keep_start:keep_stop] = out[:, keep_start - start : keep_stop - start]
    assert not torch.isnan(stitched).any()
    torch.testing.assert_close(stitched, whole, rtol=0, atol=1e-12)
    # a margin smaller than the receptive field is not exact
    with torch.no_grad():
        start, stop = 30, 54
        short = model(
            states[:, start:stop], positions[:, start:stop], cell_ids, dna=dna[:, start:stop]
        )
    assert (short[:, 0] - whole[:, start]).abs().max().item() > 1e-6


def test_dna_embedding_precomputed_equals_windows() -> None:
    model = _model("axial")
    states, positions, cell_ids, dna = _inputs(model, length=20, cells=4)
    with torch.no_grad():
        direct = model(states, positions, cell_ids, dna=dna)
        cache = model.embed_dna(dna.reshape(-1, 31), chunk_size=7).view(2, 20, -1)
        cached = model(states, positions, cell_ids, dna_embedding=cache)
    torch.testing.assert_close(cached, direct, rtol=0, atol=1e-12)
