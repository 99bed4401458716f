"""Binary imputation metrics, overall, per cell and per genomic context.

Metrics (torchmetrics ``task="binary"`` functional forms where it has them): AUROC, AUPRC (average
precision), accuracy, F1 and MCC at threshold 0.5, Brier score (mean squared error of the
probability) and expected calibration error (15 equal-width bins, L1). A group with a single class
has AUROC/AUPRC/MCC = NaN (undefined) rather than a misleading number.

Contexts:

* ``cpg_density``: CpGs within +-250 bp of the site (the site included). With a FASTA this is the true
  CpG count of the reference; without one, the count of store sites (a proxy: only CpGs observed in
  at least one cell are stored).
* ``tss_distance``: distance to the nearest TSS of a BED file on the same chromosome (chromosome
  names matched with or without a ``chr`` prefix; a BED naming none of the store's chromosomes is an
  error).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping

import numpy as np
import pandas as pd
import torch
from torchmetrics.functional.classification import (
    binary_accuracy,
    binary_auroc,
    binary_average_precision,
    binary_calibration_error,
    binary_f1_score,
    binary_matthews_corrcoef,
)

from cpgformer.errors import InputError

log = logging.getLogger(__name__)

METRIC_NAMES = ["auroc", "auprc", "accuracy", "f1", "mcc", "brier", "ece"]
METRIC_COLUMNS = ["n", *METRIC_NAMES]
ECE_BINS = 15
DENSITY_HALF_WINDOW = 250
DENSITY_EDGES = (2, 5, 10, 20, 40)
"""Upper edges of the CpG-count bins: 1-2, 3-5, 6-10, 11-20, 21-40, >40 CpGs per 501 bp."""
TSS_EDGES = (1_000, 5_000, 20_000, 100_000)
"""Upper edges (bp) of the TSS-distance bins: <1 kb, 1-5 kb, 5-20 kb, 20-100 kb, >=100 kb."""


def binary_metrics(probs: np.ndarray, labels: np.ndarray, threshold: float = 0.5) -> dict:
    """All metrics for one set of predictions: ``{"n": ..., "auroc": ..., ...}`` (floats, NaN if
    undefined)."""
    p = torch.as_tensor(np.asarray(probs, dtype=np.float64)).clamp(0.0, 1.0)
    y = torch.as_tensor(np.asarray(labels, dtype=np.int64))
    n = int(y.numel())
    out: dict = {"n": n}
    if n == 0:
        out.update({k: float("nan") for k in METRIC_NAMES})
        return out
    both_classes = bool(y.min() != y.max())
    nan = float("nan")
    out["auroc"] = float(binary_auroc(p, y)) if both_classes else nan
    out["auprc"] = float(binary_average_precision(p, y)) if both_classes else nan
    out["accuracy"] = float(binary_accuracy(p, y, threshold=threshold))
    out["f1"] = float(binary_f1_score(p, y, threshold=threshold))
    out["mcc"] = float(binary_matthews_corrcoef(p, y, threshold=threshold)) if both_classes else nan
    out["brier"] = float(torch.mean((p - y.to(p.dtype)) ** 2))
    out["ece"] = float(binary_calibration_error(p.float(), y, n_bins=ECE_BINS, norm="l1"))
    return out


def grouped_metrics(
    probs: np.ndarray, labels: np.ndarray, groups: np.ndarray, group_name: str
) -> pd.DataFrame:
    """One row of :func:`binary_metrics` per distinct value of ``groups`` (sorted)."""
    groups = np.asarray(groups)
    rows = []
    for value in pd.unique(groups):
        sel = groups == value
        rows.append({group_name: value, **binary_metrics(probs[sel], labels[sel])})
    frame = pd.DataFrame(rows, columns=[group_name, *METRIC_COLUMNS])
    return frame.sort_values(group_name, kind="stable").reset_index(drop=True)


def bin_labels(values: np.ndarray, edges: tuple[int, ...], unit: str = "") -> np.ndarray:
    """Label of each value's bin: ``(-inf, e0]``, ``(e0, e1]``, ... as readable strings, with the bin
    index as a sortable prefix (``"0:1-2"``); NaN values get ``"na"``."""
    values = np.asarray(values, dtype=np.float64)
    names = []
    lo = None
    for k, e in enumerate(edges):
        names.append(f"{k}:{'<=' if lo is None else f'{lo + 1}-'}{e}{unit}")
        lo = e
    names.append(f"{len(edges)}:>{edges[-1]}{unit}")
    idx = np.searchsorted(np.asarray(edges, dtype=np.float64), values, side="left")
    out = np.asarray(names, dtype=object)[np.minimum(idx, len(edges))]
    out[np.isnan(values)] = "na"
    return out


def distance_bin_labels(distances: np.ndarray) -> np.ndarray:
    """TSS distance bins: ``0:<1kb``, ``1:1-5kb``, ``2:5-20kb``, ``3:20-100kb``, ``4:>=100kb``, ``na``."""
    d = np.asarray(distances, dtype=np.float64)
    names = np.asarray(["0:<1kb", "1:1-5kb", "2:5-20kb", "3:20-100kb", "4:>=100kb"], dtype=object)
    idx = np.searchsorted(np.asarray(TSS_EDGES, dtype=np.float64), d, side="right")
    out = names[np.minimum(idx, len(TSS_EDGES))]
    out[np.isnan(d)] = "na"
    return out


def window_counts(
    sites: np.ndarray, query: np.ndarray, half_window: int = DENSITY_HALF_WINDOW
) -> np.ndarray:
    """Number of ``sites`` (sorted) within ``[q - half_window, q + half_window]`` of each query."""
    lo = np.searchsorted(sites, query - half_window, side="left")
    hi = np.searchsorted(sites, query + half_window, side="right")
    return (hi - lo).astype(np.int64)


def cpg_positions(sequence: np.ndarray) -> np.ndarray:
    """0-based positions of every ``CG`` dinucleotide in a nucleotide-code array."""
    from cpgformer.codes import CODE_C, CODE_G

    seq = np.asarray(sequence)
    return np.flatnonzero((seq[:-1] == CODE_C) & (seq[1:] == CODE_G)).astype(np.int64)


def cpg_density(
    positions: np.ndarray, query_pos: np.ndarray, sequence: np.ndarray | None = None
) -> np.ndarray:
    """CpG count within +-250 bp of each query position (true count with a sequence, else store
    sites)."""
    sites = cpg_positions(sequence) if sequence is not None else np.asarray(positions)
    return window_counts(sites, np.asarray(query_pos, dtype=np.int64))


def _strip_chr(name: str) -> str:
    return name[3:] if name.lower().startswith("chr") else name


def read_tss_bed(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """TSS positions per chromosome from a BED file (sorted int64 arrays).

    One TSS per line: the start of 1-bp (or zero-length) intervals; for longer intervals the 5' end
    (``end - 1`` on the ``-`` strand, column 6, else ``start``). Parsed by
    :func:`cpgformer.io.writers.read_bed_regions` (``track``/``browser``/``#`` lines skipped).
    """
    from cpgformer.io.writers import read_bed_regions

    bed = read_bed_regions(path)
    if bed.empty:
        raise InputError(path, None, "no TSS records")
    start, end = bed["start"].to_numpy(), bed["end"].to_numpy()
    minus = bed["strand"].to_numpy() == "-"
    tss = np.where((end - start > 1) & minus, end - 1, start)
    return {
        str(chrom): np.unique(tss[idx]).astype(np.int64)
        for chrom, idx in bed.groupby("chrom", sort=False).indices.items()
    }


def match_tss_chromosomes(
    tss: Mapping[str, np.ndarray], store_chroms: list[str], path: str | os.PathLike[str]
) -> dict[str, np.ndarray]:
    """TSS arrays keyed by the store's chromosome names (exact name, else with/without ``chr``).

    Raises :class:`InputError` when no chromosome matches (a naming or genome-build mismatch).
    """
    by_stripped = {_strip_chr(c): v for c, v in tss.items()}
    out = {}
    for name in store_chroms:
        if name in tss:
            out[name] = tss[name]
        elif _strip_chr(name) in by_stripped:
            out[name] = by_stripped[_strip_chr(name)]
    if not out:
        bed_names = ", ".join(sorted(tss)[:5])
        raise InputError(
            path,
            None,
            f"no chromosome of the store ({', '.join(store_chroms[:5])}) appears in the TSS BED "
            f"({bed_names}, ...); check the naming and genome build",
        )
    missing = [c for c in store_chroms if c not in out]
    if missing:
        log.warning("TSS BED has no records for %s: their distances are 'na'", ", ".join(missing))
    return out


def tss_distance(query_pos: np.ndarray, tss: np.ndarray | None) -> np.ndarray:
    """Distance (bp, float64) from each query position to the nearest TSS; NaN without TSSs."""
    q = np.asarray(query_pos, dtype=np.int64)
    if tss is None or tss.size == 0:
        return np.full(q.shape, np.nan)
    k = np.searchsorted(tss, q)
    left = tss[np.clip(k - 1, 0, tss.size - 1)]
    right = tss[np.clip(k, 0, tss.size - 1)]
    return np.minimum(np.abs(q - left), np.abs(right - q)).astype(np.float64)
