"""CaMelia as reimplemented by the CpG Transformer authors: one CatBoost classifier per cell."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from cpgformer.benchmark.holdout import ChromData
from cpgformer.benchmark.simple import Baseline, nearest_observed
from cpgformer.codes import CODE_N, MISSING
from cpgformer.errors import UsageError
from cpgformer.utils.progress import progress


@dataclass
class CaMeliaConfig:
    """CaMelia settings (reference section 14). ``iterations`` is the reference's 1000 by default;
    lower it (e.g. 200) for a faster, slightly weaker baseline. ``max_train_rows`` subsamples each
    cell's training rows (seeded) for speed."""

    iterations: int = 1000
    learning_rate: float = 0.1
    depth: int = 7
    n_neighbours: int = 10
    similarity_threshold: float = 0.8
    drop_nan_local: bool = False
    max_train_rows: int | None = None
    thread_count: int = -1
    seed: int = 0
    extra: dict = field(default_factory=dict)


LOG_OFFSET = 1.01
DNA_OFFSETS = np.concatenate([np.arange(-10, 0), np.arange(1, 11)])


def _log_state(y: np.ndarray) -> np.ndarray:
    return np.log2(np.asarray(y, dtype=np.float64) + LOG_OFFSET)


def camelia_features(
    chrom: ChromData,
    target: int,
    rows: np.ndarray,
    n_neighbours: int = 10,
    similarity_threshold: float = 0.8,
    with_dna: bool = False,
) -> tuple[np.ndarray, np.ndarray | None]:
    """CaMelia features of cell ``target`` at ``rows``: float64 ``[Q, 1 + 2 n]`` (local, neigh...)
    and, with DNA, int64 ``[Q, 20]`` reference codes at offsets -10..-1, +1..+10 (else None).

    * local: for each other cell k observed at the row, PS_k = agreements with the target over the
      ``n`` nearest sites observed in both cells on each side (row excluded; missing slots count as
      disagreements) / 2n; feature = mean over PS_k > threshold of PS_k * log2(y_k + 1.01), NaN if none.
    * neigh: the target's own ``n`` nearest observed states on each side (row excluded; upstream
      farthest -> nearest, downstream nearest -> farthest), each log2(y + 1.01) * (1 - d / d_max) with
      d the bp distance and d_max the largest of the 2n distances. Missing neighbours at the ends are
      y = 0.5 at extrapolated distances: beyond the farthest available neighbour of that side (0 if
      none), one median spacing of the cell's observed sites per missing slot -- the same rule at
      both ends.

    Only ``chrom.states`` (the visible input) is read, so training and prediction build identical
    features.
    """
    states = np.asarray(chrom.states)
    pos = chrom.positions
    rows = np.asarray(rows, dtype=np.int64)
    q = rows.shape[0]
    n = n_neighbours
    qpos = pos[rows].astype(np.float64)
    # own neighbours
    obs_t = np.flatnonzero(states[:, target] != MISSING)
    spacing = float(np.median(np.diff(pos[obs_t]))) if obs_t.size > 1 else 1000.0
    spacing = max(spacing, 1.0)
    up, up_ok, down, down_ok = nearest_observed(obs_t, rows, n)
    slots = np.arange(1, n + 1, dtype=np.float64)
    sides = []
    for idx, ok in ((up, up_ok), (down, down_ok)):
        if obs_t.size:
            d = np.abs(pos[obs_t[idx]] - qpos[:, None]).astype(np.float64)
            y = states[obs_t[idx], target].astype(np.float64)
        else:
            d = np.zeros((q, n))
            y = np.zeros((q, n))
        n_ok = ok.sum(axis=1)
        d_last = np.where(
            n_ok > 0, np.take_along_axis(d, np.maximum(n_ok - 1, 0)[:, None], 1)[:, 0], 0.0
        )
        d_pad = d_last[:, None] + (slots[None, :] - n_ok[:, None]) * spacing
        d = np.where(ok, d, d_pad)
        y = np.where(ok, y, 0.5)
        sides.append((d, y))
    (d_up, y_up), (d_dn, y_dn) = sides
    d_all = np.concatenate([d_up[:, ::-1], d_dn], axis=1)
    y_all = np.concatenate([y_up[:, ::-1], y_dn], axis=1)
    d_max = np.maximum(d_all.max(axis=1, keepdims=True), 1.0)
    neigh = _log_state(y_all) * (1.0 - d_all / d_max)
    local = local_similarity(states, target, rows, n, similarity_threshold)
    features = np.concatenate([local[:, None], neigh], axis=1)
    dna = None
    if with_dna:
        if chrom.sequence is None:
            raise UsageError("camelia: DNA features need a sequence (FASTA)")
        idx = pos[rows][:, None] + DNA_OFFSETS
        ok = (idx >= 0) & (idx < chrom.sequence.shape[0])
        dna = np.full(idx.shape, CODE_N, dtype=np.int64)
        dna[ok] = chrom.sequence[idx[ok]]
    return features, dna


LOCAL_CHUNK_ENTRIES = 1 << 22
"""Entries of the per-cell-chunk matrices of :func:`local_similarity` (bounds its memory)."""


def local_similarity(
    states: np.ndarray,
    target: int,
    rows: np.ndarray,
    n: int,
    threshold: float,
    chunk_entries: int = LOCAL_CHUNK_ENTRIES,
) -> np.ndarray:
    """CaMelia's local feature of cell ``target`` at ``rows`` (float64 [Q], NaN where no cell
    qualifies): see :func:`camelia_features`.

    All other cells at once: over the target's observed sites, cumulative counts of the sites
    observed in both cells and of agreements, and the agreements indexed by rank among the shared
    sites; a query's ``n`` nearest shared sites on each side are then two rank ranges. Cells are
    processed in chunks of at most ``chunk_entries`` matrix entries.
    """
    states = np.asarray(states)
    rows = np.asarray(rows, dtype=np.int64)
    q, n_cells = rows.shape[0], states.shape[1]
    obs_t = np.flatnonzero(states[:, target] != MISSING)
    m = obs_t.size
    left = np.searchsorted(obs_t, rows, side="left")
    right = np.searchsorted(obs_t, rows, side="right")
    y_t = states[obs_t, target]
    num = np.zeros(q)
    cnt = np.zeros(q, dtype=np.int64)
    others = np.delete(np.arange(n_cells), target)
    step = max(1, chunk_entries // max(m + 1, q, 1))
    for a in range(0, others.size, step):
        ks = others[a : a + step]
        at_t = states[np.ix_(obs_t, ks)]  # [m, K] the other cells at the target's sites
        both = at_t != MISSING
        agree = both & (at_t == y_t[:, None])
        cum_both = np.zeros((m + 1, ks.size), dtype=np.int64)
        np.cumsum(both, axis=0, out=cum_both[1:])
        cum_agree = np.zeros((m + 1, ks.size), dtype=np.int64)
        np.cumsum(agree, axis=0, out=cum_agree[1:])
        # by_rank[j, k]: agreements among cell k's first j shared sites
        by_rank = np.zeros((m + 1, ks.size), dtype=np.int64)
        cell, site = np.nonzero(both.T)  # shared sites, by cell then site
        rank = np.arange(cell.size) - np.searchsorted(cell, cell, side="left")
        by_rank[rank + 1, cell] = cum_agree[site + 1, cell]
        total = cum_both[m]  # [K] shared sites per cell
        before = cum_both[left]  # [Q, K] shared sites strictly before the query
        after = cum_both[right]  # shared sites up to and including the query row
        col = np.arange(ks.size)[None, :]
        up = by_rank[before, col] - by_rank[np.maximum(before - n, 0), col]
        dn = by_rank[np.minimum(after + n, total[None, :]), col] - by_rank[after, col]
        ps = (up + dn) / (2.0 * n)
        yk = states[np.ix_(rows, ks)]
        good = (yk != MISSING) & (ps > threshold)
        num += np.where(good, ps * _log_state(np.where(good, yk, 0)), 0.0).sum(axis=1)
        cnt += good.sum(axis=1)
    return np.where(cnt > 0, num / np.maximum(cnt, 1), np.nan)


class CaMelia(Baseline):
    """CaMelia (reference section 14): one CatBoost classifier per cell; DNA features only when the
    chromosomes carry a sequence (a FASTA was given)."""

    name = "camelia"

    def __init__(self, config: CaMeliaConfig | None = None) -> None:
        super().__init__()
        self.config = config or CaMeliaConfig()
        self.models: dict[int, Any] = {}
        self.constant: dict[int, float] = {}
        self.use_dna = False
        self.fit_cells: np.ndarray | None = None
        """bool [C]: fit only these cells' classifiers (the benchmark sets the scored cells; the
        others are never queried). None = every cell."""

    def _frame(self, features: np.ndarray, dna: np.ndarray | None) -> Any:
        cols = {"local": features[:, 0]}
        for j in range(1, features.shape[1]):
            cols[f"neigh{j - 1}"] = features[:, j]
        if dna is not None:
            for j in range(dna.shape[1]):
                cols[f"dna{j}"] = dna[:, j]
        return pd.DataFrame(cols)

    def _cell_features(
        self, chroms: Sequence[ChromData], target: int, rows_per_chrom: Sequence[np.ndarray]
    ) -> Any:
        cfg = self.config
        parts = []
        for ch, rows in zip(chroms, rows_per_chrom):
            if rows.size == 0:
                continue
            f, d = camelia_features(
                ch, target, rows, cfg.n_neighbours, cfg.similarity_threshold, self.use_dna
            )
            parts.append(self._frame(f, d))
        return pd.concat(parts, ignore_index=True) if parts else None

    def fit(self, train: Sequence[ChromData], cells: Sequence[str]) -> None:
        from catboost import CatBoostClassifier, Pool

        super().fit(train, cells)
        cfg = self.config
        self.use_dna = bool(train) and all(ch.sequence is not None for ch in train)
        self.models.clear()
        self.constant.clear()
        todo = range(len(cells)) if self.fit_cells is None else np.flatnonzero(self.fit_cells)
        for t in map(int, progress(todo, desc="camelia cells", unit="cell")):
            rows = [np.flatnonzero(np.asarray(ch.states)[:, t] != MISSING) for ch in train]
            labels = np.concatenate(
                [np.asarray(ch.states)[r, t] for ch, r in zip(train, rows)]
            ).astype(np.int64)
            if labels.size == 0 or labels.min() == labels.max():
                self.constant[t] = float(labels.mean()) if labels.size else self.cell_mean[t]
                continue
            frame = self._cell_features(train, t, rows)
            keep = np.ones(labels.size, dtype=bool)
            if cfg.drop_nan_local:
                keep &= ~np.isnan(frame["local"].to_numpy())
            # one generator per cell: a cell's classifier does not depend on which others are fitted
            order = np.random.default_rng([cfg.seed, t]).permutation(np.flatnonzero(keep))
            if cfg.max_train_rows is not None and order.size > cfg.max_train_rows:
                order = order[: cfg.max_train_rows]
            y = labels[order]
            if y.min() == y.max():
                self.constant[t] = float(y.mean())
                continue
            frame = frame.iloc[order].reset_index(drop=True)
            cat = [c for c in frame.columns if c.startswith("dna")]
            model = CatBoostClassifier(
                iterations=cfg.iterations,
                learning_rate=cfg.learning_rate,
                depth=cfg.depth,
                eval_metric="AUC",
                random_seed=cfg.seed,
                thread_count=cfg.thread_count,
                verbose=False,
                allow_writing_files=False,
                **cfg.extra,
            )
            model.fit(Pool(frame, y, cat_features=cat))
            self.models[t] = model

    def predict(self, chrom: ChromData, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        from catboost import Pool

        if self.cell_mean is None:
            raise RuntimeError("camelia: predict() before fit()")
        out = np.empty(rows.shape[0], dtype=np.float64)
        for t in np.unique(cols):
            sel = np.flatnonzero(cols == t)
            if int(t) not in self.models:
                if int(t) not in self.constant:
                    raise RuntimeError(f"camelia: cell {int(t)} was not fitted (fit_cells)")
                out[sel] = self.constant[int(t)]
                continue
            frame = self._cell_features([chrom], int(t), [rows[sel]])
            cat = [c for c in frame.columns if c.startswith("dna")]
            out[sel] = self.models[int(t)].predict_proba(Pool(frame, cat_features=cat))[:, 1]
        return out
