"""``cpgformer export IMPUTED -o OUT --to {h5ad,bedgraph,allc,regions}``."""

from __future__ import annotations

import argparse
import sys

from cpgformer.export import TARGETS, ExportOptions, export
from cpgformer.options import add_options, from_args

NAME = "export"
HELP = "write an imputed store as AnnData (.h5ad), per-cell bedGraph or ALLC files, or regions"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("imputed", help="imputed store written by cpgformer impute")
    parser.add_argument(
        "-o", "--output", required=True, help="file (h5ad, regions) or directory (bedgraph, allc)"
    )
    parser.add_argument("--to", choices=TARGETS, default="h5ad", help="output kind (h5ad)")
    add_options(parser, ExportOptions)


def run(args: argparse.Namespace) -> int:
    files = export(args.imputed, args.output, args.to, from_args(ExportOptions, args))
    sys.stdout.write(f"wrote {len(files)} file(s) to {args.output}\n")
    return 0
