"""The ``Batch`` handed to the model: named tensors, never positional tuples.

Shapes: B segments, L sites, C cells, W DNA window, S DNA sequence.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
import torch

from cpgformer.codes import CODE_N, to_model_input

# runs of DNA windows closer than this are read from the reference in one piece
_FETCH_GAP = 1 << 14


REST_FEATURES = 3
"""Width of :func:`rest_totals` (sum, calls, cells): the ``rest`` input of
:func:`cpgformer.nn.embeddings.input_summaries`."""


def rest_totals(values: np.ndarray, columns: np.ndarray, data_mode: str = "binary") -> np.ndarray:
    """What :func:`cpgformer.nn.embeddings.input_summaries` needs of the cells left out of a grid
    (training on resampled cells): ``values`` [L, C] stored values of every cell (-1 missing;
    binary labels or betas), ``columns`` the cells kept. Returns float32 [L, 3]: per site the sum
    of the other cells' values, their number of calls, and their number of cells."""
    values = np.asarray(values)
    rest = np.ones(values.shape[1], dtype=bool)
    rest[np.asarray(columns, dtype=np.int64)] = False
    other = values[:, rest].astype(np.float32)
    observed = other >= 0
    v = np.where(observed, other, 0.0)
    if data_mode == "binary":
        v = np.clip(v, 0.0, 1.0)
    out = np.empty((values.shape[0], REST_FEATURES), dtype=np.float32)
    out[:, 0] = v.sum(1)
    out[:, 1] = observed.sum(1)
    out[:, 2] = float(rest.sum())
    return out


@dataclass
class SegmentItem:
    """One perturbed segment as numpy arrays (what a dataset item is before collation)."""

    values: (
        np.ndarray
    )  # [L, C] stored values after perturbation (int8 labels / float32 betas, -1 missing)
    targets: np.ndarray  # [L, C] float32 original stored values (-1 missing)
    loss_mask: np.ndarray  # [L, C] bool perturbed entries
    positions: np.ndarray  # [L] int64 bp
    cell_ids: np.ndarray  # [C] int64
    chrom_id: int
    segment_id: int
    start: int
    dna: np.ndarray | None = None  # [L, W] int8 windows
    dna_sequence: np.ndarray | None = None  # [S] int8 (see dna_sequence)
    dna_starts: np.ndarray | None = None  # [L] int64 window starts in dna_sequence
    rest: np.ndarray | None = None  # [L, 3] float32 totals of the cells left out (rest_totals)


@dataclass
class Batch:
    """A batch of segments.

    * ``states`` [B, L, C]: model input coding (:func:`cpgformer.codes.to_model_input`): long 0/1/2
      for binary data, float 0 or 1 + beta for continuous data.
    * ``targets`` [B, L, C] float: stored label (0/1) or beta; -1 where unobserved.
    * ``loss_mask`` [B, L, C] bool: perturbed entries, the only ones the loss sees.
    * ``positions`` [B, L] int64 bp relative to each segment's first site.
    * ``cell_ids`` [B, C] int64 indices into the cell table.
    * ``dna`` [B, L, W] int8 nucleotide codes of each site's window, or ``None``;
    * ``dna_sequence`` [B, S] int8 and ``dna_starts`` [B, L] int64: the same windows as the stretches
      of sequence they cover (:func:`dna_sequence`, N-padded to the longest of the batch) and each
      window's start in it; the model shares convolutions between overlapping windows. A batch
      carries one of the two forms, or neither when the model uses no DNA.
    * ``rest`` [B, L, 3] float32 or ``None``: with resampled cells, the per-site totals of the
      segment's cells not in the batch (:func:`rest_totals`), so the input
      summaries cover every cell.
    * ``chrom_ids``, ``segment_ids``, ``starts`` [B] int64: chromosome index in the store, segment
      index within the chromosome, first row.
    """

    states: torch.Tensor
    targets: torch.Tensor
    loss_mask: torch.Tensor
    positions: torch.Tensor
    cell_ids: torch.Tensor
    chrom_ids: torch.Tensor
    segment_ids: torch.Tensor
    starts: torch.Tensor
    dna: torch.Tensor | None = None
    dna_sequence: torch.Tensor | None = None
    dna_starts: torch.Tensor | None = None
    rest: torch.Tensor | None = None

    @property
    def batch_size(self) -> int:
        return int(self.states.shape[0])

    def to(self, device: torch.device | str) -> Batch:
        moved = {}
        for f in fields(self):
            value = getattr(self, f.name)
            moved[f.name] = value.to(device, non_blocking=True) if value is not None else None
        return Batch(**moved)

    def subset_cells(self, columns: torch.Tensor) -> Batch:
        """The same batch restricted to cell columns ``columns`` (positions in the C axis)."""
        return Batch(
            states=self.states[:, :, columns],
            targets=self.targets[:, :, columns],
            loss_mask=self.loss_mask[:, :, columns],
            positions=self.positions,
            cell_ids=self.cell_ids[:, columns],
            chrom_ids=self.chrom_ids,
            segment_ids=self.segment_ids,
            starts=self.starts,
            dna=self.dna,
            dna_sequence=self.dna_sequence,
            dna_starts=self.dna_starts,
        )


def collate(items: Sequence[SegmentItem], data_mode: str = "binary") -> Batch:
    """Stack segments of equal length and cell count into a :class:`Batch`."""
    lengths = {it.values.shape for it in items}
    if len(lengths) != 1:
        raise ValueError(f"segments of one batch must have equal shapes, got {sorted(lengths)}")
    values = np.stack([it.values for it in items])
    model_input = to_model_input(values)
    if data_mode == "binary":
        states = torch.from_numpy(model_input.astype(np.int64))
    else:
        states = torch.from_numpy(model_input.astype(np.float32))
    positions = np.stack([it.positions - it.positions[0] for it in items]).astype(np.int64)
    dna = dna_seq = dna_starts = None
    if items[0].dna is not None:
        dna = torch.from_numpy(np.stack([it.dna for it in items]))
    if items[0].dna_sequence is not None:
        span = max(len(it.dna_sequence) for it in items)
        seq = np.full((len(items), span), CODE_N, dtype=np.int8)
        for row, it in zip(seq, items):
            row[: len(it.dna_sequence)] = it.dna_sequence
        dna_seq = torch.from_numpy(seq)
        dna_starts = torch.from_numpy(np.stack([it.dna_starts for it in items]).astype(np.int64))
    return Batch(
        states=states,
        targets=torch.from_numpy(np.stack([it.targets for it in items]).astype(np.float32)),
        loss_mask=torch.from_numpy(np.stack([it.loss_mask for it in items])),
        positions=torch.from_numpy(positions),
        cell_ids=torch.from_numpy(np.stack([it.cell_ids for it in items]).astype(np.int64)),
        chrom_ids=torch.tensor([it.chrom_id for it in items], dtype=torch.int64),
        segment_ids=torch.tensor([it.segment_id for it in items], dtype=torch.int64),
        starts=torch.tensor([it.start for it in items], dtype=torch.int64),
        dna=dna,
        dna_sequence=dna_seq,
        dna_starts=dna_starts,
        rest=None
        if items[0].rest is None
        else torch.from_numpy(np.stack([it.rest for it in items])),
    )


def dna_sequence(
    reference: Any, chrom: str, positions: np.ndarray, width: int
) -> tuple[np.ndarray, np.ndarray]:
    """The DNA windows of ``positions`` (``width`` bp, site at ``width // 2``, N beyond the contig
    ends, as ``Reference.windows``) as one sequence: the stretches covered by runs of overlapping
    windows, concatenated, int8 ``[S]``, and each window's start in it, int64 ``[L]``. ``S`` is at
    most the span of the windows and at most ``L * width``."""
    positions = np.asarray(positions, dtype=np.int64)
    if len(positions) == 0:
        return np.zeros(0, dtype=np.int8), np.zeros(0, dtype=np.int64)
    order = np.argsort(positions, kind="stable")
    starts = positions[order] - width // 2
    new_run = np.ones(len(starts), dtype=bool)
    new_run[1:] = np.diff(starts) >= width
    firsts = np.flatnonzero(new_run)
    lasts = np.append(firsts[1:], len(starts)) - 1
    lo, hi = starts[firsts], starts[lasts] + width
    offset = np.concatenate([[0], np.cumsum(hi - lo)[:-1]])
    sequence = np.empty(int((hi - lo).sum()), dtype=np.int8)
    # one read per cluster of runs closer than _FETCH_GAP
    cut = np.flatnonzero(lo[1:] - hi[:-1] > _FETCH_GAP) + 1
    for a, b in zip(np.append(0, cut), np.append(cut, len(lo))):
        codes = reference.fetch_codes(chrom, int(lo[a]), int(hi[b - 1]))
        for r in range(a, b):
            piece = codes[lo[r] - lo[a] : hi[r] - lo[a]]
            sequence[offset[r] : offset[r] + len(piece)] = piece
    run = np.cumsum(new_run) - 1
    result = np.empty(len(starts), dtype=np.int64)
    result[order] = starts - lo[run] + offset[run]
    return sequence, result
