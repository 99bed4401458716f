"""The record type every input reader yields: a chunk of calls from one file and one contig."""

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
