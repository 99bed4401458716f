"""The model layer: :class:`Model`, one trained CpG Transformer with what its checkpoint records.

Every command and the benchmark go through it::

    model = Model.load("model.ckpt")          # ours, Lightning or an original CpG Transformer file
    cell_ids = model.check(store)              # the one store-vs-checkpoint rule
    model.impute(store, "imputed/")            # -> cpgformer.impute.impute
    model.calibrate(store, "calibrated.pt")    # -> cpgformer.impute.calibrate
    model.explain(store, queries)              # -> cpgformer.explain.explain_sites
    model.cell_vectors(store)                  # -> cpgformer.cells.cell_representations

Tiled inference sees a model through a :class:`Predictor` (:meth:`Model.predictor`; tests build
them by hand). The network itself is :class:`cpgformer.nn.CpGTransformer` (pure torch); the file
formats are in
:mod:`cpgformer.checkpoint`; the library functions above hold the work, this class holds the rule
that decides whether a store and a checkpoint go together:

* an *inductive* model (cells embedded from their own calls, or no cell identity) applies to any
  store: the store's cells are embedded with the checkpoint's fitted profiler;
* a *table* model (one learned vector per training cell) applies to exactly its training cells, in
  any order: the store must be the one it was trained on (same fingerprint), unless
  ``ignore_fingerprint`` says another store of the same cells is meant.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from cpgformer import pretrained
from cpgformer.checkpoint import read_checkpoint, save_checkpoint
from cpgformer.data.profiles import CellProfiler
from cpgformer.errors import CheckpointError, UsageError
from cpgformer.io.store import reference as find_reference
from cpgformer.nn import CpGTransformer, ModelConfig

log = logging.getLogger(__name__)

IGNORE_FINGERPRINT_HELP = (
    "use a store other than the training store (its cells must still be the model's; models "
    "trained with --cell-encoder profile take any store and any cells)"
)
"""Help of every command's ``--ignore-fingerprint`` flag (see :meth:`Model.check`)."""

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


def file_digest(path: str | os.PathLike[str]) -> str:
    """SHA-256 of a file (the checkpoint id recorded in the imputed store)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@dataclass
class Model:
    """A trained model (eval mode) with what its checkpoint says about its training data.

    ``network`` is the :class:`~cpgformer.nn.CpGTransformer`; a model built around a hand-made
    :class:`~cpgformer.impute.Predictor` (tests, speed benchmarks) has ``network=None``."""

    network: CpGTransformer | None = None
    cells: list[str] | None = None  # the checkpoint's cell table; None: take the store's order
    store_fingerprint: str | None = None
    data: dict[str, Any] = field(default_factory=dict)
    temperature: float = 1.0
    training: dict[str, Any] = field(default_factory=dict)
    cell_profiles: dict[str, Any] | None = None  # fitted CellProfiler of an inductive model
    kind: str = "memory"  # "lightning" | "model" | "original" | "memory"
    path: str | None = None
    checkpoint_id: str = "in-memory"
    predictor_override: Predictor | None = field(default=None, repr=False)

    # ---------------------------------------------------------------- construction

    @classmethod
    def load(cls, path: str | os.PathLike[str], hparams: Mapping[str, Any] | None = None) -> Model:
        """Read a checkpoint: ``cpgformer train``'s Lightning ``.ckpt``, our plain model file, or an
        original CpG Transformer state dict (``hparams`` complete what its keys do not tell);
        ``"pretrained"`` is the model shipped in the package (:mod:`cpgformer.pretrained`)."""
        path = pretrained.resolve(path)
        network, meta = read_checkpoint(path, hparams)
        return cls(network, checkpoint_id=file_digest(path), path=str(path), **meta)

    @classmethod
    def from_predictor(
        cls,
        predictor: Predictor,
        checkpoint_id: str = "in-memory",
        *,
        cells: Sequence[str] | None = None,
        store_fingerprint: str | None = None,
        temperature: float = 1.0,
    ) -> Model:
        """A table model around a hand-made predictor (no network: nothing to explain or save)."""
        return cls(
            None,
            cells=None if cells is None else list(cells),
            store_fingerprint=store_fingerprint,
            temperature=temperature,
            checkpoint_id=checkpoint_id,
            predictor_override=predictor,
        )

    def save(self, path: str | os.PathLike[str], **changes: Any) -> None:
        """Write a plain model file (atomic) that :meth:`load` reads back; ``changes`` replace
        recorded entries (``data``, ``temperature``, ...)."""
        entries = {
            "cells": self.cells,
            "store_fingerprint": self.store_fingerprint,
            "data": self.data,
            "temperature": self.temperature,
            "cell_profiles": self.cell_profiles,
        }
        entries.update(changes)
        save_checkpoint(path, self.require_network("saving"), **entries)

    # ---------------------------------------------------------------- what the checkpoint says

    @property
    def model(self) -> CpGTransformer:
        """The network (the name callers of ``load_checkpoint`` know)."""
        return self.require_network("this")

    @property
    def config(self) -> ModelConfig | None:
        return None if self.network is None else self.network.config

    @property
    def config_dict(self) -> dict:
        return {} if self.network is None else self.network.config.to_dict()

    @property
    def n_cells(self) -> int:
        if self.predictor_override is not None:
            return int(self.predictor_override.n_cells)
        return int(self.require_network("this").config.n_cells)

    @property
    def inductive(self) -> bool:
        """True when the model embeds any cell from its data (applies to new cells)."""
        return self.config is not None and bool(self.config.inductive)

    @property
    def name(self) -> str:
        return self.path or f"the model {self.checkpoint_id}"

    def require_network(self, what: str) -> CpGTransformer:
        if self.network is None:
            raise UsageError(f"{what} needs a trained network, not a bare predictor")
        return self.network

    def predictor(self, device: str | torch.device | None = None) -> Predictor:
        """What tiled inference needs from this model, running on ``device``."""
        if self.predictor_override is not None:
            return self.predictor_override
        return Predictor.from_model(self.require_network("inference"), device)

    # ---------------------------------------------------------------- the one rule

    def check(
        self, store: Any, ignore_fingerprint: bool = False, *, profiles_from: Any = None
    ) -> np.ndarray:
        """Model cell id of each store column, after checking that store and model go together.

        Inductive models take any store: its cells are embedded from their calls (those of
        ``profiles_from`` when given, e.g. only the training chromosomes of a benchmark). Table models
        take exactly their training cells (any order) from their training store (fingerprint, unless
        ``ignore_fingerprint``). Anything else is refused with one ``UsageError`` naming both."""
        if self.inductive:
            self._embed_cells(profiles_from if profiles_from is not None else store)
            return np.arange(store.n_cells, dtype=np.int64)
        if self.cells is None:
            problem = None
            if self.n_cells != store.n_cells:
                problem = (
                    f"the store has {store.n_cells} cells, the model's cell table {self.n_cells}"
                )
        else:
            problem = _cell_difference(list(store.cells), self.cells)
        theirs = getattr(store, "fingerprint", None)
        if not problem and self.store_fingerprint and theirs and theirs != self.store_fingerprint:
            if not ignore_fingerprint:
                problem = (
                    f"store fingerprint {theirs[:12]} differs from the training store's "
                    f"({self.store_fingerprint[:12]})"
                )
        if problem:
            self._refuse(store, problem)
        if self.cells is None:
            log.warning(
                "%s records no cell names: assuming the store's columns are the model's cells in "
                "the same order",
                self.name,
            )
            return np.arange(store.n_cells, dtype=np.int64)
        if list(store.cells) != self.cells:
            log.info("the store lists the checkpoint's cells in another order: matched by name")
        index = {name: i for i, name in enumerate(self.cells)}
        return np.array([index[c] for c in store.cells], dtype=np.int64)

    def _refuse(self, store: Any, problem: str) -> None:
        raise UsageError(
            f"{getattr(store, 'path', 'the store')} does not fit {self.name}: {problem}. A model with "
            "a cell table applies to the cells it was trained on, from its training store; pass "
            "--ignore-fingerprint to apply it to another store of the same cells, or fine-tune it "
            "on this store (or train an inductive model) for other cells"
        )

    def _embed_cells(self, data: Any) -> None:
        """Make an inductive model embed the cells of ``data`` (a store or dense calls) with the
        checkpoint's fitted profiler; models without cell profiles have nothing to embed."""
        network = self.require_network("an inductive model")
        if not network.config.uses_profiles:
            return
        if not self.cell_profiles:
            raise CheckpointError(f"{self.name}: an inductive model records no cell profiler")
        profiler = CellProfiler.from_dict(self.cell_profiles)
        network.set_cell_profiles(torch.from_numpy(profiler.transform(data)))

    def use_cells_of(self, dataset: Any) -> None:
        """Embed the cells of ``dataset`` (inductive models; table models are left as they are)."""
        if self.inductive:
            self._embed_cells(dataset)

    # ---------------------------------------------------------------- the work (library functions)
    # imported where used: those modules import this one

    def impute(self, store: Any, out: str | os.PathLike[str], options: Any = None, **kw: Any):
        """Impute every (site, cell) of ``store`` (:func:`cpgformer.impute.impute`)."""
        from cpgformer.impute import impute

        return impute(store, self, out, options, **kw)

    def calibrate(self, store: Any, out: str | os.PathLike[str], **kw: Any) -> dict:
        """Fit a temperature and write a calibrated checkpoint (:func:`cpgformer.impute.calibrate`)."""
        from cpgformer.impute import calibrate

        return calibrate(store, self, out, **kw)

    def explain(
        self, store: Any, sites: Sequence[Any], fasta: str | None = None, **kw: Any
    ) -> list:
        """Attributions and attention maps for chosen predictions
        (:func:`cpgformer.explain.explain_sites`); a DNA model reads the reference ``fasta``, else
        the one the store records (:func:`cpgformer.io.store.reference`)."""
        from cpgformer.explain import explain_sites

        if kw.get("reference") is None and self.config is not None and self.config.has_dna:
            kw["reference"] = find_reference(fasta, store, "the model uses DNA windows")
        return explain_sites(self, store, sites, **kw)

    def cell_vectors(self, store: Any, ignore_fingerprint: bool = False) -> np.ndarray:
        """The model's vector for each cell of ``store`` (:func:`cpgformer.cells.cell_representations`;
        ``cpgformer cells`` maps and clusters them)."""
        from cpgformer.cells import cell_representations

        return cell_representations(self, store, ignore_fingerprint=ignore_fingerprint)


def _cell_difference(store_cells: list[str], model_cells: list[str]) -> str | None:
    """What differs between the store's cells and the model's (None: the same cells)."""
    known = set(model_cells)
    have = set(store_cells)
    missing = [c for c in store_cells if c not in known]
    extra = [c for c in model_cells if c not in have]
    parts = []
    if missing:
        parts.append(f"{len(missing)} store cell(s) unknown to the model (e.g. {missing[:3]})")
    if extra:
        parts.append(f"{len(extra)} model cell(s) missing from the store (e.g. {extra[:3]})")
    if not parts and len(store_cells) != len(model_cells):
        parts.append(f"{len(store_cells)} store cells for {len(model_cells)} model cells")
    return ("the cells differ: " + "; ".join(parts)) if parts else None


def as_model(model: Model | str | os.PathLike[str]) -> Model:
    """``model`` itself, or the checkpoint at that path loaded."""
    return model if isinstance(model, Model) else Model.load(model)
