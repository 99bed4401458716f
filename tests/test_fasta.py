"""Reference FASTA access on a tiny hand-written FASTA (10-bp lines, a CpG across a line wrap)."""

from __future__ import annotations

import gzip
import hashlib
import shutil
from pathlib import Path

import numpy as np
import pytest

from cpgformer.codes import decode_sequence
from cpgformer.errors import InputError, UsageError
from cpgformer.io import fasta as fasta_mod
from cpgformer.io.fasta import Reference, SiteClass

FIX = Path(__file__).parent / "fixtures" / "readers"
# chr1 = ACGTACGTAC GTTTCGCGAA NNcgTTTTTT (30 bp; CpGs at 1, 5, 9 (across the wrap), 14, 16, 22)
CHR1 = "ACGTACGTACGTTTCGCGAANNCGTTTTTT"
CHR1_CPGS = [1, 5, 9, 14, 16, 22]


@pytest.fixture
def ref(tmp_path) -> Reference:
    path = tmp_path / "tiny.fa"
    shutil.copy(FIX / "tiny.fa", path)
    return Reference(path, cache=tmp_path / "cache")


def test_contigs_first_word_and_lengths(ref):
    assert ref.contigs == {"chr1": 30, "MT": 8}


def test_fetch_codes_and_padding(ref):
    assert decode_sequence(ref.fetch_codes("chr1", 0, 30)) == CHR1
    assert decode_sequence(ref.fetch_codes("chr1", 8, 12)) == "ACGT"  # across the line wrap
    assert decode_sequence(ref.fetch_codes("chr1", -2, 3)) == "NNACG"
    assert decode_sequence(ref.fetch_codes("chr1", 28, 33)) == "TTNNN"
    assert decode_sequence(ref.fetch_codes("chr1", 40, 42)) == "NN"
    assert ref.fetch_codes("chr1", 5, 5).shape == (0,)
    assert ref.fetch_codes("chr1", 0, 30).dtype == np.int8


def test_windows_centred_and_n_padded(ref):
    w = ref.windows("chr1", np.array([9, 0, 29, 15]), 7)
    assert w.shape == (4, 7) and w.dtype == np.int8
    assert [decode_sequence(x) for x in w] == ["GTACGTT", "NNNACGT", "TTTTNNN", "TTCGCGA"]
    assert all(decode_sequence(x)[3] == CHR1[p] for x, p in zip(w, [9, 0, 29, 15]))
    # even width: the C still sits at index width // 2
    w = ref.windows("chr1", np.array([9]), 4)
    assert decode_sequence(w[0]) == "TACG"
    # contig shorter than the window: N on both sides, no wrapping
    w = ref.windows("MT", np.array([1]), 13)
    assert decode_sequence(w[0]) == "NNNNNCCGGAACG"
    with pytest.raises(UsageError):
        ref.windows("chr1", np.array([1]), 0)


@pytest.mark.parametrize("span, gap", [(3, 4096), (4_000_000, 0), (1, 0)])
def test_windows_batches_match_fetch(ref, monkeypatch, span, gap):
    monkeypatch.setattr(fasta_mod, "_BATCH_SPAN", span)  # force several fetch batches
    monkeypatch.setattr(fasta_mod, "_CLUSTER_GAP", gap)
    pos = np.array([25, 1, 14, 9, 9, 0, 29])
    w = ref.windows("chr1", pos, 5)
    padded = "NN" + CHR1 + "NN"
    assert [decode_sequence(x) for x in w] == [padded[p : p + 5] for p in pos]
    c = ref.classify_sites("chr1", np.arange(-1, 31), 0)
    monkeypatch.setattr(fasta_mod, "_BATCH_SPAN", 4_000_000)
    monkeypatch.setattr(fasta_mod, "_CLUSTER_GAP", 4096)
    assert c.tolist() == ref.classify_sites("chr1", np.arange(-1, 31), 0).tolist()


def test_classify_sites_cpg_across_line_wrap(ref):
    # the C at 9 is the last base of line 1, its G the first base of line 2
    c = ref.classify_sites("chr1", np.array([9, 10, 9, 10]), np.array([1, -1, -1, 1]))
    assert c.tolist() == [SiteClass.PLUS, SiteClass.MINUS, SiteClass.NOT_CPG, SiteClass.NOT_CPG]


def test_classify_sites_all_cases(ref):
    pos = np.arange(-1, 31)
    unstranded = ref.classify_sites("chr1", pos, 0)
    expected = []
    for p in pos.tolist():
        if p < 0 or p >= 30:
            expected.append(SiteClass.OUT_OF_RANGE)
        elif p in CHR1_CPGS:
            expected.append(SiteClass.PLUS)
        elif p - 1 in CHR1_CPGS:
            expected.append(SiteClass.MINUS)
        elif p in (20, 21):
            expected.append(SiteClass.N_BASE)
        else:
            expected.append(SiteClass.NOT_CPG)
    assert unstranded.tolist() == expected
    # CGCG run at 14..17: each position has one unambiguous answer
    assert ref.classify_sites("chr1", np.array([14, 15, 16, 17]), 0).tolist() == [1, 2, 1, 2]
    # soft-masked lower case cg at 22
    assert ref.classify_sites("chr1", np.array([22, 23]), np.array([1, -1])).tolist() == [1, 2]
    # + claim next to N; - claim after N
    assert ref.classify_sites("chr1", np.array([19, 21]), np.array([1, -1])).tolist() == [
        SiteClass.NOT_CPG,
        SiteClass.N_BASE,
    ]
    assert ref.classify_sites("chr1", np.array([20]), np.array([1])).tolist() == [SiteClass.N_BASE]
    assert ref.classify_sites("chrZ", np.array([1, 2]), 0).tolist() == [5, 5]
    assert ref.classify_sites("chr1", np.array([], dtype=np.int64), 0).shape == (0,)


def test_resolve_aliases(ref, tmp_path):
    assert ref.resolve("chr1") == "chr1"
    assert ref.resolve("1") == "chr1"
    for name in ("chrM", "M", "MT", "chrMT"):
        assert ref.resolve(name) == "MT"
    assert ref.resolve("chr2") is None
    mapping, missing = ref.resolve_all(["1", "chrM", "chrL"])
    assert mapping == {"1": "chr1", "chrM": "MT"} and missing == ["chrL"]
    with pytest.raises(UsageError, match="both match"):
        ref.resolve_all(["1", "chr1"])
    # ambiguous alias: FASTA holds both M and chrM -> MT resolves to neither
    amb = tmp_path / "amb.fa"
    amb.write_text(">M\nACGT\n>chrM\nACGT\n>1\nAC\n")
    r = Reference(amb, cache=tmp_path / "c2")
    assert r.resolve("MT") is None
    assert r.resolve("M") == "M" and r.resolve("chr1") == "1"
    with pytest.raises(InputError, match="not in the FASTA"):
        r.fetch_codes("chr9", 0, 2)


def test_identity(ref):
    ident = ref.identity()
    assert ident["contigs"] == [{"name": "chr1", "length": 30}, {"name": "MT", "length": 8}]
    assert ident["fai_sha256"] == hashlib.sha256(ref.index_path.read_bytes()).hexdigest()
    assert ident["path"].endswith("tiny.fa")


def test_read_only_folder_index_goes_to_cache(tmp_path, monkeypatch):
    folder = tmp_path / "ro"
    folder.mkdir()
    shutil.copy(FIX / "tiny.fa", folder / "tiny.fa")
    monkeypatch.setattr(fasta_mod, "_writable", lambda _folder: False)
    r = Reference(folder / "tiny.fa", cache=tmp_path / "cache")
    assert not (folder / "tiny.fa.fai").exists()
    assert r.index_path.exists() and (tmp_path / "cache") in r.index_path.parents
    assert decode_sequence(r.fetch_codes("chr1", 8, 12)) == "ACGT"


def test_gzip_fasta_decompressed_once_into_cache(tmp_path):
    gz = tmp_path / "tiny.fa.gz"
    gz.write_bytes(gzip.compress((FIX / "tiny.fa").read_bytes()))
    r1 = Reference(gz, cache=tmp_path / "cache")
    assert r1.fasta_path.name == "tiny.fa"
    assert (tmp_path / "cache") in r1.fasta_path.parents
    digest = hashlib.sha256(gz.read_bytes()).hexdigest()
    assert digest[:24] == r1.fasta_path.parent.name
    mtime = r1.fasta_path.stat().st_mtime_ns
    r2 = Reference(gz, cache=tmp_path / "cache")
    assert r2.fasta_path == r1.fasta_path and r2.fasta_path.stat().st_mtime_ns == mtime
    assert decode_sequence(r2.fetch_codes("chr1", 0, 30)) == CHR1
    assert r1.identity()["fai_sha256"] == r2.identity()["fai_sha256"]


def test_bad_fasta_inputs(tmp_path):
    with pytest.raises(InputError, match="directory"):
        Reference(tmp_path)
    with pytest.raises(InputError, match="no such"):
        Reference(tmp_path / "none.fa")
    dup = tmp_path / "dup.fa"
    dup.write_text(">a\nACGT\n>a\nACGT\n")
    with pytest.raises(InputError):
        Reference(dup, cache=tmp_path / "c")


def test_lambda_cpg_count_matches_readme(shared, tmp_path):
    r = Reference(shared / "data" / "sequences" / "lambda_virus.fa.gz", cache=tmp_path / "cache")
    (name,) = r.contigs
    assert r.contigs[name] == 48502
    assert name == "gi|9626243|ref|NC_001416.1|"
    classes = r.classify_sites(name, np.arange(48502), 1)
    assert int(np.count_nonzero(classes == SiteClass.PLUS)) == 3113


def test_pickle_and_fork_safe(ref):
    import pickle

    clone = pickle.loads(pickle.dumps(ref))
    assert clone.contigs == ref.contigs
    assert decode_sequence(clone.fetch_codes("chr1", 8, 12)) == "ACGT"
    ref._pid = -1  # as seen from a forked child: the handle is reopened, results unchanged
    assert decode_sequence(ref.fetch_codes("chr1", 0, 30)) == CHR1
