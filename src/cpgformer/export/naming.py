"""Names written by the exports: contig spellings, region names, the chromosomes chosen."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import pandas as pd

from cpgformer.errors import UsageError
from cpgformer.impute import open_imputed

CHROM_STYLES = ("as-is", "ucsc", "ensembl")


def style_chrom(name: str, style: str) -> str:
    """A contig name in ``style``: ``as-is``; ``ucsc`` ``1`` -> ``chr1``, ``MT`` -> ``chrM``;
    ``ensembl`` ``chr1`` -> ``1``, ``chrM`` -> ``MT``."""
    if style == "as-is":
        return name
    if style == "ucsc":
        if name.lower().startswith("chr"):
            return "chr" + name[3:]
        return "chrM" if name in ("MT", "M") else "chr" + name
    if style == "ensembl":
        if name.lower().startswith("chr") and len(name) > 3:
            rest = name[3:]
            return "MT" if rest == "M" else rest
        return "MT" if name == "M" else name
    raise UsageError(f"--chrom-style must be one of {', '.join(CHROM_STYLES)}, got {style!r}")


def chrom_names(chroms: Sequence[str], style: str) -> dict[str, str]:
    """Store contig -> written name; :class:`UsageError` when two contigs would share a name."""
    out = {c: style_chrom(c, style) for c in chroms}
    seen: dict[str, str] = {}
    for c, n in out.items():
        if n in seen:
            raise UsageError(
                f"--chrom-style {style}: contigs {seen[n]!r} and {c!r} would both be named {n!r}"
            )
        seen[n] = c
    return out


def region_names(chrom: Any, start: Any, end: Any) -> pd.Series:
    """``chrom:start-end`` with a **1-based** start (the syntax genome browsers and samtools read)
    for 0-based half-open ``[start, end)``."""
    return (
        pd.Series(np.asarray(chrom, dtype=object)).astype(str)
        + ":"
        + pd.Series(np.asarray(start, dtype=np.int64) + 1).astype(str)
        + "-"
        + pd.Series(np.asarray(end, dtype=np.int64)).astype(str)
    )


def store_chroms(imp: Any, chroms: Sequence[str] | None) -> list[str]:
    """The chosen chromosomes in the store's contig order (all when ``chroms`` is empty)."""
    if not chroms:
        return list(imp.chromosomes)
    for c in chroms:
        if c not in imp.chromosomes:
            raise UsageError(
                f"{imp.path}: chromosome {c!r} was not imputed (has {', '.join(imp.chromosomes[:10])})"
            )
    chosen = set(chroms)
    return [c for c in imp.chromosomes if c in chosen]


MAPPED_BYTES = 256 << 20
"""Bytes of imputed-store chunks read through one set of memory maps before they are dropped."""


def chunk_groups(imp: Any, chrom: str) -> Iterator[tuple[Any, list[tuple[int, int]]]]:
    """The chunks of ``chrom`` in groups, each with a freshly opened copy of the imputed store.

    An imputed store keeps the memory maps of every array it has read, and the pages read through
    them stay in the process's resident memory while the maps live; reading a big store through one
    object would make resident memory grow with the store. Each group gets its own store object
    (dropped before the next one opens), so at most about :data:`MAPPED_BYTES` of chunks plus the
    touched part of the observed calls are mapped at once.
    """
    chunks = imp.chunks(chrom)
    per = max(1, MAPPED_BYTES // max(1, 2 * imp.chunk_sites * imp.n_cells))
    for g in range(0, len(chunks), per):
        fresh = open_imputed(imp.path)
        yield fresh, chunks[g : g + per]
        del fresh
