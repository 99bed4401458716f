"""Per-cell track files of an imputed store: bedGraph and ALLC (+ tabix index)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cpgformer.codes import NUCLEOTIDE_LETTERS
from cpgformer.errors import UsageError
from cpgformer.export.naming import chrom_names, chunk_groups
from cpgformer.io.fasta import Reference
from cpgformer.io.writers import AllcWriter, BedGraphWriter, cell_file_names
from cpgformer.utils.outputs import begin_files_in, check_files_in, remove_leftovers_in
from cpgformer.utils.progress import bar

log = logging.getLogger("cpgformer.export")  # one name for all of export's messages

BEDGRAPH_KINDS = ("imputed", "denoised", "observed")
ALLCOOLS_CG_CONTEXTS = frozenset({"CGA", "CGC", "CGG", "CGT"})
"""The contexts ALLCools' CG filter keeps (its ``mc_type`` CGN expanded to A/C/G/T)."""


def _groups(n_cells: int, per_cell_files: int, max_open: int) -> list[range]:
    size = max(1, max_open // max(1, per_cell_files))
    return [range(a, min(n_cells, a + size)) for a in range(0, n_cells, size)]


def _start_files(out: Path, names: list[str], overwrite: bool) -> None:
    """Refuse files cpgformer did not write, clear leftovers, record what is being written."""
    out.mkdir(parents=True, exist_ok=True)
    check_files_in(out, names, overwrite=overwrite)
    remove_leftovers_in(out, names)
    begin_files_in(out, "export", names)


def _write_per_cell(
    imp: Any,
    chroms: Sequence[str],
    groups: list[range],
    open_writers: Callable[[range], dict[Any, Any]],
    write_chunk: Callable[[dict[Any, Any], Any, str, int, int, np.ndarray], None],
    desc: str,
) -> list[Path]:
    """Per group of cells: open their writers, stream every chunk into them (``write_chunk``
    gets the writers, the store object to read from, chromosome, rows and positions), close (or
    abort all of the group's files on any error)."""
    written: list[Path] = []
    n_chunks = sum(len(imp.chunks(c)) for c in chroms)
    with bar(n_chunks * len(groups), desc=desc, unit="chunk") as progress_bar:
        for group in groups:
            writers = open_writers(group)
            try:
                for c in chroms:
                    pos = np.array(imp.positions(c))
                    for part, chunks in chunk_groups(imp, c):
                        for a, b in chunks:
                            write_chunk(writers, part, c, a, b, pos[a:b])
                            progress_bar.update(1)
                        del part
                written += [w.close() for w in writers.values()]
            except BaseException:
                for w in writers.values():
                    w.abort()
                raise
    return written


BEDGRAPH_DESCRIPTIONS = {
    "imputed": "cpgformer: observed calls kept, model P(methylated) where missing",
    "denoised": "cpgformer: model P(methylated) for every CpG",
    "observed": "observed methylated fraction mc/cov",
}


def write_bedgraphs(imp: Any, out: Path, chroms: Sequence[str], opts: Any) -> list[Path]:
    """Per-cell ``<cell>.<kind>.bedGraph.gz`` files in the directory ``out``."""
    kinds = list(dict.fromkeys(opts.kinds))
    for k in kinds:
        if k not in BEDGRAPH_KINDS:
            raise UsageError(
                f"unknown bedGraph kind {k!r} (choose from {', '.join(BEDGRAPH_KINDS)})"
            )
    if "denoised" in kinds and imp.keep_observed:
        raise UsageError(
            f"{imp.path} was imputed with --keep-observed: denoised values of observed entries are "
            "not stored; rerun cpgformer impute without it"
        )
    contig = chrom_names(chroms, opts.chrom_style)
    names = {k: cell_file_names(imp.cells, f".{k}.bedGraph.gz") for k in kinds}
    _start_files(out, [names[k][i] for i in range(imp.n_cells) for k in kinds], opts.overwrite)

    def open_writers(group: range) -> dict[Any, Any]:
        return {
            (i, k): BedGraphWriter(
                out / names[k][i],
                f"{imp.cells[i]} {k}",
                BEDGRAPH_DESCRIPTIONS[k],
                percent=opts.percent,
                interval=opts.interval,
            )
            for i in group
            for k in kinds
        }

    def write_chunk(writers: dict, part: Any, c: str, a: int, b: int, pos: np.ndarray) -> None:
        values = _kind_values(part, c, a, b, kinds)
        for (i, k), w in writers.items():
            w.write(contig[c], pos, values[k][:, i])

    groups = _groups(imp.n_cells, len(kinds), opts.max_open_files)
    written = _write_per_cell(imp, chroms, groups, open_writers, write_chunk, "bedGraph")
    log.info("wrote %d bedGraph files to %s", len(written), out)
    return written


def _kind_values(
    imp: Any, chrom: str, a: int, b: int, kinds: Sequence[str]
) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    if "denoised" in kinds or "imputed" in kinds:
        v = imp.values(chrom, a, b)
        if "denoised" in kinds:
            out["denoised"] = v.copy()
        if "imputed" in kinds:
            obs = imp.observed_values(chrom, a, b)
            seen = ~np.isnan(obs)
            v[seen] = obs[seen]
            out["imputed"] = v
    if "observed" in kinds:
        mc, cov = imp.counts(chrom, a, b)
        with np.errstate(divide="ignore", invalid="ignore"):
            out["observed"] = np.where(cov > 0, mc / np.maximum(cov, 1), np.nan)
    return out


def allc_contexts(reference: Any, chrom: str, starts: np.ndarray) -> np.ndarray:
    """3-mer contexts ``[start, start + 3)`` (e.g. ``CGT``) from the reference, upper case."""
    codes = reference.windows(chrom, np.asarray(starts, dtype=np.int64) + 1, 3)
    letters = np.frombuffer(NUCLEOTIDE_LETTERS.encode(), dtype=np.uint8)[codes.astype(np.int64)]
    return np.ascontiguousarray(letters).view("S3").ravel().astype("U3")


def _allc_reference(imp: Any, opts: Any) -> tuple[Reference | None, str | None]:
    """(reference, its path) for the context column; refuses without one unless allowed."""
    fasta = opts.fasta or imp.fasta_path
    if fasta:
        return Reference(fasta), fasta
    if not opts.allow_cgn:
        raise UsageError(
            f"{imp.path}: no reference FASTA for the ALLC context column (the store was prepared "
            "without one); give --fasta GENOME.fa so contexts are real (CGA/CGC/CGG/CGT), or "
            "--allow-cgn to write the placeholder CGN, which ALLCools' CG filter drops"
        )
    log.warning(
        "no FASTA: every ALLC row gets the context CGN, which ALLCools' CG context filter "
        "(CGA, CGC, CGG, CGT) drops; give --fasta for real contexts"
    )
    return None, None


def _allc_counts(
    imp: Any, c: str, a: int, b: int, scale: int | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(mc, cov, flag) ``[sites, cells]``: observed reads (flag 1), else the imputed stand-in."""
    p = imp.values(c, a, b)
    mc, cov = imp.counts(c, a, b)
    seen = cov > 0
    if scale is None:
        imc = (p >= 0.5).astype(np.int32)
        icov = np.ones_like(imc)
    else:
        imc = np.rint(p * scale).astype(np.int32)
        icov = np.full_like(imc, scale)
    return np.where(seen, mc, imc), np.where(seen, cov, icov), seen.astype(np.int8)


def write_allc(imp: Any, out: Path, chroms: Sequence[str], opts: Any) -> list[Path]:
    """Per-cell ``<cell>.allc.tsv.gz`` (BGZF) + ``.tbi`` in the directory ``out``.

    Observed entries (cov > 0): their reads, flag 1. Missing entries: cov 1 and mc = [p >= 0.5],
    or with ``allc_scale`` S: cov S and mc = round(p S); flag 0.
    """
    scale = opts.allc_scale
    if scale is not None:
        if scale < 1:
            raise UsageError(f"--allc-scale must be >= 1, got {scale}")
        log.warning(
            "--allc-scale %d: imputed entries get cov %d; count-based tools (ALLCools posterior "
            "fractions, MethylVI) will read that as real sequencing depth",
            scale,
            scale,
        )
    reference, fasta = _allc_reference(imp, opts)
    contig = chrom_names(chroms, opts.chrom_style)
    names = cell_file_names(imp.cells, ".allc.tsv.gz")
    _start_files(out, names + [n + ".tbi" for n in names], opts.overwrite)
    n_unknown = 0
    known = sorted(ALLCOOLS_CG_CONTEXTS)

    def write_chunk(writers: dict, part: Any, c: str, a: int, b: int, pos: np.ndarray) -> None:
        nonlocal n_unknown
        ctx: np.ndarray | str = "CGN"
        if reference is not None:
            ctx = allc_contexts(reference, c, pos)
            if 0 in writers:  # counted once, with the first group of cells
                n_unknown += int((~np.isin(ctx, known)).sum())
        mc, cov, flag = _allc_counts(part, c, a, b, scale)
        for i, w in writers.items():
            w.write(contig[c], pos, ctx, mc[:, i], cov[:, i], flag[:, i])

    groups = _groups(imp.n_cells, 2, opts.max_open_files)

    def open_writers(group: range) -> dict[Any, Any]:
        return {i: AllcWriter(out / names[i]) for i in group}

    files = _write_per_cell(imp, chroms, groups, open_writers, write_chunk, "ALLC")
    if n_unknown:
        log.warning(
            "%d CpG(s) have a context other than CGA/CGC/CGG/CGT in %s (N or the contig end "
            "after the G); ALLCools' CG filter drops them",
            n_unknown,
            fasta,
        )
    log.info("wrote %d ALLC files (+ tabix indexes) to %s", len(files), out)
    return files
