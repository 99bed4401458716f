"""A trained CpG Transformer (:class:`cpgformer.model.Model`) as a benchmark model."""

from __future__ import annotations

from collections.abc import Sequence
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch
from torch import nn

from cpgformer.benchmark.holdout import ChromData
from cpgformer.benchmark.simple import sequence_windows
from cpgformer.codes import MISSING, to_model_input
from cpgformer.data.profiles import DenseCalls
from cpgformer.errors import UsageError
from cpgformer.impute import embed_sites, plan_tiles, to_probabilities
from cpgformer.model import Model
from cpgformer.utils.progress import bar


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
