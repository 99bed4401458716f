"""Input summaries (per-site and windowed means of the input grid) and the per-site-mean offset."""

from __future__ import annotations

import math

import pytest
import torch

from cpgformer.data.batch import rest_totals
from cpgformer.nn import CpGTransformer, ModelConfig
from cpgformer.nn.embeddings import (
    SUMMARY_FEATURES,
    input_summaries,
    input_summaries_reference,
)


def _grid(seed: int, shape=(2, 9, 5), observed=0.5, continuous=False) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    seen = torch.rand(shape, generator=g) < observed
    if continuous:
        values = 1.0 + torch.rand(shape, generator=g)
        return torch.where(seen, values, torch.zeros(shape))
    return torch.where(
        seen, torch.randint(1, 3, shape, generator=g), torch.zeros(shape, dtype=torch.long)
    )


@pytest.mark.parametrize("continuous", [False, True])
@pytest.mark.parametrize("half", [0, 1, 3, 20])
def test_summaries_match_the_loop_reference(continuous: bool, half: int) -> None:
    states = _grid(half + 10 * continuous, continuous=continuous)
    mode = "continuous" if continuous else "binary"
    fast = input_summaries(states, half, mode)
    ref = input_summaries_reference(states, half, mode)
    assert fast.shape == (*states.shape, SUMMARY_FEATURES)
    torch.testing.assert_close(fast.double(), ref, rtol=1e-5, atol=1e-5)


def test_summaries_of_a_token_ignore_its_own_input() -> None:
    """No leakage: a token's summaries are the same whether its entry is masked, unmethylated or
    methylated (so a masked or held-out label can never reach them)."""
    states = _grid(3, shape=(1, 12, 6))
    for i, c in [(0, 0), (5, 2), (11, 5), (6, 3)]:
        outs = []
        for code in (0, 1, 2):
            s = states.clone()
            s[0, i, c] = code
            outs.append(input_summaries(s, 2)[0, i, c])
        torch.testing.assert_close(outs[0], outs[1])
        torch.testing.assert_close(outs[0], outs[2])
        # ... while other tokens of the same site do see it (the test can fail)
        other = (c + 1) % 6
        s1, s2 = states.clone(), states.clone()
        s1[0, i, c], s2[0, i, c] = 1, 2
        assert not torch.equal(
            input_summaries(s1, 2)[0, i, other], input_summaries(s2, 2)[0, i, other]
        )


def test_site_mean_feature_is_the_other_cells_mean_with_prior() -> None:
    # one site, four cells: 1, 1, 0 observed, one masked; prior weight 1 towards the segment mean
    states = torch.tensor([[[2, 2, 1, 0]]])
    feats = input_summaries(states, 0)[0, 0]
    # masked cell: others 2/3 observed methylated; segment mean (2 + 0.5) / (3 + 1)
    seg = (2 + 0.5) / 4
    p = (2 + seg) / (3 + 1)
    assert feats[3, 0].item() == pytest.approx(math.log(p / (1 - p)), rel=1e-5)
    assert feats[3, 1].item() == pytest.approx(1.0)  # all 3 other cells observed
    assert feats[0, 1].item() == pytest.approx(2 / 3)  # cell 0: 2 of its 3 others observed


def test_coverage_features_do_not_depend_on_the_number_of_cells() -> None:
    """Counts across cells are fractions: a batch of 128 cells and an imputation group of
    thousands give a token the same coverage features when the coverage is the same."""
    g = torch.Generator().manual_seed(3)
    few = torch.randint(0, 3, (1, 40, 64), generator=g)
    many = few.repeat(1, 1, 32)  # 2,048 cells, the same coverage at every site
    a = input_summaries(few, 3)
    b = input_summaries(many, 3)[:, :, :64]
    for k in (1, 3):  # equal up to the token's own leave-out (1 of 63 vs 1 of 2,047 cells)
        assert torch.allclose(a[..., k], b[..., k], atol=0.02), k
    assert (a[..., 1] > 0.2).all() and (a[..., 1] < 0.9).all()


@pytest.mark.parametrize("continuous", [False, True])
@pytest.mark.parametrize("half", [0, 2, 30])
def test_summaries_of_kept_cells_with_rest_totals_equal_the_whole_grids(continuous, half) -> None:
    """Training on resampled cells: the kept cells' summaries, given the totals of the cells left
    out, are exactly the summaries of the whole grid at those cells (and differ without them)."""
    import numpy as np

    mode = "continuous" if continuous else "binary"
    grid = _grid(7 + half, shape=(3, 25, 40), observed=0.3, continuous=continuous)
    whole = input_summaries(grid, half, mode)
    stored = grid.double().numpy() - 1.0  # model input -> stored values (-1 missing)
    rng = np.random.default_rng(half)
    columns = [np.sort(rng.choice(40, size=9, replace=False)) for _ in range(3)]
    kept = torch.stack([grid[b][:, torch.as_tensor(c)] for b, c in enumerate(columns)])
    rest = torch.stack(
        [torch.from_numpy(rest_totals(stored[b], c, mode)) for b, c in enumerate(columns)]
    )
    assert rest.shape == (3, 25, 3) and (rest[..., 2] == 31).all()
    got = input_summaries(kept, half, mode, rest)
    want = torch.stack([whole[b][:, torch.as_tensor(c)] for b, c in enumerate(columns)])
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    alone = input_summaries(kept, half, mode)
    assert not torch.allclose(alone[..., 0], want[..., 0], atol=1e-3)
    # nothing left out: zero totals change nothing
    none = torch.from_numpy(rest_totals(stored[0], np.arange(40), mode)).unsqueeze(0)
    torch.testing.assert_close(input_summaries(grid[:1], half, mode, none), whole[:1])


def test_training_batches_of_resampled_cells_carry_the_rest_totals(tmp_path) -> None:
    import sys
    from pathlib import Path

    import numpy as np

    sys.path.insert(0, str(Path(__file__).parent))
    from _training_helpers import make_store

    from cpgformer.data.config import DataConfig
    from cpgformer.data.datamodule import SegmentDataModule
    from cpgformer.io.store import open_dataset

    store = make_store(tmp_path / "s", {"chr1": 120, "chr5": 40, "chr10": 40}, 30, seed=2)
    dm = SegmentDataModule(
        store, DataConfig(segment_length=32, batch_size=2, resample_cells=8), rank=0, world_size=1
    )
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch.states.shape[2] == 8 and batch.rest.shape == (2, 32, 3)
    ds = open_dataset(store)
    for b in range(2):
        start = int(batch.starts[b])
        full = ds.states("chr1", start, start + 32)
        want = rest_totals(full, batch.cell_ids[b].numpy())
        np.testing.assert_array_equal(batch.rest[b].numpy(), want)
        assert want[:, 1].sum() > 0
    # all cells in the batch: no totals
    dm_all = SegmentDataModule(store, DataConfig(segment_length=32, batch_size=2), rank=0,
                               world_size=1)  # fmt: skip
    dm_all.setup("fit")
    assert next(iter(dm_all.train_dataloader())).rest is None


def _config(**extra) -> ModelConfig:
    return ModelConfig(
        n_cells=5, dna_window=0, hidden=16, n_layers=1, n_heads=2, head_dim=4, **extra
    )


def test_off_by_default_and_published_weights_unchanged() -> None:
    config = ModelConfig(n_cells=3, dna_window=0)
    assert not config.input_summaries and not config.summary_offset
    keys = set(CpGTransformer(config).state_dict())
    assert not any(k.startswith(("summary_embed", "offset_scale")) for k in keys)


def test_untrained_offset_model_predicts_the_site_mean() -> None:
    torch.manual_seed(0)
    model = CpGTransformer(_config(summary_offset=True)).eval()
    states = _grid(5, shape=(1, 9, 5))
    positions = torch.arange(9).unsqueeze(0) * 10
    cell_ids = torch.arange(5).unsqueeze(0)
    out = model(states, positions, cell_ids)
    torch.testing.assert_close(out, input_summaries(states, model.config.half_window)[..., 0])


@pytest.mark.parametrize("offset", [False, True])
def test_fast_and_reference_paths_agree_with_summaries(offset: bool) -> None:
    torch.manual_seed(1)
    model = CpGTransformer(_config(input_summaries=True, summary_offset=offset)).eval()
    torch.nn.init.normal_(model.head.weight)
    states = _grid(6, shape=(2, 9, 5))
    positions = torch.arange(9).repeat(2, 1) * 10
    cell_ids = torch.arange(5).repeat(2, 1)
    fast = model(states, positions, cell_ids, attention_impl="fast")
    ref = model(states, positions, cell_ids, attention_impl="reference")
    torch.testing.assert_close(fast, ref, rtol=1e-4, atol=1e-5)
    # the summaries change the output (the feature is wired in)
    plain = CpGTransformer(_config()).eval()
    plain.load_state_dict(
        {k: v for k, v in model.state_dict().items() if k in plain.state_dict()}, strict=True
    )
    assert not torch.allclose(plain(states, positions, cell_ids), fast)


def test_model_output_of_a_masked_token_ignores_its_label() -> None:
    """The whole model: a token whose input is masked gets the same output whatever its true label
    was, since only inputs enter (summaries included); training losses use labels separately."""
    torch.manual_seed(2)
    model = CpGTransformer(_config(input_summaries=True, summary_offset=True)).eval()
    truth = _grid(7, shape=(1, 9, 5), observed=1.0)
    positions = torch.arange(9).unsqueeze(0) * 10
    cell_ids = torch.arange(5).unsqueeze(0)
    outs = []
    for label in (1, 2):
        full = truth.clone()
        full[0, 4, 2] = label
        masked = full.clone()
        masked[0, 4, 2] = 0  # what the model is given
        outs.append(model(masked, positions, cell_ids)[0, 4, 2])
    assert outs[0].item() == outs[1].item()


def _build(argv: list[str], n_cells: int):
    import argparse

    from cpgformer.commands import train as cmd

    parser = argparse.ArgumentParser()
    cmd.add_arguments(parser)
    return cmd.build_configs(parser.parse_args(["S", "-o", "R", *argv]), n_cells, False)


def test_new_run_defaults_and_the_published_path() -> None:
    from cpgformer.data.config import DataConfig

    model, data, _, given = _build([], 27)
    assert model.input_summaries and model.summary_offset and model.mode == "axial"
    assert data.segment_length == 256 and data.resample_cells is None and given == {}
    assert data.mask_unit == "run" and data.masking.unit == "run"
    _, data, _, _ = _build(["--mask-unit", "call", "--mask-run-gap", "90"], 27)
    assert (data.masking.unit, data.masking.run_gap) == ("call", 90)
    model, data, _, _ = _build([], 740)
    assert (model.mode, model.cell_encoder, data.resample_cells) == ("induced", "profile", 128)
    # flags override; the published schedule keeps the published model and data defaults
    model, data, _, _ = _build(
        ["--no-summary-offset", "--mode", "axial", "--resample-cells", "9"], 740
    )
    assert model.input_summaries and not model.summary_offset
    assert (model.mode, model.cell_encoder, data.resample_cells) == ("axial", "profile", 9)
    model, data, _, _ = _build(["--schedule", "published"], 740)
    assert model == ModelConfig(n_cells=740, dna_window=0) and data == DataConfig()
    assert data.mask_unit == "call"  # the published objective


def test_explain_target_logit_includes_the_offset() -> None:
    from cpgformer.explain.attribution import _target_logit

    torch.manual_seed(3)
    model = CpGTransformer(_config(input_summaries=True, summary_offset=True)).eval()
    torch.nn.init.normal_(model.head.weight)
    states = _grid(8, shape=(1, 9, 5))
    positions = torch.arange(9).unsqueeze(0) * 10
    cell_ids = torch.arange(5).unsqueeze(0)
    full = model(states, positions, cell_ids)
    with torch.no_grad():
        got = _target_logit(model, states, positions, cell_ids, None, 4, 2)
    torch.testing.assert_close(got, full[:, 4, 2])
