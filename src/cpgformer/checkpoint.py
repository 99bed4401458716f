"""Checkpoint files: ``read_checkpoint`` reads our formats without Lightning (and original files).

* Lightning ``.ckpt`` written by ``cpgformer train``: a dict with ``state_dict`` (model weights under
  ``model.``) and ``checkpoint["cpgformer"]`` = {format_version, config, cells, store_fingerprint,
  data, temperature, training}. Read with ``torch.load(weights_only=True)``: importing Lightning is
  not needed and no code in the file is executed.
* The plain model file of :mod:`cpgformer.nn.serialize` (``format: "cpgformer-model"``), with
  ``store_fingerprint``, ``data`` and ``temperature`` as extra entries (:func:`save_checkpoint`).

* An original CpG Transformer state dict (``.pt``, or a checkpoint dict with ``state_dict`` holding
  only tensors), converted with :mod:`cpgformer.legacy`.

The object the rest of cpgformer uses is :class:`cpgformer.model.Model` (``Model.load``).
"""

from __future__ import annotations

import logging
import os
import pickle
import zipfile
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch

from cpgformer import legacy
from cpgformer.errors import CheckpointError, describe_os_error
from cpgformer.nn import CpGTransformer
from cpgformer.nn.serialize import build_model, load_model, save_model, versioned_config

if TYPE_CHECKING:
    from cpgformer.model import Model

log = logging.getLogger(__name__)

LIGHTNING_KEY = "cpgformer"
MODEL_PREFIX = "model."
SUPPORTED_VERSION = 1


_ZIP_MAGIC = b"PK\x03\x04"


def diagnose_file(path: str | os.PathLike[str]) -> str | None:
    """Why ``path`` cannot be a checkpoint, judged from the file alone (None: it may be one).

    Checks existence, type, emptiness, text content and, for the zip container ``torch.save``
    writes, that the archive is complete (its central directory is read; nothing is unpickled).
    """
    p = os.fspath(path)
    if not os.path.exists(p):
        return "no such file"
    if os.path.isdir(p):
        return "is a directory, not a checkpoint file"
    if not os.path.isfile(p):
        return "not a regular file"
    try:
        size = os.path.getsize(p)
        with open(p, "rb") as fh:
            head = fh.read(512)
    except OSError as exc:
        return describe_os_error(exc).split(": ", 1)[-1]
    if size == 0:
        return "empty file (0 bytes), not a checkpoint"
    if head.startswith(_ZIP_MAGIC):
        try:
            with zipfile.ZipFile(p) as zf:
                names = zf.namelist()
        except (zipfile.BadZipFile, OSError, ValueError):
            return (
                f"truncated or damaged checkpoint ({size} bytes; the archive is incomplete, e.g. "
                "cut off while copying or writing)"
            )
        if not any(n.endswith("data.pkl") for n in names):
            return "a zip archive but not a PyTorch checkpoint"
        return None
    if head.startswith(b"\x80"):  # a plain pickle (PyTorch < 1.6 files, original .pt)
        return None
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return "not a checkpoint (unknown binary content)"
    first = text.strip().splitlines()[0][:40] if text.strip() else ""
    return f"a text file ({first!r}...), not a checkpoint" if first else "not a checkpoint"


def _read(path: str | os.PathLike[str]) -> Any:
    problem = diagnose_file(path)
    if problem is not None:
        raise CheckpointError(f"{path}: {problem}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "Weights only load failed" in str(exc):
            raise CheckpointError(
                f"{path}: holds Python objects other than tensors and plain data; cpgformer reads "
                "only its own checkpoints, without executing code in the file"
            ) from exc
        raise CheckpointError(f"{path}: damaged checkpoint ({_first_line(exc)})") from exc
    except OSError as exc:
        raise CheckpointError(describe_os_error(exc, path)) from exc
    except Exception as exc:  # noqa: BLE001 - torch raises many kinds for bad files
        raise CheckpointError(f"{path}: damaged checkpoint ({_first_line(exc)})") from exc


def _first_line(exc: BaseException) -> str:
    """The first sentence of an exception message, without advice to unpickle unsafely."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    text = text.split(". This is an internal")[0].split(" If you ")[0]
    if "weights_only" in text:
        return type(exc).__name__
    return text[:200]


def model_state_from_lightning(
    state_dict: Mapping[str, torch.Tensor],
) -> dict[str, torch.Tensor]:
    """The ``model.``-prefixed entries of a LightningModule state dict, prefix removed."""
    return {k[len(MODEL_PREFIX) :]: v for k, v in state_dict.items() if k.startswith(MODEL_PREFIX)}


def read_checkpoint(
    path: str | os.PathLike[str], hparams: Mapping[str, Any] | None = None
) -> tuple[CpGTransformer, dict[str, Any]]:
    """(network in eval mode, recorded entries) of a ``cpgformer train`` checkpoint (``.ckpt``), a
    plain cpgformer model file, or an original CpG Transformer state dict (``hparams``: see
    :func:`cpgformer.legacy.config_from_original`). The entries are the keyword fields of
    :class:`cpgformer.model.Model`."""
    obj = _read(path)
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path}: not a cpgformer checkpoint")
    if obj.get("format") == "cpgformer-model":
        model, meta = load_model(path)
        return model, _entries(meta, "model")
    meta = obj.get(LIGHTNING_KEY)
    if not isinstance(meta, Mapping) or "state_dict" not in obj:
        return _read_original(path, obj, hparams)
    config = versioned_config(meta, SUPPORTED_VERSION, str(path))
    model = build_model(config, model_state_from_lightning(obj["state_dict"]), str(path))
    cells = meta.get("cells")
    if cells is not None and len(cells) != config.n_cells:
        raise CheckpointError(f"{path}: {len(cells)} cell names for {config.n_cells} cells")
    return model, _entries(meta, "lightning")


def _entries(meta: Mapping[str, Any], kind: str) -> dict[str, Any]:
    cells = meta.get("cells")
    return {
        "cells": list(cells) if cells is not None else None,
        "store_fingerprint": meta.get("store_fingerprint"),
        "data": dict(meta.get("data") or {}),
        "temperature": float(meta.get("temperature") or 1.0),
        "training": dict(meta.get("training") or {}),
        "kind": kind,
        "cell_profiles": meta.get("cell_profiles"),
    }


def _read_original(
    path: str | os.PathLike[str], obj: Mapping[str, Any], hparams: Mapping[str, Any] | None
) -> tuple[CpGTransformer, dict[str, Any]]:
    """An original CpG Transformer state dict (bare, or under ``state_dict``) as our network."""
    state = obj.get("state_dict", obj)
    known = isinstance(state, Mapping) and any(
        ".attn_list." in str(k) or "CpG_embed" in str(k) for k in state
    )
    if not known or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(
            f"{path}: not a cpgformer checkpoint nor an original CpG Transformer state dict"
        )
    file_hparams = obj.get("hyper_parameters", obj.get("hparams")) or {}
    merged = {**dict(file_hparams), **dict(hparams or {})}
    try:
        model = legacy.from_original(state, merged)
    except CheckpointError as exc:
        raise CheckpointError(f"{path}: {exc}") from None
    model.eval()
    return model, _entries({}, "original")


def load_checkpoint(path: str | os.PathLike[str]) -> Model:
    """:meth:`cpgformer.model.Model.load` (the name older code knows)."""
    from cpgformer.model import Model

    return Model.load(path)


def save_checkpoint(
    path: str | os.PathLike[str],
    model: CpGTransformer,
    *,
    cells: list[str] | None = None,
    store_fingerprint: str | None = None,
    data: Mapping[str, Any] | None = None,
    temperature: float = 1.0,
    cell_profiles: Mapping[str, Any] | None = None,
) -> None:
    """Write a plain model file (atomic) that :func:`read_checkpoint` reads back."""
    save_model(
        path,
        model,
        cells=cells,
        extra={
            "store_fingerprint": store_fingerprint,
            "data": dict(data or {}),
            "temperature": float(temperature),
            "cell_profiles": dict(cell_profiles) if cell_profiles else None,
        },
    )
