"""Cells x regions tables: per-region sums of CpG-level values streamed in blocks of sites.

:class:`RegionSums` is the reusable part: it takes blocks of sites (row ranges of one chromosome,
in any order, each at most once) with their per-cell probabilities and observed calls, and keeps
only cells x regions sums, so memory does not grow with the number of CpGs per region.
:func:`aggregate_regions` feeds it from an imputed store and builds the AnnData.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from cpgformer.errors import UsageError
from cpgformer.export.cpg_anndata import obs_table, uns_info
from cpgformer.export.naming import chrom_names, chunk_groups, region_names, store_chroms

log = logging.getLogger("cpgformer.export")  # one name for all of export's messages

REGION_LAYER_MEANINGS = {
    "X": "imp_mean",
    "mc": "methylated reads summed over the region's observed calls (sparse int32)",
    "cov": "total reads summed over the region's observed calls (sparse int32)",
    "frac": "mc / cov, NaN where cov = 0",
    "meth_sites": "observed CpGs called methylated (label 1)",
    "total_sites": "observed CpGs with a label",
    "imp_mean": "mean probability over the region's CpGs (imputed: observed calls kept; "
    "denoised: model everywhere), NaN for regions without CpGs",
    "imp_var": "population variance of those probabilities",
}
REGION_RULE = "CpG start in [start, end)"


def fixed_bins(
    imp: Any, bin_size: int, chroms: Sequence[str], chrom_style: str = "as-is"
) -> pd.DataFrame:
    """Bins ``[k b, (k + 1) b)`` that contain at least one imputed CpG (``chrom`` as in the store,
    ``name`` 1-based ``chrom:start-end`` in ``chrom_style``)."""
    if bin_size < 1:
        raise UsageError(f"--bin-size must be >= 1, got {bin_size}")
    rows = []
    for c in chroms:
        pos = np.asarray(imp.positions(c), dtype=np.int64)
        starts = np.unique(pos // bin_size) * bin_size
        rows.append(pd.DataFrame({"chrom": c, "start": starts, "end": starts + bin_size}))
    table = (
        pd.concat(rows, ignore_index=True)
        if rows
        else pd.DataFrame(columns=["chrom", "start", "end"])
    )
    written = chrom_names(chroms, chrom_style)
    table["name"] = region_names(table["chrom"].map(written), table["start"], table["end"])
    return table


def _match_chrom(name: str, available: set[str]) -> str | None:
    if name in available:
        return name
    alt = name[3:] if name.startswith("chr") else "chr" + name
    return alt if alt in available else None


def match_regions(regions: pd.DataFrame, chroms: Sequence[str]) -> pd.DataFrame:
    """``regions`` with a ``store_chrom`` column (``chr`` prefix optional); regions on other
    contigs are left out (logged)."""
    available = set(chroms)
    mapped = regions["chrom"].astype(str).map(lambda n: _match_chrom(n, available))
    dropped = int(mapped.isna().sum())
    if dropped:
        missing = sorted(set(regions["chrom"][mapped.isna()].astype(str)))
        log.warning(
            "%d region(s) on contigs not in the imputed store were left out (%s)",
            dropped,
            ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else ""),
        )
    return regions.assign(store_chrom=mapped)[mapped.notna()].reset_index(drop=True)


class RegionSums:
    """Cells x regions sums filled block by block.

    ``regions``: a table with ``store_chrom``, ``start``, ``end`` (0-based half-open; a CpG belongs
    to a region when its start lies in it; regions may overlap). For each chromosome call
    :meth:`set_positions` once with all its site positions (sorted), then feed row blocks
    ``[a, b)`` of those sites with :meth:`add_values` (probabilities) and :meth:`add_calls`
    (observed calls), each block once, in any order. :meth:`layers` gives the cells x regions
    layers of :data:`REGION_LAYER_MEANINGS`.
    """

    def __init__(self, regions: pd.DataFrame, n_cells: int, region_batch: int = 4096) -> None:
        self.regions = regions
        self.n_cells = n_cells
        self.region_batch = region_batch
        n_reg = len(regions)
        self.sum_p = np.zeros((n_reg, n_cells))
        self.sum_p2 = np.zeros((n_reg, n_cells))
        self.counts = {
            k: np.zeros((n_reg, n_cells), dtype=np.int64)
            for k in ("mc", "cov", "meth_sites", "total_sites")
        }
        self.n_cpg = np.zeros(n_reg, dtype=np.int64)
        self._ranges: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
        self._chrom_of = regions["store_chrom"].to_numpy()

    def set_positions(self, chrom: str, positions: np.ndarray) -> None:
        """All site positions of ``chrom`` (sorted): each region's row range is found here."""
        idx = np.flatnonzero(self._chrom_of == chrom)
        pos = np.asarray(positions, dtype=np.int64)
        i0 = np.searchsorted(pos, self.regions["start"].to_numpy()[idx], "left")
        i1 = np.searchsorted(pos, self.regions["end"].to_numpy()[idx], "left")
        self.n_cpg[idx] = i1 - i0
        self._ranges[chrom] = (idx, i0, i1)

    def _hits(self, chrom: str, a: int, b: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(region rows, first row, end row) of the regions overlapping rows [a, b), clipped."""
        try:
            idx, i0, i1 = self._ranges[chrom]
        except KeyError:
            raise UsageError(f"set_positions({chrom!r}, ...) must come before its blocks") from None
        hit = (i0 < b) & (i1 > a)
        return idx[hit], np.clip(i0[hit], a, b), np.clip(i1[hit], a, b)

    def overlaps(self, chrom: str, a: int, b: int) -> bool:
        """Whether any region holds a site of rows ``[a, b)`` (blocks without one can be skipped)."""
        return bool(self._hits(chrom, a, b)[0].size)

    def add_values(self, chrom: str, a: int, b: int, values: np.ndarray) -> None:
        """Probabilities ``values[b - a, n_cells]`` of rows ``[a, b)`` of ``chrom``."""
        target, lo, hi = self._hits(chrom, a, b)
        if not target.size:
            return
        p = np.asarray(values, dtype=np.float64)
        for out, v in ((self.sum_p, p), (self.sum_p2, p * p)):
            cs = np.zeros((b - a + 1, self.n_cells))
            np.cumsum(v, axis=0, out=cs[1:])
            out[target] += cs[hi - a] - cs[lo - a]  # region rows are unique

    def add_calls(
        self,
        chrom: str,
        a: int,
        b: int,
        indptr: np.ndarray,
        cell: np.ndarray,
        mc: np.ndarray,
        cov: np.ndarray,
        label: np.ndarray,
    ) -> None:
        """Observed calls of rows ``[a, b)``: CSR by row (``indptr`` of length ``b - a + 1``,
        starting at 0) with per-call ``cell``, ``mc``, ``cov``, ``label``."""
        target, lo, hi = self._hits(chrom, a, b)
        ip = np.asarray(indptr, dtype=np.int64)
        for r0 in range(0, target.size, self.region_batch):
            sel = slice(r0, r0 + self.region_batch)
            k0, k1 = ip[lo[sel] - a], ip[hi[sel] - a]
            lengths = k1 - k0
            total = int(lengths.sum())
            if total == 0:
                continue
            region_of = np.repeat(np.arange(lengths.size), lengths)
            nnz = np.repeat(k0 - np.cumsum(lengths) + lengths, lengths) + np.arange(total)
            key = region_of * self.n_cells + np.asarray(cell[nnz], dtype=np.int64)
            lab = np.asarray(label[nnz])
            weights = {
                "mc": np.asarray(mc[nnz], dtype=np.float64),
                "cov": np.asarray(cov[nnz], dtype=np.float64),
                "meth_sites": (lab == 1).astype(np.float64),
                "total_sites": (lab >= 0).astype(np.float64),
            }
            size = lengths.size * self.n_cells
            rows = target[sel]
            for name, w in weights.items():
                summed = np.bincount(key, weights=w, minlength=size)
                self.counts[name][rows] += (
                    np.rint(summed).astype(np.int64).reshape(-1, self.n_cells)
                )

    def layers(self) -> dict[str, Any]:
        """cells x regions layers (see :data:`REGION_LAYER_MEANINGS`)."""
        mc, cov = self.counts["mc"], self.counts["cov"]
        with np.errstate(divide="ignore", invalid="ignore"):
            denom = np.where(self.n_cpg > 0, self.n_cpg, np.nan)[:, None]
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

    def var(self, chroms: Sequence[str], chrom_style: str = "as-is") -> pd.DataFrame:
        """The regions as an AnnData ``var`` table (index 1-based ``chrom:start-end``)."""
        written = chrom_names(chroms, chrom_style)
        out_chrom = self.regions["store_chrom"].astype(str).map(written)
        var = pd.DataFrame(
            {
                "chrom": pd.Categorical(out_chrom, categories=[written[c] for c in chroms]),
                "start": self.regions["start"].to_numpy(np.int64),
                "end": self.regions["end"].to_numpy(np.int64),
                "name": self.regions["name"].astype(str).to_numpy(),
                "n_cpg": self.n_cpg,
            }
        )
        var.index = pd.Index(
            region_names(out_chrom, var["start"], var["end"]).to_numpy(), name="region"
        )
        return var

    def to_anndata(
        self, obs: pd.DataFrame, chroms: Sequence[str], uns: dict, chrom_style: str = "as-is"
    ) -> ad.AnnData:
        """cells x regions AnnData: ``X`` = ``imp_mean``, the layers, ``uns`` as given."""
        layers = self.layers()
        adata = ad.AnnData(
            X=layers["imp_mean"].copy(),
            obs=obs,
            var=self.var(chroms, chrom_style),
            layers=layers,
            uns=uns,
        )
        if not adata.var_names.is_unique:
            adata.var_names_make_unique()
        return adata


def _feed_store(sums: RegionSums, imp: Any, chrom: str, values: str) -> None:
    """Every chunk of one chromosome of an imputed store into ``sums``."""
    sums.set_positions(chrom, np.array(imp.positions(chrom)))
    for part, chunks in chunk_groups(imp, chrom):
        indptr, cell, mc, cov, label = part.csr(chrom)
        for a, b in chunks:
            if not sums.overlaps(chrom, a, b):
                continue
            p = part.values(chrom, a, b)
            if values == "imputed":
                obs = part.observed_values(chrom, a, b)
                seen = ~np.isnan(obs)
                p[seen] = obs[seen]
            sums.add_values(chrom, a, b, p)
            ip = np.asarray(indptr[a : b + 1], dtype=np.int64)
            lo, hi = int(ip[0]), int(ip[-1])
            sums.add_calls(chrom, a, b, ip - lo, cell[lo:hi], mc[lo:hi], cov[lo:hi], label[lo:hi])
        del part, indptr, cell, mc, cov, label


def aggregate_regions(
    imp: Any,
    regions: pd.DataFrame,
    *,
    values: str = "imputed",
    chroms: Sequence[str] | None = None,
    region_batch: int = 4096,
    chrom_style: str = "as-is",
) -> ad.AnnData:
    """cells x regions AnnData of an imputed store.

    A CpG belongs to a region when its start lies in ``[region start, region end)``. Layers: ``mc``,
    ``cov`` (summed reads), ``frac`` = mc/cov (NaN where cov = 0), ``meth_sites``/``total_sites``
    (observed sites with label 1 / with a label), ``imp_mean``/``imp_var`` (mean and population
    variance of the probabilities over the region's CpGs; ``values`` "imputed" keeps observed calls,
    "denoised" uses the model for every entry; NaN for regions without CpGs); ``X`` = ``imp_mean``.
    Regions on contigs that were not imputed are left out (logged).
    """
    if values not in ("imputed", "denoised"):
        raise UsageError(f"region values must be 'imputed' or 'denoised', got {values!r}")
    if values == "denoised" and imp.keep_observed:
        raise UsageError(f"{imp.path} was imputed with --keep-observed: no denoised values")
    chroms = store_chroms(imp, chroms)
    table = match_regions(regions, chroms)
    sums = RegionSums(table, imp.n_cells, region_batch)
    for c in chroms:
        if (table["store_chrom"] == c).any():
            _feed_store(sums, imp, c, values)
    uns = {
        "cpgformer": uns_info(
            imp,
            region_values=values,
            region_rule=REGION_RULE,
            layers=dict(REGION_LAYER_MEANINGS),
            chrom_style=chrom_style,
        )
    }
    return sums.to_anndata(obs_table(imp), chroms, uns, chrom_style)
