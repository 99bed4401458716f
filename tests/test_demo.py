"""The demo pipeline end to end on the embedded real data (few training steps, fast baselines)."""

from __future__ import annotations

import anndata
import pandas as pd

from cpgformer.cli import main
from cpgformer.demo import DEMO_EXCLUDED_CELLS, demo_files


def test_embedded_demo_data_is_complete() -> None:
    cells, tss = demo_files()
    assert [c.name for c in cells] == [f"cell_{i:02d}.cov.gz" for i in range(1, 31)]
    assert tss.is_file()


def test_demo_command_writes_report_plots_and_h5ad(tmp_path, capsys) -> None:
    out = tmp_path / "demo"
    code = main(["demo", "-o", str(out), "--max-steps", "4", "--baselines", "site-mean,cell-mean"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "| model | n | auroc" in printed and "AnnData:" in printed

    metrics = pd.read_csv(out / "benchmark" / "metrics.tsv", sep="\t")
    assert list(metrics.columns[:9]) == [
        "model", "n", "auroc", "auprc", "accuracy", "f1", "mcc", "brier", "ece",
    ]  # fmt: skip
    assert set(metrics["model"]) == {"cpgformer", "site-mean", "cell-mean"}
    assert metrics["n"].nunique() == 1 and metrics["n"].iloc[0] > 1000  # identical hidden entries
    assert (out / "benchmark" / "report.md").is_file()
    assert list((out / "benchmark").glob("*.png"))

    adata = anndata.read_h5ad(out / "demo.h5ad")
    assert adata.n_obs == 30 and adata.n_vars == 98412
    assert set(adata.var["chrom"].astype(str)) == {"16", "17", "18", "19"}
    per_cell = pd.read_csv(next((out / "benchmark").glob("per_cell*.tsv")), sep="\t")
    assert not set(per_cell["cell"]) & set(DEMO_EXCLUDED_CELLS)
