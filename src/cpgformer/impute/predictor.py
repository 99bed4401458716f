"""The model seam of imputation: a :class:`Predictor` (what tiled inference needs from a model)
and a :class:`ModelSource` (a predictor plus what its checkpoint says about its training data)."""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from cpgformer.errors import UsageError

log = logging.getLogger(__name__)

PredictFn = Callable[[Tensor, Tensor, Tensor, "Tensor | None"], Tensor]
"""``predict_fn(states [B, L, C], positions [B, L], cell_ids [B, C], dna_embedding [B, L, E] | None)``
-> logits (binary) or raw values (continuous) ``[B, L, C]``; states are in model-input coding."""


@dataclass
class Predictor:
    """What imputation needs from a model; built from a ``CpGTransformer`` or by hand (tests).

    ``margin`` is the receptive field in sites on each side; ``embed_fn`` maps ``[N, dna_window]``
    nucleotide codes to ``[N, E]`` (``None`` for a model without DNA).
    """

    predict_fn: PredictFn
    margin: int
    n_cells: int
    embed_fn: Callable[[Tensor], Tensor] | None = None
    dna_window: int = 0
    data_mode: str = "binary"
    dna_encoder: Any = None  # the model's DNAEncoder: enables shared convolutions (faster)

    @classmethod
    def from_model(
        cls, model: torch.nn.Module, device: str | torch.device | None = None
    ) -> Predictor:
        """Wrap a ``CpGTransformer`` (switched to eval mode: no dropout at inference).

        ``device``: where the model runs (``"cpu"``, ``"cuda"``, ``"cuda:1"``…; default: where its
        parameters are). Inputs are moved there and outputs come back to the CPU.
        """
        model.eval()
        config = model.config  # type: ignore[attr-defined]
        dev = resolve_device(device) if device is not None else next(model.parameters()).device
        model.to(dev)

        def predict(
            states: Tensor, positions: Tensor, cell_ids: Tensor, dna_embedding: Tensor | None
        ) -> Tensor:
            emb = None if dna_embedding is None else dna_embedding.to(dev)
            out = model(states.to(dev), positions.to(dev), cell_ids.to(dev), dna_embedding=emb)
            return out.cpu()

        def embed(windows: Tensor) -> Tensor:
            return model.embed_dna(windows.to(dev)).cpu()  # type: ignore[attr-defined]

        has_dna = bool(config.dna_window)
        return cls(
            predict_fn=predict,
            margin=int(model.receptive_field_sites),  # type: ignore[attr-defined]
            n_cells=int(config.n_cells),
            embed_fn=embed if has_dna else None,
            dna_window=int(config.dna_window or 0),
            data_mode=str(config.data_mode),
            # shared convolutions run on the CPU; on an accelerator the per-window CNN is used
            dna_encoder=getattr(model, "dna_encoder", None) if dev.type == "cpu" else None,
        )


def resolve_device(device: str | torch.device) -> torch.device:
    """A torch device, checked to be usable (``UsageError`` naming what is missing otherwise)."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise UsageError(f"--device: not a torch device: {device!r} ({exc})") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device {device}: CUDA is not available in this torch build/machine")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise UsageError(f"--device {device}: MPS is not available on this machine")
    return dev


@dataclass
class ModelSource:
    """A predictor plus what the checkpoint says about the data it was trained on."""

    predictor: Predictor
    checkpoint_id: str
    cells: list[str] | None = None  # the checkpoint's cell table; None: take the store's order
    store_fingerprint: str | None = None
    config: dict = field(default_factory=dict)
    temperature: float = 1.0
    loaded: Any = None  # the LoadedCheckpoint (inductive models embed the store's cells with it)

    @property
    def inductive(self) -> bool:
        """True when the model embeds any cell from its data (applies to new cells)."""
        return self.config.get("cell_encoder") == "profile" or not self.config.get(
            "cell_identity", True
        )

    def cell_ids_for(self, ds: Any, ignore_fingerprint: bool = False) -> np.ndarray:
        """Model cell id of each store column, after checking store and checkpoint fit together.

        Inductive models take any store: the store's cells are embedded from their own profiles.
        Table models impute exactly their training cells: the store must be the training store
        (fingerprint, unless ``ignore_fingerprint``) and hold the same cells (any order)."""
        if self.inductive:
            if self.loaded is None:
                raise UsageError("an inductive model needs its checkpoint to embed new cells")
            self.loaded.use_cells_of(ds)
            return np.arange(ds.n_cells, dtype=np.int64)
        if self.store_fingerprint and self.store_fingerprint != ds.fingerprint:
            if not ignore_fingerprint:
                raise UsageError(
                    f"{ds.path}: store fingerprint {ds.fingerprint[:12]} differs from the one the "
                    f"checkpoint was trained on ({self.store_fingerprint[:12]}); impute the "
                    "training store, or pass --ignore-fingerprint to apply the model to another "
                    "store of the same cells"
                )
        cell_ids = cell_index_map(ds.cells, self.cells)
        if self.predictor.n_cells != ds.n_cells:
            raise UsageError(
                f"the model's cell table has {self.predictor.n_cells} cells, the store "
                f"{ds.n_cells}: a model imputes exactly the cells it was trained on"
            )
        if self.cells is None:
            log.warning(
                "the checkpoint records no cell names: assuming the store's columns are the "
                "model's cells in the same order"
            )
        return cell_ids


def file_digest(path: str | os.PathLike[str]) -> str:
    """SHA-256 of a file (the checkpoint id recorded in the imputed store)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def load_model_source(
    path: str | os.PathLike[str], device: str | torch.device | None = None
) -> ModelSource:
    """Load a checkpoint (``cpgformer.checkpoint.load_checkpoint``) as a :class:`ModelSource`."""
    from cpgformer.checkpoint import load_checkpoint

    loaded = load_checkpoint(path)
    config = loaded.config
    config_dict = config.to_dict() if hasattr(config, "to_dict") else dict(config)
    temperature = getattr(loaded, "temperature", None)
    return ModelSource(
        predictor=Predictor.from_model(loaded.model, device),
        checkpoint_id=file_digest(path),
        cells=list(loaded.cells) if loaded.cells is not None else None,
        store_fingerprint=loaded.store_fingerprint,
        config=config_dict,
        temperature=float(temperature) if temperature else 1.0,
        loaded=loaded,
    )


def cell_index_map(store_cells: Sequence[str], model_cells: Sequence[str] | None) -> np.ndarray:
    """Model cell id for each store column; the store may list the model's cells in another order."""
    store_cells = list(store_cells)
    if model_cells is None or list(model_cells) == store_cells:
        return np.arange(len(store_cells), dtype=np.int64)
    model_index = {name: i for i, name in enumerate(model_cells)}
    missing = [c for c in store_cells if c not in model_index]
    extra = [c for c in model_cells if c not in set(store_cells)]
    if missing or extra or len(model_cells) != len(store_cells):
        parts = []
        if missing:
            parts.append(f"{len(missing)} store cell(s) unknown to the model (e.g. {missing[:3]})")
        if extra:
            parts.append(f"{len(extra)} model cell(s) missing from the store (e.g. {extra[:3]})")
        raise UsageError(
            "the store's cells differ from the checkpoint's: "
            + "; ".join(parts)
            + ". A model imputes exactly the cells it was trained on (its cell table); fine-tune "
            "it on this store to impute other cells"
        )
    log.info("store lists the checkpoint's cells in another order: matched by name")
    return np.array([model_index[c] for c in store_cells], dtype=np.int64)
