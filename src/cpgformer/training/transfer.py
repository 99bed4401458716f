"""Initialising a run from another checkpoint (``fit(..., init_from=...)``).

Our checkpoint (architecture from the file) or an original CpG Transformer ``.pt``/``.ckpt``
(architecture from the file's keys plus the given hyperparameters, through :mod:`cpgformer.legacy`).
The cell embedding table is re-initialised for the new store's cells; every other parameter is
loaded with strict key and shape checks, and the key map is written and logged.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from cpgformer import legacy
from cpgformer.checkpoint import load_checkpoint
from cpgformer.errors import CheckpointError, UsageError
from cpgformer.nn import ModelConfig
from cpgformer.training.task import CHECKPOINT_KEY

CELL_EMBEDDING_KEYS = ("cell_embed.weight",)
"""Parameters that index the cell table: re-initialised on transfer to another set of cells."""


def _is_cpgformer_file(path: str | os.PathLike[str]) -> bool:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - not readable safely: not one of ours
        return False
    return isinstance(obj, Mapping) and (
        obj.get("format") == "cpgformer-model" or CHECKPOINT_KEY in obj
    )


def load_source(
    path: str | os.PathLike[str], hparams: Mapping[str, Any] | None = None
) -> tuple[dict[str, torch.Tensor], ModelConfig, str]:
    """Weights (our key names) and config of a checkpoint to initialise from; kind "ours"/"original".

    For original files, ``hparams`` (our or the original's names) complete what the keys do not tell.
    """
    if not Path(path).is_file():
        raise UsageError(f"{path}: no such checkpoint")
    if _is_cpgformer_file(path):
        loaded = load_checkpoint(path)
        return loaded.model.state_dict(), loaded.config, "ours"
    state, file_hparams = legacy.load_original(path)
    merged = {**file_hparams, **dict(hparams or {})}
    merged.pop("n_cells", None)  # always taken from the weights
    model = legacy.from_original(state, merged)
    return model.state_dict(), model.config, "original"


def transfer_weights(
    model: torch.nn.Module,
    source: Mapping[str, torch.Tensor],
    reinit_keys: Sequence[str] = CELL_EMBEDDING_KEYS,
) -> list[tuple[str, str, str]]:
    """Copy ``source`` into ``model``: every key except ``reinit_keys`` must exist with equal shape.

    Returns the key map ``[(target key, source key or "-", "loaded" | "re-initialised")]``.
    Raises :class:`CheckpointError` listing every missing, unexpected or mis-shaped key.
    """
    target = model.state_dict()
    reinit = set(reinit_keys)
    problems = []
    missing = sorted(k for k in target if k not in reinit and k not in source)
    unexpected = sorted(k for k in source if k not in target)
    if missing:
        problems.append("missing in the source: " + ", ".join(missing))
    if unexpected:
        problems.append("not in the new model: " + ", ".join(unexpected))
    for key, value in source.items():
        if key in target and key not in reinit and tuple(value.shape) != tuple(target[key].shape):
            problems.append(
                f"{key}: shape {list(value.shape)} in the source, {list(target[key].shape)} here"
            )
    if problems:
        raise CheckpointError("cannot initialise from the checkpoint: " + "; ".join(problems))
    new_state = {}
    key_map: list[tuple[str, str, str]] = []
    for key, value in target.items():
        if key in reinit:
            new_state[key] = value
            key_map.append((key, "-", "re-initialised"))
        else:
            new_state[key] = source[key].to(value.dtype)
            key_map.append((key, key, "loaded"))
    model.load_state_dict(new_state, strict=True)
    return key_map


def source_profiles(path: str | os.PathLike[str], kind: str) -> dict | None:
    """The cell profiler recorded in our checkpoint ``path`` (None for original files)."""
    if kind != "ours":
        return None
    return load_checkpoint(path).cell_profiles
