"""Cells as results: the model's cell representations, a 2-D map, clusters and outliers, and the
clustering of raw vs imputed region-level methylation.

* :func:`cell_representations` — the vector the model uses for each cell of a store: the row of the
  cell table (published model) or the profile encoder's output (``cell_encoder="profile"``, any cell);
* :func:`cell_map` — an AnnData of the cells with the representations in ``obsm["X_cpgformer"]``, a
  UMAP (and t-SNE on request) computed with scanpy, clusters (k-means from scikit-learn, or Leiden
  where ``leidenalg`` is installed), an ``outlier`` flag (cells far from all others) and a
  ``qc_outlier`` flag (call count or global methylation far from the other cells');
* :func:`bin_matrices` / :func:`compare_clusterings` — cells x bins mean methylation from the observed
  calls and from an imputation, each clustered the same way (PCA, then the same clustering), with
  ARI / NMI against known labels and between the two.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from cpgformer.errors import UsageError
from cpgformer.model import IGNORE_FINGERPRINT_HELP, Model, as_model
from cpgformer.options import option
from cpgformer.utils.atomic import atomic_dir

log = logging.getLogger(__name__)

REPRESENTATION_KEY = "X_cpgformer"


@dataclass
class CellsOptions:
    """Parameters of ``cpgformer cells`` (its flags are made from these)."""

    cell_metadata: str | None = option(
        None,
        "TSV with a first column of cell names (as in the store) and any other columns",
        metavar="TSV",
    )
    color: str = option(
        "global_meth_frac",
        "obs column that colours the map (the default is from the store's QC table)",
    )
    clusters: str = option(
        "kmeans",
        "clustering of the representations (leiden needs leidenalg)",
        choices=("kmeans", "leiden"),
    )
    n_clusters: int = option(3, "k-means clusters")
    tsne: bool = option(False, "also compute a t-SNE map")
    imputed: str | None = option(
        None,
        "imputed store of the same cells: also cluster raw vs imputed bins (see --bin-size)",
        metavar="IMPUTED",
    )
    bin_size: int = option(100_000, "bp per bin for --imputed")
    labels: str | None = option(
        None, "metadata column of known groups: ARI/NMI of the raw and imputed clusterings"
    )
    seed: int = option(0, "seed of UMAP and k-means")
    ignore_fingerprint: bool = option(False, IGNORE_FINGERPRINT_HELP)
    overwrite: bool = option(False, "replace an existing output")


def cell_representations(
    model: Model | str | Path, dataset: Any, ignore_fingerprint: bool = False
) -> np.ndarray:
    """``[n_cells, cell_embed]`` float32: the model's vector for each cell of ``dataset``.

    ``model``: a checkpoint path or a :class:`~cpgformer.model.Model`; store and model must go
    together (:meth:`~cpgformer.model.Model.check`): profile models embed any cell from its calls."""
    model = as_model(model)
    network = model.require_network("cell vectors")
    if not network.config.cell_identity:
        raise UsageError(
            f"{model.name}: the model has no per-cell vector (no cell table, no cell encoder: e.g. "
            "the pretrained model or one fine-tuned from it, the default start of `train` without "
            "a FASTA): map cells with a model trained with `--init-from none` (cell table) or "
            "--cell-encoder profile, or cluster the region means of an imputation "
            "(cpgformer export IMPUTED --to regions)"
        )
    ids = model.check(dataset, ignore_fingerprint)
    with torch.inference_mode():
        vectors = network.cell_vectors(torch.as_tensor(ids).unsqueeze(0))[0]
    return vectors.float().numpy()


def _kmeans(x: np.ndarray, n_clusters: int, seed: int) -> np.ndarray:
    from sklearn.cluster import KMeans

    n_clusters = max(1, min(n_clusters, x.shape[0]))
    return KMeans(n_clusters=n_clusters, n_init=10, random_state=seed).fit_predict(x)


def cluster(adata: Any, method: str, n_clusters: int, seed: int, use_rep: str) -> np.ndarray:
    """Cluster labels of ``adata``'s cells from ``obsm[use_rep]``: k-means, or Leiden on the
    neighbour graph (needs ``leidenalg``)."""
    if method == "kmeans":
        return _kmeans(np.asarray(adata.obsm[use_rep]), n_clusters, seed)
    if method == "leiden":
        import scanpy as sc

        try:
            sc.tl.leiden(
                adata, random_state=seed, key_added="_leiden", flavor="igraph", n_iterations=2
            )
        except ImportError as exc:
            raise UsageError(
                f"--clusters leiden needs the igraph/leidenalg packages ({exc})"
            ) from None
        return adata.obs.pop("_leiden").astype(int).to_numpy()
    raise UsageError(f"unknown clustering method {method!r} (kmeans or leiden)")


def outliers(x: np.ndarray, k: int = 5, threshold: float = 3.5) -> tuple[np.ndarray, np.ndarray]:
    """Cells far from all others: mean distance to their ``k`` nearest cells, as a robust z-score
    (median / MAD over the cells); flagged above ``threshold``. Returns (score, flag)."""
    n = x.shape[0]
    if n < 3:
        return np.zeros(n), np.zeros(n, dtype=bool)
    from sklearn.neighbors import NearestNeighbors

    k = max(1, min(k, n - 1))
    distances, _ = NearestNeighbors(n_neighbors=k + 1).fit(x).kneighbors(x)
    knn = distances[:, 1:].mean(1)  # column 0: the cell itself
    med = np.median(knn)
    mad = np.median(np.abs(knn - med)) * 1.4826
    score = (knn - med) / mad if mad > 0 else np.zeros(n)
    return score, score > threshold


QC_COLUMNS = {"n_calls": np.log, "global_meth_frac": None}
"""QC columns of the store's cell table checked for outlying cells (``n_calls`` on a log scale)."""


def qc_outliers(obs: pd.DataFrame, threshold: float = 3.5) -> tuple[np.ndarray, list[str]]:
    """Cells whose QC values lie far from the others': robust z-score (median / MAD) of each
    :data:`QC_COLUMNS` column above ``threshold`` in absolute value. Returns (flag, reason)."""
    n = len(obs)
    flag = np.zeros(n, dtype=bool)
    reasons = [""] * n
    for column, transform in QC_COLUMNS.items():
        if column not in obs:
            continue
        v = pd.to_numeric(obs[column], errors="coerce").to_numpy(dtype=float)
        if transform is not None:
            with np.errstate(divide="ignore", invalid="ignore"):
                v = transform(v)
        med = np.nanmedian(v)
        mad = np.nanmedian(np.abs(v - med)) * 1.4826
        if not np.isfinite(mad) or mad == 0:
            continue
        z = (v - med) / mad
        for i in np.flatnonzero(np.abs(z) > threshold):
            flag[i] = True
            side = "low" if z[i] < 0 else "high"
            reasons[i] = ", ".join(filter(None, [reasons[i], f"{side} {column} (z {z[i]:+.1f})"]))
    return flag, reasons


def cell_map(
    representations: np.ndarray,
    obs: pd.DataFrame,
    *,
    clusters: str = "kmeans",
    n_clusters: int = 3,
    tsne: bool = False,
    seed: int = 0,
) -> Any:
    """AnnData of the cells: representations, UMAP (+ t-SNE), clusters and outlier flags in obs."""
    import anndata as ad
    import scanpy as sc

    n = representations.shape[0]
    if n < 4:
        raise UsageError(f"a cell map needs at least 4 cells, the store has {n}")
    adata = ad.AnnData(
        X=np.asarray(representations, dtype=np.float32), obs=obs.reset_index(drop=True).copy()
    )
    adata.obs_names = [str(c) for c in obs["name"]] if "name" in obs else adata.obs_names
    adata.obsm[REPRESENTATION_KEY] = adata.X.copy()
    standardised = (adata.X - adata.X.mean(0)) / (adata.X.std(0) + 1e-8)
    adata.obsm["X_standardised"] = standardised
    sc.pp.neighbors(adata, n_neighbors=max(2, min(15, n - 1)), use_rep="X_standardised")
    sc.tl.umap(adata, random_state=seed)
    if tsne:
        sc.tl.tsne(adata, use_rep="X_standardised", perplexity=max(2.0, min(30.0, (n - 1) / 3)))
    adata.obs["cluster"] = pd.Categorical(
        cluster(adata, clusters, n_clusters, seed, "X_standardised").astype(str)
    )
    score, flag = outliers(standardised)
    adata.obs["outlier_score"] = score
    adata.obs["outlier"] = flag
    qc_flag, qc_reason = qc_outliers(adata.obs)
    adata.obs["qc_outlier"] = qc_flag
    adata.obs["qc_reason"] = qc_reason
    return adata


def axis_correlations(adata: Any, column: str) -> dict[str, float]:
    """Spearman correlation of a numeric obs column with the map's axes and the first diffusion
    component of the cells' neighbour graph (cells where the column is missing left out)."""
    import scanpy as sc
    from scipy.stats import spearmanr

    values = pd.to_numeric(adata.obs[column], errors="coerce").to_numpy(dtype=float)
    known = ~np.isnan(values)
    if known.sum() < 3:
        return {}
    if "X_diffmap" not in adata.obsm:
        sc.tl.diffmap(adata, n_comps=3)
    axes = {
        "umap_1": adata.obsm["X_umap"][:, 0],
        "umap_2": adata.obsm["X_umap"][:, 1],
        "diffusion_1": adata.obsm["X_diffmap"][:, 1],  # component 0 is the trivial one
    }
    return {
        name: float(spearmanr(values[known], axis[known]).statistic) for name, axis in axes.items()
    }


def plot_map(adata: Any, color: str, path: Path, basis: str = "X_umap") -> None:
    """Scatter of the map coloured by ``color`` (numeric: colour bar; else categories) next to the
    clusters; outliers ringed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xy = np.asarray(adata.obsm[basis])
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.8))
    for ax, column in zip(axes, (color, "cluster")):
        values = adata.obs[column]
        if pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values):
            v = values.to_numpy(dtype=float)
            nan = np.isnan(v)
            ax.scatter(xy[nan, 0], xy[nan, 1], s=14, c="lightgrey", label="NA")
            points = ax.scatter(xy[~nan, 0], xy[~nan, 1], s=14, c=v[~nan], cmap="viridis")
            fig.colorbar(points, ax=ax, label=column)
        else:
            for name in pd.unique(values.astype(str)):
                sel = (values.astype(str) == name).to_numpy()
                ax.scatter(xy[sel, 0], xy[sel, 1], s=14, label=name)
            ax.legend(fontsize=7, markerscale=1.2, title=column, loc="best")
        out = adata.obs["outlier"].to_numpy(dtype=bool)
        ax.scatter(xy[out, 0], xy[out, 1], s=90, facecolors="none", edgecolors="red", linewidths=1)
        qc = adata.obs["qc_outlier"].to_numpy(dtype=bool)
        ax.scatter(xy[qc, 0], xy[qc, 1], s=160, marker="s", facecolors="none", edgecolors="black")
        ax.set_title(column)
        ax.set_xlabel(f"{basis[2:].upper()} 1")
        ax.set_ylabel(f"{basis[2:].upper()} 2")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ---- raw vs imputed clustering ----------------------------------------------------------------


@dataclass
class BinMatrices:
    bins: list[tuple[str, int, int]]
    raw: np.ndarray  # [cells, bins] observed mean (NaN where a cell has no call in the bin)
    imputed: np.ndarray  # [cells, bins] mean imputed probability


def bin_matrices(dataset: Any, imputed: Any, bin_size: int, min_sites: int = 5) -> BinMatrices:
    """Cells x bins mean methylation of fixed ``bin_size`` bp bins: from the observed calls and from
    the imputation (mean probability over the bin's sites); bins with fewer than ``min_sites`` sites
    are dropped."""
    if bin_size < 1:
        raise UsageError(f"--bin-size must be >= 1 bp, got {bin_size}")
    bins: list[tuple[str, int, int]] = []
    raw_cols, imp_cols = [], []
    n_cells = dataset.n_cells
    for chrom in imputed.chromosomes:
        positions = np.asarray(imputed.positions(chrom))
        if positions.size == 0:
            continue
        index = positions // bin_size
        starts = np.flatnonzero(np.r_[True, index[1:] != index[:-1]])
        stops = np.r_[starts[1:], positions.size]
        values = imputed.imputed(chrom, 0, positions.size).astype(np.float64)
        observed = imputed.states(chrom, 0, positions.size)
        for a, b in zip(starts, stops):
            if b - a < min_sites:
                continue
            bins.append((chrom, int(index[a] * bin_size), int((index[a] + 1) * bin_size)))
            imp_cols.append(values[a:b].mean(0))
            obs = observed[a:b]
            seen = obs >= 0
            count = seen.sum(0)
            with np.errstate(invalid="ignore", divide="ignore"):
                raw_cols.append(np.where(count > 0, (obs * seen).sum(0) / count, np.nan))
    if not bins:
        raise UsageError(
            f"no bin of {bin_size} bp holds {min_sites} sites: use a larger --bin-size"
        )
    raw = np.stack(raw_cols, axis=1).reshape(n_cells, -1)
    return BinMatrices(bins, raw, np.stack(imp_cols, axis=1).reshape(n_cells, -1))


def _pca(matrix: np.ndarray, n_components: int = 10) -> np.ndarray:
    """Principal components of a cells x bins matrix (NaN filled with the bin mean)."""
    from sklearn.decomposition import PCA

    x = np.array(matrix, dtype=np.float64)
    col_mean = np.nanmean(np.where(np.isnan(x).all(0, keepdims=True), 0.0, x), axis=0)
    x = np.where(np.isnan(x), col_mean[None, :], x)
    x = x - x.mean(0, keepdims=True)
    k = max(1, min(n_components, x.shape[0] - 1, x.shape[1]))
    return PCA(n_components=k, random_state=0).fit_transform(x)


def compare_clusterings(
    bins: BinMatrices,
    labels: Sequence[Any] | None,
    n_clusters: int,
    seed: int = 0,
) -> tuple[pd.DataFrame, dict[str, np.ndarray]]:
    """Cluster raw and imputed bins the same way (PCA, k-means); ARI/NMI against ``labels`` (cells
    with a missing label left out) and between the two clusterings. Returns (table, PCA coords)."""
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

    coords = {name: _pca(m) for name, m in (("raw", bins.raw), ("imputed", bins.imputed))}
    found = {name: _kmeans(c, n_clusters, seed) for name, c in coords.items()}
    rows = []
    known = None
    if labels is not None:
        lab = pd.Series(list(labels), dtype=object)
        known = lab.notna() & (lab.astype(str) != "")
    for name, clusters in found.items():
        row: dict[str, Any] = {"data": name, "n_bins": bins.raw.shape[1], "n_clusters": n_clusters}
        if known is not None and known.any():
            truth = lab[known].astype(str).to_numpy()
            row["ari_vs_labels"] = adjusted_rand_score(truth, clusters[known.to_numpy()])
            row["nmi_vs_labels"] = normalized_mutual_info_score(truth, clusters[known.to_numpy()])
        row["ari_raw_vs_imputed"] = adjusted_rand_score(found["raw"], found["imputed"])
        rows.append(row)
    coords["raw_clusters"] = found["raw"]
    coords["imputed_clusters"] = found["imputed"]
    return pd.DataFrame(rows), coords


def plot_comparison(
    coords: dict[str, np.ndarray], labels: Sequence[Any] | None, table: pd.DataFrame, path: Path
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.8))
    colour = (
        pd.Series(list(labels), dtype=object).fillna("NA").astype(str).to_numpy()
        if labels is not None
        else coords["raw_clusters"].astype(str)
    )
    for ax, name in zip(axes, ("raw", "imputed")):
        xy = coords[name]
        y = xy[:, 1] if xy.shape[1] > 1 else np.zeros(len(xy))
        for value in pd.unique(colour):
            sel = colour == value
            ax.scatter(xy[sel, 0], y[sel], s=16, label=value)
        row = table[table["data"] == name].iloc[0]
        title = f"{name} bins"
        if "ari_vs_labels" in row and not pd.isna(row.get("ari_vs_labels")):
            title += f" — ARI {row['ari_vs_labels']:.2f}, NMI {row['nmi_vs_labels']:.2f}"
        ax.set_title(title)
        ax.set_xlabel("PC 1")
        ax.set_ylabel("PC 2")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_cell_map(
    out: str | Path,
    adata: Any,
    color: str,
    *,
    comparison: tuple[pd.DataFrame, dict[str, np.ndarray]] | None = None,
    labels: Sequence[Any] | None = None,
    overwrite: bool = False,
    inputs: Sequence[Any] = (),
) -> dict:
    """Write a cell map (:func:`cell_map`) into the directory ``out`` (atomic; ``inputs`` are never
    overwritten): ``cells.tsv`` (obs, representations, UMAP), ``cells.h5ad``, ``map.png`` (and
    ``map_tsne.png``), ``summary.json``, and with ``comparison`` (:func:`compare_clusterings`)
    ``clustering.tsv`` and ``raw_vs_imputed.png``. Returns the summary."""
    representations = np.asarray(adata.obsm[REPRESENTATION_KEY])
    with atomic_dir(Path(out), overwrite, kind="cells", inputs=list(inputs)) as tmp:
        table = adata.obs.copy()
        for k in range(representations.shape[1]):
            table[f"rep_{k}"] = representations[:, k]
        umap = adata.obsm["X_umap"]
        table["umap_1"], table["umap_2"] = umap[:, 0], umap[:, 1]
        table.to_csv(tmp / "cells.tsv", sep="\t", index=False)
        adata.write_h5ad(tmp / "cells.h5ad", compression="gzip")
        plot_map(adata, color, tmp / "map.png")
        if "X_tsne" in adata.obsm:
            plot_map(adata, color, tmp / "map_tsne.png", basis="X_tsne")
        summary = _summary(adata, color)
        if comparison is not None:
            result, coords = comparison
            result.to_csv(tmp / "clustering.tsv", sep="\t", index=False)
            plot_comparison(coords, labels, result, tmp / "raw_vs_imputed.png")
            summary["raw_vs_imputed"] = result.to_dict(orient="records")
        with open(tmp / "summary.json", "w") as fh:
            json.dump(summary, fh, indent=1, default=str)
            fh.write("\n")
    return summary


def _summary(adata: Any, color: str) -> dict:
    obs = adata.obs
    summary = {
        "n_cells": int(adata.n_obs),
        "clusters": obs["cluster"].value_counts().to_dict(),
        "outliers": [str(n) for n in adata.obs_names[obs["outlier"].to_numpy(bool)]],
        "qc_outliers": {
            str(n): str(r)
            for n, r, f in zip(adata.obs_names, obs["qc_reason"], obs["qc_outlier"])
            if f
        },
    }
    column = obs[color]
    if pd.api.types.is_numeric_dtype(column) and not pd.api.types.is_bool_dtype(column):
        summary[f"spearman_{color}"] = axis_correlations(adata, color)
    return summary
