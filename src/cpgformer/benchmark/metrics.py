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


# ---- paired bootstrap ----------------------------------------------------------------------------
BOOTSTRAP_RESAMPLES = 1000
BOOTSTRAP_METRICS = ("auroc", "auprc")


def _tie_groups(scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(order sorting ``scores`` ascending, start index of each run of equal sorted scores)."""
    order = np.argsort(scores, kind="stable")
    s = scores[order]
    starts = np.flatnonzero(np.r_[True, s[1:] != s[:-1]])
    return order, starts


def weighted_auroc_auprc(
    scores: np.ndarray, labels: np.ndarray, weights: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """AUROC and average precision of ``scores`` under each row of ``weights`` [B, N] (entry
    multiplicities, e.g. bootstrap counts); ties are grouped as torchmetrics does. NaN where a
    row's weighted labels hold one class.

    With all weights 1 this is the ordinary AUROC (ties count 1/2) and average precision
    (sum over thresholds of recall increase x precision).
    """
    scores = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels).astype(bool)
    w = np.atleast_2d(np.asarray(weights, dtype=np.float64))
    order, starts = _tie_groups(scores)
    wp = w[:, order] * y[order]
    wn = w[:, order] * ~y[order]
    pos_g = np.add.reduceat(wp, starts, axis=1)  # [B, G] ascending score groups
    neg_g = np.add.reduceat(wn, starts, axis=1)
    n_pos = pos_g.sum(1)
    n_neg = neg_g.sum(1)
    below = np.cumsum(neg_g, axis=1) - neg_g
    with np.errstate(invalid="ignore", divide="ignore"):
        auroc = (pos_g * (below + 0.5 * neg_g)).sum(1) / (n_pos * n_neg)
        # average precision: thresholds from the highest score down
        tp = np.cumsum(pos_g[:, ::-1], axis=1)
        fp = np.cumsum(neg_g[:, ::-1], axis=1)
        precision = np.where(tp + fp > 0, tp / np.maximum(tp + fp, 1e-300), 0.0)
        auprc = (pos_g[:, ::-1] * precision).sum(1) / n_pos
    undefined = (n_pos <= 0) | (n_neg <= 0)
    auroc[undefined] = np.nan
    auprc[undefined] = np.nan
    return auroc, auprc


def paired_bootstrap(
    labels: np.ndarray,
    reference: np.ndarray,
    others: Mapping[str, np.ndarray],
    *,
    n_boot: int = BOOTSTRAP_RESAMPLES,
    seed: int = 0,
    level: float = 0.95,
    chunk: int = 200,
) -> list[dict]:
    """Paired bootstrap of ``reference`` minus each of ``others`` for AUROC and AUPRC.

    Entries are resampled with replacement ``n_boot`` times; every model is scored on the same
    resample, so the interval is that of the *difference* (the models' errors are correlated).
    Returns one dict per (other model, metric): ``n``, ``reference``, ``other``, ``difference`` (on
    the full sample), ``ci_low``, ``ci_high`` (percentile interval at ``level``; NaN when undefined,
    e.g. one class), ``n_boot``.
    """
    y = np.asarray(labels).astype(np.int64)
    n = int(y.shape[0])
    names = list(others)
    out = []
    ones = np.ones((1, n))
    full = {"__ref__": weighted_auroc_auprc(reference, y, ones)}
    for name in names:
        full[name] = weighted_auroc_auprc(others[name], y, ones)
    diffs = {(name, m): [] for name in names for m in BOOTSTRAP_METRICS}
    if n > 0 and 0 < y.sum() < n:
        rng = np.random.default_rng([int(seed), 0xB007])
        done = 0
        while done < n_boot:
            b = min(chunk, n_boot - done)
            idx = rng.integers(0, n, size=(b, n))
            counts = np.bincount(
                (idx + (np.arange(b) * n)[:, None]).ravel(), minlength=b * n
            ).reshape(b, n)
            ref = weighted_auroc_auprc(reference, y, counts)
            for name in names:
                other = weighted_auroc_auprc(others[name], y, counts)
                for k, m in enumerate(BOOTSTRAP_METRICS):
                    diffs[(name, m)].append(ref[k] - other[k])
            done += b
    alpha = (1.0 - level) / 2.0
    for name in names:
        for k, m in enumerate(BOOTSTRAP_METRICS):
            ref_value = float(full["__ref__"][k][0])
            other_value = float(full[name][k][0])
            d = np.concatenate(diffs[(name, m)]) if diffs[(name, m)] else np.zeros(0)
            d = d[np.isfinite(d)]
            if d.size >= max(10, n_boot // 2):
                lo, hi = np.quantile(d, [alpha, 1.0 - alpha])
            else:
                lo = hi = float("nan")
            out.append(
                {
                    "model": name,
                    "metric": m,
                    "n": n,
                    "reference": ref_value,
                    "other": other_value,
                    "difference": ref_value - other_value,
                    "ci_low": float(lo),
                    "ci_high": float(hi),
                    "n_boot": int(d.size),
                }
            )
    return out
