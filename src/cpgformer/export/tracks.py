"""Per-cell track files of an imputed store: bedGraph and ALLC (+ tabix index)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cpgformer.codes import NUCLEOTIDE_LETTERS
from cpgformer.errors import UsageError
from cpgformer.export.naming import chrom_names
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
    out.mkdir(parents=True, exist_ok=True)
    descriptions = {
        "imputed": "cpgformer: observed calls kept, model P(methylated) where missing",
        "denoised": "cpgformer: model P(methylated) for every CpG",
        "observed": "observed methylated fraction mc/cov",
    }
    names = {k: cell_file_names(imp.cells, f".{k}.bedGraph.gz") for k in kinds}
    targets = [out / names[k][i] for i in range(imp.n_cells) for k in kinds]
    check_files_in(out, [t.name for t in targets], overwrite=opts.overwrite)
    remove_leftovers_in(out, [t.name for t in targets])
    begin_files_in(out, "export", [t.name for t in targets])
    written: list[Path] = []
    n_chunks = sum(len(imp.chunks(c)) for c in chroms)
    groups = _groups(imp.n_cells, len(kinds), opts.max_open_files)
    with bar(n_chunks * len(groups), desc="bedGraph", unit="chunk") as progress_bar:
        for group in groups:
            writers = {
                (i, k): BedGraphWriter(
                    out / names[k][i],
                    f"{imp.cells[i]} {k}",
                    descriptions[k],
                    percent=opts.percent,
                    interval=opts.interval,
                )
                for i in group
                for k in kinds
            }
            try:
                for c in chroms:
                    pos = np.asarray(imp.positions(c))
                    for a, b in imp.chunks(c):
                        values = _kind_values(imp, c, a, b, kinds)
                        for (i, k), w in writers.items():
                            w.write(contig[c], pos[a:b], values[k][:, i])
                        progress_bar.update(1)
                written += [w.close() for w in writers.values()]
            except BaseException:
                for w in writers.values():
                    w.abort()
                raise
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
    fasta = opts.fasta or imp.fasta_path
    reference = None
    if fasta:
        reference = Reference(fasta)
    elif not opts.allow_cgn:
        raise UsageError(
            f"{imp.path}: no reference FASTA for the ALLC context column (the store was prepared "
            "without one); give --fasta GENOME.fa so contexts are real (CGA/CGC/CGG/CGT), or "
            "--allow-cgn to write the placeholder CGN, which ALLCools' CG filter drops"
        )
    else:
        log.warning(
            "no FASTA: every ALLC row gets the context CGN, which ALLCools' CG context filter "
            "(CGA, CGC, CGG, CGT) drops; give --fasta for real contexts"
        )
    contig = chrom_names(chroms, opts.chrom_style)
    n_unknown = 0
    out.mkdir(parents=True, exist_ok=True)
    names = cell_file_names(imp.cells, ".allc.tsv.gz")
    check_files_in(out, names + [n + ".tbi" for n in names], overwrite=opts.overwrite)
    remove_leftovers_in(out, names + [n + ".tbi" for n in names])
    begin_files_in(out, "export", names + [n + ".tbi" for n in names])
    files: list[Path] = []
    n_chunks = sum(len(imp.chunks(c)) for c in chroms)
    groups = _groups(imp.n_cells, 2, opts.max_open_files)
    with bar(n_chunks * len(groups), desc="ALLC", unit="chunk") as progress_bar:
        for group in groups:
            writers = {i: AllcWriter(out / names[i]) for i in group}
            try:
                for c in chroms:
                    pos = np.asarray(imp.positions(c))
                    for a, b in imp.chunks(c):
                        ctx: np.ndarray | str = "CGN"
                        if reference is not None:
                            ctx = allc_contexts(reference, c, pos[a:b])
                            if group.start == 0:
                                n_unknown += int(
                                    (~np.isin(ctx, sorted(ALLCOOLS_CG_CONTEXTS))).sum()
                                )
                        p = imp.values(c, a, b)
                        mc, cov = imp.counts(c, a, b)
                        seen = cov > 0
                        if scale is None:
                            imc = (p >= 0.5).astype(np.int32)
                            icov = np.ones_like(imc)
                        else:
                            imc = np.rint(p * scale).astype(np.int32)
                            icov = np.full_like(imc, scale)
                        mc_all = np.where(seen, mc, imc)
                        cov_all = np.where(seen, cov, icov)
                        flag = seen.astype(np.int8)
                        for i, w in writers.items():
                            w.write(
                                contig[c], pos[a:b], ctx, mc_all[:, i], cov_all[:, i], flag[:, i]
                            )
                        progress_bar.update(1)
                files += [w.close() for w in writers.values()]
            except BaseException:
                for w in writers.values():
                    w.abort()
                raise
    if n_unknown:
        log.warning(
            "%d CpG(s) have a context other than CGA/CGC/CGG/CGT in %s (N or the contig end "
            "after the G); ALLCools' CG filter drops them",
            n_unknown,
            fasta,
        )
    log.info("wrote %d ALLC files (+ tabix indexes) to %s", len(files), out)
    return files
