"""Our plain model file: ``{"format": "cpgformer-model", "format_version": 1, "config", "state_dict",
"cells", ...extra}`` written with ``torch.save`` (atomically) and read with ``weights_only=True``."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from os import PathLike
from typing import Any

import torch

from cpgformer.errors import CheckpointError, UsageError
from cpgformer.nn.config import ModelConfig
from cpgformer.nn.model import CpGTransformer
from cpgformer.utils.atomic import atomic_path

log = logging.getLogger(__name__)

FORMAT = "cpgformer-model"
FORMAT_VERSION = 1
_RESERVED = ("format", "format_version", "config", "state_dict", "cells")


def save_model(
    path: str | PathLike[str],
    model: CpGTransformer,
    cells: list[str] | None = None,
    extra: dict[str, Any] | None = None,
) -> None:
    """Write ``model`` (config + weights) and optional cell names / extra plain entries to ``path``."""
    if cells is not None and len(cells) != model.config.n_cells:
        raise UsageError(
            f"{len(cells)} cell names given for a model with {model.config.n_cells} cells"
        )
    payload: dict[str, Any] = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "config": model.config.to_dict(),
        "state_dict": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
        "cells": None if cells is None else [str(c) for c in cells],
    }
    for key, value in (extra or {}).items():
        if key in _RESERVED:
            raise ValueError(f"extra entry {key!r} would overwrite a reserved field")
        payload[key] = value
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        torch.save(payload, fh)  # a file object: torch rejects temp names like .partial-model-x
    log.debug("saved model to %s", path)


def build_model(
    config: ModelConfig,
    state: Mapping[str, torch.Tensor],
    where: str,
    names: Mapping[str, str] | None = None,
) -> CpGTransformer:
    """A model of ``config`` (eval mode) with ``state`` loaded strictly: every key and shape is
    checked, and what does not fit is named (``CheckpointError`` starting with ``where``; ``names``
    maps our keys to the names the file uses, e.g. the original implementation's)."""
    model = CpGTransformer(config)
    expected = model.state_dict()
    shown = dict(names or {})
    missing = [shown.get(k, k) for k in sorted(set(expected) - set(state))]
    unexpected = sorted(set(state) - set(expected))
    problems = []
    if missing:
        problems.append("missing key(s): " + ", ".join(missing))
    if unexpected:
        problems.append("unexpected key(s): " + ", ".join(unexpected))
    for key, value in state.items():
        if key in expected and tuple(value.shape) != tuple(expected[key].shape):
            problems.append(
                f"shape of {shown.get(key, key)} is {list(value.shape)}, expected "
                f"{list(expected[key].shape)} for {config.mode} model"
            )
    if problems:
        raise CheckpointError(f"{where}: weights do not fit the config: " + "; ".join(problems))
    model.load_state_dict(dict(state), strict=True)
    model.eval()
    return model


def versioned_config(entries: Mapping[str, Any], supported: int, where: str) -> ModelConfig:
    """The model config of a checkpoint's entries, after checking that this cpgformer reads its
    ``format_version`` (``CheckpointError`` starting with ``where`` otherwise)."""
    version = entries.get("format_version")
    if not isinstance(version, int) or version > supported:
        raise CheckpointError(
            f"{where}: checkpoint format_version {version!r} is newer than this cpgformer "
            f"supports ({supported})"
        )
    try:
        return ModelConfig.from_dict(dict(entries["config"]))
    except (UsageError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{where}: bad model config: {exc}") from exc


def load_model(path: str | PathLike[str]) -> tuple[CpGTransformer, dict[str, Any]]:
    """Read a file written by :func:`save_model` -> (model in eval mode, metadata dict).

    The metadata holds ``config`` (``ModelConfig``), ``cells`` and every extra entry.
    """
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError as exc:
        raise CheckpointError(f"{path}: no such file") from exc
    except Exception as exc:  # noqa: BLE001 - torch raises many kinds for bad files
        raise CheckpointError(f"{path}: cannot read as a cpgformer model file: {exc}") from exc
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(
            f"{path}: not a {FORMAT} file (original CpG Transformer checkpoints: use "
            "`cpgformer convert-checkpoint`)"
        )
    config = versioned_config(payload, FORMAT_VERSION, str(path))
    model = build_model(config, payload["state_dict"], str(path))
    meta = {k: v for k, v in payload.items() if k not in ("state_dict", "config")}
    meta["config"] = config
    return model, meta
