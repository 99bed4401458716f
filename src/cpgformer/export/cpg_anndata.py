"""The CpG-level AnnData: cells x CpG sites.

Two layouts of one content. ``memory`` builds the AnnData in memory and writes it (small outputs).
``chunked`` writes the ``.h5ad`` piece by piece with bounded memory: the dense matrices as chunked
HDF5 datasets filled a stripe of sites at a time, the sparse layers column-compressed (CSC, one
column per CpG, appended chunk by chunk with anndata's own sparse-dataset append), so that
``anndata.read_h5ad(path, backed="r")`` opens it without loading ``X``. HDF5 rather than zarr
because anndata's backed mode exists for ``.h5ad`` only (``read_zarr`` loads everything). In
backed mode anndata loads the layers into memory, so the chunked layout writes no dense layer
unless asked (``dense_layers``): ``imputed`` is ``X`` with the observed calls put in, and
``uncertainty`` is ``X (1 - X)``. ``auto`` picks ``memory`` up to :data:`IN_MEMORY_MAX_BYTES`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import scipy.sparse as sp

from cpgformer import __version__
from cpgformer.errors import UsageError
from cpgformer.export.naming import chrom_names, chunk_groups, store_chroms
from cpgformer.impute import open_imputed
from cpgformer.utils.atomic import atomic_path, ensure_free_space
from cpgformer.utils.progress import bar

log = logging.getLogger("cpgformer.export")  # one name for all of export's messages

LAYOUTS = ("auto", "memory", "chunked")
IN_MEMORY_MAX_BYTES = 512 << 20
"""``auto`` layout: dense matrices up to this size are built in memory, larger ones in chunks."""
COMPRESSIONS = ("gzip", "lzf", "none")
COORDINATES = "0-based half-open [start, end) with start = + strand C of the CpG, end = start + 2"
SPARSE_LAYERS = ("observed", "mc", "cov")

LAYER_MEANINGS = {
    "X": "model probability P(methylated) for every (cell, CpG), observed entries denoised "
    "(float; with --keep-observed at impute time: observed calls kept)",
    "imputed": "observed calls kept (1 methylated / 0 unmethylated by the store's binarisation; "
    "continuous stores: mc/cov), model probability where nothing was observed (float)",
    "observed": "observed call: +1 methylated, -1 unmethylated, 0 not observed or excluded "
    "(sparse int8)",
    "mc": "methylated reads of the observed call, 0 where not observed (sparse int32)",
    "cov": "total reads of the observed call, 0 where not observed (sparse int32)",
    "uncertainty": "p(1 - p) of X, the Bernoulli variance, 0 to 0.25 (float; binary models)",
}
"""What ``X`` and each layer of the CpG-level AnnData hold."""

NOT_WRITTEN = {
    "imputed": "not written (chunked layout): X with the observed calls put in (observed +1 -> 1, "
    "-1 -> 0; continuous stores: mc/cov)",
    "uncertainty": "not written (chunked layout): X (1 - X)",
}


def obs_table(imp: Any) -> pd.DataFrame:
    """The cell table as AnnData ``obs`` (index = cell names)."""
    table = imp.cell_table.copy()
    table.index = pd.Index(table.pop("name").astype(str), name="cell")
    for col in table.columns:
        if table[col].dtype == object:
            table[col] = table[col].astype(str)
    return table


def uns_info(imp: Any, **extra: Any) -> dict:
    """``uns["cpgformer"]``: provenance of the imputed store plus ``extra``."""
    m = imp.manifest
    info = {
        "package_version": __version__,
        "coordinates": COORDINATES,
        "checkpoint_id": str(m.get("checkpoint_id", "")),
        "store_fingerprint": str(m.get("store_fingerprint", "")),
        "temperature": float(m.get("temperature", 1.0)),
        "data_mode": str(m.get("data_mode", "binary")),
        "keep_observed": bool(m.get("keep_observed", False)),
        "stored_dtype": str(m.get("dtype", "")),
        "sites": str(m.get("sites", "store")),
        "model_config_json": json.dumps(m.get("model_config", {}), sort_keys=True),
        "imputed_manifest_json": json.dumps(
            {k: v for k, v in m.items() if k not in ("cells",)}, sort_keys=True, default=str
        ),
    }
    info.update(extra)
    return info


def site_var(imp: Any, chroms: Sequence[str], chrom_style: str = "as-is") -> pd.DataFrame:
    """var table of the CpG-level AnnData: chrom (categorical), start, end, n_cells_obs.

    The index names each CpG ``chrom:start-end`` as a 1-based closed interval (the C and the G),
    which genome browsers and region parsers read correctly; ``start`` stays 0-based.
    """
    written = chrom_names(chroms, chrom_style)
    names, starts, n_obs = [], [], []
    for c in chroms:
        fresh = open_imputed(imp.path)  # its memory maps go with it (see chunk_groups)
        pos = np.array(fresh.positions(c), dtype=np.int64)
        indptr, _, _, _, label = fresh.csr(c)
        observed = np.concatenate([[0], np.cumsum(np.asarray(label) >= 0, dtype=np.int64)])
        ip = np.array(indptr)
        del fresh, indptr, label
        names.append(np.full(len(pos), written[c], dtype=object))
        starts.append(pos)
        n_obs.append((observed[ip[1:]] - observed[ip[:-1]]).astype(np.int64))
    chrom = np.concatenate(names) if names else np.zeros(0, dtype=object)
    start = np.concatenate(starts) if starts else np.zeros(0, dtype=np.int64)
    end = start + 2
    index = pd.Index(
        pd.Series(chrom, dtype=str)
        + ":"
        + pd.Series(start + 1).astype(str)
        + "-"
        + pd.Series(end).astype(str),
        name="site",
    )
    return pd.DataFrame(
        {
            "chrom": pd.Categorical(chrom, categories=[written[c] for c in chroms]),
            "start": start,
            "end": end,
            "n_cells_obs": np.concatenate(n_obs) if n_obs else np.zeros(0, dtype=np.int64),
        },
        index=index,
    )


# --------------------------------------------------------------------------------------------------
# blocks of sites: the values every layout writes


def _has_uncertainty(imp: Any, uncertainty: bool) -> bool:
    return uncertainty and imp.data_mode == "binary" and not imp.keep_observed


def dense_block(
    imp: Any, chrom: str, a: int, b: int, names: Sequence[str]
) -> dict[str, np.ndarray]:
    """float32 ``[b - a, cells]`` values of rows ``[a, b)`` for the dense matrices ``names``
    (``X``, ``imputed``, ``uncertainty``)."""
    x = imp.values(chrom, a, b)
    out = {"X": x}
    if "imputed" in names:
        obs = imp.observed_values(chrom, a, b)
        seen = ~np.isnan(obs)
        imputed = x.copy()
        imputed[seen] = obs[seen]
        out["imputed"] = imputed
    if "uncertainty" in names:
        out["uncertainty"] = x * (1.0 - x)
    return out


def sparse_block(
    csr: Sequence[np.ndarray], n_cells: int, a: int, b: int, name: str
) -> sp.csc_matrix:
    """cells x sites CSC of rows ``[a, b)`` of a site-major CSR (``name``: a sparse layer)."""
    indptr, cell, mc, cov, label = csr
    ip = np.asarray(indptr[a : b + 1], dtype=np.int64)
    lo, hi = int(ip[0]), int(ip[-1])
    if name == "observed":
        lab = np.asarray(label[lo:hi])
        data = np.where(lab == 1, 1, np.where(lab == 0, -1, 0)).astype(np.int8)
    else:
        data = np.array((mc if name == "mc" else cov)[lo:hi], dtype=np.int32)
    m = sp.csc_matrix(
        (data, np.array(cell[lo:hi], dtype=np.int32), ip - lo), shape=(n_cells, b - a)
    )
    m.eliminate_zeros()
    return m


# --------------------------------------------------------------------------------------------------
# memory layout


def to_anndata(
    imp: Any,
    chroms: Sequence[str] | None = None,
    *,
    float16: bool = False,
    uncertainty: bool = True,
    chrom_style: str = "as-is",
) -> ad.AnnData:
    """The CpG-level AnnData of the given chromosomes, in memory (sparse layers CSR)."""
    chroms = store_chroms(imp, chroms)
    var = site_var(imp, chroms, chrom_style)
    dtype = np.float16 if float16 else np.float32
    names = ["X", "imputed"] + (["uncertainty"] if _has_uncertainty(imp, uncertainty) else [])
    dense = {k: np.empty((imp.n_cells, len(var)), dtype=dtype) for k in names}
    offset = 0
    for c in chroms:
        for a, b in imp.chunks(c):
            for k, v in dense_block(imp, c, a, b, names).items():
                dense[k][:, offset + a : offset + b] = v.T
        offset += imp.n_sites(c)
    layers: dict[str, Any] = {k: v for k, v in dense.items() if k != "X"}
    for name in SPARSE_LAYERS:
        parts = []
        for c in chroms:
            parts.append(sparse_block(imp.csr(c), imp.n_cells, 0, imp.n_sites(c), name))
        dt = np.int8 if name == "observed" else np.int32
        layers[name] = (
            sp.hstack(parts, format="csr").astype(dt)
            if parts
            else sp.csr_matrix((imp.n_cells, 0), dtype=dt)
        )
    uns = {"cpgformer": _uns(imp, names, chrom_style, "memory")}
    return ad.AnnData(X=dense["X"], obs=obs_table(imp), var=var, layers=layers, uns=uns)


def _uns(imp: Any, dense: Sequence[str], chrom_style: str, layout: str) -> dict:
    meanings = {k: v for k, v in LAYER_MEANINGS.items() if k in dense or k in SPARSE_LAYERS}
    if imp.keep_observed:
        meanings["X"] = "observed calls kept, model probability P(methylated) for missing entries"
    for k in ("imputed", "uncertainty"):
        if layout == "chunked" and k not in dense and not imp.keep_observed:
            meanings[k] = NOT_WRITTEN[k]
    return uns_info(
        imp,
        X=meanings["X"],
        uncertainty=LAYER_MEANINGS["uncertainty"] if "uncertainty" in dense else "",
        layers=meanings,
        chrom_style=chrom_style,
        layout=layout,
    )


def write_h5ad(adata: ad.AnnData, out: Path, compression: str = "gzip") -> Path:
    """Write an in-memory AnnData atomically (free space checked first)."""
    ensure_free_space(out, h5ad_bytes(adata))  # HDF5 cannot stop cleanly on a full disk
    with atomic_path(out) as tmp:
        adata.write_h5ad(tmp, compression=None if compression == "none" else compression)
    log.info("wrote %s (%d cells x %d columns)", out, adata.n_obs, adata.n_vars)
    return out


def h5ad_bytes(adata: ad.AnnData) -> int:
    """About how many bytes ``adata`` takes in an uncompressed ``.h5ad``."""
    total = 0
    for m in [adata.X, *adata.layers.values()]:
        data = getattr(m, "data", m)  # sparse: the stored values (+ indices)
        total += int(getattr(data, "nbytes", 0)) * (2 if data is not m else 1)
    return total + 64 * (adata.n_obs + adata.n_vars)


# --------------------------------------------------------------------------------------------------
# chunked layout


class _DenseStripes:
    """Dense cells x sites HDF5 datasets filled a stripe of ``width`` whole sites at a time."""

    def __init__(
        self, group: h5py.Group, names: Sequence[str], shape: tuple[int, int], dtype: Any,
        compression: str | None, width: int,
    ) -> None:  # fmt: skip
        n_cells, n_sites = shape
        self.width = max(1, min(width, n_sites))
        rows = max(1, min(n_cells, (1 << 20) // (self.width * np.dtype(dtype).itemsize)))
        self.datasets = {}
        for name in names:
            d = group.create_dataset(
                name,
                shape=shape,
                dtype=dtype,
                chunks=(rows, self.width) if n_cells and n_sites else None,
                compression=compression,
            )
            d.attrs["encoding-type"] = "array"  # the anndata on-disk spec of a dense array
            d.attrs["encoding-version"] = "0.2.0"
            self.datasets[name] = d
        self.buffers = {k: np.empty((n_cells, self.width), dtype=dtype) for k in names}
        self.start = 0  # first site of the current stripe
        self.filled = 0  # sites of the stripe filled

    def add(self, blocks: dict[str, np.ndarray]) -> None:
        """The next sites, in order: ``blocks[name]`` is ``[sites, cells]``."""
        n = len(next(iter(blocks.values())))
        done = 0
        while done < n:
            take = min(n - done, self.width - self.filled)
            for k, buf in self.buffers.items():
                buf[:, self.filled : self.filled + take] = blocks[k][done : done + take].T
            self.filled += take
            done += take
            if self.filled == self.width:
                self.flush()

    def flush(self) -> None:
        if self.filled:
            for k, d in self.datasets.items():
                d[:, self.start : self.start + self.filled] = self.buffers[k][:, : self.filled]
        self.start += self.filled
        self.filled = 0


class _SparseColumns:
    """Sparse cells x sites layers written as CSC and appended block by block (anndata's own
    :func:`anndata.io.sparse_dataset` append)."""

    def __init__(self, group: h5py.Group, n_cells: int, compression: str | None) -> None:
        self.group = group
        self.n_cells = n_cells
        self.kwargs = {"indptr_dtype": np.int64, "chunks": (1 << 16,)}
        if compression is not None:
            self.kwargs["compression"] = compression
        self.started: set[str] = set()

    def add(self, name: str, block: sp.csc_matrix) -> None:
        if name in self.started:
            ad.io.sparse_dataset(self.group[name]).append(block)
        else:
            ad.io.write_elem(self.group, name, block, dataset_kwargs=self.kwargs)
            self.started.add(name)

    def finish(self) -> None:
        for name in SPARSE_LAYERS:
            if name not in self.started:  # no site at all
                dt = np.int8 if name == "observed" else np.int32
                self.add(name, sp.csc_matrix((self.n_cells, 0), dtype=dt))


def write_chunked_h5ad(
    imp: Any,
    out: Path,
    chroms: Sequence[str],
    *,
    float16: bool = False,
    uncertainty: bool = True,
    chrom_style: str = "as-is",
    compression: str = "gzip",
    dense_layers: bool = False,
    stripe_sites: int = 1024,
) -> Path:
    """Write the CpG-level ``.h5ad`` chunk by chunk (the module docstring's ``chunked`` layout).

    Memory: one chunk of the imputed store plus one stripe of ``stripe_sites`` sites per dense
    matrix, whatever the number of sites.
    """
    var = site_var(imp, chroms, chrom_style)
    n_cells, n_sites = imp.n_cells, len(var)
    dtype = np.float16 if float16 else np.float32
    names = ["X"]
    if dense_layers:
        names += ["imputed"] + (["uncertainty"] if _has_uncertainty(imp, uncertainty) else [])
    nnz = sum(int(np.asarray(imp.csr(c)[0])[-1]) for c in chroms)
    ensure_free_space(out, n_cells * n_sites * np.dtype(dtype).itemsize * len(names) + 13 * nnz)
    comp = None if compression == "none" else compression
    skeleton = ad.AnnData(
        obs=obs_table(imp), var=var, uns={"cpgformer": _uns(imp, names, chrom_style, "chunked")}
    )
    with atomic_path(out) as tmp:
        skeleton.write_h5ad(tmp, compression=comp)
        with h5py.File(tmp, "a") as f:
            layers = f["layers"]
            shape = (n_cells, n_sites)
            stripes = _DenseStripes(f, ["X"], shape, dtype, comp, stripe_sites)
            extra = None
            if len(names) > 1:
                extra = _DenseStripes(layers, names[1:], shape, dtype, comp, stripe_sites)
            sparse = _SparseColumns(layers, n_cells, comp)
            _fill_chunked(imp, chroms, names, stripes, extra, sparse)
    log.info("wrote %s (%d cells x %d CpGs, chunked)", out, n_cells, n_sites)
    return out


def _fill_chunked(
    imp: Any,
    chroms: Sequence[str],
    names: Sequence[str],
    stripes: _DenseStripes,
    extra: _DenseStripes | None,
    sparse: _SparseColumns,
) -> None:
    n_chunks = sum(len(imp.chunks(c)) for c in chroms)
    with bar(n_chunks, desc="h5ad", unit="chunk") as progress_bar:
        for c in chroms:
            for part, chunks in chunk_groups(imp, c):
                csr = part.csr(c)
                for a, b in chunks:
                    blocks = dense_block(part, c, a, b, names)
                    stripes.add({"X": blocks.pop("X")})
                    if extra is not None:
                        extra.add(blocks)
                    del blocks
                    for name in SPARSE_LAYERS:
                        sparse.add(name, sparse_block(csr, imp.n_cells, a, b, name))
                    progress_bar.update(1)
                del part, csr
    stripes.flush()
    if extra is not None:
        extra.flush()
    sparse.finish()


def choose_layout(layout: str, n_cells: int, n_sites: int, float16: bool) -> str:
    """``memory`` or ``chunked`` for ``layout`` (``auto``: by the size of the dense matrices)."""
    if layout not in LAYOUTS:
        raise UsageError(f"--layout must be one of {', '.join(LAYOUTS)}, got {layout!r}")
    if layout != "auto":
        return layout
    dense = 3 * n_cells * n_sites * (2 if float16 else 4)  # X, imputed, uncertainty
    return "memory" if dense <= IN_MEMORY_MAX_BYTES else "chunked"


CHUNKED_SETTINGS = ("float16", "uncertainty", "chrom_style", "compression", "dense_layers")


def write_cpg_h5ad(imp: Any, out: Path, chroms: Sequence[str], opts: Any) -> Path:
    """The CpG-level ``.h5ad`` of ``chroms`` in the layout :func:`choose_layout` picks for
    ``opts.layout``; ``opts`` (an ``ExportOptions``) also gives :data:`CHUNKED_SETTINGS`."""
    n_sites = sum(imp.n_sites(c) for c in chroms)
    if choose_layout(opts.layout, imp.n_cells, n_sites, opts.float16) == "memory":
        adata = to_anndata(
            imp,
            chroms,
            float16=opts.float16,
            uncertainty=opts.uncertainty,
            chrom_style=opts.chrom_style,
        )
        return write_h5ad(adata, out, opts.compression)
    settings = {k: getattr(opts, k) for k in CHUNKED_SETTINGS}
    return write_chunked_h5ad(imp, out, chroms, **settings)
