"""Exports that downstream tools take unchanged: contig naming styles, 1-based region names,
ALLC contexts ALLCools keeps, an h5ad that anndata and scanpy read with documented layers."""

from __future__ import annotations

import gzip
import itertools
from pathlib import Path

import anndata as ad
import h5py
import numpy as np
import pysam
import pytest
import torch

from cpgformer.cli import main
from cpgformer.errors import UsageError
from cpgformer.export import (
    LAYER_MEANINGS,
    ExportOptions,
    chrom_names,
    export,
    style_chrom,
)
from cpgformer.impute import ImputeOptions, Predictor, impute
from cpgformer.io.store import ChromArrays, write_store
from cpgformer.model import Model

# ALLCools' CG filter: mc_type "CGN" expanded over the IUPAC code N (= A, C, G, T)
IUPAC = {"A": "A", "C": "C", "G": "G", "T": "T", "N": "ACGT"}
ALLCOOLS_CG = {"".join(p) for p in itertools.product(*(IUPAC[b] for b in "CGN"))}


def half_source(n_cells: int) -> Model:
    def predict(states, positions, cell_ids, emb):  # noqa: ANN001, ANN202
        return torch.zeros(states.shape, dtype=torch.float32)

    return Model.from_predictor(Predictor(predict, 1, n_cells), "half")


def chrom(name: str, positions: list[int], n_cells: int = 2) -> ChromArrays:
    """Every site observed in cell 0 (methylated at even sites), nothing in the other cells."""
    n = len(positions)
    return ChromArrays(
        name,
        np.asarray(positions, dtype=np.int64),
        np.arange(n + 1, dtype=np.int64),
        np.zeros(n, dtype=np.int32),
        (np.arange(n) % 2 == 0).astype(np.int32),
        np.ones(n, dtype=np.int32),
        (np.arange(n) % 2 == 0).astype(np.int8),
    )


GENOME = {
    # CpGs (0-based C): chr1 at 2, 7, 11, 40 (context CGA, CGA, CGG, CGT); chrM at 3 and at the
    # very end (no base after the G: CGN)
    "chr1": "AACGAAACGAACGGAAAAAAAAAAAAAAAAAAAAAAAAAACGTA",
    "chrM": "AAACGTTTTCG",
}


@pytest.fixture()
def imputed(tmp_path: Path):  # noqa: ANN201
    fasta = tmp_path / "ref.fa"
    fasta.write_text("".join(f">{k}\n{v}\n" for k, v in GENOME.items()))
    store = tmp_path / "store"
    write_store(
        store,
        [chrom("chr1", [2, 7, 11, 40]), chrom("chrM", [3, 9])],
        ["cA", "cB"],
        manifest_extra={"fasta": {"path": str(fasta)}},
    )
    return impute(store, half_source(2), tmp_path / "imp", ImputeOptions(chunk_sites=3)), fasta


def test_chrom_style_names() -> None:
    assert [style_chrom(c, "ucsc") for c in ("1", "chr2", "MT", "X")] == [
        "chr1", "chr2", "chrM", "chrX",
    ]  # fmt: skip
    assert [style_chrom(c, "ensembl") for c in ("chr1", "2", "chrM", "chrX")] == [
        "1", "2", "MT", "X",
    ]  # fmt: skip
    assert style_chrom("chr1", "as-is") == "chr1"
    with pytest.raises(UsageError, match="would both be named 'chr1'"):
        chrom_names(["1", "chr1"], "ucsc")
    with pytest.raises(UsageError, match="chrom-style"):
        style_chrom("1", "gencode")


@pytest.mark.parametrize("style, names", [("ensembl", ["1", "MT"]), ("as-is", ["chr1", "chrM"])])
def test_chrom_style_on_every_export(imputed, tmp_path: Path, style: str, names) -> None:  # noqa: ANN001
    imp, fasta = imputed
    opts = ExportOptions(chrom_style=style, fasta=str(fasta), bin_size=20)
    bed = export(imp, tmp_path / "bg", "bedgraph", opts)
    with gzip.open(bed[0], "rt") as fh:
        rows = [line.split("\t") for line in fh if not line.startswith("track")]
    assert sorted({r[0] for r in rows}) == sorted(names)
    allc = export(imp, tmp_path / "allc", "allc", opts)
    assert list(pysam.TabixFile(str(allc[0])).contigs) == names
    h5 = ad.read_h5ad(export(imp, tmp_path / "x.h5ad", "h5ad", opts)[0])
    assert list(h5.var["chrom"].cat.categories) == names
    assert h5.var_names[0] == f"{names[0]}:3-4" and h5.var_names[-1] == f"{names[1]}:10-11"
    regions = ad.read_h5ad(export(imp, tmp_path / "r.h5ad", "regions", opts)[0])
    assert regions.var_names[0] == f"{names[0]}:1-20"
    assert set(regions.var["chrom"].astype(str)) == set(names)


def test_cli_chrom_style_ucsc(imputed, tmp_path: Path) -> None:  # noqa: ANN001
    imp, fasta = imputed
    # a store with Ensembl names written as UCSC
    store = tmp_path / "ens"
    write_store(store, [chrom("1", [2, 7]), chrom("MT", [3])], ["cA", "cB"])
    ens = impute(store, half_source(2), tmp_path / "ens_imp")
    out = tmp_path / "bg"
    code = main(["-q", "export", str(ens.path), "-o", str(out), "--to", "bedgraph",
                 "--chrom-style", "ucsc"])  # fmt: skip
    assert code == 0
    with gzip.open(out / "cA.imputed.bedGraph.gz", "rt") as fh:
        rows = [line.split("\t")[:3] for line in fh if not line.startswith("track")]
    assert rows == [["chr1", "2", "4"], ["chr1", "7", "9"], ["chrM", "3", "5"]]


def test_region_names_are_one_based_as_tabix_reads_them(imputed, tmp_path: Path) -> None:  # noqa: ANN001
    imp, fasta = imputed
    bed = tmp_path / "r.bed"
    bed.write_text("chr1\t0\t8\nchr1\t8\t41\tnamed\nchrM\t0\t11\n")
    opts = ExportOptions(fasta=str(fasta), regions=str(bed))
    regions = ad.read_h5ad(export(imp, tmp_path / "r.h5ad", "regions", opts)[0])
    assert list(regions.var_names) == ["chr1:1-8", "chr1:9-41", "chrM:1-11"]
    assert list(regions.var["name"]) == ["chr1:1-8", "named", "chrM:1-11"]
    allc = export(imp, tmp_path / "allc", "allc", ExportOptions(fasta=str(fasta)))
    tbx = pysam.TabixFile(str(allc[0]))
    for name, n_cpg in zip(regions.var_names, regions.var["n_cpg"]):
        # a region string is 1-based closed for tabix/samtools/browsers: same CpGs as the BED
        assert len(list(tbx.fetch(region=name))) == n_cpg, name
    assert list(regions.var["n_cpg"]) == [2, 2, 2]
    bins = ad.read_h5ad(export(imp, tmp_path / "b.h5ad", "regions", ExportOptions(bin_size=10))[0])
    assert list(bins.var_names) == ["chr1:1-10", "chr1:11-20", "chr1:41-50", "chrM:1-10"]
    for name, n_cpg in zip(bins.var_names, bins.var["n_cpg"]):
        assert len(list(tbx.fetch(region=name))) == n_cpg, name


def test_allc_contexts_pass_allcools_cg_rule(imputed, tmp_path: Path, capfd) -> None:  # noqa: ANN001
    imp, fasta = imputed
    assert ALLCOOLS_CG == {"CGA", "CGC", "CGG", "CGT"}
    out = tmp_path / "allc"
    code = main(["export", str(imp.path), "-o", str(out), "--to", "allc", "--fasta", str(fasta)])
    assert code == 0
    assert "1 CpG(s) have a context other than CGA/CGC/CGG/CGT" in capfd.readouterr().err
    for path in sorted(out.glob("*.allc.tsv.gz")):
        with gzip.open(path, "rt") as fh:
            rows = [line.rstrip("\n").split("\t") for line in fh]
        for row in rows:
            pos = int(row[1]) - 1  # ALLC is 1-based
            ref = GENOME[row[0]][pos : pos + 3].upper().ljust(3, "N")
            assert row[3] == ref  # the real reference context
        kept = [r for r in rows if r[3] in ALLCOOLS_CG]
        assert [(r[0], r[1]) for r in rows if r not in kept] == [("chrM", "10")]  # contig end
        assert len(kept) == 5


def test_allc_without_fasta_refuses_or_warns(tmp_path: Path, capfd) -> None:
    store = tmp_path / "store"
    write_store(store, [chrom("1", [2, 7])], ["cA", "cB"])
    imp = impute(store, half_source(2), tmp_path / "imp")
    out = tmp_path / "allc"
    capfd.readouterr()
    assert main(["export", str(imp.path), "-o", str(out), "--to", "allc"]) == 2
    err = capfd.readouterr().err
    assert err.count("\n") == 1 and "--fasta" in err and "--allow-cgn" in err
    assert not out.exists()
    code = main(["export", str(imp.path), "-o", str(out), "--to", "allc", "--allow-cgn"])
    assert code == 0
    assert "ALLCools' CG context filter" in capfd.readouterr().err


def test_h5ad_reads_back_with_anndata_and_scanpy(imputed, tmp_path: Path) -> None:  # noqa: ANN001
    import scanpy as sc  # a test dependency (pyproject [test])

    imp, fasta = imputed
    path = export(imp, tmp_path / "x.h5ad", "h5ad")[0]
    with h5py.File(path) as f:
        assert f["X"].compression == "gzip"
        assert f["layers"]["imputed"].compression == "gzip"
    a = ad.read_h5ad(path)
    b = sc.read_h5ad(path)
    assert a.shape == b.shape == (2, 6)
    assert list(a.obs_names) == ["cA", "cB"] and a.obs_names.is_unique and a.var_names.is_unique
    assert "n_obs" not in a.obs.columns and "n_vars" not in a.var.columns
    assert {"n_calls", "n_meth", "global_meth_frac", "mean_cov"} <= set(a.obs.columns)
    assert list(a.var.columns[:3]) == ["chrom", "start", "end"]
    meaning = a.uns["cpgformer"]["layers"]
    assert set(meaning) == {"X", *a.layers.keys()} and meaning["X"] == LAYER_MEANINGS["X"]
    assert set(a.layers.keys()) == {"imputed", "observed", "mc", "cov", "uncertainty"}
    np.testing.assert_array_equal(b.X, a.X)
    sc.pp.calculate_qc_metrics(b, layer="cov", inplace=True, percent_top=None)
    assert b.obs["total_counts"].tolist() == [6.0, 0.0]  # cell A observed every CpG once
    site = sc.get.obs_df(b, keys=[b.var_names[1]], layer="imputed")
    assert site.iloc[:, 0].tolist() == [0.0, 0.5]  # observed 0 kept, missing imputed
    plain = export(imp, tmp_path / "plain.h5ad", "h5ad", ExportOptions(compression="none"))[0]
    with h5py.File(plain) as f:
        assert f["X"].compression is None
