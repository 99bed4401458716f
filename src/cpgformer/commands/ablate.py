"""``cpgformer ablate STORE -o DIR``: what each input is worth (same budget, same hidden calls)."""

from __future__ import annotations

import argparse
import sys

from cpgformer.commands.train import add_config_arguments, build_configs

NAME = "ablate"
HELP = "train variants without one input each (attention kinds, DNA, positions, cell identity) "
HELP += "and compare their AUROC with the full model on the same hidden calls"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from cpgformer.ablate import VARIANTS

    parser.add_argument("store", help="dataset store written by `cpgformer prepare`")
    parser.add_argument("-o", "--output", required=True, help="ablation directory (created)")
    parser.add_argument(
        "--variants",
        nargs="+",
        default=list(VARIANTS),
        choices=VARIANTS,
        help="variants to train (default: all that apply; 'full' is always trained)",
    )
    parser.add_argument(
        "--hide-fraction",
        type=float,
        default=0.2,
        help="fraction of the test chromosomes' observed calls hidden (default: 0.2)",
    )
    parser.add_argument("--config", help="JSON file with model/data/training parameters")
    add_config_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from cpgformer.ablate import ablate
    from cpgformer.io.store import open_dataset

    ds = open_dataset(args.store)
    model, data, training, _ = build_configs(args, ds.n_cells, bool(ds.fasta_path))
    table = ablate(
        args.store,
        args.output,
        model,
        data,
        training,
        args.variants,
        hide_fraction=args.hide_fraction,
        seed=training.seed,
    )
    sys.stdout.write(table.to_string(index=False, float_format=lambda v: f"{v:.4f}") + "\n")
    return 0
