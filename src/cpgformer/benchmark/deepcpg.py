"""DeepCpG as reimplemented by the CpG Transformer authors (reference section 14)."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from cpgformer.benchmark.holdout import ChromData
from cpgformer.benchmark.simple import Baseline, nearest_observed, sequence_windows
from cpgformer.codes import MISSING, N_NUCLEOTIDE_CODES
from cpgformer.errors import UsageError
from cpgformer.utils.progress import bar

log = logging.getLogger(__name__)


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
