"""Benchmark outputs: metric tables (TSV), a markdown report and plots (matplotlib, Agg).

Files written into the output directory:

``metrics.tsv``          one row per model: ``model n auroc auprc accuracy f1 mcc brier ece``
``per_cell.tsv``         ``model cell n auroc ...`` (every scored cell)
``per_context.tsv``      ``model context bin n auroc ...`` (CpG density; TSS distance with a BED)
``predictions.tsv.gz``   every scored entry: chrom, pos (0-based + C), cell, label, its hiding round
                         (with several rounds), context values,
                         one probability column per model
``paired_bootstrap.tsv`` cpgformer minus each other model, AUROC and AUPRC: difference and paired
                         bootstrap 95 % interval over all scored entries and per cell (``scope``
                         ``all`` / ``cell``); only when a ``cpgformer`` column is scored
``settings.json``        protocol, seed, chromosomes or blocks, cells, models, timings
``report.md``            the tables above in markdown, with the plots
``roc.png``, ``precision_recall.png``, ``calibration.png``, ``per_cell_auroc.png``
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from cpgformer.benchmark.metrics import (
    BOOTSTRAP_RESAMPLES,
    DENSITY_EDGES,
    METRIC_COLUMNS,
    bin_labels,
    binary_metrics,
    distance_bin_labels,
    grouped_metrics,
    paired_bootstrap,
)

log = logging.getLogger(__name__)

PLOTS = ("roc.png", "precision_recall.png", "calibration.png", "per_cell_auroc.png")


def metric_tables(
    predictions: pd.DataFrame, model_names: Sequence[str]
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(overall, per cell, per context) metric tables for the models' prediction columns."""
    labels = predictions["label"].to_numpy()
    if labels.size and labels.min() == labels.max():
        log.warning(
            "every scored call has label %d: AUROC, AUPRC and MCC are undefined (nan)", labels[0]
        )
    one_class = predictions.groupby("cell")["label"].nunique()
    if (one_class == 1).any():
        log.warning(
            "%d of %d cells have scored calls of one class only: their AUROC/AUPRC are nan",
            int((one_class == 1).sum()),
            one_class.size,
        )
    contexts = {"cpg_density": bin_labels(predictions["cpg_density"].to_numpy(), DENSITY_EDGES)}
    if "tss_distance" in predictions:
        contexts["tss_distance"] = distance_bin_labels(predictions["tss_distance"].to_numpy())
    overall, per_cell, per_context = [], [], []
    cells = predictions["cell"].to_numpy()
    for name in model_names:
        probs = predictions[name].to_numpy(dtype=np.float64)
        overall.append({"model": name, **binary_metrics(probs, labels)})
        pc = grouped_metrics(probs, labels, cells, "cell")
        pc.insert(0, "model", name)
        per_cell.append(pc)
        for context, bins in contexts.items():
            px = grouped_metrics(probs, labels, bins, "bin")
            px.insert(0, "context", context)
            px.insert(0, "model", name)
            per_context.append(px)
    return (
        pd.DataFrame(overall, columns=["model", *METRIC_COLUMNS]),
        pd.concat(per_cell, ignore_index=True),
        pd.concat(per_context, ignore_index=True),
    )


BOOTSTRAP_COLUMNS = [
    "scope",
    "cell",
    "model",
    "metric",
    "n",
    "reference",
    "other",
    "difference",
    "ci_low",
    "ci_high",
    "n_boot",
]


def bootstrap_table(
    predictions: pd.DataFrame,
    model_names: Sequence[str],
    reference: str = "cpgformer",
    n_boot: int = BOOTSTRAP_RESAMPLES,
    seed: int = 0,
) -> pd.DataFrame:
    """Paired bootstrap of ``reference`` minus every other model (AUROC, AUPRC), over all entries
    (scope ``all``) and per cell (scope ``cell``). Empty without a ``reference`` column."""
    others = [m for m in model_names if m != reference]
    if reference not in model_names or not others or n_boot <= 0:
        return pd.DataFrame(columns=BOOTSTRAP_COLUMNS)
    labels = predictions["label"].to_numpy()
    ref = predictions[reference].to_numpy(dtype=np.float64)
    other = {m: predictions[m].to_numpy(dtype=np.float64) for m in others}
    rows = [
        {"scope": "all", "cell": "", **r}
        for r in paired_bootstrap(labels, ref, other, n_boot=n_boot, seed=seed)
    ]
    cells = predictions["cell"].to_numpy()
    for k, cell in enumerate(pd.unique(cells)):
        sel = cells == cell
        sub = {m: v[sel] for m, v in other.items()}
        for r in paired_bootstrap(labels[sel], ref[sel], sub, n_boot=n_boot, seed=seed + 1 + k):
            rows.append({"scope": "cell", "cell": cell, **r})
    return pd.DataFrame(rows, columns=BOOTSTRAP_COLUMNS)


def _bootstrap_md(boot: pd.DataFrame, reference: str = "cpgformer") -> list[str]:
    if boot.empty:
        return []
    overall = boot[boot["scope"] == "all"]
    table = pd.DataFrame(
        {
            "model": overall["model"].to_numpy(),
            "metric": overall["metric"].to_numpy(),
            reference: overall["reference"].to_numpy(),
            "model value": overall["other"].to_numpy(),
            "difference": overall["difference"].to_numpy(),
            "95% CI": [
                "undefined" if math.isnan(lo) else f"[{lo:+.4f}, {hi:+.4f}]"
                for lo, hi in zip(overall["ci_low"], overall["ci_high"])
            ],
        }
    )
    lines = [
        f"## {reference} minus each model (paired bootstrap)",
        "",
        f"Scored entries resampled with replacement {int(overall['n_boot'].max())} times; every "
        "model scored on the same resample; percentile 95 % interval of the difference.",
        "",
        markdown_table(table),
        "",
    ]
    cells = boot[boot["scope"] == "cell"]
    if not cells.empty:
        rows = []
        for (model, metric), sub in cells.groupby(["model", "metric"], sort=False):
            lo, hi = sub["ci_low"].to_numpy(), sub["ci_high"].to_numpy()
            defined = ~np.isnan(lo)
            rows.append(
                {
                    "model": model,
                    "metric": metric,
                    "cells": int(sub.shape[0]),
                    f"{reference} better": int((lo[defined] > 0).sum()),
                    "undecided": int(((lo[defined] <= 0) & (hi[defined] >= 0)).sum()),
                    f"{reference} worse": int((hi[defined] < 0).sum()),
                    "undefined": int((~defined).sum()),
                    "median difference": float(np.nanmedian(sub["difference"]))
                    if np.isfinite(sub["difference"]).any()
                    else float("nan"),
                }
            )
        lines += [
            "Per cell (see paired_bootstrap.tsv): cells whose 95 % interval lies above 0 "
            f"({reference} better), contains 0, or lies below 0; undefined = one class or too few "
            "entries.",
            "",
            markdown_table(pd.DataFrame(rows)),
            "",
        ]
    return lines


def _fmt(value: object) -> str:
    if isinstance(value, (float, np.floating)):
        return "nan" if math.isnan(value) else f"{value:.4f}"
    return str(value)


def markdown_table(frame: pd.DataFrame) -> str:
    """A GitHub markdown table (floats with 4 decimals)."""
    head = "| " + " | ".join(str(c) for c in frame.columns) + " |"
    rule = "|" + "|".join("---" for _ in frame.columns) + "|"
    body = ["| " + " | ".join(_fmt(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join([head, rule, *body])


def _write_tsv(frame: pd.DataFrame, path: Path) -> None:
    frame.to_csv(path, sep="\t", index=False, float_format="%.6g", na_rep="nan")


def _plots(
    out: Path, predictions: pd.DataFrame, model_names: Sequence[str], per_cell: pd.DataFrame
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import torch
    from torchmetrics.functional.classification import binary_precision_recall_curve, binary_roc

    y = torch.as_tensor(predictions["label"].to_numpy(dtype=np.int64))
    single_class = int(y.min()) == int(y.max())
    figs = {name: plt.subplots(figsize=(5.5, 5)) for name in PLOTS[:3]}
    for name in model_names:
        p = torch.as_tensor(predictions[name].to_numpy(dtype=np.float64)).clamp(0, 1).float()
        if not single_class:
            fpr, tpr, _ = binary_roc(p, y, thresholds=401)
            figs["roc.png"][1].plot(fpr.numpy(), tpr.numpy(), label=name)
            prec, rec, _ = binary_precision_recall_curve(p, y, thresholds=401)
            figs["precision_recall.png"][1].plot(rec.numpy(), prec.numpy(), label=name)
        edges = np.linspace(0, 1, 11)
        pn = p.numpy()
        idx = np.clip(np.digitize(pn, edges[1:-1]), 0, 9)
        count = np.bincount(idx, minlength=10)
        mean_p = np.bincount(idx, weights=pn, minlength=10) / np.maximum(count, 1)
        frac = np.bincount(idx, weights=y.numpy(), minlength=10) / np.maximum(count, 1)
        ok = count > 0
        figs["calibration.png"][1].plot(mean_p[ok], frac[ok], marker="o", label=name)
    ax = figs["roc.png"][1]
    ax.plot([0, 1], [0, 1], color="grey", lw=0.8, ls="--")
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC")
    ax = figs["precision_recall.png"][1]
    ax.set(xlabel="recall", ylabel="precision", title="precision-recall")
    ax = figs["calibration.png"][1]
    ax.plot([0, 1], [0, 1], color="grey", lw=0.8, ls="--")
    ax.set(xlabel="mean predicted probability", ylabel="observed methylated fraction")
    ax.set_title("calibration (10 bins)")
    for name, (fig, ax) in figs.items():
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out / name, dpi=110)
        plt.close(fig)
    # per-cell AUROC bars
    pivot = per_cell.pivot(index="cell", columns="model", values="auroc")
    pivot = pivot[[m for m in model_names if m in pivot.columns]]
    n_cells, n_models = pivot.shape
    fig, ax = plt.subplots(figsize=(min(18.0, max(6.0, 0.1 * n_cells * max(1, n_models) + 2)), 4.5))
    width = 0.8 / max(1, n_models)
    x = np.arange(n_cells)
    for k, name in enumerate(pivot.columns):
        ax.bar(x + k * width - 0.4 + width / 2, pivot[name].to_numpy(), width, label=name)
    ax.set_xticks(x)
    ax.set_xticklabels(pivot.index, rotation=90, fontsize=7)
    ax.set_ylim(0.0, 1.0)
    ax.set_ylabel("AUROC")
    ax.set_title("per-cell AUROC")
    ax.legend(fontsize=7, ncol=min(4, max(1, n_models)))
    fig.tight_layout()
    fig.savefig(out / "per_cell_auroc.png", dpi=110)
    plt.close(fig)


def _report_md(
    metrics: pd.DataFrame,
    per_cell: pd.DataFrame,
    per_context: pd.DataFrame,
    settings: dict,
    plots: bool,
    boot: pd.DataFrame | None = None,
) -> str:
    s = settings
    lines = [
        "# cpgformer benchmark",
        "",
        f"- store: `{s.get('store')}` (fingerprint `{str(s.get('store_fingerprint'))[:16]}`)",
        f"- protocol: **{s.get('protocol')}**"
        + (
            f", hidden fraction {s.get('hide_fraction')} in read-sized runs "
            f"(observed sites of a cell <= {s.get('run_gap_bp')} bp apart hidden together)"
            + (
                f", {s['rounds']} disjoint rounds, each predicted from its own masked input"
                if (s.get("rounds") or 1) > 1
                else ""
            )
            if s.get("protocol") == "holdout"
            else f", each scored entry hidden alone (fraction scored {s.get('hide_fraction')})"
        ),
        _split_line(s),
        f"- cells: {s.get('n_cells')}"
        + (f" (not scored: {', '.join(s['excluded_cells'])})" if s.get("excluded_cells") else ""),
        f"- DNA (FASTA): {s.get('fasta') or 'none'}; TSS BED: {s.get('tss_bed') or 'none'}",
        f"- checkpoint: {s.get('checkpoint') or 'none'}",
        f"- scored entries: {s.get('n_entries')}; every model received the same masked input.",
        "",
        "## Overall",
        "",
        markdown_table(metrics.sort_values("auroc", ascending=False, na_position="last")),
        "",
        "Threshold 0.5 for accuracy, F1 and MCC; ECE with 15 equal-width bins.",
        "",
    ]
    if boot is not None:
        lines += _bootstrap_md(boot)
    timings = s.get("timings") or {}
    if timings:
        frame = pd.DataFrame(
            [{"model": m, **{k: round(v, 2) for k, v in t.items()}} for m, t in timings.items()]
        )
        lines += ["## Time (s)", "", markdown_table(frame), ""]
    for context in per_context["context"].unique():
        sub = per_context[per_context["context"] == context]
        auroc = sub.pivot(index="bin", columns="model", values="auroc").reset_index()
        n = sub.groupby("bin", sort=True)["n"].first().to_numpy()
        auroc.insert(1, "n", n)
        title = {
            "cpg_density": "CpGs within +-250 bp",
            "tss_distance": "distance to the nearest TSS",
        }.get(context, context)
        lines += [f"## AUROC by {title}", "", markdown_table(auroc), ""]
    pc = per_cell.pivot(index="cell", columns="model", values="auroc")
    summary = pd.DataFrame(
        {
            "model": pc.columns,
            "median cell AUROC": pc.median().to_numpy(),
            "min": pc.min().to_numpy(),
            "max": pc.max().to_numpy(),
        }
    )
    lines += ["## Per-cell AUROC (see per_cell.tsv)", "", markdown_table(summary), ""]
    if plots:
        lines += [
            "## Plots",
            "",
            "![ROC](roc.png) ![precision-recall](precision_recall.png)",
            "",
            "![calibration](calibration.png) ![per-cell AUROC](per_cell_auroc.png)",
            "",
        ]
    return "\n".join(lines)


def _split_line(s: dict) -> str:
    if s.get("split") == "regions":
        test = s.get("test_regions") or []
        train = s.get("train_regions") or []
        sites = sum(r[2] - r[1] for r in test)
        return (
            f"- seed {s.get('seed')}; region hold-out: {len(test)} test block(s) "
            f"({sites} sites) on {', '.join(s.get('test_chromosomes', []))}; baselines fitted on "
            f"{len(train)} training block(s) ({sum(r[2] - r[1] for r in train)} sites)"
            + (f"; {s['split_note']}" if s.get("split_note") else "")
        )
    return (
        f"- seed {s.get('seed')}; test chromosomes: {', '.join(s.get('test_chromosomes', []))}; "
        f"training chromosomes: {len(s.get('train_chromosomes', []))}"
        + (f"; {s['split_note']}" if s.get("split_note") else "")
    )


def write_report(
    out: Path,
    predictions: pd.DataFrame,
    model_names: Sequence[str],
    settings: dict,
    plots: bool = True,
    bootstrap: int = BOOTSTRAP_RESAMPLES,
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Write every output file into ``out`` (an existing directory); return the tables (overall,
    per cell, per context, paired bootstrap)."""
    out = Path(out)
    metrics, per_cell, per_context = metric_tables(predictions, model_names)
    boot = bootstrap_table(predictions, model_names, n_boot=bootstrap, seed=settings.get("seed", 0))
    if not boot.empty:
        _write_tsv(boot, out / "paired_bootstrap.tsv")
    _write_tsv(metrics, out / "metrics.tsv")
    _write_tsv(per_cell, out / "per_cell.tsv")
    _write_tsv(per_context, out / "per_context.tsv")
    predictions.to_csv(
        out / "predictions.tsv.gz", sep="\t", index=False, float_format="%.5g", na_rep="nan"
    )
    with open(out / "settings.json", "w") as fh:
        json.dump(settings, fh, indent=1, default=str)
        fh.write("\n")
    if plots:
        _plots(out, predictions, model_names, per_cell)
    (out / "report.md").write_text(
        _report_md(metrics, per_cell, per_context, settings, plots, boot)
    )
    return metrics, per_cell, per_context, boot
