"""``cpgformer export-npz``: store -> the original CpG Transformer X.npz / y.npz / pos.npz triple."""

from __future__ import annotations

import argparse
import sys

from cpgformer.io.npz import ExportNpzOptions, export_npz
from cpgformer.options import add_options, from_args

NAME = "export-npz"
HELP = "write a store as the original CpG Transformer X.npz/y.npz/pos.npz triple (+ cells.txt)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("store", help="dataset store (from cpgformer prepare)")
    parser.add_argument("-o", "--output", required=True, help="directory to create")
    add_options(parser, ExportNpzOptions)


def run(args: argparse.Namespace) -> int:
    options = from_args(ExportNpzOptions, args)
    options.check()
    summary = export_npz(args.store, args.output, **vars(options))
    files = "X.npz, y.npz, pos.npz" if summary["X"] else "y.npz, pos.npz (no genome)"
    sys.stdout.write(
        f"{args.output}: {files}, cells.txt; {summary['chromosomes']} chromosomes, "
        f"{summary['values']} values\n"
    )
    return 0
