"""What ``prepare`` records and reports: manifest entries and the closing summary."""

from __future__ import annotations

import dataclasses
import logging
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cpgformer.io.pooling import strand_rule
from cpgformer.prepare.cells import FileReport, SkippedCell
from cpgformer.prepare.options import PrepareOptions

log = logging.getLogger("cpgformer.prepare")  # one name for all of prepare's messages

TIES = {
    "threshold": "methylated (mc/cov >= threshold)",
    "drop-mixed": "any mixed call excluded",
    "majority": "excluded (label -1)",
}
INVALID_REASONS = ("not_cpg", "out_of_range", "n_base", "unknown_contig")


def fasta_identity(reference: Any, fasta: str | None) -> dict | None:
    """The reference's identity (with its resolved path) for the manifest."""
    if reference is None:
        return None
    ident = reference.identity()
    ident = dict(ident) if isinstance(ident, dict) else {"identity": ident}
    if fasta:
        ident["path"] = str(Path(fasta).resolve())
    return ident


def binarisation_record(opts: PrepareOptions, note: str | None = None) -> dict:
    """The label rule as the manifest records it (``note`` instead of the tie rule)."""
    record: dict[str, Any] = {
        "rule": opts.binarize,
        "threshold": opts.threshold if opts.binarize == "threshold" else 0.5,
    }
    if note is None:
        record["ties"] = TIES[opts.binarize]
    record["min_cov"] = opts.min_cov
    if note is not None:
        record["note"] = note
    return record


def cell_flags(report: FileReport) -> str:
    """Comma-separated flags of a cell for the cell table."""
    flags = []
    if not report.counts_available:
        flags.append("counts_unavailable")
    if report.n_adjacent_pairs:
        flags.append("unpooled_strands")
    return ",".join(flags)


def files_manifest(
    opts: PrepareOptions,
    reports: Sequence[FileReport],
    skipped: Sequence[SkippedCell],
    reference: Any,
    contigs: dict,
) -> dict:
    """Manifest entries of a store prepared from call files."""
    dropped: Counter[str] = Counter()
    for r in reports:
        dropped.update(r.dropped)
    return {
        "parameters": opts.as_manifest(),
        "inputs": [r.as_dict() for r in reports],
        "fasta": fasta_identity(reference, opts.fasta),
        "strand_rule": strand_rule(reference, opts.pair_adjacent),
        "binarisation": binarisation_record(opts),
        "data_mode": "binary",
        "dropped": dict(dropped),
        "n_adjacent_pairs": sum(r.n_adjacent_pairs for r in reports),
        "skipped_empty": [dataclasses.asdict(c) for c in skipped],
        "contigs": contigs,
    }


def log_summary(
    output: Any,
    manifest: dict,
    opts: PrepareOptions,
    reports: Sequence[FileReport],
    skipped: Sequence[SkippedCell],
    reference: Any,
    seconds: tuple[float, float],
) -> None:
    """The closing summary and the warnings a user should see."""
    formats = Counter(r.format.split(" ")[0] for r in reports)
    log.info(
        "prepared %s: %d cells%s, %d chromosomes, %d sites, %d calls from %d rows of %d files "
        "(%s; read %.1f s, total %.1f s)",
        output,
        manifest["n_cells"],
        f" ({len(skipped)} without calls skipped)" if skipped else "",
        len(manifest["chromosomes"]),
        manifest["n_sites"],
        manifest["n_calls"],
        sum(r.n_calls_read for r in reports),
        len(reports) + len(skipped),
        ", ".join(f"{n} {fmt}" for fmt, n in formats.most_common()),
        *seconds,
    )
    if skipped:
        shown = ", ".join(c.cell for c in skipped[:5]) + (" ..." if len(skipped) > 5 else "")
        log.warning(
            "%d cell(s) without calls left out (listed in the manifest under skipped_empty): %s",
            len(skipped),
            shown,
        )
    n_adjacent = manifest.get("n_adjacent_pairs", 0)
    if n_adjacent and reference is None and not opts.pair_adjacent:
        log.warning(
            "%d adjacent (x, x+1) call pairs within cells look like unpooled strands of one CpG; "
            "give --fasta to pool them exactly (or --pair-adjacent)",
            n_adjacent,
        )
    if reference is not None:
        _warn_invalid(reports)
    if opts.input_format is None and opts.columns is None and formats.get("deepcpg"):
        log.info(
            "%d file(s) read as DeepCpG profiles (one row per CpG at its + strand C); if their "
            "rows are per-C calls on both strands, give --input-format per-c-state",
            formats["deepcpg"],
        )


def _warn_invalid(reports: Sequence[FileReport]) -> None:
    with_invalid = [r for r in reports if any(r.dropped.get(k) for k in INVALID_REASONS)]
    if not with_invalid:
        return
    total: Counter[str] = Counter()
    for r in with_invalid:
        total.update({k: r.dropped[k] for k in INVALID_REASONS if r.dropped.get(k)})
    log.warning(
        "%d of %d files had calls invalid against the FASTA, %d dropped in all (%s; per file "
        "in the manifest's inputs)",
        len(with_invalid),
        len(reports),
        sum(total.values()),
        ", ".join(f"{k} {v}" for k, v in sorted(total.items())),
    )
