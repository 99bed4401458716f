from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from cpgformer.data.masking import (
    EmpiricalSampler,
    MaskingConfig,
    perturb,
    perturbation_count,
    read_runs,
    segment_rng,
)
from cpgformer.errors import UsageError
from cpgformer.io.store import open_dataset

sys.path.insert(0, str(Path(__file__).parent))
from _training_helpers import make_store  # noqa: E402


def test_count_rules_by_hand() -> None:
    orig = MaskingConfig("original", 0.25, 0.2)
    assert perturbation_count(1024, 5000, orig) == 256  # 25 % of rows, whatever C
    assert perturbation_count(1024, 100, orig) == 100  # capped by the observed count
    assert perturbation_count(7, 50, orig) == 1
    assert perturbation_count(1024, 0, orig) == 0
    obs = MaskingConfig("observed", 0.25, 0.2)
    assert perturbation_count(1024, 5000, obs) == 1250
    assert perturbation_count(1024, 2, obs) == 1  # at least one
    assert perturbation_count(1024, 6, obs) == 2  # round half up of 1.5
    with pytest.raises(UsageError):
        MaskingConfig("bogus")
    with pytest.raises(UsageError):
        MaskingConfig("original", 0.0)


def test_perturb_original_rule_split_80_20() -> None:
    rng = np.random.default_rng(0)
    values = np.where(rng.random((1024, 20)) < 0.3, rng.integers(0, 2, (1024, 20)), -1).astype(
        np.int8
    )
    sampler = EmpiricalSampler(np.ones(10, dtype=np.float32))  # every redraw is "methylated"
    out, mask = perturb(values, MaskingConfig("original"), sampler, segment_rng(1, "5", 0))
    assert out.dtype == np.int8 and mask.dtype == bool
    assert mask.sum() == 256
    assert np.all(values[mask] >= 0), "only observed entries are perturbed"
    assert np.array_equal(out[~mask], values[~mask]), "unperturbed entries are untouched"
    assert (out[mask] == -1).sum() == 204  # floor(0.8 * 256)
    assert (out[mask] == 1).sum() == 52  # ceil(0.2 * 256), redrawn from the sampler


def test_perturb_observed_rule_and_continuous() -> None:
    rng = np.random.default_rng(1)
    betas = np.where(rng.random((64, 8)) < 0.5, rng.random((64, 8)), -1).astype(np.float32)
    n_obs = int((betas >= 0).sum())
    sampler = EmpiricalSampler(np.array([0.25], dtype=np.float32))
    out, mask = perturb(betas, MaskingConfig("observed", 0.5, 0.25), sampler, rng)
    n = int(np.floor(0.5 * n_obs + 0.5))
    assert mask.sum() == n
    n_unknown = int(np.floor(0.75 * n))
    assert (out[mask] == -1).sum() == n_unknown
    assert np.all(out[mask][out[mask] != -1] == 0.25)


def _plain_runs(values: np.ndarray, positions: np.ndarray, gap: int) -> list[list[tuple]]:
    """Read-sized runs by a plain loop: per cell, consecutive observed sites at most ``gap`` apart."""
    runs: list[list[tuple]] = []
    for c in range(values.shape[1]):
        last = None
        for r in range(values.shape[0]):
            if values[r, c] == -1:
                continue
            if last is None or positions[r] - positions[last] > gap:
                runs.append([])
            runs[-1].append((r, c))
            last = r
    return runs


def _sparse_reads(seed: int, n_sites: int = 300, n_cells: int = 12) -> tuple:
    """Calls in read-like clumps: a few reads per cell, each covering the sites of ~120 bp."""
    rng = np.random.default_rng(seed)
    positions = np.cumsum(rng.integers(5, 60, n_sites)).astype(np.int64)
    values = np.full((n_sites, n_cells), -1, dtype=np.int8)
    for c in range(n_cells):
        for start in rng.choice(positions[-1], size=8, replace=False):
            rows = np.flatnonzero((positions >= start) & (positions < start + 120))
            values[rows, c] = rng.integers(0, 2, rows.size)
    return values, positions


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("rule", ["observed", "original"])
def test_run_unit_perturbs_whole_runs(seed: int, rule: str) -> None:
    values, positions = _sparse_reads(seed)
    sampler = EmpiricalSampler(np.array([0.0, 1.0], dtype=np.float32))
    config = MaskingConfig(rule, 0.25, 0.2, unit="run", run_gap=150)
    out, mask = perturb(values, config, sampler, segment_rng(seed, "1", 0, 0), positions)
    runs = _plain_runs(values, positions, 150)
    assert sum(len(r) > 1 for r in runs) > 10, "the data has multi-call runs"
    n = perturbation_count(values.shape[0], int((values != -1).sum()), config)
    # every run is perturbed whole or not at all
    taken = [r for r in runs if mask[tuple(np.array(r).T)].all()]
    for run in runs:
        hit = mask[tuple(np.array(run).T)]
        assert hit.all() or not hit.any()
    # whole runs until the count is reached: without the largest of them it would not be
    total = sum(len(r) for r in taken)
    assert total == mask.sum() >= n
    assert total - max(len(r) for r in taken) < n
    # hidden share as for single calls; the rest re-drawn; nothing else touched
    assert (out[mask] == -1).sum() == int(np.floor(total * 0.8 + 1e-9))
    assert np.array_equal(out[~mask], values[~mask]) and np.all(values[mask] >= 0)
    # a hidden call never keeps an unperturbed call of its cell within the run gap
    for r, c in zip(*np.nonzero((out == -1) & mask), strict=True):
        near = np.abs(positions - positions[r]) <= 150
        assert not np.any((values[near, c] != -1) & ~mask[near, c])
    # reproducible from the generator
    again = perturb(values, config, sampler, segment_rng(seed, "1", 0, 0), positions)
    assert np.array_equal(again[0], out) and np.array_equal(again[1], mask)


def test_read_runs_match_the_plain_loop() -> None:
    values, positions = _sparse_reads(5)
    cols, rows = np.nonzero(values.T != -1)
    run = read_runs(rows, cols, positions, 150)
    plain = _plain_runs(values, positions, 150)
    assert int(run[-1]) + 1 == len(plain)
    got = [list(zip(rows[run == k].tolist(), cols[run == k].tolist())) for k in range(len(plain))]
    assert got == plain


def test_run_unit_checks() -> None:
    values, positions = _sparse_reads(3)
    sampler = EmpiricalSampler(np.array([1.0], dtype=np.float32))
    config = MaskingConfig(unit="run")
    with pytest.raises(ValueError, match="positions"):
        perturb(values, config, sampler, np.random.default_rng(0))
    with pytest.raises(UsageError, match="mask unit"):
        MaskingConfig(unit="read")
    with pytest.raises(UsageError, match="run gap"):
        MaskingConfig(unit="run", run_gap=-1)
    # gap 0 at distinct positions: every call is its own run, the count is met exactly
    out, mask = perturb(
        values, MaskingConfig(unit="run", run_gap=0), sampler, np.random.default_rng(0), positions
    )
    assert mask.sum() == perturbation_count(values.shape[0], int((values != -1).sum()), config)
    # nothing observed: nothing perturbed
    empty = np.full((10, 3), -1, dtype=np.int8)
    out, mask = perturb(empty, config, sampler, np.random.default_rng(0), np.arange(10))
    assert not mask.any() and np.array_equal(out, empty)


def test_segment_rng_keys() -> None:
    a = segment_rng(5, "chr5", 3).random(4)
    assert np.array_equal(a, segment_rng(5, "chr5", 3).random(4))
    assert not np.array_equal(a, segment_rng(5, "chr5", 4).random(4))
    assert not np.array_equal(a, segment_rng(5, "chr6", 3).random(4))
    assert not np.array_equal(a, segment_rng(6, "chr5", 3).random(4))
    t0 = segment_rng(5, "chr5", 3, epoch=0).random(4)
    t1 = segment_rng(5, "chr5", 3, epoch=1).random(4)
    assert not np.array_equal(t0, t1) and not np.array_equal(a, t0)


def test_empirical_sampler_from_store(tmp_path: Path) -> None:
    store = make_store(tmp_path / "s", {"1": 300, "2": 200}, 6, fill=0.6)
    ds = open_dataset(store)
    all_labels = np.concatenate([np.asarray(ds.csr(c)[4]) for c in ds.chromosomes])
    s = EmpiricalSampler.from_store(ds, ds.chromosomes, "binary", n=500, seed=0)
    assert s.values.size == 500
    assert set(np.unique(s.values).tolist()) <= {0.0, 1.0}
    assert abs(s.mean - all_labels.mean()) < 0.08
    draws = s.draw(2000, np.random.default_rng(0))
    assert abs(draws.mean() - s.mean) < 0.05


def _val_digest(store: Path, epochs: tuple[int, ...] = (0,)) -> str:
    from cpgformer.data.datamodule import DataConfig, SegmentDataModule

    dm = SegmentDataModule(
        store,
        DataConfig(segment_length=32, val_chromosomes=("chr2",), test_chromosomes=()),
        rank=0,
        world_size=1,
    )
    ds = dm.dataset("val")
    h = hashlib.sha256()
    for epoch in epochs:
        for i in range(len(ds)):
            item = ds[(i, epoch, i)]
            h.update(item.values.tobytes() + item.loss_mask.tobytes())
    return h.hexdigest()


def test_validation_masks_identical_across_epochs_and_runs(tmp_path: Path) -> None:
    from cpgformer.data.datamodule import DataConfig, SegmentDataModule

    store = make_store(tmp_path / "s", {"1": 100, "2": 90}, 5, fill=0.7)
    dm = SegmentDataModule(
        store,
        DataConfig(segment_length=32, val_chromosomes=("chr2",), test_chromosomes=()),
        rank=0,
        world_size=1,
    )
    val = dm.dataset("val")
    train = dm.dataset("train")
    assert len(val) == 3 and val.segments[0].chrom == "2"  # chr2 mapped to "2"
    for i in range(len(val)):
        e0, e5 = val[(i, 0, i)], val[(i, 5, i)]
        assert np.array_equal(e0.loss_mask, e5.loss_mask) and np.array_equal(e0.values, e5.values)
        assert e0.loss_mask.any()
    # training masks change between epochs (same segment)
    assert not np.array_equal(train[(0, 0, 0)].loss_mask, train[(0, 1, 0)].loss_mask)
    # through the dataloader, in two epochs
    loader = dm.val_dataloader()
    first = [b.loss_mask.clone() for b in loader]
    loader.batch_sampler.set_epoch(3)
    second = [b.loss_mask.clone() for b in loader]
    assert all((a == b).all() for a, b in zip(first, second, strict=True))
    # another run in a fresh process (different hash salt, fresh state) gives the same masks
    here = _val_digest(store, (0, 1))
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]); from test_masking import _val_digest; "
        "from pathlib import Path; print(_val_digest(Path(sys.argv[2]), (0, 1)))"
    )
    other = subprocess.run(
        [sys.executable, "-c", code, str(Path(__file__).parent), str(store)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert other == here


def test_training_items_with_the_run_unit(tmp_path: Path) -> None:
    from cpgformer.data.datamodule import DataConfig, SegmentDataModule

    store = make_store(tmp_path / "s", {"1": 200, "2": 90}, 5, fill=0.7)
    ds = open_dataset(store)
    cfg = DataConfig(
        segment_length=64, val_chromosomes=("chr2",), test_chromosomes=(), mask_unit="run"
    )
    train = SegmentDataModule(store, cfg, rank=0, world_size=1).dataset("train")
    n_multi = 0
    for i in range(len(train)):
        item = train[(i, 0, i)]
        seg = train.segments[i]
        values = ds.states(seg.chrom, seg.start, seg.stop)
        runs = _plain_runs(values, item.positions, cfg.mask_run_gap)
        n_multi += sum(len(r) > 1 for r in runs)
        for run in runs:
            hit = item.loss_mask[tuple(np.array(run).T)]
            assert hit.all() or not hit.any()
        assert item.loss_mask.any()
    assert n_multi > 0, "the store has runs of several calls"
