"""Imputation baselines behind one interface, and the CpG Transformer adapter.

Every model has ``name``, ``sees_target`` (whether its prediction for entry (i, c) may read the input
at (i, c) itself), ``receptive_field`` (sites each side that can influence a prediction, ``None`` =
unbounded), ``fit(train, cells)`` on the training chromosomes and ``predict(chrom, rows, cols)`` ->
float64 probabilities of the queried entries from ``chrom.states`` (hidden entries are missing there).

Baselines (none reads the target entry, so the exhaustive protocol needs one call for them):

``site-mean``          mean state of the other cells observed at the site (cell mean if none).
``cell-mean``          the cell's methylated fraction on the training chromosomes.
``nearest-neighbour``  the nearest observed site of the same cell on each side, weighted by 1/bp distance.
``knn-cells``          the k cells most similar to the target cell (agreement on shared sites of the
                       training chromosomes, add-one smoothed) that are observed at the site,
                       similarity-weighted.
``deepcpg``            DeepCpG as reimplemented by the CpG Transformer authors (reference section 14).
``camelia``            CaMelia as reimplemented there: one CatBoost classifier per cell, 41 features.

Model ``cpgformer`` wraps a trained checkpoint (overlap-tiled inference from :mod:`cpgformer.impute`).
"""

from __future__ import annotations

import abc
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch
from torch import nn

from cpgformer.benchmark.holdout import ChromData
from cpgformer.codes import CODE_N, MISSING, N_NUCLEOTIDE_CODES, to_model_input
from cpgformer.data.profiles import DenseCalls
from cpgformer.errors import UsageError
from cpgformer.impute import embed_sites, plan_tiles, to_probabilities
from cpgformer.model import Model
from cpgformer.utils.progress import bar, progress

log = logging.getLogger(__name__)

BASELINE_NAMES = ("site-mean", "cell-mean", "nearest-neighbour", "knn-cells", "deepcpg", "camelia")
MODEL_NAMES = ("cpgformer", *BASELINE_NAMES)


# --------------------------------------------------------------------------------------------------
# shared helpers


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


# --------------------------------------------------------------------------------------------------
# DeepCpG


@dataclass
class DeepCpGConfig:
    """DeepCpG settings. Architecture defaults are the reference's; training is bounded by default
    (``max_steps``, optional ``max_seconds``) so a benchmark takes minutes on a CPU. The reference's
    schedule (lr 1e-4, warm-up 1000 steps, up to 1000 epochs, patience 10) is
    ``DeepCpGConfig(lr=1e-4, warmup_steps=1000, max_steps=None, eval_every=None, patience=10,
    max_val_rows=None)``. The bounded default (600 steps of 128 rows, lr 1e-3, warm-up 100,
    validation on <= 4096 held-out rows every 250 steps, patience 3) takes a few minutes for ~30
    cells on a 2-core CPU."""

    n_neighbours: int = 25
    max_distance: int = 25_000
    cpg_hidden: int = 256
    joint_hidden: int = 512
    dna_window: int = 1001
    dropout: float = 0.0
    lr: float = 1e-3
    weight_decay: float = 1e-4
    warmup_steps: int = 100
    lr_decay: float = 0.95
    batch_size: int = 128
    max_epochs: int = 1000
    max_steps: int | None = 600
    max_seconds: float | None = None
    eval_every: int | None = 250
    """Steps between validation checks (an "epoch" for decay and patience); None = a full pass."""
    patience: int = 3
    val_fraction: float = 0.1
    max_val_rows: int | None = 4096
    """Cap on validation rows (a seeded subset) so each check stays cheap; None = all."""
    predict_batch_size: int = 1024
    seed: int = 0


def deepcpg_features(
    states: np.ndarray,
    positions: np.ndarray,
    rows: np.ndarray,
    n_neighbours: int = 25,
    max_distance: int = 25_000,
    observed: list[np.ndarray] | None = None,
) -> np.ndarray:
    """CpG-module input float32 ``[Q, C, 4 * n_neighbours]`` for the rows queried.

    Per cell: its ``n_neighbours`` nearest observed sites strictly upstream and strictly downstream
    (the row itself excluded even if observed), each as (state, min(|bp distance|, max_distance) /
    max_distance); missing neighbours are (0.5, 1.0). Order: upstream farthest -> nearest, then
    downstream nearest -> farthest, (state, distance) interleaved. ``observed[c]`` (optional, sorted
    observed rows of cell c) saves recomputing them.
    """
    rows = np.asarray(rows, dtype=np.int64)
    n_cells = states.shape[1]
    k = n_neighbours
    out = np.empty((rows.shape[0], n_cells, 4 * k), dtype=np.float32)
    qpos = positions[rows]
    for c in range(n_cells):
        obs = observed[c] if observed is not None else np.flatnonzero(states[:, c] != MISSING)
        up, up_ok, down, down_ok = nearest_observed(obs, rows, k)
        if obs.size:
            up_state = np.where(up_ok, states[obs[up], c], 0.5)
            up_dist = np.where(up_ok, qpos[:, None] - positions[obs[up]], max_distance)
            dn_state = np.where(down_ok, states[obs[down], c], 0.5)
            dn_dist = np.where(down_ok, positions[obs[down]] - qpos[:, None], max_distance)
        else:
            up_state = dn_state = np.full((rows.shape[0], k), 0.5)
            up_dist = dn_dist = np.full((rows.shape[0], k), max_distance)
        state = np.concatenate([up_state[:, ::-1], dn_state], axis=1)
        dist = np.concatenate([up_dist[:, ::-1], dn_dist], axis=1)
        dist = np.minimum(np.abs(dist), max_distance) / max_distance
        out[:, c, 0::2] = state
        out[:, c, 1::2] = dist
    return out


class DeepCpGNet(nn.Module):
    """DeepCpG: CpG module (per-cell Linear + ReLU, bidirectional GRU across cells) [+ DNA CNN] ->
    joint MLP -> one logit per cell.

    Parameters: 5,508,416 + 513 C with the DNA branch at the default sizes (the reference counts
    another 642 C for its staged-training heads, not built here: training is end to end).
    """

    def __init__(self, n_cells: int, config: DeepCpGConfig, use_dna: bool) -> None:
        super().__init__()
        h = config.cpg_hidden
        self.cpg_in = nn.Linear(4 * config.n_neighbours, h)
        self.gru = nn.GRU(h, h, batch_first=True, bidirectional=True)
        self.cpg_dropout = nn.Dropout(config.dropout)
        self.dna: nn.Module | None = None
        joint_in = 2 * h
        if use_dna:
            window = config.dna_window
            hlen = ((window - 10) // 4 - 2) // 2
            if window % 2 == 0 or hlen < 1:
                raise UsageError(f"deepcpg: dna_window must be odd and >= 21, got {window}")
            self.dna = nn.Sequential(
                nn.Embedding(N_NUCLEOTIDE_CODES, 4),
                _ChannelsFirst(),
                nn.Conv1d(4, 128, 11),
                nn.ReLU(),
                nn.MaxPool1d(4),
                nn.Conv1d(128, 256, 3),
                nn.ReLU(),
                nn.MaxPool1d(2),
                nn.Flatten(1),
                nn.Linear(256 * hlen, 128),
                nn.ReLU(),
                nn.Dropout(config.dropout),
            )
            joint_in += 128
        j = config.joint_hidden
        self.joint = nn.Sequential(
            nn.Linear(joint_in, j),
            nn.ReLU(),
            nn.Dropout(config.dropout),
            nn.Linear(j, j),
            nn.ReLU(),
            nn.Dropout(config.dropout),
            nn.Linear(j, n_cells),
        )

    def forward(self, cpg: torch.Tensor, dna: torch.Tensor | None = None) -> torch.Tensor:
        """``cpg [B, C, 4k]`` float, ``dna [B, window]`` codes -> logits ``[B, C]``."""
        h = torch.relu(self.cpg_in(cpg))
        _, last = self.gru(h)  # last [2, B, H]: final forward and backward states
        parts = [self.cpg_dropout(torch.cat([last[0], last[1]], dim=-1))]
        if self.dna is not None:
            if dna is None:
                raise ValueError("deepcpg: this network has a DNA branch, pass dna")
            parts.insert(0, self.dna(dna.long()))
        return self.joint(torch.cat(parts, dim=-1))


class _ChannelsFirst(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.transpose(1, 2)


class _ChromIndex:
    """Per-cell sorted observed rows of one chromosome (computed once, reused by every batch)."""

    def __init__(self, chrom: ChromData) -> None:
        self.chrom = chrom
        states = np.asarray(chrom.states)
        self.observed = [np.flatnonzero(states[:, c] != MISSING) for c in range(states.shape[1])]


class DeepCpG(Baseline):
    """DeepCpG (reference section 14); the DNA branch is used only when the chromosomes carry a
    sequence (a FASTA was given)."""

    name = "deepcpg"

    def __init__(self, config: DeepCpGConfig | None = None) -> None:
        super().__init__()
        self.config = config or DeepCpGConfig()
        self.net: DeepCpGNet | None = None
        self.use_dna = False
        self.history: list[dict] = []

    def _batch(self, index: _ChromIndex, rows: np.ndarray) -> tuple[torch.Tensor, Any]:
        ch = index.chrom
        cfg = self.config
        cpg = deepcpg_features(
            np.asarray(ch.states),
            ch.positions,
            rows,
            cfg.n_neighbours,
            cfg.max_distance,
            observed=index.observed,
        )
        dna = None
        if self.use_dna:
            assert ch.sequence is not None
            dna = torch.from_numpy(
                sequence_windows(ch.sequence, ch.positions[rows], cfg.dna_window)
            )
        return torch.from_numpy(cpg), dna

    def fit(self, train: Sequence[ChromData], cells: Sequence[str]) -> None:
        super().fit(train, cells)
        cfg = self.config
        self.use_dna = bool(train) and all(ch.sequence is not None for ch in train)
        torch.manual_seed(cfg.seed)
        rng = np.random.default_rng(cfg.seed)
        self.net = DeepCpGNet(len(cells), cfg, self.use_dna)
        indexes = [_ChromIndex(ch) for ch in train]
        # examples: (chromosome, row) with at least one observed call; validation = random blocks
        examples = []
        for k, ch in enumerate(train):
            r = np.flatnonzero((np.asarray(ch.states) != MISSING).any(axis=1))
            examples.append(np.stack([np.full(r.shape, k), r], axis=1))
        ex = np.concatenate(examples) if examples else np.zeros((0, 2), dtype=np.int64)
        if ex.shape[0] < 2:
            raise UsageError("deepcpg: the training chromosomes hold fewer than 2 observed sites")
        block = 256
        n_blocks = math.ceil(ex.shape[0] / block)
        n_val = max(1, int(round(cfg.val_fraction * n_blocks))) if n_blocks > 1 else 0
        val_blocks = set(rng.choice(n_blocks, size=n_val, replace=False).tolist())
        is_val = np.array([(i // block) in val_blocks for i in range(ex.shape[0])])
        train_ex, val_ex = ex[~is_val], ex[is_val]
        if val_ex.shape[0] == 0:
            val_ex = train_ex
        if cfg.max_val_rows is not None and val_ex.shape[0] > cfg.max_val_rows:
            val_ex = val_ex[np.sort(rng.choice(val_ex.shape[0], cfg.max_val_rows, replace=False))]
        log.info(
            "deepcpg: %d training and %d validation rows, %s DNA",
            train_ex.shape[0],
            val_ex.shape[0],
            "with" if self.use_dna else "without",
        )
        opt = torch.optim.Adam(self.net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        steps_per_epoch = math.ceil(train_ex.shape[0] / cfg.batch_size)
        eval_every = cfg.eval_every or steps_per_epoch
        best = (math.inf, None)
        bad = 0
        step = 0
        period = 0
        t0 = time.monotonic()
        stop = False
        pbar = bar(total=cfg.max_steps, desc="deepcpg training", unit="step")
        for _epoch in range(cfg.max_epochs):
            order = rng.permutation(train_ex.shape[0])
            for b in range(0, order.shape[0], cfg.batch_size):
                batch = train_ex[order[b : b + cfg.batch_size]]
                warm = min(1.0, (step + 1) / max(1, cfg.warmup_steps))
                for group in opt.param_groups:
                    group["lr"] = cfg.lr * warm * cfg.lr_decay**period
                self.net.train()
                loss_sum, n_seen = self._loss(indexes, train, batch)
                loss = None
                if loss_sum is not None:
                    loss = loss_sum / n_seen
                    opt.zero_grad()
                    loss.backward()
                    opt.step()
                step += 1
                pbar.update(1)
                out_of_time = (
                    cfg.max_seconds is not None and time.monotonic() - t0 > cfg.max_seconds
                )
                out_of_steps = cfg.max_steps is not None and step >= cfg.max_steps
                if step % eval_every == 0 or out_of_time or out_of_steps:
                    period += 1
                    val = self._validate(indexes, train, val_ex)
                    self.history.append(
                        {
                            "step": step,
                            "train_loss": float(loss.detach()) if loss is not None else None,
                            "val": val,
                        }
                    )
                    log.info("deepcpg step %d: validation loss %.4f", step, val)
                    if val < best[0] - 1e-6:
                        best = (val, {k: v.clone() for k, v in self.net.state_dict().items()})
                        bad = 0
                    else:
                        bad += 1
                    if bad >= cfg.patience or out_of_time or out_of_steps:
                        stop = True
                        break
            if stop:
                break
        pbar.close()
        if best[1] is not None:
            self.net.load_state_dict(best[1])
        self.net.eval()
        log.info("deepcpg: trained %d steps, best validation loss %.4f", step, best[0])

    def _loss(
        self, indexes: list[_ChromIndex], train: Sequence[ChromData], batch: np.ndarray
    ) -> tuple[torch.Tensor | None, int]:
        """Summed BCE over the observed entries of ``batch`` rows, and their count."""
        assert self.net is not None
        losses = []
        count = 0
        for k in np.unique(batch[:, 0]):
            rows = batch[batch[:, 0] == k, 1]
            cpg, dna = self._batch(indexes[k], rows)
            y = torch.from_numpy(np.asarray(train[k].states)[rows].astype(np.float32))
            seen = y >= 0
            if not bool(seen.any()):
                continue
            logits = self.net(cpg, dna)
            losses.append(
                nn.functional.binary_cross_entropy_with_logits(
                    logits[seen], y[seen], reduction="sum"
                )
            )
            count += int(seen.sum())
        if not losses:
            return None, 0
        return torch.stack(losses).sum(), count

    def _validate(
        self, indexes: list[_ChromIndex], train: Sequence[ChromData], val_ex: np.ndarray
    ) -> float:
        assert self.net is not None
        self.net.eval()
        total, count = 0.0, 0
        with torch.no_grad():
            for b in range(0, val_ex.shape[0], self.config.predict_batch_size):
                loss, n = self._loss(indexes, train, val_ex[b : b + self.config.predict_batch_size])
                if loss is not None:
                    total += float(loss)
                    count += n
        return total / max(count, 1)

    def predict(self, chrom: ChromData, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        if self.net is None:
            raise RuntimeError("deepcpg: predict() before fit()")
        if self.use_dna and chrom.sequence is None:
            raise UsageError("deepcpg was trained with DNA but this chromosome has no sequence")
        index = _ChromIndex(chrom)
        uniq, inverse = np.unique(rows, return_inverse=True)
        probs = np.empty((uniq.shape[0], chrom.n_cells), dtype=np.float64)
        step = self.config.predict_batch_size
        self.net.eval()
        with torch.no_grad():
            for b in range(0, uniq.shape[0], step):
                cpg, dna = self._batch(index, uniq[b : b + step])
                probs[b : b + step] = torch.sigmoid(self.net(cpg, dna)).double().numpy()
        return probs[inverse, cols]


# --------------------------------------------------------------------------------------------------
# CaMelia


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
        import pandas as pd

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
        import pandas as pd

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


# --------------------------------------------------------------------------------------------------
# CpG Transformer


class CpgformerModel:
    """A trained CpG Transformer as a benchmark model (``fit`` only checks the cell table).

    Outputs for the queried rows come from overlap tiles (:func:`cpgformer.impute.plan_tiles`): each
    queried row is predicted with its whole receptive field inside its tile, which equals one pass
    over the whole chromosome; rows farther apart than twice the receptive field are tiled
    separately, and tiles of equal length are batched. DNA embeddings are computed once per
    chromosome and reused by every pass.
    """

    name = "cpgformer"
    sees_target = True

    def __init__(
        self,
        model: Model,
        tile_sites: int = 1024,
        batch_size: int = 8,
        ignore_fingerprint: bool = False,
    ) -> None:
        self.model = model
        self.predictor = model.predictor()
        self.temperature = float(model.temperature or 1.0)
        self.tile_sites = int(tile_sites)
        self.batch_size = int(batch_size)
        self.ignore_fingerprint = ignore_fingerprint
        self.store: Any = None  # the benchmark's store (use_store); None: only its cell names
        self.cell_ids: np.ndarray | None = None
        self._dna_cache: tuple[tuple[str, int], torch.Tensor | None] | None = None

    @property
    def receptive_field(self) -> int:
        return int(self.predictor.margin)

    @property
    def data(self) -> dict:
        """The checkpoint's data parameters (e.g. the held-out chromosomes)."""
        return self.model.data

    @classmethod
    def from_checkpoint(
        cls, path: str, tile_sites: int = 1024, batch_size: int = 8
    ) -> CpgformerModel:
        """Load a checkpoint (:meth:`cpgformer.model.Model.load`)."""
        return cls(Model.load(path), tile_sites, batch_size)

    @classmethod
    def from_model(cls, model: nn.Module, cells: Sequence[str] | None = None, **kwargs: Any):
        """Wrap an in-memory ``CpGTransformer`` (tests, demo)."""
        return cls(Model(model, cells=None if cells is None else list(cells)), **kwargs)

    def use_store(self, store: Any, ignore_fingerprint: bool = False) -> None:
        """The store the benchmark reads: checked against the checkpoint in :meth:`fit`."""
        self.store = store
        self.ignore_fingerprint = ignore_fingerprint

    def fit(self, train: Sequence[ChromData], cells: Sequence[str]) -> None:
        """The one store-vs-checkpoint rule (:meth:`cpgformer.model.Model.check`); inductive models
        embed the cells from the training chromosomes' calls (never the test's)."""
        store = self.store
        if store is None or list(store.cells) != list(cells):
            store = SimpleNamespace(
                path="the benchmark data", cells=list(cells), n_cells=len(cells)
            )
        profiles = DenseCalls(train, len(cells)) if self.model.inductive else None
        self.cell_ids = self.model.check(store, self.ignore_fingerprint, profiles_from=profiles)

    def _dna_embedding(self, chrom: ChromData) -> torch.Tensor | None:
        if self.predictor.embed_fn is None or not self.predictor.dna_window:
            return None
        key = (chrom.name, chrom.n_sites)
        if self._dna_cache is not None and self._dna_cache[0] == key:
            return self._dna_cache[1]
        if chrom.sequence is None:
            raise UsageError(
                f"the checkpoint uses DNA (dna_window {self.predictor.dna_window}): give the FASTA"
            )
        width = int(self.predictor.dna_window)

        def windows(a: int, b: int) -> np.ndarray:
            return sequence_windows(chrom.sequence, chrom.positions[a:b], width)

        emb = embed_sites(self.predictor, windows, chrom.n_sites)
        self._dna_cache = (key, emb)
        return emb

    def predict(self, chrom: ChromData, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        if self.cell_ids is None:
            raise RuntimeError("cpgformer: predict() before fit()")
        rows = np.asarray(rows, dtype=np.int64)
        if rows.size == 0:
            return np.zeros(0, dtype=np.float64)
        states = np.asarray(chrom.states)
        continuous = self.predictor.data_mode == "continuous"
        if continuous:
            x = to_model_input(states.astype(np.float32))
            x[states == MISSING] = 0.0
        else:
            x = to_model_input(states.astype(np.int64))
        n = chrom.n_sites
        margin = self.receptive_field
        uniq, inverse = np.unique(rows, return_inverse=True)
        # keep-ranges: runs of queried rows closer than 2 * margin + 1 share their tiles
        breaks = np.flatnonzero(np.diff(uniq) > 2 * margin + 1) + 1
        starts = np.concatenate([[0], breaks])
        stops = np.concatenate([breaks, [uniq.size]])
        tiles = []
        for a, b in zip(starts, stops):
            tiles += plan_tiles(int(uniq[a]), int(uniq[b - 1]) + 1, n, self.tile_sites, margin)
        emb = self._dna_embedding(chrom)
        raw = np.empty((uniq.size, states.shape[1]), dtype=np.float32)
        cells_t = torch.as_tensor(self.cell_ids)
        by_length: dict[int, list] = {}
        for t in tiles:
            by_length.setdefault(t.stop - t.start, []).append(t)
        report = bar(len(tiles), desc=f"cpgformer {chrom.name}", unit="tile")
        with torch.inference_mode(), report:
            for group in by_length.values():
                for b in range(0, len(group), self.batch_size):
                    batch = group[b : b + self.batch_size]
                    s = torch.from_numpy(np.stack([x[t.start : t.stop] for t in batch]))
                    p = torch.from_numpy(
                        np.stack(
                            [
                                chrom.positions[t.start : t.stop] - chrom.positions[t.start]
                                for t in batch
                            ]
                        ).astype(np.int64)
                    )
                    c = cells_t.unsqueeze(0).expand(len(batch), -1)
                    e = None if emb is None else torch.stack([emb[t.start : t.stop] for t in batch])
                    out = self.predictor.predict_fn(s.float() if continuous else s.long(), p, c, e)
                    out = out.float().numpy()
                    for t, o in zip(batch, out):
                        lo = np.searchsorted(uniq, t.keep_start)
                        hi = np.searchsorted(uniq, t.keep_stop)
                        raw[lo:hi] = o[uniq[lo:hi] - t.start]
                    report.update(len(batch))
        probs = to_probabilities(raw, self.predictor.data_mode, self.temperature)
        return probs[inverse, cols].astype(np.float64)


def build_models(
    names: Sequence[str],
    checkpoint: str | None = None,
    deepcpg: DeepCpGConfig | None = None,
    camelia: CaMeliaConfig | None = None,
    knn_k: int = 5,
    tile_sites: int = 1024,
    batch_size: int = 8,
) -> list:
    """Models by name (see :data:`MODEL_NAMES`), in the order given."""
    unknown = [n for n in names if n not in MODEL_NAMES]
    if unknown:
        raise UsageError(
            f"unknown model(s) {', '.join(unknown)}; choose from {', '.join(MODEL_NAMES)}"
        )
    if len(set(names)) != len(names):
        raise UsageError(f"model listed twice in {','.join(names)}")
    models: list = []
    for name in names:
        if name == "cpgformer":
            if checkpoint is None:
                raise UsageError("model cpgformer needs --checkpoint")
            models.append(CpgformerModel.from_checkpoint(checkpoint, tile_sites, batch_size))
        elif name == "site-mean":
            models.append(SiteMean())
        elif name == "cell-mean":
            models.append(CellMean())
        elif name == "nearest-neighbour":
            models.append(NearestNeighbour())
        elif name == "knn-cells":
            models.append(KnnCells(knn_k))
        elif name == "deepcpg":
            models.append(DeepCpG(deepcpg))
        else:
            models.append(CaMelia(camelia))
    return models
