"""Readers on tiny hand-written fixtures (values known by hand), format detection, every error case."""

from __future__ import annotations

import gzip
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest

from cpgformer.errors import InputError, UsageError
from cpgformer.io.readers import (
    FORMATS,
    ColumnSpec,
    ReadStats,
    detect_format,
    parse_column_spec,
    read_calls,
)

FIX = Path(__file__).parent / "fixtures" / "readers"


def rows(path, fmt=None, spec=None, stats=None, chunk_rows=1_000_000):
    """All calls of a file as a list of (chrom, pos, strand, mc, cov, line, pooled) tuples."""
    out = []
    for c in read_calls(path, fmt=fmt, spec=spec, stats=stats, chunk_rows=chunk_rows):
        assert c.pos.dtype == np.int64 and c.strand.dtype == np.int8
        assert c.mc.dtype == np.int32 and c.cov.dtype == np.int32 and c.line.dtype == np.int64
        for i in range(len(c)):
            out.append(
                (
                    c.chrom,
                    int(c.pos[i]),
                    int(c.strand[i]),
                    int(c.mc[i]),
                    int(c.cov[i]),
                    int(c.line[i]),
                    c.pooled,
                )
            )
    return out


# calls of cell_a in every per-C format: (chrom, 0-based C, strand, mc, cov, line)
CELL_A = [
    ("chr1", 1, 0, 3, 3),
    ("chr1", 2, 0, 1, 2),
    ("chr1", 9, 0, 0, 2),
    ("chr1", 10, 0, 1, 1),
    ("chr1", 15, 0, 2, 3),
    ("chr1", 16, 0, 0, 1),
    ("chr1", 3, 0, 1, 1),
    ("MT", 6, 0, 1, 2),
]


def test_registry_has_all_formats():
    assert set(FORMATS) == {
        "bismark-cov",
        "bismark-zero-cov",
        "bismark-bedgraph",
        "bismark-cpg-report",
        "bismark-merged-cov",
        "methyldackel",
        "methyldackel-fraction",
        "allc",
        "deepcpg",
        "deepcpg-bedgraph",
        "methyldackel-methylkit",
        "methrix",
        "per-c-state",
        "percent-rate",
        "scage",
        "tsv",
    }


def test_bismark_cov_one_based():
    got = rows(FIX / "cell_a.cov", "bismark-cov")
    assert [r[:5] for r in got] == CELL_A
    assert [r[5] for r in got] == list(range(1, 9))
    assert not any(r[6] for r in got)


@pytest.mark.parametrize(
    "name, fmt, first_line",
    [
        ("cell_a.zero.cov", "bismark-zero-cov", 1),
        ("cell_a_CpG.bedGraph", "methyldackel", 2),
    ],
)
def test_zero_based_per_c_formats_match_one_based(name, fmt, first_line):
    got = rows(FIX / name, fmt)
    assert [r[:5] for r in got] == CELL_A
    assert [r[5] for r in got] == list(range(first_line, first_line + 8))


def test_methyldackel_merge_context_rows_are_pooled():
    got = rows(FIX / "cell_d_CpG.bedGraph", "methyldackel")
    # line 2-3: end - start == 2 (pooled, start = + C); line 4: end - start == 1 (per C)
    assert sorted(got, key=lambda r: r[5]) == [
        ("chr1", 1, 1, 4, 5, 2, True),
        ("chr1", 9, 1, 1, 3, 3, True),
        ("chr1", 15, 0, 2, 3, 4, False),
    ]


def test_cpg_report_strands_zero_rows_and_context():
    stats = ReadStats()
    got = rows(FIX / "cell_b.CpG_report.txt", "bismark-cpg-report", stats=stats)
    assert got == [
        ("chr1", 1, 1, 3, 3, 1, False),
        ("chr1", 2, -1, 1, 2, 2, False),
        ("chr1", 9, 1, 0, 2, 5, False),
        ("chr1", 10, -1, 1, 1, 6, False),
    ]
    assert stats.n_skipped_zero == 2
    assert stats.n_skipped_context == 1
    assert stats.n_rows == 7 and stats.n_calls == 4


def test_cpg_report_zero_rows_dropped_before_parsing_keep_line_numbers(tmp_path):
    f = tmp_path / "big.CpG_report.txt.gz"
    lines = []
    for i in range(1, 20001):
        mc, un = (1, 2) if i % 997 == 0 else (0, 0)
        lines.append(f"chr1\t{i}\t{'+' if i % 2 else '-'}\t{mc}\t{un}\tCG\tCGA\n")
    lines.append("chr1\t20001\t+\t0\t10\tCG\tCGA\n")  # 10 unmethylated reads: kept
    f.write_bytes(gzip.compress("".join(lines).encode()))
    stats = ReadStats()
    got = rows(f, "bismark-cpg-report", stats=stats, chunk_rows=4000)
    kept = [i for i in range(1, 20001) if i % 997 == 0] + [20001]
    assert [r[5] for r in got] == kept and [r[1] for r in got] == [i - 1 for i in kept]
    assert stats.n_skipped_zero == 20001 - len(kept) and stats.n_rows == 20001
    # an error after thousands of zero rows still names its own line
    lines[15000] = "chr1\t15001\t+\t1\n"
    f.write_bytes(gzip.compress("".join(lines).encode()))
    with pytest.raises(InputError) as err:
        list(read_calls(f, "bismark-cpg-report"))
    assert err.value.line == 15001
    zero = tmp_path / "zero.CpG_report.txt"
    zero.write_text("chr1\t5\t+\t0\t0\tCG\tCGA\nchr1\t6\t-\t0\t0\tCG\tCGA\n")
    with pytest.raises(InputError, match="no calls .*2 zero-coverage rows"):
        list(read_calls(zero, "bismark-cpg-report"))


def test_merged_cpg_evidence_one_and_zero_based(tmp_path):
    got = rows(FIX / "cell_c.merged_CpG_evidence.cov", "bismark-merged-cov")
    assert got == [
        ("chr1", 1, 1, 4, 5, 1, True),
        ("chr1", 9, 1, 1, 3, 2, True),
        ("MT", 6, 1, 1, 2, 3, True),
    ]
    # --zero_based merged output: 0-based start, end = start + 2
    zero = tmp_path / "z.merged_CpG_evidence.cov"
    zero.write_text("chr1\t1\t3\t80.0\t4\t1\nchr1\t9\t11\t33.3\t1\t2\n")
    assert [r[1] for r in rows(zero, "bismark-merged-cov")] == [1, 9]


def test_fraction_formats():
    stats = ReadStats()
    chunks = list(
        read_calls(FIX / "cell_e_CpG.meth.bedGraph", "methyldackel-fraction", stats=stats)
    )
    assert len(chunks) == 1
    c = chunks[0]
    assert c.pos.tolist() == [1, 2, 9]
    np.testing.assert_allclose(c.frac, [1.0, 0.5, 0.0])
    assert c.mc.tolist() == [1, 1, 0]  # 0.5 counts as methylated (ties methylated)
    assert c.cov.tolist() == [1, 1, 1]
    assert stats.counts_available is False

    c = next(iter(read_calls(FIX / "cell_f.bedGraph", "bismark-bedgraph")))
    assert c.pos.tolist() == [1, 2, 9]
    np.testing.assert_allclose(c.frac, [1.0, 0.25, 0.0])
    assert c.mc.tolist() == [1, 0, 0]


def test_whitespace_padded_bedgraph():
    c = next(iter(read_calls(FIX / "padded.bedGraph", "bismark-bedgraph")))
    assert c.pos.tolist() == [1, 2]
    assert c.line.tolist() == [2, 3]
    np.testing.assert_allclose(c.frac, [1.0, 0.25])


def test_allc_context_filter_strand_total_coverage():
    stats = ReadStats()
    got = rows(FIX / "cell_g.allc.tsv", "allc", stats=stats)
    assert got == [
        ("chr1", 1, 1, 3, 3, 1, False),
        ("chr1", 2, -1, 1, 2, 2, False),
        ("chr1", 9, 1, 0, 2, 5, False),
        ("MT", 7, -1, 1, 2, 6, False),
    ]
    assert stats.n_skipped_context == 2


def test_legacy_allc_header_is_skipped(caplog):
    stats = ReadStats()
    with caplog.at_level(logging.DEBUG, logger="cpgformer.io.readers"):
        got = rows(FIX / "allc_cell_h_1.tsv", "allc", stats=stats)
    assert got == [("1", 1, 1, 3, 3, 2, False), ("1", 2, -1, 1, 2, 3, False)]
    assert stats.header is not None and stats.header.startswith("chr\tpos")
    assert "header" in caplog.text


def test_space_separated_header_over_tab_separated_rows(tmp_path):
    f = tmp_path / "allc_x_1.tsv"
    text = (FIX / "allc_cell_h_1.tsv").read_text().split("\n", 1)[1]
    f.write_text("chr pos strand mc_class mc_count total methylated\n" + text)
    assert rows(f, "allc") == [("1", 1, 1, 3, 3, 2, False), ("1", 2, -1, 1, 2, 3, False)]


def test_deepcpg_one_based_plus_c_with_comments():
    chunks = list(read_calls(FIX / "cell_i.tsv", "deepcpg"))
    assert len(chunks) == 1
    c = chunks[0]
    assert c.pooled
    assert c.pos.tolist() == [1, 9, 14]
    assert c.line.tolist() == [2, 3, 5]
    np.testing.assert_allclose(c.frac, [1.0, 0.0, 1.0])


def test_methylkit_fraction_with_depth():
    stats = ReadStats()
    got = rows(FIX / "cell_k_CpG.methylKit", "methyldackel-methylkit", stats=stats)
    # mc = round(coverage * freqC / 100): 3 * 1.0, 2 * 0.5, 3 * 0.3333 -> 3, 1, 1
    assert got == [
        ("chr1", 1, 1, 3, 3, 2, False),
        ("chr1", 2, -1, 1, 2, 3, False),
        ("chr1", 9, 1, 1, 3, 4, False),
    ]
    assert stats.counts_available and stats.header.startswith("chrBase")


def test_deepcpg_bedgraph_is_one_based():
    c = next(iter(read_calls(FIX / "cell_l.deepcpg.bedGraph", "deepcpg-bedgraph")))
    assert c.pooled and c.pos.tolist() == [1, 9] and c.line.tolist() == [2, 3]
    np.testing.assert_allclose(c.frac, [1.0, 0.25])


def test_custom_spec_vmrseq_csv():
    spec = parse_column_spec("1:2:4:5c:,:1:strand=3")
    assert spec == ColumnSpec(chrom=1, pos=2, meth=4, cov=5, sep=",", header=True, strand=3)
    got = rows(FIX / "cell_j.csv", spec=spec)
    assert got == [
        ("chr1", 1, 1, 3, 3, 2, False),
        ("chr1", 2, -1, 1, 2, 3, False),
        ("chr1", 9, 1, 0, 2, 4, False),
    ]


def test_custom_spec_state_and_fraction(tmp_path):
    f = tmp_path / "states.txt"
    f.write_text("chr2\t100\t1\nchr2\t105\t0\nchr2\t103\t1\n")
    c = next(iter(read_calls(f, spec=parse_column_spec("chrom=1:pos=2:state=3:base=0"))))
    assert (c.pos.tolist(), c.mc.tolist(), c.cov.tolist()) == (
        [100, 105, 103],
        [1, 0, 1],
        [1, 1, 1],
    )
    assert c.strand.tolist() == [0, 0, 0]
    c = next(iter(read_calls(f, spec=parse_column_spec("chrom=1:pos=2:frac=3:base=1:pooled=1"))))
    assert c.pos.tolist() == [99, 104, 102] and c.pooled
    f.write_text("chr2\t100\t1\t4\nchr2\t105\t0\t2\n")
    c = next(iter(read_calls(f, spec=parse_column_spec("1:2:3:4u:\\t:0"))))
    assert c.mc.tolist() == [1, 0] and c.cov.tolist() == [5, 2]
    with pytest.raises(UsageError, match="used for both"):
        parse_column_spec("1:2:3:3u:\\t:0")


def test_parse_column_spec_fields_and_errors():
    s = parse_column_spec("1:2:5:6c:\\t:0")
    assert (s.chrom, s.pos, s.meth, s.cov, s.unmeth, s.sep, s.header, s.base) == (
        1,
        2,
        5,
        6,
        None,
        "\t",
        False,
        1,
    )
    s = parse_column_spec("2:3:4:5u:,:1:base=0")
    assert (s.chrom, s.pos, s.meth, s.unmeth, s.sep, s.header, s.base) == (2, 3, 4, 5, ",", True, 0)
    s = parse_column_spec("chrom=1:pos=2:percent=4")
    assert s.frac == 4 and s.frac_scale == 100.0
    for bad in ("", "1:2:4:5x", "1:2:4:5c:,:1:colour=3", "chrom=1:pos=2", "1:2:4:5c:|:0"):
        with pytest.raises(UsageError):
            parse_column_spec(bad)
    with pytest.raises(UsageError):
        parse_column_spec("chrom=1:pos=2:frac=3:state=4")
    with pytest.raises(UsageError):
        parse_column_spec("chrom=1:pos=2:frac=3:base=2")


def test_gzip_by_magic_bytes_and_crlf(tmp_path):
    plain = rows(FIX / "cell_a.cov", "bismark-cov")
    gz = tmp_path / "cell_a_compressed.txt"  # gzip content under a non-.gz name
    gz.write_bytes(gzip.compress((FIX / "cell_a.cov").read_bytes()))
    assert rows(gz, "bismark-cov") == plain
    named = tmp_path / "plain.cov.gz"  # plain content under a .gz name
    shutil.copy(FIX / "cell_a.cov", named)
    assert rows(named, "bismark-cov") == plain
    crlf = tmp_path / "crlf.cov"
    crlf.write_bytes((FIX / "cell_a.cov").read_bytes().replace(b"\n", b"\r\n"))
    assert rows(crlf, "bismark-cov") == plain
    noeol = tmp_path / "noeol.cov"
    noeol.write_bytes((FIX / "cell_a.cov").read_bytes().rstrip(b"\n"))
    assert rows(noeol, "bismark-cov") == plain


def test_multi_member_gzip_like_bgzf(tmp_path):
    text = (FIX / "cell_a.cov").read_bytes()
    lines = text.splitlines(keepends=True)
    # members split mid-line, as BGZF blocks are, plus the BGZF end-of-file marker (an empty member)
    data = gzip.compress(b"".join(lines[:3]) + lines[3][:5]) + gzip.compress(
        lines[3][5:] + b"".join(lines[4:])
    )
    f = tmp_path / "members.cov.gz"
    f.write_bytes(data + gzip.compress(b""))
    assert rows(f, "bismark-cov") == rows(FIX / "cell_a.cov", "bismark-cov")
    f.write_bytes(data + b"\0" * 64)  # zero padding after the last member is tolerated
    assert rows(f, "bismark-cov") == rows(FIX / "cell_a.cov", "bismark-cov")


def test_track_browser_comment_blank_lines_keep_line_numbers(tmp_path):
    f = tmp_path / "x.cov"
    f.write_text(
        "browser position chr1\ntrack type=bedGraph\n# note\nchr1\t2\t2\t100\t1\t0\n\n"
        "chr1\t5\t5\t0\t0\t3\n# later comment\nchr2\t7\t7\t0\t0\t1\n"
    )
    stats = ReadStats()
    got = rows(f, "bismark-cov", stats=stats)
    assert [(r[0], r[1], r[5]) for r in got] == [("chr1", 1, 4), ("chr1", 4, 6), ("chr2", 6, 8)]
    assert stats.n_skipped_lines == 5


def test_chunks_one_contig_each_unsorted_and_chunk_rows(tmp_path):
    f = tmp_path / "mixed.cov"
    lines = [
        "chr2\t10\t10\t0\t0\t1",
        "chr1\t5\t5\t0\t1\t0",
        "chr2\t3\t3\t0\t0\t1",
        "chr1\t1\t1\t0\t1\t1",
        "chr1\t9\t9\t0\t2\t0",
    ]
    f.write_text("\n".join(lines) + "\n")
    chunks = list(read_calls(f, "bismark-cov", chunk_rows=2))
    assert all(len(c) <= 2 for c in chunks)
    assert all(len({c.chrom}) == 1 for c in chunks)
    per = {}
    for c in chunks:
        per.setdefault(c.chrom, []).extend(zip(c.pos.tolist(), c.line.tolist()))
    assert per == {"chr2": [(9, 1), (2, 3)], "chr1": [(4, 2), (0, 4), (8, 5)]}


def test_line_numbers_in_later_blocks(tmp_path):
    f = tmp_path / "big.cov.gz"
    body = "".join(f"chr1\t{i}\t{i}\t0\t0\t1\n" for i in range(1, 30001))
    bad = body.replace("chr1\t23456\t23456\t0\t0\t1\n", "chr1\t23456\t23456\t0\t0\n")
    f.write_bytes(gzip.compress(body.encode()))
    stats = ReadStats()
    chunks = list(read_calls(f, "bismark-cov", chunk_rows=5000, stats=stats))
    assert stats.n_calls == 30000
    assert np.concatenate([c.line for c in chunks]).tolist() == list(range(1, 30001))
    f.write_bytes(gzip.compress(bad.encode()))
    with pytest.raises(InputError) as err:
        list(read_calls(f, "bismark-cov", chunk_rows=5000))
    assert err.value.line == 23456


@pytest.mark.parametrize(
    "name, expected",
    [
        ("cell_a.cov", "bismark-cov"),
        ("cell_a.zero.cov", "bismark-zero-cov"),
        ("cell_a_CpG.bedGraph", "methyldackel"),
        ("cell_b.CpG_report.txt", "bismark-cpg-report"),
        ("cell_c.merged_CpG_evidence.cov", "bismark-merged-cov"),
        ("cell_d_CpG.bedGraph", "methyldackel"),
        ("cell_e_CpG.meth.bedGraph", "methyldackel-fraction"),
        ("cell_f.bedGraph", "bismark-bedgraph"),
        ("cell_g.allc.tsv", "allc"),
        ("allc_cell_h_1.tsv", "allc"),
        ("cell_i.tsv", "deepcpg"),
        ("padded.bedGraph", "bismark-bedgraph"),
        ("cell_k_CpG.methylKit", "methyldackel-methylkit"),
    ],
)
def test_detect_format(name, expected, tmp_path, caplog):
    with caplog.at_level(logging.DEBUG, logger="cpgformer.io.readers"):
        assert detect_format(FIX / name) == expected
    assert expected in caplog.text
    # content signatures alone (neutral file name, gzip)
    if expected not in ("bismark-merged-cov", "bismark-zero-cov", "methyldackel-fraction"):
        neutral = tmp_path / "cell.dat"
        neutral.write_bytes(gzip.compress((FIX / name).read_bytes()))
        assert detect_format(neutral) == expected
        # and read_calls without a format detects it too
        assert len(rows(neutral)) > 0


@pytest.mark.parametrize(
    "suffix",
    [
        ".counts.bedGraph",
        ".logit.bedGraph",
        ".counts.bedGraph.gz",
        ".NOMe.GpC.cov",
        "_CHG.bedGraph",
        "_CHH.bedGraph.gz",
    ],
)
def test_rejected_methyldackel_outputs(tmp_path, suffix):
    f = tmp_path / ("cell_CpG" + suffix)
    f.write_text("chr1\t1\t2\t5\n")
    with pytest.raises(InputError, match="unsupported input"):
        detect_format(f)
    with pytest.raises(InputError, match="unsupported input"):
        read_calls(f, "methyldackel-fraction")


# ------------------------------------------------------------------------------------- errors


def _err(path, fmt, **kw) -> InputError:
    with pytest.raises(InputError) as err:
        list(read_calls(path, fmt, **kw))
    assert str(path) in str(err.value)
    return err.value


GOOD = "chr1\t2\t2\t100\t1\t0\n"


@pytest.mark.parametrize(
    "fmt, text, line, message",
    [
        (
            "bismark-cov",
            GOOD + "chr1\t3\t3\t100\t1\n",
            2,
            "expected 6 tab-separated columns for bismark-cov, got 5",
        ),
        (
            "bismark-cov",
            GOOD + "chr1\t3\t3\t100\t1\t0\t7\n",
            2,
            "expected 6 tab-separated columns for bismark-cov, got 7",
        ),
        (
            "bismark-cov",
            "chr1\t2\t2\t100\t1\n",
            1,
            "expected 6 tab-separated columns for bismark-cov, got 5",
        ),
        (
            "bismark-cov",
            GOOD + GOOD + "chr1\t3\t3\t100\tabc\t0\n",
            3,
            "column 5 (meth): expected an integer, got 'abc'",
        ),
        ("bismark-cov", GOOD + "chr1\t\t3\t100\t1\t0\n", 2, "column 2 (pos): expected an integer"),
        ("bismark-cov", GOOD + "chr1\t-4\t-4\t100\t1\t0\n", 2, "position must be >= 1"),
        ("bismark-cov", GOOD + "chr1\t0\t0\t100\t1\t0\n", 2, "position must be >= 1"),
        ("bismark-cov", GOOD + "chr1\t9\t8\t100\t1\t0\n", 2, "inverted interval"),
        ("bismark-cov", GOOD + "chr1\t9\t10\t100\t1\t0\n", 2, "expected start == end"),
        ("bismark-cov", GOOD + "chr1\t9\t9\t100\t-1\t0\n", 2, "negative"),
        ("bismark-cov", GOOD + "chr1\t9\t9\t100\t1\t-2\n", 2, "negative"),
        (
            "bismark-zero-cov",
            "chr1\t5\t6\t0\t0\t1\nchr1\t5\t5\t0\t0\t1\n",
            2,
            "zero-length or inverted interval",
        ),
        ("bismark-zero-cov", "chr1\t5\t6\t0\t0\t1\nchr1\t-1\t0\t0\t0\t1\n", 2, "negative position"),
        (
            "methyldackel",
            "chr1\t5\t6\t0\t0\t1\nchr1\t7\t4\t0\t0\t1\n",
            2,
            "zero-length or inverted interval",
        ),
        ("allc", "chr1\t5\t+\tCGA\t1\t1\t1\nchr1\t6\t-\tCGA\t3\t2\t1\n", 2, "exceeds total"),
        ("allc", "chr1\t5\t+\tCGA\t1\t1\t1\nchr1\t6\t?\tCGA\t1\t2\t1\n", 2, "strand"),
        ("deepcpg", "chr1\t5\t0.5\nchr1\t8\t1.5\n", 2, "fraction outside [0, 1]"),
        ("bismark-bedgraph", "chr1\t5\t6\t50\nchr1\t8\t9\t101\n", 2, "percentage outside [0, 100]"),
        ("deepcpg", "chr1\t5\t0.5\nchr1\t8\tnan\n", 2, "column 3 (frac): expected a number"),
    ],
)
def test_bad_content_names_file_and_line(tmp_path, fmt, text, line, message):
    f = tmp_path / "bad.txt"
    f.write_text(text)
    e = _err(f, fmt)
    assert e.line == line, str(e)
    assert message in str(e)
    assert str(e).startswith(f"{f}:{line}: ")


def test_binary_garbage_line(tmp_path):
    f = tmp_path / "bin.cov"
    f.write_bytes(b"chr1\t2\t2\t100\t1\t0\nch\xff\xfe\t3\t3\t100\t1\t0\n")
    e = _err(f, "bismark-cov")
    assert e.line == 2 and "not UTF-8" in str(e)


def test_truncated_gzip(tmp_path):
    data = gzip.compress("".join(f"chr1\t{i}\t{i}\t0\t0\t1\n" for i in range(1, 5000)).encode())
    f = tmp_path / "cut.cov.gz"
    f.write_bytes(data[: len(data) // 2])
    e = _err(f, "bismark-cov")
    assert "truncated or corrupt gzip" in str(e)


def test_corrupt_gzip(tmp_path):
    data = bytearray(gzip.compress(("chr1\t2\t2\t0\t0\t1\n" * 2000).encode()))
    data[20:40] = b"\xff" * 20
    f = tmp_path / "bad.cov.gz"
    f.write_bytes(bytes(data))
    e = _err(f, "bismark-cov")
    assert "truncated or corrupt gzip" in str(e)


@pytest.mark.parametrize(
    "text", ["", "\n\n", "track type=bedGraph\n# nothing here\n", "chrom\tstart\tend\tp\tm\tu\n"]
)
def test_empty_file_no_calls(tmp_path, text):
    f = tmp_path / "empty.cov"
    f.write_text(text)
    e = _err(f, "bismark-cov")
    assert "no calls" in str(e)
    with pytest.raises(InputError, match="no calls"):
        detect_format(f)


def test_all_rows_filtered_no_calls(tmp_path):
    f = tmp_path / "ch_only.allc.tsv"
    f.write_text("chr1\t5\t+\tCHG\t1\t1\t1\nchr1\t6\t+\tCHH\t0\t1\t1\n")
    e = _err(f, "allc")
    assert "no calls" in str(e) and "2 non-CG" in str(e)


def test_directory_and_missing_file(tmp_path):
    with pytest.raises(InputError, match="is a directory"):
        read_calls(tmp_path, "bismark-cov")
    with pytest.raises(InputError, match="is a directory"):
        detect_format(tmp_path)
    with pytest.raises(InputError, match="no such file"):
        read_calls(tmp_path / "missing.cov", "bismark-cov")


def test_unknown_format_and_spec_misuse():
    with pytest.raises(UsageError):
        read_calls(FIX / "cell_a.cov", "bismark")
    with pytest.raises(UsageError):
        read_calls(FIX / "cell_a.cov", "tsv")
    with pytest.raises(UsageError):
        read_calls(FIX / "cell_a.cov", "allc", spec=parse_column_spec("1:2:5:6u:\\t:0"))


def test_undetectable_content(tmp_path):
    f = tmp_path / "odd.txt"
    f.write_text("chr1\t5\tfoo\tbar\tbaz\n")
    with pytest.raises(InputError, match="cannot detect"):
        detect_format(f)


# ------------------------------------------------------------------------------------ real data


def test_allc_shared_cg_rows_counted_independently(shared):
    files = sorted((shared / "data" / "allcools_snmc8").glob("*.allc.tsv.gz"))
    assert len(files) == 8
    for path in files:
        n_cg = n_other = mc_cg = cov_cg = 0
        with gzip.open(path, "rt") as handle:
            for text in handle:
                fields = text.rstrip("\n").split("\t")
                if fields[3].startswith("CG"):
                    n_cg += 1
                    mc_cg += int(fields[4])
                    cov_cg += int(fields[5])
                else:
                    n_other += 1
        stats = ReadStats()
        chunks = list(read_calls(path, stats=stats))
        assert stats.format == "allc"
        assert stats.n_calls == n_cg and stats.n_skipped_context == n_other
        assert sum(int(c.mc.sum()) for c in chunks) == mc_cg
        assert sum(int(c.cov.sum()) for c in chunks) == cov_cg
        assert all(set(np.unique(c.strand).tolist()) <= {-1, 1} for c in chunks)


def test_scbs_file_all_rows_read(shared):
    path = shared / "data" / "scbs_tutorial" / "cell_01.cov.gz"
    with gzip.open(path, "rt") as handle:
        expected = [line.split("\t") for line in handle]
    stats = ReadStats()
    chunks = list(read_calls(path, stats=stats))
    assert stats.format == "bismark-cov"
    assert stats.n_calls == len(expected)
    first = chunks[0]
    assert first.chrom == expected[0][0]
    assert int(first.pos[0]) == int(expected[0][1]) - 1
    assert int(first.mc[0]) == int(expected[0][4])
    assert int(first.cov[0]) == int(expected[0][4]) + int(expected[0][5])


def _reference_parse_allc(text: str):
    """Plain line-by-line ALLC reader: the behaviour read_calls must reproduce."""
    out = []
    for number, line in enumerate(text.split("\n"), start=1):
        line = line.rstrip("\r")
        if not line.strip() or line.startswith(("#", "track", "browser")):
            continue
        f = line.split("\t")
        if len(f) < 2 or not f[1].isdigit():  # the header line
            continue
        if not f[3].startswith("CG"):
            continue
        strand = 1 if f[2] == "+" else -1
        out.append((f[0], int(f[1]) - 1, strand, int(f[4]), int(f[5]), number, False))
    return out


def test_random_allc_matches_plain_reference(tmp_path):
    rng = np.random.default_rng(11)
    lines = ["chr pos strand mc_class mc_count total methylated"]
    for _ in range(3000):
        r = rng.random()
        if r < 0.02:
            lines.append("# note")
        elif r < 0.03:
            lines.append("")
        else:
            cov = int(rng.integers(1, 5))
            ctx = str(rng.choice(["CGA", "CGT", "CGN", "CAG", "CTT", "CHH"]))
            lines.append(
                f"{rng.choice(['chr1', 'chr2', 'chrL'])}\t{int(rng.integers(1, 10**6))}\t"
                f"{rng.choice(['+', '-'])}\t{ctx}\t{int(rng.integers(0, cov + 1))}\t{cov}\t1"
            )
    text = "\r\n".join(lines) + "\r\n"
    f = tmp_path / "random.allc.tsv.gz"
    f.write_bytes(gzip.compress(text.encode()))
    got = rows(f, "allc", chunk_rows=257)
    expected = _reference_parse_allc(text)
    assert sorted(got, key=lambda r: r[5]) == expected
