"""Region hold-out: blocks along a chromosome, gaps against leakage, automatic split choice."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from cpgformer.data.config import DataConfig
from cpgformer.data.segments import (
    choose_chromosomes,
    region_layout,
    regions_from_record,
    resolve_split,
)
from cpgformer.errors import UsageError
from cpgformer.io.store import open_dataset

sys.path.insert(0, str(Path(__file__).parent))
from _training_helpers import make_store  # noqa: E402

READ_GAP = 150


def _positions(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.cumsum(rng.integers(2, 60, size=n)).astype(np.int64) + 100


def _assert_separated(pos: np.ndarray, train: list, held: list, gap_rows: int) -> None:
    train_rows = np.concatenate([np.arange(a, b) for a, b in train])
    for a, b in held:
        rows = np.arange(a, b)
        d_rows = np.abs(train_rows[:, None] - rows[None, :]).min()
        d_bp = np.abs(pos[train_rows][:, None] - pos[rows][None, :]).min()
        assert d_rows > gap_rows and d_bp > READ_GAP, (a, b, d_rows, d_bp)


def test_region_layout_partitions_with_gaps_and_fractions() -> None:
    pos = _positions(5000)
    layout = region_layout(
        pos, val_fraction=0.1, test_fraction=0.15, block_sites=400, gap_rows=7, gap_bp=READ_GAP
    )
    assert layout is not None
    cover = np.zeros(pos.size, dtype=int)
    for blocks in layout.values():
        for a, b in blocks:
            cover[a:b] += 1
    assert cover.max() == 1  # no row in two splits
    assert sum(b - a for a, b in layout["val"]) == pytest.approx(500, abs=2)
    assert sum(b - a for a, b in layout["test"]) == pytest.approx(750, abs=2)
    assert len(layout["val"]) == 1 and len(layout["test"]) == 2  # round(500/400), round(750/400)
    # every held-out block is kept away from training (rows and bp), and from the other split
    _assert_separated(pos, layout["train"], layout["val"] + layout["test"], 7)
    _assert_separated(pos, layout["val"], layout["test"], 7)
    # the gap is no wider than needed: the row before each training piece's end is within reach
    left_out = int((cover == 0).sum())
    assert 0 < left_out < 0.1 * pos.size
    # a chromosome too short for two blocks and their gaps gets none
    assert (
        region_layout(
            pos[:60], val_fraction=0.1, test_fraction=0.1, block_sites=6, gap_rows=30, gap_bp=0
        )
        is None
    )


def test_automatic_split_choices() -> None:
    chroms = {
        c: _positions(n, k) for k, (c, n) in enumerate({"1": 500, "5": 100, "10": 90}.items())
    }
    plan = resolve_split(chroms, segment_length=64)
    assert plan.mode == "chromosomes" and plan.note == ""
    assert (plan.val_chromosomes, plan.test_chromosomes) == (["5"], ["10"])
    # no chr5/chr10: two chromosomes chosen by their share of the sites (closest to 10 %)
    sizes = {"a": 1000, "b": 120, "c": 90, "d": 400, "e": 300}
    assert choose_chromosomes(sizes) == ("c", "b")
    other = {c: _positions(n, k) for k, (c, n) in enumerate(sizes.items())}
    plan = resolve_split(other, segment_length=64)
    assert plan.mode == "chromosomes" and plan.test_chromosomes == ["b"]
    assert "chr5, chr10 not in the store" in plan.note and "test chromosome b" in plan.note
    # one chromosome: region hold-out, announced
    plan = resolve_split({"chr8": _positions(3000)}, segment_length=64, receptive_field=5)
    assert plan.mode == "regions" and "region hold-out" in plan.note
    record = plan.record({"chr8": _positions(3000)})
    assert record["split_resolved"] == "regions" and record["region_gap_sites"] == 5
    assert regions_from_record(record) == plan.regions
    assert {s.chrom for part in plan.segments.values() for s in part} == {"chr8"}
    # chromosomes named in the data config are used as given
    assert DataConfig().split == "auto"
    assert DataConfig(val_chromosomes=("chr2",)).split == "chromosomes"
    # named chromosomes are used as given: an unknown one is an error
    with pytest.raises(UsageError, match="chr5"):
        resolve_split({"chr8": _positions(300)}, segment_length=64, split="chromosomes")
    with pytest.raises(UsageError, match="long enough"):
        resolve_split({"chr8": _positions(50)}, segment_length=64, receptive_field=40)


def test_no_test_call_nor_its_read_neighbours_reach_the_training_input(tmp_path: Path) -> None:
    """Acceptance: with a region hold-out, the training batches never contain a test-block (or
    validation-block) call, nor a call of the same cell within a read's length of one."""
    from cpgformer.data.datamodule import SegmentDataModule

    store = make_store(tmp_path / "s", {"chr8": 1600}, 5, fill=0.6, seed=4)
    ds = open_dataset(store)
    pos = ds.positions("chr8")
    rf = 4
    dm = SegmentDataModule(
        store, DataConfig(segment_length=64), receptive_field=rf, rank=0, world_size=1
    )
    assert dm.plan.mode == "regions" and dm.plan.regions is not None
    # every input entry of every training batch, with its row
    seen_rows: set[int] = set()
    seen: set[tuple[int, int]] = set()
    for batch in dm.train_dataloader():
        for k in range(batch.batch_size):
            start = int(batch.starts[k])
            length = int(batch.states.shape[1])
            rows = np.arange(start, start + length)
            seen_rows.update(rows.tolist())
            observed = (batch.states[k] > 0).numpy() | (batch.targets[k] >= 0).numpy()
            r, c = np.nonzero(observed)
            cells = batch.cell_ids[k].numpy()[c]
            seen.update(zip(rows[r].tolist(), cells.tolist()))
    assert len(seen) > 1000
    states = ds.states("chr8", 0, ds.n_sites("chr8"))
    seen_pos = {c: np.sort([pos[r] for r, cc in seen if cc == c]) for c in range(5)}
    train_rows = np.fromiter(seen_rows, dtype=np.int64)
    n_held = 0
    for split in ("test", "val"):
        for block in dm.plan.regions[split]:
            rows = np.arange(block.start, block.stop)
            # no training row within the receptive field of a held-out row
            assert np.abs(train_rows[:, None] - rows[None, :]).min() > rf
            for cell in range(5):
                held = pos[rows[states[rows, cell] >= 0]]
                n_held += held.size
                # the nearest training-input call of the same cell is more than a read away:
                # neither the held-out call itself nor a read neighbour of it was seen
                k = np.searchsorted(seen_pos[cell], held)
                for side in (k - 1, k):
                    ok = (side >= 0) & (side < seen_pos[cell].size)
                    gaps = np.abs(seen_pos[cell][side[ok]] - held[ok])
                    assert gaps.size == 0 or gaps.min() > READ_GAP, (split, cell, gaps.min())
    assert n_held > 200
    # the split is recorded with the run's data parameters
    params = dm.params()
    assert params["split_resolved"] == "regions" and "not in the store" in params["split_note"]
    assert [r[:3] for r in params["test_regions"]] == [
        ["chr8", b.start, b.stop] for b in dm.plan.regions["test"]
    ]


class _Spy:
    """A benchmark model that records what it is fitted on and predicts 0.5."""

    name = "spy"
    sees_target = False
    receptive_field = 0

    def __init__(self) -> None:
        self.fitted: list = []

    def fit(self, train, cells) -> None:  # noqa: ANN001
        self.fitted = list(train)

    def predict(self, chrom, rows, cols) -> np.ndarray:  # noqa: ANN001
        return np.full(len(rows), 0.5)


def test_benchmark_region_holdout_fits_on_training_blocks_only(tmp_path: Path) -> None:
    from cpgformer.benchmark.run import run_benchmark

    store = make_store(tmp_path / "s", {"chr8": 2400}, 5, fill=0.6, seed=5)
    pos = open_dataset(store).positions("chr8")
    spy = _Spy()
    res = run_benchmark(store, models=[spy, "site-mean"], out_dir=tmp_path / "b", figures=False)
    s = res.settings
    assert s["split"] == "regions" and s["test_regions"] and "not in the store" in s["split_note"]
    test_rows = np.concatenate([np.arange(r[1], r[2]) for r in s["test_regions"]])
    fitted_pos = np.concatenate([d.positions for d in spy.fitted])
    assert len(spy.fitted) == len(s["train_regions"]) >= 2
    # no fitted site is a test site or within a read's length of one
    assert np.abs(fitted_pos[:, None] - pos[test_rows][None, :]).min() > READ_GAP
    # every scored entry lies in a test block
    assert set(res.predictions["pos"]) <= set(pos[test_rows].tolist())
    assert "region hold-out: 1 test block(s)" in (tmp_path / "b" / "report.md").read_text()


def test_train_and_benchmark_cli_defaults_on_a_one_chromosome_store(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """Acceptance: `train` and `benchmark` run with their default split on one chromosome, and
    the benchmark scores the checkpoint's own test blocks."""
    from cpgformer.cli import main

    store = make_store(tmp_path / "s", {"chr8": 2000}, 6, fill=0.5, seed=6)
    tiny = "--n-layers 1 --hidden 16 --n-heads 2 --head-dim 4 --site-window 5 --cell-embed 8"
    run = tmp_path / "run"
    code = main(
        ["train", str(store), "-o", str(run), *tiny.split(), "--max-steps", "30"]
        + ["--no-tensorboard", "--segment-length", "128"]
    )
    out = capsys.readouterr().out
    assert code == 0 and "split: region hold-out" in out and "schedule: adaptive" in out
    assert "training masks: read-sized runs (<= 150 bp), 25% of observed calls" in out
    config = json.loads((run / "config.json").read_text())
    assert config["data"]["split_resolved"] == "regions"
    assert config["data"]["mask_unit"] == "run"
    bench = tmp_path / "bench"
    code = main(
        ["benchmark", str(store), "--checkpoint", str(run / "checkpoints" / "best.ckpt")]
        + ["-o", str(bench), "--models", "cpgformer,site-mean,knn-cells", "--no-figures"]
    )
    out = capsys.readouterr().out
    assert code == 0, out
    assert "cpgformer minus each model" in out and "site-mean auroc" in out
    settings = json.loads((bench / "settings.json").read_text())
    assert settings["test_regions"] == config["data"]["test_regions"]
    boot = (bench / "paired_bootstrap.tsv").read_text().splitlines()
    assert boot[0].startswith("scope\tcell\tmodel\tmetric")
    assert sum(line.startswith("all\t") for line in boot) == 4  # 2 baselines x AUROC, AUPRC


@pytest.mark.slow
def test_devmethyl_locus_trains_and_benchmarks_without_renaming(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """Acceptance: the 740-cell one-locus scNMT set runs through prepare, train and benchmark with
    the default split (no chromosome renaming, no --test-chroms)."""
    from conftest import SHARED

    from cpgformer.cli import main

    cells = SHARED / "data" / "devmethyl_scnmt" / "cells"
    if not cells.is_dir():
        pytest.skip(f"shared data not found: {cells}")
    store = tmp_path / "store"
    assert main(["-q", "prepare", *map(str, sorted(cells.glob("*.cov.gz"))), "-o", str(store)]) == 0
    run = tmp_path / "run"
    tiny = "--n-layers 1 --hidden 16 --n-heads 2 --head-dim 4 --site-window 5 --cell-embed 8"
    code = main(
        ["train", str(store), "-o", str(run), *tiny.split(), "--max-steps", "6"]
        + ["--no-tensorboard"]
    )
    out = capsys.readouterr().out
    assert code == 0 and "split: region hold-out" in out
    config = json.loads((run / "config.json").read_text())
    test_blocks = config["data"]["test_regions"]
    assert len(test_blocks) == 1 and test_blocks[0][0] == "chr8"
    bench = tmp_path / "bench"
    code = main(
        ["-q", "benchmark", str(store), "--checkpoint", str(run / "checkpoints" / "best.ckpt")]
        + ["-o", str(bench), "--models", "cpgformer,site-mean,knn-cells", "--no-figures"]
    )
    assert code == 0
    settings = json.loads((bench / "settings.json").read_text())
    assert settings["split"] == "regions" and settings["test_regions"] == test_blocks
    assert settings["n_cells"] == 740 and settings["n_entries"] > 100
