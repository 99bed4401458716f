"""DNA embeddings of a block's sites: per window, or with the CNN's convolutions shared between
overlapping windows of nearby CpGs."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

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


def _phase_maps(encoder: Any, h: Tensor, layer: int) -> dict[int, Tensor]:
    """Feature maps of the DNA CNN over a long sequence, one per window-start phase.

    ``h`` ``[1, channels, length]`` is the input of conv ``layer``. Returns phase -> map ``[ch, n]``
    such that ``map[:, k]`` is what a window starting at ``phase + stride * k`` (in units of ``h``'s
    positions; stride = product of the remaining poolings) has at its first output position.
    """
    maps: dict[int, Tensor] = {}
    if h.shape[-1] < encoder.convs[layer].kernel_size[0]:
        return maps  # too short for any window of these phases (none of them is used)
    g = torch.relu(encoder.convs[layer](h))
    pool = int(encoder.pools[layer])
    for r in range(pool):
        if g.shape[-1] - r < pool:
            continue
        pooled = torch.nn.functional.max_pool1d(g[..., r:], pool)
        if layer + 1 < len(encoder.convs):
            for sub, m in _phase_maps(encoder, pooled, layer + 1).items():
                maps[r + pool * sub] = m
        else:
            maps[r] = pooled[0]
    return maps


def shared_dna_embedding(
    encoder: Any,
    fetch_codes: Callable[[int, int], np.ndarray],
    positions: np.ndarray,
    *,
    block_bp: int = 1 << 15,
    max_gap: int = 400,
) -> Tensor:
    """DNA embeddings of the windows centred on sorted ``positions``, convolutions shared.

    Windows of nearby CpGs overlap; the CNN's convolutions are computed once per base over the
    region the windows cover (one map per window-start phase modulo the product of the poolings)
    and each window's flattened features are gathered from them, then the per-window Linear layers
    run as usual. Same arithmetic as :meth:`DNAEncoder.forward` on each window. Sites farther than
    ``max_gap`` bp from both neighbours are embedded directly. ``fetch_codes(start, end)`` returns
    the nucleotide codes of ``[start, end)`` (N outside the contig).
    """
    width = int(encoder.dna_window)
    half = width // 2
    stride = int(np.prod(encoder.pools))
    starts = np.asarray(positions, dtype=np.int64) - half
    n = len(starts)
    out_dim = encoder.proj.out_features
    result = torch.empty((n, out_dim))
    if n == 0:
        return result
    # runs of windows whose starts are close; each run is cut into blocks of ~block_bp
    breaks = np.flatnonzero(np.diff(starts) > max_gap) + 1
    runs = np.split(np.arange(n), breaks)
    hlen = None
    for run in runs:
        if len(run) < 3:  # isolated sites: per-window CNN is cheaper
            windows = np.stack([fetch_codes(int(s), int(s) + width) for s in starts[run]])
            result[run] = encoder(torch.from_numpy(windows.astype(np.int64)))
            continue
        a = 0
        while a < len(run):
            b = int(np.searchsorted(starts[run], starts[run[a]] + block_bp, "right"))
            b = max(b, a + 1)
            idx = run[a:b]
            region_start = int(starts[idx[0]])
            codes = fetch_codes(region_start, int(starts[idx[-1]]) + width)
            h = encoder.nucleotide_embed(torch.from_numpy(codes.astype(np.int64)))
            maps = _phase_maps(encoder, h.t().unsqueeze(0), 0)
            if hlen is None:
                probe = encoder.nucleotide_embed(torch.zeros((1, width), dtype=torch.long))
                hlen = _phase_maps(encoder, probe.transpose(1, 2), 0)[0].shape[1]
            offsets = starts[idx] - region_start
            feats = torch.empty((len(idx), maps[0].shape[0] * hlen))
            for phase in np.unique(offsets % stride):
                sel = np.flatnonzero(offsets % stride == phase)
                k = torch.from_numpy((offsets[sel] - phase) // stride)
                m = maps[int(phase)]
                gathered = m[:, k[:, None] + torch.arange(hlen)]  # [ch, n, hlen]
                feats[torch.from_numpy(sel)] = gathered.permute(1, 0, 2).reshape(len(sel), -1)
            hidden = encoder.dropout(torch.relu(encoder.fc(feats)))
            result[idx] = encoder.proj(hidden)
            a = b
    return result


def _has_shared_path(encoder: Any) -> bool:
    return all(
        hasattr(encoder, name)
        for name in ("convs", "pools", "nucleotide_embed", "fc", "proj", "dropout", "dna_window")
    )


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
