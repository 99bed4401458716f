"""One explained prediction (:class:`SiteExplanation`) and its npz file."""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cpgformer.explain.queries import SiteQuery
from cpgformer.utils.atomic import atomic_file


@dataclass
class SiteExplanation:
    """Attributions and attention maps for one target (site, cell).

    Shapes: L sites of the receptive field (fewer near chromosome ends), C cells, W DNA window (bp),
    N layers, H heads, S site window (2 * half-window + 1 offsets).
    """

    query: SiteQuery
    chrom: str
    cells: list[str]  # C names, in the order of every cell axis below
    target_cell: int  # index into ``cells``
    site_rows: np.ndarray  # int64 [L] row indices in the chromosome
    positions: np.ndarray  # int64 [L] 0-based + C positions
    target_index: int  # index of the target site within the L sites
    states: (
        np.ndarray
    )  # float32 [L, C] model input after the label change, stored coding (-1 missing)
    logit: float  # model output for the target
    baseline_logit: float  # output with every input at its baseline
    state_attribution: np.ndarray  # float64 [L, C]
    cell_attribution: np.ndarray  # float64 [C]
    cell_totals: np.ndarray  # float64 [C]: state attributions summed over sites + cell attribution
    convergence_delta: float  # Captum's delta: sum(attributions) - (logit - baseline_logit)
    n_steps: int
    dna: np.ndarray | None = None  # int8 [L, W] nucleotide codes, N-padded
    dna_attribution: np.ndarray | None = None  # float64 [L, W]
    site_attention: np.ndarray | None = None  # float32 [N, H, C, S]: query (target site, cell)
    cell_attention: np.ndarray | None = None  # float32 [N, H, C, C]: queries x keys at target site
    site_offsets: np.ndarray | None = None  # int64 [S] offsets (sites) of the site-attention slots
    extras: dict[str, Any] = field(default_factory=dict)

    @property
    def probability(self) -> float:
        return 1.0 / (1.0 + math.exp(-self.logit))

    @property
    def attribution_sum(self) -> float:
        total = float(self.state_attribution.sum() + self.cell_attribution.sum())
        if self.dna_attribution is not None:
            total += float(self.dna_attribution.sum())
        return total

    @property
    def name(self) -> str:
        """File-name stem: ``<chrom>_<position>_<cell>`` with unsafe characters replaced."""
        raw = f"{self.chrom}_{self.query.position}_{self.cells[self.target_cell]}"
        return re.sub(r"[^A-Za-z0-9._-]+", "-", raw)

    def to_arrays(self) -> dict[str, np.ndarray]:
        """Everything as named numpy arrays (what :func:`save_npz` writes)."""
        out: dict[str, np.ndarray] = {
            "chrom": np.array(self.chrom),
            "position": np.array(self.query.position, dtype=np.int64),
            "cell": np.array(self.cells[self.target_cell]),
            "target_cell": np.array(self.target_cell, dtype=np.int64),
            "label_change": np.array(self.query.label_change_text),
            "cells": np.array(self.cells),
            "site_rows": self.site_rows,
            "positions": self.positions,
            "target_index": np.array(self.target_index, dtype=np.int64),
            "states": self.states,
            "logit": np.array(self.logit),
            "probability": np.array(self.probability),
            "baseline_logit": np.array(self.baseline_logit),
            "state_attribution": self.state_attribution,
            "cell_attribution": self.cell_attribution,
            "cell_totals": self.cell_totals,
            "convergence_delta": np.array(self.convergence_delta),
            "n_steps": np.array(self.n_steps, dtype=np.int64),
        }
        optional = {
            "dna": self.dna,
            "dna_attribution": self.dna_attribution,
            "site_attention": self.site_attention,
            "cell_attention": self.cell_attention,
            "site_offsets": self.site_offsets,
        }
        out.update({k: v for k, v in optional.items() if v is not None})
        return out


def save_npz(explanation: SiteExplanation, path: str | os.PathLike[str]) -> Path:
    """Write one explanation as a compressed ``.npz`` (atomically); keys as in ``to_arrays``."""

    target = Path(path)
    with atomic_file(target, "wb") as handle:
        np.savez_compressed(handle, **explanation.to_arrays())
    return target


def load_npz(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """Read an explanation written by :func:`save_npz` into a dict of arrays."""
    with np.load(path, allow_pickle=False) as data:
        return {k: data[k] for k in data.files}
