"""The training objective's perturbation: which observed entries are hidden or corrupted.

Per segment, ``n`` observed entries are chosen at random. Of those, ``floor((1 - random_fraction) * n)``
become unknown (stored -1, model input 0) and the rest get a value re-drawn from the empirical
distribution of observed values (binary: labels, so about ``p_meth`` of them become methylated;
continuous: beta values). The loss is computed only on these ``n`` entries.

Two count rules:

* ``original`` — the published rule ``n = min(floor(L * mask_fraction), #observed)`` with ``L`` the
  number of rows of the segment (256 per 1024-row segment whatever the number of cells).
* ``observed`` (default) — ``n = round(mask_fraction * #observed)`` (at least one when anything is
  observed): the same share of the data is perturbed whatever the number of cells and the coverage.
  Chosen by measurement (``benchmarks/masking_rule.py``, ``docs/benchmarks.md``): as good or
  better than ``original`` on the same fixed validation masks at the same number of steps.

Two units of what is perturbed together:

* ``call`` (the published objective) -- single entries, drawn at random among the observed ones.
* ``run`` -- *read-sized runs*: the observed sites of one cell are chained while consecutive sites are
  at most ``run_gap`` bp apart (about one sequencing read), and whole chains are perturbed, drawn in
  random order until they cover the count above. A hidden call then never has a visible call of its
  own cell within ``run_gap`` bp -- as at imputation, where a missing site of a cell is usually one no
  read of that cell covers, and as in ``cpgformer benchmark``, which hides such runs. With single
  calls hidden, a model learns to copy the concordant neighbours on the same read, which imputation
  does not have.

Random draws come from :func:`segment_rng`: validation masks are keyed by (seed, chromosome,
segment index) only, so they are identical across epochs, runs and processes; training masks add the
epoch, so they are re-drawn each epoch yet reproducible (and identical after ``--resume``).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from cpgformer.codes import MISSING
from cpgformer.data.segments import stable_hash
from cpgformer.errors import UsageError

log = logging.getLogger(__name__)

MASK_RULES = ("original", "observed")
DEFAULT_MASK_RULE = "observed"
MASK_UNITS = ("call", "run")
DEFAULT_MASK_UNIT = "call"
"""The published unit (``run`` is the default of new runs, see ``training.schedule``)."""
DEFAULT_RUN_GAP = 150
"""bp: observed sites of one cell closer than this belong to one read-sized run."""

_PURPOSE_VALIDATION = 1
_PURPOSE_TRAIN = 2
_PURPOSE_CELLS = 3


def segment_rng(
    seed: int, chrom: str, segment_index: int, epoch: int | None = None, purpose: str = "mask"
) -> np.random.Generator:
    """A generator keyed by (seed, chromosome name, segment index[, epoch]).

    ``epoch=None`` is the validation key (fixed across epochs); ``purpose="cells"`` gives an
    independent stream for per-batch cell subsampling.
    """
    if purpose == "cells":
        tag = _PURPOSE_CELLS
    elif epoch is None:
        tag = _PURPOSE_VALIDATION
    else:
        tag = _PURPOSE_TRAIN
    key = [int(seed) & 0xFFFFFFFF, tag, stable_hash(chrom), int(segment_index)]
    if epoch is not None:
        key.append(int(epoch))
    return np.random.default_rng(np.random.SeedSequence(key))


@dataclass(frozen=True)
class MaskingConfig:
    """Parameters of the perturbation (defaults = the published objective)."""

    rule: str = DEFAULT_MASK_RULE
    mask_fraction: float = 0.25
    random_fraction: float = 0.2
    unit: str = DEFAULT_MASK_UNIT
    run_gap: int = DEFAULT_RUN_GAP

    def __post_init__(self) -> None:
        if self.rule not in MASK_RULES:
            raise UsageError(f"mask rule must be one of {', '.join(MASK_RULES)}, got {self.rule!r}")
        if self.unit not in MASK_UNITS:
            raise UsageError(f"mask unit must be one of {', '.join(MASK_UNITS)}, got {self.unit!r}")
        if self.run_gap < 0:
            raise UsageError(f"mask run gap must be >= 0 bp, got {self.run_gap}")
        if not 0.0 < self.mask_fraction <= 1.0:
            raise UsageError(f"mask fraction must be in (0, 1], got {self.mask_fraction}")
        if not 0.0 <= self.random_fraction <= 1.0:
            raise UsageError(f"random fraction must be in [0, 1], got {self.random_fraction}")

    def describe(self) -> str:
        """One line for logs and the CLI, e.g. ``read-sized runs (<= 150 bp), 25 % of observed
        calls, 80 % hidden``."""
        unit = f"read-sized runs (<= {self.run_gap} bp)" if self.unit == "run" else "single calls"
        count = (
            f"{self.mask_fraction:.0%} of observed calls"
            if self.rule == "observed"
            else f"{self.mask_fraction:.0%} of the segment's sites (published count)"
        )
        return f"{unit}, {count}, {1 - self.random_fraction:.0%} hidden"


class EmpiricalSampler:
    """Draws values from the empirical distribution of a sample of observed values.

    Drawing uniformly among the sampled values is the inverse CDF of their empirical distribution
    (the original samples 2,500 observed labels once per split).
    """

    def __init__(self, values: np.ndarray) -> None:
        values = np.asarray(values)
        values = values[values >= 0]
        if values.size == 0:
            raise UsageError("no observed values to build the label distribution from")
        self.values = values

    @property
    def mean(self) -> float:
        return float(self.values.mean())

    def draw(self, n: int, rng: np.random.Generator) -> np.ndarray:
        return self.values[rng.integers(0, self.values.size, size=n)]

    @classmethod
    def from_store(
        cls,
        dataset: object,
        chromosomes: Sequence[str],
        data_mode: str = "binary",
        n: int = 2500,
        seed: int = 0,
    ) -> EmpiricalSampler:
        """Sample ``n`` observed values (labels or betas) uniformly from the calls of ``chromosomes``.

        Reads only the sampled entries of the memory-mapped call arrays.
        """
        nnz = np.array([dataset.n_calls(c) for c in chromosomes], dtype=np.int64)  # type: ignore[attr-defined]
        total = int(nnz.sum())
        if total == 0:
            raise UsageError("the training chromosomes hold no calls")
        rng = np.random.default_rng(np.random.SeedSequence([int(seed) & 0xFFFFFFFF, 0xE3]))
        # oversample: some labels may be excluded (-1) by the binarisation rule
        picks = np.sort(rng.integers(0, total, size=min(total, 4 * n)))
        bounds = np.concatenate([[0], np.cumsum(nnz)])
        parts = []
        for k, chrom in enumerate(chromosomes):
            sel = picks[(picks >= bounds[k]) & (picks < bounds[k + 1])] - bounds[k]
            if sel.size == 0:
                continue
            if data_mode == "binary":
                label = dataset.csr(chrom)[4]  # type: ignore[attr-defined]
                parts.append(np.asarray(label[sel], dtype=np.float32))
            else:
                parts.append(np.asarray(dataset.beta_values(chrom)[sel], dtype=np.float32))  # type: ignore[attr-defined]
        values = np.concatenate(parts) if parts else np.zeros(0, dtype=np.float32)
        values = values[values >= 0][:n]
        return cls(values)


def perturbation_count(n_rows: int, n_observed: int, config: MaskingConfig) -> int:
    """How many observed entries of a segment are perturbed under ``config.rule``."""
    if n_observed <= 0:
        return 0
    if config.rule == "original":
        return min(int(math.floor(n_rows * config.mask_fraction)), n_observed)
    n = int(math.floor(config.mask_fraction * n_observed + 0.5))
    return min(max(n, 1), n_observed)


def read_runs(
    rows: np.ndarray, cols: np.ndarray, positions: np.ndarray, run_gap: int = DEFAULT_RUN_GAP
) -> np.ndarray:
    """Run id of each observed entry (entries sorted by (col, row)).

    A new run starts at each cell's first entry and wherever the distance to the previous observed
    site of the same cell exceeds ``run_gap`` bp.
    """
    n = rows.shape[0]
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    pos = positions[rows]
    new = np.ones(n, dtype=bool)
    new[1:] = (cols[1:] != cols[:-1]) | (pos[1:] - pos[:-1] > run_gap)
    return np.cumsum(new) - 1


def _choose_runs(
    values: np.ndarray, positions: np.ndarray, n: int, run_gap: int, rng: np.random.Generator
) -> np.ndarray:
    """Flat indices of whole read-sized runs, in random run order, until they cover ``n`` calls."""
    n_cols = values.shape[1]
    cols, rows = np.nonzero(values.T != MISSING)  # sorted by (col, row)
    run = read_runs(rows, cols, positions, run_gap)
    n_runs = int(run[-1]) + 1 if run.size else 0
    order = rng.permutation(n_runs)
    sizes = np.bincount(run, minlength=n_runs)[order]
    take = int(np.searchsorted(np.cumsum(sizes), n)) + 1 if n else 0
    rank = np.empty(n_runs, dtype=np.int64)
    rank[order] = np.arange(n_runs)
    r = rank[run]
    picked = np.flatnonzero(r < take)
    picked = picked[np.argsort(r[picked], kind="stable")]  # run by run, in the drawn order
    return rows[picked].astype(np.int64) * n_cols + cols[picked]


def perturb(
    values: np.ndarray,
    config: MaskingConfig,
    sampler: EmpiricalSampler,
    rng: np.random.Generator,
    positions: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Perturb one segment.

    ``values``: [L, C] stored values (int8 labels or float32 betas, -1 missing); ``positions``
    int64 [L] (bp), needed by the ``run`` unit. Returns ``(perturbed, loss_mask)``: ``perturbed``
    has the same dtype, with hidden entries set to -1 and corrupted entries set to a re-drawn value;
    ``loss_mask`` is a bool [L, C] of the perturbed entries (where the loss is computed against the
    original ``values``). Under the ``run`` unit whole runs are chosen (the last may take the count
    past ``n``); the first ``1 - random_fraction`` of the chosen calls, run by run, are hidden.
    """
    flat = values.reshape(-1)
    observed = np.flatnonzero(flat != MISSING)
    n = perturbation_count(values.shape[0], observed.size, config)
    if config.unit == "run":
        if positions is None:
            raise ValueError("the run mask unit needs the positions of the segment's sites")
        chosen = _choose_runs(values, np.asarray(positions), n, config.run_gap, rng)
        n = int(chosen.size)
    else:
        chosen = rng.choice(observed, size=n, replace=False) if n else observed[:0]
    n_unknown = int(math.floor(n * (1.0 - config.random_fraction) + 1e-9))
    out = flat.copy()
    out[chosen[:n_unknown]] = MISSING
    if n > n_unknown:
        out[chosen[n_unknown:]] = sampler.draw(n - n_unknown, rng).astype(values.dtype)
    loss_mask = np.zeros(flat.shape, dtype=bool)
    loss_mask[chosen] = True
    return out.reshape(values.shape), loss_mask.reshape(values.shape)
