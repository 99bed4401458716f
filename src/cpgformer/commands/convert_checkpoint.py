"""``cpgformer convert-checkpoint``: an original CpG Transformer checkpoint -> a cpgformer model file."""

from __future__ import annotations

import argparse
import sys

from cpgformer.legacy import ConvertOptions, convert_original
from cpgformer.options import add_options, from_args

NAME = "convert-checkpoint"
HELP = "convert a checkpoint of the original CpG Transformer (.pt or .ckpt) into a cpgformer model file"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "original", help="original checkpoint: bare state dict (.pt) or Lightning .ckpt"
    )
    parser.add_argument("-o", "--output", required=True, help="cpgformer model file to write")
    add_options(parser, ConvertOptions)


def run(args: argparse.Namespace) -> int:
    model = convert_original(args.original, args.output, from_args(ConvertOptions, args))
    n_params = sum(p.numel() for p in model.parameters())
    config = model.config
    sys.stdout.write(
        f"{args.output}: mode {config.mode}, {config.data_mode}, {config.n_cells} cells, "
        f"dna_window {config.dna_window}, {config.n_layers} layers, {n_params:,} parameters\n"
    )
    return 0
