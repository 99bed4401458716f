"""Options of ``prepare`` and the small pure rules it applies: cell names, contig names, labels."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cpgformer.errors import UsageError
from cpgformer.io.contigs import ALIAS_POLICIES, parse_keep
from cpgformer.io.npz import read_names_file
from cpgformer.io.readers import FORMATS
from cpgformer.options import option

BINARIZE_RULES = ("threshold", "drop-mixed", "majority")
CHROM_NAME_MODES = ("keep", "add-chr", "strip-chr")
DEFAULT_SPILL_BYTES = 128 << 20
DIRECTORY_FORMATS = ("npz", "methscan")


def _mib(text: str) -> int:
    return int(text) << 20


@dataclass
class PrepareOptions:
    """All parameters of :func:`~cpgformer.prepare.prepare` (recorded in the manifest; the
    ``prepare`` command's flags are made from these)."""

    input_format: str | None = option(
        None,
        "bismark-cov, bismark-zero-cov, bismark-bedgraph, bismark-cpg-report, bismark-merged-cov, "
        "methyldackel, methyldackel-fraction, methyldackel-methylkit, allc, deepcpg, "
        "deepcpg-bedgraph, methrix, per-c-state, percent-rate, scage, tsv (with --columns), npz "
        "(X/y/pos triple) or methscan (MethSCAn prepare directory)",
        metavar="FORMAT",
        shown="detected per file from its content and name",
    )
    columns: str | None = option(
        None,
        "custom column spec for delimited files, e.g. '1:2:4:5c:,:1' or "
        "'chrom=1:pos=2:meth=3:unmeth=4:sep=;:header=1' (keys chrom pos meth unmeth cov frac "
        "percent state strand context base sep header pooled; see docs/formats-supported.md; "
        "implies --input-format tsv)",
        metavar="SPEC",
        shown="none, the layout is detected",
    )
    fasta: str | None = option(
        None,
        "reference FASTA: pool strands exactly and drop rows that are not CpGs (without one, "
        "unstranded per-C rows stay at their own position)",
    )
    min_valid_frac: float = option(
        0.95, "with --fasta: fail when a file has a smaller fraction of valid CpG calls"
    )
    chrom_names: str = option(
        "keep",
        "contig names: keep (as in the files), add-chr (1 -> chr1, MT -> chrM) or strip-chr "
        "(chr1 -> 1, chrM -> MT)",
        choices=CHROM_NAME_MODES,
    )
    contig_aliases: str = option(
        "unify",
        "cells naming one contig differently (19/chr19, MT/chrM): unify to the spelling most "
        "cells use, with a warning, or refuse",
        choices=ALIAS_POLICIES,
    )
    keep_contigs: tuple[str, ...] = option(
        (),
        "keep spike-in (lambda, pUC19, phiX) and/or unplaced (chrUn_*, *_random, *_alt) contigs "
        "in the store and in training: spike-in, unplaced or all",
        metavar="CLASSES",
        parse=str,
        shown="leave them out, reported",
    )
    binarize: str = option(
        "threshold",
        "label rule: threshold (mc/cov >= --threshold, ties methylated), drop-mixed (any mixed "
        "call excluded), majority (ties excluded)",
        choices=BINARIZE_RULES,
    )
    threshold: float = option(0.5, "methylated fraction threshold")
    min_cov: int = option(1, "calls with fewer reads get no label")
    pair_adjacent: bool = option(
        False,
        "without --fasta: merge an unstranded call at x+1 into one at x within a cell (wrong "
        "inside CGCG runs)",
    )
    cell_names: list[str] | None = option(
        None,
        "file of cell names, one per line, in input order",
        metavar="FILE",
        parse=read_names_file,
        shown="file names",
    )
    spill_bytes: int = option(
        DEFAULT_SPILL_BYTES,
        "memory buffer for pooled calls before spilling to disk, MiB",
        flag="--spill-mb",
        metavar="MIB",
        parse=_mib,
        shown="128",
    )
    jobs: int = option(
        1, "processes reading files in parallel; memory grows by a few files per job"
    )
    skip_empty: bool = option(
        False,
        "leave out cells whose file holds no call (empty, header only, or nothing left after "
        "filtering) and list them in the manifest (default: such a file is an error)",
    )

    def check(self) -> None:
        """:class:`UsageError` for a bad value (``keep_contigs`` parsed into its classes)."""
        if self.input_format not in (None, *DIRECTORY_FORMATS, *FORMATS):
            raise UsageError(
                f"unknown --input-format {self.input_format!r} (known: {', '.join(FORMATS)}, "
                f"{', '.join(DIRECTORY_FORMATS)})"
            )
        if self.binarize not in BINARIZE_RULES:
            raise UsageError(f"--binarize must be one of {', '.join(BINARIZE_RULES)}")
        if self.chrom_names not in CHROM_NAME_MODES:
            raise UsageError(f"--chrom-names must be one of {', '.join(CHROM_NAME_MODES)}")
        if not 0.0 < self.threshold <= 1.0:
            raise UsageError(f"--threshold must be in (0, 1], got {self.threshold}")
        if self.min_cov < 1:
            raise UsageError(f"--min-cov must be >= 1, got {self.min_cov}")
        if not 0.0 <= self.min_valid_frac <= 1.0:
            raise UsageError(f"--min-valid-frac must be in [0, 1], got {self.min_valid_frac}")
        if self.spill_bytes < 1 << 16:
            raise UsageError("spill buffer must be at least 64 KiB")
        if self.jobs < 1:
            raise UsageError(f"--jobs must be >= 1, got {self.jobs}")
        if self.contig_aliases not in ALIAS_POLICIES:
            raise UsageError(f"--contig-aliases must be one of {', '.join(ALIAS_POLICIES)}")
        self.keep_contigs = parse_keep(self.keep_contigs)

    def as_manifest(self) -> dict:
        return {
            "input_format": self.input_format or "auto",
            "columns": self.columns,
            "fasta": self.fasta,
            "min_valid_frac": self.min_valid_frac,
            "chrom_names": self.chrom_names,
            "binarize": self.binarize,
            "threshold": self.threshold,
            "min_cov": self.min_cov,
            "pair_adjacent": self.pair_adjacent,
            "explicit_cell_names": self.cell_names is not None,
            "skip_empty": self.skip_empty,
            "contig_aliases": self.contig_aliases,
            "keep_contigs": list(self.keep_contigs),
        }


# --------------------------------------------------------------------------------------------------


def cell_name_from_path(path: str | os.PathLike[str]) -> str:
    """Basename minus a trailing ``.gz`` and one extension: ``a/cell_01.cov.gz`` -> ``cell_01``."""
    name = Path(path).name
    if name.endswith(".gz"):
        name = name[:-3]
    stem, dot, _ = name.rpartition(".")
    return stem if dot and stem else name


def normalise_chrom(name: str, mode: str) -> str:
    """``keep``; ``add-chr``: ``1`` -> ``chr1``, ``MT`` -> ``chrM``; ``strip-chr``: the inverse."""
    if mode == "keep":
        return name
    if mode == "add-chr":
        if name.lower().startswith("chr"):
            return name
        return "chrM" if name == "MT" else "chr" + name
    if name.lower().startswith("chr") and len(name) > 3:
        rest = name[3:]
        return "MT" if rest == "M" else rest
    return name


def chrom_sort_key(name: str) -> tuple:
    """Natural order without a FASTA: 1, 2, ..., 10, ..., X, Y, M, then others alphabetically."""
    base = name[3:] if name.lower().startswith("chr") else name
    if base.isdigit():
        return (0, int(base), name)
    special = {"X": 1, "Y": 2, "M": 3, "MT": 3}
    if base.upper() in special:
        return (1, special[base.upper()], name)
    parts = re.split(r"(\d+)", name)
    return (2, 0, tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in parts))


def binarize_labels(
    mc: np.ndarray, cov: np.ndarray, rule: str, threshold: float = 0.5, min_cov: int = 1
) -> np.ndarray:
    """int8 labels from counts: 1 methylated, 0 unmethylated, -1 excluded.

    * ``threshold``: mc / cov >= threshold -> 1 (ties, e.g. 1 of 2 reads at 0.5, count as methylated).
    * ``drop-mixed``: 1 if all reads methylated, 0 if none, -1 for any mixture.
    * ``majority``: 1 if mc / cov > 0.5, 0 if < 0.5, -1 for exact ties.

    Calls with ``cov < min_cov`` get -1 under every rule.
    """
    mc = np.asarray(mc, dtype=np.int64)
    cov = np.asarray(cov, dtype=np.int64)
    if rule == "threshold":
        label = (mc >= threshold * cov).astype(np.int8)
    elif rule == "drop-mixed":
        label = np.full(mc.shape, -1, dtype=np.int8)
        label[mc == 0] = 0
        label[(mc == cov) & (cov > 0)] = 1
    elif rule == "majority":
        label = np.full(mc.shape, -1, dtype=np.int8)
        label[2 * mc > cov] = 1
        label[2 * mc < cov] = 0
    else:
        raise UsageError(f"unknown binarisation rule {rule!r}")
    label[cov < min_cov] = -1
    return label


def binarize_fractions(beta: np.ndarray, rule: str, threshold: float = 0.5) -> np.ndarray:
    """Labels for fraction-only calls (one nominal read): the same rules applied to beta."""
    beta = np.asarray(beta, dtype=np.float64)
    if rule == "threshold":
        return (beta >= threshold).astype(np.int8)
    label = np.full(beta.shape, -1, dtype=np.int8)
    if rule == "drop-mixed":
        label[beta == 0] = 0
        label[beta == 1] = 1
    else:
        label[beta > 0.5] = 1
        label[beta < 0.5] = 0
    return label
