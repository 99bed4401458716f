"""``cpgformer convert-checkpoint``: an original CpG Transformer checkpoint -> a cpgformer model file."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

from cpgformer.errors import UsageError

NAME = "convert-checkpoint"
HELP = "convert a checkpoint of the original CpG Transformer (.pt or .ckpt) into a cpgformer model file"

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "original", help="original checkpoint: bare state dict (.pt) or Lightning .ckpt"
    )
    parser.add_argument(
        "--hparams",
        nargs="*",
        default=[],
        metavar="SPEC",
        help="original constructor arguments: a JSON object, a JSON file, or key=value pairs "
        "(e.g. n_cells=20 RF=1001 mode=axial); the shipped .pt files carry none, so give at least "
        "what their keys cannot tell (window, act; mode for 2D vs intracell)",
    )
    parser.add_argument("-o", "--output", required=True, help="cpgformer model file to write")
    parser.add_argument(
        "--cell-names",
        help="text file with one cell name per line, in the order of the checkpoint's cell table "
        "(default: no names recorded; impute then takes the store's cells in their order)",
    )
    parser.add_argument(
        "--trust-pickle",
        action="store_true",
        help="allow full unpickling (needed for some Lightning .ckpt files; only for trusted files)",
    )
    parser.add_argument("--force", action="store_true", help="overwrite the output if it exists")


def _parse_value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        lowered = text.lower()
        if lowered in ("true", "false"):
            return lowered == "true"
        return text


def parse_hparams(specs: list[str]) -> dict[str, Any]:
    """Merge JSON objects, JSON files and ``key=value`` pairs (later ones win)."""
    merged: dict[str, Any] = {}
    for spec in specs:
        stripped = spec.strip()
        if stripped.startswith("{"):
            try:
                merged.update(json.loads(stripped))
            except json.JSONDecodeError as exc:
                raise UsageError(f"--hparams: invalid JSON object: {exc}") from exc
        elif "=" in spec and not Path(spec).is_file():
            key, value = spec.split("=", 1)
            merged[key.strip()] = _parse_value(value.strip())
        elif Path(spec).is_file():
            try:
                content = json.loads(Path(spec).read_text())
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                raise UsageError(f"{spec}: not a JSON file of hyperparameters: {exc}") from exc
            if not isinstance(content, dict):
                raise UsageError(f"{spec}: expected a JSON object of hyperparameters")
            merged.update(content)
        else:
            raise UsageError(f"--hparams: {spec!r} is neither JSON, an existing file nor key=value")
    return merged


def run(args: argparse.Namespace) -> int:
    from cpgformer.utils.locks import output_lock
    from cpgformer.utils.outputs import check_output, remove_leftovers

    output = Path(args.output)
    inputs = [args.original, args.cell_names]
    check_output(output, "model", overwrite=args.force, inputs=inputs)
    with output_lock(output):
        check_output(output, "model", overwrite=args.force, inputs=inputs)
        remove_leftovers(output)
        return _convert(args, output)


def _convert(args: argparse.Namespace, output: Path) -> int:
    from cpgformer.legacy import from_original, load_original
    from cpgformer.nn.serialize import save_model

    state_dict, file_hparams = load_original(args.original, trust_pickle=args.trust_pickle)
    hparams = {**file_hparams, **parse_hparams(args.hparams)}
    model = from_original(state_dict, hparams)
    cells = None
    if args.cell_names:
        lines = Path(args.cell_names).read_text().splitlines()
        cells = [line.strip() for line in lines if line.strip()]
        if len(set(cells)) != len(cells):
            raise UsageError(f"{args.cell_names}: duplicate cell names")
    save_model(output, model, cells=cells, extra={"source": {"original": str(args.original)}})
    n_params = sum(p.numel() for p in model.parameters())
    config = model.config
    sys.stdout.write(
        f"{output}: mode {config.mode}, {config.data_mode}, {config.n_cells} cells, "
        f"dna_window {config.dna_window}, {config.n_layers} layers, {n_params:,} parameters\n"
    )
    return 0
