"""Bad inputs through the CLI: exit code 2, one line naming the file (and line), no output left."""

from __future__ import annotations

import gzip

import pytest

from cpgformer.cli import main
from cpgformer.io.store import open_dataset

GOOD = [("chr1", 2, 1, 0), ("chr1", 6, 0, 1), ("chr1", 10, 2, 1), ("chr2", 3, 1, 1)]
# reference for the FASTA cases: CpG C (0-based) at 1, 5, 9 on chr1 and 2 on chr2
FASTA = ">chr1\nACGTTCGAACGT\n>chr2\nTTCGAA\n"


def cov_text(rows) -> str:
    return "".join(f"{c}\t{p}\t{p}\t{100.0 * m / (m + u):.1f}\t{m}\t{u}\n" for c, p, m, u in rows)


def run_bad(tmp_path, capsys, args, must_name, line=None):
    """Run ``cpgformer prepare ARGS -o STORE`` and check the one-line error contract."""
    out = tmp_path / "out" / "store"
    capsys.readouterr()
    code = main(["-q", "prepare", *map(str, args), "-o", str(out)])
    err = capsys.readouterr().err
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    msg = lines[0]
    assert msg.startswith("cpgformer prepare: error: ")
    assert str(must_name) in msg
    if line is not None:
        assert f"{must_name}:{line}:" in msg, msg
    assert not out.exists()
    leftovers = list((tmp_path / "out").iterdir()) if (tmp_path / "out").exists() else []
    assert leftovers == [], leftovers
    return msg


def test_truncated_gzip(tmp_path, capsys) -> None:
    p = tmp_path / "cell.cov.gz"
    data = gzip.compress(cov_text(GOOD * 1).encode() + cov_text([("chr3", 5, 1, 0)] * 1).encode())
    p.write_bytes(data[: len(data) // 2])
    good = tmp_path / "ok.cov"
    good.write_text(cov_text(GOOD))
    msg = run_bad(tmp_path, capsys, [good, p], p)
    assert "gzip" in msg


def test_wrong_column_count(tmp_path, capsys) -> None:
    p = tmp_path / "cell.cov"
    text = cov_text(GOOD).splitlines(keepends=True)
    text[2] = "chr1\t10\t10\t66.7\t2\n"
    p.write_text("".join(text))
    run_bad(tmp_path, capsys, ["--input-format", "bismark-cov", p], p, line=3)


def test_non_numeric_field(tmp_path, capsys) -> None:
    p = tmp_path / "cell.cov"
    text = cov_text(GOOD).splitlines(keepends=True)
    text[1] = "chr1\t6\t6\t0.0\tabc\t1\n"
    p.write_text("".join(text))
    run_bad(tmp_path, capsys, [p], p, line=2)


def test_negative_coordinate(tmp_path, capsys) -> None:
    p = tmp_path / "cell.cov"
    p.write_text(cov_text(GOOD) + "chr1\t-5\t-5\t100.0\t1\t0\n")
    run_bad(tmp_path, capsys, ["--input-format", "bismark-cov", p], p, line=5)


def test_zero_length_interval(tmp_path, capsys) -> None:
    # MethylDackel bedGraph is 0-based half-open: end == start is a zero-length interval
    p = tmp_path / "cell_CpG.bedGraph"
    p.write_text(
        'track type="bedGraph" description="cell CpG methylation levels"\n'
        "chr1\t1\t2\t100\t1\t0\n"
        "chr1\t5\t5\t0\t0\t1\n"
    )
    msg = run_bad(tmp_path, capsys, ["--input-format", "methyldackel", p], p, line=3)
    assert "zero-length" in msg


def test_unsorted_input_is_accepted_and_sorted(tmp_path, capsys) -> None:
    p = tmp_path / "cell.cov"
    p.write_text(cov_text(GOOD[::-1]))
    out = tmp_path / "store"
    assert main(["-q", "prepare", str(p), "-o", str(out)]) == 0
    ds = open_dataset(out)
    assert ds.positions("chr1").tolist() == [1, 5, 9]
    assert ds.counts("chr1", 0, 3)[0][:, 0].tolist() == [1, 0, 2]


def test_repeated_call_within_a_cell(tmp_path, capsys) -> None:
    p = tmp_path / "cell.cov"
    p.write_text(cov_text(GOOD + [("chr1", 6, 1, 0)]))
    msg = run_bad(tmp_path, capsys, [p], p, line=5)
    assert "repeated call at chr1:6" in msg and "line 2" in msg


def test_duplicate_cell_names(tmp_path, capsys) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    pa, pb = tmp_path / "a" / "c1.cov", tmp_path / "b" / "c1.cov.gz"
    pa.write_text(cov_text(GOOD))
    pb.write_bytes(gzip.compress(cov_text(GOOD).encode()))
    msg = run_bad(tmp_path, capsys, [pa, pb], pb)
    assert "duplicate cell name 'c1'" in msg and str(pa) in msg


def test_chromosome_absent_from_fasta(tmp_path, capsys) -> None:
    fa = tmp_path / "ref.fa"
    fa.write_text(FASTA)
    p = tmp_path / "cell.cov"
    p.write_text(cov_text(GOOD + [("chrZ", 3, 1, 0), ("chrZ", 9, 1, 0)]))
    msg = run_bad(tmp_path, capsys, ["--fasta", fa, p], p, line=5)
    assert "unknown_contig 2" in msg and "'chrZ' is not in the FASTA" in msg


def test_position_past_chromosome_end(tmp_path, capsys) -> None:
    fa = tmp_path / "ref.fa"
    fa.write_text(FASTA)
    p = tmp_path / "cell.cov"
    p.write_text(cov_text(GOOD + [("chr2", 40, 1, 0)]))
    msg = run_bad(tmp_path, capsys, ["--fasta", fa, p], p, line=5)
    assert "out_of_range 1" in msg and "past the end of chr2 (length 6)" in msg


def test_few_invalid_rows_are_dropped_not_fatal(tmp_path, capsys) -> None:
    fa = tmp_path / "ref.fa"
    fa.write_text(FASTA)
    p = tmp_path / "cell.cov"
    p.write_text(cov_text(GOOD + [("chr2", 40, 1, 0)]))
    out = tmp_path / "store"
    assert (
        main(
            ["-q", "prepare", "--fasta", str(fa), "--min-valid-frac", "0.5", str(p), "-o", str(out)]
        )
        == 0
    )
    ds = open_dataset(out)
    assert ds.manifest["inputs"][0]["dropped"] == {"out_of_range": 1}
    assert ds.manifest["inputs"][0]["unknown_contigs"] == {}
    assert ds.manifest["n_calls"] == 4


def test_empty_file(tmp_path, capsys) -> None:
    p = tmp_path / "cell.cov"
    p.write_text("")
    good = tmp_path / "ok.cov"
    good.write_text(cov_text(GOOD))
    msg = run_bad(tmp_path, capsys, [good, p], p)
    assert "no calls" in msg


def test_empty_gzip_file(tmp_path, capsys) -> None:
    p = tmp_path / "cell.cov.gz"
    p.write_bytes(gzip.compress(b""))
    run_bad(tmp_path, capsys, [p], p)


def test_directory_where_a_file_was_expected(tmp_path, capsys) -> None:
    d = tmp_path / "cells"
    d.mkdir()
    good = tmp_path / "ok.cov"
    good.write_text(cov_text(GOOD))
    msg = run_bad(tmp_path, capsys, [good, d], d)
    assert "is a directory" in msg


def test_missing_file(tmp_path, capsys) -> None:
    run_bad(tmp_path, capsys, [tmp_path / "nope.cov"], tmp_path / "nope.cov")


@pytest.mark.parametrize("value", ["0", "-1"])
def test_bad_min_cov_option(tmp_path, capsys, value) -> None:
    p = tmp_path / "cell.cov"
    p.write_text(cov_text(GOOD))
    run_bad(tmp_path, capsys, ["--min-cov", value, p], "--min-cov")


def test_existing_output_is_not_overwritten(tmp_path, capsys) -> None:
    p = tmp_path / "cell.cov"
    p.write_text(cov_text(GOOD))
    out = tmp_path / "store"
    assert main(["-q", "prepare", str(p), "-o", str(out)]) == 0
    fp = open_dataset(out).fingerprint
    capsys.readouterr()
    assert main(["prepare", str(p), "-o", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert open_dataset(out).fingerprint == fp


def test_info_on_a_non_store(tmp_path, capsys) -> None:
    capsys.readouterr()
    assert main(["info", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "not a cpgformer store" in err


def test_two_contig_names_for_one_fasta_contig(tmp_path, capsys) -> None:
    fa = tmp_path / "ref.fa"
    fa.write_text(FASTA)
    p = tmp_path / "cell.cov"
    p.write_text(cov_text(GOOD + [("1", 2, 1, 0)]))
    msg = run_bad(tmp_path, capsys, ["--fasta", fa, p], p)
    assert "both match FASTA contig 'chr1'" in msg


def test_error_from_a_worker_process(tmp_path, capsys) -> None:
    good = [tmp_path / f"ok{i}.cov" for i in range(3)]
    for g in good:
        g.write_text(cov_text(GOOD))
    bad = tmp_path / "bad.cov"
    bad.write_text(cov_text(GOOD) + "chr1\t7\t7\t0.0\tx\t1\n")
    run_bad(tmp_path, capsys, ["--jobs", "2", *good, bad], bad, line=5)


def test_unknown_contig_rows_are_listed(tmp_path) -> None:
    fa = tmp_path / "ref.fa"
    fa.write_text(FASTA)
    p = tmp_path / "cell.cov"
    p.write_text(cov_text(GOOD + [("chrL", 3, 1, 0), ("chrL", 9, 1, 0)]))
    out = tmp_path / "store"
    args = ["-q", "prepare", "--fasta", str(fa), "--min-valid-frac", "0.6", str(p), "-o", str(out)]
    assert main(args) == 0
    inp = open_dataset(out).manifest["inputs"][0]
    assert inp["unknown_contigs"] == {"chrL": 2}
    assert inp["dropped"] == {"unknown_contig": 2}


def test_zero_based_coordinates_in_a_one_based_format(tmp_path, capsys) -> None:
    fa = tmp_path / "ref.fa"
    fa.write_text(FASTA)
    # ALLC is 1-based; these rows carry 0-based positions of the C (+) and of the G (-)
    p = tmp_path / "cell.allc.tsv"
    rows = [
        ("chr1", 1, "+"),
        ("chr1", 2, "-"),
        ("chr1", 5, "+"),
        ("chr1", 9, "+"),
        ("chr2", 2, "+"),
    ]
    p.write_text("".join(f"{c}\t{q}\t{s}\tCGN\t1\t1\t1\n" for c, q, s in rows))
    msg = run_bad(tmp_path, capsys, ["--fasta", fa, p], p)
    assert "coordinates look 0-based" in msg
