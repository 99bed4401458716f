"""``cpgformer export-npz``: store -> the original CpG Transformer X.npz / y.npz / pos.npz triple."""

from __future__ import annotations

import argparse
import sys

from cpgformer.io.npz import export_npz

NAME = "export-npz"
HELP = "write a store as the original CpG Transformer X.npz/y.npz/pos.npz triple (+ cells.txt)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("store", help="dataset store (from cpgformer prepare)")
    parser.add_argument("-o", "--output", required=True, help="directory to create")
    parser.add_argument(
        "--values",
        choices=("binary", "continuous"),
        default=None,
        help="y.npz as int8 -1/0/1 labels or float32 methylated fractions "
        "(default: as imported, else binary)",
    )
    genome = parser.add_mutually_exclusive_group()
    genome.add_argument(
        "--fasta",
        default=None,
        help="reference FASTA to encode X.npz from (default: the store's, if any)",
    )
    genome.add_argument(
        "--genome-npz", default=None, help="an X.npz to copy the genome from (default: none)"
    )
    genome.add_argument(
        "--no-genome", action="store_true", help="write y.npz and pos.npz only (no X.npz)"
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an existing directory")


def run(args: argparse.Namespace) -> int:
    summary = export_npz(
        args.store,
        args.output,
        values=args.values,
        genome_npz=args.genome_npz,
        fasta=args.fasta,
        with_genome=not args.no_genome,
        overwrite=args.overwrite,
    )
    files = "X.npz, y.npz, pos.npz" if summary["X"] else "y.npz, pos.npz (no genome)"
    sys.stdout.write(
        f"{args.output}: {files}, cells.txt; {summary['chromosomes']} chromosomes, "
        f"{summary['values']} values\n"
    )
    return 0
