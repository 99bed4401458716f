from __future__ import annotations

import numpy as np
import pytest

from cpgformer import codes
from cpgformer.cli import main
from cpgformer.errors import InputError
from cpgformer.io.npz import default_cell_names, export_npz, import_npz
from cpgformer.io.store import open_dataset

#            0         1         2
#            0123456789012345678901234
GENOME_1 = "ACGTTCGAACGNNCGCGATTACGTA"  # CpG C at 1, 5, 9, 13, 15, 21
GENOME_2 = "TTCGAAAACG"  # CpG C at 2, 8
GENOME_3 = "GGGGCGGG"  # a contig without data (X may have more keys than y)


def _write_triple(d, y1, y2, with_x=True, pos_dtype=np.int32):
    d.mkdir(parents=True, exist_ok=True)
    np.savez(d / "y.npz", chr1=y1, chr2=y2)
    np.savez(
        d / "pos.npz",
        chr1=np.array([1, 5, 13, 21], dtype=pos_dtype),
        chr2=np.array([2, 8], dtype=pos_dtype),
    )
    if with_x:
        np.savez(
            d / "X.npz",
            chr1=codes.encode_sequence(GENOME_1),
            chr2=codes.encode_sequence(GENOME_2),
            chr3=codes.encode_sequence(GENOME_3),
        )


Y1 = np.array([[1, -1, 0], [-1, -1, -1], [0, 0, 1], [-1, 1, -1]], dtype=np.int8)
Y2 = np.array([[1, 1, 1], [0, -1, -1]], dtype=np.int8)
F1 = np.array([[0.25, -1, 1.0], [-1, -1, -1], [0.5, 0.0, 0.75], [-1, 1 / 3, -1]], dtype=np.float32)
F2 = np.array([[0.1, 0.9, 1.0], [0.0, -1, -1]], dtype=np.float32)


def _assert_same_npz(a, b):
    with np.load(a) as x, np.load(b) as y:
        assert list(x.files) == list(y.files)
        for k in x.files:
            assert x[k].dtype == y[k].dtype, k
            np.testing.assert_array_equal(x[k], y[k])


def test_binary_import_values(tmp_path) -> None:
    _write_triple(tmp_path / "in", Y1, Y2)
    m = import_npz(tmp_path / "in", tmp_path / "store")
    ds = open_dataset(tmp_path / "store")
    assert ds.cells == ["cell_000", "cell_001", "cell_002"]
    assert ds.chromosomes == ["chr1", "chr2"]
    assert ds.positions("chr1").tolist() == [1, 5, 13, 21]
    assert m["n_calls"] == 6 + 4 and m["data_mode"] == "binary"
    np.testing.assert_array_equal(ds.states("chr1", 0, 4), Y1)
    mc, cov = ds.counts("chr2", 0, 2)
    assert mc.tolist() == [[1, 1, 1], [0, 0, 0]]
    assert cov.tolist() == [[1, 1, 1], [1, 0, 0]]
    assert m["genome_npz"]["contigs"][2] == {"name": "chr3", "length": 8}


@pytest.mark.parametrize("kind", ["binary", "continuous"])
def test_round_trip_exact(tmp_path, kind) -> None:
    y1, y2 = (Y1, Y2) if kind == "binary" else (F1, F2)
    _write_triple(tmp_path / "in", y1, y2)
    import_npz(tmp_path / "in", tmp_path / "store")
    export_npz(tmp_path / "store", tmp_path / "out")
    for f in ("X.npz", "y.npz", "pos.npz"):
        _assert_same_npz(tmp_path / "in" / f, tmp_path / "out" / f)
    names = (tmp_path / "out" / "cells.txt").read_text().split()
    assert names == ["cell_000", "cell_001", "cell_002"]


def test_round_trip_through_cli_with_names(tmp_path) -> None:
    _write_triple(tmp_path / "in", F1, F2, with_x=False)
    (tmp_path / "names.txt").write_text("a\nb\nc\n")
    assert (
        main(
            [
                "prepare",
                "--input-format",
                "npz",
                "--cell-names",
                str(tmp_path / "names.txt"),
                str(tmp_path / "in"),
                "-o",
                str(tmp_path / "store"),
            ]
        )
        == 0
    )
    ds = open_dataset(tmp_path / "store")
    assert ds.cells == ["a", "b", "c"]
    # continuous: labels by threshold 0.5, ties methylated; beta kept exactly
    assert ds.states("chr1", 0, 4).tolist() == [[0, -1, 1], [-1, -1, -1], [1, 0, 1], [-1, 0, -1]]
    np.testing.assert_array_equal(ds.betas("chr1", 0, 4), F1)
    assert main(["export-npz", str(tmp_path / "store"), "-o", str(tmp_path / "out")]) == 0
    assert not (tmp_path / "out" / "X.npz").exists()
    for f in ("y.npz", "pos.npz"):
        _assert_same_npz(tmp_path / "in" / f, tmp_path / "out" / f)
    assert (tmp_path / "out" / "cells.txt").read_text() == "a\nb\nc\n"
    # re-importing the export picks the names up from cells.txt
    import_npz(tmp_path / "out", tmp_path / "store2")
    assert open_dataset(tmp_path / "store2").fingerprint == ds.fingerprint


def test_export_binary_from_continuous(tmp_path) -> None:
    _write_triple(tmp_path / "in", F1, F2, with_x=False)
    import_npz(tmp_path / "in", tmp_path / "store")
    export_npz(tmp_path / "store", tmp_path / "out", values="binary")
    with np.load(tmp_path / "out" / "y.npz") as y:
        assert y["chr2"].dtype == np.int8
        assert y["chr2"].tolist() == [[0, 1, 1], [0, -1, -1]]


def test_default_cell_names_width() -> None:
    assert default_cell_names(2) == ["cell_000", "cell_001"]
    assert default_cell_names(1001)[-1] == "cell_1000"


@pytest.mark.parametrize(
    "case, match",
    [
        ("value", "value 2 at row 0, cell 1"),
        ("fraction", "fraction in"),
        ("rows", "4 positions but y has 3 rows"),
        ("unsorted", "not sorted at rows 2 and 3"),
        ("keys", "keys differ"),
        ("notcpg", "not at a CpG C"),
        ("past_end", "past the end"),
        ("cells", "2 cells, other chromosomes have 3"),
    ],
)
def test_import_checks(tmp_path, case, match) -> None:
    d = tmp_path / "in"
    y1, y2 = Y1.copy(), Y2.copy()
    _write_triple(d, y1, y2)
    pos1 = np.array([1, 5, 13, 21], dtype=np.int32)
    if case == "value":
        y1[0, 1] = 2
        np.savez(d / "y.npz", chr1=y1, chr2=y2)
    elif case == "fraction":
        f1 = F1.copy()
        f1[1, 1] = 1.5
        np.savez(d / "y.npz", chr1=f1, chr2=F2)
    elif case == "rows":
        np.savez(d / "y.npz", chr1=y1[:3], chr2=y2)
    elif case == "unsorted":
        np.savez(d / "pos.npz", chr1=pos1[[0, 1, 3, 2]], chr2=np.array([2, 8], np.int32))
    elif case == "keys":
        np.savez(d / "pos.npz", chr1=pos1, chrX=np.array([2, 8], np.int32))
    elif case == "notcpg":
        np.savez(d / "pos.npz", chr1=pos1 + np.array([0, 0, 0, 1]), chr2=np.array([2, 8], np.int32))
    elif case == "past_end":
        np.savez(d / "pos.npz", chr1=pos1, chr2=np.array([2, 9], np.int32))
    elif case == "cells":
        np.savez(d / "y.npz", chr1=y1, chr2=y2[:, :2])
    with pytest.raises(InputError, match=match):
        import_npz(d, tmp_path / "store")
    assert not any(p.name.startswith(".partial") or p.name == "store" for p in tmp_path.iterdir())


def test_export_genome_from_fasta_of_prepared_store(tmp_path) -> None:
    fa = tmp_path / "ref.fa"
    fa.write_text(">chr1 x\nACGTTCGAAC\nGNNCGCGATT\nACGTAC\n>chr2\nTTCGAAAACGTT\n")
    cov = tmp_path / "c1.cov"
    # 1-based: + C of CpG 0-based 1 at 2, - C of CpG 5 at 7, + C of CpG 9 at 10 (across the wrap)
    cov.write_text("chr1\t2\t2\t100\t1\t0\nchr1\t7\t7\t0\t0\t2\nchr1\t10\t10\t50\t1\t1\n")
    assert main(["-q", "prepare", "--fasta", str(fa), str(cov), "-o", str(tmp_path / "s")]) == 0
    assert main(["-q", "export-npz", str(tmp_path / "s"), "-o", str(tmp_path / "out")]) == 0
    with (
        np.load(tmp_path / "out" / "X.npz") as x,
        np.load(tmp_path / "out" / "y.npz") as y,
        np.load(tmp_path / "out" / "pos.npz") as pos,
    ):
        assert list(x.files) == ["chr1", "chr2"]
        assert codes.decode_sequence(x["chr1"]) == "ACGTTCGAACGNNCGCGATTACGTAC"
        assert x["chr2"].dtype == np.int8 and len(x["chr2"]) == 12
        assert list(y.files) == ["chr1"]
        assert pos["chr1"].dtype == np.int32 and pos["chr1"].tolist() == [1, 5, 9]
        assert y["chr1"].tolist() == [[1], [0], [1]]  # 1 of 2 reads: tie -> methylated
    # the exported triple imports again with the genome check passing
    import_npz(tmp_path / "out", tmp_path / "s2")
    assert open_dataset(tmp_path / "s2").cells == ["c1"]
