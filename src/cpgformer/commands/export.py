"""``cpgformer export IMPUTED -o OUT --to {h5ad,bedgraph,allc,regions}``."""

from __future__ import annotations

import argparse
import sys

from cpgformer.export import (
    BEDGRAPH_KINDS,
    CHROM_STYLES,
    COMPRESSIONS,
    TARGETS,
    ExportOptions,
    export,
)

NAME = "export"
HELP = "write an imputed store as AnnData (.h5ad), per-cell bedGraph or ALLC files, or regions"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("imputed", help="imputed store written by cpgformer impute")
    parser.add_argument(
        "-o", "--output", required=True, help="file (h5ad, regions) or directory (bedgraph, allc)"
    )
    parser.add_argument("--to", choices=TARGETS, default="h5ad", help="output kind")
    parser.add_argument(
        "--chroms", nargs="+", help="export only these chromosomes (default: all imputed)"
    )
    parser.add_argument(
        "--chrom-style",
        choices=CHROM_STYLES,
        default="as-is",
        help="contig names written: as-is (the store's), ucsc (chr1, chrM) or ensembl (1, MT)",
    )
    g = parser.add_argument_group("bedgraph")
    g.add_argument(
        "--kinds",
        nargs="+",
        choices=BEDGRAPH_KINDS,
        default=["imputed"],
        help="imputed: observed calls kept, model where missing; denoised: model everywhere; "
        "observed: mc/cov of observed entries only",
    )
    g.add_argument("--percent", action="store_true", help="values 0-100 instead of 0-1")
    g.add_argument(
        "--interval",
        choices=("cpg", "c"),
        default="cpg",
        help="cpg: [start, start+2) per CpG; c: [start, start+1)",
    )
    g = parser.add_argument_group("allc")
    g.add_argument(
        "--allc-scale",
        type=int,
        help="write imputed entries as cov S, mc round(p S) (default: cov 1, mc = p >= 0.5)",
    )
    g.add_argument(
        "--fasta",
        help="reference for the context column (CGA/CGC/CGG/CGT) (default: the FASTA the store "
        "was prepared with; without one the export stops unless --allow-cgn)",
    )
    g.add_argument(
        "--allow-cgn",
        action="store_true",
        help="without a FASTA, write the placeholder context CGN (ALLCools' CG filter drops "
        "such rows)",
    )
    g = parser.add_argument_group("regions")
    g.add_argument(
        "--regions",
        help="BED file of regions (0-based half-open; 4th column = name, default name "
        "chrom:start-end with a 1-based start)",
    )
    g.add_argument(
        "--bin-size", type=int, help="fixed bins of this many bp instead of a BED (default: none)"
    )
    g.add_argument(
        "--region-values",
        choices=("imputed", "denoised"),
        default="imputed",
        help="probabilities averaged into imp_mean/imp_var",
    )
    g = parser.add_argument_group("h5ad")
    g.add_argument("--float16", action="store_true", help="dense layers as float16")
    g.add_argument("--no-uncertainty", action="store_true", help="omit the uncertainty layer")
    g.add_argument(
        "--compression",
        choices=COMPRESSIONS,
        default="gzip",
        help="HDF5 compression of the .h5ad (h5ad and regions)",
    )
    parser.add_argument(
        "--max-open-files", type=int, default=128, help="per-cell files open at once"
    )
    parser.add_argument("--overwrite", action="store_true", help="replace existing outputs")


def run(args: argparse.Namespace) -> int:
    options = ExportOptions(
        chroms=args.chroms,
        kinds=args.kinds,
        percent=args.percent,
        interval=args.interval,
        allc_scale=args.allc_scale,
        fasta=args.fasta,
        regions=args.regions,
        bin_size=args.bin_size,
        region_values=args.region_values,
        float16=args.float16,
        uncertainty=not args.no_uncertainty,
        max_open_files=args.max_open_files,
        overwrite=args.overwrite,
        chrom_style=args.chrom_style,
        compression=args.compression,
        allow_cgn=args.allow_cgn,
    )
    files = export(args.imputed, args.output, args.to, options)
    sys.stdout.write(f"wrote {len(files)} file(s) to {args.output}\n")
    return 0
