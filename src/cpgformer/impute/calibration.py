"""Calibration: temperature scaling fitted on seeded masked calls, and its metrics."""

from __future__ import annotations

import hashlib
import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cpgformer.codes import MISSING
from cpgformer.data.masking import DEFAULT_RUN_GAP, MASK_UNITS, read_runs
from cpgformer.errors import UsageError
from cpgformer.impute.dna import chunk_embedding
from cpgformer.impute.probabilities import to_probabilities
from cpgformer.impute.run import ImputeOptions, default_chunk_sites, windows_fn_for
from cpgformer.impute.sites import ChromSource, observed_to_model_input
from cpgformer.impute.tiles import predict_block
from cpgformer.io.store import as_dataset
from cpgformer.io.store import reference as find_reference
from cpgformer.model import IGNORE_FINGERPRINT_HELP, Model, Predictor, as_model
from cpgformer.options import option
from cpgformer.utils.locks import output_lock
from cpgformer.utils.outputs import check_output, remove_leftovers

log = logging.getLogger(__name__)


def fit_temperature(
    logits: np.ndarray, labels: np.ndarray, bounds: tuple[float, float] = (0.05, 20.0)
) -> float:
    """Temperature T minimising the mean binary cross-entropy of ``sigmoid(logits / T)``.

    Fitted on held-out masked entries (labels 0/1). T > 1 softens over-confident predictions.
    """
    from scipy.optimize import minimize_scalar

    z = np.asarray(logits, dtype=np.float64).ravel()
    y = np.asarray(labels, dtype=np.float64).ravel()
    if z.shape != y.shape or z.size == 0:
        raise UsageError(
            f"need equal, non-empty logits and labels to fit a temperature (got {z.size}, {y.size})"
        )

    def nll(log_t: float) -> float:
        return binary_nll(z / math.exp(log_t), y)

    res = minimize_scalar(
        nll,
        bounds=(math.log(bounds[0]), math.log(bounds[1])),
        method="bounded",
        options={"xatol": 1e-5},
    )
    return float(math.exp(res.x))


def binary_nll(logits: np.ndarray, labels: np.ndarray) -> float:
    """Mean binary cross-entropy of logits against 0/1 labels (numerically stable)."""
    z = np.asarray(logits, dtype=np.float64)
    y = np.asarray(labels, dtype=np.float64)
    return float(np.mean(np.maximum(z, 0.0) - z * y + np.log1p(np.exp(-np.abs(z)))))


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, n_bins: int = 15) -> float:
    """ECE with ``n_bins`` equal-width confidence bins on P(methylated) (bin weight = its share).

    ECE = sum_b |B_b|/N * |mean(y in b) - mean(p in b)|; the last bin includes p = 1.
    """
    p = np.asarray(probs, dtype=np.float64).ravel()
    y = np.asarray(labels, dtype=np.float64).ravel()
    if p.size == 0:
        return float("nan")
    idx = np.minimum((p * n_bins).astype(np.int64), n_bins - 1)
    sum_p = np.bincount(idx, weights=p, minlength=n_bins)
    sum_y = np.bincount(idx, weights=y, minlength=n_bins)
    return float(np.sum(np.abs(sum_y - sum_p)) / p.size)


def calibration_report(logits: np.ndarray, labels: np.ndarray, temperature: float) -> dict:
    """ECE and NLL before (T = 1) and after temperature scaling on the same entries."""
    z = np.asarray(logits, dtype=np.float64)
    y = np.asarray(labels)
    return {
        "n": int(z.size),
        "temperature": float(temperature),
        "ece_before": expected_calibration_error(to_probabilities(z, "binary", 1.0), y),
        "ece_after": expected_calibration_error(to_probabilities(z, "binary", temperature), y),
        "nll_before": binary_nll(z, y),
        "nll_after": binary_nll(z / temperature, y),
    }


@dataclass
class HeldOut:
    """Model outputs for held-out entries: ``masked`` entries were hidden from the model (input
    unknown); ``observed`` entries are the other observed calls, predicted with their own label in
    the input (the "denoised" outputs)."""

    masked_logits: np.ndarray
    masked_labels: np.ndarray
    observed_logits: np.ndarray
    observed_labels: np.ndarray
    masked_cells: np.ndarray | None = None  # store column of each masked call
    observed_cells: np.ndarray | None = None


def call_runs(
    indptr: np.ndarray,
    cell: np.ndarray,
    label: np.ndarray,
    positions: np.ndarray,
    run_gap: int = DEFAULT_RUN_GAP,
) -> np.ndarray:
    """Read-sized run id of each stored call of one chromosome (CSR order; -1 where label < 0).

    The calls of one cell are chained while consecutive observed sites are at most ``run_gap`` bp
    apart (:func:`cpgformer.data.masking.read_runs`, the rule of training masks and the benchmark).
    """
    label = np.asarray(label)
    rows = np.repeat(np.arange(indptr.shape[0] - 1), np.diff(indptr))
    valid = np.flatnonzero(label >= 0)
    order = valid[np.argsort(np.asarray(cell)[valid], kind="stable")]  # by (cell, site)
    out = np.full(label.shape[0], -1, dtype=np.int64)
    out[order] = read_runs(rows[order], np.asarray(cell)[order], np.asarray(positions), run_gap)
    return out


def _mask_for(
    chrom: str, label: np.ndarray, fraction: float, seed: int, runs: np.ndarray | None = None
) -> np.ndarray:
    """Seeded choice of observed calls (label >= 0) to hide; independent of chunking.

    ``runs`` (:func:`call_runs`): hide whole read-sized runs, each with probability ``fraction``;
    None: each call alone.
    """
    key = int.from_bytes(hashlib.sha256(chrom.encode()).digest()[:8], "little")
    rng = np.random.default_rng([seed, key])
    valid = np.asarray(label) >= 0
    if runs is None:
        return (rng.random(label.shape[0]) < fraction) & valid
    u = rng.random(int(runs.max(initial=-1)) + 1)  # one draw per run
    hide = np.zeros(label.shape[0], dtype=bool)
    hide[valid] = u[runs[valid]] < fraction
    return hide


def masked_holdout(
    store: Any,
    model: Model | str | os.PathLike[str],
    chroms: Sequence[str],
    *,
    fraction: float = 0.1,
    seed: int = 0,
    unit: str = "call",
    tile_sites: int = 1024,
    batch_size: int = 8,
    chunk_sites: int | None = None,
    fasta: str | None = None,
    max_observed: int = 2_000_000,
    ignore_fingerprint: bool = False,
) -> HeldOut:
    """Hide a seeded ``fraction`` of the observed calls of ``chroms`` and predict every call.

    ``unit``: ``call`` hides single calls; ``run`` whole read-sized runs (as at imputation, where a
    missing call has no read of its cell nearby, and as the benchmark hides calls).

    Returns the logits of the hidden calls with their labels (for fitting / scoring a temperature),
    and of up to ``max_observed`` of the remaining observed calls (their denoised predictions).
    """
    ds = as_dataset(store)
    source = as_model(model)
    predictor = source.predictor()
    if predictor.data_mode != "binary":
        raise UsageError("calibration by temperature scaling applies to binary models only")
    if not 0 < fraction < 1:
        raise UsageError(f"mask fraction must be in (0, 1), got {fraction}")
    if unit not in MASK_UNITS:
        raise UsageError(f"mask unit must be one of {', '.join(MASK_UNITS)}, got {unit!r}")
    cell_ids = source.check(ds, ignore_fingerprint)
    reference = None
    if predictor.dna_window:
        reference = find_reference(fasta, ds, "the model uses DNA windows")
    block = _Block(predictor, cell_ids, tile_sites, batch_size)
    chunk = int(chunk_sites or default_chunk_sites(ds.n_cells))
    out: dict[str, list[np.ndarray]] = {k: [] for k in ("ml", "my", "mc", "ol", "oy", "oc")}
    for chrom in chroms:
        if chrom not in ds.chromosomes:
            raise UsageError(f"{ds.path}: chromosome {chrom!r} is not in the store")
        src = ChromSource(ds, chrom)
        indptr, cell, _, _, label = (np.asarray(a) for a in ds.csr(chrom))
        runs = None
        if unit == "run":
            runs = call_runs(indptr, cell, label, np.asarray(ds.positions(chrom)))
        hide = _mask_for(chrom, label, fraction, seed, runs)
        windows_fn = windows_fn_for(reference, src, predictor.dna_window) if reference else None
        for a in range(0, src.n_sites, chunk):
            b = min(src.n_sites, a + chunk)
            block.predict(src, a, b, indptr, cell, label, hide, windows_fn, out)

    def cat(key: str, dtype: type) -> np.ndarray:
        return np.concatenate(out[key]).astype(dtype) if out[key] else np.zeros(0, dtype)

    ol, oy, oc = cat("ol", np.float32), cat("oy", np.int8), cat("oc", np.int32)
    if ol.size > max_observed:
        keep = np.sort(np.random.default_rng(seed).choice(ol.size, max_observed, replace=False))
        ol, oy, oc = ol[keep], oy[keep], oc[keep]
    return HeldOut(cat("ml", np.float32), cat("my", np.int8), ol, oy, cat("mc", np.int32), oc)


@dataclass
class _Block:
    """Predicts the calls of rows ``[a, b)`` with the chosen ones hidden (m rows of context)."""

    predictor: Predictor
    cell_ids: np.ndarray
    tile_sites: int
    batch_size: int

    def predict(
        self,
        src: ChromSource,
        a: int,
        b: int,
        indptr: np.ndarray,
        cell: np.ndarray,
        label: np.ndarray,
        hide: np.ndarray,
        windows_fn: Any,
        out: dict[str, list[np.ndarray]],
    ) -> None:
        """Append the logits, labels and cells of the hidden (``m*``) and other observed (``o*``)
        calls of rows ``[a, b)`` to ``out``."""
        m = self.predictor.margin
        lo, hi = max(0, a - m), min(src.n_sites, b + m)
        states = src.states(lo, hi)
        k0, k1 = int(indptr[lo]), int(indptr[hi])
        nnz_rows = np.repeat(np.arange(hi - lo), np.diff(indptr[lo : hi + 1]))
        hidden = hide[k0:k1]
        states[nnz_rows[hidden], cell[k0:k1][hidden]] = MISSING
        embedding = None
        if windows_fn is not None:
            embedding = chunk_embedding(self.predictor, src, lo, hi, windows_fn, ImputeOptions())
        raw = predict_block(
            self.predictor,
            observed_to_model_input(states, False),
            np.asarray(src.positions[lo:hi], dtype=np.int64),
            a - lo,
            b - lo,
            cell_ids=self.cell_ids,
            dna_embedding=embedding,
            tile_sites=self.tile_sites,
            batch_size=self.batch_size,
        )
        inside = (nnz_rows >= a - lo) & (nnz_rows < b - lo)
        r = nnz_rows - (a - lo)
        c = cell[k0:k1]
        lab = label[k0:k1]
        for prefix, sel in (("m", inside & hidden), ("o", inside & ~hidden & (lab >= 0))):
            out[prefix + "l"].append(raw[r[sel], c[sel]])
            out[prefix + "y"].append(lab[sel])
            out[prefix + "c"].append(c[sel])


@dataclass
class CalibrateOptions:
    """The keyword parameters of :func:`calibrate` (the ``calibrate`` command's flags)."""

    chroms: Sequence[str] | None = option(
        None, "chromosomes to mask", metavar="CHROMS", nargs="+", shown="the run's validation ones"
    )
    fraction: float = option(0.1, "share of observed calls hidden", flag="--mask-fraction")
    unit: str = option(
        "call",
        "what is hidden together: call (single calls) or run (whole read-sized runs of a cell's "
        "calls, as missing calls are at imputation)",
        flag="--mask-unit",
        choices=MASK_UNITS,
    )
    seed: int = option(0, "seed of the masked calls")
    tile_sites: int = option(1024, "sites per tile")
    batch_size: int = option(8, "tiles per forward pass")
    fasta: str | None = option(
        None, "reference FASTA", shown="the one the store records", metavar="FASTA"
    )
    ignore_fingerprint: bool = option(False, IGNORE_FINGERPRINT_HELP)
    overwrite: bool = option(False, "replace an existing output")


def calibrate(
    store: Any,
    model: Model | str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    chroms: Sequence[str] | None = None,
    fraction: float = 0.1,
    seed: int = 0,
    unit: str = "call",
    tile_sites: int = 1024,
    batch_size: int = 8,
    fasta: str | None = None,
    ignore_fingerprint: bool = False,
    overwrite: bool = False,
) -> dict:
    """Fit a temperature on seeded masked calls of ``chroms`` and write a calibrated checkpoint.

    ``model``: a checkpoint path or a :class:`~cpgformer.model.Model`. ``chroms`` default to the
    checkpoint's validation chromosomes. The new checkpoint (a plain model file, see
    :meth:`cpgformer.model.Model.save`) carries the same weights, cells, fingerprint and data
    parameters, and the fitted ``temperature``. Returns the report (ECE and NLL before/after on the
    masked calls, ECE of the denoised observed calls before/after).
    """
    out = Path(out)
    model_path = model.path if isinstance(model, Model) else model
    inputs = [getattr(store, "path", store), model_path, fasta]
    check_output(out, "model", overwrite=overwrite, inputs=inputs)
    with output_lock(out):
        check_output(out, "model", overwrite=overwrite, inputs=inputs)
        remove_leftovers(out)
        source = as_model(model)
        ds = as_dataset(store)
        source.check(ds, ignore_fingerprint)
        chroms = list(chroms) if chroms else _validation_chromosomes(ds, source)
        held = masked_holdout(
            ds,
            source,
            chroms,
            fraction=fraction,
            seed=seed,
            unit=unit,
            tile_sites=tile_sites,
            batch_size=batch_size,
            fasta=fasta,
            ignore_fingerprint=ignore_fingerprint,
        )
        report = _fit_report(held, chroms, fraction, seed, source.temperature)
        report["mask_unit"] = unit
        source.save(
            out,
            data={**source.data, "calibration": report},
            temperature=report["temperature"],
        )
        return report


def _validation_chromosomes(ds: Any, model: Model) -> list[str]:
    """The checkpoint's validation chromosomes, as the store names them."""
    wanted = list((model.data or {}).get("val_chromosomes") or [])
    chroms = [c for c in (_store_name(ds, name) for name in wanted) if c is not None]
    if not chroms:
        raise UsageError(
            "the checkpoint names no validation chromosome of this store: pass --chroms"
        )
    return chroms


def _fit_report(
    held: HeldOut, chroms: Sequence[str], fraction: float, seed: int, previous: float
) -> dict:
    """The fitted temperature with ECE and NLL before and after (masked and observed calls)."""
    if held.masked_labels.size < 100:
        raise UsageError(
            f"only {held.masked_labels.size} masked calls on {', '.join(chroms)}: too few to fit a "
            "temperature (use more chromosomes or a larger --mask-fraction)"
        )
    temperature = fit_temperature(held.masked_logits, held.masked_labels)
    report = calibration_report(held.masked_logits, held.masked_labels, temperature)
    report.update(
        {
            "chromosomes": list(chroms),
            "mask_fraction": fraction,
            "seed": seed,
            "previous_temperature": float(previous or 1.0),
            "n_observed": int(held.observed_labels.size),
            "ece_observed_before": expected_calibration_error(
                to_probabilities(held.observed_logits, "binary"), held.observed_labels
            ),
            "ece_observed_after": expected_calibration_error(
                to_probabilities(held.observed_logits, "binary", temperature),
                held.observed_labels,
            ),
        }
    )
    log.info(
        "temperature %.3f fitted on %d masked calls: ECE %.4f -> %.4f",
        temperature,
        report["n"],
        report["ece_before"],
        report["ece_after"],
    )
    return report


def _store_name(ds: Any, name: str) -> str | None:
    if name in ds.chromosomes:
        return name
    alt = name[3:] if name.startswith("chr") else "chr" + name
    return alt if alt in ds.chromosomes else None
