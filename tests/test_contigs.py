"""Consistent contigs across cells (docs/reliability.md, "Contigs")."""

from __future__ import annotations

import numpy as np
import pytest
from _reliability_helpers import cli, write_cells

from cpgformer.errors import UsageError
from cpgformer.io.contigs import canonical, classify, parse_keep, plan_aliases
from cpgformer.io.store import open_dataset


def _rows(chrom: str, shift: int = 0) -> list:
    return [(chrom, 2 + shift, 1, 0), (chrom, 10, 0, 2), (chrom, 30 + shift, 3, 1)]


def test_19_and_chr19_become_one_chromosome(tmp_path, capsys):
    """Interleaved cells with either spelling give exactly the store of consistent names."""
    mixed = {"a": _rows("19"), "b": _rows("chr19", 1), "c": _rows("19", 2), "d": _rows("chr19")}
    same = {k: [("chr19", *r[1:]) for r in v] for k, v in mixed.items()}
    code, err = cli(capsys, "prepare", *write_cells(tmp_path / "m", mixed), "-o", tmp_path / "s1")
    assert code == 0
    assert "WARNING" in err and "19 (2 cells) -> chr19 (2 cells)" in err
    assert cli(capsys, "prepare", *write_cells(tmp_path / "s", same), "-o", tmp_path / "s2")[0] == 0
    a, b = open_dataset(tmp_path / "s1"), open_dataset(tmp_path / "s2")
    assert a.chromosomes == ["chr19"]
    assert a.manifest["contigs"]["aliases"] == {"19": "chr19"}
    assert a.fingerprint == b.fingerprint
    indptr, cell, *_ = a.csr("chr19")
    for i in range(len(indptr) - 1):
        row = np.asarray(cell[indptr[i] : indptr[i + 1]])
        assert np.all(row[1:] > row[:-1])  # cells sorted within each site


def test_majority_spelling_wins_and_mito_aliases(tmp_path, capsys):
    cells = {
        "a": _rows("19") + _rows("MT"),
        "b": _rows("19") + _rows("MT"),
        "c": _rows("chr19") + _rows("chrM"),
    }
    assert cli(capsys, "prepare", *write_cells(tmp_path / "d", cells), "-o", tmp_path / "s")[0] == 0
    ds = open_dataset(tmp_path / "s")
    assert sorted(ds.chromosomes) == ["19", "MT"]
    assert ds.manifest["contigs"]["aliases"] == {"chr19": "19", "chrM": "MT"}


def test_refuse_policy_stops_with_one_line(tmp_path, capsys):
    cells = write_cells(tmp_path / "d", {"a": _rows("19"), "b": _rows("chr19")})
    code, msg = cli(capsys, "prepare", *cells, "--contig-aliases", "refuse", "-o", tmp_path / "s")
    assert code == 2 and "'19'" in msg and "'chr19'" in msg and "differently" in msg
    assert not (tmp_path / "s").exists()


def test_one_file_with_both_spellings_is_refused(tmp_path, capsys):
    cells = write_cells(tmp_path / "d", {"a": _rows("19") + _rows("chr19", 100), "b": _rows("19")})
    code, msg = cli(capsys, "prepare", *cells, "-o", tmp_path / "s")
    assert code == 2 and str(cells[0]) in msg and "uses both" in msg
    assert not (tmp_path / "s").exists()


def test_spike_in_and_unplaced_are_left_out_and_reported(tmp_path, capsys):
    cells = {
        "a": _rows("chr1") + [("lambda", 5, 0, 10), ("chrUn_JH584304", 3, 1, 0)],
        "b": _rows("chr1") + [("lambda", 9, 1, 9), ("chr1_GL456210_random", 7, 1, 1)],
    }
    paths = write_cells(tmp_path / "d", cells)
    code, err = cli(capsys, "prepare", *paths, "-o", tmp_path / "s")
    assert code == 0
    ds = open_dataset(tmp_path / "s")
    assert ds.chromosomes == ["chr1"]
    excluded = {e["name"]: e for e in ds.manifest["contigs"]["excluded"]}
    assert set(excluded) == {"lambda", "chrUn_JH584304", "chr1_GL456210_random"}
    assert excluded["lambda"]["class"] == "spike-in"
    assert excluded["lambda"]["n_calls"] == 2 and excluded["lambda"]["n_cells"] == 2
    assert excluded["lambda"]["meth_frac"] == pytest.approx(1 / 20)
    assert "5.00% methylated" in err and "--keep-contigs" in err
    # overridable
    code, _ = cli(capsys, "prepare", *paths, "--keep-contigs", "spike-in", "-o", tmp_path / "k1")
    assert code == 0 and sorted(open_dataset(tmp_path / "k1").chromosomes) == ["chr1", "lambda"]
    assert cli(capsys, "prepare", *paths, "--keep-contigs", "all", "-o", tmp_path / "k2")[0] == 0
    assert len(open_dataset(tmp_path / "k2").chromosomes) == 4
    code, msg = cli(capsys, "prepare", *paths, "--keep-contigs", "lamda", "-o", tmp_path / "k3")
    assert code == 2 and "unknown class 'lamda'" in msg


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        ("lambda", "spike-in"),
        ("Lambda_NEB", "spike-in"),
        ("J02459.1", "spike-in"),
        ("chrL", "spike-in"),
        ("pUC19", "spike-in"),
        ("phiX174", "spike-in"),
        ("NC_001422.1", "spike-in"),
        ("chrUn_KI270302v1", "unplaced"),
        ("chr1_KI270706v1_random", "unplaced"),
        ("chr6_GL000250v2_alt", "unplaced"),
        ("GL000220.1", "unplaced"),
        ("JH584299.1", "unplaced"),
        ("chrEBV", "unplaced"),
        ("chr19", None),
        ("19", None),
        ("chrX", None),
        ("MT", None),
        ("chrM", None),
        ("scaffold_12", None),
        ("Lambert", None),
    ],
)
def test_classify(name, kind):
    assert classify(name) == kind


def test_aliases_plan_and_keep_parsing():
    assert canonical("chr19") == canonical("19") == "19"
    assert canonical("MT") == canonical("chrM") == canonical("M") == "M"
    assert plan_aliases({"19": 3, "chr19": 1, "chr2": 4}) == {"chr19": "19"}
    assert plan_aliases({"19": 2, "chr19": 2}) == {"19": "chr19"}  # tie: the chr spelling
    with pytest.raises(UsageError, match="differently"):
        plan_aliases({"19": 1, "chr19": 1}, "refuse")
    assert parse_keep("all") == ("spike-in", "unplaced")
    assert parse_keep("unplaced, spike-in") == ("unplaced", "spike-in")
    assert parse_keep(None) == ()
