"""Tiny synthetic stores for the training tests (values known by construction)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cpgformer.io.store import ChromArrays, write_store


def dense_to_chrom(name: str, positions: np.ndarray, labels: np.ndarray) -> ChromArrays:
    """[n_sites, C] int8 labels (-1 missing) -> CSR chromosome arrays (one read per call)."""
    rows, cols = np.nonzero(labels >= 0)
    indptr = np.zeros(labels.shape[0] + 1, dtype=np.int64)
    np.add.at(indptr, rows + 1, 1)
    indptr = np.cumsum(indptr)
    lab = labels[rows, cols].astype(np.int8)
    return ChromArrays(
        name=name,
        positions=np.asarray(positions, dtype=np.int64),
        indptr=indptr,
        cell=cols.astype(np.int32),
        mc=lab.astype(np.int32),
        cov=np.ones(lab.size, dtype=np.int32),
        label=lab,
    )


def make_store(
    path: Path,
    chrom_sites: dict[str, int],
    n_cells: int,
    *,
    fill: float = 0.5,
    seed: int = 0,
    cell_prefix: str = "cell",
    fasta: str | None = None,
) -> Path:
    """A store whose cells share a smooth methylation profile (learnable from neighbours)."""
    rng = np.random.default_rng(seed)
    chroms = []
    for name, n in chrom_sites.items():
        positions = np.cumsum(rng.integers(2, 60, size=n)) + 100
        # a slowly varying site-level probability + cell groups
        base = (np.sin(np.arange(n) / 7.0) > 0).astype(np.float64) * 0.8 + 0.1
        group = rng.integers(0, 2, size=n_cells)
        prob = np.where(group[None, :] == 0, base[:, None], 1 - base[:, None])
        labels = (rng.random((n, n_cells)) < prob).astype(np.int8)
        labels[rng.random((n, n_cells)) > fill] = -1
        chroms.append(dense_to_chrom(name, positions, labels))
    extra = {"fasta": {"path": fasta}} if fasta else None
    write_store(path, chroms, [f"{cell_prefix}{i}" for i in range(n_cells)], extra)
    return path
