"""Cell profiles: a few numbers per cell, computed from its own observed calls, that place it among
other cells — the input of the inductive cell encoder (``cell_encoder="profile"``).

A :class:`CellProfiler` is *fitted* once on a store (the training cells and training sites):

1. the sites are cut into ``n_bins`` genomic bins of about equal numbers of sites (each bin is a
   ``(chrom, start, end)`` interval in bp, so it applies to any store on the same genome);
2. each cell's methylation rate in each bin is shrunk towards the bin's population rate with
   ``prior`` pseudo-calls (a bin a cell does not cover contributes no deviation);
3. the deviations ``cell rate - population rate`` (cells x bins) are reduced to ``n_components``
   principal components (truncated SVD), scaled to unit variance over the training cells;
4. two more features: the cell's global methylation rate and ``log1p`` of its number of calls, both
   standardised with the training cells' mean and spread.

``transform(store)`` computes the same features for the cells of any store — the training store or
new cells — with the fitted bins, population rates, loadings and scales, so a cell's profile does not
depend on which other cells are in the store. The fitted state is a small JSON-able dict saved in
each checkpoint (:meth:`to_dict`, :meth:`from_dict`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

DEFAULT_BINS = 256
DEFAULT_COMPONENTS = 16
DEFAULT_PRIOR = 2.0
EXTRA_FEATURES = ("global_rate", "log_calls")


@dataclass
class CellProfiler:
    """Fitted profile definition (see the module docstring); build it with :meth:`fit`."""

    bins: list[tuple[str, int, int]]  # (chrom, start bp, end bp), half-open, sorted per chrom
    population_rate: np.ndarray  # [n_bins] float64
    loadings: np.ndarray  # [n_bins, n_components] float64
    component_scale: np.ndarray  # [n_components]
    extra_mean: np.ndarray  # [2]
    extra_scale: np.ndarray  # [2]
    prior: float = DEFAULT_PRIOR

    @property
    def n_features(self) -> int:
        return int(self.loadings.shape[1]) + len(EXTRA_FEATURES)

    # ---- fitting ------------------------------------------------------------------------------
    @classmethod
    def fit(
        cls,
        dataset: Any,
        *,
        rows: Mapping[str, np.ndarray] | None = None,
        chroms: Sequence[str] | None = None,
        n_bins: int = DEFAULT_BINS,
        n_components: int = DEFAULT_COMPONENTS,
        prior: float = DEFAULT_PRIOR,
    ) -> CellProfiler:
        """Fit on ``dataset`` (a store): sites of ``chroms`` (default all), restricted to the row
        masks ``rows[chrom]`` (bool per site) where given — pass the training sites only, so that
        held-out calls never shape a profile."""
        chroms = list(chroms) if chroms is not None else list(dataset.chromosomes)
        rows = dict(rows or {})
        site_counts = {}
        for chrom in chroms:
            mask = rows.get(chrom)
            site_counts[chrom] = (
                int(dataset.n_sites(chrom)) if mask is None else int(np.count_nonzero(mask))
            )
        total = sum(site_counts.values())
        if total == 0:
            raise ValueError("no sites to fit cell profiles on")
        bins: list[tuple[str, int, int]] = []
        for chrom in chroms:
            positions = np.asarray(dataset.positions(chrom))
            mask = rows.get(chrom)
            if mask is not None:
                positions = positions[np.asarray(mask, dtype=bool)]
            if positions.size == 0:
                continue
            k = max(1, round(n_bins * positions.size / total))
            edges = np.unique(np.quantile(positions, np.linspace(0, 1, k + 1)).astype(np.int64))
            edges[-1] = positions[-1] + 1
            edges[0] = positions[0]
            for a, b in zip(edges[:-1], edges[1:]):
                if b > a:
                    bins.append((chrom, int(a), int(b)))
        meth, calls = _bin_counts(dataset, bins, rows)
        population = (meth.sum(0) + 0.5) / (calls.sum(0) + 1.0)
        deviation = _deviation(meth, calls, population, prior)
        n_cells = deviation.shape[0]
        centred = deviation - deviation.mean(0, keepdims=True)
        _, _, vt = np.linalg.svd(centred, full_matrices=False)
        n_comp = max(1, n_components)
        loadings = vt[: min(n_comp, max(1, n_cells - 1))].T.copy()
        if loadings.shape[1] < n_comp:  # fewer bins/cells than components: zero features
            loadings = np.pad(loadings, ((0, 0), (0, n_comp - loadings.shape[1])))
        scores = deviation @ loadings
        scale = scores.std(0)
        scale[scale < 1e-8] = 1.0
        extra = _extra(meth, calls)
        extra_mean = extra.mean(0)
        extra_scale = extra.std(0)
        extra_scale[extra_scale < 1e-8] = 1.0
        log.info("cell profiles: %d bins, %d components over %d cells", len(bins), n_comp, n_cells)
        return cls(bins, population, loadings, scale, extra_mean, extra_scale, prior)

    # ---- applying -----------------------------------------------------------------------------
    def transform(self, dataset: Any, rows: Mapping[str, np.ndarray] | None = None) -> np.ndarray:
        """Profile features ``[dataset.n_cells, n_features]`` float32 of the store's cells."""
        meth, calls = _bin_counts(dataset, self.bins, rows)
        if calls.sum() == 0:
            log.warning(
                "no call of this store lies in the regions the cell profiles were fitted on: "
                "cells get the average profile"
            )
        deviation = _deviation(meth, calls, self.population_rate, self.prior)
        scores = deviation @ self.loadings / self.component_scale
        extra = (_extra(meth, calls) - self.extra_mean) / self.extra_scale
        return np.concatenate([scores, extra], axis=1).astype(np.float32)

    # ---- saving -------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "bins": [list(b) for b in self.bins],
            "population_rate": self.population_rate.tolist(),
            "loadings": self.loadings.tolist(),
            "component_scale": self.component_scale.tolist(),
            "extra_mean": self.extra_mean.tolist(),
            "extra_scale": self.extra_scale.tolist(),
            "prior": self.prior,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CellProfiler:
        loadings = np.asarray(data["loadings"], dtype=np.float64)
        return cls(
            bins=[(str(c), int(a), int(b)) for c, a, b in data["bins"]],
            population_rate=np.asarray(data["population_rate"], dtype=np.float64),
            loadings=loadings.reshape(len(data["bins"]), -1),
            component_scale=np.asarray(data["component_scale"], dtype=np.float64),
            extra_mean=np.asarray(data["extra_mean"], dtype=np.float64),
            extra_scale=np.asarray(data["extra_scale"], dtype=np.float64),
            prior=float(data.get("prior", DEFAULT_PRIOR)),
        )


class DenseCalls:
    """Dense per-chromosome calls as a minimal store for :meth:`CellProfiler.transform`:
    ``chroms`` is a sequence of objects with ``name``, ``positions`` [L] and ``states`` int8 [L, C]
    (-1 missing), e.g. the benchmark's ``ChromData``; row blocks of one chromosome (objects that
    also carry ``chrom``, the chromosome they come from) are joined into that chromosome, so the
    profiler's bins (in chromosome coordinates) find their calls."""

    def __init__(self, chroms: Sequence[Any], n_cells: int) -> None:
        parts: dict[str, list[Any]] = {}
        for c in chroms:
            parts.setdefault(str(getattr(c, "chrom", "") or c.name), []).append(c)
        self._chroms: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        for name, blocks in parts.items():
            positions = np.concatenate([np.asarray(b.positions) for b in blocks])
            states = np.concatenate([np.asarray(b.states) for b in blocks], axis=0)
            order = np.argsort(positions, kind="stable")
            self._chroms[name] = (positions[order], states[order])
        self.n_cells = int(n_cells)

    @property
    def chromosomes(self) -> list[str]:
        return list(self._chroms)

    def positions(self, chrom: str) -> np.ndarray:
        return self._chroms[chrom][0]

    def calls(self, chrom: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        states = self._chroms[chrom][1]
        site, cell = np.nonzero(states >= 0)
        return site, cell, states[site, cell]


def _calls(dataset: Any, chrom: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(site row, cell column, label) of every call of ``chrom`` in a store or :class:`DenseCalls`."""
    if hasattr(dataset, "calls"):
        return dataset.calls(chrom)
    indptr, cell, _, _, label = dataset.csr(chrom)
    site = np.repeat(np.arange(len(indptr) - 1), np.diff(np.asarray(indptr)))
    return site, np.asarray(cell), np.asarray(label)


def _bin_counts(
    dataset: Any,
    bins: Sequence[tuple[str, int, int]],
    rows: Mapping[str, np.ndarray] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Methylated and total binary calls ``[n_cells, n_bins]`` of the store's cells in ``bins``."""
    n_cells = int(dataset.n_cells)
    meth = np.zeros((n_cells, len(bins)), dtype=np.float64)
    calls = np.zeros((n_cells, len(bins)), dtype=np.float64)
    rows = rows or {}
    by_chrom: dict[str, list[int]] = {}
    for j, (chrom, _, _) in enumerate(bins):
        by_chrom.setdefault(chrom, []).append(j)
    present = set(dataset.chromosomes)
    for chrom, index in by_chrom.items():
        if chrom not in present:
            continue
        positions = np.asarray(dataset.positions(chrom))
        site_of_call, cell, label = _calls(dataset, chrom)
        starts = np.array([bins[j][1] for j in index], dtype=np.int64)
        ends = np.array([bins[j][2] for j in index], dtype=np.int64)
        slot = np.searchsorted(starts, positions, side="right") - 1
        inside = slot >= 0
        inside[inside] &= positions[inside] < ends[slot[inside]]
        mask = rows.get(chrom)
        if mask is not None:
            inside &= np.asarray(mask, dtype=bool)
        label = np.asarray(label)
        keep = inside[site_of_call] & (label >= 0)
        column = np.asarray(index, dtype=np.int64)[slot[site_of_call[keep]]]
        flat = np.asarray(cell)[keep].astype(np.int64) * len(bins) + column
        size = n_cells * len(bins)
        calls += np.bincount(flat, minlength=size).reshape(n_cells, len(bins))
        meth += np.bincount(flat, weights=label[keep], minlength=size).reshape(n_cells, len(bins))
    return meth, calls


def _deviation(
    meth: np.ndarray, calls: np.ndarray, population: np.ndarray, prior: float
) -> np.ndarray:
    rate = (meth + prior * population) / (calls + prior)
    return rate - population


def _extra(meth: np.ndarray, calls: np.ndarray) -> np.ndarray:
    total = calls.sum(1)
    global_rate = (meth.sum(1) + 0.5) / (total + 1.0)
    return np.stack([global_rate, np.log1p(total)], axis=1)


def rows_of_segments(segments: Sequence[Any], n_sites: Mapping[str, int]) -> dict[str, np.ndarray]:
    """Row masks ``{chrom: bool [n_sites]}`` covering ``segments`` (objects with ``chrom``,
    ``start``, ``stop``); chromosomes without a segment get an all-False mask."""
    masks = {chrom: np.zeros(int(n), dtype=bool) for chrom, n in n_sites.items()}
    for seg in segments:
        masks[seg.chrom][seg.start : seg.stop] = True
    return masks


def fit_for_training(dataset: Any, train_segments: Sequence[Any], n_features: int) -> CellProfiler:
    """A profiler fitted on the training segments' sites only, with ``n_features`` features."""
    n_sites = {c: dataset.n_sites(c) for c in dataset.chromosomes}
    rows = rows_of_segments(train_segments, n_sites)
    chroms = [c for c, m in rows.items() if m.any()]
    n_components = max(1, n_features - len(EXTRA_FEATURES))
    profiler = CellProfiler.fit(dataset, rows=rows, chroms=chroms, n_components=n_components)
    if profiler.n_features != n_features:
        raise ValueError(f"profiler has {profiler.n_features} features, expected {n_features}")
    return profiler
