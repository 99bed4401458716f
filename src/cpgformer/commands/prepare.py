"""``cpgformer prepare``: per-cell call files (+ optional FASTA) -> dataset store."""

from __future__ import annotations

import argparse
import sys

NAME = "prepare"
HELP = "build a dataset store from per-cell methylation call files (one file = one cell)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from cpgformer.prepare import BINARIZE_RULES, CHROM_NAME_MODES

    parser.add_argument(
        "inputs",
        nargs="*",
        metavar="FILE",
        help="call files, one per cell (gzip detected by content); or one directory holding an "
        "X.npz/y.npz/pos.npz triple or MethSCAn's prepared matrices (<chrom>.npz + "
        "column_header.txt)",
    )
    parser.add_argument(
        "--inputs-from",
        default=None,
        metavar="LIST",
        help="file listing input files, one path per line (for more files than a command line holds)",
    )
    parser.add_argument("-o", "--output", required=True, help="store directory to create")
    parser.add_argument(
        "--input-format",
        default=None,
        metavar="FORMAT",
        help="bismark-cov, bismark-zero-cov, bismark-bedgraph, bismark-cpg-report, "
        "bismark-merged-cov, methyldackel, methyldackel-fraction, methyldackel-methylkit, allc, "
        "deepcpg, deepcpg-bedgraph, methrix, per-c-state, percent-rate, scage, tsv (with "
        "--columns), npz (X/y/pos triple) or methscan (MethSCAn prepare directory) (default: "
        "detected per file from its content and name)",
    )
    parser.add_argument(
        "--columns",
        default=None,
        metavar="SPEC",
        help="custom column spec for delimited files, e.g. '1:2:4:5c:,:1' or "
        "'chrom=1:pos=2:meth=3:unmeth=4:sep=;:header=1' (keys chrom pos meth unmeth cov frac "
        "percent state strand context base sep header pooled; see docs/formats-supported.md; "
        "implies --input-format tsv; default: none, the layout is detected)",
    )
    parser.add_argument(
        "--fasta",
        default=None,
        help="reference FASTA: pool strands exactly and drop rows that are not CpGs (default: "
        "none; unstranded per-C rows then stay at their own position)",
    )
    parser.add_argument(
        "--min-valid-frac",
        type=float,
        default=0.95,
        help="with --fasta: fail when a file has a smaller fraction of valid CpG calls (0.95)",
    )
    parser.add_argument(
        "--chrom-names",
        choices=CHROM_NAME_MODES,
        default="keep",
        help="contig names: keep (as in the files), add-chr (1 -> chr1, MT -> chrM) or strip-chr "
        "(chr1 -> 1, chrM -> MT)",
    )
    parser.add_argument(
        "--contig-aliases",
        choices=("unify", "refuse"),
        default="unify",
        help="cells naming one contig differently (19/chr19, MT/chrM): unify to the spelling most "
        "cells use, with a warning, or refuse (unify)",
    )
    parser.add_argument(
        "--keep-contigs",
        default=None,
        metavar="CLASSES",
        help="keep spike-in (lambda, pUC19, phiX) and/or unplaced (chrUn_*, *_random, *_alt) "
        "contigs in the store and in training: spike-in, unplaced or all (default: leave them "
        "out, reported)",
    )
    parser.add_argument(
        "--binarize",
        choices=BINARIZE_RULES,
        default="threshold",
        help="label rule: threshold (mc/cov >= --threshold, ties methylated), drop-mixed (any "
        "mixed call excluded), majority (ties excluded) (threshold)",
    )
    parser.add_argument(
        "--threshold", type=float, default=0.5, help="methylated fraction threshold (0.5)"
    )
    parser.add_argument(
        "--min-cov", type=int, default=1, help="calls with fewer reads get no label (1)"
    )
    parser.add_argument(
        "--pair-adjacent",
        action="store_true",
        help="without --fasta: merge an unstranded call at x+1 into one at x within a cell "
        "(wrong inside CGCG runs)",
    )
    parser.add_argument(
        "--cell-names",
        default=None,
        metavar="FILE",
        help="cell names, one per line, in input order (default: file names)",
    )
    parser.add_argument(
        "--spill-mb",
        type=int,
        default=128,
        help="memory buffer for pooled calls before spilling to disk, MiB (128)",
    )
    parser.add_argument(
        "--jobs",
        type=int,
        default=1,
        help="processes reading files in parallel (1); memory grows by about one file per job",
    )
    parser.add_argument(
        "--skip-empty",
        action="store_true",
        help="leave out cells whose file holds no call (empty, header only, or nothing left "
        "after filtering) and list them in the manifest (default: such a file is an error)",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an existing store")
    parser.add_argument(
        "--json", action="store_true", help="print a JSON summary of the new store on stdout"
    )


def run(args: argparse.Namespace) -> int:
    import json

    from cpgformer.io.npz import read_names_file
    from cpgformer.prepare import PrepareOptions, prepare

    if args.input_format not in (None, "npz", "methscan"):
        from cpgformer.errors import UsageError
        from cpgformer.io.readers import FORMATS

        if args.input_format not in FORMATS:
            raise UsageError(
                f"unknown --input-format {args.input_format!r} (known: {', '.join(FORMATS)}, npz, "
                "methscan)"
            )
    names = read_names_file(args.cell_names) if args.cell_names else None
    opts = PrepareOptions(
        input_format=args.input_format,
        columns=args.columns,
        fasta=args.fasta,
        min_valid_frac=args.min_valid_frac,
        chrom_names=args.chrom_names,
        binarize=args.binarize,
        threshold=args.threshold,
        min_cov=args.min_cov,
        pair_adjacent=args.pair_adjacent,
        cell_names=names,
        spill_bytes=args.spill_mb << 20,
        jobs=args.jobs,
        skip_empty=args.skip_empty,
        contig_aliases=args.contig_aliases,
        keep_contigs=args.keep_contigs,
    )
    inputs = list(args.inputs)
    if args.inputs_from:
        from cpgformer.io.npz import read_names_file

        inputs += read_names_file(args.inputs_from)
    manifest = prepare(inputs, args.output, opts, overwrite=args.overwrite)
    summary = {
        "store": args.output,
        "n_cells": manifest["n_cells"],
        "n_chromosomes": len(manifest["chromosomes"]),
        "n_sites": manifest["n_sites"],
        "n_calls": manifest["n_calls"],
        "fingerprint": manifest["fingerprint"],
    }
    if args.json:
        sys.stdout.write(json.dumps(summary, indent=1) + "\n")
    else:
        sys.stdout.write(
            f"{args.output}: {summary['n_cells']} cells, {summary['n_chromosomes']} chromosomes, "
            f"{summary['n_sites']} sites, {summary['n_calls']} calls\n"
        )
    return 0
