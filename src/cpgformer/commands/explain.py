"""``cpgformer explain``: integrated-gradient attributions and attention maps for chosen predictions."""

from __future__ import annotations

import argparse
import logging
import sys

from cpgformer.explain import read_sites, write_explanations
from cpgformer.explain.options import ExplainOptions
from cpgformer.io.store import open_dataset
from cpgformer.model import Model, resolve_device
from cpgformer.options import add_options, from_args

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
    parser.add_argument("-o", "--output", required=True, metavar="DIR", help="output directory")
    add_options(parser, ExplainOptions)


def run(args: argparse.Namespace) -> int:
    opts = from_args(ExplainOptions, args)
    opts.check()
    queries = read_sites(opts.sites)
    ds = open_dataset(args.store)
    model = Model.load(args.checkpoint)
    device = resolve_device(opts.device)
    if opts.fasta and not model.config.has_dna:
        log.info("the model uses no DNA: --fasta ignored")
    results = model.explain(
        ds,
        queries,
        fasta=opts.fasta,
        n_steps=opts.n_steps,
        baseline=opts.baseline,
        attention=opts.attention,
        device=device,
        ignore_fingerprint=opts.ignore_fingerprint,
    )
    summary = write_explanations(
        results,
        args.output,
        figures=opts.figures,
        fmt=opts.format,
        overwrite=opts.overwrite,
        inputs=[args.store, args.checkpoint, opts.sites, opts.fasta],
    )
    sys.stdout.write(f"explained {len(results)} prediction(s): {summary}\n")
    return 0
