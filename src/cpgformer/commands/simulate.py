"""``cpgformer simulate``: single-cell methylomes with known truth, as Bismark coverage files."""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass

from cpgformer import options
from cpgformer.data.simulate import PROTOCOL_NAMES, SimulationConfig, simulate_to_directory
from cpgformer.errors import UsageError
from cpgformer.options import option

NAME = "simulate"
HELP = "simulate single-cell methylomes with known truth (Bismark .cov.gz per cell + truth.npz)"

_DEFAULTS = SimulationConfig()


@dataclass
class SimulateOptions:
    """The flags of ``cpgformer simulate`` (the genome: ``fasta`` or ``genome_length``)."""

    output: str = option(None, "output directory (must not exist)", short="-o", required=True)
    fasta: str | None = option(None, "reference FASTA (plain or gzip) to take CpG sites from")
    genome_length: int | None = option(
        None,
        "length in bp of a synthetic genome with CpG-island-like regions (written as genome.fa); "
        "give this or --fasta",
    )
    cells: int = option(20, "number of cells")
    cell_types: int = option(2, "number of cell types")
    protocol: str = option(
        "scbs",
        "read sampling: scbs (100-300 bp fragments), scrrbs (MspI fragments), snmc (sparse)",
        choices=PROTOCOL_NAMES,
    )
    seed: int = option(0, "random seed (same seed, same files)")
    coverage: float | None = option(
        None,
        "fraction of CpGs observed in a median cell (scrrbs: capture probability of a fragment "
        "strand); default depends on the protocol",
    )
    qc_failures: int = option(
        0,
        "number of QC-failure cells (alternately low global methylation / no neighbour "
        "correlation)",
    )
    dense_enrichment: float = option(
        _DEFAULTS.dense_enrichment,
        "fragment rate near CpG-dense regions relative to elsewhere (promoter-enriched data: ~8)",
    )
    non_conversion: float = option(
        _DEFAULTS.non_conversion,
        "probability that a read of an unmethylated C is called methylated",
    )
    correlation_length: float = option(
        _DEFAULTS.correlation_length, "bp scale of the neighbour correlation"
    )
    store: str | None = option(
        None,
        "also write the observed calls as a dataset store here (same as prepare on the files; "
        "default: no store)",
    )
    overwrite: bool = option(False, "replace the output directory if it exists")

    def __post_init__(self) -> None:
        if (self.fasta is None) == (self.genome_length is None):
            raise UsageError("give one of --fasta and --genome-length")
        if self.cells < 1:
            raise UsageError("--cells must be at least 1")
        if self.cell_types < 1 or self.cell_types > self.cells:
            raise UsageError("--cell-types must be between 1 and --cells")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    options.add_options(parser, SimulateOptions)


def run(args: argparse.Namespace) -> int:
    opts = options.from_args(SimulateOptions, args)
    overrides: dict[str, object] = {
        "qc_failures": opts.qc_failures,
        "dense_enrichment": opts.dense_enrichment,
        "non_conversion": opts.non_conversion,
        "correlation_length": opts.correlation_length,
    }
    if opts.coverage is not None:
        overrides["coverage"] = opts.coverage
    out = simulate_to_directory(
        opts.fasta if opts.fasta is not None else opts.genome_length,
        opts.output,
        n_cells=opts.cells,
        n_cell_types=opts.cell_types,
        protocol=opts.protocol,
        seed=opts.seed,
        overwrite=opts.overwrite,
        store=opts.store,
        **overrides,
    )
    sys.stdout.write(f"{out}\n")
    return 0
