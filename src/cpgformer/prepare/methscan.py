"""A store from MethSCAn's prepared per-chromosome matrices (see :mod:`cpgformer.io.methscan`).

With ``--fasta`` each call is anchored on its CpG (a call on the G is the - strand C), both
strands of a CpG are pooled within a cell and rows that are no CpG are dropped and counted.
"""

from __future__ import annotations

import logging
import os
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cpgformer.errors import UsageError
from cpgformer.io import methscan
from cpgformer.io.fasta import SiteClass
from cpgformer.io.pooling import DROP_REASONS, strand_rule
from cpgformer.io.store import ChromArrays, write_store
from cpgformer.prepare.cells import open_reference
from cpgformer.prepare.options import PrepareOptions, chrom_sort_key, normalise_chrom
from cpgformer.prepare.provenance import binarisation_record, fasta_identity
from cpgformer.prepare.spill import merge_chrom
from cpgformer.utils.progress import progress

log = logging.getLogger("cpgformer.prepare")  # one name for all of prepare's messages


def methscan_input(
    inputs: Sequence[str | os.PathLike[str]], input_format: str | None
) -> tuple[Path, list[Path] | None] | None:
    """(directory, chosen matrices or None for all) when the inputs are MethSCAn matrices."""
    if input_format not in (None, "methscan"):
        return None
    if len(inputs) == 1 and methscan.is_methscan_dir(inputs[0]):
        return Path(inputs[0]), None
    paths = [Path(p) for p in inputs]
    directory = methscan.methscan_dir_of(paths)
    if directory is not None:
        return directory, paths
    if input_format == "methscan":
        raise UsageError(
            "--input-format methscan takes the directory written by MethSCAn prepare (with "
            f"{methscan.HEADER_FILE} and <chromosome>.npz files) or some of its .npz files"
        )
    return None


def _cell_names(directory: Path, opts: PrepareOptions) -> list[str]:
    file_names = methscan.read_cell_names(directory)
    names = list(opts.cell_names) if opts.cell_names is not None else file_names
    if len(names) != len(file_names):
        raise UsageError(
            f"{len(names)} cell names given for {len(file_names)} cells in {directory}"
        )
    if len(set(names)) != len(names):
        raise UsageError(f"{directory}: duplicate cell names")
    return names


def _anchor_on_cpgs(
    reference: Any, chrom: str, start: np.ndarray, cell: np.ndarray, meth: np.ndarray,
    dropped: Counter[str],
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, int]:  # fmt: skip
    """Calls moved onto their CpG's + strand C and pooled per cell: (start, cell, mc, cov,
    strand pairs pooled); rows that are no CpG counted in ``dropped``."""
    classes = reference.classify_sites(chrom, start)
    valid = (classes == SiteClass.PLUS) | (classes == SiteClass.MINUS)
    for code, reason in DROP_REASONS.items():
        n = int((classes == code).sum())
        if n:
            dropped[reason] += n
    start = np.where(classes == SiteClass.MINUS, start - 1, start)[valid]
    cell, meth = cell[valid], meth[valid]
    order = np.lexsort((cell, start))
    start, cell, meth = start[order], cell[order], meth[order]
    new = np.ones(len(start), dtype=bool)
    new[1:] = (start[1:] != start[:-1]) | (cell[1:] != cell[:-1])
    first = np.flatnonzero(new)
    mc = np.add.reduceat(meth, first) if len(first) else meth[:0]
    cov = np.diff(np.append(first, len(start))).astype(np.int32)
    return start[first], cell[first], mc, cov, int(len(start) - len(first))


class _Matrices:
    """The store's chromosomes from the matrices, counting what was dropped and pooled."""

    def __init__(self, files: list[Path], n_cells: int, opts: PrepareOptions, reference: Any):
        self.files, self.n_cells, self.opts, self.reference = files, n_cells, opts, reference
        self.dropped: Counter[str] = Counter()
        self.n_merged = 0

    def __iter__(self) -> Iterator[ChromArrays]:
        for path in progress(self.files, desc="MethSCAn matrices", unit="chrom"):
            m = methscan.read_matrix(path, self.n_cells)
            chrom = m.chrom
            if self.opts.chrom_names != "keep":
                chrom = normalise_chrom(chrom, self.opts.chrom_names)
            start, cell, meth = m.start, m.cell, m.meth
            if self.reference is not None:
                start, cell, mc, cov, merged = _anchor_on_cpgs(
                    self.reference, chrom, start, cell, meth, self.dropped
                )
                self.n_merged += merged
            else:
                cov = np.ones(len(start), dtype=np.int32)
                mc = meth
            if not len(start):
                continue
            yield merge_chrom(
                chrom,
                start.astype(np.int64),
                cell.astype(np.int32),
                np.asarray(mc, dtype=np.int32),
                cov,
                None,
                self.opts,
            )


def prepare_methscan(
    directory: Path,
    only: list[Path] | None,
    output: str | os.PathLike[str],
    opts: PrepareOptions,
    overwrite: bool,
) -> dict:
    """A store from MethSCAn's per-chromosome matrices in ``directory`` (``only``: some of them)."""
    t0 = time.perf_counter()
    names = _cell_names(directory, opts)
    reference = open_reference(opts.fasta)
    files = methscan.matrix_files(directory, only)
    files.sort(key=lambda f: chrom_sort_key(f.name[: -len(".npz")]))
    matrices = _Matrices(files, len(names), opts, reference)
    extra = {
        "parameters": {**opts.as_manifest(), "input_format": "methscan"},
        "inputs": [
            {
                "path": str(directory),
                "format": "methscan",
                "matrices": [f.name for f in files],
                "counts_available": False,
            }
        ],
        "fasta": fasta_identity(reference, opts.fasta),
        "strand_rule": strand_rule(reference, False),
        "binarisation": binarisation_record(
            opts, note="MethSCAn keeps one binary call per C (1/-1): mc/cov 1/1 or 0/1"
        ),
        "data_mode": "binary",
        "dropped": matrices.dropped,
    }
    cell_info = {
        "name": names,
        "source_file": [str(directory)] * len(names),
        "flags": ["counts_unavailable"] * len(names),
        "format": ["methscan"] * len(names),
    }
    manifest = write_store(output, matrices, names, extra, cell_info, overwrite=overwrite)
    dropped = matrices.dropped
    log.info(
        "prepared %s: %d cells, %d chromosomes, %d sites, %d calls from MethSCAn matrices in %s "
        "(%d matrices%s%s; %.1f s)",
        output,
        manifest["n_cells"],
        len(manifest["chromosomes"]),
        manifest["n_sites"],
        manifest["n_calls"],
        directory,
        len(files),
        f", {matrices.n_merged} strand pairs pooled" if matrices.n_merged else "",
        "; dropped " + ", ".join(f"{n} {k}" for k, n in dropped.items()) if dropped else "",
        time.perf_counter() - t0,
    )
    return manifest
