"""Export of imputed stores: h5ad, bedGraph, ALLC (tabix), regions; the impute/export CLI."""

from __future__ import annotations

import gzip
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pysam
import pytest
import torch

from cpgformer.cli import main
from cpgformer.errors import InputError, UsageError
from cpgformer.export import (
    ExportOptions,
    RegionSums,
    aggregate_regions,
    export,
    match_regions,
    write_chunked_h5ad,
)
from cpgformer.impute import ImputeOptions, Predictor, impute, open_imputed
from cpgformer.io.store import ChromArrays, open_dataset, write_store
from cpgformer.io.writers import cell_file_names, read_bed_regions
from cpgformer.model import Model

CELLS = ["cA", "cB", "weird/name"]


def half_predictor(n_cells: int) -> Model:
    """Logit 0 everywhere: every model probability is exactly 0.5."""

    def predict(states, positions, cell_ids, emb):  # noqa: ANN001, ANN202
        return torch.zeros(states.shape, dtype=torch.float32)

    return Model.from_predictor(Predictor(predict, 1, n_cells), "half")


def hand_store(path: Path) -> Path:
    """chr "1": sites at 10, 25, 100; chr "2": sites at 5, 7.

    cA: 1:10 mc 1/cov 2 (label 1), 1:100 0/1 (label 0), 2:7 3/3;  cB: 1:25 1/1;  weird/name: none.
    """
    c1 = ChromArrays(
        "1",
        np.array([10, 25, 100]),
        np.array([0, 1, 2, 3]),
        np.array([0, 1, 0], dtype=np.int32),
        np.array([1, 1, 0], dtype=np.int32),
        np.array([2, 1, 1], dtype=np.int32),
        np.array([1, 1, 0], dtype=np.int8),
    )
    c2 = ChromArrays(
        "2",
        np.array([5, 7]),
        np.array([0, 0, 1]),
        np.array([0], dtype=np.int32),
        np.array([3], dtype=np.int32),
        np.array([3], dtype=np.int32),
        np.array([1], dtype=np.int8),
    )
    write_store(path, [c1, c2], CELLS)
    return path


@pytest.fixture()
def hand_imputed(tmp_path: Path):  # noqa: ANN201
    store = hand_store(tmp_path / "store")
    return impute(store, half_predictor(3), tmp_path / "imp", ImputeOptions(chunk_sites=2))


def random_store(path: Path, n_cells: int = 4, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    chroms = []
    for name, n in (("1", 120), ("2", 45)):
        pos = np.cumsum(rng.integers(2, 60, size=n)).astype(np.int64)
        obs = rng.random((n, n_cells)) < 0.35
        rows, cols = np.nonzero(obs)
        indptr = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(np.bincount(rows, minlength=n), out=indptr[1:])
        cov = rng.integers(1, 4, size=rows.size).astype(np.int32)
        mc = rng.integers(0, cov + 1).astype(np.int32)
        label = np.where(2 * mc > cov, 1, np.where(2 * mc < cov, 0, -1)).astype(np.int8)
        chroms.append(ChromArrays(name, pos, indptr, cols.astype(np.int32), mc, cov, label))
    write_store(path, chroms, [f"cell{i}" for i in range(n_cells)])
    return path


def smooth_source(n_cells: int) -> Model:
    """A deterministic position- and neighbour-dependent toy model (receptive field 1 site)."""

    def predict(states, positions, cell_ids, emb):  # noqa: ANN001, ANN202
        x = states.float() - 1.0
        left = torch.nn.functional.pad(x, (0, 0, 1, 0))[:, :-1]
        right = torch.nn.functional.pad(x, (0, 0, 0, 1))[:, 1:]
        return 0.7 * x + 0.4 * (left + right) + 0.3 * cell_ids[:, None, :].float() - 0.2

    return Model.from_predictor(Predictor(predict, 1, n_cells), "smooth")


# ---------------------------------------------------------------------------------------------
# h5ad


def test_h5ad_round_trips_positions_cells_and_layers(tmp_path: Path) -> None:
    store = random_store(tmp_path / "store")
    ds = open_dataset(store)
    imp = impute(ds, smooth_source(4), tmp_path / "imp", ImputeOptions(chunk_sites=32))
    out = tmp_path / "out.h5ad"
    assert export(imp, out, "h5ad") == [out]
    a = ad.read_h5ad(out)
    assert list(a.obs_names) == ds.cells
    n1, n2 = ds.n_sites("1"), ds.n_sites("2")
    assert a.shape == (4, n1 + n2)
    pos = np.concatenate([ds.positions("1"), ds.positions("2")])
    np.testing.assert_array_equal(a.var["start"].to_numpy(), pos)
    np.testing.assert_array_equal(a.var["end"].to_numpy(), pos + 2)
    assert list(a.var["chrom"].astype(str)) == ["1"] * n1 + ["2"] * n2
    assert a.var_names[0] == f"1:{pos[0] + 1}-{pos[0] + 2}"  # the CpG, 1-based closed
    x = np.vstack([imp.values("1", 0, n1), imp.values("2", 0, n2)]).T
    np.testing.assert_array_equal(a.X, x)
    states = np.vstack([ds.states("1", 0, n1), ds.states("2", 0, n2)]).T
    observed = a.layers["observed"].toarray()
    np.testing.assert_array_equal(observed, np.where(states == 1, 1, np.where(states == 0, -1, 0)))
    mc, cov = (np.vstack(p).T for p in zip(ds.counts("1", 0, n1), ds.counts("2", 0, n2)))
    np.testing.assert_array_equal(a.layers["mc"].toarray(), mc)
    np.testing.assert_array_equal(a.layers["cov"].toarray(), cov)
    np.testing.assert_array_equal(a.layers["imputed"], np.where(states >= 0, states, x))
    np.testing.assert_allclose(a.layers["uncertainty"], x * (1 - x), atol=1e-7)
    np.testing.assert_array_equal(a.var["n_cells_obs"].to_numpy(), (states >= 0).sum(axis=0))
    meta = a.uns["cpgformer"]
    assert meta["checkpoint_id"] == "smooth" and "0-based" in meta["coordinates"]
    with pytest.raises(UsageError, match="already exists"):
        export(imp, out, "h5ad")


@pytest.mark.parametrize("dense_layers", [False, True])
def test_chunked_h5ad_opens_backed_and_equals_the_memory_layout(
    tmp_path: Path, dense_layers: bool
) -> None:
    store = random_store(tmp_path / "store", n_cells=5)
    imp = impute(store, smooth_source(5), tmp_path / "imp", ImputeOptions(chunk_sites=32))
    mem, chunked = tmp_path / "mem.h5ad", tmp_path / "chunked.h5ad"
    export(imp, mem, "h5ad", ExportOptions(layout="memory"))
    # stripes of 7 sites: stripes and store chunks (32 sites) never line up, chromosome ends inside
    write_chunked_h5ad(imp, chunked, imp.chromosomes, dense_layers=dense_layers, stripe_sites=7)
    a = ad.read_h5ad(mem)
    b = ad.read_h5ad(chunked, backed="r")
    assert b.isbacked and b.shape == a.shape
    pd.testing.assert_frame_equal(b.obs, a.obs)
    pd.testing.assert_frame_equal(b.var, a.var)
    np.testing.assert_array_equal(b.X[:, :], a.X)
    np.testing.assert_array_equal(b.X[1:3, 40:90], a.X[1:3, 40:90])  # a slice read from disk
    for name in ("observed", "mc", "cov"):
        assert b.layers[name].format == "csc"
        np.testing.assert_array_equal(b.layers[name].toarray(), a.layers[name].toarray())
        assert b.layers[name].dtype == a.layers[name].dtype
    meaning = b.uns["cpgformer"]["layers"]
    if dense_layers:
        for name in ("imputed", "uncertainty"):
            np.testing.assert_array_equal(b.layers[name], a.layers[name])
    else:
        assert set(b.layers.keys()) == {"observed", "mc", "cov"}
        assert "not written" in meaning["imputed"]
        # the documented way back to the imputed layer
        obs = b.layers["observed"].toarray()
        rebuilt = np.where(obs == 1, 1.0, np.where(obs == -1, 0.0, b.X[:, :]))
        np.testing.assert_array_equal(rebuilt, a.layers["imputed"])
    assert b.uns["cpgformer"]["layout"] == "chunked" and a.uns["cpgformer"]["layout"] == "memory"
    b.file.close()


def test_chunk_groups_cover_every_chunk_with_fresh_store_objects(
    hand_imputed, monkeypatch: pytest.MonkeyPatch
) -> None:  # noqa: ANN001
    import cpgformer.export.naming as naming

    imp = hand_imputed  # chunk_sites 2: chromosome "1" has chunks [0, 2), [2, 3)
    monkeypatch.setattr(naming, "MAPPED_BYTES", 1)  # one chunk per group
    groups = list(naming.chunk_groups(imp, "1"))
    assert [chunks for _part, chunks in groups] == [[(0, 2)], [(2, 3)]]
    assert all(part is not imp for part, _ in groups) and groups[0][0] is not groups[1][0]
    monkeypatch.setattr(naming, "MAPPED_BYTES", 1 << 30)
    assert [chunks for _part, chunks in naming.chunk_groups(imp, "1")] == [imp.chunks("1")]


def test_auto_layout_is_chunked_above_the_size_limit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import cpgformer.export.cpg_anndata as cpg_anndata

    store = random_store(tmp_path / "store")
    imp = impute(store, smooth_source(4), tmp_path / "imp", ImputeOptions(chunk_sites=32))
    n_sites = sum(imp.n_sites(c) for c in imp.chromosomes)
    assert cpg_anndata.choose_layout("auto", 4, n_sites, False) == "memory"
    monkeypatch.setattr(cpg_anndata, "IN_MEMORY_MAX_BYTES", 3 * 4 * n_sites * 4 - 1)
    assert cpg_anndata.choose_layout("auto", 4, n_sites, False) == "chunked"
    export(imp, tmp_path / "auto.h5ad", "h5ad")
    b = ad.read_h5ad(tmp_path / "auto.h5ad", backed="r")
    assert b.uns["cpgformer"]["layout"] == "chunked"
    np.testing.assert_array_equal(
        b.X[:, : imp.n_sites("1")], imp.values("1", 0, imp.n_sites("1")).T
    )
    b.file.close()
    with pytest.raises(UsageError, match="--layout"):
        cpg_anndata.choose_layout("dense", 4, n_sites, False)


def test_export_flags_come_from_the_options(hand_imputed) -> None:  # noqa: ANN001
    """Every ExportOptions field is a flag; defaults are the dataclass's; one spelling each."""
    import argparse
    import dataclasses

    from cpgformer.commands import export as export_command
    from cpgformer.options import FLAG, flag_name, from_args

    parser = argparse.ArgumentParser()
    export_command.add_arguments(parser)
    flags = {a for action in parser._actions for a in action.option_strings}
    for f in dataclasses.fields(ExportOptions):
        assert f.metadata.get(FLAG, flag_name(f.name)) in flags, f.name
    assert "--force" not in flags and "--overwrite" in flags
    base = ["imp", "-o", "out"]
    assert from_args(ExportOptions, parser.parse_args(base)) == ExportOptions()
    args = parser.parse_args(
        [*base, "--no-uncertainty", "--kinds", "observed", "denoised", "--bin-size", "500",
         "--layout", "chunked", "--chroms", "1", "2", "--overwrite"]
    )  # fmt: skip
    opts = from_args(ExportOptions, args)
    assert opts == ExportOptions(
        uncertainty=False, kinds=["observed", "denoised"], bin_size=500, layout="chunked",
        chroms=["1", "2"], overwrite=True,
    )  # fmt: skip
    with pytest.raises(SystemExit):
        parser.parse_args([*base, "--layout", "dense"])


# ---------------------------------------------------------------------------------------------
# bedGraph


def test_bedgraph_hand_checked_site(hand_imputed, tmp_path: Path) -> None:  # noqa: ANN001
    out = tmp_path / "bg"
    files = export(
        hand_imputed, out, "bedgraph", ExportOptions(kinds=["imputed", "observed", "denoised"])
    )
    assert len(files) == 9
    names = sorted(p.name for p in out.iterdir())
    assert "cA.imputed.bedGraph.gz" in names and "weird_name.observed.bedGraph.gz" in names
    lines = gzip.open(out / "cA.imputed.bedGraph.gz", "rt").read().splitlines()
    assert lines[0].startswith('track type=bedGraph name="cA imputed"')
    # site 1:10 (0-based C; Bismark would print 11) is observed methylated in cA -> [10, 12)
    assert lines[1:] == [
        "1\t10\t12\t1.0000",
        "1\t25\t27\t0.5000",
        "1\t100\t102\t0.0000",
        "2\t5\t7\t0.5000",
        "2\t7\t9\t1.0000",
    ]
    observed = gzip.open(out / "cA.observed.bedGraph.gz", "rt").read().splitlines()[1:]
    assert observed == ["1\t10\t12\t0.5000", "1\t100\t102\t0.0000", "2\t7\t9\t1.0000"]
    denoised = gzip.open(out / "cB.denoised.bedGraph.gz", "rt").read().splitlines()[1:]
    assert all(line.endswith("\t0.5000") for line in denoised) and len(denoised) == 5
    # percent and 1-bp intervals
    export(
        hand_imputed,
        tmp_path / "bg2",
        "bedgraph",
        ExportOptions(kinds=["observed"], percent=True, interval="c"),
    )
    rows = gzip.open(tmp_path / "bg2" / "cB.observed.bedGraph.gz", "rt").read().splitlines()[1:]
    assert rows == ["1\t25\t26\t100.00"]
    assert not list(out.glob(".partial-*"))


def test_cell_file_names_are_safe_and_unique() -> None:
    assert cell_file_names(["a/b", "a_b", "x"], ".bg") == ["a_b.bg", "a_b.2.bg", "x.bg"]


# ---------------------------------------------------------------------------------------------
# ALLC


def test_allc_is_tabix_queryable(hand_imputed, tmp_path: Path) -> None:  # noqa: ANN001
    out = tmp_path / "allc"
    with pytest.raises(UsageError, match="--fasta"):
        export(hand_imputed, out, "allc")  # no FASTA: refused, nothing written
    assert not out.exists()
    files = export(hand_imputed, out, "allc", ExportOptions(allow_cgn=True))
    assert len(files) == 3
    path = out / "cA.allc.tsv.gz"
    assert (out / "cA.allc.tsv.gz.tbi").exists()
    tbx = pysam.TabixFile(str(path))
    assert list(tbx.contigs) == ["1", "2"]
    # tabix regions are 0-based half-open: [10, 11) is the 1-based position 11 = site start 10
    assert list(tbx.fetch("1", 10, 11)) == ["1\t11\t+\tCGN\t1\t2\t1"]
    assert list(tbx.fetch("1", 20, 30)) == ["1\t26\t+\tCGN\t1\t1\t0"]  # imputed p = 0.5 -> mc 1
    assert list(tbx.fetch("2")) == ["2\t6\t+\tCGN\t1\t1\t0", "2\t8\t+\tCGN\t3\t3\t1"]
    export(hand_imputed, tmp_path / "allc10", "allc", ExportOptions(allc_scale=10, allow_cgn=True))
    rows = list(pysam.TabixFile(str(tmp_path / "allc10" / "cB.allc.tsv.gz")).fetch("1"))
    assert rows == ["1\t11\t+\tCGN\t5\t10\t0", "1\t26\t+\tCGN\t1\t1\t1", "1\t101\t+\tCGN\t5\t10\t0"]


def test_allc_context_from_fasta(tmp_path: Path) -> None:
    seq = "AACGTTTCGAACGG"  # CpGs at 2, 7, 11
    fasta = tmp_path / "ref.fa"
    fasta.write_text(">chrZ\n" + seq + "\n")
    ch = ChromArrays(
        "chrZ",
        np.array([2, 7, 11]),
        np.array([0, 1, 1, 1]),
        np.array([0], dtype=np.int32),
        np.array([0], dtype=np.int32),
        np.array([1], dtype=np.int32),
        np.array([0], dtype=np.int8),
    )
    write_store(tmp_path / "store", [ch], ["only"])
    imp = impute(tmp_path / "store", half_predictor(1), tmp_path / "imp")
    export(imp, tmp_path / "allc", "allc", ExportOptions(fasta=str(fasta)))
    rows = list(pysam.TabixFile(str(tmp_path / "allc" / "only.allc.tsv.gz")).fetch("chrZ"))
    assert [r.split("\t")[3] for r in rows] == ["CGT", "CGA", "CGG"]
    assert rows[0] == "chrZ\t3\t+\tCGT\t0\t1\t1"


# ---------------------------------------------------------------------------------------------
# regions


def brute_force_regions(imp, regions: pd.DataFrame, values: str) -> dict[str, np.ndarray]:  # noqa: ANN001
    keys = ["mc", "cov", "meth", "total", "mean", "var", "n"]
    out = {k: [] for k in keys}
    for chrom, start, end in regions[["chrom", "start", "end"]].itertuples(index=False):
        chrom = chrom.removeprefix("chr")
        pos = np.asarray(imp.positions(chrom))
        n = imp.n_sites(chrom)
        p = imp.values(chrom, 0, n) if values == "denoised" else imp.imputed(chrom, 0, n)
        mc, cov = imp.counts(chrom, 0, n)
        lab = imp.states(chrom, 0, n)
        rows = [i for i in range(n) if start <= pos[i] < end]
        row = {k: [] for k in keys}
        for c in range(imp.n_cells):
            vals = [float(p[i, c]) for i in rows]
            row["mc"].append(sum(int(mc[i, c]) for i in rows))
            row["cov"].append(sum(int(cov[i, c]) for i in rows))
            row["meth"].append(sum(int(lab[i, c] == 1) for i in rows))
            row["total"].append(sum(int(lab[i, c] >= 0) for i in rows))
            row["mean"].append(np.mean(vals) if vals else np.nan)
            row["var"].append(np.var(vals) if vals else np.nan)
        for k in keys[:-1]:
            out[k].append(row[k])
        out["n"].append(len(rows))
    return {k: np.array(v, dtype=float).T if k != "n" else np.array(v) for k, v in out.items()}


@pytest.mark.parametrize("values", ["imputed", "denoised"])
def test_regions_match_brute_force(tmp_path: Path, values: str) -> None:
    store = random_store(tmp_path / "store", n_cells=3, seed=5)
    imp = impute(store, smooth_source(3), tmp_path / "imp", ImputeOptions(chunk_sites=16))
    pos1 = np.asarray(imp.positions("1"))
    rng = np.random.default_rng(1)
    starts = rng.integers(0, int(pos1[-1]), size=25)
    regions = pd.DataFrame(
        {
            "chrom": ["1"] * 25 + ["chr2", "2", "1", "1"],
            "start": list(starts) + [0, 30, int(pos1[5]), int(pos1[5]) + 1],
            "end": list(starts + rng.integers(1, 900, size=25))
            + [10_000, 31, int(pos1[5]) + 1, int(pos1[5]) + 2],
        }
    )
    regions["name"] = [f"r{i}" for i in range(len(regions))]
    a = aggregate_regions(imp, regions, values=values)
    ref = brute_force_regions(imp, regions, values)
    assert a.shape == (3, len(regions))
    np.testing.assert_array_equal(a.var["n_cpg"].to_numpy(), ref["n"])
    assert ref["n"][-1] == 0 and ref["n"][-2] == 1  # an empty and a one-CpG region
    np.testing.assert_array_equal(a.layers["mc"].toarray(), ref["mc"])
    np.testing.assert_array_equal(a.layers["cov"].toarray(), ref["cov"])
    np.testing.assert_array_equal(a.layers["meth_sites"], ref["meth"])
    np.testing.assert_array_equal(a.layers["total_sites"], ref["total"])
    np.testing.assert_allclose(a.layers["imp_mean"], ref["mean"], atol=1e-6, equal_nan=True)
    np.testing.assert_allclose(a.layers["imp_var"], ref["var"], atol=1e-6, equal_nan=True)
    np.testing.assert_array_equal(a.X, a.layers["imp_mean"])
    with np.errstate(divide="ignore", invalid="ignore"):
        frac = np.where(ref["cov"] > 0, ref["mc"] / ref["cov"], np.nan)
    np.testing.assert_allclose(a.layers["frac"], frac, equal_nan=True, rtol=1e-6)
    assert np.isnan(a.layers["frac"][:, -1]).all()  # cov 0 -> NaN, never 0
    assert list(a.var["chrom"].astype(str))[25] == "2"  # "chr2" matched to the store's "2"


def test_region_sums_do_not_depend_on_blocks_or_their_order(tmp_path: Path) -> None:
    """RegionSums fed odd-sized blocks in shuffled order = aggregate_regions over store chunks."""
    store = random_store(tmp_path / "store", n_cells=3, seed=2)
    imp = impute(store, smooth_source(3), tmp_path / "imp", ImputeOptions(chunk_sites=16))
    bins = pd.DataFrame(
        {"chrom": ["1", "1", "2", "1"], "start": [0, 500, 0, 300], "end": [700, 4000, 900, 600]}
    )
    bins["name"] = ["a", "b", "c", "overlaps a and b"]
    ref = aggregate_regions(imp, bins, values="denoised")
    table = match_regions(bins, imp.chromosomes)
    sums = RegionSums(table, imp.n_cells, region_batch=2)
    rng = np.random.default_rng(3)
    blocks = []
    for c in imp.chromosomes:
        sums.set_positions(c, imp.positions(c))
        cuts = np.unique(np.r_[0, rng.integers(1, imp.n_sites(c), 6), imp.n_sites(c)])
        blocks += [(c, int(a), int(b)) for a, b in zip(cuts[:-1], cuts[1:])]
    for k in rng.permutation(len(blocks)):
        c, a, b = blocks[k]
        indptr, cell, mc, cov, label = (np.asarray(x) for x in imp.csr(c))
        lo, hi = indptr[a], indptr[b]
        sums.add_values(c, a, b, imp.values(c, a, b))
        sums.add_calls(
            c, a, b, indptr[a : b + 1] - lo, cell[lo:hi], mc[lo:hi], cov[lo:hi], label[lo:hi]
        )
    layers = sums.layers()
    for name in ("mc", "cov"):
        np.testing.assert_array_equal(layers[name].toarray(), ref.layers[name].toarray())
    for name in ("meth_sites", "total_sites"):
        np.testing.assert_array_equal(layers[name], ref.layers[name])
    for name in ("imp_mean", "imp_var", "frac"):
        np.testing.assert_allclose(layers[name], ref.layers[name], atol=1e-6, equal_nan=True)
    np.testing.assert_array_equal(sums.n_cpg, ref.var["n_cpg"].to_numpy())
    with pytest.raises(UsageError, match="set_positions"):
        RegionSums(table, imp.n_cells).add_values("1", 0, 1, imp.values("1", 0, 1))


def test_regions_export_from_bed_and_bins(hand_imputed, tmp_path: Path) -> None:  # noqa: ANN001
    bed = tmp_path / "r.bed"
    bed.write_text("track name=x\n1\t0\t30\tfirst\n1\t30\t200\n9\t0\t5\tnowhere\n")
    table = read_bed_regions(bed)
    assert list(table["name"]) == ["first", "1:31-200", "nowhere"]  # 1-based, as browsers read
    out = tmp_path / "regions.h5ad"
    export(hand_imputed, out, "regions", ExportOptions(regions=str(bed)))
    a = ad.read_h5ad(out)
    assert list(a.var["name"]) == ["first", "1:31-200"]
    assert list(a.var_names) == ["1:1-30", "1:31-200"]
    # cA over [0, 30): sites 10 (observed 1) and 25 (missing, 0.5) -> mean 0.75, var 0.0625
    assert a.layers["imp_mean"][0, 0] == pytest.approx(0.75)
    assert a.layers["imp_var"][0, 0] == pytest.approx(0.0625)
    assert a.layers["cov"][0, 0] == 2 and a.layers["mc"][0, 0] == 1
    bins = export(hand_imputed, tmp_path / "bins.h5ad", "regions", ExportOptions(bin_size=50))
    b = ad.read_h5ad(bins[0])
    assert list(b.var_names) == ["1:1-50", "1:101-150", "2:1-50"]
    assert list(b.var["name"]) == list(b.var_names)
    assert list(b.var["n_cpg"]) == [2, 1, 2]
    bad = tmp_path / "bad.bed"
    bad.write_text("1\tx\t5\n")
    with pytest.raises(InputError, match="bad.bed:1"):
        read_bed_regions(bad)
    with pytest.raises(UsageError, match="exactly one"):
        export(hand_imputed, tmp_path / "n.h5ad", "regions")


# ---------------------------------------------------------------------------------------------
# CLI end to end


def test_cli_impute_and_export(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from cpgformer.checkpoint import save_checkpoint
    from cpgformer.nn import CpGTransformer, ModelConfig

    store = random_store(tmp_path / "store", n_cells=4)
    ds = open_dataset(store)
    torch.manual_seed(0)
    cfg = ModelConfig(
        n_cells=4, dna_window=0, hidden=8, n_heads=2, head_dim=4, n_layers=1, site_window=3,
        state_embed=4, cell_embed=4,
    )  # fmt: skip
    model = CpGTransformer(cfg).eval()
    ckpt = tmp_path / "model.pt"
    save_checkpoint(ckpt, model, cells=ds.cells, store_fingerprint=ds.fingerprint, temperature=2.0)
    out = tmp_path / "imp"
    assert main(["-q", "impute", str(store), str(ckpt), "-o", str(out), "--chroms", "2"]) == 0
    imp = open_imputed(out)
    assert imp.chromosomes == ["2"] and imp.temperature == 2.0
    x = ds.states("2", 0, 45).astype(np.int64) + 1
    pos = np.array(ds.positions("2"))
    with torch.inference_mode():
        logits = model(
            torch.from_numpy(x)[None], torch.from_numpy(pos)[None], torch.arange(4)[None]
        )
    expected = torch.sigmoid(logits[0] / 2.0).numpy()
    np.testing.assert_allclose(imp.values("2", 0, 45), expected, atol=1e-3)
    h5 = tmp_path / "x.h5ad"
    assert main(["-q", "export", str(out), "-o", str(h5), "--to", "h5ad"]) == 0
    assert ad.read_h5ad(h5).shape == (4, 45)
    # a store whose cells differ: one line, exit code 2
    other = random_store(tmp_path / "other", n_cells=3)
    capsys.readouterr()
    assert main(["-q", "impute", str(other), str(ckpt), "-o", str(tmp_path / "o2")]) == 2
    err = capsys.readouterr().err
    assert "fingerprint" in err and err.count("\n") == 1
    code = main(["-q", "impute", str(other), str(ckpt), "-o", str(tmp_path / "o2"),
                 "--ignore-fingerprint"])  # fmt: skip
    assert code == 2 and "cells differ" in capsys.readouterr().err


def _store_and_tiny_checkpoint(tmp_path: Path, seed: int) -> tuple[Path, Path]:
    """A random 3-cell store and a checkpoint of a tiny untrained model for it."""
    from cpgformer.checkpoint import save_checkpoint
    from cpgformer.nn import CpGTransformer, ModelConfig

    store = random_store(tmp_path / "store", n_cells=3)
    ds = open_dataset(store)
    torch.manual_seed(seed)
    cfg = ModelConfig(
        n_cells=3, dna_window=0, hidden=8, n_heads=2, head_dim=4, n_layers=1, site_window=3,
        state_embed=4, cell_embed=4,
    )  # fmt: skip
    ckpt = tmp_path / "model.pt"
    save_checkpoint(
        ckpt, CpGTransformer(cfg).eval(), cells=ds.cells, store_fingerprint=ds.fingerprint
    )
    return store, ckpt


def test_impute_device_option(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from cpgformer.impute import resolve_device

    store, ckpt = _store_and_tiny_checkpoint(tmp_path, seed=1)
    a, b = tmp_path / "a", tmp_path / "b"
    assert main(["-q", "impute", str(store), str(ckpt), "-o", str(a)]) == 0
    assert main(["-q", "impute", str(store), str(ckpt), "-o", str(b), "--device", "cpu"]) == 0
    for chrom in open_imputed(a).chromosomes:
        n = open_dataset(store).n_sites(chrom)
        np.testing.assert_array_equal(
            open_imputed(a).values(chrom, 0, n), open_imputed(b).values(chrom, 0, n)
        )
    capsys.readouterr()
    code = main(
        ["-q", "impute", str(store), str(ckpt), "-o", str(tmp_path / "c"), "--device", "gpu0"]
    )
    err = capsys.readouterr().err
    assert code == 2 and "not a torch device" in err and err.count("\n") == 1
    assert not (tmp_path / "c").exists()
    if not torch.cuda.is_available():
        with pytest.raises(UsageError, match="CUDA is not available"):
            resolve_device("cuda")


def test_impute_deprecated_compile_option_is_ignored(tmp_path: Path) -> None:
    """``--compile`` (compiled inference, removed) is still accepted and changes nothing."""
    store, ckpt = _store_and_tiny_checkpoint(tmp_path, seed=2)
    ds = open_dataset(store)
    a, b = tmp_path / "a", tmp_path / "b"
    assert main(["-q", "impute", str(store), str(ckpt), "-o", str(a)]) == 0
    assert main(["-q", "impute", str(store), str(ckpt), "-o", str(b), "--compile"]) == 0
    for chrom in open_imputed(a).chromosomes:
        n = ds.n_sites(chrom)
        np.testing.assert_array_equal(
            open_imputed(a).values(chrom, 0, n), open_imputed(b).values(chrom, 0, n)
        )
