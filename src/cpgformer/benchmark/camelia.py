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
    # local similarity feature
    num = np.zeros(q)
    cnt = np.zeros(q)
    seen_t = states[:, target] != MISSING
    for k in range(states.shape[1]):
        if k == target:
            continue
        yk = states[rows, k]
        at = yk != MISSING
        if not at.any():
            continue
        both = np.flatnonzero(seen_t & (states[:, k] != MISSING))
        agree = states[both, target] == states[both, k]
        cum = np.concatenate([[0], np.cumsum(agree)])
        r = rows[at]
        left = np.searchsorted(both, r, side="left")
        right = np.searchsorted(both, r, side="right")
        up_agree = cum[left] - cum[np.maximum(left - n, 0)]
        dn_agree = cum[np.minimum(right + n, both.size)] - cum[right]
        ps = (up_agree + dn_agree) / (2.0 * n)
        good = ps > similarity_threshold
        idx = np.flatnonzero(at)[good]
        num[idx] += ps[good] * _log_state(yk[at][good])
        cnt[idx] += 1
    local = np.where(cnt > 0, num / np.maximum(cnt, 1), np.nan)
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
        rng = np.random.default_rng(cfg.seed)
        self.models.clear()
        self.constant.clear()
        for t in progress(range(len(cells)), desc="camelia cells", unit="cell"):
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
            order = rng.permutation(np.flatnonzero(keep))
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
                out[sel] = self.constant.get(int(t), self.cell_mean[t])
                continue
            frame = self._cell_features([chrom], int(t), [rows[sel]])
            cat = [c for c in frame.columns if c.startswith("dna")]
            out[sel] = self.models[int(t)].predict_proba(Pool(frame, cat_features=cat))[:, 1]
        return out
