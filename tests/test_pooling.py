"""Strand pooling (formats.md §3) and the FASTA diagnostics (§4), values known by hand."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from cpgformer.errors import InputError
from cpgformer.io.fasta import Reference
from cpgformer.io.pooling import (
    STRAND_RULE_FASTA,
    STRAND_RULE_NO_FASTA,
    STRAND_RULE_PAIR_ADJACENT,
    check_validity,
    concat_chunks,
    count_adjacent_pairs,
    duplicate_lines,
    merge_pooled,
    offset_diagnostic,
    offset_verdict,
    pair_adjacent_starts,
    pool_chunk,
    pool_sorted,
    random_valid_fraction,
    strand_rule,
    validity_verdict,
)
from cpgformer.io.readers import read_calls
from cpgformer.io.records import CallChunk

FIX = Path(__file__).parent / "fixtures" / "readers"


@pytest.fixture
def ref(tmp_path) -> Reference:
    path = tmp_path / "tiny.fa"
    shutil.copy(FIX / "tiny.fa", path)
    return Reference(path, cache=tmp_path / "cache")


def chunks_by_contig(path, fmt):
    out = {}
    for c in read_calls(path, fmt):
        out.setdefault(c.chrom, []).append(c)
    return {k: concat_chunks(v) for k, v in out.items()}


def as_tuples(p):
    return list(zip(p.start.tolist(), p.mc.tolist(), p.cov.tolist()))


@pytest.mark.parametrize(
    "name, fmt",
    [
        ("cell_a.cov", "bismark-cov"),
        ("cell_a.zero.cov", "bismark-zero-cov"),
        ("cell_a_CpG.bedGraph", "methyldackel"),
    ],
)
def test_unstranded_both_strands_pooled_with_fasta(ref, name, fmt):
    by = chunks_by_contig(FIX / name, fmt)
    p = pool_chunk(by["chr1"], ref)
    # + C at 1 (3/3) and - C at 2 (1/2) -> CpG 1: 4/5; the CpG at 9 crosses the FASTA line wrap:
    # + C 9 (0/2) and - C 10 (1/1) -> 1/3; - C at 15 belongs to CpG 14; + C 16 to CpG 16 (CGCG run)
    assert as_tuples(p) == [(1, 4, 5), (9, 1, 3), (14, 2, 3), (16, 0, 1)]
    assert p.n_dropped_by_reason == {"not_cpg": 1}  # the T at 3
    assert p.n_merged == 2
    assert not p.unanchored
    mt = pool_chunk(by["MT"], ref)
    assert as_tuples(mt) == [(6, 1, 2)]


def test_unstranded_without_fasta_stays_and_counts_pairs():
    by = chunks_by_contig(FIX / "cell_a.cov", "bismark-cov")
    p = pool_chunk(by["chr1"], None)
    assert p.unanchored
    assert p.start.tolist() == [1, 2, 3, 9, 10, 15, 16]
    assert p.n_adjacent_pairs == 4  # (1,2) (2,3) (9,10) (15,16)
    assert p.n_merged == 0 and p.n_dropped_by_reason == {}
    q = pool_chunk(by["chr1"], None, pair_adjacent=True)
    # runs [1,2,3] -> 1,2 paired, 3 alone; [9,10] paired; [15,16] paired (wrong in CGCG: documented)
    assert as_tuples(q) == [(1, 4, 5), (3, 1, 1), (9, 1, 3), (15, 2, 4)]
    assert q.n_merged == 3 and not q.unanchored


def test_stranded_rows_pool_exactly_without_fasta(ref):
    by = chunks_by_contig(FIX / "cell_g.allc.tsv", "allc")
    p = pool_chunk(by["chr1"], None)
    assert as_tuples(p) == [(1, 4, 5), (9, 0, 2)]
    assert not p.unanchored and p.n_merged == 1
    mt = pool_chunk(by["MT"], None)  # - C at 1-based 8 -> + C at 0-based 6
    assert as_tuples(mt) == [(6, 1, 2)]
    # with the FASTA the same result, and the name is resolved through the alias map
    assert as_tuples(pool_chunk(by["chr1"], ref)) == [(1, 4, 5), (9, 0, 2)]
    report = chunks_by_contig(FIX / "cell_b.CpG_report.txt", "bismark-cpg-report")
    assert as_tuples(pool_chunk(report["chr1"], ref)) == [(1, 4, 5), (9, 1, 3)]


def test_stranded_row_on_wrong_strand_is_dropped(ref):
    # + claim on the G of CpG 1 (pos 2) and - claim on the C of CpG 9: both invalid
    chunk = CallChunk(
        "chr1",
        np.array([2, 9, 5, 40]),
        np.array([1, -1, 1, 1], dtype=np.int8),
        np.array([1, 1, 1, 1], dtype=np.int32),
        np.array([1, 1, 2, 1], dtype=np.int32),
        np.arange(1, 5),
    )
    p = pool_chunk(chunk, ref)
    assert as_tuples(p) == [(5, 1, 2)]
    assert p.n_dropped_by_reason == {"not_cpg": 2, "out_of_range": 1}


def test_pooled_rows_checked_and_aliases_resolved(ref):
    chunk = CallChunk(
        "1",  # alias of chr1
        np.array([1, 9, 3, 20]),
        np.ones(4, dtype=np.int8),
        np.array([4, 1, 1, 1], dtype=np.int32),
        np.array([5, 3, 1, 1], dtype=np.int32),
        np.arange(1, 5),
        pooled=True,
    )
    p = pool_chunk(chunk, ref)
    assert p.chrom == "chr1"
    assert as_tuples(p) == [(1, 4, 5), (9, 1, 3)]
    assert p.n_dropped_by_reason == {"not_cpg": 1, "n_base": 1}
    unknown = CallChunk("chrL", np.array([1]), np.ones(1, np.int8), np.ones(1, np.int32),
                        np.ones(1, np.int32), np.array([1]), pooled=True)  # fmt: skip
    u = pool_chunk(unknown, ref)
    assert len(u) == 0 and u.n_dropped_by_reason == {"unknown_contig": 1}
    # without FASTA pooled rows are taken as given
    assert pool_chunk(chunk, None).start.tolist() == [1, 3, 9, 20]


def test_fraction_inputs_pool_mean_fraction(ref):
    c = next(iter(read_calls(FIX / "cell_e_CpG.meth.bedGraph", "methyldackel-fraction")))
    p = pool_chunk(c, ref)
    # + C 1 (1.0) and - C 2 (0.5) -> CpG 1: mc 2 of cov 2, mean fraction 0.75; CpG 9: 0.0
    assert as_tuples(p) == [(1, 2, 2), (9, 0, 1)]
    np.testing.assert_allclose(p.frac, [0.75, 0.0])


def test_pool_sorted_matches_dict_reference():
    rng = np.random.default_rng(3)
    start = rng.integers(0, 50, size=300)
    mc = rng.integers(0, 3, size=300)
    cov = mc + rng.integers(0, 3, size=300)
    s, m, c, f = pool_sorted(start, mc, cov)
    ref = {}
    for a, b, d in zip(start.tolist(), mc.tolist(), cov.tolist()):
        x = ref.setdefault(a, [0, 0])
        x[0] += b
        x[1] += d
    assert s.tolist() == sorted(ref)
    assert m.tolist() == [ref[k][0] for k in sorted(ref)]
    assert c.tolist() == [ref[k][1] for k in sorted(ref)]
    assert f is None and m.dtype == np.int32 and c.dtype == np.int32
    s, m, c, f = pool_sorted(np.array([], dtype=np.int64), np.array([]), np.array([]))
    assert len(s) == len(m) == len(c) == 0


def test_pair_adjacent_and_count():
    starts = np.array([1, 2, 3, 4, 5, 9, 10, 20])
    assert pair_adjacent_starts(starts).tolist() == [1, 1, 3, 3, 5, 9, 9, 20]
    assert count_adjacent_pairs(starts) == 5
    assert count_adjacent_pairs(np.array([7])) == 0


def test_duplicate_lines():
    pos = np.array([5, 7, 5, 7, 5])
    strand = np.array([1, 1, -1, 1, 1])
    assert duplicate_lines(pos, strand, np.array([10, 11, 12, 13, 14])) == (11, 13)
    assert duplicate_lines(np.array([5, 5]), np.array([1, -1]), np.array([1, 2])) is None


def test_merge_pooled_equals_pooling_the_concatenation(ref):
    whole = chunks_by_contig(FIX / "cell_a.cov", "bismark-cov")["chr1"]
    parts = list(read_calls(FIX / "cell_a.cov", "bismark-cov", chunk_rows=2))
    pooled = [pool_chunk(c, ref) for c in parts if c.chrom == "chr1"]
    merged = merge_pooled(pooled)
    direct = pool_chunk(whole, ref)
    assert as_tuples(merged) == as_tuples(direct)
    assert merged.n_dropped_by_reason == direct.n_dropped_by_reason
    assert merged.n_merged == direct.n_merged
    loose = merge_pooled([pool_chunk(c, None) for c in parts if c.chrom == "chr1"])
    assert loose.unanchored and loose.n_adjacent_pairs == 4


def test_strand_rule_strings(ref):
    assert strand_rule(ref, False) == STRAND_RULE_FASTA
    assert strand_rule(None, False) == STRAND_RULE_NO_FASTA
    assert strand_rule(None, True) == STRAND_RULE_PAIR_ADJACENT


def test_offset_diagnostic_catches_base_mixup(ref, tmp_path):
    # a 0-based file (MethylDackel-style per-C rows) read as if it were 1-based Bismark .cov
    f = tmp_path / "zero_based_as_cov.cov"
    f.write_text("".join(f"chr1\t{p}\t{p}\t100\t1\t0\n" for p in [1, 5, 9, 22, 10]))
    chunks = list(read_calls(f, "bismark-cov"))
    diag = offset_diagnostic(ref, chunks)
    # read as 1-based, positions are one too small: all valid at +1; as read only the - C at 10
    # (now at 9, the + C of the same CpG) stays valid; at -1 none is
    assert diag == {-1: 0.0, 0: pytest.approx(1 / 5), 1: 1.0}
    message = offset_verdict(diag)
    assert message is not None and "look 0-based" in message
    good = list(read_calls(FIX / "cell_a.cov", "bismark-cov"))
    diag = offset_diagnostic(ref, good)
    assert diag[0] == pytest.approx(7 / 8)
    assert offset_verdict(diag) is None
    assert offset_diagnostic(ref, [CallChunk("chrL", np.array([1]), np.zeros(1, np.int8),
                             np.ones(1, np.int32), np.ones(1, np.int32), np.array([1]))]) == {}  # fmt: skip


def test_validity_verdict_thresholds(tmp_path):
    assert validity_verdict(96, {"not_cpg": 4}) is None
    msg = validity_verdict(90, {"not_cpg": 6, "out_of_range": 4})
    assert msg is not None and "90.0%" in msg and "not_cpg 6" in msg and "out_of_range 4" in msg
    assert "genome build" not in msg
    msg = validity_verdict(3, {"not_cpg": 97}, random_fraction=0.02)
    assert msg is not None and "wrong genome build or species?" in msg
    assert "genome build" in (validity_verdict(5, {"not_cpg": 95}) or "")
    assert validity_verdict(0, {}) is None
    with pytest.raises(InputError, match="cell.cov: only"):
        check_validity("cell.cov", 1, {"not_cpg": 9})


def test_random_valid_fraction_lambda(shared, tmp_path):
    r = Reference(shared / "data" / "sequences" / "lambda_virus.fa.gz", cache=tmp_path / "cache")
    expected = 2 * 3113 / 48502  # either strand's C of a CpG
    assert random_valid_fraction(r, n=20_000) == pytest.approx(expected, abs=0.015)
    assert random_valid_fraction(r, stranded=True, n=20_000) == pytest.approx(
        expected / 2, abs=0.01
    )


def test_random_pooling_matches_plain_reference(tmp_path):
    """Unstranded and stranded calls on a random genome vs a dict-based reference implementation."""
    rng = np.random.default_rng(5)
    genome = "".join(rng.choice(list("ACGT"), size=3000, p=[0.2, 0.3, 0.3, 0.2]))
    fa = tmp_path / "g.fa"
    fa.write_text(">g\n" + "\n".join(genome[i : i + 61] for i in range(0, 3000, 61)) + "\n")
    ref = Reference(fa, cache=tmp_path / "cache")
    pos = rng.integers(-2, 3003, size=1500)
    strand = rng.choice(np.array([-1, 0, 1], dtype=np.int8), size=1500)
    mc = rng.integers(0, 3, size=1500).astype(np.int32)
    cov = (mc + rng.integers(0, 3, size=1500)).astype(np.int32)
    chunk = CallChunk("g", pos, strand, mc, cov, np.arange(1, 1501))
    got = pool_chunk(chunk, ref)

    def base(i):
        return genome[i] if 0 <= i < len(genome) else "N"

    expected: dict[int, list[int]] = {}
    n_bad = 0
    for p, s, m, c in zip(pos.tolist(), strand.tolist(), mc.tolist(), cov.tolist()):
        plus = base(p) == "C" and base(p + 1) == "G"
        minus = base(p - 1) == "C" and base(p) == "G"
        if (s >= 0 and plus) or (s <= 0 and minus and not (s == 0 and plus)):
            site = p if (s >= 0 and plus) else p - 1
            e = expected.setdefault(site, [0, 0])
            e[0] += m
            e[1] += c
        else:
            n_bad += 1
    assert as_tuples(got) == [(k, v[0], v[1]) for k, v in sorted(expected.items())]
    assert got.n_dropped == n_bad
