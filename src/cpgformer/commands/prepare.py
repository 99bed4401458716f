"""``cpgformer prepare``: per-cell call files (+ optional FASTA) -> dataset store."""

from __future__ import annotations

import argparse
import json
import sys

from cpgformer.io.npz import read_names_file
from cpgformer.options import add_options, from_args
from cpgformer.prepare import PrepareOptions, prepare

NAME = "prepare"
HELP = "build a dataset store from per-cell methylation call files (one file = one cell)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
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
        metavar="LIST",
        help="file listing input files, one path per line (for more files than a command line "
        "holds; added after FILE arguments)",
    )
    parser.add_argument("-o", "--output", required=True, help="store directory to create")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing store")
    parser.add_argument(
        "--json", action="store_true", help="print a JSON summary of the new store on stdout"
    )
    add_options(parser, PrepareOptions)


def run(args: argparse.Namespace) -> int:
    inputs = list(args.inputs)
    if args.inputs_from:
        inputs += read_names_file(args.inputs_from)
    opts = from_args(PrepareOptions, args)
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
