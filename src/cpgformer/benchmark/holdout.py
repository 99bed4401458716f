"""Hold-out protocols: which observed entries are hidden, and how every model predicts them.

Two protocols, both on dense per-chromosome matrices (``states`` int8 [L, C], -1 missing):

* **holdout** -- a seeded fraction of the observed entries of the test chromosomes is hidden in
  *read-sized runs*: the observed sites of one cell are chained while consecutive sites are at most
  ``run_gap`` bp apart, and a whole chain is hidden or kept. A hidden call therefore never has a visible
  call of the same cell within ``run_gap`` bp, so a neighbour from the same sequencing read cannot leak
  its state. Every model receives the same masked input and is asked for the same entries.
* **exhaustive** -- the original's protocol: each observed entry (or a seeded sample of them) is hidden
  *alone* and predicted from everything else. It is batched without changing any prediction:

  - a model that never reads the target entry itself (all baselines here: their features exclude the
    target site or the target cell) predicts every entry from the unmasked input in one call;
  - a model whose prediction at row ``i`` depends on rows ``i - R .. i + R`` only (receptive field
    ``R`` sites, e.g. ``n_layers * (site_window - 1) / 2`` for CpG Transformer) gets entries hidden
    together whenever their rows are more than ``R`` apart, so none of them lies in another's
    receptive field; entries in the same row are never grouped.

Selection depends only on which entries are observed (never on their labels) and on the seed.
"""

from __future__ import annotations

import heapq
import logging
from dataclasses import dataclass, replace
from typing import Protocol

import numpy as np

from cpgformer.codes import MISSING
from cpgformer.data.masking import DEFAULT_RUN_GAP, read_runs

log = logging.getLogger(__name__)


@dataclass
class ChromData:
    """One chromosome as every benchmark model sees it.

    ``states`` int8 [L, C] (-1 missing / 0 / 1); ``positions`` int64 [L] sorted 0-based + C positions;
    ``sequence`` int8 nucleotide codes of the whole chromosome (index = 0-based bp) or ``None`` when no
    FASTA was given; ``chrom`` the chromosome of the rows.
    """

    name: str
    positions: np.ndarray
    states: np.ndarray
    sequence: np.ndarray | None = None
    chrom: str = ""
    """The chromosome the rows come from (a block of rows is named ``chrom:start-stop``);
    empty = ``name``."""

    def __post_init__(self) -> None:
        if not self.chrom:
            self.chrom = self.name

    @property
    def n_sites(self) -> int:
        return int(self.states.shape[0])

    @property
    def n_cells(self) -> int:
        return int(self.states.shape[1])


class Imputer(Protocol):
    """What the protocols need from a model (see :mod:`cpgformer.benchmark.baselines`)."""

    name: str
    sees_target: bool
    receptive_field: int | None

    def predict(self, chrom: ChromData, rows: np.ndarray, cols: np.ndarray) -> np.ndarray: ...


@dataclass
class HiddenEntries:
    """Entries of one chromosome that are scored: rows/cols int64 [Q] sorted by (row, col), labels."""

    chrom: str
    rows: np.ndarray
    cols: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return int(self.rows.shape[0])


def _observed_entries(
    states: np.ndarray, cell_mask: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray]:
    """Observed (row, col) pairs sorted by (col, row), restricted to cells where ``cell_mask``."""
    cols, rows = np.nonzero(states.T != MISSING)
    if cell_mask is not None:
        keep = cell_mask[cols]
        cols, rows = cols[keep], rows[keep]
    return rows.astype(np.int64), cols.astype(np.int64)


def _sorted_entries(chrom: str, rows: np.ndarray, cols: np.ndarray, states: np.ndarray):
    order = np.lexsort((cols, rows))
    rows, cols = rows[order], cols[order]
    return HiddenEntries(chrom, rows, cols, states[rows, cols].astype(np.int8))


def holdout_entries(
    chrom: ChromData,
    fraction: float,
    rng: np.random.Generator,
    run_gap: int = DEFAULT_RUN_GAP,
    cell_mask: np.ndarray | None = None,
) -> HiddenEntries:
    """Hide each read-sized run of observed calls with probability ``fraction``.

    ``cell_mask`` bool [C]: cells whose entries may be hidden (excluded cells stay visible input).
    The expected hidden fraction of observed entries is ``fraction``; the choice depends only on the
    observed pattern, the positions and ``rng``.
    """
    return holdout_rounds(chrom, fraction, rng, 1, run_gap, cell_mask)[0]


def holdout_rounds(
    chrom: ChromData,
    fraction: float,
    rng: np.random.Generator,
    rounds: int = 1,
    run_gap: int = DEFAULT_RUN_GAP,
    cell_mask: np.ndarray | None = None,
) -> list[HiddenEntries]:
    """``rounds`` disjoint hold-outs of read-sized runs, each hiding a ``fraction`` of them.

    Each run draws one uniform number ``u``; round ``r`` hides the runs with ``r * fraction <= u <
    (r + 1) * fraction`` (the last possible round also takes ``u`` up to 1). Round 0 is exactly
    :func:`holdout_entries` with the same generator state; with ``ceil(1 / fraction)`` rounds every
    observed call is hidden (and scored) exactly once.
    """
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"hide fraction must be in (0, 1], got {fraction}")
    most = max_rounds(fraction)
    if not 1 <= rounds <= most:
        raise ValueError(f"rounds must be in 1..{most} for hide fraction {fraction}, got {rounds}")
    rows, cols = _observed_entries(chrom.states, cell_mask)
    run = read_runs(rows, cols, chrom.positions, run_gap)
    n_runs = int(run[-1]) + 1 if run.size else 0
    u = rng.random(n_runs)[run] if run.size else np.zeros(0)
    out = []
    for r in range(rounds):
        keep = u >= r * fraction
        if r < most - 1:
            keep &= u < (r + 1) * fraction
        out.append(_sorted_entries(chrom.name, rows[keep], cols[keep], chrom.states))
    return out


def max_rounds(fraction: float) -> int:
    """Disjoint hold-out rounds a hide fraction allows (the last may hide less)."""
    return max(1, int(np.ceil(1.0 / fraction - 1e-9)))


def sample_entries(
    chrom: ChromData,
    fraction: float,
    rng: np.random.Generator,
    cell_mask: np.ndarray | None = None,
) -> HiddenEntries:
    """Observed entries scored by the exhaustive protocol: all of them (``fraction >= 1``) or each
    independently with probability ``fraction``."""
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    rows, cols = _observed_entries(chrom.states, cell_mask)
    if fraction < 1.0:
        keep = rng.random(rows.shape[0]) < fraction
        rows, cols = rows[keep], cols[keep]
    return _sorted_entries(chrom.name, rows, cols, chrom.states)


def mask_entries(chrom: ChromData, rows: np.ndarray, cols: np.ndarray) -> ChromData:
    """A copy of ``chrom`` whose entries (rows, cols) are missing; the copy is read-only."""
    states = np.array(chrom.states, dtype=np.int8, copy=True)
    states[rows, cols] = MISSING
    states.setflags(write=False)
    return replace(chrom, states=states)


def separated_groups(rows: np.ndarray, receptive_field: int | None) -> list[np.ndarray]:
    """Split entries into groups whose rows are pairwise more than ``receptive_field`` apart.

    Greedy interval colouring in row order (optimal: the number of groups equals the largest number
    of entries within any ``receptive_field + 1`` consecutive rows). ``None`` = unbounded receptive
    field: one entry per group. Returns index arrays into ``rows``.
    """
    n = rows.shape[0]
    if receptive_field is None:
        return [np.array([k]) for k in range(n)]
    order = np.argsort(rows, kind="stable")
    heap: list[tuple[int, int]] = []  # (last row, group id)
    members: list[list[int]] = []
    for k in order.tolist():
        r = int(rows[k])
        if heap and heap[0][0] < r - receptive_field:
            _, g = heapq.heappop(heap)
        else:
            g = len(members)
            members.append([])
        members[g].append(k)
        heapq.heappush(heap, (r, g))
    return [np.asarray(m, dtype=np.int64) for m in members]


def predict_holdout(model: Imputer, masked: ChromData, hidden: HiddenEntries) -> np.ndarray:
    """Predictions of ``model`` for the hidden entries from the masked input (float64 [Q])."""
    probs = np.asarray(model.predict(masked, hidden.rows, hidden.cols), dtype=np.float64)
    if probs.shape != hidden.rows.shape:
        raise RuntimeError(f"{model.name}: returned {probs.shape} predictions for {len(hidden)}")
    return probs


def predict_exhaustive(model: Imputer, chrom: ChromData, hidden: HiddenEntries) -> np.ndarray:
    """Each entry of ``hidden`` predicted with only itself hidden (batched, identical results)."""
    if len(hidden) == 0:
        return np.zeros(0, dtype=np.float64)
    full = replace(chrom, states=np.asarray(chrom.states))
    if not model.sees_target:
        return predict_holdout(model, full, hidden)
    groups = separated_groups(hidden.rows, model.receptive_field)
    log.info(
        "%s: %d entries of %s in %d exhaustive passes",
        model.name,
        len(hidden),
        chrom.name,
        len(groups),
    )
    from cpgformer.utils.progress import progress

    out = np.empty(len(hidden), dtype=np.float64)
    for idx in progress(groups, desc=f"{model.name} {chrom.name}", unit="pass"):
        rows, cols = hidden.rows[idx], hidden.cols[idx]
        masked = mask_entries(chrom, rows, cols)
        out[idx] = np.asarray(model.predict(masked, rows, cols), dtype=np.float64)
    return out
