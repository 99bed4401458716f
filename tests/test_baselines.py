"""Baselines: values by hand on tiny arrays, DeepCpG/CaMelia features and end-to-end paths."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from _benchmark_helpers import chrom_data, one_thread, tiny_model

from cpgformer.benchmark.baselines import (
    CaMelia,
    CaMeliaConfig,
    CellMean,
    CpgformerModel,
    DeepCpG,
    DeepCpGConfig,
    DeepCpGNet,
    KnnCells,
    NearestNeighbour,
    SiteMean,
    build_models,
    camelia_features,
    deepcpg_features,
    nearest_observed,
    sequence_windows,
)
from cpgformer.benchmark.holdout import ChromData
from cpgformer.benchmark.metrics import binary_metrics
from cpgformer.codes import CODE_N, encode_sequence, to_model_input
from cpgformer.errors import UsageError


@pytest.fixture(autouse=True)
def _single_thread():
    with one_thread():
        yield


M = -1
POS = np.array([0, 10, 30, 100, 160], dtype=np.int64)
STATES = np.array(
    [
        [1, 1, 0],
        [M, 1, 1],
        [0, M, 0],
        [M, 0, 1],
        [1, M, M],
    ],
    dtype=np.int8,
)
CELLS = ["a", "b", "c"]


def hand_chrom() -> ChromData:
    return ChromData("h", POS, STATES)


def test_cell_mean_and_site_mean_by_hand():
    ch = hand_chrom()
    cm = CellMean()
    cm.fit([ch], CELLS)
    # cell a: 1,0,1 -> 2/3; b: 1,1,0 -> 2/3; c: 0,1,0,1 -> 1/2
    assert cm.predict(ch, np.array([0, 1, 2]), np.array([0, 1, 2])).tolist() == pytest.approx(
        [2 / 3, 2 / 3, 0.5]
    )
    sm = SiteMean()
    sm.fit([ch], CELLS)
    got = sm.predict(ch, np.array([0, 1, 3, 4]), np.array([0, 0, 1, 0]))
    # row 0 cell a: others b=1, c=0 -> 0.5; row 1 cell a: b=1, c=1 -> 1; row 3 cell b (itself
    # observed, excluded): a missing, c=1 -> 1; row 4 cell a: nobody else -> cell mean 2/3
    assert got.tolist() == pytest.approx([0.5, 1.0, 1.0, 2 / 3])


def test_nearest_neighbour_by_hand():
    ch = hand_chrom()
    nn_ = NearestNeighbour()
    nn_.fit([ch], CELLS)
    got = nn_.predict(ch, np.array([1, 3, 4, 0]), np.array([0, 0, 0, 1]))
    # row 1 (pos 10), cell a: up pos 0 y=1 w=1/10, down pos 30 y=0 w=1/20 -> 0.1/0.15
    # row 3 (pos 100), cell a: up pos 30 y=0 (w 1/70), down pos 160 y=1 (w 1/60)
    # row 4 (pos 160), cell a: only up pos 30 y=0 -> 0 ; row 0, cell b: only down pos 10 y=1 -> 1
    w_up, w_dn = 1 / 70, 1 / 60
    assert got.tolist() == pytest.approx([2 / 3, w_dn / (w_up + w_dn), 0.0, 1.0])


def test_knn_cells_by_hand():
    ch = hand_chrom()
    knn = KnnCells(k=1)
    knn.fit([ch], CELLS)
    # shared/agree: a-b rows 0 -> 1 shared, 1 agree; a-c rows 0,2 -> 2 shared, 1 agree (row 2)
    # b-c rows 0,1,3 -> 3 shared, 1 agree (row 1)
    sim = knn.similarity
    assert sim[0, 1] == pytest.approx(2 / 3) and sim[0, 2] == pytest.approx(2 / 4)
    assert sim[1, 2] == pytest.approx(2 / 5)
    # row 0, cell a: candidates b (2/3, y=1) and c (1/2, y=0): k=1 -> b -> 1
    # row 3, cell a: candidates b (y=0) and c (y=1): b is more similar -> 0
    # row 4, cell b: only a is observed (y=1) -> 1
    got = knn.predict(ch, np.array([0, 3, 4]), np.array([0, 0, 1]))
    assert got.tolist() == pytest.approx([1.0, 0.0, 1.0])
    knn2 = KnnCells(k=2)
    knn2.fit([ch], CELLS)
    w = np.array([2 / 3, 1 / 2])
    assert knn2.predict(ch, np.array([0]), np.array([0]))[0] == pytest.approx(w[0] / w.sum())


def test_nearest_observed_and_sequence_windows():
    obs = np.array([2, 5, 9])
    up, up_ok, down, down_ok = nearest_observed(obs, np.array([5, 0, 10]), 2)
    assert up_ok.tolist() == [[True, False], [False, False], [True, True]]
    assert obs[up[0, 0]] == 2 and obs[down[0, 0]] == 9 and not down_ok[0, 1]
    assert obs[up[2]].tolist() == [9, 5] and down_ok[2].tolist() == [False, False]
    seq = encode_sequence("ACGTA")
    w = sequence_windows(seq, np.array([1, 4]), 5)
    assert w.tolist() == [
        [CODE_N, 0, 2, 3, 1],
        [3, 1, 0, CODE_N, CODE_N],
    ]


def test_deepcpg_features_by_hand():
    f = deepcpg_features(STATES, POS, np.array([2]), n_neighbours=2, max_distance=50)
    assert f.shape == (1, 3, 8)
    # cell a at row 2 (pos 30): up = row 0 (pos 0, y 1) and nothing; down = row 4 (pos 160, y 1)
    # order: up farthest (missing) -> nearest, down nearest -> farthest (missing)
    assert f[0, 0].tolist() == pytest.approx([0.5, 1.0, 1, 30 / 50, 1, 1.0, 0.5, 1.0])
    # cell c: up rows 1 (pos 10, y 1), 0 (pos 0, y 0); down row 3 (pos 100, y 1); row 2 excluded
    assert f[0, 2].tolist() == pytest.approx([0, 30 / 50, 1, 20 / 50, 1, 1.0, 0.5, 1.0])


def test_deepcpg_parameter_count_matches_reference():
    cfg = DeepCpGConfig()
    with_dna = DeepCpGNet(20, cfg, use_dna=True)
    n = sum(p.numel() for p in with_dna.parameters())
    assert n == 5_508_416 + 513 * 20
    without = DeepCpGNet(20, cfg, use_dna=False)
    n_cnn = 64 + (4 * 128 * 11 + 128) + (128 * 256 * 3 + 256) + (31232 * 128 + 128)
    assert sum(p.numel() for p in without.parameters()) == n - n_cnn - 128 * 512
    logits = with_dna(torch.rand(2, 20, 100), torch.randint(0, 4, (2, 1001)))
    assert logits.shape == (2, 20)


def _with_sequence(ch: ChromData, seed: int) -> ChromData:
    rng = np.random.default_rng(seed)
    seq = rng.integers(0, 4, size=int(ch.positions[-1]) + 50).astype(np.int8)
    return ChromData(ch.name, ch.positions, ch.states, seq)


def test_deepcpg_trains_and_predicts_with_and_without_dna():
    train = [chrom_data("1", 600, 6, seed=1), chrom_data("2", 300, 6, seed=2)]
    test = chrom_data("3", 300, 6, seed=3)
    cells = [f"c{i}" for i in range(6)]
    cfg = DeepCpGConfig(
        cpg_hidden=64,
        joint_hidden=64,
        n_neighbours=5,
        max_steps=100,
        eval_every=50,
        batch_size=32,
        lr=3e-3,
        warmup_steps=10,
    )
    model = DeepCpG(cfg)
    model.fit(train, cells)
    assert not model.use_dna and len(model.history) >= 1
    rows, cols = np.nonzero(test.states != -1)
    p = model.predict(test, rows, cols)
    assert p.shape == rows.shape and ((p > 0) & (p < 1)).all()
    assert binary_metrics(p, test.states[rows, cols])["auroc"] > 0.75  # learnt the local signal
    dna_cfg = DeepCpGConfig(
        cpg_hidden=8, joint_hidden=8, n_neighbours=3, dna_window=31, max_steps=3, eval_every=3
    )
    dna_model = DeepCpG(dna_cfg)
    dna_model.fit([_with_sequence(c, k) for k, c in enumerate(train)], cells)
    assert dna_model.use_dna and dna_model.net.dna is not None
    p2 = dna_model.predict(_with_sequence(test, 9), rows[:20], cols[:20])
    assert p2.shape == (20,)
    with pytest.raises(UsageError, match="no sequence"):
        dna_model.predict(test, rows[:2], cols[:2])


def test_camelia_features_by_hand():
    f, dna = camelia_features(hand_chrom(), 2, np.array([2]), n_neighbours=1)
    assert dna is None and f.shape == (1, 3)
    # local: cells observed at row 2 besides c: a (y=0). Sites observed in both a and c: rows 0, 2
    # -> nearest upstream of row 2 (row excluded): row 0 (a=1, c=0: disagree); downstream: none
    # (counts as disagreement) -> PS = 0 <= 0.8 -> NaN
    assert math.isnan(f[0, 0])
    # neigh: c's upstream neighbour row 1 (pos 10, y 1, d 20), downstream row 3 (pos 100, y 1, d 70)
    # d_max = 70 -> log2(2.01) * (1 - 20/70), log2(2.01) * 0
    assert f[0, 1:].tolist() == pytest.approx([math.log2(2.01) * (1 - 20 / 70), 0.0])

    # a perfectly agreeing partner gives the local feature
    pos = np.array([0, 10, 20, 30, 40], dtype=np.int64)
    st = np.array([[1, 1], [0, 0], [M, 1], [1, 1], [0, 0]], dtype=np.int8)
    f, _ = camelia_features(ChromData("x", pos, st), 0, np.array([2]), n_neighbours=2)
    # PS = 4 agreements / 4 = 1 > 0.8 -> 1 * log2(1 + 1.01)
    assert f[0, 0] == pytest.approx(math.log2(2.01))
    # neigh for cell 0 at row 2: up rows 1 (y0, d10), 0 (y1, d20); down rows 3 (y1, d10), 4 (y0, d20)
    # order: up farthest -> nearest, down nearest -> farthest; d_max 20
    lg0, lg1 = math.log2(1.01), math.log2(2.01)
    assert f[0, 1:].tolist() == pytest.approx([lg1 * 0, lg0 * 0.5, lg1 * 0.5, lg0 * 0])


def _local_similarity_reference(states, target, rows, n, threshold):
    """CaMelia's local feature, one other cell at a time (plain loop)."""
    q = rows.shape[0]
    num, cnt = np.zeros(q), np.zeros(q)
    seen_t = states[:, target] != M
    for k in range(states.shape[1]):
        if k == target:
            continue
        yk = states[rows, k]
        at = yk != M
        if not at.any():
            continue
        both = np.flatnonzero(seen_t & (states[:, k] != M))
        agree = states[both, target] == states[both, k]
        cum = np.concatenate([[0], np.cumsum(agree)])
        r = rows[at]
        left = np.searchsorted(both, r, side="left")
        right = np.searchsorted(both, r, side="right")
        up = cum[left] - cum[np.maximum(left - n, 0)]
        dn = cum[np.minimum(right + n, both.size)] - cum[right]
        ps = (up + dn) / (2.0 * n)
        good = ps > threshold
        idx = np.flatnonzero(at)[good]
        num[idx] += ps[good] * np.log2(yk[at][good] + 1.01)
        cnt[idx] += 1
    return np.where(cnt > 0, num / np.maximum(cnt, 1), np.nan)


@pytest.mark.parametrize("chunk", [1, 7, 1 << 22])
def test_camelia_local_feature_matches_the_plain_loop(chunk):
    from cpgformer.benchmark.camelia import local_similarity

    rng = np.random.default_rng(5)
    for fill, n_cells, n, threshold in [(0.6, 9, 3, 0.5), (0.3, 30, 2, 0.6), (0.9, 4, 1, 0.0)]:
        # cells agree with a shared pattern 90 % of the time, so similar partners exist
        truth = rng.random((150, 1)) < 0.5
        calls = truth ^ (rng.random((150, n_cells)) < 0.1)
        states = np.where(rng.random((150, n_cells)) < fill, calls, M).astype(np.int8)
        checked = 0
        for target in range(n_cells):
            # the target's own rows (training) and any rows (prediction), unsorted with repeats
            own = np.flatnonzero(states[:, target] != M)
            for rows in (own, rng.integers(0, 150, 40)):
                got = local_similarity(states, target, rows, n, threshold, chunk_entries=chunk)
                want = _local_similarity_reference(states, target, rows, n, threshold)
                np.testing.assert_allclose(got, want, rtol=1e-12, atol=0)
                checked += int(np.isfinite(want).sum())
        assert checked > 20  # the feature is defined often enough to test something


def test_camelia_end_padding_mirrors_both_ends():
    pos = np.array([0, 100, 200, 300], dtype=np.int64)
    st = np.array([[1], [0], [1], [0]], dtype=np.int8)
    ch = ChromData("x", pos, st)
    f0, _ = camelia_features(ch, 0, np.array([0]), n_neighbours=2)
    f3, _ = camelia_features(ch, 0, np.array([3]), n_neighbours=2)
    # row 0: no upstream -> 2 pads at 100, 200 bp (median spacing 100); down: 100 (y0), 200 (y1)
    # row 3: up 100 (y1), 200 (y0); no downstream -> pads at 100, 200 -- the mirror image
    lg = {0.0: math.log2(1.01), 0.5: math.log2(1.51), 1.0: math.log2(2.01)}
    assert f0[0, 1:].tolist() == pytest.approx([0.0, lg[0.5] * 0.5, lg[0.0] * 0.5, 0.0])
    assert f3[0, 1:].tolist() == pytest.approx([0.0, lg[1.0] * 0.5, lg[0.5] * 0.5, 0.0])


def test_camelia_trains_and_predicts_with_and_without_dna():
    train = [chrom_data("1", 500, 4, seed=1)]
    test = chrom_data("3", 200, 4, seed=3)
    cells = ["a", "b", "c", "d"]
    model = CaMelia(CaMeliaConfig(iterations=30, depth=3, thread_count=1))
    model.fit(train, cells)
    assert set(model.models) == {0, 1, 2, 3}
    rows, cols = np.nonzero(test.states != -1)
    p = model.predict(test, rows, cols)
    assert p.shape == rows.shape and ((p >= 0) & (p <= 1)).all()
    assert binary_metrics(p, test.states[rows, cols])["auroc"] > 0.6
    dna_model = CaMelia(CaMeliaConfig(iterations=5, depth=2, thread_count=1, max_train_rows=100))
    dna_model.fit([_with_sequence(train[0], 1)], cells)
    assert dna_model.use_dna
    names = dna_model.models[0].feature_names_
    assert len(names) == 41 and names[0] == "local" and names[-1] == "dna19"
    p2 = dna_model.predict(_with_sequence(test, 2), rows[:30], cols[:30])
    assert p2.shape == (30,)


def test_camelia_constant_cell_falls_back():
    pos = np.arange(0, 400, 10, dtype=np.int64)
    st = np.zeros((40, 2), dtype=np.int8)
    st[::2, 1] = 1
    model = CaMelia(CaMeliaConfig(iterations=3, depth=2, thread_count=1))
    model.fit([ChromData("1", pos, st)], ["a", "b"])
    assert 0 not in model.models and model.constant[0] == 0.0 and 1 in model.models
    assert model.predict(ChromData("1", pos, st), np.array([3]), np.array([0]))[0] == 0.0


def test_cpgformer_adapter_tiles_equal_one_pass():
    ch = chrom_data("t", 90, 3, seed=5)
    cells = ["a", "b", "c"]
    net = tiny_model(3, seed=4)
    model = CpgformerModel.from_model(net, cells, tile_sites=11, batch_size=2)
    model.fit([], cells)
    rng = np.random.default_rng(0)
    rows = np.sort(rng.choice(90, size=25, replace=False))
    cols = rng.integers(0, 3, size=25)
    x = torch.from_numpy(to_model_input(ch.states.astype(np.int64)))[None]
    with torch.no_grad():
        full = torch.sigmoid(
            net(x, torch.from_numpy(ch.positions)[None], torch.arange(3)[None])
        ).numpy()[0]
    np.testing.assert_allclose(model.predict(ch, rows, cols), full[rows, cols], atol=2e-6)
    # store cells in another order are matched by name
    swapped = CpgformerModel.from_model(net, ["c", "a", "b"], tile_sites=11)
    swapped.fit([], cells)
    assert swapped.cell_ids.tolist() == [1, 2, 0]
    with pytest.raises(UsageError):
        CpgformerModel.from_model(net, ["x", "y", "z"]).fit([], cells)


def test_cpgformer_adapter_with_dna():
    ch = _with_sequence(chrom_data("t", 40, 3, seed=6), 3)
    net = tiny_model(3, seed=2, dna_window=31)
    model = CpgformerModel.from_model(net, ["a", "b", "c"], tile_sites=12)
    model.fit([], ["a", "b", "c"])
    rows = np.arange(40)
    cols = np.arange(40) % 3
    dna = torch.from_numpy(sequence_windows(ch.sequence, ch.positions, 31))[None]
    x = torch.from_numpy(to_model_input(ch.states.astype(np.int64)))[None]
    with torch.no_grad():
        full = torch.sigmoid(
            net(x, torch.from_numpy(ch.positions)[None], torch.arange(3)[None], dna=dna)
        ).numpy()[0]
    np.testing.assert_allclose(model.predict(ch, rows, cols), full[rows, cols], atol=2e-6)
    with pytest.raises(UsageError, match="FASTA"):
        model.predict(ChromData("u", ch.positions, ch.states), rows, cols)


def test_build_models_names():
    models = build_models(["site-mean", "knn-cells", "deepcpg", "camelia"], knn_k=3)
    assert [m.name for m in models] == ["site-mean", "knn-cells", "deepcpg", "camelia"]
    assert models[1].k == 3
    with pytest.raises(UsageError, match="twice"):
        build_models(["site-mean", "site-mean"])
    with pytest.raises(UsageError, match="unknown model"):
        build_models(["magic"])
