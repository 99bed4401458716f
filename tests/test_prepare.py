from __future__ import annotations

import gzip
import json
from collections import defaultdict

import numpy as np
import pytest

from cpgformer.cli import main
from cpgformer.errors import UsageError
from cpgformer.io.store import open_dataset
from cpgformer.prepare import (
    PrepareOptions,
    binarize_labels,
    cell_name_from_path,
    chrom_sort_key,
    normalise_chrom,
    prepare,
)

# 0-based:        0         1         2
#                 01234567890123456789012345
CHR1 = "ACGTTCGAACGNNCGCGATTACGTAC"  # CpG C at 1, 5, 9, 13, 15, 21
CHR2 = "TTCGAAAACGTT"  # CpG C at 2, 8


def write_fasta(path, width=10):
    with open(path, "w") as fh:
        for name, seq in (("chr1", CHR1), ("chr2", CHR2)):
            fh.write(f">{name} test contig\n")
            for i in range(0, len(seq), width):
                fh.write(seq[i : i + width] + "\n")
    return path


def write_cov(path, rows, gz=False):
    """Bismark .cov rows (chrom, 1-based pos, mc, unmeth)."""
    text = "".join(
        f"{c}\t{p}\t{p}\t{100 * m / max(m + u, 1):.6f}\t{m}\t{u}\n" for c, p, m, u in rows
    )
    if gz:
        with gzip.open(path, "wt") as fh:
            fh.write(text)
    else:
        path.write_text(text)
    return path


# ----------------------------------------------------------------------------- pure helpers


def test_cell_name_from_path() -> None:
    assert cell_name_from_path("/a/b/cell_01.cov.gz") == "cell_01"
    assert cell_name_from_path("x.allc.tsv.gz") == "x.allc"
    assert cell_name_from_path("sample.tsv") == "sample"
    assert cell_name_from_path("noext") == "noext"
    assert cell_name_from_path("noext.gz") == "noext"


def test_normalise_chrom() -> None:
    assert normalise_chrom("1", "add-chr") == "chr1"
    assert normalise_chrom("chr1", "add-chr") == "chr1"
    assert normalise_chrom("MT", "add-chr") == "chrM"
    assert normalise_chrom("chr1", "strip-chr") == "1"
    assert normalise_chrom("chrM", "strip-chr") == "MT"
    assert normalise_chrom("1", "strip-chr") == "1"
    assert normalise_chrom("chrX", "keep") == "chrX"


def test_chrom_sort_key() -> None:
    names = ["chrX", "chr10", "chrL", "chr2", "chr1", "chrM", "chrY", "GL1.1"]
    assert sorted(names, key=chrom_sort_key) == [
        "chr1",
        "chr2",
        "chr10",
        "chrX",
        "chrY",
        "chrM",
        "GL1.1",
        "chrL",
    ]


def test_binarize_rules_by_hand() -> None:
    mc = np.array([0, 1, 1, 2, 3, 1, 0])
    cov = np.array([1, 1, 2, 3, 3, 4, 2])
    # fractions:  0   1   .5  .67 1  .25 0
    assert binarize_labels(mc, cov, "threshold").tolist() == [0, 1, 1, 1, 1, 0, 0]
    assert binarize_labels(mc, cov, "threshold", 0.7).tolist() == [0, 1, 0, 0, 1, 0, 0]
    assert binarize_labels(mc, cov, "drop-mixed").tolist() == [0, 1, -1, -1, 1, -1, 0]
    assert binarize_labels(mc, cov, "majority").tolist() == [0, 1, -1, 1, 1, 0, 0]
    assert binarize_labels(mc, cov, "threshold", min_cov=2).tolist() == [-1, -1, 1, 1, 1, 0, 0]


# ----------------------------------------------------------------------------- hand fixtures


def test_no_fasta_keeps_per_c_rows_and_sorts(tmp_path) -> None:
    # unsorted, two contigs, a + / - pair (1-based 2 and 3) that stays unpooled without a FASTA
    a = write_cov(
        tmp_path / "a.cov",
        [("chr1", 14, 1, 0), ("chr1", 2, 1, 1), ("chr2", 3, 0, 2), ("chr1", 3, 2, 0)],
    )
    b = write_cov(tmp_path / "b.cov.gz", [("chr1", 2, 0, 1), ("chr1", 22, 3, 1)], gz=True)
    m = prepare([a, b], tmp_path / "s")
    ds = open_dataset(tmp_path / "s")
    assert ds.cells == ["a", "b"] and ds.chromosomes == ["chr1", "chr2"]
    assert ds.positions("chr1").tolist() == [1, 2, 13, 21]
    mc, cov = ds.counts("chr1", 0, 4)
    assert mc.tolist() == [[1, 0], [2, 0], [1, 0], [0, 3]]
    assert cov.tolist() == [[2, 1], [2, 0], [1, 0], [0, 4]]
    assert ds.states("chr1", 0, 4).tolist() == [[1, 0], [1, -1], [1, -1], [-1, 1]]
    assert m["n_calls"] == 6 and m["fasta"] is None
    assert "own coordinate" in m["strand_rule"]
    assert m["inputs"][0]["n_adjacent_pairs"] == 1
    assert ds.cell_table["flags"].tolist() == ["unpooled_strands", ""]
    assert m["parameters"]["binarize"] == "threshold" and m["binarisation"]["min_cov"] == 1


def test_pair_adjacent_without_fasta(tmp_path) -> None:
    a = write_cov(tmp_path / "a.cov", [("chr1", 2, 1, 1), ("chr1", 3, 2, 0), ("chr1", 14, 1, 0)])
    m = prepare([a], tmp_path / "s", PrepareOptions(pair_adjacent=True))
    ds = open_dataset(tmp_path / "s")
    assert ds.positions("chr1").tolist() == [1, 13]
    mc, cov = ds.counts("chr1", 0, 2)
    assert mc[:, 0].tolist() == [3, 1] and cov[:, 0].tolist() == [4, 1]
    assert m["inputs"][0]["n_strand_merged"] == 1


def test_fasta_pools_strands_and_drops_non_cpg(tmp_path) -> None:
    fa = write_fasta(tmp_path / "ref.fa")
    # + C of the CpG at 0-based 15 is 1-based 16, its - C (the G) is 1-based 17; the CpG at 9
    # crosses the FASTA line wrap (C at index 9, G at index 10 on the next line): 1-based 10 and 11.
    rows = [("1", 16, 1, 0), ("1", 17, 0, 1), ("1", 10, 1, 0), ("1", 11, 1, 0)]
    rows += [(f"{c}", p, 1, 0) for c, p in (("1", 2), ("1", 6), ("1", 14), ("1", 22), ("2", 3))]
    rows += [(f"{c}", p, 0, 1) for c, p in (("1", 7), ("1", 15), ("1", 23), ("2", 9), ("2", 10))]
    rows += [("1", 25, 1, 0)]  # 0-based 24 is an A: not a CpG
    a = write_cov(tmp_path / "a.cov", rows)
    opts = PrepareOptions(fasta=str(fa), chrom_names="add-chr", min_valid_frac=0.9)
    m = prepare([a], tmp_path / "s", opts)
    ds = open_dataset(tmp_path / "s")
    assert ds.chromosomes == ["chr1", "chr2"]
    assert ds.positions("chr1").tolist() == [1, 5, 9, 13, 15, 21]
    assert ds.positions("chr2").tolist() == [2, 8]
    mc, cov = ds.counts("chr1", 0, 6)
    assert mc[:, 0].tolist() == [1, 1, 2, 1, 1, 1]
    assert cov[:, 0].tolist() == [1, 2, 2, 2, 2, 2]
    mc2, cov2 = ds.counts("chr2", 0, 2)
    assert mc2[:, 0].tolist() == [1, 0] and cov2[:, 0].tolist() == [1, 2]
    assert m["inputs"][0]["n_calls_read"] == 15
    assert m["inputs"][0]["dropped"] == {"not_cpg": 1}
    assert m["inputs"][0]["n_strand_merged"] == 6
    assert m["fasta"]["contigs"] == [{"name": "chr1", "length": 26}, {"name": "chr2", "length": 12}]
    assert ds.fasta_path == str(fa.resolve())
    assert m["strand_rule"].startswith("fasta")


def test_allc_stranded_pooling_without_fasta(tmp_path) -> None:
    # ALLC: 1-based; + at q -> start q-1; - at q -> start q-2; non-CG contexts skipped
    text = (
        "chr1\t10\t+\tCGA\t1\t2\t1\n"
        "chr1\t11\t-\tCGT\t2\t2\t1\n"
        "chr1\t12\t+\tCAG\t1\t1\t1\n"
        "chr1\t30\t-\tCGN\t0\t3\t1\n"
    )
    p = tmp_path / "c.allc.tsv"
    p.write_text(text)
    m = prepare([p], tmp_path / "s")
    ds = open_dataset(tmp_path / "s")
    assert ds.cells == ["c.allc"]
    assert ds.positions("chr1").tolist() == [9, 28]
    mc, cov = ds.counts("chr1", 0, 2)
    assert mc[:, 0].tolist() == [3, 0] and cov[:, 0].tolist() == [4, 3]
    assert m["inputs"][0]["dropped"] == {"non_cg_context": 1}


@pytest.mark.parametrize("rule, expected", [("threshold", [1, 0]), ("drop-mixed", [-1, 0])])
def test_binarize_option_and_counts_kept(tmp_path, rule, expected) -> None:
    a = write_cov(tmp_path / "a.cov", [("chr1", 2, 1, 1), ("chr1", 9, 0, 3)])
    prepare([a], tmp_path / "s", PrepareOptions(binarize=rule))
    ds = open_dataset(tmp_path / "s")
    assert ds.states("chr1", 0, 2)[:, 0].tolist() == expected
    assert ds.counts("chr1", 0, 2)[1][:, 0].tolist() == [2, 3]
    assert ds.manifest["binarisation"]["rule"] == rule


def test_duplicate_names_and_explicit_names(tmp_path) -> None:
    (tmp_path / "x").mkdir()
    (tmp_path / "y").mkdir()
    a = write_cov(tmp_path / "x" / "c.cov", [("chr1", 2, 1, 0)])
    b = write_cov(tmp_path / "y" / "c.cov.gz", [("chr1", 2, 0, 1)], gz=True)
    with pytest.raises(UsageError, match="duplicate cell name 'c'"):
        prepare([a, b], tmp_path / "s")
    prepare([a, b], tmp_path / "s", PrepareOptions(cell_names=["p", "q"]))
    assert open_dataset(tmp_path / "s").cells == ["p", "q"]


# ----------------------------------------------------------------------------- reference check


def _random_cov_files(tmp_path, rng, n_cells=7):
    paths, truth = [], defaultdict(dict)
    for c in range(n_cells):
        rows = []
        for chrom in ("chr1", "chr2", "chr10"):
            n = int(rng.integers(0, 60))
            pos = rng.choice(np.arange(1, 400), size=n, replace=False)
            for p in pos:
                m, u = int(rng.integers(0, 3)), int(rng.integers(0, 3))
                if m + u == 0:
                    u = 1
                rows.append((chrom, int(p), m, u))
                truth[(chrom, int(p) - 1)][c] = (m, m + u)
        rng.shuffle(rows)
        if not rows:
            rows.append(("chr1", 500, 1, 0))
            truth[("chr1", 499)][c] = (1, 1)
        paths.append(write_cov(tmp_path / f"r{c}.cov", rows, gz=bool(c % 2)))
    return paths, truth


def test_matches_plain_reference_and_spilling_is_invisible(tmp_path) -> None:
    rng = np.random.default_rng(5)
    paths, truth = _random_cov_files(tmp_path, rng)
    small = prepare(paths, tmp_path / "small", PrepareOptions(spill_bytes=1 << 16))
    big = prepare(paths, tmp_path / "big")
    two = prepare(paths, tmp_path / "two", PrepareOptions(jobs=2))
    assert small["fingerprint"] == big["fingerprint"] == two["fingerprint"]
    ds = open_dataset(tmp_path / "small")
    assert ds.chromosomes == ["chr1", "chr2", "chr10"]
    n = 0
    for chrom in ds.chromosomes:
        pos = ds.positions(chrom).tolist()
        assert pos == sorted({p for c, p in truth if c == chrom})
        mc, cov = ds.counts(chrom, 0, len(pos))
        states = ds.states(chrom, 0, len(pos))
        for i, p in enumerate(pos):
            for cell in range(len(paths)):
                m, t = truth[(chrom, p)].get(cell, (0, 0))
                assert (mc[i, cell], cov[i, cell]) == (m, t)
                assert states[i, cell] == (-1 if t == 0 else int(m / t >= 0.5))
                n += t > 0
    assert ds.manifest["n_calls"] == n


def test_cli_inputs_from_list_and_flags_from_options(tmp_path) -> None:
    """--inputs-from adds the listed files after the FILE arguments; flags made from
    PrepareOptions reach the library (--spill-mb in MiB, --cell-names as a file of names)."""
    rng = np.random.default_rng(7)
    paths, _truth = _random_cov_files(tmp_path, rng)
    listing = tmp_path / "files.txt"
    listing.write_text("".join(f"{p}\n" for p in paths[1:]) + "\n")
    names = tmp_path / "names.txt"
    names.write_text("".join(f"n{i}\n" for i in range(len(paths))))
    args = ["-q", "prepare", str(paths[0]), "--inputs-from", str(listing), "-o"]
    assert main([*args, str(tmp_path / "cli"), "--spill-mb", "1", "--cell-names", str(names)]) == 0
    direct = prepare(
        paths, tmp_path / "lib", PrepareOptions(cell_names=[f"n{i}" for i in range(len(paths))])
    )
    ds = open_dataset(tmp_path / "cli")
    assert ds.fingerprint == direct["fingerprint"] and ds.cells[0] == "n0"
    assert main(["-q", "prepare", "-o", str(tmp_path / "none")]) == 2  # no input at all
    assert (
        main(["-q", "prepare", str(paths[0]), "-o", str(tmp_path / "x"), "--input-format", "nope"])
        == 2
    )


# ----------------------------------------------------------------------------- real data


@pytest.fixture(scope="module")
def scbs_store(shared, tmp_path_factory):
    files = sorted((shared / "data" / "scbs_tutorial").glob("cell_*.cov.gz"))
    out = tmp_path_factory.mktemp("scbs") / "store"
    assert main(["-q", "prepare", *map(str, files), "-o", str(out)]) == 0
    return out


def test_acceptance_scbs_prepare_and_info_json(scbs_store, capsys) -> None:
    capsys.readouterr()
    assert main(["info", str(scbs_store), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["n_cells"] == 30
    assert len(info["chromosomes"]) == 20
    assert info["n_calls"] == 2_500_671  # no FASTA: Bismark per-C rows are not pooled
    assert info["cells"] == [f"cell_{i:02d}" for i in range(1, 31)]
    assert sum(info["chromosomes"].values()) == info["n_sites"] == 704_601
    assert sum(info["calls_per_chromosome"].values()) == 2_500_671
    assert 0.11 < info["fill_fraction"] < 0.13
    assert sum(c["n_calls"] for c in info["cell_stats"]) == 2_500_671
    assert list(info["chromosomes"])[:3] == ["1", "2", "3"]


def test_info_text_output(scbs_store, capsys) -> None:
    capsys.readouterr()
    assert main(["info", str(scbs_store), "--max-cells", "3"]) == 0
    out = capsys.readouterr().out
    assert "cells        30" in out and "calls        2500671" in out
    assert "cell_03" in out and "cell_04" not in out and "27 more cells" in out


def test_allcools_only_cg_contexts(shared, tmp_path) -> None:
    files = sorted((shared / "data" / "allcools_snmc8").glob("*.allc.tsv.gz"))
    assert len(files) == 8
    out = tmp_path / "store"
    args = ["-q", "prepare", *map(str, files), "--keep-contigs", "all", "-o", str(out)]
    assert main(args) == 0  # every contig kept: the count below covers chrL and chrUn_* too
    ds = open_dataset(out)
    # independent count: CG rows anchored on the + C, both strands summed per cell
    expected_sites: dict[str, set] = defaultdict(set)
    for k, f in enumerate(files):
        per_cell: dict = defaultdict(lambda: [0, 0])
        non_cg = 0
        with gzip.open(f, "rt") as fh:
            for line in fh:
                chrom, pos, strand, context, mc, cov = line.rstrip("\n").split("\t")[:6]
                if not context.startswith("CG"):
                    non_cg += 1
                    continue
                start = int(pos) - 1 if strand == "+" else int(pos) - 2
                per_cell[(chrom, start)][0] += int(mc)
                per_cell[(chrom, start)][1] += int(cov)
        row = ds.cell_table.iloc[k]
        assert row["name"] == f.name[: -len(".tsv.gz")]
        assert row["n_calls"] == len(per_cell)
        assert ds.manifest["inputs"][k]["dropped"]["non_cg_context"] == non_cg
        for chrom, start in per_cell:
            expected_sites[chrom].add(start)
        cell_mc = sum(v[0] for v in per_cell.values())
        cell_cov = sum(v[1] for v in per_cell.values())
        got_mc = got_cov = 0
        for chrom in ds.chromosomes:
            indptr, cell, mc, cov, _ = ds.csr(chrom)
            got_mc += int(np.asarray(mc)[np.asarray(cell) == k].sum())
            got_cov += int(np.asarray(cov)[np.asarray(cell) == k].sum())
        assert (got_mc, got_cov) == (cell_mc, cell_cov)
    assert set(ds.chromosomes) == set(expected_sites)
    for chrom in ds.chromosomes:
        assert ds.positions(chrom).tolist() == sorted(expected_sites[chrom])


def test_custom_columns_vmrseq_csv(tmp_path, capsys) -> None:
    # vmrseq csv: chr,pos,strand,mc_count,total (1-based, stranded) -> pooled exactly without FASTA
    p = tmp_path / "v1.csv"
    p.write_text("chr,pos,strand,mc_count,total\nchr1,10,+,1,1\nchr1,11,-,0,1\nchr1,40,+,2,2\n")
    out = tmp_path / "s"
    args = ["prepare", "--columns", "1:2:4:5c:,:1:strand=3", str(p), "-o", str(out)]
    assert main(args) == 0
    assert capsys.readouterr().out.startswith(f"{out}: 1 cells, 1 chromosomes, 2 sites, 2 calls")
    ds = open_dataset(out)
    assert ds.positions("chr1").tolist() == [9, 39]
    mc, cov = ds.counts("chr1", 0, 2)
    assert mc[:, 0].tolist() == [1, 2] and cov[:, 0].tolist() == [2, 2]
    assert ds.manifest["parameters"]["columns"] == "1:2:4:5c:,:1:strand=3"
