"""The records of reading call files: chunks of calls (one file, one contig) and the counters."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class CallChunk:
    """A block of rows of one input file, all on one contig.

    Coordinates are converted at the reader: ``pos`` is the 0-based coordinate of the C the row
    describes (for pooled formats, the + strand C of the CpG, with ``pooled=True``).
    """

    chrom: str
    pos: np.ndarray  # int64 [n]
    strand: np.ndarray  # int8 [n]: +1, -1, or 0 (unknown, unstranded per-C formats)
    mc: np.ndarray  # int32 [n] methylated reads
    cov: np.ndarray  # int32 [n] total reads
    line: np.ndarray  # int64 [n] 1-based source line numbers
    pooled: bool = False
    frac: np.ndarray | None = field(default=None)  # float32 [n] for fraction-only inputs (cov = 1)

    def __len__(self) -> int:
        return int(self.pos.shape[0])


@dataclass
class ReadStats:
    """Counters filled in while :func:`cpgformer.io.readers.read_calls` iterates (pass one in to
    see them).

    ``n_skipped_context``: rows dropped because their context does not start with ``CG`` (ALLC,
    CpG report ``--CX``); ``n_skipped_zero``: CpG-report rows with mc + unmeth = 0;
    ``counts_available`` is False for fraction-only formats (cov = 1 nominal, flag the cell).
    """

    format: str = ""
    n_lines: int = 0
    n_skipped_lines: int = 0
    header: str | None = None
    n_rows: int = 0
    n_calls: int = 0
    n_skipped_context: int = 0
    n_skipped_zero: int = 0
    counts_available: bool = True
    contigs: dict[str, int] = field(default_factory=dict)
