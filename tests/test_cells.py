"""`cpgformer cells`: representations, map, clusters, outliers, raw vs imputed clustering."""

from __future__ import annotations

import json
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import torch
from _training_helpers import dense_to_chrom

from cpgformer.cells import cell_representations, outliers
from cpgformer.checkpoint import save_checkpoint
from cpgformer.cli import main
from cpgformer.data.profiles import CellProfiler
from cpgformer.impute import ImputeOptions, impute
from cpgformer.io.store import open_dataset, write_store
from cpgformer.nn import CpGTransformer, ModelConfig


def _groups_store(path: Path, n_cells: int = 24, seed: int = 0) -> tuple[Path, np.ndarray]:
    """Three cell groups, each methylated in its own third of every chromosome's sites."""
    rng = np.random.default_rng(seed)
    group = np.arange(n_cells) % 3
    chroms = []
    for name in ("chr1", "chr2"):
        n = 900
        positions = np.arange(n) * 300 + 1000
        region = (np.arange(n) * 3) // n  # which third of the chromosome
        prob = np.where(region[:, None] == group[None, :], 0.9, 0.1)
        labels = (rng.random((n, n_cells)) < prob).astype(np.int8)
        labels[rng.random((n, n_cells)) > 0.3] = -1
        chroms.append(dense_to_chrom(name, positions, labels))
    write_store(path, chroms, [f"c{i:02d}" for i in range(n_cells)])
    return path, group


def _profile_checkpoint(store: Path, path: Path) -> Path:
    ds = open_dataset(store)
    profiler = CellProfiler.fit(ds, n_bins=12, n_components=4)
    torch.manual_seed(0)
    config = ModelConfig(
        n_cells=1, dna_window=0, mode="induced", hidden=16, n_layers=1, n_heads=2, head_dim=4,
        cell_encoder="profile", profile_features=6, cell_embed=8,
    )  # fmt: skip
    model = CpGTransformer(config)
    save_checkpoint(path, model, cell_profiles=profiler.to_dict())
    return path


def test_cells_command_writes_map_clusters_and_comparison(tmp_path: Path) -> None:
    store, group = _groups_store(tmp_path / "store")
    ckpt = _profile_checkpoint(store, tmp_path / "model.pt")
    impute(store, ckpt, tmp_path / "imp", ImputeOptions())
    meta = pd.DataFrame(
        {"cell": [f"c{i:02d}" for i in range(24)], "group": [f"g{k}" for k in group]}
    )
    meta.to_csv(tmp_path / "meta.tsv", sep="\t", index=False)
    out = tmp_path / "cells"
    code = main([
        "-q", "cells", str(ckpt), str(store), "-o", str(out), "--cell-metadata",
        str(tmp_path / "meta.tsv"), "--color", "group", "--imputed", str(tmp_path / "imp"),
        "--bin-size", "30000", "--labels", "group", "--tsne",
    ])  # fmt: skip
    assert code == 0
    table = pd.read_csv(out / "cells.tsv", sep="\t")
    assert len(table) == 24 and {"umap_1", "cluster", "outlier", "group"} <= set(table.columns)
    adata = ad.read_h5ad(out / "cells.h5ad")
    assert adata.obsm["X_cpgformer"].shape == (24, 8) and "X_umap" in adata.obsm
    assert "X_tsne" in adata.obsm
    for png in ("map.png", "map_tsne.png", "raw_vs_imputed.png"):
        assert (out / png).stat().st_size > 1000
    clustering = pd.read_csv(out / "clustering.tsv", sep="\t").set_index("data")
    # the three groups are plain in the raw bins: found exactly
    assert clustering.loc["raw", "ari_vs_labels"] == pytest.approx(1.0)
    assert -1 <= clustering.loc["imputed", "ari_vs_labels"] <= 1
    summary = json.loads((out / "summary.json").read_text())
    assert "spearman_group" not in summary  # a categorical colour: no correlation
    reps = cell_representations(ckpt, open_dataset(store))
    assert reps.shape == (24, 8)


def test_cells_command_rejects_unknown_colour_column(tmp_path: Path) -> None:
    store, _ = _groups_store(tmp_path / "store", n_cells=6)
    ckpt = _profile_checkpoint(store, tmp_path / "model.pt")
    code = main(["cells", str(ckpt), str(store), "-o", str(tmp_path / "o"), "--color", "nope"])
    assert code == 2
    assert not (tmp_path / "o").exists()


def test_table_model_representations_are_its_rows(tmp_path: Path) -> None:
    store, _ = _groups_store(tmp_path / "store", n_cells=6)
    model = CpGTransformer(ModelConfig(n_cells=6, dna_window=0, n_layers=1, hidden=16))
    names = [f"c{i:02d}" for i in range(6)]
    save_checkpoint(tmp_path / "t.pt", model, cells=names[::-1])  # reversed: matched by name
    reps = cell_representations(tmp_path / "t.pt", open_dataset(store))
    assert np.allclose(reps, model.cell_embed.weight.detach().numpy()[::-1])


def test_outliers_flag_a_far_cell() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(30, 4))
    x[7] += 25
    score, flag = outliers(x)
    assert flag[7] and flag.sum() == 1 and score.argmax() == 7


def test_axis_correlations_follow_a_gradient() -> None:
    from cpgformer.cells import axis_correlations, cell_map

    rng = np.random.default_rng(1)
    t = np.linspace(0, 1, 40)
    reps = np.stack([t * 5, np.sin(t * 3), rng.normal(scale=0.05, size=40)], axis=1)
    obs = pd.DataFrame({"name": [f"c{i}" for i in range(40)], "pseudotime": t})
    adata = cell_map(reps, obs, n_clusters=2)
    rho = axis_correlations(adata, "pseudotime")
    assert max(abs(v) for v in rho.values()) > 0.9


def test_qc_outliers_flag_low_calls_and_odd_methylation() -> None:
    from cpgformer.cells import qc_outliers

    obs = pd.DataFrame(
        {
            "n_calls": np.linspace(70_000, 90_000, 30).round(),
            "global_meth_frac": np.linspace(0.26, 0.30, 30)[::-1],
        }
    )
    obs.loc[9, "n_calls"] = 30_000  # down-sampled
    obs.loc[19, "global_meth_frac"] = 0.12  # conversion failure
    flag, reason = qc_outliers(obs)
    assert set(np.flatnonzero(flag)) == {9, 19}
    assert "low n_calls" in reason[9] and "low global_meth_frac" in reason[19]
