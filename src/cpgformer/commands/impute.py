"""``cpgformer impute STORE CHECKPOINT -o OUT``: every (site, cell) of a store, from a trained model."""

from __future__ import annotations

import argparse
import logging
import sys

import torch

from cpgformer import pretrained
from cpgformer.errors import UsageError
from cpgformer.impute import ImputeOptions, impute
from cpgformer.impute.distributed import impute_distributed
from cpgformer.impute.regions import impute_regions, region_output
from cpgformer.impute.run import IMPUTE_ONLY_OPTIONS, ImputeLaunch
from cpgformer.options import add_options, from_args

log = logging.getLogger(__name__)

NAME = "impute"
HELP = "impute (and denoise) every site x cell of a dataset store with a trained model"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("store", help="dataset store written by cpgformer prepare")
    parser.add_argument(
        "checkpoint",
        nargs="?",
        help="checkpoint written by cpgformer train (or calibrate); 'pretrained' = the model "
        "shipped with cpgformer",
    )
    parser.add_argument(
        "--pretrained",
        action="store_true",
        help="use the pretrained model shipped with cpgformer (no training; any store, any cells)",
    )
    parser.add_argument("-o", "--output", required=True, help="imputed store directory to write")
    add_options(parser, ImputeOptions, skip=IMPUTE_ONLY_OPTIONS)
    add_options(parser, ImputeLaunch)
    parser.add_argument("--compile", action="store_true", help=argparse.SUPPRESS)  # deprecated


def _checkpoint(args: argparse.Namespace) -> str:
    """The checkpoint argument, or the shipped model's name with ``--pretrained``."""
    if args.pretrained and args.checkpoint is not None:
        raise UsageError("give a checkpoint or --pretrained, not both")
    if args.pretrained:
        return pretrained.NAME
    if args.checkpoint is None:
        raise UsageError("give a checkpoint (or --pretrained for the model shipped with cpgformer)")
    return args.checkpoint


def run(args: argparse.Namespace) -> int:
    args.checkpoint = _checkpoint(args)
    launch = from_args(ImputeLaunch, args)
    if launch.threads:
        torch.set_num_threads(launch.threads)
    if args.compile:
        log.warning("--compile is deprecated and ignored (compiled inference no longer pays)")
    options = from_args(ImputeOptions, args)
    regions = None
    if launch.regions is not None or launch.bin_size is not None:
        regions = region_output(launch.regions, launch.bin_size, launch.region_values)
    if launch.distributed:
        result = impute_distributed(
            args.store,
            args.checkpoint,
            args.output,
            options,
            accelerator=launch.accelerator or "auto",
            devices=launch.devices or "auto",
            num_nodes=launch.num_nodes or 1,
            regions=regions,
        )
        if result is None:  # not the main rank: it reports
            return 0
        if regions is not None:
            sys.stdout.write(f"{result}\n")
            return 0
        imp = result
    elif regions is not None:
        out = impute_regions(
            args.store, args.checkpoint, args.output, options, device=launch.device, output=regions
        )
        sys.stdout.write(f"{out}\n")
        return 0
    else:
        imp = impute(args.store, args.checkpoint, args.output, options, device=launch.device)
    sys.stdout.write(
        f"{imp.path}\t{imp.manifest['n_sites']} sites x {imp.n_cells} cells\t"
        f"{len(imp.chromosomes)} chromosome(s)\n"
    )
    return 0
