"""Site sources: which rows of a chromosome are imputed and where their observed calls come from."""

from __future__ import annotations

from typing import Any

import numpy as np

from cpgformer.codes import CODE_C, CODE_G, MISSING, to_model_input
from cpgformer.errors import UsageError


class ChromSource:
    """Rows to impute on one chromosome and their observed calls (store rows, or all CpGs)."""

    def __init__(self, ds: Any, chrom: str, positions: np.ndarray | None = None) -> None:
        self.ds = ds
        self.chrom = chrom
        store_pos = ds.positions(chrom)
        if positions is None:
            self.positions = store_pos
            self.store_rows: np.ndarray | None = None  # identity
        else:
            self.positions = np.asarray(positions, dtype=np.int64)
            rows = np.searchsorted(self.positions, store_pos)
            ok = rows < len(self.positions)
            ok[ok] = self.positions[rows[ok]] == np.asarray(store_pos)[ok]
            if not np.all(ok):
                bad = int(np.asarray(store_pos)[~ok][0])
                raise UsageError(
                    f"{chrom}:{bad} (0-based) is a store site but not a CpG of the reference; "
                    "is the FASTA the one the store was prepared with?"
                )
            self.store_rows = rows.astype(np.int64)

    @property
    def n_sites(self) -> int:
        return int(len(self.positions))

    def _store_range(self, a: int, b: int) -> tuple[int, int]:
        if self.store_rows is None:
            return a, b
        return (
            int(np.searchsorted(self.store_rows, a, "left")),
            int(np.searchsorted(self.store_rows, b, "left")),
        )

    def _expand(self, arr: np.ndarray, a: int, b: int, s0: int, fill: float) -> np.ndarray:
        if self.store_rows is None:
            return arr
        out = np.full((b - a, arr.shape[1]), fill, dtype=arr.dtype)
        out[self.store_rows[s0 : s0 + len(arr)] - a] = arr
        return out

    def states(self, a: int, b: int) -> np.ndarray:
        s0, s1 = self._store_range(a, b)
        return self._expand(self.ds.states(self.chrom, s0, s1), a, b, s0, MISSING)

    def betas(self, a: int, b: int) -> np.ndarray:
        s0, s1 = self._store_range(a, b)
        return self._expand(self.ds.betas(self.chrom, s0, s1), a, b, s0, float(MISSING))

    def csr_arrays(self) -> dict[str, np.ndarray]:
        """Observed calls of the imputed rows (CSR by row; cells as in the store)."""
        indptr, cell, mc, cov, label = self.ds.csr(self.chrom)
        arrays = {"cell": cell, "mc": mc, "cov": cov, "label": label}
        if self.ds.has_beta(self.chrom):
            arrays["beta"] = self.ds.beta_values(self.chrom)
        if self.store_rows is None:
            arrays["indptr"] = indptr
        else:
            counts = np.zeros(self.n_sites, dtype=np.int64)
            counts[self.store_rows] = np.diff(np.asarray(indptr))
            new = np.zeros(self.n_sites + 1, dtype=np.int64)
            np.cumsum(counts, out=new[1:])
            arrays["indptr"] = new
        return arrays


def all_cpg_positions(reference: Any, chrom: str, block: int = 1 << 24) -> np.ndarray:
    """0-based positions of every ``CG`` dinucleotide (case-insensitive) of a reference contig.

    ``reference`` is a :class:`cpgformer.io.fasta.Reference`; the contig is read in blocks.
    """
    target = reference.resolve(chrom)
    if target is None:
        raise UsageError(f"--sites all: contig {chrom!r} is not in the FASTA {reference.path}")
    length = int(reference.contigs[target])
    parts = []
    for a in range(0, max(0, length - 1), block):
        codes = reference.fetch_codes(target, a, min(length, a + block + 1))
        hits = (codes[:-1] == CODE_C) & (codes[1:] == CODE_G)
        parts.append(np.flatnonzero(hits).astype(np.int64) + a)
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)


def observed_to_model_input(observed: np.ndarray, continuous: bool) -> np.ndarray:
    """Stored labels (-1/0/1) or betas (-1 / [0, 1]) -> model-input coding (``codes.to_model_input``)."""
    if continuous:
        x = to_model_input(observed.astype(np.float32))
        x[observed < 0] = 0.0
        return x
    return to_model_input(observed.astype(np.int8))
