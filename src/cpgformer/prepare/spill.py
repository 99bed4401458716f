"""Spilling pooled calls of many cells to disk and merging them per contig into CSR arrays.

Pooled calls of consecutive cells are buffered in memory; past ``spill_bytes`` the buffer is
written per contig as ``.npy`` parts. After the last cell each contig's parts are loaded, sorted by
(position, cell) and turned into one CSR matrix labelled by the binarisation rule, so peak memory
is one contig's calls (at most the final store's size) whatever the number of files.
"""

from __future__ import annotations

import shutil
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from cpgformer.io.store import ChromArrays
from cpgformer.prepare.cells import CellCalls
from cpgformer.prepare.options import PrepareOptions, binarize_fractions, binarize_labels


class Spill:
    """Buffers pooled calls of consecutive cells and writes them per contig as ``.npy`` parts."""

    def __init__(self, directory: Path, limit_bytes: int) -> None:
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.limit = limit_bytes
        self.buffer: dict[str, list[tuple[int, CellCalls]]] = defaultdict(list)
        self.buffered = 0
        self.parts: dict[str, list[Path]] = defaultdict(list)
        self.chrom_dirs: dict[str, Path] = {}
        self.has_beta: set[str] = set()
        self.n_flushes = 0

    def add(self, cell: int, calls: list[CellCalls]) -> None:
        for c in calls:
            self.buffer[c.chrom].append((cell, c))
            self.buffered += len(c.start) * 20
            if c.beta is not None:
                self.has_beta.add(c.chrom)
        if self.buffered >= self.limit:
            self.flush()

    def flush(self) -> None:
        for chrom, items in self.buffer.items():
            d = self.chrom_dirs.get(chrom)
            if d is None:
                d = self.dir / str(len(self.chrom_dirs))
                d.mkdir()
                self.chrom_dirs[chrom] = d
            k = len(self.parts[chrom])
            start = np.concatenate([c.start for _, c in items])
            cell = np.concatenate([np.full(len(c.start), i, dtype=np.int32) for i, c in items])
            mc = np.concatenate([c.mc for _, c in items])
            cov = np.concatenate([c.cov for _, c in items])
            base = d / f"part{k:05d}"
            np.save(str(base) + ".start.npy", start)
            np.save(str(base) + ".ints.npy", np.stack([cell, mc, cov]))
            if chrom in self.has_beta:
                beta = np.concatenate(
                    [
                        c.beta if c.beta is not None else (c.mc / c.cov).astype(np.float32)
                        for _, c in items
                    ]
                )
                np.save(str(base) + ".beta.npy", beta.astype(np.float32))
            self.parts[chrom].append(base)
        self.buffer.clear()
        self.buffered = 0
        self.n_flushes += 1

    def load(self, chrom: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, Any]:
        """All spilled calls of one contig, filled part by part into preallocated arrays."""
        bases = self.parts[chrom]
        sizes = [np.load(str(b) + ".start.npy", mmap_mode="r").shape[0] for b in bases]
        n = int(sum(sizes))
        start = np.empty(n, dtype=np.int64)
        cell = np.empty(n, dtype=np.int32)
        mc = np.empty(n, dtype=np.int32)
        cov = np.empty(n, dtype=np.int32)
        beta = np.empty(n, dtype=np.float32) if chrom in self.has_beta else None
        at = 0
        for base, size in zip(bases, sizes):
            sl = slice(at, at + size)
            start[sl] = np.load(str(base) + ".start.npy", mmap_mode="r")
            ints = np.load(str(base) + ".ints.npy", mmap_mode="r")
            cell[sl], mc[sl], cov[sl] = ints[0], ints[1], ints[2]
            if beta is not None:
                bpath = Path(str(base) + ".beta.npy")
                if bpath.exists():
                    beta[sl] = np.load(bpath, mmap_mode="r")
                else:
                    beta[sl] = ints[1] / ints[2]
            del ints
            at += size
        return start, cell, mc, cov, beta

    def release(self, chrom: str) -> None:
        d = self.chrom_dirs.get(chrom)
        if d is not None:
            shutil.rmtree(d, ignore_errors=True)


def merge_chrom(
    chrom: str,
    start: np.ndarray,
    cell: np.ndarray,
    mc: np.ndarray,
    cov: np.ndarray,
    beta: np.ndarray | None,
    opts: PrepareOptions,
) -> ChromArrays:
    """All cells' calls of one contig (each cell's starts unique) -> CSR by site."""
    # parts were written in cell order, so a stable sort by start gives (start, cell) order
    # (one permuted copy at a time keeps the peak near one contig's calls plus the order)
    if len(start) > 1 and np.any(start[1:] < start[:-1]):
        order = np.argsort(start, kind="stable")
        start = start[order]
        cell = cell[order]
        mc = mc[order]
        cov = cov[order]
        if beta is not None:
            beta = beta[order]
        del order
    new_site = np.empty(len(start), dtype=bool)
    if len(start):
        new_site[0] = True
        np.not_equal(start[1:], start[:-1], out=new_site[1:])
    first = np.flatnonzero(new_site)
    positions = start[first]
    indptr = np.empty(len(first) + 1, dtype=np.int64)
    indptr[:-1] = first
    indptr[-1] = len(start)
    label = np.empty(len(start), dtype=np.int8)
    step = 1 << 22  # bounded temporaries
    for lo in range(0, len(start), step):
        sl = slice(lo, lo + step)
        if beta is not None:
            lab = binarize_fractions(beta[sl], opts.binarize, opts.threshold)
            lab[cov[sl] < opts.min_cov] = -1
        else:
            lab = binarize_labels(mc[sl], cov[sl], opts.binarize, opts.threshold, opts.min_cov)
        label[sl] = lab
    return ChromArrays(chrom, positions, indptr, cell, mc, cov, label, beta)
