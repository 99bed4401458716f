from __future__ import annotations

import json
import os
import stat

import numpy as np
import pytest

import cpgformer
from cpgformer.errors import InputError, UsageError
from cpgformer.io.store import ChromArrays, open_dataset, write_store


def _chr1() -> ChromArrays:
    # sites x cells (3 cells); entries "mc/cov", "." missing
    #   pos 10:  1/1  .    0/2
    #   pos 12:  .    .    .        (a site with no call)
    #   pos 40:  1/3  2/2  .
    #   pos 41:  .    0/1  1/2
    return ChromArrays(
        name="chr1",
        positions=np.array([10, 12, 40, 41], dtype=np.int64),
        indptr=np.array([0, 2, 2, 4, 6], dtype=np.int64),
        cell=np.array([0, 2, 0, 1, 1, 2], dtype=np.int32),
        mc=np.array([1, 0, 1, 2, 0, 1], dtype=np.int32),
        cov=np.array([1, 2, 3, 2, 1, 2], dtype=np.int32),
        label=np.array([1, 0, 0, 1, 0, 1], dtype=np.int8),
    )


def _chr2() -> ChromArrays:
    #   pos 5:   .    1/1  .
    return ChromArrays(
        name="chr2",
        positions=np.array([5], dtype=np.int64),
        indptr=np.array([0, 1], dtype=np.int64),
        cell=np.array([1], dtype=np.int32),
        mc=np.array([1], dtype=np.int32),
        cov=np.array([1], dtype=np.int32),
        label=np.array([1], dtype=np.int8),
    )


@pytest.fixture()
def store(tmp_path):
    path = tmp_path / "store"
    write_store(
        path,
        [_chr1(), _chr2()],
        ["a", "b", "c"],
        manifest_extra={"parameters": {"min_cov": 1}, "strand_rule": "test"},
        cell_info={"name": ["c", "a", "b"], "source_file": ["c.cov", "a.cov", "b.cov"]},
    )
    return path


def test_round_trip_values(store) -> None:
    ds = cpgformer.open_dataset(store)
    assert ds.cells == ["a", "b", "c"] and ds.n_cells == 3
    assert ds.chromosomes == ["chr1", "chr2"]
    assert ds.n_sites("chr1") == 4 and ds.n_sites("chr2") == 1
    assert ds.positions("chr1").tolist() == [10, 12, 40, 41]
    assert isinstance(ds.positions("chr1"), np.memmap)
    assert ds.manifest["parameters"] == {"min_cov": 1}
    assert ds.manifest["strand_rule"] == "test"
    assert ds.manifest["n_sites"] == 5 and ds.manifest["n_calls"] == 7
    assert [c["n_calls"] for c in ds.manifest["chromosomes"]] == [6, 1]
    assert ds.fasta_path is None
    indptr, cell, mc, cov, label = ds.csr("chr1")
    assert all(isinstance(a, np.memmap) for a in (indptr, cell, mc, cov, label))
    assert indptr.tolist() == [0, 2, 2, 4, 6] and cell.tolist() == [0, 2, 0, 1, 1, 2]
    assert cell.dtype == np.int32 and label.dtype == np.int8 and indptr.dtype == np.int64


def test_store_directory_mode_follows_umask(store) -> None:
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(store.stat().st_mode) == 0o777 & ~umask


def test_dense_views(store) -> None:
    ds = open_dataset(store)
    assert ds.states("chr1", 0, 4).tolist() == [[1, -1, 0], [-1, -1, -1], [0, 1, -1], [-1, 0, 1]]
    mc, cov = ds.counts("chr1", 0, 4)
    assert mc.tolist() == [[1, 0, 0], [0, 0, 0], [1, 2, 0], [0, 0, 1]]
    assert cov.tolist() == [[1, 0, 2], [0, 0, 0], [3, 2, 0], [0, 1, 2]]
    b = ds.betas("chr1", 0, 4)
    assert b.dtype == np.float32
    np.testing.assert_allclose(
        b, [[1, -1, 0], [-1, -1, -1], [1 / 3, 1, -1], [-1, 0, 0.5]], rtol=1e-6
    )
    assert ds.states("chr2", 0, 1).tolist() == [[-1, 1, -1]]


def test_segment_slicing_at_boundaries(store) -> None:
    ds = open_dataset(store)
    full = ds.states("chr1", 0, 4)
    for start in range(5):
        for stop in range(start, 5):
            seg = ds.states("chr1", start, stop)
            assert seg.shape == (stop - start, 3)
            np.testing.assert_array_equal(seg, full[start:stop])
    assert ds.states("chr1", 1, 2).tolist() == [[-1, -1, -1]]  # empty row
    with pytest.raises(UsageError):
        ds.states("chr1", 3, 5)
    with pytest.raises(UsageError):
        ds.states("chrX", 0, 1)


def test_cell_table(store) -> None:
    t = open_dataset(store).cell_table
    assert t["name"].tolist() == ["a", "b", "c"]
    assert t["source_file"].tolist() == ["a.cov", "b.cov", "c.cov"]
    # a: (1,1,l1) (1,3,l0); b: (2,2,l1) (0,1,l0) (1,1,l1); c: (0,2,l0) (1,2,l1)
    assert t["n_calls"].tolist() == [2, 3, 2]
    assert t["n_meth"].tolist() == [1, 2, 1]
    np.testing.assert_allclose(t["global_meth_frac"], [0.5, 2 / 3, 0.5])
    np.testing.assert_allclose(t["mean_cov"], [2.0, 4 / 3, 2.0])


def test_fingerprint_changes_with_one_call(tmp_path) -> None:
    fp = []
    for i, mc0 in enumerate([1, 1, 0]):
        ch = _chr1()
        ch.mc[0] = mc0  # stores 0 and 1 are identical, store 2 differs in one count
        m = write_store(tmp_path / f"s{i}", [ch, _chr2()], ["a", "b", "c"])
        fp.append(m["fingerprint"])
        assert open_dataset(tmp_path / f"s{i}").fingerprint == m["fingerprint"]
    assert fp[0] == fp[1] and fp[0] != fp[2]
    ch = _chr1()
    ch.label[3] = 0
    assert write_store(tmp_path / "s3", [ch, _chr2()], ["a", "b", "c"])["fingerprint"] != fp[0]
    assert write_store(tmp_path / "s4", [_chr1(), _chr2()], ["a", "b", "d"])["fingerprint"] != fp[0]


def test_beta_column_is_optional(tmp_path) -> None:
    ch = _chr2()
    ch.beta = np.array([0.25], dtype=np.float32)
    write_store(tmp_path / "s", [ch], ["a", "b", "c"])
    ds = open_dataset(tmp_path / "s")
    assert ds.betas("chr2", 0, 1).tolist() == [[-1.0, 0.25, -1.0]]


def test_generator_input_and_atomicity(tmp_path) -> None:
    def gen():
        yield _chr1()
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        write_store(tmp_path / "s", gen(), ["a", "b", "c"])
    assert list(tmp_path.iterdir()) == []


def test_invalid_arrays_rejected(tmp_path) -> None:
    ch = _chr1()
    ch.cell[1] = 0  # row 0 would hold cell 0 twice
    with pytest.raises(UsageError, match="strictly increasing"):
        write_store(tmp_path / "s", [ch], ["a", "b", "c"])
    ch = _chr1()
    ch.cell[5] = 3
    with pytest.raises(UsageError, match="out of range"):
        write_store(tmp_path / "s", [ch], ["a", "b", "c"])
    with pytest.raises(UsageError, match="duplicate cell"):
        write_store(tmp_path / "s", [_chr1()], ["a", "b", "a"])
    assert list(tmp_path.iterdir()) == []


def test_open_errors(tmp_path, store) -> None:
    with pytest.raises(InputError, match="no such store"):
        open_dataset(tmp_path / "nope")
    (tmp_path / "plain").mkdir()
    with pytest.raises(InputError, match="not a cpgformer store"):
        open_dataset(tmp_path / "plain")
    m = json.loads((store / "manifest.json").read_text())
    m["format_version"] = 99
    (store / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(InputError, match="format_version 99"):
        open_dataset(store)


def test_reference_is_the_flag_else_the_stores(tmp_path) -> None:
    from types import SimpleNamespace

    from cpgformer.io.store import fasta_for, reference

    fasta = tmp_path / "g.fa"
    fasta.write_text(">1\nACGTACGTCG\n")
    other = tmp_path / "other.fa"
    other.write_text(">1\nCCGG\n")
    recorded = SimpleNamespace(fasta_path=str(fasta))
    bare = SimpleNamespace(fasta_path=None)
    assert fasta_for(None, recorded) == str(fasta) and fasta_for(other, recorded) == str(other)
    assert fasta_for(None, bare) is None
    assert reference(None, recorded).path == fasta
    assert reference(str(other), recorded, "the model uses DNA windows").path == other
    with pytest.raises(
        UsageError, match="the model uses DNA windows: give the reference with --fasta"
    ):
        reference(None, bare, "the model uses DNA windows")
    assert reference(None, bare) is None  # optional: none
    gone = SimpleNamespace(fasta_path=str(tmp_path / "moved.fa"))
    assert reference(None, gone) is None  # optional: the recorded file is no longer there
    with pytest.raises(InputError, match="no such FASTA file"):
        reference(None, gone, "--sites all")  # needed: its absence is an error naming the file


def test_segment_reads_check_the_row_range(tmp_path) -> None:
    write_store(tmp_path / "s", [_chr1()], ["a", "b", "c"])
    ds = open_dataset(tmp_path / "s")
    n = ds.n_sites("chr1")
    for read in (ds.states, ds.betas, ds.counts):
        with pytest.raises(UsageError, match="out of range"):
            read("chr1", 0, n + 1)
        with pytest.raises(UsageError, match="out of range"):
            read("chr1", 2, 1)
