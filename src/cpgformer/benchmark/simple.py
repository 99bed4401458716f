"""What every benchmark model shares (:class:`Baseline`, sequence windows, nearest observed
calls) and the simple baselines: site mean, cell mean, nearest neighbour, k nearest cells."""

from __future__ import annotations

import abc
from collections.abc import Sequence

import numpy as np

from cpgformer.benchmark.holdout import ChromData
from cpgformer.codes import CODE_N, MISSING
from cpgformer.errors import UsageError


def sequence_windows(sequence: np.ndarray, positions: np.ndarray, width: int) -> np.ndarray:
    """int64 ``[N, width]`` nucleotide codes centred on each position (C at index ``width // 2``),
    N beyond the chromosome ends."""
    half = width // 2
    idx = np.asarray(positions, dtype=np.int64)[:, None] + np.arange(-half, width - half)
    valid = (idx >= 0) & (idx < sequence.shape[0])
    out = np.full(idx.shape, CODE_N, dtype=np.int64)
    out[valid] = sequence[idx[valid]]
    return out


def nearest_observed(
    obs_rows: np.ndarray, query_rows: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Indices into ``obs_rows`` (sorted) of the ``k`` nearest entries strictly before and strictly
    after each query row, nearest first: ``(up [Q, k], up_valid, down [Q, k], down_valid)``."""
    n = obs_rows.shape[0]
    left = np.searchsorted(obs_rows, query_rows, side="left")
    right = np.searchsorted(obs_rows, query_rows, side="right")
    steps = np.arange(k)
    up = left[:, None] - 1 - steps
    down = right[:, None] + steps
    up_valid = up >= 0
    down_valid = down < n
    return np.clip(up, 0, max(n - 1, 0)), up_valid, np.clip(down, 0, max(n - 1, 0)), down_valid


def _cell_means(train: Sequence[ChromData], n_cells: int) -> tuple[np.ndarray, float]:
    meth = np.zeros(n_cells)
    total = np.zeros(n_cells)
    for ch in train:
        s = np.asarray(ch.states)
        meth += (s == 1).sum(axis=0)
        total += (s != MISSING).sum(axis=0)
    overall = float(meth.sum() / total.sum()) if total.sum() else 0.5
    means = np.where(total > 0, meth / np.maximum(total, 1), overall)
    return means, overall


class Baseline(abc.ABC):
    """Base class: the cell-mean fallback every baseline uses where it has no evidence."""

    name = "baseline"
    sees_target = False
    receptive_field: int | None = None

    def __init__(self) -> None:
        self.cell_mean: np.ndarray | None = None
        self.overall_mean = 0.5

    def fit(self, train: Sequence[ChromData], cells: Sequence[str]) -> None:
        self.cell_mean, self.overall_mean = _cell_means(train, len(cells))

    def _fallback(self, cols: np.ndarray) -> np.ndarray:
        if self.cell_mean is None:
            raise RuntimeError(f"{self.name}: predict() before fit()")
        return self.cell_mean[cols]

    @abc.abstractmethod
    def predict(self, chrom: ChromData, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """Probabilities (float64 [Q]) of entries (rows, cols) from the visible ``chrom.states``."""


class CellMean(Baseline):
    """The cell's methylated fraction on the training chromosomes."""

    name = "cell-mean"
    receptive_field = 0

    def predict(self, chrom: ChromData, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        return self._fallback(cols).astype(np.float64)


class SiteMean(Baseline):
    """Mean state of the other cells observed at the same site."""

    name = "site-mean"
    receptive_field = 0

    def predict(self, chrom: ChromData, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        s = np.asarray(chrom.states)[rows].astype(np.float64)  # [Q, C]
        seen = s != MISSING
        seen[np.arange(rows.shape[0]), cols] = False
        count = seen.sum(axis=1)
        total = np.where(seen, s, 0.0).sum(axis=1)
        return np.where(count > 0, total / np.maximum(count, 1), self._fallback(cols))


class NearestNeighbour(Baseline):
    """Nearest observed site of the same cell on each side, weighted by inverse bp distance."""

    name = "nearest-neighbour"

    def predict(self, chrom: ChromData, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        states = np.asarray(chrom.states)
        out = self._fallback(cols).astype(np.float64)
        for c in np.unique(cols):
            sel = np.flatnonzero(cols == c)
            obs = np.flatnonzero(states[:, c] != MISSING)
            if obs.size == 0:
                continue
            q = rows[sel]
            up, up_ok, down, down_ok = nearest_observed(obs, q, 1)
            up, up_ok, down, down_ok = up[:, 0], up_ok[:, 0], down[:, 0], down_ok[:, 0]
            qpos = chrom.positions[q].astype(np.float64)
            w_up = np.where(up_ok, 1.0 / np.maximum(qpos - chrom.positions[obs[up]], 1.0), 0.0)
            w_dn = np.where(down_ok, 1.0 / np.maximum(chrom.positions[obs[down]] - qpos, 1.0), 0.0)
            y_up = states[obs[up], c].astype(np.float64)
            y_dn = states[obs[down], c].astype(np.float64)
            wsum = w_up + w_dn
            est = (w_up * y_up + w_dn * y_dn) / np.maximum(wsum, 1e-300)
            out[sel] = np.where(wsum > 0, est, out[sel])
        return out


class KnnCells(Baseline):
    """Similarity-weighted vote of the ``k`` most similar cells observed at the site.

    Similarity of cells a, b = (agreements + 1) / (shared observed sites + 2) on the training
    chromosomes.
    """

    name = "knn-cells"
    receptive_field = 0

    def __init__(self, k: int = 5) -> None:
        super().__init__()
        if k < 1:
            raise UsageError(f"knn-cells: k must be >= 1, got {k}")
        self.k = k
        self.similarity: np.ndarray | None = None

    def fit(self, train: Sequence[ChromData], cells: Sequence[str]) -> None:
        super().fit(train, cells)
        n = len(cells)
        agree = np.zeros((n, n))
        shared = np.zeros((n, n))
        for ch in train:
            s = np.asarray(ch.states)
            m1 = (s == 1).astype(np.float64)
            m0 = (s == 0).astype(np.float64)
            agree += m1.T @ m1 + m0.T @ m0
            obs = m1 + m0
            shared += obs.T @ obs
        self.similarity = (agree + 1.0) / (shared + 2.0)

    def predict(self, chrom: ChromData, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        if self.similarity is None:
            raise RuntimeError("knn-cells: predict() before fit()")
        s = np.asarray(chrom.states)[rows]  # [Q, C]
        seen = s != MISSING
        seen[np.arange(rows.shape[0]), cols] = False
        score = np.where(seen, self.similarity[cols], -np.inf)
        k = min(self.k, s.shape[1])
        top = np.argsort(-score, axis=1, kind="stable")[:, :k]
        w = np.take_along_axis(score, top, axis=1)
        ok = np.isfinite(w)
        w = np.where(ok, w, 0.0)
        y = np.take_along_axis(s, top, axis=1).astype(np.float64)
        wsum = w.sum(axis=1)
        est = (w * np.where(ok, y, 0.0)).sum(axis=1) / np.maximum(wsum, 1e-300)
        return np.where(wsum > 0, est, self._fallback(cols))
