"""``cpgformer simulate``: single-cell methylomes with known truth, as Bismark coverage files."""

from __future__ import annotations

import argparse
import logging
import sys

from cpgformer.errors import UsageError

NAME = "simulate"
HELP = "simulate single-cell methylomes with known truth (Bismark .cov.gz per cell + truth.npz)"

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from cpgformer.data.simulate import PROTOCOL_NAMES, SimulationConfig

    defaults = SimulationConfig()
    genome = parser.add_mutually_exclusive_group(required=True)
    genome.add_argument("--fasta", help="reference FASTA (plain or gzip) to take CpG sites from")
    genome.add_argument(
        "--genome-length",
        type=int,
        help="length in bp of a synthetic genome with CpG-island-like regions (written as genome.fa)",
    )
    parser.add_argument("-o", "--output", required=True, help="output directory (must not exist)")
    parser.add_argument("--cells", type=int, default=20, help="number of cells (default 20)")
    parser.add_argument(
        "--cell-types", type=int, default=2, help="number of cell types (default 2)"
    )
    parser.add_argument(
        "--protocol",
        choices=PROTOCOL_NAMES,
        default="scbs",
        help="read sampling: scbs (100-300 bp fragments), scrrbs (MspI fragments), snmc (sparse)",
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed (same seed, same files)")
    parser.add_argument(
        "--coverage",
        type=float,
        help="fraction of CpGs observed in a median cell (scrrbs: capture probability of a fragment "
        "strand); default depends on the protocol",
    )
    parser.add_argument(
        "--qc-failures",
        type=int,
        default=0,
        help="number of QC-failure cells (alternately low global methylation / no neighbour correlation)",
    )
    parser.add_argument(
        "--dense-enrichment",
        type=float,
        default=defaults.dense_enrichment,
        help="fragment rate near CpG-dense regions relative to elsewhere (promoter-enriched data: ~8)",
    )
    parser.add_argument(
        "--non-conversion",
        type=float,
        default=defaults.non_conversion,
        help=f"probability that a read of an unmethylated C is called methylated (default {defaults.non_conversion})",
    )
    parser.add_argument(
        "--correlation-length",
        type=float,
        default=defaults.correlation_length,
        help=f"bp scale of the neighbour correlation (default {defaults.correlation_length:g})",
    )
    parser.add_argument(
        "--store",
        help="also write the observed calls as a dataset store here (same as prepare on the files; "
        "default: no store)",
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="replace the output directory if it exists"
    )


def run(args: argparse.Namespace) -> int:
    from cpgformer.data.simulate import simulate_to_directory

    if args.cells < 1:
        raise UsageError("--cells must be at least 1")
    if args.cell_types < 1 or args.cell_types > args.cells:
        raise UsageError("--cell-types must be between 1 and --cells")
    genome = args.fasta if args.fasta is not None else args.genome_length
    overrides: dict[str, object] = {
        "qc_failures": args.qc_failures,
        "dense_enrichment": args.dense_enrichment,
        "non_conversion": args.non_conversion,
        "correlation_length": args.correlation_length,
    }
    if args.coverage is not None:
        overrides["coverage"] = args.coverage
    out = simulate_to_directory(
        genome,
        args.output,
        n_cells=args.cells,
        n_cell_types=args.cell_types,
        protocol=args.protocol,
        seed=args.seed,
        overwrite=args.overwrite,
        store=args.store,
        **overrides,
    )
    sys.stdout.write(f"{out}\n")
    return 0
