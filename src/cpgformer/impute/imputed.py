"""Reading an imputed store.

The imputed store
-----------------
::

    OUT/manifest.json            format "cpgformer-imputed", format_version 1, written last
    OUT/cells.tsv                the dataset store's cell table (same order = same columns)
    OUT/chroms/<k>/positions.npy int64 [n_sites] 0-based + strand C (the imputed sites)
                   indptr.npy, cell.npy, mc.npy, cov.npy, label.npy [, beta.npy]
                                 the observed calls at those sites (CSR by site, as the dataset store)
                   p-<i>.npy     [rows, n_cells] float16 probabilities (or uint8: round(255 p)),
                                 chunk i = rows [i * chunk_sites, min(n_sites, (i + 1) * chunk_sites))

A run writes into ``<parent>/.partial-<name>.impute/`` (every file there written as temp + rename) and
renames that directory to ``OUT`` only after ``manifest.json`` is written, so an unfinished run is never
readable as complete; rerunning the same command resumes at the first chunk not yet written.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from cpgformer.codes import MISSING
from cpgformer.errors import InputError, UsageError
from cpgformer.impute.probabilities import dequantize
from cpgformer.integrity import verify_imputed_files
from cpgformer.io.store import CallStore, read_manifest
from cpgformer.utils.atomic import PARTIAL_PREFIX

FORMAT = "cpgformer-imputed"
FORMAT_VERSION = 1


def partial_dir(out: Path) -> Path:
    return out.parent / f"{PARTIAL_PREFIX}{out.name}.impute"


class ImputedStore(CallStore):
    """A complete imputed store (read-only, memory-mapped chunks): the observed calls at the imputed
    sites (read as from a dataset store) and the model's probabilities (:meth:`values`)."""

    what = "imputed store"

    def __init__(self, path: str | os.PathLike[str]) -> None:
        path = Path(path)
        if not path.exists():
            partial = partial_dir(path)
            if partial.exists():
                raise UsageError(
                    f"{path}: imputation not finished (the unfinished run is in {partial}); "
                    "rerun the same cpgformer impute command to resume it"
                )
            raise InputError(path, None, "no such imputed store")
        if not (path / "manifest.json").is_file():
            raise UsageError(f"{path}: not a complete cpgformer imputed store (no manifest.json)")
        manifest = read_manifest(path, FORMAT, FORMAT_VERSION, "imputed store")
        if not manifest.get("complete"):
            raise UsageError(f"{path}: imputed store is incomplete")
        super().__init__(path, manifest)
        self.chunk_sites: int = int(manifest["chunk_sites"])
        verify_imputed_files(self.path, manifest)  # every chunk there and complete

    def __repr__(self) -> str:
        return (
            f"ImputedStore({str(self.path)!r}: {self.n_cells} cells, "
            f"{len(self.chromosomes)} chromosomes, {self.manifest.get('n_sites')} sites)"
        )

    @property
    def temperature(self) -> float:
        return float(self.manifest.get("temperature", 1.0))

    @property
    def keep_observed(self) -> bool:
        return bool(self.manifest.get("keep_observed"))

    @property
    def data_mode(self) -> str:
        return str(self.manifest.get("data_mode", "binary"))

    def has_beta(self, chrom: str) -> bool:
        return self._file(chrom, "beta").exists()

    def chunks(self, chrom: str) -> list[tuple[int, int]]:
        """Row ranges of the stored chunks (read chunk by chunk for bounded memory)."""
        n, s = self.n_sites(chrom), self.chunk_sites
        return [(a, min(n, a + s)) for a in range(0, n, s)]

    def values(self, chrom: str, start: int, stop: int) -> np.ndarray:
        """float32 ``[stop - start, C]`` stored outputs (model probabilities; with ``keep_observed``
        the observed calls replace them)."""
        start, stop = self.check_rows(chrom, start, stop)
        out = np.empty((stop - start, self.n_cells), dtype=np.float32)
        s = self.chunk_sites
        for i in range(start // s, (stop + s - 1) // s):
            a, b = max(start, i * s), min(stop, (i + 1) * s)
            chunk = self._array(chrom, f"p-{i:06d}")
            out[a - start : b - start] = dequantize(np.asarray(chunk[a - i * s : b - i * s]))
        return out

    def observed_values(self, chrom: str, start: int, stop: int) -> np.ndarray:
        """float32 ``[rows, C]`` observed value (label, or beta for continuous stores), NaN missing."""
        if self.data_mode == "continuous":
            out = self.betas(chrom, start, stop)
        else:
            out = self.states(chrom, start, stop).astype(np.float32)
        out[out == MISSING] = np.nan
        return out

    def imputed(self, chrom: str, start: int, stop: int) -> np.ndarray:
        """float32 ``[rows, C]``: observed calls kept, model probabilities for missing entries."""
        v = self.values(chrom, start, stop)
        obs = self.observed_values(chrom, start, stop)
        seen = ~np.isnan(obs)
        v[seen] = obs[seen]
        return v


def open_imputed(path: str | os.PathLike[str]) -> ImputedStore:
    """Open a complete imputed store; an unfinished or interrupted run raises a clear ``UsageError``."""
    return ImputedStore(path)
