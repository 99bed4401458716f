"""DNA embeddings of a block's sites: per window, or with the CNN's convolutions shared between
overlapping windows of nearby CpGs."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor

from cpgformer.data.batch import dna_sequence
from cpgformer.model import Predictor

if TYPE_CHECKING:
    from cpgformer.impute.run import ImputeOptions
    from cpgformer.impute.sites import ChromSource


def embed_sites(
    predictor: Predictor,
    windows_fn: Callable[[int, int], np.ndarray],
    n_rows: int,
    embed_chunk: int = 1024,
) -> Tensor | None:
    """DNA embeddings ``[n_rows, E]`` of rows ``0..n_rows`` of a block, computed in chunks.

    ``windows_fn(a, b)`` returns the ``[b - a, dna_window]`` nucleotide codes of rows ``a:b``.
    """
    if predictor.embed_fn is None or not predictor.dna_window:
        return None
    parts = []
    with torch.inference_mode():
        for a in range(0, n_rows, embed_chunk):
            b = min(n_rows, a + embed_chunk)
            w = torch.from_numpy(np.ascontiguousarray(windows_fn(a, b), dtype=np.int64))
            parts.append(predictor.embed_fn(w).float())
    if not parts:
        return torch.zeros((0, 0))
    return torch.cat(parts, dim=0)


def chunk_embedding(
    predictor: Predictor,
    src: ChromSource,
    lo: int,
    hi: int,
    windows_fn: Callable[[int, int], np.ndarray],
    opts: ImputeOptions,
) -> Tensor | None:
    """DNA embeddings of rows ``[lo, hi)``: shared convolutions when the encoder allows it."""
    encoder = predictor.dna_encoder
    reference = getattr(windows_fn, "reference", None)
    if (
        opts.shared_dna
        and encoder is not None
        and reference is not None
        and hasattr(encoder, "encode")
    ):
        positions = np.asarray(src.positions[lo:hi], dtype=np.int64)
        seq, starts = dna_sequence(reference, src.chrom, positions, encoder.dna_window)
        with torch.inference_mode():
            return encoder.encode(torch.from_numpy(seq), torch.from_numpy(starts)).float()
    return embed_sites(
        predictor, lambda x, y: windows_fn(lo + x, lo + y), hi - lo, opts.embed_chunk
    )
