"""Common tables read without guessing: methrix counts, per-C 0/1 calls, comma/semicolon and
percent-rate tables, scAge's fused chrom_pos column, MethSCAn's prepared matrices, a '#' header
with header=1, '*' strands; and prepare --skip-empty."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

from cpgformer.cli import main
from cpgformer.errors import InputError, NoCallsError
from cpgformer.io.readers import ReadStats, detect, parse_column_spec, read_calls
from cpgformer.io.store import open_dataset


def calls(path: Path, **kw: object) -> list[tuple[str, int, int, int, int, bool]]:
    """(chrom, 0-based pos, strand, mc, cov, pooled) of every call, in file order."""
    out = []
    for c in read_calls(path, **kw):  # type: ignore[arg-type]
        for i in range(len(c)):
            out.append(
                (c.chrom, int(c.pos[i]), int(c.strand[i]), int(c.mc[i]), int(c.cov[i]), c.pooled)
            )
    return sorted(out, key=lambda r: (r[0], r[1]))


@pytest.fixture(autouse=True)
def _propagate(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(logging.getLogger("cpgformer"), "propagate", True)


# ------------------------------------------------------------------------------- detection


METHRIX = "chr1\t3014555\t1\t0\nchr1\t3014556\t0\t2\nchr1\t3020690\t3\t1\n"


@pytest.mark.parametrize("header", ["", "chrom\tpos\tM\tU\n"])
def test_methrix_counts_bedgraph(tmp_path: Path, header: str) -> None:
    f = tmp_path / "cell1.bedGraph"  # methrix names it .bedGraph; the content is chrom pos M U
    f.write_text(header + METHRIX)
    found = detect(f)
    assert found.format == ("methrix" if not header else "tsv")
    assert calls(f) == [
        ("chr1", 3014554, 0, 1, 1, False),
        ("chr1", 3014555, 0, 0, 2, False),
        ("chr1", 3020689, 0, 3, 4, False),
    ]


def test_per_c_zero_one_table_is_not_read_as_pooled_deepcpg(tmp_path: Path, capfd) -> None:
    f = tmp_path / "cell.tsv"  # chr pos 0/1, both strands of the CpG at 100/101
    f.write_text("chr1\t100\t1\nchr1\t101\t0\nchr1\t250\t1\nchr2\t7\t0\n")
    assert detect(f).format == "per-c-state"
    got = calls(f)
    assert got[:2] == [("chr1", 99, 0, 1, 1, False), ("chr1", 100, 0, 0, 1, False)]
    assert not any(r[5] for r in got)  # unstranded per-C rows, not pooled CpGs
    # prepare (no FASTA) now warns about the unpooled strand pair it used to hide
    assert main(["prepare", str(f), "-o", str(tmp_path / "s")]) == 0
    assert "WARNING cpgformer.prepare: 1 adjacent (x, x+1) call pairs" in capfd.readouterr().err
    # fractions are a DeepCpG profile (one row per CpG)
    g = tmp_path / "profile.tsv"
    g.write_text("chr1\t100\t0.25\nchr1\t250\t1\n")
    assert detect(g).format == "deepcpg"


@pytest.mark.parametrize(
    "text, fmt",
    [
        ("chr,pos,meth,unmeth\nchr1,100,1,0\nchr1,200,2,2\n", "tsv"),  # header names the columns
        ("chr1,100,1,0\nchr1,200,2,2\n", "methrix"),  # comma-separated counts, no header
        ("chr1,100,100,100.0,1,0\nchr1,200,200,50.0,2,2\n", "bismark-cov"),
        ("chrom;pos;M;U\nchr1;100;1;0\nchr1;200;2;2\n", "tsv"),  # semicolons
    ],
)
def test_comma_and_semicolon_tables(tmp_path: Path, text: str, fmt: str) -> None:
    f = tmp_path / "cell.csv"
    f.write_text(text)
    assert detect(f).format == fmt
    assert [(r[1], r[3], r[4]) for r in calls(f)] == [(99, 1, 1), (199, 2, 4)]


@pytest.mark.parametrize(
    "text",
    [
        "chr1\t100\t100.0\nchr1\t200\t0.0\nchr1\t300\t75\n",  # chrom pos percent
        "chrom,position,rate\nchr1,100,100\nchr1,200,0\nchr1,300,75\n",  # rate as percent
        "chrom\tpos\tmeth_pct\nchr1\t100\t100\nchr1\t200\t0\nchr1\t300\t75\n",
    ],
)
def test_percent_rate_tables(tmp_path: Path, text: str) -> None:
    f = tmp_path / "rates.txt"
    f.write_text(text)
    stats = ReadStats()
    got = calls(f, stats=stats)
    assert [(r[1], r[3], r[4]) for r in got] == [(99, 1, 1), (199, 0, 1), (299, 1, 1)]
    assert not stats.counts_available  # rates only: cov 1 nominal, the cell gets flagged
    fracs = np.concatenate([c.frac for c in read_calls(f)])
    np.testing.assert_allclose(np.sort(fracs), [0.0, 0.75, 1.0])


def test_scage_fused_chrom_pos(tmp_path: Path) -> None:
    f = tmp_path / "sc.tsv"
    f.write_text("chr1_3014555\t1\nchr1_3014700\t0\nchr_Un_12_55\t1\n")
    assert detect(f).format == "scage"
    assert calls(f) == [
        ("chr1", 3014554, 0, 1, 1, False),
        ("chr1", 3014699, 0, 0, 1, False),
        ("chr_Un_12", 54, 0, 1, 1, False),
    ]
    bad = tmp_path / "bad.tsv"
    bad.write_text("chr1_3014555\t1\nchr1\t0\n")
    with pytest.raises(InputError, match=r"bad.tsv:2: expected 2 tab-separated columns"):
        list(read_calls(bad, "scage"))


def test_header_one_with_a_hash_header_keeps_every_call(tmp_path: Path) -> None:
    f = tmp_path / "h.tsv"
    rows = "".join(f"chr1\t{100 + 10 * i}\t1\t2\n" for i in range(13))
    spec = parse_column_spec("1:2:3:4c:\\t:1")
    for head in ("#chrom\tpos\tmeth\tcov\n", "# a comment\nchrom\tpos\tmeth\tcov\n", ""):
        f.write_text(head + rows)
        assert len(calls(f, spec=spec)) == 13  # header=1 never costs a call
        assert len(calls(f)) == 13  # detected from the header names (or the shape) alike


def test_methscan_format_needs_a_methscan_directory(tmp_path: Path, capfd) -> None:
    f = tmp_path / "c.cov"
    f.write_text("1\t3\t3\t100\t1\t0\n")
    assert main(["prepare", str(f), "--input-format", "methscan", "-o", str(tmp_path / "s")]) == 2
    assert "column_header.txt" in capfd.readouterr().err


def test_semicolon_separator_and_star_strand(tmp_path: Path) -> None:
    f = tmp_path / "s.txt"
    f.write_text("chr1;10;*;1;2\nchr1;11;-;0;1\nchr1;40;+;2;2\n")
    spec = parse_column_spec("chrom=1:pos=2:strand=3:meth=4:cov=5:sep=;")
    assert calls(f, spec=spec) == [
        ("chr1", 9, 0, 1, 2, False),  # '*' = strand unknown
        ("chr1", 10, -1, 0, 1, False),
        ("chr1", 39, 1, 2, 2, False),
    ]


def test_undetectable_table_names_a_column_spec_that_works(tmp_path: Path) -> None:
    f = tmp_path / "odd.csv"
    f.write_text("contig_name,location,hits,depth,score\nchr1,100,1,2,x\nchr1,200,0,3,y\n")
    with pytest.raises(InputError) as err:
        detect(f)
    message = str(err.value)
    assert message.count("\n") == 0 and "--columns chrom=1:pos=2:meth=3:unmeth=4" in message
    suggested = message.split("--columns ")[1].split(" ")[0].replace("unmeth=4", "cov=4")
    assert calls(f, spec=parse_column_spec(suggested)) == [
        ("chr1", 99, 0, 1, 2, False),
        ("chr1", 199, 0, 0, 3, False),
    ]


# ---------------------------------------------------------------------------------- MethSCAn


def write_methscan(directory: Path) -> None:
    """MethSCAn prepare's layout: <chrom>.npz (rows = 1-based positions, 1/-1) + cell names."""
    directory.mkdir()
    # chr "1" (ref below): + C of the CpG at 1-based 11/12 and the - C at 12; calls at 40/41
    rows = np.array([11, 12, 12, 40, 41])
    cols = np.array([0, 0, 2, 1, 1])
    vals = np.array([1, -1, 1, -1, -1], dtype=np.int8)
    sp.save_npz(directory / "1.npz", sp.coo_matrix((vals, (rows, cols)), shape=(60, 3)).tocsr())
    m2 = sp.coo_matrix((np.array([1], np.int8), (np.array([5]), np.array([2]))), shape=(9, 3))
    sp.save_npz(directory / "2.npz", m2.tocsr())
    (directory / "column_header.txt").write_text("a\nb\nc\n")
    (directory / "cell_stats.csv").write_text("cell_name,n_obs,n_meth\na,2,1\nb,2,0\nc,2,2\n")


def test_methscan_prepared_matrices(tmp_path: Path) -> None:
    ms = tmp_path / "methscan"
    write_methscan(ms)
    assert main(["prepare", str(ms), "-o", str(tmp_path / "s")]) == 0
    ds = open_dataset(tmp_path / "s")
    assert ds.cells == ["a", "b", "c"] and ds.chromosomes == ["1", "2"]
    assert ds.positions("1").tolist() == [10, 11, 39, 40]
    assert ds.states("1", 0, 4).tolist() == [[1, -1, -1], [0, -1, 1], [-1, 0, -1], [-1, 0, -1]]
    assert ds.states("2", 0, 1).tolist() == [[-1, -1, 1]]
    assert "counts_unavailable" in ds.cell_table["flags"].iloc[0]
    # the .npz files themselves (as a shell glob gives them): the same store
    files = [str(ms / "1.npz"), str(ms / "2.npz")]
    assert main(["prepare", *files, "-o", str(tmp_path / "s2")]) == 0
    assert open_dataset(tmp_path / "s2").fingerprint == ds.fingerprint
    # with a FASTA: the - strand call at 12 joins the + call at 11 (cell c), 40/41 are no CpG
    fasta = tmp_path / "ref.fa"
    fasta.write_text(">1\n" + "A" * 10 + "CG" + "A" * 48 + "\n>2\nAAAACGAAA\n")
    assert main(["prepare", str(ms), "--fasta", str(fasta), "-o", str(tmp_path / "s3")]) == 0
    pooled = open_dataset(tmp_path / "s3")
    assert pooled.positions("1").tolist() == [10]
    mc, cov = pooled.counts("1", 0, 1)
    assert mc.tolist() == [[1, 0, 1]] and cov.tolist() == [[2, 0, 1]]
    assert pooled.positions("2").tolist() == [4]
    assert pooled.manifest["dropped"] == {"not_cpg": 2}


def test_methscan_matrix_given_as_a_call_file_is_one_clear_line(tmp_path: Path) -> None:
    ms = tmp_path / "methscan"
    write_methscan(ms)
    with pytest.raises(InputError) as err:
        list(read_calls(ms / "1.npz"))
    text = str(err.value)
    assert "\n" not in text and text.isprintable()
    assert "zip archive" in text and "MethSCAn" in text
    with pytest.raises(InputError, match=r"1\.npz: not a text call table: a zip archive"):
        list(read_calls(ms / "1.npz", "bismark-cov"))  # a format given: the same one line
    bad = tmp_path / "other"
    bad.mkdir()
    (bad / "column_header.txt").write_text("a\nb\n")
    sp.save_npz(bad / "1.npz", sp.csr_matrix(np.ones((3, 3), dtype=np.int8)))
    assert main(["prepare", str(bad), "-o", str(tmp_path / "o")]) == 2
    assert not (tmp_path / "o").exists()


# ------------------------------------------------------------------------- prepare --skip-empty


def test_prepare_skip_empty_lists_cells_without_calls(tmp_path: Path, capfd) -> None:
    cells = tmp_path / "cells"
    cells.mkdir()
    (cells / "c1.cov").write_text("1\t11\t11\t100\t1\t0\n1\t41\t41\t0\t0\t2\n")
    (cells / "c2.cov").write_text("")  # empty file
    (cells / "c3.cov").write_text("1\t11\t11\t100\t2\t0\n")
    (cells / "c4.cov").write_text("track type=bedGraph\n")  # header only
    (cells / "c5.CpG_report.txt").write_text("1\t5\t+\t0\t0\tCG\tCGA\n")  # zero coverage only
    files = [str(p) for p in sorted(cells.iterdir())]
    out = tmp_path / "store"
    assert main(["prepare", *files, "-o", str(out)]) == 2
    err = capfd.readouterr().err
    assert err.count("\n") == 1 and "c2.cov: no calls" in err and "--skip-empty" in err
    assert not out.exists()
    for jobs in ("1", "2"):
        args = ["prepare", *files, "-o", str(out), "--skip-empty", "--jobs", jobs, "--overwrite"]
        assert main(args) == 0
        manifest = json.loads((out / "manifest.json").read_text())
        assert [c["cell"] for c in manifest["skipped_empty"]] == ["c2", "c4", "c5.CpG_report"]
        assert [c["path"] for c in manifest["skipped_empty"]] == [files[1], files[3], files[4]]
        assert "zero-coverage" in manifest["skipped_empty"][2]["reason"]
        assert manifest["parameters"]["skip_empty"] is True
        ds = open_dataset(out)
        assert ds.cells == ["c1", "c3"] and ds.n_cells == manifest["n_cells"] == 2
        assert [i["cell"] for i in manifest["inputs"]] == ["c1", "c3"]
        err = capfd.readouterr().err
        assert "3 cell(s) without calls left out" in err
        summary = [line for line in err.splitlines() if "prepared" in line]
        assert len(summary) == 1 and "2 cells (3 without calls skipped)" in summary[0]
        assert "5 files" in summary[0]
    # every file empty: an error, nothing written
    only_empty = [files[1], files[3]]
    code = main(["prepare", *only_empty, "-o", str(tmp_path / "none"), "--skip-empty"])
    assert code == 2 and not (tmp_path / "none").exists()
    with pytest.raises(NoCallsError):
        list(read_calls(files[1], "bismark-cov"))


def test_prepare_logs_one_summary_line_not_one_line_per_file(tmp_path: Path, capfd) -> None:
    cells = tmp_path / "cells"
    cells.mkdir()
    for k in range(6):
        (cells / f"c{k}.cov").write_text(f"1\t{11 + k}\t{11 + k}\t100\t1\t0\n")
    assert main(["prepare", *map(str, sorted(cells.iterdir())), "-o", str(tmp_path / "s")]) == 0
    err = capfd.readouterr().err
    lines = [line for line in err.splitlines() if "cpgformer" in line]
    assert len(lines) == 1 and "6 cells" in lines[0] and "6 bismark-cov" in lines[0]


def test_prepare_with_fasta_sums_invalid_rows_in_one_warning(tmp_path: Path, capfd) -> None:
    fasta = tmp_path / "ref.fa"
    fasta.write_text(">1\nAACGTTTTCGAAAAAAAAAA\n")  # CpGs at 0-based 2 and 8
    cells = tmp_path / "cells"
    cells.mkdir()
    for k in range(3):  # the + C at 1-based 3, the - C at 10, and a row on no CpG (1-based 15)
        (cells / f"c{k}.cov").write_text(
            "1\t3\t3\t100\t1\t0\n1\t10\t10\t0\t0\t1\n1\t15\t15\t0\t0\t1\n"
        )
    files = [str(p) for p in sorted(cells.iterdir())]
    args = ["prepare", *files, "--fasta", str(fasta), "--min-valid-frac", "0.5", "-o"]
    assert main([*args, str(tmp_path / "s")]) == 0
    lines = [line for line in capfd.readouterr().err.splitlines() if "cpgformer" in line]
    assert len(lines) == 2, lines  # the summary and one warning, not one line per file
    assert (
        "3 of 3 files had calls invalid against the FASTA, 3 dropped in all (not_cpg 3"
        in (lines[1])
    )
    ds = open_dataset(tmp_path / "s")
    assert ds.positions("1").tolist() == [2, 8]
