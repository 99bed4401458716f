"""``cpgformer train STORE -o RUN_DIR``: train a CpG Transformer on a prepared store.

Every model, data and training parameter has a flag generated from the fields of ``ModelConfig``,
``DataConfig`` and ``TrainConfig`` (so each parameter is declared once). Precedence: built-in
defaults < ``--config FILE`` (JSON; sections ``model``/``data``/``training`` or flat keys) < flags.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

from cpgformer import options
from cpgformer.data.config import DataConfig
from cpgformer.io.store import open_dataset
from cpgformer.nn import ModelConfig
from cpgformer.training import configs
from cpgformer.training.config import TrainConfig
from cpgformer.training.configs import SECTIONS, SKIP
from cpgformer.utils import progress

log = logging.getLogger(__name__)

NAME = "train"
HELP = "train a CpG Transformer on a dataset store (masked denoising objective)"

HELPS: dict[str, str] = {
    # (training parameters carry their help in TrainConfig's field metadata)
    # model
    "dna_window": "DNA window in bp around each CpG (odd; 0 = no DNA branch). "
    "Default: 1001 when the store has a FASTA, else 0",
    "n_conv_layers": "convolutions of the DNA encoder",
    "dna_embed": "DNA embedding size",
    "cell_embed": "cell embedding size",
    "state_embed": "call-state embedding size",
    "hidden": "hidden size of the transformer",
    "n_layers": "transformer layers",
    "n_heads": "attention heads",
    "head_dim": "size of each attention head",
    "site_window": "sliding attention window in sites (odd)",
    "mode": "attention mode: axial, 2D, intracell, intercell, none (the published ones) or induced "
    "(attention across cells through learned summary tokens: cost per cell flat in the number of "
    "cells) (default: axial; induced for new runs on 256 cells or more)",
    "data_mode": "binary (labels) or continuous (methylated fractions)",
    "layernorm": "layer normalisation after each sublayer",
    "activation": "feed-forward activation: relu or gelu",
    "attention_dropout": "dropout on attention probabilities",
    "cnn_dropout": "dropout in the DNA encoder",
    "attention_impl": "attention implementation: fast (blocked) or reference (dense)",
    "n_inducing": "summary tokens per site of the induced mode",
    "cell_encoder": "table (one learned vector per training cell, the published model) or profile "
    "(cells embedded from their own data: the model applies to new cells) (default: table; "
    "profile for new runs on 256 cells or more)",
    "profile_features": "cell profile features of the profile encoder (2 + principal components)",
    "input_summaries": "give every token cheap summaries of the input: the other cells' mean at "
    "its site, means over nearby sites, its cell's local and overall mean (its own entry left "
    "out) (default: on for new runs, off with --schedule published)",
    "summary_offset": "add the other cells' per-site mean to the output, so training starts from "
    "the per-site mean (default: on for new runs, off with --schedule published)",
    # data
    "segment_length": "sites per segment (rows of one example) (default: 256 for new runs, 1024 "
    "with --schedule published)",
    "batch_size": "segments per batch",
    "val_chromosomes": "validation chromosomes (chr prefix optional)",
    "test_chromosomes": "test chromosomes, never trained on (chr prefix optional)",
    "val_fraction": "fraction for validation: of the sites in validation blocks (--split regions; "
    "default 0.1) or of random segments (--split fraction; leaks context)",
    "test_fraction": "fraction for test, as --val-fraction (default: 0.1 with regions, else none)",
    "split": "auto (the named chromosomes if the store has them, else an automatic choice: two "
    "chromosomes, or blocks along the chromosomes), chromosomes, regions or fraction",
    "region_block_sites": "sites per held-out block of --split regions (0 = auto)",
    "region_gap_sites": "sites left out between held-out blocks and training "
    "(0 = the model's receptive field; always more than 150 bp too)",
    "mask_rule": "perturbed-entry count: original = min(floor(L*fraction), #observed); "
    "observed = fraction of observed entries",
    "mask_fraction": "fraction used by the mask rule",
    "mask_unit": "what is perturbed together: call (single entries, the published objective) or "
    "run (whole read-sized runs of one cell's calls, as the benchmark hides them and as gaps are "
    "at imputation) (default: run for new runs, call with --schedule published)",
    "mask_run_gap": "bp: a cell's observed sites closer than this form one run (--mask-unit run)",
    "random_fraction": "share of perturbed entries given a random label instead of unknown",
    "resample_cells": "train each batch on this many random cells (memory, time); validation "
    "segments use a fixed random subset of the same size (default: 128 for new runs on 256 cells "
    "or more, else all cells)",
    "num_workers": "data loader worker processes",
    "label_sample_size": "observed labels sampled for the random-label distribution",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("store", help="dataset store written by `cpgformer prepare`")
    parser.add_argument("-o", "--output", required=True, help="run directory (created)")
    parser.add_argument("--config", help="JSON file with model/data/training parameters")
    parser.add_argument(
        "--resume", action="store_true", help="continue the run in --output from its last.ckpt"
    )
    parser.add_argument(
        "--init-from",
        default=configs.AUTO_INIT,
        help="initialise from a checkpoint (ours, or an original CpG Transformer .pt; "
        "'pretrained' = the model shipped with cpgformer; 'none' = from scratch): cell embeddings "
        "re-initialised, everything else loaded with strict checks. Default auto: the pretrained "
        "model for a store without a FASTA when no model parameters and not --schedule published "
        "are given, else from scratch",
    )
    add_config_arguments(parser)


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per field of the model, data and training configs (read by :func:`build_configs`)."""
    seen: set[str] = set()
    for section, cls in SECTIONS.items():
        group = parser.add_argument_group(f"{section} parameters")
        options.add_options(
            group,
            cls,
            prefix=f"{section}__",
            skip=SKIP[section],
            helps=HELPS,
            suppress_defaults=True,
            defaults={"dna_window": "see above"},
            seen=seen,
        )


def build_configs(
    args: argparse.Namespace, n_cells: int, has_fasta: bool
) -> tuple[ModelConfig, DataConfig, TrainConfig, dict[str, Any]]:
    """(model, data, training configs, explicitly given model parameters) from file + flags."""
    given = {s: options.values(args, cls, prefix=f"{s}__") for s, cls in SECTIONS.items()}
    return configs.build_configs(given, n_cells, has_fasta, getattr(args, "config", None))


def run(args: argparse.Namespace) -> int:
    from cpgformer.training.fit import fit  # (Lightning: heavy, loaded when training only)

    ds = open_dataset(args.store)
    model, data, training, given_model = build_configs(args, ds.n_cells, bool(ds.fasta_path))
    init_from, why = configs.resolve_init_from(
        args.init_from, given_model, training, bool(ds.fasta_path), args.resume
    )
    if why:
        log.info("%s", why)
    result = fit(
        args.store,
        args.output,
        None if args.resume or init_from else model,
        data,
        training,
        resume=args.resume,
        init_from=init_from,
        init_hparams=given_model if init_from else None,
        progress_bar=progress.enabled(),
    )
    m = result.metrics
    lines = [f"run directory: {Path(result.run_dir)}", f"split: {result.split}"]
    if init_from:
        lines.append(f"initialised from: {init_from}")
    if result.masking:
        lines.append(f"training masks: {result.masking}")
    sched = result.schedule
    if sched.get("schedule") == "adaptive":
        lines.append(
            "schedule: adaptive, "
            + (
                f"time budget {sched['time_budget_s']:.0f} s, "
                if sched.get("time_budget_s") is not None
                else ""
            )
            + f"{sched.get('horizon')} planned steps, warm-up {sched.get('warmup')}, "
            + (
                f"validation every {sched['val_interval']} steps"
                if sched.get("val_interval")
                else "validations spaced in time"
            )
        )
    else:
        lines.append("schedule: published (per epoch)")
    if result.best_checkpoint:
        lines.append(f"best checkpoint: {result.best_checkpoint}")
    for key in ("best_val_loss", "val_loss", "val_auroc", "val_auprc", "val_baseline_auroc"):
        if key in m:
            lines.append(f"{key}: {m[key]:.4f}")
    if result.interrupted:
        lines.append(
            f"interrupted by {result.interrupted}: {result.last_checkpoint} saved; "
            f"continue with: cpgformer train {args.store} -o {args.output} --resume"
        )
    sys.stdout.write("\n".join(lines) + "\n")
    if result.interrupted:
        return 130 if result.interrupted == "SIGINT" else 143
    return 0
