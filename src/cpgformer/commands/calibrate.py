"""``cpgformer calibrate STORE CHECKPOINT -o NEW``: temperature scaling on masked validation calls."""

from __future__ import annotations

import argparse
import json
import sys

from cpgformer.impute import calibrate
from cpgformer.model import IGNORE_FINGERPRINT_HELP

NAME = "calibrate"
HELP = "fit a calibration temperature on masked validation calls; write a calibrated checkpoint"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("store", help="the dataset store the model was trained on")
    parser.add_argument("checkpoint", help="checkpoint written by cpgformer train")
    parser.add_argument("-o", "--output", required=True, help="calibrated checkpoint to write")
    parser.add_argument(
        "--chroms", nargs="+", help="chromosomes to mask (default: the run's validation ones)"
    )
    parser.add_argument(
        "--mask-fraction", type=float, default=0.1, help="share of observed calls hidden"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the masked calls")
    parser.add_argument("--fasta", help="reference FASTA (default: the one the store records)")
    parser.add_argument("--tile-sites", type=int, default=1024, help="sites per tile")
    parser.add_argument("--batch-size", type=int, default=8, help="tiles per forward pass")
    parser.add_argument("--ignore-fingerprint", action="store_true", help=IGNORE_FINGERPRINT_HELP)
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output")


def run(args: argparse.Namespace) -> int:
    report = calibrate(
        args.store,
        args.checkpoint,
        args.output,
        chroms=args.chroms,
        fraction=args.mask_fraction,
        seed=args.seed,
        tile_sites=args.tile_sites,
        batch_size=args.batch_size,
        fasta=args.fasta,
        ignore_fingerprint=args.ignore_fingerprint,
        overwrite=args.overwrite,
    )
    sys.stdout.write(json.dumps(report, indent=1) + "\n")
    return 0
