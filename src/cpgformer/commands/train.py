"""``cpgformer train STORE -o RUN_DIR``: train a CpG Transformer on a prepared store.

Every model, data and training parameter has a flag generated from the fields of ``ModelConfig``,
``DataConfig`` and ``TrainConfig`` (so each parameter is declared once). Precedence: built-in
defaults < ``--config FILE`` (JSON; sections ``model``/``data``/``training`` or flat keys) < flags.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import types
import typing
from pathlib import Path
from typing import Any

from cpgformer.data.config import DataConfig
from cpgformer.errors import UsageError
from cpgformer.nn import ModelConfig
from cpgformer.training.config import TrainConfig

log = logging.getLogger(__name__)

NAME = "train"
HELP = "train a CpG Transformer on a dataset store (masked denoising objective)"

HELPS: dict[str, str] = {
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
    "random_fraction": "share of perturbed entries given a random label instead of unknown",
    "resample_cells": "train each batch on this many random cells (memory, time); validation "
    "segments use a fixed random subset of the same size (default: 128 for new runs on 256 cells "
    "or more, else all cells)",
    "num_workers": "data loader worker processes",
    "label_sample_size": "observed labels sampled for the random-label distribution",
    # training
    "lr": "Adam learning rate",
    "warmup_steps": "linear learning-rate warm-up, optimiser steps (default: 1000 published; "
    "adaptive 5%% of the planned steps, at most 1000)",
    "lr_decay": "published schedule: learning-rate factor per epoch after warm-up",
    "max_epochs": "published schedule: maximum epochs",
    "max_steps": "maximum optimiser steps (-1 = no limit); the adaptive schedule plans its "
    "decay to end there",
    "patience": "published schedule: early stopping patience in validations",
    "early_stopping": "stop when the validation loss stops improving",
    "schedule": "adaptive (steps or time: warm-up, cosine decay, validation and patience in "
    "steps, sized to the store or the budget) or published (the original, per epoch)",
    "time_budget": "adaptive: train for this wall time (900, 15m, 1h30m, 00:15:00), the schedule "
    "planned to end there, best checkpoint kept",
    "val_interval_steps": "adaptive: validate every this many steps (default: 20 validations "
    "over the planned steps)",
    "patience_steps": "adaptive: stop after this many steps without a better validation loss "
    "(default: a quarter of the planned steps; off with --max-steps or --time-budget unless given)",
    "final_lr_fraction": "adaptive: learning rate at the end of the cosine decay, as a fraction "
    "of --lr",
    "limit_train_batches": "training batches per epoch (fraction if < 1, count if >= 1)",
    "limit_val_batches": "validation batches per validation (fraction if < 1, count if >= 1)",
    "val_check_interval": "published schedule: validate every this many training batches "
    "(or fraction of an epoch)",
    "log_every_n_steps": "log training metrics every this many steps",
    "accelerator": "cpu, gpu, mps or auto",
    "devices": "devices per node: a count, a list like 0,1, or auto",
    "strategy": "auto, ddp, ddp_spawn, fsdp, ...",
    "num_nodes": "nodes for multi-node training",
    "precision": "32-true, bf16-mixed, 16-mixed, ...",
    "tensorboard": "also write TensorBoard logs (if tensorboard is installed)",
    "seed": "random seed (weights, shuffling, masks, splits)",
    "memory_budget_gb": "activations of one training step must fit this (GB; default half the "
    "available memory): segments are shortened, then cells subsampled per batch",
}

_SECTIONS: dict[str, type] = {"model": ModelConfig, "data": DataConfig, "training": TrainConfig}
_SKIP = {"model": {"n_cells"}, "data": {"seed"}, "training": set()}
_RUN_RECORD = {"store", "store_fingerprint", "init_from", "schedule_plan"}


def _parse_optional(inner: type) -> Any:
    def parse(text: str) -> Any:
        if text.lower() in ("none", "null", ""):
            return None
        return inner(text)

    parse.__name__ = inner.__name__
    return parse


def _flag_kwargs(hint: Any) -> dict[str, Any]:
    """argparse keyword arguments for a dataclass field type."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if hint is bool:
        return {"action": argparse.BooleanOptionalAction}
    if origin is tuple:
        return {"nargs": "*", "type": str, "metavar": "NAME"}
    if origin in (typing.Union, types.UnionType) and type(None) in args:
        inner = next(a for a in args if a is not type(None))
        return {"type": _parse_optional(inner)}
    if hint in (int, float, str):
        return {"type": hint}
    return {"type": str}


def _fields(section: str) -> list[tuple[str, Any, Any]]:
    cls = _SECTIONS[section]
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        if f.name in _SKIP[section]:
            continue
        default = f.default if f.default is not dataclasses.MISSING else None
        out.append((f.name, hints[f.name], default))
    return out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("store", help="dataset store written by `cpgformer prepare`")
    parser.add_argument("-o", "--output", required=True, help="run directory (created)")
    parser.add_argument("--config", help="JSON file with model/data/training parameters")
    parser.add_argument(
        "--resume", action="store_true", help="continue the run in --output from its last.ckpt"
    )
    parser.add_argument(
        "--init-from",
        help="initialise from a checkpoint (ours, or an original CpG Transformer .pt): cell "
        "embeddings re-initialised, everything else loaded with strict checks",
    )
    add_config_arguments(parser)


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per field of the model, data and training configs (read by :func:`build_configs`)."""
    seen: set[str] = set()
    for section in _SECTIONS:
        group = parser.add_argument_group(f"{section} parameters")
        for name, hint, default in _fields(section):
            if name in seen:
                continue
            seen.add(name)
            kwargs = _flag_kwargs(hint)
            if "action" not in kwargs:
                kwargs.setdefault("metavar", name.upper())
            shown = "see above" if name == "dna_window" else default
            if isinstance(shown, tuple):
                shown = " ".join(shown) or "none"
            text = HELPS.get(name, name.replace("_", " "))
            group.add_argument(
                "--" + name.replace("_", "-"),
                dest=f"{section}__{name}",
                default=argparse.SUPPRESS,
                help=text if "(default:" in text else f"{text} (default: {shown})",
                **kwargs,
            )


def _load_config_file(path: str) -> dict[str, dict[str, Any]]:
    from cpgformer.errors import InputError

    try:
        with open(path) as fh:
            raw = json.load(fh)
    except OSError as exc:
        raise InputError(path, None, f"cannot read: {exc}") from None
    except json.JSONDecodeError as exc:
        raise InputError(path, exc.lineno, f"invalid JSON: {exc.msg}") from None
    if not isinstance(raw, dict):
        raise InputError(path, None, "expected a JSON object")
    out: dict[str, dict[str, Any]] = {s: {} for s in _SECTIONS}
    known = {s: {n for n, _, _ in _fields(s)} for s in _SECTIONS}
    for key, value in raw.items():
        if key in _SECTIONS and isinstance(value, dict):
            for k, v in value.items():
                if k in known[key]:
                    out[key][k] = v
                elif k == "seed":
                    out["training"]["seed"] = v
                # other keys (resolved split, n_cells, ...) are what a run's config.json records
            continue
        if key in _RUN_RECORD:
            continue  # what a run's config.json records besides its parameters
        owners = [s for s in _SECTIONS if key in known[s]]
        if not owners:
            raise InputError(path, None, f"unknown parameter {key!r}")
        out[owners[0]][key] = value
    return out


def build_configs(
    args: argparse.Namespace, n_cells: int, has_fasta: bool
) -> tuple[ModelConfig, DataConfig, TrainConfig, dict[str, Any]]:
    """(model, data, training configs, explicitly given model parameters) from file + flags."""
    values: dict[str, dict[str, Any]] = {s: {} for s in _SECTIONS}
    if getattr(args, "config", None):
        values = _load_config_file(args.config)
    given_model: dict[str, Any] = dict(values["model"])
    for key, value in vars(args).items():
        if "__" in key:
            section, name = key.split("__", 1)
            if section in values:
                values[section][name] = value
                if section == "model":
                    given_model[name] = value
    if "dna_window" not in values["model"]:
        values["model"]["dna_window"] = 1001 if has_fasta else 0
        if not has_fasta:
            log.info("the store has no FASTA: training without DNA (--dna-window 0)")
    from cpgformer.training.schedule import new_run_defaults

    for section, defaults in new_run_defaults(
        n_cells, values["training"].get("schedule", "adaptive")
    ).items():
        for name, value in defaults.items():
            values[section].setdefault(name, value)
    values["data"]["seed"] = values["training"].get("seed", 0)
    for name in ("val_chromosomes", "test_chromosomes"):
        if name in values["data"]:
            values["data"][name] = tuple(values["data"][name] or ())
            # chromosomes named by the user are used as given (an unknown one is an error)
            values["data"].setdefault("split", "chromosomes")
    try:
        model = ModelConfig(n_cells=n_cells, **values["model"])
        data = DataConfig(**values["data"])
        training = TrainConfig(**values["training"])
    except TypeError as exc:
        raise UsageError(str(exc)) from None
    return model, data, training, given_model


def run(args: argparse.Namespace) -> int:
    from cpgformer.io.store import open_dataset
    from cpgformer.training.fit import fit
    from cpgformer.utils import progress

    ds = open_dataset(args.store)
    model, data, training, given_model = build_configs(args, ds.n_cells, bool(ds.fasta_path))
    result = fit(
        args.store,
        args.output,
        None if args.resume or args.init_from else model,
        data,
        training,
        resume=args.resume,
        init_from=args.init_from,
        init_hparams=given_model if args.init_from else None,
        progress_bar=progress.enabled(),
    )
    m = result.metrics
    lines = [f"run directory: {Path(result.run_dir)}", f"split: {result.split}"]
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
