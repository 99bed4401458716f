"""``cpgformer impute STORE CHECKPOINT -o OUT``: every (site, cell) of a store, from a trained model."""

from __future__ import annotations

import argparse
import logging
import sys

import torch

from cpgformer.impute import DTYPES, MAX_TILE_TOKENS, SITE_MODES, ImputeOptions, impute
from cpgformer.model import IGNORE_FINGERPRINT_HELP

log = logging.getLogger(__name__)

NAME = "impute"
HELP = "impute (and denoise) every site x cell of a dataset store with a trained model"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("store", help="dataset store written by cpgformer prepare")
    parser.add_argument("checkpoint", help="checkpoint written by cpgformer train (or calibrate)")
    parser.add_argument("-o", "--output", required=True, help="imputed store directory to write")
    parser.add_argument("--chroms", nargs="+", help="impute only these chromosomes (default: all)")
    parser.add_argument(
        "--keep-observed",
        action="store_true",
        help="copy observed calls into the output (default: model predictions for every entry, "
        "i.e. observed entries are denoised)",
    )
    parser.add_argument(
        "--sites",
        choices=SITE_MODES,
        default="store",
        help="store: the store's sites; all: every CpG of the FASTA (sites no cell observed "
        "become all-missing rows of the site window)",
    )
    parser.add_argument("--fasta", help="reference FASTA (default: the one the store records)")
    parser.add_argument("--dtype", choices=DTYPES, default="float16", help="stored probabilities")
    parser.add_argument(
        "--temperature",
        type=float,
        help="calibration temperature (default: the checkpoint's; see cpgformer calibrate)",
    )
    parser.add_argument("--batch-size", type=int, default=8, help="tiles per forward pass")
    parser.add_argument(
        "--tile-sites", type=int, default=1024, help="sites per tile (> 2 x receptive field)"
    )
    parser.add_argument(
        "--max-tile-tokens",
        type=int,
        default=MAX_TILE_TOKENS,
        help="most (site, cell) entries per forward pass (memory bound, ~1.2 KB each): tiles "
        "shrink, then cells are imputed in groups (default: %(default)s)",
    )
    parser.add_argument(
        "--chunk-sites",
        type=int,
        help="sites per stored chunk (unit of resuming; default ~4 M entries per chunk)",
    )
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    parser.add_argument(
        "--device", default="cpu", help="where the model runs: cpu (default), cuda, cuda:1, mps"
    )
    parser.add_argument("--compile", action="store_true", help=argparse.SUPPRESS)  # deprecated
    parser.add_argument("--ignore-fingerprint", action="store_true", help=IGNORE_FINGERPRINT_HELP)
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output")
    regions = parser.add_argument_group(
        "regions (write a cells x regions AnnData .h5ad instead of the per-CpG imputed store)"
    )
    regions.add_argument(
        "--regions",
        metavar="BED",
        help="sum the imputation over these regions (BED; a CpG counts when its start lies in "
        "[start, end)); -o is then the .h5ad file to write",
    )
    regions.add_argument(
        "--bin-size",
        type=int,
        metavar="N",
        help="sum over fixed bins of N bp (instead of --regions)",
    )
    regions.add_argument(
        "--region-values",
        choices=("imputed", "denoised"),
        default="imputed",
        help="imputed: observed calls kept in the region means; denoised: model probabilities "
        "everywhere",
    )
    dist = parser.add_argument_group(
        "several processes, GPUs or nodes writing one output (as for train; torchrun and SLURM "
        "srun too)"
    )
    dist.add_argument(
        "--accelerator",
        help="cpu, gpu, mps or auto (with --devices/--num-nodes; replaces --device)",
    )
    dist.add_argument("--devices", help="processes per node: a count, a list like 0,1, or auto")
    dist.add_argument("--num-nodes", type=int, help="nodes taking part (default 1)")


def run(args: argparse.Namespace) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.compile:
        log.warning("--compile is deprecated and ignored (compiled inference no longer pays)")
    return _run(args)


def _run(args: argparse.Namespace) -> int:
    options = ImputeOptions(
        chroms=args.chroms,
        keep_observed=args.keep_observed,
        dtype=args.dtype,
        sites=args.sites,
        tile_sites=args.tile_sites,
        max_tile_tokens=args.max_tile_tokens,
        chunk_sites=args.chunk_sites,
        batch_size=args.batch_size,
        fasta=args.fasta,
        temperature=args.temperature,
        ignore_fingerprint=args.ignore_fingerprint,
        overwrite=args.overwrite,
    )
    regions = None
    if args.regions is not None or args.bin_size is not None:
        from cpgformer.impute.regions import region_output

        regions = region_output(args.regions, args.bin_size, args.region_values)
    if args.accelerator or args.devices or args.num_nodes:
        from cpgformer.impute.distributed import impute_distributed

        result = impute_distributed(
            args.store,
            args.checkpoint,
            args.output,
            options,
            accelerator=args.accelerator or "auto",
            devices=args.devices or "auto",
            num_nodes=args.num_nodes or 1,
            regions=regions,
        )
        if result is None:  # not the main rank: it reports
            return 0
        if regions is not None:
            sys.stdout.write(f"{result}\n")
            return 0
        imp = result
    elif regions is not None:
        from cpgformer.impute.regions import impute_regions

        out = impute_regions(
            args.store, args.checkpoint, args.output, options, device=args.device, output=regions
        )
        sys.stdout.write(f"{out}\n")
        return 0
    else:
        imp = impute(args.store, args.checkpoint, args.output, options, device=args.device)
    sys.stdout.write(
        f"{imp.path}\t{imp.manifest['n_sites']} sites x {imp.n_cells} cells\t"
        f"{len(imp.chromosomes)} chromosome(s)\n"
    )
    return 0
