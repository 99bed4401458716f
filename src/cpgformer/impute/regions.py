"""Imputing straight to regions: cells x regions sums, never the per-CpG matrix.

``cpgformer impute --regions BED`` (or ``--bin-size N``) runs the imputation chunk by chunk as
usual, but instead of a chunk's probabilities it writes that chunk's contribution to the region
sums (:func:`chunk_sums`: only the regions the chunk overlaps, a few values per region and cell).
When every chunk is there the main process adds the contributions up in output order
(:class:`RegionTotals`) and writes the cells x regions AnnData. Memory and disk therefore grow with
cells x regions, not with the number of CpGs, and the run resumes per chunk and shares chunks
between ranks like a normal imputation.

The table is the one ``cpgformer export --to regions`` builds from an imputed store with the same
chunk size, value for value: a CpG belongs to a region when its start lies in
``[region start, region end)``; layers ``mc``/``cov`` (summed reads of the observed calls),
``frac`` = mc/cov, ``meth_sites``/``total_sites``, ``imp_mean``/``imp_var`` (mean and population
variance over the region's CpGs of the stored probabilities, observed calls kept for
``values="imputed"``); ``X`` = ``imp_mean``; ``var`` has ``n_cpg``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cpgformer.errors import UsageError
from cpgformer.impute.probabilities import dequantize

log = logging.getLogger(__name__)

REGION_VALUES = ("imputed", "denoised")
REGION_RULE = "CpG start in [start, end)"
COUNT_FIELDS = ("mc", "cov", "meth_sites", "total_sites")


def _match_chrom(name: str, available: set[str]) -> str | None:
    """A BED contig name as the store spells it (``chr`` prefix optional), or None."""
    if name in available:
        return name
    alt = name[3:] if name.startswith("chr") else "chr" + name
    return alt if alt in available else None


def region_rows(positions: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> tuple[Any, Any]:
    """Row range ``[i0, i1)`` of the sites whose position lies in each ``[start, end)``."""
    pos = np.asarray(positions, dtype=np.int64)
    return np.searchsorted(pos, starts, "left"), np.searchsorted(pos, ends, "left")


def chunk_sums(
    values: np.ndarray,
    a: int,
    b: int,
    target: np.ndarray,
    i0: np.ndarray,
    i1: np.ndarray,
    calls: tuple[np.ndarray, ...] | None,
) -> dict[str, np.ndarray]:
    """Contribution of rows ``[a, b)`` to the sums of the regions ``target`` (row ranges ``i0``,
    ``i1``, which overlap ``[a, b)``).

    ``values`` float64 ``[b - a, C]``; ``calls`` = (indptr ``[b - a + 1]`` from 0, cell, mc, cov,
    label) of the observed calls of those rows. Returns ``target`` and ``sum_p``, ``sum_p2``
    (float64 ``[len(target), C]``) and the integer :data:`COUNT_FIELDS`.
    """
    n_cells = values.shape[1]
    lo, hi = np.clip(i0, a, b) - a, np.clip(i1, a, b) - a
    out: dict[str, np.ndarray] = {"target": np.asarray(target, dtype=np.int64)}
    for name, v in (("sum_p", values), ("sum_p2", values * values)):
        cs = np.zeros((b - a + 1, n_cells))
        np.cumsum(v, axis=0, out=cs[1:])
        out[name] = cs[hi] - cs[lo]
    for name in COUNT_FIELDS:
        out[name] = np.zeros((len(target), n_cells), dtype=np.int64)
    if calls is not None and len(target):
        indptr, cell, mc, cov, label = calls
        k0, k1 = indptr[lo], indptr[hi]
        lengths = k1 - k0
        total = int(lengths.sum())
        if total:
            region_of = np.repeat(np.arange(lengths.size), lengths)
            nnz = np.repeat(k0 - np.cumsum(lengths) + lengths, lengths) + np.arange(total)
            key = region_of * n_cells + np.asarray(cell[nnz], dtype=np.int64)
            lab = np.asarray(label[nnz])
            weights = {
                "mc": np.asarray(mc[nnz], dtype=np.float64),
                "cov": np.asarray(cov[nnz], dtype=np.float64),
                "meth_sites": (lab == 1).astype(np.float64),
                "total_sites": (lab >= 0).astype(np.float64),
            }
            size = lengths.size * n_cells
            for name, w in weights.items():
                summed = np.bincount(key, weights=w, minlength=size)
                out[name] = np.rint(summed).astype(np.int64).reshape(-1, n_cells)
    return out


class RegionTotals:
    """Cells x regions sums, added up from :func:`chunk_sums` parts (in a fixed order, so the
    floating-point sums do not depend on which process computed which part)."""

    def __init__(self, n_regions: int, n_cells: int) -> None:
        self.n_cells = n_cells
        self.sum_p = np.zeros((n_regions, n_cells))
        self.sum_p2 = np.zeros((n_regions, n_cells))
        self.counts = {k: np.zeros((n_regions, n_cells), dtype=np.int64) for k in COUNT_FIELDS}

    def add(self, part: dict[str, np.ndarray]) -> None:
        t = part["target"]
        self.sum_p[t] += part["sum_p"]
        self.sum_p2[t] += part["sum_p2"]
        for k in COUNT_FIELDS:
            self.counts[k][t] += part[k]

    def layers(self, n_cpg: np.ndarray) -> dict[str, Any]:
        """cells x regions layers (as ``cpgformer export --to regions``)."""
        import scipy.sparse as sp

        mc, cov = self.counts["mc"], self.counts["cov"]
        with np.errstate(divide="ignore", invalid="ignore"):
            denom = np.where(n_cpg > 0, n_cpg, np.nan)[:, None]
            imp_mean = self.sum_p / denom
            imp_var = np.maximum(self.sum_p2 / denom - imp_mean**2, 0.0)
            frac = np.where(cov > 0, mc / np.maximum(cov, 1), np.nan)
        return {
            "mc": sp.csr_matrix(mc.T.astype(np.int32)),
            "cov": sp.csr_matrix(cov.T.astype(np.int32)),
            "frac": frac.T.astype(np.float32),
            "meth_sites": self.counts["meth_sites"].T.astype(np.int32),
            "total_sites": self.counts["total_sites"].T.astype(np.int32),
            "imp_mean": imp_mean.T.astype(np.float32),
            "imp_var": imp_var.T.astype(np.float32),
        }


class _Positions:
    """The ``positions(chrom)`` view of the sites being imputed (what :func:`fixed_bins` reads)."""

    def __init__(self, sources: Sequence[Any]) -> None:
        self._by_chrom = {s.chrom: s for s in sources}

    def positions(self, chrom: str) -> np.ndarray:
        return np.asarray(self._by_chrom[chrom].positions)


class RegionOutput:
    """The region-sum output of an imputation run (handed to the chunk loop of ``impute``).

    Exactly one of ``regions`` (a table as :func:`cpgformer.io.writers.read_bed_regions` returns)
    and ``bin_size``.
    """

    def __init__(
        self,
        regions: pd.DataFrame | None = None,
        bin_size: int | None = None,
        values: str = "imputed",
        compression: str = "gzip",
    ) -> None:
        if (regions is None) == (bin_size is None):
            raise UsageError("give exactly one of --regions BED and --bin-size")
        if bin_size is not None and bin_size < 1:
            raise UsageError(f"--bin-size must be >= 1, got {bin_size}")
        if values not in REGION_VALUES:
            raise UsageError(f"--region-values must be one of {', '.join(REGION_VALUES)}")
        self.source_table = regions
        self.bin_size = bin_size
        self.values = values
        self.compression = compression
        self.table: pd.DataFrame | None = None
        self.chroms: list[str] = []
        self._ranges: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
        self._calls: tuple[int, Any] | None = None
        self.continuous = False
        self.source_path: Path | None = None  # the BED file (an input: never overwritten)

    # ---- planning (every rank, same result)
    def prepare(
        self, ds: Any, sources: Sequence[Any], chroms: Sequence[str], data_mode: str = "binary"
    ) -> None:
        """The regions on the imputed chromosomes and each one's row range."""
        from cpgformer.export import fixed_bins

        self.continuous = data_mode == "continuous"
        self.chroms = list(chroms)
        if self.bin_size is not None:
            table = fixed_bins(_Positions(sources), int(self.bin_size), self.chroms)
            table = table.assign(store_chrom=table["chrom"])
        else:
            regions = self.source_table
            assert regions is not None
            available = set(self.chroms)
            mapped = regions["chrom"].astype(str).map(lambda n: _match_chrom(n, available))
            dropped = int(mapped.isna().sum())
            if dropped:
                missing = sorted(set(regions["chrom"][mapped.isna()].astype(str)))
                log.warning(
                    "%d region(s) on contigs not imputed were left out (%s)",
                    dropped,
                    ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else ""),
                )
            table = regions.assign(store_chrom=mapped)[mapped.notna()].reset_index(drop=True)
        self.table = table
        self.n_cpg = np.zeros(len(table), dtype=np.int64)
        chrom_of = table["store_chrom"].to_numpy()
        for k, src in enumerate(sources):
            idx = np.flatnonzero(chrom_of == src.chrom)
            i0, i1 = region_rows(
                src.positions,
                table["start"].to_numpy(np.int64)[idx],
                table["end"].to_numpy(np.int64)[idx],
            )
            self.n_cpg[idx] = i1 - i0
            self._ranges[k] = (idx, i0, i1)

    def plan_entries(self) -> dict:
        """What a resumed run must share with the interrupted one."""
        assert self.table is not None
        digest = hashlib.sha256()
        for col in ("store_chrom", "start", "end", "name"):
            digest.update(self.table[col].astype(str).str.cat(sep="\n").encode())
        return {
            "output": "regions",
            "regions_sha256": digest.hexdigest(),
            "n_regions": len(self.table),
            "region_values": self.values,
        }

    # ---- chunks (any rank)
    @staticmethod
    def chunk_name(i: int) -> str:
        return f"r-{i:06d}.npz"

    def _chunk_calls(self, k: int, src: Any, a: int, b: int) -> tuple[np.ndarray, ...]:
        if self._calls is None or self._calls[0] != k:
            self._calls = (k, src.csr_arrays())
        arrays = self._calls[1]
        indptr = np.asarray(arrays["indptr"][a : b + 1], dtype=np.int64)
        s, e = int(indptr[0]), int(indptr[-1])
        return (
            indptr - s,
            *(np.asarray(arrays[n][s:e]) for n in ("cell", "mc", "cov", "label")),
        )

    def write_chunk(self, path: Path, k: int, src: Any, a: int, b: int, stored: np.ndarray) -> None:
        """Region sums of rows ``[a, b)`` of chromosome ``k`` from their stored probabilities."""
        from cpgformer.utils.atomic import atomic_file

        idx, i0, i1 = self._ranges[k]
        hit = (i0 < b) & (i1 > a)
        values = dequantize(np.asarray(stored)).astype(np.float64)
        if self.values == "imputed":  # observed calls kept (labels, or betas for continuous)
            obs = src.betas(a, b) if self.continuous else src.states(a, b)
            seen = obs >= 0
            values[seen] = obs[seen]
        calls = self._chunk_calls(k, src, a, b) if hit.any() else None
        part = chunk_sums(values, a, b, idx[hit], i0[hit], i1[hit], calls)
        with atomic_file(path) as fh:
            np.savez(fh, **part)

    # ---- finishing (main rank)
    def finish(self, work: Path, out: Path, plan: dict, ds: Any, model_config: Any) -> Path:
        """Add up every chunk's sums, write the AnnData to ``out`` and remove ``work``."""
        import anndata as ad

        from cpgformer import __version__
        from cpgformer.export import REGION_LAYER_MEANINGS, chrom_names, region_names
        from cpgformer.utils.atomic import atomic_path, ensure_free_space

        assert self.table is not None
        totals = RegionTotals(len(self.table), ds.n_cells)
        for k, c in enumerate(plan["chromosomes"]):
            for i in range(c["n_chunks"]):
                with np.load(work / "chroms" / str(k) / self.chunk_name(i)) as part:
                    totals.add({name: part[name] for name in part.files})
        layers = totals.layers(self.n_cpg)
        written = chrom_names(self.chroms, "as-is")
        out_chrom = self.table["store_chrom"].astype(str).map(written)
        var = pd.DataFrame(
            {
                "chrom": pd.Categorical(out_chrom, categories=[written[c] for c in self.chroms]),
                "start": self.table["start"].to_numpy(np.int64),
                "end": self.table["end"].to_numpy(np.int64),
                "name": self.table["name"].astype(str).to_numpy(),
                "n_cpg": self.n_cpg,
            }
        )
        var.index = pd.Index(
            region_names(out_chrom, var["start"], var["end"]).to_numpy(), name="region"
        )
        obs = ds.cell_table.copy()
        obs.index = pd.Index(obs.pop("name").astype(str), name="cell")
        for col in obs.columns:
            if obs[col].dtype == object:
                obs[col] = obs[col].astype(str)
        info = {
            "package_version": __version__,
            "checkpoint_id": str(plan.get("checkpoint_id", "")),
            "store_fingerprint": str(plan.get("store_fingerprint", "")),
            "temperature": float(plan.get("temperature", 1.0)),
            "data_mode": str(plan.get("data_mode", "binary")),
            "keep_observed": bool(plan.get("keep_observed", False)),
            "stored_dtype": str(plan.get("dtype", "")),
            "sites": str(plan.get("sites", "store")),
            "model_config_json": json.dumps(model_config or {}, sort_keys=True, default=str),
            "impute_plan_json": json.dumps(
                {k: v for k, v in plan.items() if k != "cells"}, sort_keys=True, default=str
            ),
            "region_values": self.values,
            "region_rule": REGION_RULE,
            "layers": dict(REGION_LAYER_MEANINGS),
            "chrom_style": "as-is",
        }
        adata = ad.AnnData(
            X=layers["imp_mean"].copy(), obs=obs, var=var, layers=layers, uns={"cpgformer": info}
        )
        if not adata.var_names.is_unique:
            adata.var_names_make_unique()
        size = sum(int(getattr(getattr(m, "data", m), "nbytes", 0)) for m in layers.values())
        ensure_free_space(out, 2 * size)
        with atomic_path(out) as tmp:
            adata.write_h5ad(
                tmp, compression=None if self.compression == "none" else self.compression
            )
        shutil.rmtree(work)
        log.info(
            "imputed %d cells into %d regions (%d CpGs) in %s",
            ds.n_cells,
            len(self.table),
            int(sum(c["n_sites"] for c in plan["chromosomes"])),
            out,
        )
        return out


def impute_regions(
    store: Any,
    model: Any,
    out: str | os.PathLike[str],
    options: Any = None,
    *,
    regions: str | os.PathLike[str] | None = None,
    bin_size: int | None = None,
    values: str = "imputed",
    device: Any = None,
    output: RegionOutput | None = None,
) -> Path:
    """Impute ``store`` with ``model`` straight into a cells x regions AnnData ``out`` (.h5ad):
    regions from a BED file or fixed bins of ``bin_size`` bp (or an ``output`` made by
    :func:`region_output`). Resumes an interrupted run."""
    from cpgformer.impute.run import ImputeOptions, _impute
    from cpgformer.utils.locks import output_lock
    from cpgformer.utils.outputs import check_output

    opts = options or ImputeOptions()
    if output is None:
        output = region_output(regions, bin_size, values)
    inputs = [getattr(store, "path", store), model if isinstance(model, str | Path) else None]
    inputs += [opts.fasta, output.source_path]
    check_output(out, "h5ad", overwrite=opts.overwrite, inputs=inputs)
    with output_lock(out):
        return _impute(store, model, Path(out), opts, device=device, regions=output)


def region_output(
    regions: str | os.PathLike[str] | None, bin_size: int | None, values: str = "imputed"
) -> RegionOutput:
    """The :class:`RegionOutput` for a BED file or a bin size."""
    from cpgformer.io.writers import read_bed_regions

    if (regions is None) == (bin_size is None):
        raise UsageError("give exactly one of --regions BED and --bin-size")
    table = read_bed_regions(regions) if regions is not None else None
    output = RegionOutput(table, bin_size, values)
    output.source_path = None if regions is None else Path(regions)
    return output
