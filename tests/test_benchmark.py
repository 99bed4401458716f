"""Benchmark harness: hold-out protocols, leak-freedom, exhaustive batching, metrics, report, CLI."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from _benchmark_helpers import (
    chrom_data,
    one_thread,
    synthetic_states,
    tiny_model,
    tiny_store,
    write_dense_store,
)

from cpgformer.benchmark import holdout as ho
from cpgformer.benchmark.baselines import (
    CaMelia,
    CaMeliaConfig,
    CpgformerModel,
    DeepCpG,
    DeepCpGConfig,
    KnnCells,
    NearestNeighbour,
    SiteMean,
)
from cpgformer.benchmark.metrics import (
    METRIC_COLUMNS,
    bin_labels,
    binary_metrics,
    cpg_density,
    distance_bin_labels,
    match_tss_chromosomes,
    read_tss_bed,
    tss_distance,
)
from cpgformer.benchmark.run import run_benchmark
from cpgformer.cli import main
from cpgformer.codes import encode_sequence, to_model_input
from cpgformer.errors import InputError, UsageError
from cpgformer.io.store import open_dataset

TINY_DEEPCPG = DeepCpGConfig(
    cpg_hidden=16, joint_hidden=16, n_neighbours=5, max_steps=6, eval_every=3, batch_size=32
)
TINY_CAMELIA = CaMeliaConfig(iterations=8, depth=3, thread_count=1)


@pytest.fixture(autouse=True)
def _single_thread():
    with one_thread():
        yield


# ------------------------------------------------------------------ hold-out selection


def test_read_runs_split_on_cell_and_gap():
    positions = np.array([0, 100, 300, 400, 451], dtype=np.int64)
    # entries sorted by (col, row): cell 0 rows 0,1,2,3 ; cell 1 rows 0, 4
    rows = np.array([0, 1, 2, 3, 0, 4])
    cols = np.array([0, 0, 0, 0, 1, 1])
    run = ho.read_runs(rows, cols, positions, run_gap=150)
    # gaps in cell 0: 100 (same), 200 (new), 100 (same); cell 1 starts a run; gap 451 (new)
    assert run.tolist() == [0, 0, 1, 1, 2, 3]


def test_holdout_hides_whole_runs_and_keeps_no_close_visible_neighbour():
    chrom = chrom_data("t", 3000, 8, seed=4)
    hidden = ho.holdout_entries(chrom, 0.3, np.random.default_rng(0), run_gap=150)
    masked = ho.mask_entries(chrom, hidden.rows, hidden.cols)
    n_obs = int((chrom.states != -1).sum())
    assert 0.2 < len(hidden) / n_obs < 0.4
    assert (masked.states[hidden.rows, hidden.cols] == -1).all()
    assert (chrom.states[hidden.rows, hidden.cols] == hidden.labels).all()
    # every other observed entry is untouched
    changed = (masked.states != chrom.states).sum()
    assert changed == len(hidden)
    # no visible call of the same cell within 150 bp of a hidden one
    for r, c in zip(hidden.rows[:400], hidden.cols[:400]):
        near = np.abs(chrom.positions - chrom.positions[r]) <= 150
        assert (masked.states[near, c] == -1).all()
    # deterministic, and independent of labels
    again = ho.holdout_entries(chrom, 0.3, np.random.default_rng(0), run_gap=150)
    flipped = ho.ChromData(
        "t", chrom.positions, np.where(chrom.states >= 0, 1 - chrom.states, -1).astype(np.int8)
    )
    other = ho.holdout_entries(flipped, 0.3, np.random.default_rng(0), run_gap=150)
    assert np.array_equal(again.rows, hidden.rows) and np.array_equal(other.cols, hidden.cols)


def test_holdout_respects_cell_mask():
    chrom = chrom_data("t", 400, 5, seed=1)
    mask = np.array([True, False, True, True, False])
    hidden = ho.holdout_entries(chrom, 1.0, np.random.default_rng(0), cell_mask=mask)
    assert set(hidden.cols.tolist()) == {0, 2, 3}
    assert len(hidden) == int((chrom.states[:, mask] != -1).sum())


def test_separated_groups_rows_apart_and_optimal():
    rows = np.array([0, 0, 1, 3, 4, 9, 9, 9, 20])
    groups = ho.separated_groups(rows, receptive_field=3)
    assert sorted(np.concatenate(groups).tolist()) == list(range(rows.size))
    for g in groups:
        r = np.sort(rows[g])
        assert (np.diff(r) > 3).all()
    # largest number of entries within 4 consecutive rows: rows 0,0,1,3 -> 4 groups needed
    assert len(groups) == 4
    assert len(ho.separated_groups(rows, None)) == rows.size


# ------------------------------------------------------------------ exhaustive = hide each alone


def _full_pass_hidden_alone(model, chrom, r, c):
    x = to_model_input(chrom.states.astype(np.int64))
    x[r, c] = 0
    with torch.no_grad():
        logits = model(
            torch.from_numpy(x)[None],
            torch.from_numpy(np.array(chrom.positions))[None],
            torch.arange(chrom.n_cells)[None],
        )
    return float(torch.sigmoid(logits[0, r, c]))


def test_exhaustive_equals_hiding_each_entry_alone():
    chrom = chrom_data("t", 60, 4, seed=7, fill=0.4)
    cells = [f"c{i}" for i in range(4)]
    train = [chrom_data("a", 300, 4, seed=8)]
    entries = ho.sample_entries(chrom, 1.0, np.random.default_rng(0))
    assert len(entries) == int((chrom.states != -1).sum()) > 50

    net = tiny_model(4, seed=3)
    cpgt = CpgformerModel.from_model(net, cells, tile_sites=12, batch_size=3)
    assert cpgt.receptive_field == 4 and cpgt.sees_target
    cpgt.fit(train, cells)
    got = ho.predict_exhaustive(cpgt, chrom, entries)
    want = [_full_pass_hidden_alone(net, chrom, r, c) for r, c in zip(entries.rows, entries.cols)]
    np.testing.assert_allclose(got, want, atol=2e-6)
    # grouped passes really were batched: far fewer passes than entries
    assert len(ho.separated_groups(entries.rows, 4)) < len(entries) / 3

    for base in (NearestNeighbour(), SiteMean(), KnnCells(2), DeepCpG(TINY_DEEPCPG)):
        base.fit(train, cells)
        got = ho.predict_exhaustive(base, chrom, entries)
        some = range(0, len(entries), 3)  # every third entry by hand keeps the test fast
        want = [
            base.predict(
                ho.mask_entries(chrom, [entries.rows[k]], [entries.cols[k]]),
                entries.rows[[k]],
                entries.cols[[k]],
            )[0]
            for k in some
        ]
        np.testing.assert_allclose(got[list(some)], want, atol=1e-6, err_msg=base.name)


def test_exhaustive_protocol_through_run_benchmark(tmp_path):
    store = tiny_store(tmp_path / "s", n_cells=4, sizes={"1": 200, "2": 50})
    ds = open_dataset(store)
    net = tiny_model(4, seed=1)
    model = CpgformerModel.from_model(net, ds.cells, tile_sites=16)
    res = run_benchmark(
        ds,
        models=[model, "nearest-neighbour"],
        out_dir=tmp_path / "out",
        test_chromosomes=["2"],
        protocol="exhaustive",
        figures=False,
    )
    chrom = ho.ChromData("2", ds.positions("2"), ds.states("2", 0, ds.n_sites("2")))
    pred = res.predictions
    assert len(pred) == int((chrom.states != -1).sum())
    cell_index = {c: i for i, c in enumerate(ds.cells)}
    rows = np.searchsorted(chrom.positions, pred["pos"].to_numpy())
    for k in range(0, len(pred), 7):
        r, c = int(rows[k]), cell_index[pred["cell"].iloc[k]]
        assert pred["cpgformer"].iloc[k] == pytest.approx(
            _full_pass_hidden_alone(net, chrom, r, c), abs=2e-6
        )


# ------------------------------------------------------------------ no model sees a hidden call


class Recorder:
    """Wraps a model; records every input and query it receives."""

    def __init__(self, model):
        self.model = model
        self.name = model.name
        self.sees_target = model.sees_target
        self.receptive_field = model.receptive_field
        self.calls: list[tuple[str, np.ndarray, np.ndarray, np.ndarray]] = []
        self.fit_chroms: list[str] = []

    def fit(self, train, cells):
        self.fit_chroms = [c.name for c in train]
        self.model.fit(train, cells)

    def predict(self, chrom, rows, cols):
        self.calls.append((chrom.name, np.array(chrom.states), rows.copy(), cols.copy()))
        return self.model.predict(chrom, rows, cols)


def _all_models(cells):
    return [
        Recorder(CpgformerModel.from_model(tiny_model(len(cells), seed=2), cells, tile_sites=32)),
        Recorder(SiteMean()),
        Recorder(NearestNeighbour()),
        Recorder(KnnCells(3)),
        Recorder(DeepCpG(TINY_DEEPCPG)),
        Recorder(CaMelia(TINY_CAMELIA)),
        "cell-mean",
    ]


def test_poisoned_hidden_calls_change_no_prediction(tmp_path):
    n_cells = 5
    cells = [f"cell{i}" for i in range(n_cells)]
    chroms = {
        "1": synthetic_states(300, n_cells, 0),
        "2": synthetic_states(200, n_cells, 1),
        "3": synthetic_states(250, n_cells, 2),
    }
    store = write_dense_store(tmp_path / "clean", chroms, cells)
    models = _all_models(cells)
    # one round: a later round's input shows the earlier rounds' hidden calls (tested below)
    common = dict(test_chromosomes=["3"], hide_fraction=0.3, seed=5, figures=False, rounds=1)
    clean = run_benchmark(store, models=models, out_dir=tmp_path / "o1", **common)
    pred = clean.predictions
    assert len(pred) > 50

    # every model: same masked input, same queries, the hidden entries missing in it
    first = models[0].calls
    for m in models[:-1]:
        assert m.fit_chroms == ["1", "2"]
        assert len(m.calls) == len(first) == 1
        name, states, rows, cols = m.calls[0]
        assert name == "3"
        assert np.array_equal(states, first[0][1])
        assert np.array_equal(rows, first[0][2]) and np.array_equal(cols, first[0][3])
        assert (states[rows, cols] == -1).all()

    # poison: flip every hidden label in the full data
    positions, states = chroms["3"]
    rows = np.searchsorted(positions, pred["pos"].to_numpy())
    cols = pred["cell"].map({c: i for i, c in enumerate(cells)}).to_numpy()
    poisoned = states.copy()
    poisoned[rows, cols] = 1 - poisoned[rows, cols]
    store2 = write_dense_store(tmp_path / "poisoned", {**chroms, "3": (positions, poisoned)}, cells)
    dirty = run_benchmark(store2, models=_all_models(cells), out_dir=tmp_path / "o2", **common)

    p2 = dirty.predictions
    assert p2[["chrom", "pos", "cell"]].equals(pred[["chrom", "pos", "cell"]])
    assert (p2["label"].to_numpy() == 1 - pred["label"].to_numpy()).all()
    for name in ["cpgformer", "site-mean", "nearest-neighbour", "knn-cells", "deepcpg", "camelia"]:
        np.testing.assert_allclose(p2[name], pred[name], rtol=0, atol=1e-7, err_msg=name)
    assert (p2["cell-mean"] == pred["cell-mean"]).all()
    # and the scores really moved (labels flipped): AUROC of a useful model mirrors
    assert clean.metrics.set_index("model").loc["nearest-neighbour", "auroc"] > 0.6
    assert dirty.metrics.set_index("model").loc["nearest-neighbour", "auroc"] < 0.4


def test_holdout_rounds_partition_the_observed_calls():
    chrom = chrom_data("t", 3000, 8, seed=4)
    rounds = ho.holdout_rounds(chrom, 0.3, np.random.default_rng(0), 4, run_gap=150)
    assert ho.max_rounds(0.3) == 4 and ho.max_rounds(0.2) == 5 and ho.max_rounds(1.0) == 1
    # round 0 is the one-round hold-out: each run hidden when its uniform draw is below 0.3
    obs_rows, obs_cols = ho._observed_entries(chrom.states, None)
    runs = ho.read_runs(obs_rows, obs_cols, chrom.positions, 150)
    chosen = (np.random.default_rng(0).random(int(runs[-1]) + 1) < 0.3)[runs]
    want = set(zip(obs_rows[chosen].tolist(), obs_cols[chosen].tolist()))
    assert set(zip(rounds[0].rows.tolist(), rounds[0].cols.tolist())) == want
    one = ho.holdout_entries(chrom, 0.3, np.random.default_rng(0), run_gap=150)
    assert np.array_equal(rounds[0].rows, one.rows) and np.array_equal(rounds[0].cols, one.cols)
    # every observed call in exactly one round, whole read-sized runs per round
    keys = np.concatenate([r.rows * 8 + r.cols for r in rounds])
    rows, cols = np.nonzero(chrom.states != -1)
    assert np.array_equal(np.sort(keys), np.sort(rows * 8 + cols))
    for r in rounds:
        assert 0.2 * keys.size < len(r) < 0.4 * keys.size or r is rounds[-1]
    run_id = {}
    for k, run in enumerate(runs):
        run_id[(int(obs_rows[k]), int(obs_cols[k]))] = int(run)
    owner = {}
    for i, r in enumerate(rounds):
        for row, col in zip(r.rows.tolist(), r.cols.tolist()):
            assert owner.setdefault(run_id[(row, col)], i) == i
    # fewer rounds: a prefix of the same partition
    two = ho.holdout_rounds(chrom, 0.3, np.random.default_rng(0), 2, run_gap=150)
    assert all(np.array_equal(a.rows, b.rows) for a, b in zip(two, rounds))
    with pytest.raises(ValueError, match="rounds"):
        ho.holdout_rounds(chrom, 0.3, np.random.default_rng(0), 5)


def test_benchmark_rounds_score_every_call_once_from_its_own_masked_input(tmp_path):
    cells = [f"cell{i}" for i in range(4)]
    chroms = {"1": synthetic_states(300, 4, 0), "3": synthetic_states(250, 4, 2)}
    store = write_dense_store(tmp_path / "s", chroms, cells)
    rec = Recorder(SiteMean())
    res = run_benchmark(
        store, models=[rec, "cell-mean"], out_dir=tmp_path / "o", test_chromosomes=["3"],
        hide_fraction=0.25, figures=False, bootstrap=0,
    )  # fmt: skip
    full = chroms["3"][1]
    # auto: this small test set gets all 4 rounds, every observed call scored once
    assert res.settings["rounds"] == 4 and len(rec.calls) == 4
    assert len(res.predictions) == int((full != -1).sum())
    assert not res.predictions.duplicated(["pos", "cell"]).any()
    assert sorted(res.predictions["round"].unique()) == [0, 1, 2, 3]
    for r, (_, states, rows, cols) in enumerate(rec.calls):
        expected = full.copy()
        expected[rows, cols] = -1  # exactly this round's calls hidden, all others visible
        assert np.array_equal(states, expected)
        part = res.predictions[res.predictions["round"] == r]
        assert len(part) == len(rows)
    assert "4 disjoint rounds" in (res.out_dir / "report.md").read_text()
    # explicit one round, and the bounds
    again = run_benchmark(
        store, models=["site-mean"], out_dir=tmp_path / "o1", test_chromosomes=["3"],
        hide_fraction=0.25, rounds=1, figures=False, bootstrap=0,
    )  # fmt: skip
    assert "round" not in again.predictions and again.settings["rounds"] == 1
    first = res.predictions[res.predictions["round"] == 0].reset_index(drop=True)
    assert first["pos"].equals(again.predictions["pos"])
    with pytest.raises(UsageError, match="--rounds must be in 0..4"):
        run_benchmark(store, models=["site-mean"], out_dir=tmp_path / "o2", rounds=5,
                      hide_fraction=0.25, test_chromosomes=["3"])  # fmt: skip
    with pytest.raises(UsageError, match="holdout protocol only"):
        run_benchmark(store, models=["site-mean"], out_dir=tmp_path / "o3", rounds=2,
                      protocol="exhaustive", test_chromosomes=["3"])  # fmt: skip


def test_camelia_fits_only_the_scored_cells_with_the_same_predictions(tmp_path):
    cells = [f"cell{i}" for i in range(6)]
    chroms = {"1": synthetic_states(300, 6, 0), "3": synthetic_states(200, 6, 2)}
    store = write_dense_store(tmp_path / "s", chroms, cells)
    part_model = CaMelia(TINY_CAMELIA)
    res = run_benchmark(
        store, models=[part_model], out_dir=tmp_path / "b", exclude_cells=["cell1", "cell4"],
        test_chromosomes=["3"], figures=False, bootstrap=0,
    )  # fmt: skip
    assert set(part_model.models) | set(part_model.constant) == {0, 2, 3, 5}
    assert set(res.predictions["cell"]) <= {"cell0", "cell2", "cell3", "cell5"}
    # the scored cells' classifiers are the ones a fit of every cell makes
    train, test = ho.ChromData("1", *chroms["1"]), ho.ChromData("3", *chroms["3"])
    full_model = CaMelia(TINY_CAMELIA)
    full_model.fit([train], cells)
    assert len(full_model.models) + len(full_model.constant) == 6
    part_model.fit([train], cells)  # fit_cells stays as the benchmark set it
    rows, cols = np.nonzero(test.states != -1)
    scored = np.isin(cols, [0, 2, 3, 5])
    assert scored.sum() > 20
    np.testing.assert_array_equal(
        part_model.predict(test, rows[scored], cols[scored]),
        full_model.predict(test, rows[scored], cols[scored]),
    )
    with pytest.raises(RuntimeError, match="not fitted"):
        part_model.predict(test, rows[cols == 1][:1], cols[cols == 1][:1])


def test_benchmark_auto_rounds_one_round_for_large_test_sets(tmp_path, monkeypatch):
    import cpgformer.benchmark.run as run_mod

    cells = [f"cell{i}" for i in range(4)]
    chroms = {"1": synthetic_states(300, 4, 0), "3": synthetic_states(250, 4, 2)}
    store = write_dense_store(tmp_path / "s", chroms, cells)
    monkeypatch.setattr(run_mod, "AUTO_ROUNDS_BELOW", 10)
    res = run_benchmark(store, models=["site-mean"], out_dir=tmp_path / "o",
                        test_chromosomes=["3"], figures=False, bootstrap=0)  # fmt: skip
    assert res.settings["rounds"] == 1 and "round" not in res.predictions


# ------------------------------------------------------------------ metrics vs plain references


def _ref_auroc(p, y):
    pos, neg = p[y == 1], p[y == 0]
    greater = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return greater / (pos.size * neg.size)


def _ref_average_precision(p, y):
    order = np.argsort(-p, kind="stable")
    ys = y[order]
    tp = np.cumsum(ys)
    precision = tp / np.arange(1, ys.size + 1)
    return float((precision * ys).sum() / ys.sum())


def _ref_ece(p, y, bins=15):
    edges = np.linspace(0, 1, bins + 1)
    total = 0.0
    for k in range(bins):
        sel = (p > edges[k]) & (p <= edges[k + 1]) if k else (p >= 0) & (p <= edges[1])
        if sel.any():
            total += sel.sum() / p.size * abs(p[sel].mean() - y[sel].mean())
    return total


def test_binary_metrics_match_plain_references():
    rng = np.random.default_rng(0)
    y = (rng.random(400) < 0.4).astype(np.int64)
    p = np.clip(0.3 * y + 0.7 * rng.random(400), 0, 1)
    m = binary_metrics(p, y)
    pred = p >= 0.5
    tp = float((pred & (y == 1)).sum())
    tn = float((~pred & (y == 0)).sum())
    fp = float((pred & (y == 0)).sum())
    fn = float((~pred & (y == 1)).sum())
    assert m["n"] == 400
    assert m["auroc"] == pytest.approx(_ref_auroc(p, y), abs=1e-6)
    assert m["auprc"] == pytest.approx(_ref_average_precision(p, y), abs=1e-6)
    assert m["accuracy"] == pytest.approx((tp + tn) / 400)
    assert m["f1"] == pytest.approx(2 * tp / (2 * tp + fp + fn))
    mcc = (tp * tn - fp * fn) / math.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    assert m["mcc"] == pytest.approx(mcc, abs=1e-6)
    assert m["brier"] == pytest.approx(np.mean((p - y) ** 2))
    assert m["ece"] == pytest.approx(_ref_ece(p, y), abs=1e-5)


def test_binary_metrics_by_hand_and_single_class():
    m = binary_metrics(np.array([0.9, 0.8, 0.3, 0.1]), np.array([1, 0, 1, 0]))
    assert m["auroc"] == pytest.approx(0.75)  # pairs: (0.9>0.8) (0.9>0.1) (0.3<0.8) (0.3>0.1)
    assert m["accuracy"] == pytest.approx(0.5)
    assert m["brier"] == pytest.approx((0.01 + 0.64 + 0.49 + 0.01) / 4)
    one = binary_metrics(np.array([0.2, 0.7]), np.array([1, 1]))
    assert math.isnan(one["auroc"]) and math.isnan(one["mcc"]) and one["accuracy"] == 0.5


def test_context_bins_density_and_tss(tmp_path):
    assert bin_labels(np.array([1, 2, 3, 5, 6, 40, 41]), (2, 5, 10, 20, 40)).tolist() == [
        "0:<=2",
        "0:<=2",
        "1:3-5",
        "1:3-5",
        "2:6-10",
        "4:21-40",
        "5:>40",
    ]
    assert distance_bin_labels(np.array([0, 999, 1000, 25_000, 1e6, np.nan])).tolist() == [
        "0:<1kb",
        "0:<1kb",
        "1:1-5kb",
        "3:20-100kb",
        "4:>=100kb",
        "na",
    ]
    positions = np.array([100, 200, 340, 590, 1000])
    # store sites within +-250 bp: 100 -> {100,200,340}; 590 -> {340,590}; 1000 -> {1000}
    assert cpg_density(positions, positions[[0, 3, 4]]).tolist() == [3, 2, 1]
    seq = encode_sequence("ACGTTCGA" + "A" * 300 + "CG")
    assert cpg_density(positions, np.array([1, 309]), seq).tolist() == [2, 1]

    bed = tmp_path / "tss.bed"
    bed.write_text("track name=x\n1\t500\t500\tg1\t.\t-\n1\t3000\t3100\tg2\t.\t-\nX\t10\t11\n")
    tss = read_tss_bed(bed)
    assert tss["1"].tolist() == [500, 3099] and tss["X"].tolist() == [10]
    matched = match_tss_chromosomes(tss, ["chr1", "chr2"], bed)
    assert list(matched) == ["chr1"]
    assert tss_distance(np.array([0, 2000, 5000]), matched["chr1"]).tolist() == [500, 1099, 1901]
    assert np.isnan(tss_distance(np.array([5]), None)).all()
    with pytest.raises(InputError, match="no chromosome of the store"):
        match_tss_chromosomes(tss, ["chr7"], bed)
    bad = tmp_path / "bad.bed"
    bad.write_text("1\tx\t5\n")
    with pytest.raises(InputError, match=r"bad.bed:1: BED start/end"):
        read_tss_bed(bad)


def test_shared_tss_bed_matches_ensembl_store_names(shared):
    bed = shared / "data" / "scbs_tutorial" / "Mus_musculus.GRCm38.102_TSS.bed"
    tss = read_tss_bed(bed)
    matched = match_tss_chromosomes(tss, ["chr19", "X"], bed)
    assert set(matched) == {"chr19", "X"} and matched["chr19"].size > 500


# ------------------------------------------------------------------ report and CLI


def test_report_files_and_tables(tmp_path):
    store = tiny_store(tmp_path / "s", n_cells=5)
    bed = tmp_path / "tss.bed"
    bed.write_text("3\t5000\t5001\tg\t.\t+\n")
    res = run_benchmark(
        store,
        models="site-mean,cell-mean,nearest-neighbour,knn-cells",
        out_dir=tmp_path / "out",
        test_chromosomes=["3"],
        exclude_cells=["cell4"],
        tss_bed=bed,
        seed=1,
    )
    out = tmp_path / "out"
    metrics = pd.read_csv(out / "metrics.tsv", sep="\t")
    assert list(metrics.columns) == ["model", *METRIC_COLUMNS]
    assert metrics["model"].tolist() == ["site-mean", "cell-mean", "nearest-neighbour", "knn-cells"]
    assert (metrics["n"] == len(res.predictions)).all()
    per_cell = pd.read_csv(out / "per_cell.tsv", sep="\t")
    assert list(per_cell.columns) == ["model", "cell", *METRIC_COLUMNS]
    assert "cell4" not in set(per_cell["cell"])  # excluded cells are not scored
    per_context = pd.read_csv(out / "per_context.tsv", sep="\t")
    assert list(per_context.columns) == ["model", "context", "bin", *METRIC_COLUMNS]
    assert set(per_context["context"]) == {"cpg_density", "tss_distance"}
    sub = per_context[(per_context.model == "site-mean") & (per_context.context == "tss_distance")]
    assert sub["n"].sum() == len(res.predictions)
    text = (out / "report.md").read_text()
    assert "| model | n | auroc |" in text and "AUROC by distance to the nearest TSS" in text
    for name in ("roc.png", "precision_recall.png", "calibration.png", "per_cell_auroc.png"):
        assert (out / name).read_bytes()[:4] == b"\x89PNG"
    saved = pd.read_csv(out / "predictions.tsv.gz", sep="\t")
    assert len(saved) == len(res.predictions)
    assert not any(p.name.startswith(".partial-") for p in tmp_path.iterdir())


def test_cli_benchmark_and_errors(tmp_path, capsys):
    store = tiny_store(tmp_path / "s", n_cells=4)
    code = main(
        [
            "benchmark",  # (no -q: it would silence the table checked here)
            str(store),
            "--models",
            "site-mean,nearest-neighbour",
            "--test-chromosomes",
            "3",
            "-o",
            str(tmp_path / "out"),
            "--no-figures",
        ]
    )
    out = capsys.readouterr().out
    assert code == 0
    assert "| nearest-neighbour |" in out and "report.md" in out
    assert (tmp_path / "out" / "metrics.tsv").exists()
    # errors are one line + exit 2
    args = ["-q", "benchmark", str(store), "-o", str(tmp_path / "o2")]
    assert main([*args, "--models", "magic", "--test-chroms", "3"]) == 2
    assert "unknown model" in capsys.readouterr().err
    assert main([*args, "--models", "site-mean", "--test-chroms", "chr9"]) == 2
    assert "not in the store" in capsys.readouterr().err
    # no checkpoint, no --test-chroms: the split `train` makes by default (chr5/chr10 are absent
    # here, so an automatic choice, announced and recorded)
    assert main([*args[1:], "--models", "site-mean"]) == 0  # not -q: the warning is checked
    assert "automatic split" in capsys.readouterr().err
    settings = json.loads((tmp_path / "o2" / "settings.json").read_text())
    assert settings["split_note"].startswith("chromosome(s) chr5, chr10 not in the store")
    args[-1] = str(tmp_path / "o3")
    assert main([*args, "--models", "site-mean", "--bootstrap", "-1"]) == 2
    assert "--bootstrap" in capsys.readouterr().err
    assert main([*args, "--models", "cpgformer", "--test-chroms", "3"]) == 2
    assert "--checkpoint" in capsys.readouterr().err
    with pytest.raises(UsageError, match="already exists"):
        run_benchmark(store, models="site-mean", out_dir=tmp_path / "out", test_chromosomes=["3"])


def test_checkpoint_model_runs_through_cli(tmp_path, capsys):
    from cpgformer.checkpoint import save_checkpoint

    store = tiny_store(tmp_path / "s", n_cells=4)
    ds = open_dataset(store)
    ckpt = tmp_path / "model.ckpt"
    save_checkpoint(
        ckpt,
        tiny_model(4, seed=5),
        cells=ds.cells,
        store_fingerprint=ds.fingerprint,
        data={"test_chromosomes_resolved": ["3"], "val_chromosomes_resolved": ["2"]},
    )
    code = main(
        [
            "-q",
            "benchmark",
            str(store),
            "--models",
            "cpgformer,site-mean",
            "--checkpoint",
            str(ckpt),
            "-o",
            str(tmp_path / "out"),
            "--no-plots",
        ]
    )
    assert code == 0, capsys.readouterr().err
    metrics = pd.read_csv(tmp_path / "out" / "metrics.tsv", sep="\t")
    assert metrics["model"].tolist() == ["cpgformer", "site-mean"]
    settings = (tmp_path / "out" / "settings.json").read_text()
    assert '"3"' in settings  # test chromosome taken from the checkpoint


def test_run_gap_leak_guard_matters():
    """With reads spanning neighbouring sites, hiding single sites lets nearest-neighbour cheat;
    hiding read-sized runs does not."""
    rng = np.random.default_rng(0)
    n_sites, n_cells = 2000, 4
    positions = np.cumsum(rng.integers(20, 60, size=n_sites)).astype(np.int64)
    states = np.full((n_sites, n_cells), -1, dtype=np.int8)
    for c in range(n_cells):  # reads of ~120 bp with one random state each
        start = 0
        while start < n_sites:
            length = int(rng.integers(2, 4))
            if rng.random() < 0.5:
                states[start : start + length, c] = int(rng.random() < 0.5)
            start += length + int(rng.integers(3, 8))
    chrom = ho.ChromData("t", positions, states)
    model = NearestNeighbour()
    model.fit([chrom], ["a", "b", "c", "d"])
    runs = ho.holdout_entries(chrom, 0.3, np.random.default_rng(1), run_gap=150)
    single = ho.holdout_entries(chrom, 0.3, np.random.default_rng(1), run_gap=0)
    auc_runs = binary_metrics(
        ho.predict_holdout(model, ho.mask_entries(chrom, runs.rows, runs.cols), runs), runs.labels
    )["auroc"]
    auc_single = binary_metrics(
        ho.predict_holdout(model, ho.mask_entries(chrom, single.rows, single.cols), single),
        single.labels,
    )["auroc"]
    assert auc_single > 0.85 and auc_runs < 0.65


def test_hide_fraction_validation(tmp_path):
    store = tiny_store(tmp_path / "s", n_cells=3)
    with pytest.raises(UsageError, match="hide-fraction"):
        run_benchmark(
            store,
            models="site-mean",
            out_dir=tmp_path / "o",
            test_chromosomes=["3"],
            hide_fraction=0,
        )
    with pytest.raises(UsageError, match="exclude-cells"):
        run_benchmark(
            store,
            models="site-mean",
            out_dir=tmp_path / "o",
            test_chromosomes=["3"],
            exclude_cells=["x"],
        )
    assert not Path(tmp_path / "o").exists()
