"""MethSCAn (scbs) prepared matrices: a directory with one scipy sparse ``<chrom>.npz`` per
chromosome and ``column_header.txt`` (one cell name per line).

Each matrix is sites x cells with the **1-based genomic position as the row index** and int8
values ``1`` (methylated) / ``-1`` (unmethylated); rows are per C as in the files MethSCAn read
(one strand or the other), so they are unstranded per-C calls here. Read counts are not kept by
MethSCAn: every call becomes mc/cov 1/1 or 0/1.
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from cpgformer.errors import InputError

HEADER_FILE = "column_header.txt"


def is_methscan_dir(path: str | os.PathLike[str]) -> bool:
    """True for a directory holding ``column_header.txt`` and at least one ``.npz`` matrix."""
    p = Path(path)
    return p.is_dir() and (p / HEADER_FILE).is_file() and any(p.glob("*.npz"))


def methscan_dir_of(paths: list[Path]) -> Path | None:
    """The MethSCAn directory when every path is one of its ``.npz`` matrices, else None."""
    if not paths or not all(p.suffix == ".npz" and p.is_file() for p in paths):
        return None
    parents = {p.resolve().parent for p in paths}
    if len(parents) != 1:
        return None
    parent = parents.pop()
    return parent if is_methscan_dir(parent) else None


def read_cell_names(directory: Path) -> list[str]:
    path = directory / HEADER_FILE
    try:
        names = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(path, None, f"cannot read the cell names: {exc}") from None
    if not names:
        raise InputError(path, None, "no cell names")
    return names


@dataclass
class MethscanChrom:
    """The calls of one matrix, in (position, cell) order."""

    chrom: str
    path: Path
    start: np.ndarray  # int64 0-based C position
    cell: np.ndarray  # int32
    meth: np.ndarray  # int32 1 methylated, 0 unmethylated


def matrix_files(directory: Path, only: list[Path] | None = None) -> list[Path]:
    files = sorted(directory.glob("*.npz")) if only is None else [p.resolve() for p in only]
    if not files:
        raise InputError(directory, None, "no <chromosome>.npz matrices")
    return files


def read_matrix(path: Path, n_cells: int) -> MethscanChrom:
    """One ``<chrom>.npz``: validated, as (0-based position, cell, methylated) triples."""
    try:
        matrix = sp.load_npz(path)
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as exc:
        raise InputError(
            path, None, f"not a scipy sparse matrix as MethSCAn prepare writes ({exc})"
        ) from None
    matrix = sp.csr_matrix(matrix)
    matrix.sum_duplicates()
    matrix.eliminate_zeros()
    if matrix.shape[1] != n_cells:
        raise InputError(
            path,
            None,
            f"{matrix.shape[1]} columns, but {HEADER_FILE} names {n_cells} cells",
        )
    data = np.asarray(matrix.data)
    bad = (data != 1) & (data != -1)
    if bad.any():
        raise InputError(
            path, None, f"values must be 1 (methylated) or -1 (unmethylated), found {data[bad][0]}"
        )
    indptr = np.asarray(matrix.indptr, dtype=np.int64)
    rows = np.repeat(np.arange(matrix.shape[0], dtype=np.int64), np.diff(indptr))
    if rows.size and rows[0] < 1:
        raise InputError(path, None, "a call in row 0 (rows are 1-based genomic positions)")
    return MethscanChrom(
        chrom=path.name[: -len(".npz")],
        path=path,
        start=rows - 1,
        cell=np.asarray(matrix.indices, dtype=np.int32),
        meth=(data == 1).astype(np.int32),
    )


def iter_matrices(
    directory: Path, n_cells: int, only: list[Path] | None = None
) -> Iterator[MethscanChrom]:
    for path in matrix_files(directory, only):
        yield read_matrix(path, n_cells)
