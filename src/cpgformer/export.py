"""Export an imputed store to the files downstream tools read.

* ``h5ad``: AnnData, obs = cells (index = cell names), var = CpG sites (index ``chrom:start-end``,
  the CpG as a 1-based closed interval; columns ``chrom``, 0-based ``start``, ``end``,
  ``n_cells_obs``); ``X`` and every layer are described in :data:`LAYER_MEANINGS` (also stored in
  ``uns["cpgformer"]["layers"]``); gzip-compressed.
* ``bedgraph``: per cell ``<cell>.<kind>.bedGraph.gz`` (kinds imputed / denoised / observed).
* ``allc``: per cell ``<cell>.allc.tsv.gz`` + ``.tbi`` (7 columns; observed entries keep their reads;
  contexts from the reference, so ALLCools' CG filter {CGA, CGC, CGG, CGT} keeps them).
* ``regions``: cells x regions AnnData from a BED file or fixed bins (index ``chrom:start-end``,
  1-based as genome browsers read it).

Every target takes ``chrom_style``: ``as-is`` (the store's contig names), ``ucsc`` (``chr1``,
``chrM``) or ``ensembl`` (``1``, ``MT``).

Everything streams over the store's chunks except the CpG-level AnnData, which holds its matrices in
memory (select chromosomes with ``chroms`` for big data).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from cpgformer import __version__
from cpgformer.errors import UsageError
from cpgformer.impute import ImputedStore, open_imputed
from cpgformer.io.writers import AllcWriter, BedGraphWriter, cell_file_names, read_bed_regions
from cpgformer.utils.atomic import atomic_path, ensure_free_space
from cpgformer.utils.locks import output_lock
from cpgformer.utils.outputs import (
    begin_files_in,
    check_files_in,
    check_output,
    record_files_in,
    remove_leftovers,
    remove_leftovers_in,
)
from cpgformer.utils.progress import bar

log = logging.getLogger(__name__)

TARGETS = ("h5ad", "bedgraph", "allc", "regions")
CHROM_STYLES = ("as-is", "ucsc", "ensembl")
COMPRESSIONS = ("gzip", "lzf", "none")
ALLCOOLS_CG_CONTEXTS = frozenset({"CGA", "CGC", "CGG", "CGT"})
"""The contexts ALLCools' CG filter keeps (its ``mc_type`` CGN expanded to A/C/G/T)."""

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
BEDGRAPH_KINDS = ("imputed", "denoised", "observed")
COORDINATES = "0-based half-open [start, end) with start = + strand C of the CpG, end = start + 2"


@dataclass
class ExportOptions:
    chroms: Sequence[str] | None = None
    kinds: Sequence[str] = ("imputed",)  # bedgraph
    percent: bool = False  # bedgraph values 0-100
    interval: str = "cpg"  # bedgraph: "cpg" [start, start+2) or "c" [start, start+1)
    allc_scale: int | None = None  # allc: imputed entries as cov S, mc round(p S)
    fasta: str | None = None  # allc contexts (default: the imputed store's FASTA, else CGN)
    regions: str | None = None  # regions: BED file
    bin_size: int | None = None  # regions: fixed bins instead of a BED file
    region_values: str = "imputed"  # regions: "imputed" or "denoised" probabilities
    float16: bool = False  # h5ad dense layers as float16
    uncertainty: bool = True  # h5ad uncertainty layer
    max_open_files: int = 128  # bedgraph/allc: files open at once
    overwrite: bool = False
    chrom_style: str = "as-is"  # contig names written: as-is, ucsc (chr1, chrM), ensembl (1, MT)
    compression: str = "gzip"  # h5ad/regions: gzip, lzf or none
    allow_cgn: bool = False  # allc without a FASTA: write context CGN instead of refusing


def style_chrom(name: str, style: str) -> str:
    """A contig name in ``style``: ``as-is``; ``ucsc`` ``1`` -> ``chr1``, ``MT`` -> ``chrM``;
    ``ensembl`` ``chr1`` -> ``1``, ``chrM`` -> ``MT``."""
    if style == "as-is":
        return name
    if style == "ucsc":
        if name.lower().startswith("chr"):
            return "chr" + name[3:]
        return "chrM" if name in ("MT", "M") else "chr" + name
    if style == "ensembl":
        if name.lower().startswith("chr") and len(name) > 3:
            rest = name[3:]
            return "MT" if rest == "M" else rest
        return "MT" if name == "M" else name
    raise UsageError(f"--chrom-style must be one of {', '.join(CHROM_STYLES)}, got {style!r}")


def chrom_names(chroms: Sequence[str], style: str) -> dict[str, str]:
    """Store contig -> written name; :class:`UsageError` when two contigs would share a name."""
    out = {c: style_chrom(c, style) for c in chroms}
    seen: dict[str, str] = {}
    for c, n in out.items():
        if n in seen:
            raise UsageError(
                f"--chrom-style {style}: contigs {seen[n]!r} and {c!r} would both be named {n!r}"
            )
        seen[n] = c
    return out


def export(
    imputed: ImputedStore | str | os.PathLike[str],
    out: str | os.PathLike[str],
    to: str = "h5ad",
    options: ExportOptions | None = None,
) -> list[Path]:
    """Write ``imputed`` as ``to`` (one of :data:`TARGETS`) to ``out``; return the files written.

    ``out`` is a file for ``h5ad``/``regions`` and a directory for ``bedgraph``/``allc``.
    """
    opts = options or ExportOptions()
    imp = imputed if isinstance(imputed, ImputedStore) else open_imputed(imputed)
    out = Path(out)
    chroms = _chroms(imp, opts.chroms)
    chrom_names(chroms, opts.chrom_style)  # checked before any work
    if opts.compression not in COMPRESSIONS:
        raise UsageError(f"--compression must be one of {', '.join(COMPRESSIONS)}")
    inputs = [imp.path, opts.regions, opts.fasta]
    if to in ("h5ad", "regions"):
        check_output(out, "h5ad", overwrite=opts.overwrite, inputs=inputs)
        with output_lock(out):
            check_output(out, "h5ad", overwrite=opts.overwrite, inputs=inputs)
            remove_leftovers(out)
            return _export_h5ad(imp, out, to, chroms, opts)
    if to in ("bedgraph", "allc"):
        check_output(out, "export", overwrite=opts.overwrite, inputs=inputs, exist_ok=True)
        with output_lock(out):
            written = (write_bedgraphs if to == "bedgraph" else write_allc)(imp, out, chroms, opts)
            names = [p.name for p in written]
            if to == "allc":
                names += [n + ".tbi" for n in names]
            record_files_in(out, "export", names)
            return written
    raise UsageError(f"unknown export target {to!r} (choose from {', '.join(TARGETS)})")


def _export_h5ad(
    imp: ImputedStore, out: Path, to: str, chroms: list[str], opts: ExportOptions
) -> list[Path]:
    if to == "h5ad":
        adata = to_anndata(
            imp,
            chroms,
            float16=opts.float16,
            uncertainty=opts.uncertainty,
            chrom_style=opts.chrom_style,
        )
        return [_write_h5ad(adata, out, opts.compression)]
    if to == "regions":
        if (opts.regions is None) == (opts.bin_size is None):
            raise UsageError("--to regions needs exactly one of --regions BED or --bin-size")
        if opts.regions is not None:
            table = read_bed_regions(opts.regions)
        else:
            table = fixed_bins(
                imp,
                int(opts.bin_size),  # type: ignore[arg-type]
                chroms,
                opts.chrom_style,
            )
        adata = aggregate_regions(
            imp, table, values=opts.region_values, chroms=chroms, chrom_style=opts.chrom_style
        )
        return [_write_h5ad(adata, out, opts.compression)]
    raise UsageError(f"unknown export target {to!r} (choose from {', '.join(TARGETS)})")


def _chroms(imp: ImputedStore, chroms: Sequence[str] | None) -> list[str]:
    if not chroms:
        return list(imp.chromosomes)
    for c in chroms:
        if c not in imp.chromosomes:
            raise UsageError(
                f"{imp.path}: chromosome {c!r} was not imputed (has {', '.join(imp.chromosomes[:10])})"
            )
    return [c for c in imp.chromosomes if c in set(chroms)]  # keep the store's contig order


def _write_h5ad(adata: Any, out: Path, compression: str = "gzip") -> Path:
    ensure_free_space(out, _h5ad_bytes(adata))  # HDF5 cannot stop cleanly on a full disk
    with atomic_path(out) as tmp:
        adata.write_h5ad(tmp, compression=None if compression == "none" else compression)
    log.info("wrote %s (%d cells x %d columns)", out, adata.n_obs, adata.n_vars)
    return out


def _h5ad_bytes(adata: Any) -> int:
    """About how many bytes ``adata`` takes in an uncompressed ``.h5ad``."""
    total = 0
    for m in [adata.X, *adata.layers.values()]:
        data = getattr(m, "data", m)  # sparse: the stored values (+ indices)
        total += int(getattr(data, "nbytes", 0)) * (2 if data is not m else 1)
    return total + 64 * (adata.n_obs + adata.n_vars)


# --------------------------------------------------------------------------------------------------
# AnnData


def _obs(imp: ImputedStore) -> pd.DataFrame:
    table = imp.cell_table.copy()
    table.index = pd.Index(table.pop("name").astype(str), name="cell")
    for col in table.columns:
        if table[col].dtype == object:
            table[col] = table[col].astype(str)
    return table


def _uns(imp: ImputedStore, **extra: Any) -> dict:
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


def site_var(imp: ImputedStore, chroms: Sequence[str], chrom_style: str = "as-is") -> pd.DataFrame:
    """var table of the CpG-level AnnData: chrom (categorical), start, end, n_cells_obs.

    The index names each CpG ``chrom:start-end`` as a 1-based closed interval (the C and the G),
    which genome browsers and region parsers read correctly; ``start`` stays 0-based.
    """
    written = chrom_names(chroms, chrom_style)
    names, starts, n_obs = [], [], []
    for c in chroms:
        pos = np.asarray(imp.positions(c), dtype=np.int64)
        indptr, _, _, _, label = imp.csr(c)
        observed = np.concatenate([[0], np.cumsum(np.asarray(label) >= 0, dtype=np.int64)])
        ip = np.asarray(indptr)
        per_site = observed[ip[1:]] - observed[ip[:-1]]
        names.append(np.full(len(pos), written[c], dtype=object))
        starts.append(pos)
        n_obs.append(per_site.astype(np.int64))
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


def _sparse_cells_by_sites(imp: ImputedStore, chrom: str, which: str) -> sp.csr_matrix:
    """cells x sites sparse matrix of one chromosome from the site-major CSR (``which``: layer)."""
    indptr, cell, mc, cov, label = (np.asarray(a) for a in imp.csr(chrom))
    n = imp.n_sites(chrom)
    if which == "observed":
        data = np.where(label == 1, 1, np.where(label == 0, -1, 0)).astype(np.int8)
    elif which == "mc":
        data = mc.astype(np.int32)
    else:
        data = cov.astype(np.int32)
    m = sp.csc_matrix((data, cell.astype(np.int32), indptr), shape=(imp.n_cells, n)).tocsr()
    m.eliminate_zeros()
    return m


def to_anndata(
    imp: ImputedStore,
    chroms: Sequence[str] | None = None,
    *,
    float16: bool = False,
    uncertainty: bool = True,
    chrom_style: str = "as-is",
) -> Any:
    """The CpG-level AnnData (see the module docstring) of the given chromosomes."""
    import anndata as ad

    chroms = _chroms(imp, chroms)
    var = site_var(imp, chroms, chrom_style)
    n_total = len(var)
    dtype = np.float16 if float16 else np.float32
    x = np.empty((imp.n_cells, n_total), dtype=dtype)
    imputed = np.empty((imp.n_cells, n_total), dtype=dtype)
    offset = 0
    for c in chroms:
        for a, b in imp.chunks(c):
            v = imp.values(c, a, b)
            x[:, offset + a : offset + b] = v.T
            obs = imp.observed_values(c, a, b)
            seen = ~np.isnan(obs)
            v[seen] = obs[seen]
            imputed[:, offset + a : offset + b] = v.T
        offset += imp.n_sites(c)
    layers: dict[str, Any] = {"imputed": imputed}
    for name in ("observed", "mc", "cov"):
        parts = [_sparse_cells_by_sites(imp, c, name) for c in chroms]
        dt = np.int8 if name == "observed" else np.int32
        layers[name] = (
            sp.hstack(parts, format="csr").astype(dt)
            if parts
            else sp.csr_matrix((imp.n_cells, 0), dtype=dt)
        )
    has_uncertainty = uncertainty and imp.data_mode == "binary" and not imp.keep_observed
    if has_uncertainty:
        xf = x.astype(np.float32)
        layers["uncertainty"] = (xf * (1.0 - xf)).astype(dtype)
    meanings = {k: v for k, v in LAYER_MEANINGS.items() if k == "X" or k in layers}
    if imp.keep_observed:
        meanings["X"] = "observed calls kept, model probability P(methylated) for missing entries"
    uns = {
        "cpgformer": _uns(
            imp,
            X=meanings["X"],
            uncertainty=LAYER_MEANINGS["uncertainty"] if has_uncertainty else "",
            layers=meanings,
            chrom_style=chrom_style,
        )
    }
    adata = ad.AnnData(X=x, obs=_obs(imp), var=var, layers=layers, uns=uns)
    return adata


# --------------------------------------------------------------------------------------------------
# per-cell files


def _groups(n_cells: int, per_cell_files: int, max_open: int) -> list[range]:
    size = max(1, max_open // max(1, per_cell_files))
    return [range(a, min(n_cells, a + size)) for a in range(0, n_cells, size)]


def write_bedgraphs(
    imp: ImputedStore, out: Path, chroms: Sequence[str], opts: ExportOptions
) -> list[Path]:
    """Per-cell ``<cell>.<kind>.bedGraph.gz`` files in the directory ``out``."""
    kinds = list(dict.fromkeys(opts.kinds))
    for k in kinds:
        if k not in BEDGRAPH_KINDS:
            raise UsageError(
                f"unknown bedGraph kind {k!r} (choose from {', '.join(BEDGRAPH_KINDS)})"
            )
    if "denoised" in kinds and imp.keep_observed:
        raise UsageError(
            f"{imp.path} was imputed with --keep-observed: denoised values of observed entries are "
            "not stored; rerun cpgformer impute without it"
        )
    contig = chrom_names(chroms, opts.chrom_style)
    out.mkdir(parents=True, exist_ok=True)
    descriptions = {
        "imputed": "cpgformer: observed calls kept, model P(methylated) where missing",
        "denoised": "cpgformer: model P(methylated) for every CpG",
        "observed": "observed methylated fraction mc/cov",
    }
    names = {k: cell_file_names(imp.cells, f".{k}.bedGraph.gz") for k in kinds}
    targets = [out / names[k][i] for i in range(imp.n_cells) for k in kinds]
    check_files_in(out, [t.name for t in targets], overwrite=opts.overwrite)
    remove_leftovers_in(out, [t.name for t in targets])
    begin_files_in(out, "export", [t.name for t in targets])
    written: list[Path] = []
    n_chunks = sum(len(imp.chunks(c)) for c in chroms)
    groups = _groups(imp.n_cells, len(kinds), opts.max_open_files)
    with bar(n_chunks * len(groups), desc="bedGraph", unit="chunk") as progress_bar:
        for group in groups:
            writers = {
                (i, k): BedGraphWriter(
                    out / names[k][i],
                    f"{imp.cells[i]} {k}",
                    descriptions[k],
                    percent=opts.percent,
                    interval=opts.interval,
                )
                for i in group
                for k in kinds
            }
            try:
                for c in chroms:
                    pos = np.asarray(imp.positions(c))
                    for a, b in imp.chunks(c):
                        values = _kind_values(imp, c, a, b, kinds)
                        for (i, k), w in writers.items():
                            w.write(contig[c], pos[a:b], values[k][:, i])
                        progress_bar.update(1)
                written += [w.close() for w in writers.values()]
            except BaseException:
                for w in writers.values():
                    w.abort()
                raise
    log.info("wrote %d bedGraph files to %s", len(written), out)
    return written


def _kind_values(
    imp: ImputedStore, chrom: str, a: int, b: int, kinds: Sequence[str]
) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    if "denoised" in kinds or "imputed" in kinds:
        v = imp.values(chrom, a, b)
        if "denoised" in kinds:
            out["denoised"] = v.copy()
        if "imputed" in kinds:
            obs = imp.observed_values(chrom, a, b)
            seen = ~np.isnan(obs)
            v[seen] = obs[seen]
            out["imputed"] = v
    if "observed" in kinds:
        mc, cov = imp.counts(chrom, a, b)
        with np.errstate(divide="ignore", invalid="ignore"):
            out["observed"] = np.where(cov > 0, mc / np.maximum(cov, 1), np.nan)
    return out


def allc_contexts(reference: Any, chrom: str, starts: np.ndarray) -> np.ndarray:
    """3-mer contexts ``[start, start + 3)`` (e.g. ``CGT``) from the reference, upper case."""
    from cpgformer.codes import NUCLEOTIDE_LETTERS

    codes = reference.windows(chrom, np.asarray(starts, dtype=np.int64) + 1, 3)
    letters = np.frombuffer(NUCLEOTIDE_LETTERS.encode(), dtype=np.uint8)[codes.astype(np.int64)]
    return np.ascontiguousarray(letters).view("S3").ravel().astype("U3")


def write_allc(
    imp: ImputedStore, out: Path, chroms: Sequence[str], opts: ExportOptions
) -> list[Path]:
    """Per-cell ``<cell>.allc.tsv.gz`` (BGZF) + ``.tbi`` in the directory ``out``.

    Observed entries (cov > 0): their reads, flag 1. Missing entries: cov 1 and mc = [p >= 0.5],
    or with ``allc_scale`` S: cov S and mc = round(p S); flag 0.
    """
    scale = opts.allc_scale
    if scale is not None:
        if scale < 1:
            raise UsageError(f"--allc-scale must be >= 1, got {scale}")
        log.warning(
            "--allc-scale %d: imputed entries get cov %d; count-based tools (ALLCools posterior "
            "fractions, MethylVI) will read that as real sequencing depth",
            scale,
            scale,
        )
    fasta = opts.fasta or imp.fasta_path
    reference = None
    if fasta:
        from cpgformer.io.fasta import Reference

        reference = Reference(fasta)
    elif not opts.allow_cgn:
        raise UsageError(
            f"{imp.path}: no reference FASTA for the ALLC context column (the store was prepared "
            "without one); give --fasta GENOME.fa so contexts are real (CGA/CGC/CGG/CGT), or "
            "--allow-cgn to write the placeholder CGN, which ALLCools' CG filter drops"
        )
    else:
        log.warning(
            "no FASTA: every ALLC row gets the context CGN, which ALLCools' CG context filter "
            "(CGA, CGC, CGG, CGT) drops; give --fasta for real contexts"
        )
    contig = chrom_names(chroms, opts.chrom_style)
    n_unknown = 0
    out.mkdir(parents=True, exist_ok=True)
    names = cell_file_names(imp.cells, ".allc.tsv.gz")
    check_files_in(out, names + [n + ".tbi" for n in names], overwrite=opts.overwrite)
    remove_leftovers_in(out, names + [n + ".tbi" for n in names])
    begin_files_in(out, "export", names + [n + ".tbi" for n in names])
    files: list[Path] = []
    n_chunks = sum(len(imp.chunks(c)) for c in chroms)
    groups = _groups(imp.n_cells, 2, opts.max_open_files)
    with bar(n_chunks * len(groups), desc="ALLC", unit="chunk") as progress_bar:
        for group in groups:
            writers = {i: AllcWriter(out / names[i]) for i in group}
            try:
                for c in chroms:
                    pos = np.asarray(imp.positions(c))
                    for a, b in imp.chunks(c):
                        ctx: np.ndarray | str = "CGN"
                        if reference is not None:
                            ctx = allc_contexts(reference, c, pos[a:b])
                            if group.start == 0:
                                n_unknown += int(
                                    (~np.isin(ctx, sorted(ALLCOOLS_CG_CONTEXTS))).sum()
                                )
                        p = imp.values(c, a, b)
                        mc, cov = imp.counts(c, a, b)
                        seen = cov > 0
                        if scale is None:
                            imc = (p >= 0.5).astype(np.int32)
                            icov = np.ones_like(imc)
                        else:
                            imc = np.rint(p * scale).astype(np.int32)
                            icov = np.full_like(imc, scale)
                        mc_all = np.where(seen, mc, imc)
                        cov_all = np.where(seen, cov, icov)
                        flag = seen.astype(np.int8)
                        for i, w in writers.items():
                            w.write(
                                contig[c], pos[a:b], ctx, mc_all[:, i], cov_all[:, i], flag[:, i]
                            )
                        progress_bar.update(1)
                files += [w.close() for w in writers.values()]
            except BaseException:
                for w in writers.values():
                    w.abort()
                raise
    if n_unknown:
        log.warning(
            "%d CpG(s) have a context other than CGA/CGC/CGG/CGT in %s (N or the contig end "
            "after the G); ALLCools' CG filter drops them",
            n_unknown,
            fasta,
        )
    log.info("wrote %d ALLC files (+ tabix indexes) to %s", len(files), out)
    return files


# --------------------------------------------------------------------------------------------------
# regions


def fixed_bins(
    imp: ImputedStore, bin_size: int, chroms: Sequence[str], chrom_style: str = "as-is"
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


def region_names(chrom: Any, start: Any, end: Any) -> pd.Series:
    """``chrom:start-end`` with a **1-based** start (the syntax genome browsers and samtools read)
    for 0-based half-open ``[start, end)``."""
    return (
        pd.Series(np.asarray(chrom, dtype=object)).astype(str)
        + ":"
        + pd.Series(np.asarray(start, dtype=np.int64) + 1).astype(str)
        + "-"
        + pd.Series(np.asarray(end, dtype=np.int64)).astype(str)
    )


def _match_chrom(name: str, available: set[str]) -> str | None:
    if name in available:
        return name
    alt = name[3:] if name.startswith("chr") else "chr" + name
    return alt if alt in available else None


def aggregate_regions(
    imp: ImputedStore,
    regions: pd.DataFrame,
    *,
    values: str = "imputed",
    chroms: Sequence[str] | None = None,
    region_batch: int = 4096,
    chrom_style: str = "as-is",
) -> Any:
    """cells x regions AnnData (formats.md 7.4).

    A CpG belongs to a region when its start lies in ``[region start, region end)``. Layers: ``mc``,
    ``cov`` (summed reads), ``frac`` = mc/cov (NaN where cov = 0), ``meth_sites``/``total_sites``
    (observed sites with label 1 / with a label), ``imp_mean``/``imp_var`` (mean and population
    variance of the probabilities over the region's CpGs; ``values`` "imputed" keeps observed calls,
    "denoised" uses the model for every entry; NaN for regions without CpGs); ``X`` = ``imp_mean``.
    Regions on contigs that were not imputed are left out (logged).
    """
    import anndata as ad

    if values not in ("imputed", "denoised"):
        raise UsageError(f"region values must be 'imputed' or 'denoised', got {values!r}")
    if values == "denoised" and imp.keep_observed:
        raise UsageError(f"{imp.path} was imputed with --keep-observed: no denoised values")
    chroms = _chroms(imp, chroms)
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
    regions = regions.assign(store_chrom=mapped)[mapped.notna()].reset_index(drop=True)
    n_reg, n_cells = len(regions), imp.n_cells
    sum_p = np.zeros((n_reg, n_cells))
    sum_p2 = np.zeros((n_reg, n_cells))
    mc_sum = np.zeros((n_reg, n_cells), dtype=np.int64)
    cov_sum = np.zeros((n_reg, n_cells), dtype=np.int64)
    meth_sites = np.zeros((n_reg, n_cells), dtype=np.int64)
    total_sites = np.zeros((n_reg, n_cells), dtype=np.int64)
    n_cpg = np.zeros(n_reg, dtype=np.int64)
    for c in chroms:
        idx = np.flatnonzero(regions["store_chrom"].to_numpy() == c)
        if idx.size == 0:
            continue
        pos = np.asarray(imp.positions(c), dtype=np.int64)
        i0 = np.searchsorted(pos, regions["start"].to_numpy()[idx], "left")
        i1 = np.searchsorted(pos, regions["end"].to_numpy()[idx], "left")
        n_cpg[idx] = i1 - i0
        # probabilities: per chunk prefix sums over sites
        for a, b in imp.chunks(c):
            hit = (i0 < b) & (i1 > a)
            if not hit.any():
                continue
            p = imp.values(c, a, b).astype(np.float64)
            if values == "imputed":
                obs = imp.observed_values(c, a, b)
                seen = ~np.isnan(obs)
                p[seen] = obs[seen]
            cs = np.zeros((b - a + 1, n_cells))
            np.cumsum(p, axis=0, out=cs[1:])
            cs2 = np.zeros((b - a + 1, n_cells))
            np.cumsum(p * p, axis=0, out=cs2[1:])
            lo = np.clip(i0[hit], a, b) - a
            hi = np.clip(i1[hit], a, b) - a
            sum_p[idx[hit]] += cs[hi] - cs[lo]
            sum_p2[idx[hit]] += cs2[hi] - cs2[lo]
        # observed calls: the nnz ranges of every region, in batches of regions
        indptr, cell, mc, cov, label = imp.csr(c)
        indptr = np.asarray(indptr)
        for r0 in range(0, idx.size, region_batch):
            sel = slice(r0, r0 + region_batch)
            k0, k1 = indptr[i0[sel]], indptr[i1[sel]]
            lengths = k1 - k0
            total = int(lengths.sum())
            if total == 0:
                continue
            region_of = np.repeat(np.arange(lengths.size), lengths)
            starts_rep = np.repeat(k0 - np.cumsum(lengths) + lengths, lengths)
            nnz = starts_rep + np.arange(total)
            cl = np.asarray(cell[nnz], dtype=np.int64)
            key = region_of * n_cells + cl
            size = lengths.size * n_cells
            lab = np.asarray(label[nnz])
            target = idx[sel]

            def acc(weights: np.ndarray, key: np.ndarray = key, size: int = size) -> np.ndarray:
                counts = np.bincount(key, weights=weights, minlength=size)
                return np.rint(counts).astype(np.int64).reshape(-1, n_cells)

            mc_sum[target] += acc(np.asarray(mc[nnz], dtype=np.float64))
            cov_sum[target] += acc(np.asarray(cov[nnz], dtype=np.float64))
            meth_sites[target] += acc((lab == 1).astype(np.float64))
            total_sites[target] += acc((lab >= 0).astype(np.float64))
    with np.errstate(divide="ignore", invalid="ignore"):
        denom = np.where(n_cpg > 0, n_cpg, np.nan)[:, None]
        imp_mean = sum_p / denom
        imp_var = np.maximum(sum_p2 / denom - imp_mean**2, 0.0)
        frac = np.where(cov_sum > 0, mc_sum / np.maximum(cov_sum, 1), np.nan)
    written = chrom_names(chroms, chrom_style)
    out_chrom = regions["store_chrom"].astype(str).map(written)
    var = pd.DataFrame(
        {
            "chrom": pd.Categorical(out_chrom, categories=[written[c] for c in chroms]),
            "start": regions["start"].to_numpy(np.int64),
            "end": regions["end"].to_numpy(np.int64),
            "name": regions["name"].astype(str).to_numpy(),
            "n_cpg": n_cpg,
        }
    )
    var.index = pd.Index(
        region_names(out_chrom, var["start"], var["end"]).to_numpy(), name="region"
    )
    layers = {
        "mc": sp.csr_matrix(mc_sum.T.astype(np.int32)),
        "cov": sp.csr_matrix(cov_sum.T.astype(np.int32)),
        "frac": frac.T.astype(np.float32),
        "meth_sites": meth_sites.T.astype(np.int32),
        "total_sites": total_sites.T.astype(np.int32),
        "imp_mean": imp_mean.T.astype(np.float32),
        "imp_var": imp_var.T.astype(np.float32),
    }
    adata = ad.AnnData(
        X=layers["imp_mean"].copy(),
        obs=_obs(imp),
        var=var,
        layers=layers,
        uns={
            "cpgformer": _uns(
                imp,
                region_values=values,
                region_rule="CpG start in [start, end)",
                layers=dict(REGION_LAYER_MEANINGS),
                chrom_style=chrom_style,
            )
        },
    )
    if not adata.var_names.is_unique:
        adata.var_names_make_unique()
    return adata
