"""Figures of an explanation (matplotlib, Agg canvas; no global pyplot state)."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cpgformer.codes import NUCLEOTIDE_LETTERS
from cpgformer.errors import UsageError
from cpgformer.explain.results import SiteExplanation
from cpgformer.utils.atomic import atomic_path


def _new_figure(width: float, height: float) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Any, path: str | os.PathLike[str] | None, dpi: int = 120) -> None:
    if path is None:
        return

    target = Path(path)
    with atomic_path(target) as tmp:
        fig.savefig(tmp, dpi=dpi, format=target.suffix.lstrip(".") or "png")


def _symmetric_limit(values: np.ndarray) -> float:
    finite = np.abs(values[np.isfinite(values)])
    vmax = float(finite.max()) if finite.size else 0.0
    return vmax if vmax > 0 else 1.0


def _title(expl: SiteExplanation) -> str:
    q = expl.query
    change = "" if q.label_change is None else f", input {q.label_change_text}"
    return (
        f"{expl.chrom}:{q.position} (0-based C), cell {expl.cells[expl.target_cell]}{change}: "
        f"p(methylated) = {expl.probability:.3f}, logit {expl.logit:+.3f} "
        f"(baseline {expl.baseline_logit:+.3f})"
    )


def _cell_ticks(ax: Any, cells: Sequence[str], target: int, axis: str = "y") -> None:
    n = len(cells)
    step = max(1, math.ceil(n / 40))
    ticks = list(range(0, n, step))
    if target not in ticks:
        ticks.append(target)
        ticks.sort()
    labels = [cells[i] for i in ticks]
    size = 8 if n <= 40 else 6
    if axis == "y":
        ax.set_yticks(ticks, labels, fontsize=size)
        for tick, i in zip(ax.get_yticklabels(), ticks):
            if i == target:
                tick.set_fontweight("bold")
    else:
        ax.set_xticks(ticks, labels, fontsize=size, rotation=90)
        for tick, i in zip(ax.get_xticklabels(), ticks):
            if i == target:
                tick.set_fontweight("bold")


def plot_attributions(expl: SiteExplanation, path: str | os.PathLike[str] | None = None) -> Any:
    """Heatmap cells x sites of the call-state attributions (observed calls marked: filled dot
    methylated, open dot unmethylated), with the per-cell totals beside it. Returns the figure."""
    from matplotlib.patches import Rectangle
    from matplotlib.ticker import MaxNLocator

    attr = expl.state_attribution.T  # [C, L]
    n_cells, n_sites = attr.shape
    offsets = np.arange(n_sites) - expl.target_index
    width = min(18.0, 4.0 + 0.14 * n_sites)
    height = min(14.0, 2.0 + 0.22 * n_cells)
    fig = _new_figure(width + 2.5, height)
    grid = fig.add_gridspec(1, 2, width_ratios=[width, 2.5])
    ax = fig.add_subplot(grid[0, 0])
    vmax = _symmetric_limit(attr)
    extent = (offsets[0] - 0.5, offsets[-1] + 0.5, n_cells - 0.5, -0.5)
    image = ax.imshow(
        attr,
        cmap="RdBu_r",
        vmin=-vmax,
        vmax=vmax,
        aspect="auto",
        interpolation="nearest",
        extent=extent,
    )
    states = expl.states.T
    meth_c, meth_s = np.nonzero(states >= 0.5)
    unmeth_c, unmeth_s = np.nonzero((states >= 0) & (states < 0.5))
    marker = 9 if n_cells * n_sites <= 2000 else 4
    ax.scatter(offsets[meth_s], meth_c, s=marker, c="black", linewidths=0, label="methylated")
    ax.scatter(
        offsets[unmeth_s],
        unmeth_c,
        s=marker,
        facecolors="none",
        edgecolors="black",
        linewidths=0.6,
        label="unmethylated",
    )
    ax.add_patch(
        Rectangle((-0.5, expl.target_cell - 0.5), 1, 1, fill=False, edgecolor="gold", linewidth=2)
    )
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("site offset from the target (CpG sites)")
    ax.set_ylabel("cell")
    _cell_ticks(ax, expl.cells, expl.target_cell)
    ax.set_title("call-state attribution (integrated gradients on the logit)", fontsize=9)
    fig.colorbar(image, ax=ax, shrink=0.6, pad=0.01, label="attribution")
    ax.legend(
        loc="upper center",
        bbox_to_anchor=(0.5, -0.12),
        ncol=2,
        fontsize=7,
        markerscale=1.5,
        frameon=False,
    )

    side = fig.add_subplot(grid[0, 1], sharey=ax)
    totals = expl.cell_totals
    colors = np.where(totals >= 0, "#b2182b", "#2166ac")
    side.barh(np.arange(n_cells), totals, color=colors, height=0.8)
    side.barh(
        np.arange(n_cells),
        expl.cell_attribution,
        height=0.35,
        color="none",
        edgecolor="black",
        linewidth=0.6,
        label="cell embedding part",
    )
    side.axvline(0, color="grey", linewidth=0.5)
    side.set_xlabel("cell total")
    side.tick_params(labelleft=False)
    side.legend(loc="upper center", bbox_to_anchor=(0.5, -0.12), fontsize=7, frameon=False)
    fig.suptitle(_title(expl), fontsize=9)
    _save(fig, path)
    return fig


def plot_dna_track(
    expl: SiteExplanation, path: str | os.PathLike[str] | None = None, zoom: int = 40
) -> Any:
    """DNA attribution of the target site's window: the whole window, a zoom of +-``zoom`` bp
    with the bases written out, and the summed per-base attribution of every site in the field."""
    from matplotlib.ticker import MaxNLocator

    if expl.dna_attribution is None or expl.dna is None:
        raise UsageError("this explanation has no DNA attribution (the model uses no DNA)")
    track = expl.dna_attribution[expl.target_index]
    bases = expl.dna[expl.target_index]
    width = track.shape[0]
    half = (width - 1) // 2
    offsets = np.arange(width) - half
    fig = _new_figure(12, 7)
    axes = fig.subplots(3, 1, height_ratios=[1, 1, 1.4])
    vmax = _symmetric_limit(track)
    colors = np.where(track >= 0, "#b2182b", "#2166ac")
    axes[0].bar(offsets, track, width=1.0, color=colors)
    axes[0].set_xlim(offsets[0] - 0.5, offsets[-1] + 0.5)
    axes[0].set_ylim(-vmax * 1.05, vmax * 1.05)
    axes[0].set_ylabel("attribution")
    axes[0].set_title("DNA window of the target site (bp offset from the C)", fontsize=9)
    z = min(zoom, half)
    sel = slice(half - z, half + z + 1)
    axes[1].bar(offsets[sel], track[sel], width=0.9, color=colors[sel])
    zmax = _symmetric_limit(track[sel])
    axes[1].set_ylim(-zmax * 1.3, zmax * 1.3)
    for off, code, value in zip(offsets[sel], bases[sel], track[sel]):
        letter = NUCLEOTIDE_LETTERS[int(code)]
        y = value + (0.08 * zmax if value >= 0 else -0.08 * zmax)
        axes[1].text(
            off,
            y,
            letter,
            ha="center",
            va="bottom" if value >= 0 else "top",
            fontsize=7,
            fontweight="bold" if off in (0, 1) else "normal",
        )
    axes[1].set_xlim(-z - 0.5, z + 0.5)
    axes[1].set_ylabel("attribution")
    axes[1].set_title(f"zoom: +-{z} bp (target CpG at 0, 1)", fontsize=9)
    rows = expl.dna_attribution
    site_offsets = np.arange(rows.shape[0]) - expl.target_index
    rmax = _symmetric_limit(rows)
    image = axes[2].imshow(
        rows,
        cmap="RdBu_r",
        vmin=-rmax,
        vmax=rmax,
        aspect="auto",
        interpolation="nearest",
        extent=(offsets[0] - 0.5, offsets[-1] + 0.5, site_offsets[-1] + 0.5, site_offsets[0] - 0.5),
    )
    axes[2].set_xlabel("bp offset from each site's C")
    axes[2].set_ylabel("site offset")
    axes[2].yaxis.set_major_locator(MaxNLocator(integer=True))
    axes[2].set_title("per-base attribution of every site's DNA window", fontsize=9)
    fig.colorbar(image, ax=axes[2], shrink=0.8, pad=0.01)
    fig.suptitle(_title(expl), fontsize=9)
    _save(fig, path)
    return fig


def plot_attention(expl: SiteExplanation, path: str | os.PathLike[str] | None = None) -> Any:
    """Per layer: attention of the target (site, cell) along the site window (heads x offsets) and
    across cells (heads x cells)."""
    from matplotlib.ticker import MaxNLocator

    panels = [
        (name, values)
        for name, values in (("site", expl.site_attention), ("cell", expl.cell_attention))
        if values is not None
    ]
    if not panels:
        raise UsageError("this explanation has no attention maps (the model has no attention)")
    n_layers = panels[0][1].shape[0]
    fig = _new_figure(5.5 * len(panels), 1.2 + 1.6 * n_layers)
    axes = np.asarray(fig.subplots(n_layers, len(panels), squeeze=False))
    for col, (name, values) in enumerate(panels):
        target = values[:, :, expl.target_cell, :]  # [N, H, S] or [N, H, C]
        finite = target[np.isfinite(target)]
        vmax = float(finite.max()) if finite.size and finite.max() > 0 else 1.0
        image = None
        for layer in range(n_layers):
            ax = axes[layer, col]
            weights = target[layer]
            style = {"cmap": "viridis", "vmin": 0, "vmax": vmax, "aspect": "auto"}
            if name == "site":
                offs = expl.site_offsets
                assert offs is not None
                extent = (offs[0] - 0.5, offs[-1] + 0.5, weights.shape[0] - 0.5, -0.5)
                image = ax.imshow(weights, interpolation="nearest", extent=extent, **style)
                ax.xaxis.set_major_locator(MaxNLocator(integer=True))
                ax.set_xlabel("site offset" if layer == n_layers - 1 else "")
                ax.set_title(f"layer {layer + 1}: along the site window", fontsize=8)
            else:
                image = ax.imshow(weights, interpolation="nearest", **style)
                _cell_ticks(ax, expl.cells, expl.target_cell, axis="x")
                ax.set_title(f"layer {layer + 1}: across cells", fontsize=8)
            ax.set_ylabel("head")
            ax.set_yticks(range(weights.shape[0]), [str(h + 1) for h in range(weights.shape[0])])
        fig.colorbar(image, ax=list(axes[:, col]), shrink=0.6, pad=0.01, label="weight")
    fig.suptitle(
        f"attention of {expl.chrom}:{expl.query.position}, cell {expl.cells[expl.target_cell]}",
        fontsize=9,
    )
    _save(fig, path)
    return fig
