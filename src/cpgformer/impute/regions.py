"""Imputing straight to regions: cells x regions sums, never the per-CpG matrix.

``cpgformer impute --regions BED`` (or ``--bin-size N``) runs the imputation chunk by chunk as
usual, but instead of a chunk's probabilities it writes that chunk's contribution to the region
sums: a :class:`cpgformer.export.regions.RegionSums` over only the regions the chunk overlaps, a
few values per region and cell. When every chunk is there the main process adds the contributions
up in output order and writes the cells x regions AnnData. Memory and disk therefore grow with
cells x regions, not with the number of CpGs, and the run resumes per chunk and shares chunks
between ranks like a normal imputation.

The table is the one ``cpgformer export --to regions`` builds from an imputed store with the same
chunk size, value for value (the same sums, added in the same order): a CpG belongs to a region
when its start lies in ``[region start, region end)``; layers as
:data:`cpgformer.export.regions.REGION_LAYER_MEANINGS`, ``var`` with ``n_cpg``.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pandas as pd

from cpgformer.errors import UsageError
from cpgformer.impute.probabilities import dequantize

log = logging.getLogger(__name__)

REGION_VALUES = ("imputed", "denoised")
SUM_FIELDS = ("sum_p", "sum_p2")
COUNT_FIELDS = ("mc", "cov", "meth_sites", "total_sites")


def add_part(sums: Any, part: dict[str, np.ndarray]) -> None:
    """Add one chunk's sums (``target`` rows of ``sums``'s table) into a ``RegionSums``."""
    t = part["target"]
    for name in SUM_FIELDS:
        getattr(sums, name)[t] += part[name]
    for name in COUNT_FIELDS:
        sums.counts[name][t] += part[name]


def regions_by_chunk(
    i0: np.ndarray, i1: np.ndarray, chunk_sites: int
) -> tuple[np.ndarray, np.ndarray]:
    """Which regions (row ranges ``[i0, i1)``) overlap each chunk of ``chunk_sites`` rows:
    ``order[starts[c]:starts[c + 1]]`` are those of chunk ``c``, in ascending region order."""
    i0, i1 = np.asarray(i0, dtype=np.int64), np.asarray(i1, dtype=np.int64)
    has = np.flatnonzero(i1 > i0)
    c0, c1 = i0[has] // chunk_sites, (i1[has] - 1) // chunk_sites
    counts = c1 - c0 + 1
    region = np.repeat(has, counts)
    first = np.repeat(np.cumsum(counts) - counts, counts)
    chunk = np.repeat(c0, counts) + (np.arange(int(counts.sum())) - first)
    sort = np.argsort(chunk, kind="stable")  # regions stay ascending within a chunk
    n_chunks = int(chunk.max()) + 1 if chunk.size else 0
    starts = np.searchsorted(chunk[sort], np.arange(n_chunks + 1), "left")
    return region[sort], starts


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
        self._by_chunk: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    # ---- planning (every rank, same result)
    def prepare(
        self,
        ds: Any,
        sources: Sequence[Any],
        chroms: Sequence[str],
        data_mode: str = "binary",
        chunk_sites: int = 1 << 16,
    ) -> None:
        """The regions on the imputed chromosomes, each one's row range, and for every chunk of
        ``chunk_sites`` rows the regions it overlaps."""
        from cpgformer.export.regions import fixed_bins, match_regions

        self.continuous = data_mode == "continuous"
        self.chunk_sites = int(chunk_sites)
        self.chroms = list(chroms)
        self.sources = list(sources)
        if self.bin_size is not None:
            table = fixed_bins(_Positions(sources), int(self.bin_size), self.chroms)
            table = table.assign(store_chrom=table["chrom"])
        else:
            assert self.source_table is not None
            table = match_regions(self.source_table, self.chroms)
        self.table = table
        chrom_of = table["store_chrom"].to_numpy()
        for k, src in enumerate(sources):
            idx = np.flatnonzero(chrom_of == src.chrom)
            pos = np.asarray(src.positions, dtype=np.int64)
            i0 = np.searchsorted(pos, table["start"].to_numpy(np.int64)[idx], "left")
            i1 = np.searchsorted(pos, table["end"].to_numpy(np.int64)[idx], "left")
            self._ranges[k] = (idx, i0, i1)
            self._by_chunk[k] = regions_by_chunk(i0, i1, chunk_sites)

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
        from cpgformer.export.regions import RegionSums
        from cpgformer.utils.atomic import atomic_file

        idx = self._ranges[k][0]
        order, starts = self._by_chunk[k]
        c = a // self.chunk_sites
        target = idx[order[starts[c] : starts[c + 1]]] if c + 1 < len(starts) else idx[:0]
        values = dequantize(np.asarray(stored)).astype(np.float64)
        if self.values == "imputed":  # observed calls kept (labels, or betas for continuous)
            obs = src.betas(a, b) if self.continuous else src.states(a, b)
            seen = obs >= 0
            values[seen] = obs[seen]
        assert self.table is not None
        # rows [a, b) as rows [0, b - a) of a RegionSums over the chunk's regions: the same sums
        sums = RegionSums(self.table.iloc[target].reset_index(drop=True), values.shape[1])
        sums.set_positions(src.chrom, np.asarray(src.positions[a:b]))
        sums.add_values(src.chrom, 0, b - a, values)
        if target.size:
            sums.add_calls(src.chrom, 0, b - a, *self._chunk_calls(k, src, a, b))
        part = {"target": target, **{n: getattr(sums, n) for n in SUM_FIELDS}, **sums.counts}
        with atomic_file(path) as fh:
            np.savez(fh, **part)

    # ---- finishing (main rank)
    def finish(self, work: Path, out: Path, plan: dict, ds: Any, model_config: Any) -> Path:
        """Add up every chunk's sums in output order, write the AnnData to ``out`` and remove
        ``work``."""
        from cpgformer.export.cpg_anndata import obs_table, uns_info
        from cpgformer.export.regions import REGION_LAYER_MEANINGS, REGION_RULE, RegionSums
        from cpgformer.utils.atomic import atomic_path, ensure_free_space

        assert self.table is not None
        sums = RegionSums(self.table, ds.n_cells)
        for k, c in enumerate(plan["chromosomes"]):
            sums.set_positions(self.sources[k].chrom, self.sources[k].positions)
            for i in range(c["n_chunks"]):
                with np.load(work / "chroms" / str(k) / self.chunk_name(i)) as part:
                    add_part(sums, {name: part[name] for name in part.files})
        provenance = SimpleNamespace(manifest={**plan, "model_config": model_config})
        uns = {
            "cpgformer": uns_info(
                provenance,
                region_values=self.values,
                region_rule=REGION_RULE,
                layers=dict(REGION_LAYER_MEANINGS),
                chrom_style="as-is",
            )
        }
        adata = sums.to_anndata(obs_table(ds), self.chroms, uns)
        size = sum(int(getattr(getattr(m, "data", m), "nbytes", 0)) for m in adata.layers.values())
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
    from cpgformer.impute.run import ImputeOptions, _impute, _model_path
    from cpgformer.utils.locks import output_lock
    from cpgformer.utils.outputs import check_output

    opts = options or ImputeOptions()
    if output is None:
        output = region_output(regions, bin_size, values)
    inputs = [getattr(store, "path", store), _model_path(model), opts.fasta, output.source_path]
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
