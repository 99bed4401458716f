"""Imputing straight to regions equals exporting a full imputation to regions, per-CpG data never
stored, resumable and shared between ranks."""

from __future__ import annotations

import sys
from pathlib import Path

import anndata as ad
import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from test_impute import make_store, tiny_model  # noqa: E402
from test_impute_distributed import PlayedRanks  # noqa: E402

import cpgformer.impute.run as run_module  # noqa: E402
from cpgformer.checkpoint import save_checkpoint  # noqa: E402
from cpgformer.cli import main  # noqa: E402
from cpgformer.errors import UsageError  # noqa: E402
from cpgformer.export import ExportOptions, export  # noqa: E402
from cpgformer.impute import ImputeOptions, impute, open_imputed  # noqa: E402
from cpgformer.impute.regions import impute_regions, region_output  # noqa: E402
from cpgformer.io.store import open_dataset  # noqa: E402

CHUNK = 64
LAYERS = ("mc", "cov", "frac", "meth_sites", "total_sites", "imp_mean", "imp_var")
BED = (
    "1\t0\t5000\tA\n"
    "1\t3000\t30000\tB\n"  # overlaps A, spans chunks
    "chr2\t100\t9000\tC\n"  # chr prefix matched to the store's "2"
    "1\t0\t40000\twhole\n"
    "1\t99999999\t100000000\tempty\n"  # no CpG
    "X\t0\t10\tgone\n"  # contig not imputed: left out
)


def dense(m: object) -> np.ndarray:
    return np.asarray(m.toarray() if hasattr(m, "toarray") else m)  # type: ignore[union-attr]


def assert_same_table(a: ad.AnnData, b: ad.AnnData) -> None:
    for name in LAYERS:
        assert np.array_equal(dense(a.layers[name]), dense(b.layers[name]), equal_nan=True), name
    assert np.array_equal(dense(a.X), dense(b.X), equal_nan=True)
    assert a.var.equals(b.var) and a.obs.equals(b.obs)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("regions")
    store = make_store(d / "store", {"1": 300, "2": 90}, n_cells=4, fill=0.4)
    ds = open_dataset(store)
    ckpt = d / "m.pt"
    save_checkpoint(ckpt, tiny_model(4), cells=ds.cells, store_fingerprint=ds.fingerprint)
    full = impute(store, ckpt, d / "full", ImputeOptions(chunk_sites=CHUNK))
    bed = d / "r.bed"
    bed.write_text(BED)
    return {"store": store, "ckpt": ckpt, "full": full.path, "bed": bed, "dir": d}


def exported(data: dict[str, Path], out: Path, **kw) -> ad.AnnData:  # noqa: ANN003
    export(data["full"], out, "regions", ExportOptions(**kw))
    return ad.read_h5ad(out)


@pytest.mark.parametrize("values", ["imputed", "denoised"])
def test_impute_regions_equals_export_of_full_imputation(
    data: dict[str, Path], tmp_path: Path, values: str
) -> None:
    opts = ImputeOptions(chunk_sites=CHUNK)
    out = impute_regions(
        data["store"], data["ckpt"], tmp_path / "r.h5ad", opts, regions=data["bed"], values=values
    )
    got = ad.read_h5ad(out)
    want = exported(data, tmp_path / "e.h5ad", regions=str(data["bed"]), region_values=values)
    assert list(got.var["name"]) == ["A", "B", "C", "whole", "empty"]
    assert_same_table(got, want)
    assert got.uns["cpgformer"]["region_values"] == values
    assert sorted(p.name for p in tmp_path.iterdir()) == ["e.h5ad", "r.h5ad"]


def test_bins_equal_export_bins(data: dict[str, Path], tmp_path: Path) -> None:
    out = impute_regions(
        data["store"], data["ckpt"], tmp_path / "b.h5ad", ImputeOptions(chunk_sites=CHUNK),
        bin_size=5000,
    )  # fmt: skip
    assert_same_table(ad.read_h5ad(out), exported(data, tmp_path / "e.h5ad", bin_size=5000))


def test_region_sums_equal_a_plain_loop_over_cpgs(data: dict[str, Path], tmp_path: Path) -> None:
    out = impute_regions(
        data["store"], data["ckpt"], tmp_path / "r.h5ad", ImputeOptions(chunk_sites=CHUNK),
        regions=data["bed"],
    )  # fmt: skip
    got = ad.read_h5ad(out)
    imp = open_imputed(data["full"])
    for j, (chrom, start, end) in enumerate(
        zip(got.var["chrom"], got.var["start"], got.var["end"])
    ):
        chrom = str(chrom)
        pos = np.asarray(imp.positions(chrom))
        rows = [r for r in range(len(pos)) if start <= pos[r] < end]
        assert got.var["n_cpg"].iloc[j] == len(rows)
        for cell in range(imp.n_cells):
            vals = [float(imp.imputed(chrom, r, r + 1)[0, cell]) for r in rows]
            mc = [int(imp.counts(chrom, r, r + 1)[0][0, cell]) for r in rows]
            cov = [int(imp.counts(chrom, r, r + 1)[1][0, cell]) for r in rows]
            labels = [int(imp.states(chrom, r, r + 1)[0, cell]) for r in rows]
            if rows:
                mean = sum(vals) / len(vals)
                var = sum((v - mean) ** 2 for v in vals) / len(vals)
                assert got.layers["imp_mean"][cell, j] == pytest.approx(mean, abs=1e-6)
                assert got.layers["imp_var"][cell, j] == pytest.approx(var, abs=1e-6)
            else:
                assert np.isnan(got.layers["imp_mean"][cell, j])
            assert dense(got.layers["mc"])[cell, j] == sum(mc)
            assert dense(got.layers["cov"])[cell, j] == sum(cov)
            assert got.layers["meth_sites"][cell, j] == sum(v == 1 for v in labels)
            assert got.layers["total_sites"][cell, j] == sum(v >= 0 for v in labels)


def test_interrupted_run_stores_only_region_sums_and_resumes(
    data: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "r.h5ad"
    opts = ImputeOptions(chunk_sites=CHUNK)
    original = run_module._ChunkWriter.compute
    calls: list = []

    def stop_after_three(self, k: int, i: int) -> None:  # noqa: ANN001
        if len(calls) == 3:
            raise KeyboardInterrupt
        calls.append((k, i))
        original(self, k, i)

    monkeypatch.setattr(run_module._ChunkWriter, "compute", stop_after_three)
    with pytest.raises(KeyboardInterrupt):
        impute_regions(data["store"], data["ckpt"], out, opts, regions=data["bed"])
    partial = tmp_path / ".partial-r.h5ad.impute"
    kept = sorted(str(p.relative_to(partial)) for p in partial.rglob("*") if p.is_file())
    assert kept == ["cells.tsv", "chroms/0/r-000000.npz", "chroms/0/r-000001.npz",
                    "chroms/0/r-000002.npz", "plan.json"]  # fmt: skip
    monkeypatch.setattr(run_module._ChunkWriter, "compute", original)
    with pytest.raises(UsageError, match="other settings"):  # other regions: not adopted
        impute_regions(data["store"], data["ckpt"], out, opts, bin_size=1000)
    resumed = ad.read_h5ad(
        impute_regions(data["store"], data["ckpt"], out, opts, regions=data["bed"])
    )
    assert_same_table(resumed, exported(data, tmp_path / "e.h5ad", regions=str(data["bed"])))
    assert not partial.exists()


@pytest.mark.parametrize("world_size", [2, 3])
def test_ranks_sharing_region_chunks_give_the_same_table(
    data: dict[str, Path], tmp_path: Path, world_size: int
) -> None:
    out = tmp_path / "r.h5ad"
    opts = ImputeOptions(chunk_sites=CHUNK)
    output = region_output(data["bed"], None)
    ranks = PlayedRanks(0, world_size, (data["store"], data["ckpt"], out, opts))

    def other_ranks() -> None:
        for r in range(1, world_size):
            other = PlayedRanks(r, world_size, (), ranks.pending)
            result = run_module._impute(
                data["store"], data["ckpt"], out, opts, ranks=other,
                regions=region_output(data["bed"], None),
            )  # fmt: skip
            assert result is None

    ranks.barrier = other_ranks  # type: ignore[method-assign]
    run_module._impute(data["store"], data["ckpt"], out, opts, ranks=ranks, regions=output)
    assert_same_table(
        ad.read_h5ad(out), exported(data, tmp_path / "e.h5ad", regions=str(data["bed"]))
    )


def test_command_line_regions_and_bad_flags(data: dict[str, Path], tmp_path: Path) -> None:
    store, ckpt = str(data["store"]), str(data["ckpt"])
    out = tmp_path / "r.h5ad"
    args = ["-q", "impute", store, ckpt, "-o", str(out), "--chunk-sites", str(CHUNK)]
    assert main([*args, "--bin-size", "2000"]) == 0
    assert_same_table(ad.read_h5ad(out), exported(data, tmp_path / "e.h5ad", bin_size=2000))
    assert main([*args, "--bin-size", "2000"]) == 2  # exists: needs --overwrite
    assert main([*args, "--bin-size", "2000", "--regions", str(data["bed"])]) == 2
    assert main([*args, "--bin-size", "0", "--overwrite"]) == 2
    assert main([*args, "--bin-size", "9", "--overwrite", "--keep-observed",
                 "--region-values", "denoised"]) == 2  # fmt: skip
    bed = tmp_path / "own.bed"  # the BED file is an input: never the output, even with --overwrite
    bed.write_text(BED)
    common = ["-q", "impute", store, ckpt, "--overwrite", "--regions", str(bed)]
    assert main([*common, "-o", str(bed)]) == 2
    assert bed.read_text() == BED
    bed.unlink()
    bad = tmp_path / "bad.bed"
    bad.write_text("1\tten\t20\n")
    assert main([*args, "--regions", str(bad), "--overwrite"]) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.bed", "e.h5ad", "r.h5ad"]


@pytest.mark.slow
def test_two_processes_write_the_region_table_of_one(data: dict[str, Path], tmp_path: Path) -> None:
    from test_impute_distributed import cli

    out = tmp_path / "r.h5ad"
    proc = cli("impute", str(data["store"]), str(data["ckpt"]), "-o", str(out), "--chunk-sites",
               str(CHUNK), "--regions", str(data["bed"]), "--accelerator", "cpu", "--devices", "2",
               cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "7 chunk(s) to impute on 2 rank(s)" in proc.stderr
    assert_same_table(
        ad.read_h5ad(out), exported(data, tmp_path / "e.h5ad", regions=str(data["bed"]))
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["e.h5ad", "r.h5ad"]


@pytest.mark.parametrize("seed", range(5))
def test_regions_by_chunk_equals_a_plain_overlap_test(seed: int) -> None:
    from cpgformer.impute.regions import regions_by_chunk

    rng = np.random.default_rng(seed)
    n_sites, chunk = int(rng.integers(1, 500)), int(rng.integers(1, 60))
    i0 = rng.integers(0, n_sites + 1, size=200)
    i1 = np.minimum(n_sites, i0 + rng.integers(0, 3, size=200) * rng.integers(0, 120, size=200))
    order, starts = regions_by_chunk(i0, i1, chunk)
    for c, a in enumerate(range(0, n_sites, chunk)):
        b = min(n_sites, a + chunk)
        want = np.flatnonzero((i0 < b) & (i1 > a) & (i1 > i0))  # sharing a row with [a, b)
        got = order[starts[c] : starts[c + 1]] if c + 1 < len(starts) else order[:0]
        assert got.tolist() == want.tolist()
