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

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd

from cpgformer.codes import MISSING
from cpgformer.errors import InputError, UsageError
from cpgformer.impute.probabilities import dequantize
from cpgformer.utils.atomic import PARTIAL_PREFIX

FORMAT = "cpgformer-imputed"
FORMAT_VERSION = 1
_CSR_FIELDS = ("indptr", "cell", "mc", "cov", "label")


def partial_dir(out: Path) -> Path:
    return out.parent / f"{PARTIAL_PREFIX}{out.name}.impute"


class ImputedStore:
    """A complete imputed store (read-only, memory-mapped chunks)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        mpath = self.path / "manifest.json"
        if not self.path.exists():
            partial = partial_dir(self.path)
            if partial.exists():
                raise UsageError(
                    f"{self.path}: imputation not finished (the unfinished run is in {partial}); "
                    "rerun the same cpgformer impute command to resume it"
                )
            raise InputError(self.path, None, "no such imputed store")
        if not mpath.is_file():
            raise UsageError(
                f"{self.path}: not a complete cpgformer imputed store (no manifest.json)"
            )
        try:
            with open(mpath) as fh:
                manifest = json.load(fh)
        except (OSError, ValueError) as exc:
            raise InputError(mpath, None, f"unreadable manifest: {exc}") from None
        if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
            raise InputError(mpath, None, f"not a cpgformer imputed store (format != {FORMAT!r})")
        if manifest.get("format_version") != FORMAT_VERSION:
            raise InputError(
                mpath,
                None,
                f"imputed store format_version {manifest.get('format_version')} unsupported",
            )
        if not manifest.get("complete"):
            raise UsageError(f"{self.path}: imputed store is incomplete")
        self.manifest: dict = manifest
        self.cells: list[str] = list(manifest["cells"])
        self.chromosomes: list[str] = [c["name"] for c in manifest["chromosomes"]]
        self._meta = {c["name"]: c for c in manifest["chromosomes"]}
        self.chunk_sites: int = int(manifest["chunk_sites"])
        from cpgformer.integrity import verify_imputed_files

        verify_imputed_files(self.path, manifest)  # every chunk there and complete
        self._cache: dict[tuple[str, str], np.ndarray] = {}
        self._cell_table: pd.DataFrame | None = None

    def __repr__(self) -> str:
        return (
            f"ImputedStore({str(self.path)!r}: {self.n_cells} cells, "
            f"{len(self.chromosomes)} chromosomes, {self.manifest.get('n_sites')} sites)"
        )

    @property
    def n_cells(self) -> int:
        return len(self.cells)

    @property
    def temperature(self) -> float:
        return float(self.manifest.get("temperature", 1.0))

    @property
    def keep_observed(self) -> bool:
        return bool(self.manifest.get("keep_observed"))

    @property
    def data_mode(self) -> str:
        return str(self.manifest.get("data_mode", "binary"))

    @property
    def fasta_path(self) -> str | None:
        return self.manifest.get("fasta")

    @property
    def cell_table(self) -> pd.DataFrame:
        if self._cell_table is None:
            self._cell_table = pd.read_csv(
                self.path / "cells.tsv",
                sep="\t",
                dtype={"name": str, "source_file": str, "flags": str},
                keep_default_na=False,
                na_values={"global_meth_frac": ["NA"], "mean_cov": ["NA"]},
            )
        return self._cell_table

    def _chrom(self, chrom: str) -> dict:
        try:
            return self._meta[chrom]
        except KeyError:
            raise UsageError(
                f"{self.path}: chromosome {chrom!r} was not imputed (has {', '.join(self.chromosomes[:10])})"
            ) from None

    def _array(self, chrom: str, name: str) -> np.ndarray:
        key = (chrom, name)
        if key not in self._cache:
            f = self.path / "chroms" / self._chrom(chrom)["dir"] / f"{name}.npy"
            try:
                self._cache[key] = np.load(f, mmap_mode="r")
            except (OSError, ValueError) as exc:
                raise InputError(f, None, f"unreadable imputed-store array: {exc}") from None
        return self._cache[key]

    def n_sites(self, chrom: str) -> int:
        return int(self._chrom(chrom)["n_sites"])

    def positions(self, chrom: str) -> np.ndarray:
        return self._array(chrom, "positions")

    def chunks(self, chrom: str) -> list[tuple[int, int]]:
        """Row ranges of the stored chunks (read chunk by chunk for bounded memory)."""
        n, s = self.n_sites(chrom), self.chunk_sites
        return [(a, min(n, a + s)) for a in range(0, n, s)]

    def values(self, chrom: str, start: int, stop: int) -> np.ndarray:
        """float32 ``[stop - start, C]`` stored outputs (model probabilities; with ``keep_observed``
        the observed calls replace them)."""
        n = self.n_sites(chrom)
        if not 0 <= start <= stop <= n:
            raise UsageError(f"rows [{start}, {stop}) out of range for {chrom!r} with {n} sites")
        out = np.empty((stop - start, self.n_cells), dtype=np.float32)
        s = self.chunk_sites
        for i in range(start // s, (stop + s - 1) // s):
            a, b = max(start, i * s), min(stop, (i + 1) * s)
            chunk = self._array(chrom, f"p-{i:06d}")
            out[a - start : b - start] = dequantize(np.asarray(chunk[a - i * s : b - i * s]))
        return out

    def csr(self, chrom: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(indptr, cell, mc, cov, label) of the observed calls at the imputed sites."""
        return tuple(self._array(chrom, f) for f in _CSR_FIELDS)  # type: ignore[return-value]

    def _segment(
        self, chrom: str, start: int, stop: int
    ) -> tuple[int, int, np.ndarray, np.ndarray]:
        indptr = np.asarray(self._array(chrom, "indptr")[start : stop + 1])
        lo, hi = int(indptr[0]), int(indptr[-1])
        rows = np.repeat(np.arange(stop - start), np.diff(indptr))
        cols = np.asarray(self._array(chrom, "cell")[lo:hi], dtype=np.int64)
        return lo, hi, rows, cols

    def states(self, chrom: str, start: int, stop: int) -> np.ndarray:
        """int8 ``[rows, C]`` observed labels, -1 missing (or excluded by the binarisation rule)."""
        lo, hi, rows, cols = self._segment(chrom, start, stop)
        out = np.full((stop - start, self.n_cells), MISSING, dtype=np.int8)
        out[rows, cols] = self._array(chrom, "label")[lo:hi]
        return out

    def counts(self, chrom: str, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        """(mc, cov) int32 ``[rows, C]``; cov 0 = unobserved."""
        lo, hi, rows, cols = self._segment(chrom, start, stop)
        mc = np.zeros((stop - start, self.n_cells), dtype=np.int32)
        cov = np.zeros((stop - start, self.n_cells), dtype=np.int32)
        mc[rows, cols] = self._array(chrom, "mc")[lo:hi]
        cov[rows, cols] = self._array(chrom, "cov")[lo:hi]
        return mc, cov

    def observed_values(self, chrom: str, start: int, stop: int) -> np.ndarray:
        """float32 ``[rows, C]`` observed value (label, or beta for continuous stores), NaN missing."""
        if self.data_mode == "continuous":
            lo, hi, rows, cols = self._segment(chrom, start, stop)
            out = np.full((stop - start, self.n_cells), np.nan, dtype=np.float32)
            mc = np.asarray(self._array(chrom, "mc")[lo:hi], dtype=np.float32)
            cov = np.asarray(self._array(chrom, "cov")[lo:hi], dtype=np.float32)
            d = self.path / "chroms" / self._chrom(chrom)["dir"]
            beta = (
                np.asarray(self._array(chrom, "beta")[lo:hi])
                if (d / "beta.npy").exists()
                else mc / np.maximum(cov, 1)
            )
            out[rows, cols] = beta
            return out
        s = self.states(chrom, start, stop)
        out = s.astype(np.float32)
        out[s < 0] = np.nan
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
