"""Ablation: what each input of the model is worth on a store.

Every variant is the base model with one input or sublayer removed, trained with the same data,
split, budget and seed, then scored with the per-site mean on the same hidden calls of the test
chromosomes (:func:`cpgformer.benchmark.run.run_benchmark`):

* ``sites-only`` / ``cells-only`` / ``no-attention``: the attention modes ``intracell``,
  ``intercell`` (``intercell-induced`` for an induced base) and ``none``;
* ``no-dna`` (bases with a DNA branch): no DNA network, the model never reads the sequence;
* ``no-positions``: every site at distance 0 from every other (the window still orders sites);
* ``no-cell-identity``: no cell embedding at all (cells told apart only by their data).

The table gives each variant's AUROC and the paired bootstrap 95 % interval of (variant - full)
over the same hidden calls.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cpgformer.benchmark.metrics import paired_bootstrap
from cpgformer.data.config import DataConfig
from cpgformer.errors import UsageError
from cpgformer.nn import ModelConfig
from cpgformer.options import option
from cpgformer.training.config import TrainConfig

log = logging.getLogger(__name__)

VARIANTS = (
    "full",
    "sites-only",
    "cells-only",
    "no-attention",
    "no-dna",
    "no-positions",
    "no-cell-identity",
)


@dataclass
class AblateOptions:
    """What :func:`ablate` trains and hides, besides the configs (the ``ablate`` command's flags)."""

    variants: tuple[str, ...] = option(
        VARIANTS,
        f"variants to train: {', '.join(VARIANTS)} ('full' is always trained)",
        choices=VARIANTS,
        nargs="+",
        metavar="VARIANT",
        shown="all that apply",
    )
    hide_fraction: float = option(0.2, "fraction of the test chromosomes' observed calls hidden")


def variant_config(base: ModelConfig, name: str) -> ModelConfig | None:
    """``base`` with the variant's input removed; None when the variant does not apply."""
    induced = base.mode == "induced"
    changes: dict[str, Any] = {
        "full": {},
        "sites-only": {"mode": "intracell"},
        "cells-only": {"mode": "intercell-induced" if induced else "intercell"},
        "no-attention": {"mode": "none"},
        "no-dna": {"dna_window": 0},
        "no-positions": {"use_positions": False},
        "no-cell-identity": {"cell_identity": False},
    }.get(name, None)
    if changes is None:
        raise UsageError(f"unknown ablation variant {name!r} (choose from {', '.join(VARIANTS)})")
    if name == "no-dna" and not base.has_dna:
        return None
    return dataclasses.replace(base, **changes)


def ablate(
    store: str | os.PathLike[str],
    out: str | os.PathLike[str],
    base: ModelConfig,
    data: DataConfig,
    training: TrainConfig,
    variants: Sequence[str] = VARIANTS,
    *,
    hide_fraction: float = 0.2,
    seed: int = 0,
    n_boot: int = 1000,
) -> pd.DataFrame:
    """Train every variant into ``out/runs/NAME`` (a finished run is reused, so an interrupted
    ablation resumes), benchmark them on the same hidden calls into ``out/benchmark``, and write
    ``out/ablation.tsv`` and ``out/ablation.png``. Returns the table."""
    from cpgformer.benchmark.baselines import CpgformerModel
    from cpgformer.benchmark.run import run_benchmark
    from cpgformer.training.fit import fit

    out = Path(out)
    if "full" not in variants:
        variants = ("full", *variants)
    configs = {}
    for name in dict.fromkeys(variants):
        config = variant_config(base, name)
        if config is None:
            log.info("ablation: %s does not apply (the base model has no DNA branch)", name)
            continue
        configs[name] = config
    models = []
    test_chroms = None
    for name, config in configs.items():
        run = out / "runs" / name
        last = run / "checkpoints" / "last.ckpt"
        if not last.is_file():
            log.info("ablation: training %s", name)
            fit(store, run, config, data, training, progress_bar=False)
        model = CpgformerModel.from_checkpoint(str(last))
        model.name = name
        models.append(model)
        test_chroms = test_chroms or model.data.get("test_chromosomes_resolved")
    if not test_chroms:
        raise UsageError("the runs have no test chromosomes: give --test-chromosomes")
    run_benchmark(
        store,
        models=[*models, "site-mean"],
        out_dir=out / "benchmark",
        test_chromosomes=test_chroms,
        hide_fraction=hide_fraction,
        seed=seed,
        overwrite=True,
        figures=False,
    )
    predictions = pd.read_csv(out / "benchmark" / "predictions.tsv.gz", sep="\t")
    names = [*configs, "site-mean"]
    others = {name: predictions[name].to_numpy() for name in names if name != "full"}
    boot = paired_bootstrap(
        predictions["label"].to_numpy(),
        predictions["full"].to_numpy(),
        others,
        n_boot=n_boot,
        seed=seed,
    )
    rows: list[dict[str, Any]] = []
    for row in boot:
        if row["metric"] != "auroc":
            continue
        if not rows:
            rows.append({"variant": "full", "n": row["n"], "auroc": row["reference"]})
        rows.append(  # full minus variant, turned around: variant minus full
            {
                "variant": row["model"],
                "n": row["n"],
                "auroc": row["other"],
                "minus_full": -row["difference"],
                "ci_low": -row["ci_high"],
                "ci_high": -row["ci_low"],
            }
        )
    table = pd.DataFrame(rows)
    table.to_csv(out / "ablation.tsv", sep="\t", index=False, float_format="%.5f")
    _plot(table, out / "ablation.png")
    return table


def _plot(table: pd.DataFrame, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 0.45 * len(table) + 1.2))
    y = np.arange(len(table))
    diff = table.get("minus_full", pd.Series(np.zeros(len(table)))).fillna(0).to_numpy()
    lo = table.get("ci_low", pd.Series(np.zeros(len(table)))).fillna(0).to_numpy()
    hi = table.get("ci_high", pd.Series(np.zeros(len(table)))).fillna(0).to_numpy()
    ax.barh(y, diff, xerr=[diff - lo, hi - diff], color="tab:blue", alpha=0.7, capsize=3)
    ax.axvline(0, color="black", linewidth=0.8)
    ax.set_yticks(y, [f"{v} ({a:.3f})" for v, a in zip(table["variant"], table["auroc"])])
    ax.invert_yaxis()
    ax.set_xlabel("AUROC minus the full model (95 % paired bootstrap interval)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
