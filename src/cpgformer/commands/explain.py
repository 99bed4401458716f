"""``cpgformer explain``: integrated-gradient attributions and attention maps for chosen predictions."""

from __future__ import annotations

import argparse
import logging
import sys

from cpgformer.errors import UsageError
from cpgformer.explain import read_sites, write_explanations
from cpgformer.io.store import open_dataset
from cpgformer.model import IGNORE_FINGERPRINT_HELP, Model, resolve_device

NAME = "explain"
HELP = (
    "explain predictions of chosen (site, cell) pairs: integrated gradients over the neighbouring "
    "sites, cells and DNA bases, and attention maps (npz + figures)"
)

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("store", help="dataset store (from cpgformer prepare)")
    parser.add_argument(
        "checkpoint", help="trained model (.ckpt from cpgformer train, or model file)"
    )
    parser.add_argument(
        "--sites",
        required=True,
        metavar="FILE",
        help="rows `chrom position cell [label_change]`: position 0-based (the + strand C, as in "
        "the store); cell name (or 0-based index); label_change mask/-1, 0, 1 (a fraction for "
        "continuous models) or none (default: keep the stored call); a header line is allowed",
    )
    parser.add_argument("-o", "--output", required=True, metavar="DIR", help="output directory")
    parser.add_argument(
        "--n-steps",
        type=int,
        default=50,
        help="integration points of integrated gradients per path stage (Gauss-Legendre; "
        "default 50); raise it when summary.tsv shows a large convergence_delta",
    )
    parser.add_argument(
        "--baseline",
        choices=["unknown", "zero"],
        default="unknown",
        help="integrated-gradients baseline: 'unknown' = every call unknown, cell embeddings 0, "
        "every base N, integrated cells first, then the data (default); 'zero' = all embedding "
        "outputs 0, one straight path (the original script's choice)",
    )
    parser.add_argument(
        "--fasta",
        help="reference FASTA for models that use DNA (default: the one the store records)",
    )
    parser.add_argument(
        "--device", default="cpu", help="torch device to run on: cpu (default), cuda, cuda:1, ..."
    )
    parser.add_argument(
        "--no-attention", action="store_true", help="skip the attention maps (attributions only)"
    )
    parser.add_argument("--no-figures", action="store_true", help="write the npz files only")
    parser.add_argument(
        "--format", default="png", choices=["png", "pdf", "svg"], help="figure format (png)"
    )
    parser.add_argument("--ignore-fingerprint", action="store_true", help=IGNORE_FINGERPRINT_HELP)
    parser.add_argument(
        "--overwrite", action="store_true", help="replace the output directory if it exists"
    )


def run(args: argparse.Namespace) -> int:
    if args.n_steps < 1:
        raise UsageError(f"--n-steps must be >= 1, got {args.n_steps}")
    queries = read_sites(args.sites)
    ds = open_dataset(args.store)
    model = Model.load(args.checkpoint)
    device = resolve_device(args.device)
    if args.fasta and not model.config.has_dna:
        log.info("the model uses no DNA: --fasta ignored")
    results = model.explain(
        ds,
        queries,
        fasta=args.fasta,
        n_steps=args.n_steps,
        baseline=args.baseline,
        attention=not args.no_attention,
        device=device,
        ignore_fingerprint=args.ignore_fingerprint,
    )
    summary = write_explanations(
        results,
        args.output,
        figures=not args.no_figures,
        fmt=args.format,
        overwrite=args.overwrite,
        inputs=[args.store, args.checkpoint, args.sites, args.fasta],
    )
    sys.stdout.write(f"explained {len(results)} prediction(s): {summary}\n")
    return 0
