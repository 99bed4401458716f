"""cpgformer: impute and denoise single-cell DNA methylation with CpG Transformer."""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__", "open_dataset"]


def open_dataset(path):  # noqa: ANN001 - thin re-export, typed in cpgformer.io.store
    """Open a dataset store written by ``cpgformer prepare`` (see :func:`cpgformer.io.store.open_dataset`)."""
    from cpgformer.io.store import open_dataset as _open

    return _open(path)
