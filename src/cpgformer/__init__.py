"""cpgformer: impute and denoise single-cell DNA methylation with CpG Transformer.

``cpgformer.Model`` (:class:`cpgformer.model.Model`) is a trained model: load a checkpoint, check it
against a store, and impute, calibrate, explain or embed cells with it. ``cpgformer.open_dataset``
opens a dataset store.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = ["Model", "__version__", "open_dataset"]

if TYPE_CHECKING:
    from cpgformer.model import Model


def open_dataset(path):  # noqa: ANN001 - thin re-export, typed in cpgformer.io.store
    """Open a dataset store written by ``cpgformer prepare`` (see :func:`cpgformer.io.store.open_dataset`)."""
    from cpgformer.io.store import open_dataset as _open

    return _open(path)


def __getattr__(name: str) -> Any:
    # ``Model`` is imported on first use: ``import cpgformer`` (the CLI's start) stays free of torch
    if name == "Model":
        from cpgformer.model import Model

        return Model
    raise AttributeError(f"module 'cpgformer' has no attribute {name!r}")
