"""The single-cell methylome simulator: formats, determinism, statistics, learnability."""

from __future__ import annotations

import gzip
import hashlib
from pathlib import Path

import numpy as np
import pytest

from cpgformer.codes import encode_sequence
from cpgformer.data import simulate as S
from cpgformer.errors import InputError, UsageError

CHR22 = "data/sequences/human_chr22_20-21Mb_hisat2.fa.gz"


def _digest(directory: Path) -> dict[str, str]:
    return {
        str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(directory.rglob("*"))
        if p.is_file()
    }


# ------------------------------------------------------------------------------ small pieces by hand


def test_cpg_positions_and_density_by_hand() -> None:
    codes = encode_sequence("ACGTTCGCGAAAAACG")
    # CpGs at 1, 5, 7 (CGCG run) and 14
    assert S.cpg_positions(codes).tolist() == [1, 5, 7, 14]
    dens = S.local_density(np.array([1, 5, 7, 14]), window=4)
    # within +-4 bp: 1 -> {1,5}; 5 -> {1,5,7}; 7 -> {5,7}; 14 -> {14}
    assert dens.tolist() == [2, 3, 2, 1]


def test_mspi_fragments_by_hand() -> None:
    # CCGG at 2 and 12 and 40 -> cuts after the first C: 3, 13, 41
    seq = "AACCGGAAAAAACCGG" + "A" * 24 + "CCGGAA"
    starts, ends = S.mspi_fragments(encode_sequence(seq), 5, 20)
    assert starts.tolist() == [3] and ends.tolist() == [13]
    starts, ends = S.mspi_fragments(encode_sequence(seq), 5, 40)
    assert starts.tolist() == [3, 13] and ends.tolist() == [13, 41]


def test_bismark_cov_text_by_hand() -> None:
    positions = np.array([10, 20], dtype=np.int64)
    text = S.format_bismark_cov(
        [
            (
                "chr1",
                positions,
                np.array([0, 0, 1]),
                np.array([1, -1, 1], dtype=np.int8),
                np.array([1, 0, 2], dtype=np.int32),
                np.array([1, 2, 3], dtype=np.int32),
            )
        ]
    ).decode()
    assert text == (
        "chr1\t11\t11\t100.000000\t1\t0\n"
        "chr1\t12\t12\t0.000000\t0\t2\n"
        "chr1\t21\t21\t66.666667\t2\t1\n"
    )


def test_concordance_by_distance_by_hand() -> None:
    pos = np.array([0, 5, 20, 2000, 20000])
    st = np.array([1, 1, 0, 0, 1])
    pairs, same = S.concordance_by_distance(pos, st, bins=(1, 11, 1001))
    # distances 5 (same), 15 (diff), 1980 (same), 18000 (diff)
    assert pairs.tolist() == [1, 1, 2]
    assert same.tolist() == [1, 0, 1]


# ---------------------------------------------------------------------------------- determinism


def test_same_seed_gives_byte_identical_files(tmp_path: Path) -> None:
    kw = dict(n_cells=6, n_cell_types=2, seed=11, qc_failures=2)
    a = S.simulate_to_directory(30_000, tmp_path / "a", **kw)
    b = S.simulate_to_directory(30_000, tmp_path / "b", **kw)
    c = S.simulate_to_directory(30_000, tmp_path / "c", **{**kw, "seed": 12})
    da, db, dc = _digest(a), _digest(b), _digest(c)
    assert set(da) == {
        "cell_types.tsv",
        "genome.fa",
        "simulation.json",
        "truth.npz",
        *(f"cells/cell_{i:05d}.cov.gz" for i in range(1, 7)),
    }
    assert da == db
    assert da["cells/cell_00001.cov.gz"] != dc["cells/cell_00001.cov.gz"]
    # the in-memory API written out gives the same bytes as the streaming writer
    sim = S.simulate(30_000, **kw)
    assert _digest(S.write_simulation(sim, tmp_path / "d")) == da


def test_written_files_match_the_arrays(tmp_path: Path) -> None:
    sim = S.simulate(40_000, n_cells=4, n_cell_types=2, seed=3)
    out = S.write_simulation(sim, tmp_path / "sim")
    truth = S.load_truth(out / "truth.npz")
    assert truth.chroms == sim.chroms and truth.cells == sim.cell_names
    np.testing.assert_array_equal(truth.states[0], sim.truth[0])
    np.testing.assert_array_equal(truth.positions[0], sim.positions[0])
    # the cov file of cell 2: rows at pos+1 (+ strand) / pos+2 (- strand), mc and unmethylated counts
    rows = [
        line.split("\t")
        for line in gzip.decompress((out / "cells" / "cell_00002.cov.gz").read_bytes())
        .decode()
        .splitlines()
    ]
    c = sim.calls[0]
    sel = c.cell == 1
    expect_pos = sim.positions[0][c.site[sel]] + np.where(c.strand[sel] > 0, 1, 2)
    assert [int(r[1]) for r in rows] == expect_pos.tolist()
    assert all(r[1] == r[2] and r[0] == "chrS" for r in rows)
    assert [int(r[4]) for r in rows] == c.mc[sel].tolist()
    assert [int(r[5]) for r in rows] == (c.cov[sel] - c.mc[sel]).tolist()
    # the synthetic genome is written and has C, G at every simulated site
    fasta = S.read_fasta(out / "genome.fa")
    codes = fasta["chrS"]
    np.testing.assert_array_equal(S.cpg_positions(codes), sim.positions[0])
    table = (out / "cell_types.tsv").read_text().splitlines()
    assert table[0].split("\t")[:3] == ["cell", "cell_type", "qc"]
    assert [r.split("\t")[1] for r in table[1:]] == [
        sim.cells.type_names[t] for t in sim.cell_types
    ]


# ------------------------------------------------------------------------------------ the model


def test_noise_free_calls_equal_the_truth() -> None:
    sim = S.simulate(50_000, n_cells=5, seed=2, non_conversion=0.0)
    c = sim.calls[0]
    t = sim.truth[0][c.site, c.cell]
    assert np.all(c.mc == np.where(t == 1, c.cov, 0))
    assert np.all(c.cov >= 1)
    # rows sorted by cell, then site, then + before -
    key = (c.cell.astype(np.int64) * 10**9 + c.site) * 2 + (c.strand < 0)
    assert np.all(np.diff(key) > 0)


def test_non_conversion_rate() -> None:
    sim = S.simulate(200_000, n_cells=10, seed=5, non_conversion=0.05, coverage=0.3)
    c = sim.calls[0]
    unmeth = sim.truth[0][c.site, c.cell] == 0
    rate = c.mc[unmeth].sum() / c.cov[unmeth].sum()
    assert 0.04 < rate < 0.06


def test_every_cpg_of_a_fragment_is_observed_scrrbs() -> None:
    sim = S.simulate(300_000, n_cells=3, protocol="scrrbs", seed=4)
    codes = sim.sequences["chrS"]
    fs, fe = S.mspi_fragments(codes, 40, 220)
    pos = sim.positions[0]
    c = sim.calls[0]
    frag = np.searchsorted(fe, pos[c.site], side="right")
    inside = (frag < fs.size) & (pos[c.site] >= fs[np.minimum(frag, fs.size - 1)])
    assert c.site.size > 0 and np.all(inside)  # RRBS sees only size-selected MspI fragments
    for cell in range(3):
        for strand in (1, -1):
            sel = (c.cell == cell) & (c.strand == strand)
            seen = set(c.site[sel].tolist())
            for f in np.unique(frag[sel]):
                members = set(np.flatnonzero((pos >= fs[f]) & (pos < fe[f])).tolist())
                assert members <= seen


@pytest.fixture(scope="module")
def chr22_sim(shared: Path) -> S.Simulation:
    return S.simulate(shared / CHR22, n_cells=40, n_cell_types=3, seed=1, qc_failures=2)


def test_methylation_follows_cpg_density(chr22_sim: S.Simulation) -> None:
    ok = np.array([q == "ok" for q in chr22_sim.cells.qc])
    truth = chr22_sim.truth[0][:, ok]
    dens = chr22_sim.density[0]
    assert 0.01 <= truth[dens > 30].mean() <= 0.04
    assert 0.65 <= truth[dens < 10].mean() <= 0.80
    # bimodal: most sites have a bulk level near 0 or near 1
    bulk = chr22_sim.bulk[0]
    assert np.mean((bulk < 0.2) | (bulk > 0.6)) > 0.75


def test_neighbour_concordance_targets(chr22_sim: S.Simulation) -> None:
    """P(same state) of consecutive observed CpGs against the targets measured on real cells."""
    bins = (1, 11, 25, 51, 100, 201, 400, 801, 3001)
    targets = {0: 0.93, 2: 0.90, 4: 0.81, 6: 0.64}
    pairs = np.zeros(len(bins))
    same = np.zeros(len(bins))
    obs = chr22_sim.observed_states(0)
    pos = chr22_sim.positions[0]
    for j, q in enumerate(chr22_sim.cells.qc):
        if q != "ok":
            continue
        m = obs[:, j] >= 0
        p, s = S.concordance_by_distance(pos[m], obs[m, j], bins)
        pairs += p
        same += s
    conc = same / pairs
    for j, target in targets.items():
        assert abs(conc[j] - target) <= 0.05, (bins[j], conc[j], target)
    # beyond ~3 kb: the independence baseline p^2 + (1-p)^2 of the observed calls
    p_meth = np.mean(obs[obs >= 0])
    assert abs(conc[-1] - (p_meth**2 + (1 - p_meth) ** 2)) <= 0.06


def test_unmethylated_runs_and_cell_offsets(chr22_sim: S.Simulation) -> None:
    sim = chr22_sim
    cfg = sim.config
    # expected unmethylated run length in sparse regions: correlation_length / p  ~ 300-500 bp
    sparse_p = float(np.mean(sim.bulk[0][sim.density[0] < 10]))
    assert 300 <= cfg.correlation_length / sparse_p <= 500
    ok = [i for i, q in enumerate(sim.cells.qc) if q == "ok"]
    glob = sim.truth[0][:, ok].mean(axis=0)
    types = sim.cell_types[ok]
    resid = np.concatenate([glob[types == t] - glob[types == t].mean() for t in range(3)])
    assert 0.012 <= resid.std(ddof=3) <= 0.04


def test_cell_types_differ_in_a_few_regions(chr22_sim: S.Simulation) -> None:
    sim = chr22_sim
    region, bulk = sim.region[0], sim.bulk[0].astype(np.float64)
    n_regions = region.max() + 1
    counts = np.bincount(region, minlength=n_regions)
    mean_bulk = np.bincount(region, weights=bulk, minlength=n_regions)
    for k in range(3):
        prob = sim.probability[0][k].astype(np.float64)
        mean_k = np.bincount(region, weights=prob, minlength=n_regions)
        has = counts > 0
        delta = (mean_k[has] - mean_bulk[has]) / counts[has]
        differs = np.abs(delta) > 1e-6
        assert 0.04 <= differs.mean() <= 0.11
        assert np.all(np.abs(delta[differs]) >= 0.49)


def test_coverage_and_reads(chr22_sim: S.Simulation) -> None:
    sim = chr22_sim
    c = sim.calls[0]
    assert 1.0 < c.cov.mean() <= 1.3
    per_cell = np.bincount(c.cell, minlength=sim.n_cells)
    frac = per_cell / (2 * sim.positions[0].size)
    assert 0.03 < np.median(frac) < 0.08  # rows: ~10 % of CpGs, mostly one strand each
    ratio = per_cell.max() / per_cell.min()
    assert 1.3 < ratio < 3.5  # ~2-fold coverage differences between cells


def test_qc_failure_cells(chr22_sim: S.Simulation) -> None:
    sim = chr22_sim
    glob = sim.truth[0].mean(axis=0)
    kinds = np.array(sim.cells.qc)
    low = glob[kinds == "low_methylation"]
    ok = glob[kinds == "ok"]
    assert low.size == 1 and low[0] < 0.3 * ok.mean()
    # no spatial correlation: adjacent CpGs (<= 10 bp) agree no more than independent draws do
    noisy = int(np.flatnonzero(kinds == "no_correlation")[0])
    good = int(np.flatnonzero(kinds == "ok")[0])
    pos = sim.positions[0]
    close = np.flatnonzero(np.diff(pos) <= 10)
    sparse = sim.density[0][close] < 20
    idx = close[sparse]

    def agree(j: int) -> float:
        t = sim.truth[0][:, j]
        return float(np.mean(t[idx] == t[idx + 1]))

    prob = sim.probability[0][sim.cell_types[noisy]].astype(np.float64)
    a, b = prob[idx], prob[idx + 1]
    independent = np.mean(a * b + (1 - a) * (1 - b))
    assert agree(noisy) < independent + 0.04
    assert agree(good) > agree(noisy) + 0.1


def test_protocols_differ_in_sparsity(shared: Path) -> None:
    rows = {}
    for protocol in S.PROTOCOL_NAMES:
        sim = S.simulate(shared / CHR22, n_cells=4, protocol=protocol, seed=0)
        rows[protocol] = sim.calls[0].site.size / 4
    assert rows["snmc"] < rows["scbs"]
    assert rows["scrrbs"] > 0


# ------------------------------------------------------------------------------------ inputs/CLI


def test_fasta_input_plain_and_gzip(tmp_path: Path) -> None:
    seq = "ACGT" * 50 + "CGCGCG" + "AATT" * 50
    (tmp_path / "r.fa").write_text(f">one desc\n{seq[:100]}\n{seq[100:]}\n>two\nACGTACGA\n")
    with gzip.open(tmp_path / "r.fa.gz", "wt") as fh:
        fh.write(f">one desc\n{seq}\n>two\nACGTACGA\n")
    for name in ("r.fa", "r.fa.gz"):
        sim = S.simulate(tmp_path / name, n_cells=2, seed=0)
        assert sim.chroms == ["one", "two"]
        assert sim.positions[0].tolist() == S.cpg_positions(encode_sequence(seq)).tolist()
        assert sim.positions[1].tolist() == [1, 5]
    (tmp_path / "bad.fa").write_text("ACGT\n")
    with pytest.raises(InputError, match="bad.fa:1"):
        S.simulate(tmp_path / "bad.fa", n_cells=2)
    with pytest.raises(UsageError):
        S.simulate(1000, n_cells=2, protocol="nanopore")
    with pytest.raises(UsageError):
        S.simulate(1000, n_cells=2, no_such_parameter=1)


def test_store_from_simulation(tmp_path: Path) -> None:
    from cpgformer import open_dataset

    sim = S.simulate(60_000, n_cells=5, n_cell_types=2, seed=9)
    S.simulation_to_store(sim, tmp_path / "store")
    ds = open_dataset(tmp_path / "store")
    assert ds.cells == sim.cell_names and ds.chromosomes == ["chrS"]
    obs = sim.observed_states(0)
    keep = (obs >= 0).any(axis=1)
    np.testing.assert_array_equal(ds.positions("chrS"), sim.positions[0][keep])
    np.testing.assert_array_equal(ds.states("chrS", 0, int(keep.sum())), obs[keep])


def test_cli_simulate(tmp_path: Path) -> None:
    from cpgformer.cli import main

    out = tmp_path / "sim"
    args = ["simulate", "--genome-length", "20000", "-o", str(out), "--cells", "3", "--seed", "1"]
    assert main(args) == 0
    assert sorted(p.name for p in (out / "cells").iterdir()) == [
        "cell_00001.cov.gz",
        "cell_00002.cov.gz",
        "cell_00003.cov.gz",
    ]
    assert main(args) == 2  # exists
    # --store writes the same store as simulation_to_store on the in-memory simulation
    from cpgformer import open_dataset

    store_args = ["simulate", "--genome-length", "20000", "-o", str(tmp_path / "s2")]
    store_args += ["--cells", "3", "--seed", "1", "--store", str(tmp_path / "st")]
    assert main(store_args) == 0
    sim = S.simulate(20_000, n_cells=3, seed=1)
    S.simulation_to_store(sim, tmp_path / "direct")
    a, b = open_dataset(tmp_path / "st"), open_dataset(tmp_path / "direct")
    assert a.fingerprint == b.fingerprint
    assert a.cell_table["cell_type"].tolist() == [sim.cells.type_names[t] for t in sim.cell_types]
    assert main([*args[:4], str(tmp_path / "x"), "--cells", "0"]) == 2


# ---------------------------------------------------------------------------------- learnability


def _auroc(y: np.ndarray, score: np.ndarray) -> float:
    """Mann-Whitney AUROC with average ranks for ties."""
    from scipy.stats import rankdata

    r = rankdata(score)
    n_pos = int(y.sum())
    n_neg = y.size - n_pos
    return float((r[y == 1].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def test_auroc_helper_by_hand() -> None:
    assert _auroc(np.array([0, 0, 1, 1]), np.array([0.1, 0.2, 0.3, 0.4])) == 1.0
    assert _auroc(np.array([0, 1, 0, 1]), np.array([0.1, 0.2, 0.3, 0.4])) == 0.75
    assert _auroc(np.array([0, 1]), np.array([0.5, 0.5])) == 0.5


def test_tiny_model_learns_simulated_store(shared: Path, tmp_path: Path) -> None:
    """A tiny CpG Transformer trained for a few steps beats the per-site mean on masked entries."""
    import torch

    from cpgformer import open_dataset
    from cpgformer.codes import to_model_input
    from cpgformer.nn import CpGTransformer, ModelConfig

    sim = S.simulate(shared / CHR22, n_cells=12, n_cell_types=2, seed=0, coverage=0.3)
    S.simulation_to_store(sim, tmp_path / "store")
    ds = open_dataset(tmp_path / "store")
    chrom = ds.chromosomes[0]
    n = ds.n_sites(chrom)
    states = np.asarray(ds.states(chrom, 0, n))
    positions = np.asarray(ds.positions(chrom))
    n_cells, length, batch = states.shape[1], 32, 4
    split = int(n * 0.8)

    def make_batch(starts: np.ndarray, rng: np.random.Generator) -> tuple:
        x = np.stack([states[s : s + length] for s in starts])
        pos = np.stack([positions[s : s + length] for s in starts])
        masked = (x >= 0) & (rng.random(x.shape) < 0.2)
        inp = to_model_input(np.where(masked, -1, x))
        return torch.as_tensor(inp, dtype=torch.long), torch.as_tensor(pos), masked, x

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(0)
        rng = np.random.default_rng(0)
        cfg = ModelConfig(
            n_cells=n_cells,
            dna_window=0,
            hidden=32,
            n_layers=1,
            n_heads=4,
            head_dim=8,
            state_embed=16,
            cell_embed=16,
            site_window=21,
            attention_dropout=0.0,
        )
        model = CpGTransformer(cfg)
        opt = torch.optim.Adam(model.parameters(), lr=3e-3)
        cell_ids = torch.arange(n_cells).expand(batch, n_cells)
        for _ in range(60):
            inp, pos, masked, x = make_batch(rng.integers(0, split - length, batch), rng)
            logits = model(inp, pos, cell_ids)
            m = torch.as_tensor(masked)
            loss = torch.nn.functional.binary_cross_entropy_with_logits(
                logits[m], torch.as_tensor(x)[m].float()
            )
            opt.zero_grad()
            loss.backward()
            opt.step()
        model.eval()
        eval_rng = np.random.default_rng(1)
        ys, preds, base = [], [], []
        starts = np.arange(split, n - length, length)
        with torch.no_grad():
            for i in range(0, starts.size, batch):
                st = starts[i : i + batch]
                inp, pos, masked, x = make_batch(st, eval_rng)
                prob = torch.sigmoid(model(inp, pos, cell_ids[: st.size])).numpy()
                visible = inp.numpy() - 1  # masked entries are missing here
                seen = visible >= 0
                total = np.where(seen, visible, 0).sum(-1, keepdims=True)
                count = seen.sum(-1, keepdims=True)
                site_mean = np.where(count > 0, total / np.maximum(count, 1), visible[seen].mean())
                ys.append(x[masked])
                preds.append(prob[masked])
                base.append(np.broadcast_to(site_mean, x.shape)[masked])
    finally:
        torch.set_num_threads(threads)
    y = np.concatenate(ys)
    assert y.size > 1000 and 0.1 < y.mean() < 0.9
    model_auc = _auroc(y, np.concatenate(preds))
    baseline_auc = _auroc(y, np.concatenate(base))
    assert model_auc > baseline_auc + 0.05, (model_auc, baseline_auc)


def test_prepare_on_simulated_files_equals_direct_store(tmp_path: Path) -> None:
    """The written .cov.gz files go through `prepare` (FASTA strand pooling) to the same store."""
    from cpgformer import open_dataset
    from cpgformer.cli import main

    sim = S.simulate(80_000, n_cells=4, n_cell_types=2, seed=2)
    out = S.write_simulation(sim, tmp_path / "sim")
    files = sorted(str(p) for p in (out / "cells").glob("*.cov.gz"))
    code = main(
        ["-q", "prepare", *files, "--fasta", str(out / "genome.fa"), "-o", str(tmp_path / "p")]
    )
    assert code == 0
    S.simulation_to_store(sim, tmp_path / "direct")
    a, b = open_dataset(tmp_path / "p"), open_dataset(tmp_path / "direct")
    assert a.cells == b.cells and a.chromosomes == b.chromosomes == ["chrS"]
    n = a.n_sites("chrS")
    np.testing.assert_array_equal(a.positions("chrS"), b.positions("chrS"))
    for x, y in zip(a.counts("chrS", 0, n), b.counts("chrS", 0, n)):
        np.testing.assert_array_equal(x, y)
    np.testing.assert_array_equal(a.states("chrS", 0, n), b.states("chrS", 0, n))
    assert a.fingerprint == b.fingerprint
