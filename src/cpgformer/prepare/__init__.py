"""Files (+ optional FASTA) -> dataset store: strand pooling, validation, binarisation, manifest.

The pipeline streams (memory never grows with the number of input files):

1. Each input file is one cell (:mod:`.cells`). Its rows are read
   (:func:`cpgformer.io.readers.read_calls`), contig names normalised, grouped per contig, sorted,
   checked for repeated (pos, strand) calls, and pooled onto the + strand C of each CpG
   (:func:`cpgformer.io.pooling.pool_chunk`; exact with a FASTA). ``--jobs`` reads files in
   worker processes.
2. The pooled calls of the cell go to a spill buffer written per contig as ``.npy`` parts inside
   the partial output directory (:mod:`.spill`).
3. After the last file, each contig's spilled calls of all cells are merged into one CSR matrix,
   labelled by the binarisation rule and written (:func:`cpgformer.io.store.write_store_into`).

Everything is written inside a ``.partial-`` directory renamed into place at the end, so a failure
leaves no store behind. Directory inputs: an X/y/pos ``.npz`` triple (:mod:`cpgformer.io.npz`) or
MethSCAn's matrices (:mod:`.methscan`).
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from cpgformer.errors import InputError, UsageError
from cpgformer.io.contigs import reconcile_contigs
from cpgformer.io.npz import import_npz, is_npz_triple_dir
from cpgformer.io.readers import parse_column_spec
from cpgformer.io.store import ChromArrays, write_store_into
from cpgformer.prepare.cells import (
    CellCalls,
    CellReader,
    FileReport,
    SkippedCell,
    open_reference,
    read_cells,
)
from cpgformer.prepare.methscan import methscan_input, prepare_methscan
from cpgformer.prepare.options import (
    BINARIZE_RULES,
    CHROM_NAME_MODES,
    DEFAULT_SPILL_BYTES,
    PrepareOptions,
    binarize_fractions,
    binarize_labels,
    cell_name_from_path,
    chrom_sort_key,
    normalise_chrom,
)
from cpgformer.prepare.provenance import cell_flags, files_manifest, log_summary
from cpgformer.prepare.spill import Spill, merge_chrom
from cpgformer.utils.atomic import atomic_dir
from cpgformer.utils.progress import progress

log = logging.getLogger("cpgformer.prepare")  # one name for all of prepare's messages

__all__ = [
    "BINARIZE_RULES",
    "CHROM_NAME_MODES",
    "DEFAULT_SPILL_BYTES",
    "CellCalls",
    "FileReport",
    "PrepareOptions",
    "SkippedCell",
    "binarize_fractions",
    "binarize_labels",
    "cell_name_from_path",
    "chrom_sort_key",
    "normalise_chrom",
    "prepare",
]


def prepare(
    inputs: Sequence[str | os.PathLike[str]],
    output: str | os.PathLike[str],
    options: PrepareOptions | None = None,
    *,
    overwrite: bool = False,
) -> dict:
    """Build a store from per-cell call files (one file = one cell); return the manifest.

    Raises :class:`InputError` / :class:`UsageError` for bad input; no output is left behind then.
    """
    opts = options or PrepareOptions()
    opts.check()
    if opts.input_format == "npz" or (
        len(inputs) == 1 and opts.input_format is None and is_npz_triple_dir(inputs[0])
    ):
        if len(inputs) != 1:
            raise UsageError("npz import takes one directory holding X.npz/y.npz/pos.npz")
        return import_npz(
            inputs[0],
            output,
            cell_names=opts.cell_names,
            overwrite=overwrite,
            extra_parameters={"binarize": "threshold", "threshold": 0.5},
        )
    methscan_dir = methscan_input(inputs, opts.input_format)
    if methscan_dir is not None:
        return prepare_methscan(methscan_dir[0], methscan_dir[1], output, opts, overwrite)
    return _prepare_files(_check_inputs(inputs), output, opts, overwrite)


def _check_inputs(inputs: Sequence[str | os.PathLike[str]]) -> list[Path]:
    if not inputs:
        raise UsageError("no input files given")
    paths = [Path(p) for p in inputs]
    for p in paths:
        if p.is_dir():
            raise InputError(p, None, "is a directory, expected a methylation call file")
        if not p.exists():
            raise InputError(p, None, "no such file")
    return paths


def _cell_names(paths: list[Path], explicit: list[str] | None) -> list[str]:
    if explicit is not None:
        if len(explicit) != len(paths):
            raise UsageError(f"{len(explicit)} cell names given for {len(paths)} input files")
        names = list(explicit)
    else:
        names = [cell_name_from_path(p) for p in paths]
    first: dict[str, int] = {}
    for i, n in enumerate(names):
        if not n:
            raise UsageError(f"{paths[i]}: empty cell name")
        if n in first:
            raise UsageError(
                f"duplicate cell name {n!r}: {paths[first[n]]} and {paths[i]} "
                "(one file per cell; rename a file or give --cell-names)"
            )
        first[n] = i
    return names


def _reader(opts: PrepareOptions, reference: Any) -> CellReader:
    spec = None
    if opts.columns is not None:
        spec = parse_column_spec(opts.columns)
    elif opts.input_format == "tsv":
        raise UsageError("--input-format tsv needs --columns")
    return CellReader(opts, reference, spec)


def _spill_cells(
    paths: list[Path], names: list[str], opts: PrepareOptions, reader: CellReader, spill: Spill
) -> tuple[list[int], list[FileReport], list[SkippedCell]]:
    """Read every file into the spill: (kept file indices, their reports, skipped cells)."""
    kept: list[int] = []
    reports: list[FileReport] = []
    skipped: list[SkippedCell] = []
    results = read_cells(paths, names, opts, reader)
    for i, result in enumerate(
        progress(results, desc="reading cells", total=len(paths), unit="file")
    ):
        if isinstance(result, SkippedCell):
            skipped.append(result)
            continue
        calls, report = result
        spill.add(len(kept), calls)
        kept.append(i)
        reports.append(report)
        del calls, result
    spill.flush()
    if not kept:
        raise UsageError(f"none of the {len(paths)} input files holds a call")
    return kept, reports, skipped


def _merged(spill: Spill, chroms: list[str], opts: PrepareOptions) -> Iterator[ChromArrays]:
    """Each contig's CSR arrays, its spill released once written."""
    for chrom in progress(chroms, desc="merging", unit="chrom"):
        arrays = merge_chrom(chrom, *spill.load(chrom), opts)
        yield arrays
        del arrays
        spill.release(chrom)


def _prepare_files(
    paths: list[Path], output: str | os.PathLike[str], opts: PrepareOptions, overwrite: bool
) -> dict:
    names = _cell_names(paths, opts.cell_names)
    reference = open_reference(opts.fasta)
    reader = _reader(opts, reference)
    t0 = time.perf_counter()
    with atomic_dir(output, overwrite=overwrite, kind="store", inputs=[*paths, opts.fasta]) as tmp:
        spill = Spill(tmp / "spill", opts.spill_bytes)
        kept, reports, skipped = _spill_cells(paths, names, opts, reader, spill)
        t_read = time.perf_counter() - t0
        chroms, contigs = reconcile_contigs(spill, reports, opts.contig_aliases, opts.keep_contigs)
        if reference is not None:
            order = {c: k for k, c in enumerate(reference.contigs)}
            chroms.sort(key=lambda c: order.get(c, len(order)))
        else:
            chroms.sort(key=chrom_sort_key)
        cell_info = {
            "name": [names[i] for i in kept],
            "source_file": [str(paths[i]) for i in kept],
            "flags": [cell_flags(r) for r in reports],
            "format": [r.format for r in reports],
        }
        extra = files_manifest(opts, reports, skipped, reference, contigs)
        manifest = write_store_into(
            tmp, _merged(spill, chroms, opts), cell_info["name"], extra, cell_info
        )
        shutil.rmtree(tmp / "spill", ignore_errors=True)
    seconds = (t_read, time.perf_counter() - t0)
    log_summary(output, manifest, opts, reports, skipped, reference, seconds)
    return manifest
