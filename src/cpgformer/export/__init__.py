"""Export an imputed store to the files downstream tools read.

* ``h5ad``: AnnData, obs = cells (index = cell names), var = CpG sites (index ``chrom:start-end``,
  the CpG as a 1-based closed interval; columns ``chrom``, 0-based ``start``, ``end``,
  ``n_cells_obs``); ``X`` and every layer are described in :data:`LAYER_MEANINGS` (also stored in
  ``uns["cpgformer"]["layers"]``). Small outputs are built in memory; big ones are written in
  chunks with bounded memory and open in anndata's backed mode (:mod:`.cpg_anndata`).
* ``bedgraph``: per cell ``<cell>.<kind>.bedGraph.gz`` (kinds imputed / denoised / observed).
* ``allc``: per cell ``<cell>.allc.tsv.gz`` + ``.tbi`` (7 columns; observed entries keep their reads;
  contexts from the reference, so ALLCools' CG filter {CGA, CGC, CGG, CGT} keeps them).
* ``regions``: cells x regions AnnData from a BED file or fixed bins (index ``chrom:start-end``,
  1-based as genome browsers read it), summed block by block (:class:`.regions.RegionSums`).

Every target takes ``chrom_style``: ``as-is`` (the store's contig names), ``ucsc`` (``chr1``,
``chrM``) or ``ensembl`` (``1``, ``MT``). Everything streams over the store's chunks.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cpgformer.errors import UsageError
from cpgformer.export.cpg_anndata import (
    COMPRESSIONS,
    LAYER_MEANINGS,
    LAYOUTS,
    site_var,
    to_anndata,
    write_chunked_h5ad,
    write_cpg_h5ad,
    write_h5ad,
)
from cpgformer.export.naming import (
    CHROM_STYLES,
    chrom_names,
    region_names,
    store_chroms,
    style_chrom,
)
from cpgformer.export.regions import (
    REGION_LAYER_MEANINGS,
    RegionSums,
    aggregate_regions,
    fixed_bins,
    match_regions,
)
from cpgformer.export.tracks import (
    ALLCOOLS_CG_CONTEXTS,
    BEDGRAPH_KINDS,
    allc_contexts,
    write_allc,
    write_bedgraphs,
)
from cpgformer.impute import ImputedStore, open_imputed
from cpgformer.io.writers import read_bed_regions
from cpgformer.options import option
from cpgformer.utils.locks import output_lock
from cpgformer.utils.outputs import check_output, record_files_in, remove_leftovers

TARGETS = ("h5ad", "bedgraph", "allc", "regions")

__all__ = [
    "ALLCOOLS_CG_CONTEXTS",
    "BEDGRAPH_KINDS",
    "CHROM_STYLES",
    "COMPRESSIONS",
    "LAYER_MEANINGS",
    "LAYOUTS",
    "REGION_LAYER_MEANINGS",
    "TARGETS",
    "ExportOptions",
    "RegionSums",
    "aggregate_regions",
    "allc_contexts",
    "chrom_names",
    "export",
    "fixed_bins",
    "match_regions",
    "region_names",
    "site_var",
    "style_chrom",
    "to_anndata",
    "write_allc",
    "write_bedgraphs",
    "write_chunked_h5ad",
]


@dataclass
class ExportOptions:
    """All parameters of :func:`export` (the ``export`` command's flags are made from these)."""

    chroms: Sequence[str] | None = option(
        None, "export only these chromosomes", shown="all imputed", metavar="CHROM", nargs="+"
    )
    chrom_style: str = option(
        "as-is",
        "contig names written: as-is (the store's), ucsc (chr1, chrM) or ensembl (1, MT)",
        choices=CHROM_STYLES,
    )
    overwrite: bool = option(False, "replace existing outputs")
    max_open_files: int = option(128, "per-cell files open at once (bedgraph, allc)")
    kinds: Sequence[str] = option(
        ("imputed",),
        "imputed: observed calls kept, model where missing; denoised: model everywhere; "
        "observed: mc/cov of observed entries only",
        choices=BEDGRAPH_KINDS,
        nargs="+",
        group="bedgraph",
    )
    percent: bool = option(False, "values 0-100 instead of 0-1", group="bedgraph")
    interval: str = option(
        "cpg",
        "cpg: [start, start+2) per CpG; c: [start, start+1)",
        choices=("cpg", "c"),
        group="bedgraph",
    )
    allc_scale: int | None = option(
        None,
        "write imputed entries as cov S, mc round(p S)",
        metavar="S",
        group="allc",
        shown="cov 1, mc = p >= 0.5",
    )
    fasta: str | None = option(
        None,
        "reference for the context column (CGA/CGC/CGG/CGT); without one the export stops "
        "unless --allow-cgn",
        shown="the FASTA the store was prepared with",
        group="allc",
    )
    allow_cgn: bool = option(
        False,
        "without a FASTA, write the placeholder context CGN (ALLCools' CG filter drops such rows)",
        group="allc",
    )
    regions: str | None = option(
        None,
        "BED file of regions (0-based half-open; 4th column = name, default name chrom:start-end "
        "with a 1-based start)",
        group="regions",
    )
    bin_size: int | None = option(
        None, "fixed bins of this many bp instead of a BED", group="regions"
    )
    region_values: str = option(
        "imputed",
        "probabilities averaged into imp_mean/imp_var",
        choices=("imputed", "denoised"),
        group="regions",
    )
    layout: str = option(
        "auto",
        "memory: build the AnnData in memory; chunked: write it in pieces with bounded memory "
        "(opens in anndata's backed mode); auto: memory for small outputs",
        choices=LAYOUTS,
        group="h5ad",
    )
    dense_layers: bool = option(
        False,
        "chunked layout: also write the dense imputed and uncertainty layers (anndata's backed "
        "mode loads layers into memory)",
        group="h5ad",
    )
    float16: bool = option(False, "dense matrices as float16", group="h5ad")
    uncertainty: bool = option(
        True, "write the uncertainty layer (--no-uncertainty: omit it)", group="h5ad"
    )
    compression: str = option(
        "gzip", "HDF5 compression of the .h5ad (h5ad and regions)", choices=COMPRESSIONS,
        group="h5ad",
    )  # fmt: skip


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
    chroms = store_chroms(imp, opts.chroms)
    chrom_names(chroms, opts.chrom_style)  # checked before any work
    if opts.compression not in COMPRESSIONS:
        raise UsageError(f"--compression must be one of {', '.join(COMPRESSIONS)}")
    inputs = [imp.path, opts.regions, opts.fasta]
    if to in ("h5ad", "regions"):
        check_output(out, "h5ad", overwrite=opts.overwrite, inputs=inputs)
        with output_lock(out):
            check_output(out, "h5ad", overwrite=opts.overwrite, inputs=inputs)
            remove_leftovers(out)
            return [_export_anndata(imp, out, to, chroms, opts)]
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


def _export_anndata(
    imp: ImputedStore, out: Path, to: str, chroms: list[str], opts: ExportOptions
) -> Path:
    if to == "h5ad":
        return write_cpg_h5ad(imp, out, chroms, opts)
    if (opts.regions is None) == (opts.bin_size is None):
        raise UsageError("--to regions needs exactly one of --regions BED or --bin-size")
    if opts.regions is not None:
        table = read_bed_regions(opts.regions)
    else:
        table = fixed_bins(imp, int(opts.bin_size), chroms, opts.chrom_style)  # type: ignore[arg-type]
    adata = aggregate_regions(
        imp, table, values=opts.region_values, chroms=chroms, chrom_style=opts.chrom_style
    )
    return write_h5ad(adata, out, opts.compression)
