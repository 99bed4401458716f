"""``cpgformer ablate STORE -o DIR``: what each input is worth (same budget, same hidden calls)."""

from __future__ import annotations

import argparse
import sys

from cpgformer.ablate import AblateOptions, ablate
from cpgformer.commands.train import add_config_arguments, build_configs
from cpgformer.io.store import open_dataset
from cpgformer.options import add_options, from_args

NAME = "ablate"
HELP = "train variants without one input each (attention kinds, DNA, positions, cell identity) "
HELP += "and compare their AUROC with the full model on the same hidden calls"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("store", help="dataset store written by `cpgformer prepare`")
    parser.add_argument("-o", "--output", required=True, help="ablation directory (created)")
    add_options(parser, AblateOptions)
    parser.add_argument("--config", help="JSON file with model/data/training parameters")
    add_config_arguments(parser)


def run(args: argparse.Namespace) -> int:
    opts = from_args(AblateOptions, args)
    ds = open_dataset(args.store)
    model, data, training, _ = build_configs(args, ds.n_cells, bool(ds.fasta_path))
    table = ablate(
        args.store,
        args.output,
        model,
        data,
        training,
        opts.variants,
        hide_fraction=opts.hide_fraction,
        seed=training.seed,
    )
    sys.stdout.write(table.to_string(index=False, float_format=lambda v: f"{v:.4f}") + "\n")
    return 0
