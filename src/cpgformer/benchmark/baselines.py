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

from collections.abc import Sequence

from cpgformer.benchmark.camelia import CaMelia, CaMeliaConfig, camelia_features
from cpgformer.benchmark.cpgformer_model import CpgformerModel
from cpgformer.benchmark.deepcpg import DeepCpG, DeepCpGConfig, DeepCpGNet, deepcpg_features
from cpgformer.benchmark.simple import (
    Baseline,
    CellMean,
    KnnCells,
    NearestNeighbour,
    SiteMean,
    nearest_observed,
    sequence_windows,
)
from cpgformer.errors import UsageError

__all__ = [
    "BASELINE_NAMES",
    "MODEL_NAMES",
    "Baseline",
    "CaMelia",
    "CaMeliaConfig",
    "CellMean",
    "CpgformerModel",
    "DeepCpG",
    "DeepCpGConfig",
    "DeepCpGNet",
    "KnnCells",
    "NearestNeighbour",
    "SiteMean",
    "build_models",
    "camelia_features",
    "deepcpg_features",
    "nearest_observed",
    "sequence_windows",
]

BASELINE_NAMES = ("site-mean", "cell-mean", "nearest-neighbour", "knn-cells", "deepcpg", "camelia")
MODEL_NAMES = ("cpgformer", *BASELINE_NAMES)


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
