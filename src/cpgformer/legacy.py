"""Checkpoints of the original CpG Transformer implementation <-> our model.

The original ships bare state dicts (``.pt``) and Lightning ``.ckpt`` files whose keys follow its module
names (``CNN.0.CNN.0.weight``, ``transformer.0.attn_list.0.qkv_lin.weight``, ...). Unlike the original
(which loaded with ``strict=False``), loading here is strict: every missing or unexpected key and every
shape mismatch is reported by name. The pre-2021-11-24 key ``CpG_embed.weight`` is renamed.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from os import PathLike
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from cpgformer.errors import CheckpointError, UsageError
from cpgformer.nn.config import ModelConfig
from cpgformer.nn.model import CpGTransformer
from cpgformer.nn.serialize import build_model, save_model
from cpgformer.options import option
from cpgformer.utils.locks import output_lock
from cpgformer.utils.outputs import check_output, remove_leftovers

log = logging.getLogger(__name__)

HPARAM_NAMES: dict[str, str] = {
    "n_cells": "n_cells",
    "RF": "dna_window",
    "n_conv_layers": "n_conv_layers",
    "CNN_do": "cnn_dropout",
    "DNA_embed_size": "dna_embed",
    "cell_embed_size": "cell_embed",
    "CpG_embed_size": "state_embed",
    "transf_hsz": "hidden",
    "transf_do": "attention_dropout",
    "act": "activation",
    "n_transformers": "n_layers",
    "n_heads": "n_heads",
    "head_dim": "head_dim",
    "window": "site_window",
    "mode": "mode",
    "data_mode": "data_mode",
    "layernorm": "layernorm",
}
"""Original constructor argument -> our ``ModelConfig`` field."""

TRAINING_HPARAMS = frozenset({"lr", "lr_decay_factor", "warmup_steps"})
"""Original constructor arguments that do not affect the architecture (accepted and ignored)."""

LEGACY_RENAMES = {"CpG_embed.weight": "CpG_embed.CpG_embed.weight"}
"""Keys of checkpoints written before 2021-11-24 -> current original keys."""

_RULES: list[tuple[re.Pattern[str], str]] = [
    (re.compile(r"^dna_encoder\.nucleotide_embed\.(.*)$"), r"CNN.0.embed.\1"),
    (re.compile(r"^dna_encoder\.fc\.(.*)$"), r"CNN.0.lin.0.\1"),
    (re.compile(r"^dna_encoder\.proj\.(.*)$"), r"CNN.2.\1"),
    (re.compile(r"^cell_embed\.(.*)$"), r"cell_embed.\1"),
    (re.compile(r"^state_embed\.embed\.(.*)$"), r"CpG_embed.CpG_embed.\1"),
    (re.compile(r"^state_embed\.linear\.(.*)$"), r"CpG_embed.CpG_embed_linear.\1"),
    (re.compile(r"^state_embed\.mask_embed$"), r"CpG_embed.mask_embed"),
    (re.compile(r"^combine\.(.*)$"), r"combine_embeds.0.\1"),
    (re.compile(r"^layers\.(\d+)\.attentions\.(\d+)\.content_bias$"), r"transformer.\1.attn_list.\2.bias_r_w"),
    (re.compile(r"^layers\.(\d+)\.attentions\.(\d+)\.position_bias$"), r"transformer.\1.attn_list.\2.bias_r_r"),
    (re.compile(r"^layers\.(\d+)\.attentions\.(\d+)\.qkv\.(.*)$"), r"transformer.\1.attn_list.\2.qkv_lin.\3"),
    (re.compile(r"^layers\.(\d+)\.attentions\.(\d+)\.pos_proj\.(.*)$"), r"transformer.\1.attn_list.\2.embed_lin.\3"),
    (re.compile(r"^layers\.(\d+)\.attentions\.(\d+)\.out\.(.*)$"), r"transformer.\1.attn_list.\2.out_lin.\3"),
    (re.compile(r"^layers\.(\d+)\.attention_norms\.(\d+)\.(.*)$"), r"transformer.\1.norm_attn_list.\2.\3"),
    (re.compile(r"^layers\.(\d+)\.ff_norm\.(.*)$"), r"transformer.\1.norm2.\2"),
    (re.compile(r"^layers\.(\d+)\.ff\.(\d+)\.(.*)$"), r"transformer.\1.ff.\2.\3"),
    (re.compile(r"^head\.(.*)$"), r"output_head.\1"),
]  # fmt: skip
_CONV = re.compile(r"^dna_encoder\.convs\.(\d+)\.(.*)$")


def original_key(key: str) -> str:
    """Our state-dict key -> the original implementation's key."""
    match = _CONV.match(key)
    if match:  # conv layers sit at indices 0, 3, (6) of the original Sequential
        return f"CNN.0.CNN.{3 * int(match.group(1))}.{match.group(2)}"
    for pattern, replacement in _RULES:
        if pattern.match(key):
            return pattern.sub(replacement, key)
    raise CheckpointError(f"no original counterpart for parameter {key!r}")


def detect_mode(keys: Any) -> str | None:
    """Attention mode from original keys; ``None`` when ambiguous (2D and intracell look the same)."""
    keys = set(keys)
    if any(".attn_list.1." in k for k in keys):
        return "axial"
    if any(".attn_list.0.embed_lin." in k or ".attn_list.0.bias_r_" in k for k in keys):
        return None
    if any(".attn_list.0." in k for k in keys):
        return "intercell"
    return "none"


def _shape(state_dict: Mapping[str, Tensor], key: str, dim: int) -> int | None:
    value = state_dict.get(key)
    return None if value is None or value.dim() <= dim else int(value.shape[dim])


def config_from_original(
    state_dict: Mapping[str, Tensor], hparams: Mapping[str, Any] | None = None
) -> ModelConfig:
    """Build a ``ModelConfig`` from original hparams, inferring what the keys and shapes tell.

    ``hparams`` may use the original names (``RF``, ``transf_hsz``, ...) or ours (``dna_window``, ...).
    Values given explicitly win; anything else comes from the state dict or the original defaults.
    """
    ours: dict[str, Any] = {}
    ours_fields = set(HPARAM_NAMES.values())
    for name, value in (hparams or {}).items():
        if name in HPARAM_NAMES:
            ours[HPARAM_NAMES[name]] = value
        elif name in ours_fields:
            ours[name] = value
        elif name in TRAINING_HPARAMS:
            log.debug("ignoring training hyperparameter %s=%r", name, value)
        else:
            raise UsageError(f"unknown hyperparameter {name!r} of the original model")
    sd = {LEGACY_RENAMES.get(k, k): v for k, v in state_dict.items()}
    inferred: dict[str, Any] = {}
    if (n := _shape(sd, "cell_embed.weight", 0)) is not None:
        inferred["n_cells"] = n
    if (n := _shape(sd, "cell_embed.weight", 1)) is not None:
        inferred["cell_embed"] = n
    if (n := _shape(sd, "CNN.2.weight", 0)) is not None:
        inferred["dna_embed"] = n
    if (n := _shape(sd, "combine_embeds.0.weight", 0)) is not None:
        inferred["hidden"] = n
    if "CpG_embed.mask_embed" in sd:
        inferred["data_mode"] = "continuous"
        inferred["state_embed"] = _shape(sd, "CpG_embed.mask_embed", 1)
    elif "CpG_embed.CpG_embed.weight" in sd:
        inferred["data_mode"] = "binary"
        inferred["state_embed"] = _shape(sd, "CpG_embed.CpG_embed.weight", 1)
    layer_ids = {int(m.group(1)) for k in sd if (m := re.match(r"^transformer\.(\d+)\.", k))}
    inferred["n_layers"] = max(layer_ids) + 1 if layer_ids else 0
    if (n := _shape(sd, "transformer.0.attn_list.0.bias_r_w", 0)) is not None:
        inferred["n_heads"] = n
        inferred["head_dim"] = _shape(sd, "transformer.0.attn_list.0.bias_r_w", 1)
    inferred["layernorm"] = any(".norm2." in k for k in sd) or not layer_ids
    detected = detect_mode(sd)
    if detected is not None:
        inferred["mode"] = detected
        if "mode" in ours and ours["mode"] != detected:
            raise CheckpointError(
                f"hyperparameter mode={ours['mode']!r} but the checkpoint's keys are those of "
                f"mode {detected!r}"
            )
    elif "mode" not in ours:
        raise CheckpointError(
            "the checkpoint's keys fit mode '2D' and mode 'intracell' alike: give mode=2D or "
            "mode=intracell with the hyperparameters"
        )
    config = {**inferred, **ours}
    if "n_cells" not in config:
        raise CheckpointError("cannot tell the number of cells: no cell_embed.weight in checkpoint")
    if config.get("n_conv_layers", 2) != 2:
        raise CheckpointError(
            "the original's 3-convolution DNA CNN was broken (its Linear does not fit the "
            "channels); only n_conv_layers=2 checkpoints exist"
        )
    config.setdefault("attention_dropout", 0.2)
    try:
        return ModelConfig(**config)
    except UsageError as exc:
        raise CheckpointError(str(exc)) from exc


def from_original(
    state_dict: Mapping[str, Tensor], hparams: Mapping[str, Any] | None = None
) -> CpGTransformer:
    """Our model with the weights of an original state dict (strict keys and shapes)."""
    config = config_from_original(state_dict, hparams)
    given = {LEGACY_RENAMES.get(k, k): v for k, v in state_dict.items()}
    for old, new in LEGACY_RENAMES.items():
        if old in state_dict:
            log.info("renamed legacy key %s -> %s", old, new)
    ours = {original_key(k): k for k in CpGTransformer(config).state_dict()}
    state = {ours.get(k, k): v for k, v in given.items()}  # unknown keys stay as the file has them
    names = {k: orig for orig, k in ours.items()}
    return build_model(config, state, "original checkpoint", names)


def to_original(model: CpGTransformer) -> dict[str, Tensor]:
    """Our model's weights under the original's key names (inverse of :func:`from_original`)."""
    if not model.config.has_dna:
        raise CheckpointError("the original model always has a DNA branch; this model has none")
    if model.config.n_conv_layers != 2:
        raise CheckpointError("the original model only supports n_conv_layers=2")
    return {original_key(k): v.detach().clone() for k, v in model.state_dict().items()}


def to_original_hparams(config: ModelConfig) -> dict[str, Any]:
    """Our config as the original's constructor arguments."""
    values = config.to_dict()
    return {orig: values[ours] for orig, ours in HPARAM_NAMES.items()}


def original_forward(
    model: CpGTransformer, dna: Tensor, states: Tensor, pos: Tensor, cells: Tensor
) -> Tensor:
    """Forward with the original's tensor conventions (as in the golden files).

    dna ``[B, L, RF]`` int nucleotide codes; states ``[B, L, C]`` model-input coding (binary 0/1/2,
    continuous 0 or 1 + beta); pos ``[B, L]`` bp; cells ``[B, C]`` cell-table indices -> logits
    ``[B, L, C]``.
    """
    dtype = next(model.parameters()).dtype
    if model.config.data_mode == "binary":
        states = states.long()
    else:
        states = states.to(dtype)
    return model(states, pos.long(), cells.long(), dna=dna.long())


def load_original(
    path: str | PathLike[str], trust_pickle: bool = False
) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Read an original checkpoint: a bare ``.pt`` state dict, a Lightning ``.ckpt`` (``state_dict`` +
    ``hyper_parameters``) or a dict with ``state_dict`` and ``hparams``. -> (state_dict, hparams).

    Files that need full unpickling (Lightning ``.ckpt`` with custom objects) load only with
    ``trust_pickle=True``.
    """
    from cpgformer.checkpoint import _first_line, diagnose_file

    problem = diagnose_file(path)
    if problem is not None:
        raise CheckpointError(f"{path}: {problem}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=not trust_pickle)
    except Exception as exc:  # noqa: BLE001 - torch raises many kinds for bad files
        if not trust_pickle and "Weights only load failed" in str(exc):
            raise CheckpointError(
                f"{path}: holds Python objects other than tensors and plain data, which cpgformer "
                "does not load by default (see --trust-pickle in the help)"
            ) from exc
        raise CheckpointError(f"{path}: damaged checkpoint ({_first_line(exc)})") from exc
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path}: expected a state dict or checkpoint dict")
    hparams: dict[str, Any] = {}
    if "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
        raw_hparams = obj.get("hyper_parameters", obj.get("hparams")) or {}
        hparams = dict(vars(raw_hparams) if hasattr(raw_hparams, "__dict__") else raw_hparams)
        obj = obj["state_dict"]
    state_dict = {}
    for key, value in obj.items():
        if not isinstance(value, Tensor):
            raise CheckpointError(f"{path}: entry {key!r} is not a tensor")
        state_dict[str(key)] = value
    return state_dict, hparams


# --------------------------------------------------------------------------------------------------
# cpgformer convert-checkpoint


@dataclass
class ConvertOptions:
    """Parameters of :func:`convert_original` (the ``convert-checkpoint`` command's flags)."""

    hparams: list[str] = option(
        [],
        "original constructor arguments: a JSON object, a JSON file, or key=value pairs (e.g. "
        "n_cells=20 RF=1001 mode=axial); the shipped .pt files carry none, so give at least what "
        "their keys cannot tell (window, act; mode for 2D vs intracell)",
        metavar="SPEC",
        nargs="*",
        parse=str,
        shown="none",
    )
    cell_names: str | None = option(
        None,
        "text file with one cell name per line, in the order of the checkpoint's cell table "
        "(default: no names recorded; impute then takes the store's cells in their order)",
        metavar="CELL_NAMES",
    )
    trust_pickle: bool = option(
        False,
        "allow full unpickling (needed for some Lightning .ckpt files; only for trusted files)",
    )
    overwrite: bool = option(False, "replace the output if it exists", deprecated=("--force",))


def _parse_value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        lowered = text.lower()
        if lowered in ("true", "false"):
            return lowered == "true"
        return text


def parse_hparams(specs: Sequence[str]) -> dict[str, Any]:
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


def convert_original(
    original: str | PathLike[str],
    output: str | PathLike[str],
    options: ConvertOptions | None = None,
) -> CpGTransformer:
    """Convert an original CpG Transformer checkpoint into a cpgformer model file ``output``;
    return the model written."""
    opts = options or ConvertOptions()
    output = Path(output)
    inputs = [original, opts.cell_names]
    check_output(output, "model", overwrite=opts.overwrite, inputs=inputs)
    with output_lock(output):
        check_output(output, "model", overwrite=opts.overwrite, inputs=inputs)
        remove_leftovers(output)
        state_dict, file_hparams = load_original(original, trust_pickle=opts.trust_pickle)
        model = from_original(state_dict, {**file_hparams, **parse_hparams(opts.hparams)})
        cells = None
        if opts.cell_names:
            lines = Path(opts.cell_names).read_text().splitlines()
            cells = [line.strip() for line in lines if line.strip()]
            if len(set(cells)) != len(cells):
                raise UsageError(f"{opts.cell_names}: duplicate cell names")
        save_model(output, model, cells=cells, extra={"source": {"original": str(original)}})
    return model
