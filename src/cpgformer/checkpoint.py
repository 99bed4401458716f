"""Load and save trained models: ``load_checkpoint`` reads both our formats without Lightning.

* Lightning ``.ckpt`` written by ``cpgformer train``: a dict with ``state_dict`` (model weights under
  ``model.``) and ``checkpoint["cpgformer"]`` = {format_version, config, cells, store_fingerprint,
  data, temperature, training}. Read with ``torch.load(weights_only=True)``: importing Lightning is
  not needed and no code in the file is executed.
* The plain model file of :mod:`cpgformer.nn.serialize` (``format: "cpgformer-model"``), with
  ``store_fingerprint``, ``data`` and ``temperature`` as extra entries (:func:`save_checkpoint`).

Original CpG Transformer checkpoints (``.pt`` state dicts) go through :mod:`cpgformer.legacy`
(``cpgformer convert-checkpoint``, or ``cpgformer train --init-from``).
"""

from __future__ import annotations

import logging
import os
import pickle
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from cpgformer.errors import CheckpointError, UsageError
from cpgformer.nn import CpGTransformer, ModelConfig

log = logging.getLogger(__name__)

LIGHTNING_KEY = "cpgformer"
MODEL_PREFIX = "model."
SUPPORTED_VERSION = 1


@dataclass
class LoadedCheckpoint:
    """A model (eval mode, CPU) with what its checkpoint says about its training data."""

    model: CpGTransformer
    config: ModelConfig
    cells: list[str] | None = None
    store_fingerprint: str | None = None
    data: dict[str, Any] = field(default_factory=dict)
    temperature: float = 1.0
    training: dict[str, Any] = field(default_factory=dict)
    kind: str = "lightning"  # "lightning" | "model"
    cell_profiles: dict[str, Any] | None = None  # fitted CellProfiler of an inductive model

    @property
    def inductive(self) -> bool:
        """True when the model embeds any cell from its data (no fixed cell table)."""
        return bool(self.config.inductive)

    def use_cells_of(self, dataset: Any) -> None:
        """Make an inductive model embed the cells of ``dataset`` (a store): their profiles are
        computed with the checkpoint's fitted profiler. Table models are left as they are."""
        if not self.config.uses_profiles:
            return
        if not self.cell_profiles:
            raise CheckpointError("the checkpoint of an inductive model records no cell profiler")
        from cpgformer.data.profiles import CellProfiler

        profiler = CellProfiler.from_dict(self.cell_profiles)
        self.model.set_cell_profiles(torch.from_numpy(profiler.transform(dataset)))


_ZIP_MAGIC = b"PK\x03\x04"


def diagnose_file(path: str | os.PathLike[str]) -> str | None:
    """Why ``path`` cannot be a checkpoint, judged from the file alone (None: it may be one).

    Checks existence, type, emptiness, text content and, for the zip container ``torch.save``
    writes, that the archive is complete (its central directory is read; nothing is unpickled).
    """
    import zipfile

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
        from cpgformer.errors import describe_os_error

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
        from cpgformer.errors import describe_os_error

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


def build_model(
    config: ModelConfig, state: Mapping[str, torch.Tensor], where: str
) -> CpGTransformer:
    """A model of ``config`` with ``state`` loaded strictly (keys and shapes checked)."""
    model = CpGTransformer(config)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    problems = []
    if missing:
        problems.append("missing " + ", ".join(missing))
    if unexpected:
        problems.append("unexpected " + ", ".join(unexpected))
    for key, value in state.items():
        if key in expected and tuple(value.shape) != tuple(expected[key].shape):
            problems.append(
                f"{key} has shape {list(value.shape)}, config expects {list(expected[key].shape)}"
            )
    if problems:
        raise CheckpointError(f"{where}: weights do not fit the config: " + "; ".join(problems))
    model.load_state_dict(dict(state), strict=True)
    model.eval()
    return model


def load_checkpoint(path: str | os.PathLike[str]) -> LoadedCheckpoint:
    """Read a ``cpgformer train`` checkpoint (``.ckpt``) or a plain cpgformer model file."""
    obj = _read(path)
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path}: not a cpgformer checkpoint")
    if obj.get("format") == "cpgformer-model":
        from cpgformer.nn.serialize import load_model

        model, meta = load_model(path)
        return LoadedCheckpoint(
            model=model,
            config=meta["config"],
            cells=meta.get("cells"),
            store_fingerprint=meta.get("store_fingerprint"),
            data=dict(meta.get("data") or {}),
            temperature=float(meta.get("temperature") or 1.0),
            training=dict(meta.get("training") or {}),
            kind="model",
            cell_profiles=meta.get("cell_profiles"),
        )
    meta = obj.get(LIGHTNING_KEY)
    if not isinstance(meta, Mapping) or "state_dict" not in obj:
        raise CheckpointError(
            f"{path}: not a cpgformer checkpoint (for original CpG Transformer files use "
            "`cpgformer convert-checkpoint` or `cpgformer train --init-from`)"
        )
    version = meta.get("format_version")
    if not isinstance(version, int) or version > SUPPORTED_VERSION:
        raise CheckpointError(
            f"{path}: checkpoint format_version {version!r} is newer than this cpgformer "
            f"supports ({SUPPORTED_VERSION})"
        )
    try:
        config = ModelConfig.from_dict(dict(meta["config"]))
    except (UsageError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{path}: bad model config: {exc}") from exc
    model = build_model(config, model_state_from_lightning(obj["state_dict"]), str(path))
    cells = meta.get("cells")
    if cells is not None and len(cells) != config.n_cells:
        raise CheckpointError(f"{path}: {len(cells)} cell names for {config.n_cells} cells")
    return LoadedCheckpoint(
        model=model,
        config=config,
        cells=list(cells) if cells is not None else None,
        store_fingerprint=meta.get("store_fingerprint"),
        data=dict(meta.get("data") or {}),
        temperature=float(meta.get("temperature") or 1.0),
        training=dict(meta.get("training") or {}),
        kind="lightning",
        cell_profiles=meta.get("cell_profiles"),
    )


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
    """Write a plain model file (atomic) that :func:`load_checkpoint` reads back."""
    from cpgformer.nn.serialize import save_model

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
