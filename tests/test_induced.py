"""Induced attention across cells, the inductive cell encoder (cell profiles), and imputing new cells."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from _training_helpers import dense_to_chrom
from torch.utils.flop_counter import FlopCounterMode

from cpgformer.checkpoint import load_checkpoint
from cpgformer.data.profiles import CellProfiler, fit_for_training, rows_of_segments
from cpgformer.impute import (
    ImputeOptions,
    Predictor,
    impute,
    open_imputed,
    plan_tile_shape,
    predict_block,
)
from cpgformer.io.store import open_dataset, write_store
from cpgformer.nn import CpGTransformer, ModelConfig
from cpgformer.nn.induced import InducedCellAttention

FEATURES = 6


def _model(mode: str = "induced", cells: int = 4, **kw) -> CpGTransformer:
    torch.manual_seed(0)
    config = ModelConfig(
        n_cells=cells, dna_window=0, mode=mode, n_layers=2, hidden=16, n_heads=2, head_dim=4,
        n_inducing=3, cell_encoder="profile", profile_features=FEATURES, **kw,
    )  # fmt: skip
    return CpGTransformer(config)


def _inputs(batch: int, sites: int, cells: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    states = torch.randint(0, 3, (batch, sites, cells), generator=g)
    positions = torch.cumsum(torch.randint(1, 80, (batch, sites), generator=g), 1)
    return states, positions, torch.arange(cells).expand(batch, cells)


# ---- the attention ----------------------------------------------------------------------------


def test_induced_fast_equals_reference_forward_and_gradients() -> None:
    torch.manual_seed(1)
    module = InducedCellAttention(16, 2, 4, 5, dropout=0.0).double()
    x = torch.randn(2, 7, 9, 16, dtype=torch.float64, requires_grad=True)
    fast = module(x, "fast")
    grads_fast = torch.autograd.grad(fast.square().sum(), [x, *module.parameters()])
    ref = module(x, "reference")
    grads_ref = torch.autograd.grad(ref.square().sum(), [x, *module.parameters()])
    assert torch.allclose(fast, ref, atol=1e-12)
    for a, b in zip(grads_fast, grads_ref):
        assert torch.allclose(a, b, atol=1e-10)


def test_induced_attention_gradcheck() -> None:
    torch.manual_seed(2)
    module = InducedCellAttention(8, 2, 2, 3, dropout=0.0).double()
    x = torch.randn(1, 3, 4, 8, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: module(t, "fast"), (x,))


def test_whole_model_fast_equals_reference() -> None:
    model = _model().double().eval()
    model.set_cell_profiles(torch.randn(5, FEATURES, dtype=torch.float64))
    states, positions, cells = _inputs(2, 40, 5)
    fast = model(states, positions, cells, attention_impl="fast")
    ref = model(states, positions, cells, attention_impl="reference")
    assert torch.allclose(fast, ref, atol=1e-12)


def test_cells_permuted_outputs_permuted() -> None:
    model = _model().double().eval()
    model.set_cell_profiles(torch.randn(6, FEATURES, dtype=torch.float64))
    states, positions, cells = _inputs(1, 30, 6)
    out = model(states, positions, cells)
    perm = torch.tensor([3, 0, 5, 1, 4, 2])
    out_perm = model(states[:, :, perm], positions, cells[:, perm])
    assert torch.allclose(out_perm, out[:, :, perm], atol=1e-12)


def test_output_depends_on_which_cells_not_how_many() -> None:
    """Each cell present twice: every summary is the same average, so outputs are unchanged."""
    model = _model().double().eval()
    model.set_cell_profiles(torch.randn(5, FEATURES, dtype=torch.float64))
    states, positions, cells = _inputs(1, 25, 5)
    out = model(states, positions, cells)
    twice = model(torch.cat([states, states], 2), positions, torch.cat([cells, cells], 1))
    assert torch.allclose(twice[:, :, :5], out, atol=1e-10)
    assert torch.allclose(twice[:, :, 5:], out, atol=1e-10)


def _flops_per_token(mode: str, cells: int, train: bool) -> float:
    model = _model(mode=mode, cells=cells)
    model.set_cell_profiles(torch.randn(cells, FEATURES))
    model.train(train)
    states, positions, ids = _inputs(1, 32, cells)
    with FlopCounterMode(display=False) as counter:
        out = model(states, positions, ids)
        if train:
            out.sum().backward()
    return counter.get_total_flops() / (32 * cells)


@pytest.mark.parametrize("train", [False, True])
def test_cost_per_token_flat_in_cells(train: bool) -> None:
    """The induced mode's FLOPs per token at 1,000 cells are those at 100 (within the per-site
    share of the summaries); full attention across cells grows with the cells."""
    small = _flops_per_token("induced", 100, train)
    large = _flops_per_token("induced", 1000, train)
    assert large <= 1.05 * small
    full_small = _flops_per_token_table("axial", 100, train)
    full_large = _flops_per_token_table("axial", 1000, train)
    assert full_large > 3 * full_small


def _flops_per_token_table(mode: str, cells: int, train: bool) -> float:
    torch.manual_seed(0)
    config = ModelConfig(
        n_cells=cells, dna_window=0, mode=mode, n_layers=2, hidden=16, n_heads=2, head_dim=4
    )
    model = CpGTransformer(config).train(train)
    states, positions, ids = _inputs(1, 32, cells)
    with FlopCounterMode(display=False) as counter:
        out = model(states, positions, ids, attention_impl="reference")
        if train:
            out.sum().backward()
    return counter.get_total_flops() / (32 * cells)


def test_profile_encoder_needs_profiles_and_checks_shape() -> None:
    model = _model()
    states, positions, cells = _inputs(1, 5, 3)
    with pytest.raises(ValueError, match="profiles"):
        model(states, positions, cells)
    with pytest.raises(ValueError, match="must be"):
        model.set_cell_profiles(torch.zeros(3, FEATURES + 1))
    table = CpGTransformer(ModelConfig(n_cells=3, dna_window=0, n_layers=1))
    with pytest.raises(ValueError, match="table"):
        table.set_cell_profiles(torch.zeros(3, FEATURES))


def test_published_model_has_no_new_parameters() -> None:
    """The faithful model is untouched: same parameter names and count as before."""
    model = CpGTransformer(ModelConfig(n_cells=20))
    assert sum(p.numel() for p in model.parameters()) == 4_397_505
    assert not any("induc" in n or "cell_encoder" in n for n, _ in model.named_parameters())


# ---- cell profiles -----------------------------------------------------------------------------


def _group_labels(n_sites: int, n_cells: int, seed: int, fill: float = 0.3):
    """Labels of two cell groups with opposite methylation in alternating regions."""
    rng = np.random.default_rng(seed)
    positions = np.cumsum(rng.integers(20, 200, size=n_sites)) + 1000
    base = (np.sin(np.arange(n_sites) / 9.0) > 0) * 0.8 + 0.1
    group = np.arange(n_cells) % 2
    prob = np.where(group[None, :] == 0, base[:, None], 1 - base[:, None])
    labels = (rng.random((n_sites, n_cells)) < prob).astype(np.int8)
    labels[rng.random((n_sites, n_cells)) > fill] = -1
    return positions, labels, group


def _store(path: Path, positions, labels, columns, names) -> Path:
    chroms = [dense_to_chrom("chr1", positions, labels[:, columns])]
    write_store(path, chroms, [names[i] for i in columns])
    return path


def test_profiles_of_a_cell_do_not_depend_on_the_other_cells(tmp_path: Path) -> None:
    positions, labels, group = _group_labels(600, 40, seed=3)
    names = [f"c{i}" for i in range(40)]
    full = open_dataset(_store(tmp_path / "full", positions, labels, list(range(40)), names))
    subset = [5, 17, 30, 31]
    part = open_dataset(_store(tmp_path / "part", positions, labels, subset, names))
    profiler = CellProfiler.fit(full, n_bins=32, n_components=4)
    assert profiler.n_features == 6
    assert np.allclose(profiler.transform(part), profiler.transform(full)[subset], atol=1e-6)
    # saved and restored, the same features
    again = CellProfiler.from_dict(profiler.to_dict())
    assert np.array_equal(again.transform(full), profiler.transform(full))
    # the first component separates the two groups
    first = profiler.transform(full)[:, 0]
    assert abs(np.corrcoef(first, group)[0, 1]) > 0.9


def test_profiles_fitted_on_training_rows_ignore_held_out_calls(tmp_path: Path) -> None:
    positions, labels, _ = _group_labels(400, 12, seed=4)
    names = [f"c{i}" for i in range(12)]
    ds = open_dataset(_store(tmp_path / "a", positions, labels, list(range(12)), names))
    changed = labels.copy()
    changed[300:] = np.where(changed[300:] >= 0, 1 - changed[300:], -1)  # flip held-out calls
    ds2 = open_dataset(_store(tmp_path / "b", positions, changed, list(range(12)), names))

    class Seg:
        chrom, start, stop = "chr1", 0, 300

    rows = rows_of_segments([Seg()], {"chr1": 400})
    a = fit_for_training(ds, [Seg()], 5)
    b = fit_for_training(ds2, [Seg()], 5)
    assert np.allclose(a.transform(ds, rows), b.transform(ds2, rows))
    assert a.bins[-1][2] <= positions[299] + 1


# ---- imputation --------------------------------------------------------------------------------


def test_tile_shape_bounds_tokens() -> None:
    shape = plan_tile_shape(10_000, 1024, 8, 40, 1 << 21)
    assert shape.tile_sites * shape.batch_size * shape.cell_group <= 1 << 21
    assert shape.cell_group == 10_000 and shape.tile_sites == 209
    shape = plan_tile_shape(100_000, 1024, 8, 40, 1 << 21)
    assert shape.tile_sites == 144 and shape.cell_group == (1 << 21) // 144
    assert plan_tile_shape(30, 1024, 8, 40, 1 << 21) == (1024, 8, 30)


def test_grouped_prediction_equals_whole_for_a_model_without_cell_attention() -> None:
    model = _model(mode="intracell").double()
    model.set_cell_profiles(torch.randn(50, FEATURES, dtype=torch.float64))
    predictor = Predictor.from_model(model)
    states, positions, _ = _inputs(1, 200, 50)
    args = (states[0].numpy(), positions[0].numpy(), 0, 200)
    whole = predict_block(predictor, *args, tile_sites=120)
    grouped = predict_block(predictor, *args, tile_sites=1024, max_tokens=120 * 7)
    assert np.allclose(whole, grouped, atol=1e-12)


def _train(store: Path, run: Path, steps: int) -> Path:
    from cpgformer.data.config import DataConfig
    from cpgformer.training.fit import TrainConfig, fit

    config = ModelConfig(
        n_cells=1, dna_window=0, mode="induced", hidden=32, n_layers=2, n_heads=4, head_dim=8,
        cell_encoder="profile", profile_features=8, n_inducing=8,
    )  # fmt: skip
    data = DataConfig(
        segment_length=100, val_chromosomes=("chr2",), test_chromosomes=("chr3",), batch_size=2
    )
    training = TrainConfig(
        max_steps=steps, warmup_steps=10, lr=2e-3, lr_decay=1.0, early_stopping=False,
        tensorboard=False, val_check_interval=None,
    )  # fmt: skip
    result = fit(store, run, config, data, training, progress_bar=False)
    assert result.last_checkpoint is not None
    return result.last_checkpoint


def test_new_cells_imputed_without_retraining(tmp_path: Path) -> None:
    """Train on 24 cells; impute a store of 8 other cells with the same checkpoint: the new cells'
    AUROC on their observed calls is that of the trained cells (within 0.05 on this small case)."""
    n_cells, n_sites = 32, 500
    names = [f"c{i}" for i in range(n_cells)]
    chroms = {}
    for k, chrom in enumerate(("chr1", "chr2", "chr3")):
        chroms[chrom] = _group_labels(n_sites, n_cells, seed=10 + k, fill=0.25)
    trained, new = list(range(24)), list(range(24, 32))

    def store(path: Path, columns: list[int]) -> Path:
        arrays = [dense_to_chrom(c, p, lab[:, columns]) for c, (p, lab, _) in chroms.items()]
        write_store(path, arrays, [names[i] for i in columns])
        return path

    ckpt = _train(store(tmp_path / "train", trained), tmp_path / "run", steps=120)
    loaded = load_checkpoint(ckpt)
    assert loaded.inductive and loaded.cell_profiles
    both = store(tmp_path / "all", list(range(n_cells)))
    imp = impute(both, ckpt, tmp_path / "imp", ImputeOptions(chroms=["chr3"]))
    probs = imp.imputed("chr3", 0, n_sites).astype(np.float64)
    labels = chroms["chr3"][1]
    aurocs = []
    for columns in (trained, new):
        seen = labels[:, columns] >= 0
        aurocs.append(_auroc(labels[:, columns][seen], probs[:, columns][seen]))
    assert aurocs[0] > 0.75
    assert aurocs[1] > aurocs[0] - 0.05
    # the new cells alone, in a store of their own: the same predictions as next to the others
    alone = impute(store(tmp_path / "new", new), ckpt, tmp_path / "imp_new",
                   ImputeOptions(chroms=["chr3"]))  # fmt: skip
    assert alone.n_cells == 8
    probs_alone = open_imputed(tmp_path / "imp_new").imputed("chr3", 0, n_sites)
    seen = labels[:, new] >= 0
    assert _auroc(labels[:, new][seen], probs_alone.astype(np.float64)[seen]) > 0.7


def _auroc(labels: np.ndarray, scores: np.ndarray) -> float:
    from torchmetrics.functional.classification import binary_auroc

    return float(binary_auroc(torch.from_numpy(scores), torch.from_numpy(labels.astype(np.int64))))


def test_profiles_from_dense_calls_equal_profiles_from_the_store(tmp_path: Path) -> None:
    """The benchmark computes profiles from its dense training matrices: same features."""
    from cpgformer.data.profiles import DenseCalls

    positions, labels, _ = _group_labels(300, 10, seed=5)
    ds = open_dataset(
        _store(tmp_path / "s", positions, labels, list(range(10)), list("abcdefghij"))
    )
    profiler = CellProfiler.fit(ds, n_bins=16, n_components=3)

    class Chrom:
        name = "chr1"

    chrom = Chrom()
    chrom.positions, chrom.states = positions, labels
    dense = profiler.transform(DenseCalls([chrom], 10))
    assert np.allclose(dense, profiler.transform(ds))


def test_profiles_from_row_blocks_find_their_chromosome(tmp_path: Path) -> None:
    """A region hold-out hands the benchmark row blocks named ``chrom:start-stop``: their calls
    are joined into their chromosome, so cells get their own profiles (not the average one)."""
    from cpgformer.benchmark.holdout import ChromData
    from cpgformer.benchmark.run import block_of
    from cpgformer.data.profiles import DenseCalls
    from cpgformer.data.segments import Region

    positions, labels, _ = _group_labels(300, 10, seed=5)
    ds = open_dataset(
        _store(tmp_path / "s", positions, labels, list(range(10)), list("abcdefghij"))
    )
    profiler = CellProfiler.fit(ds, n_bins=16, n_components=3)
    whole = ChromData("chr1", positions, labels.astype(np.int8))
    blocks = block_of(whole, [Region("chr1", 0, 120), Region("chr1", 180, 300)])
    assert [b.name for b in blocks] == ["chr1:0-120", "chr1:180-300"]
    assert all(b.chrom == "chr1" for b in blocks)
    kept = np.ones(300, dtype=bool)
    kept[120:180] = False
    from_blocks = profiler.transform(DenseCalls(blocks, 10))
    assert np.allclose(from_blocks, profiler.transform(ds, rows={"chr1": kept}))
    assert not np.allclose(from_blocks, from_blocks.mean(0, keepdims=True))


def test_ablation_switches_remove_their_input() -> None:
    """No positions: the output ignores the sites' coordinates. No cell identity: no cell
    parameters, and swapping two cells' data swaps their outputs whatever their ids."""
    torch.manual_seed(0)
    base = dict(n_cells=5, dna_window=0, n_layers=2, hidden=16, n_heads=2, head_dim=4)
    states, positions, cells = _inputs(1, 30, 5)
    model = CpGTransformer(ModelConfig(**base, use_positions=False)).eval()
    moved = torch.cumsum(torch.randint(1, 5000, positions.shape), 1)
    assert torch.allclose(model(states, positions, cells), model(states, moved, cells))
    full = CpGTransformer(ModelConfig(**base)).eval()
    assert not torch.allclose(full(states, positions, cells), full(states, moved, cells))
    blind = CpGTransformer(ModelConfig(**base, cell_identity=False)).eval()
    assert not any("cell" in name for name, _ in blind.named_parameters())
    out = blind(states, positions, cells)
    other_ids = blind(states, positions, cells.flip(1))
    assert torch.allclose(out, other_ids)
    assert blind.config.inductive and not blind.config.uses_profiles
