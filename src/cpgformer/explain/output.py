"""Writing explanations: one npz (and figures) per explained prediction and ``summary.tsv``."""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from cpgformer.explain.plotting import plot_attention, plot_attributions, plot_dna_track
from cpgformer.explain.results import SiteExplanation, save_npz
from cpgformer.utils.atomic import atomic_dir

SUMMARY_COLUMNS = [
    "index",
    "chrom",
    "position",
    "cell",
    "label_change",
    "observed",
    "probability",
    "logit",
    "baseline_logit",
    "attribution_sum",
    "convergence_delta",
    "top_cell",
    "top_cell_total",
    "n_sites",
    "npz",
]


def write_explanations(
    results: Sequence[SiteExplanation],
    out: str | os.PathLike[str],
    *,
    figures: bool = True,
    fmt: str = "png",
    overwrite: bool = False,
    inputs: Sequence[object] = (),
) -> Path:
    """Write ``NNN_<name>.npz`` (and the figures) of every explanation and ``summary.tsv`` into the
    directory ``out`` (atomic; ``inputs`` are never overwritten). Returns the summary's path."""
    rows = []
    with atomic_dir(out, overwrite, kind="explain", inputs=list(inputs)) as tmp:
        for k, expl in enumerate(results):
            stem = f"{k:03d}_{expl.name}"
            save_npz(expl, tmp / f"{stem}.npz")
            if figures:
                plot_attributions(expl, tmp / f"{stem}.attributions.{fmt}")
                if expl.dna_attribution is not None:
                    plot_dna_track(expl, tmp / f"{stem}.dna.{fmt}")
                if expl.site_attention is not None or expl.cell_attention is not None:
                    plot_attention(expl, tmp / f"{stem}.attention.{fmt}")
            rows.append(summary_row(k, expl, f"{stem}.npz"))
        buffer = io.StringIO()
        writer = csv.DictWriter(
            buffer, fieldnames=SUMMARY_COLUMNS, delimiter="\t", lineterminator="\n"
        )
        writer.writeheader()
        writer.writerows(rows)
        (tmp / "summary.tsv").write_text(buffer.getvalue())
    return Path(out) / "summary.tsv"


def summary_row(k: int, expl: SiteExplanation, npz_name: str) -> dict:
    """One row of ``summary.tsv``."""
    target = expl.states[expl.target_index, expl.target_cell]
    others = np.abs(expl.cell_totals).copy()
    top = int(np.argmax(others))
    return {
        "index": k,
        "chrom": expl.chrom,
        "position": expl.query.position,
        "cell": expl.cells[expl.target_cell],
        "label_change": expl.query.label_change_text,
        "observed": "NA" if target < 0 else f"{target:g}",
        "probability": f"{expl.probability:.6f}",
        "logit": f"{expl.logit:.6f}",
        "baseline_logit": f"{expl.baseline_logit:.6f}",
        "attribution_sum": f"{expl.attribution_sum:.6f}",
        "convergence_delta": f"{expl.convergence_delta:.3e}",
        "top_cell": expl.cells[top],
        "top_cell_total": f"{expl.cell_totals[top]:.6f}",
        "n_sites": len(expl.positions),
        "npz": npz_name,
    }
