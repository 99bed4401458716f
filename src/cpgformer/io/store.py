"""The dataset store: per chromosome a sparse sites x cells matrix in CSR by site, memory-mapped.

Layout of a store directory (every array is an ``.npy`` file opened with ``mmap_mode="r"``)::

    STORE/manifest.json             format "cpgformer-store", format_version 1, parameters, inputs, ...
    STORE/cells.tsv                 name, source_file, n_calls, n_meth, global_meth_frac, mean_cov, flags
    STORE/chroms/<k>/positions.npy  int64 [n_sites]  sorted 0-based + strand C positions
                     indptr.npy     int64 [n_sites + 1]  CSR by site
                     cell.npy       int32 [nnz]  cell column (strictly increasing within a row)
                     mc.npy, cov.npy int32 [nnz] methylated / total reads
                     label.npy      int8  [nnz]  0/1 by the binarisation rule, -1 excluded
                     beta.npy       float32 [nnz] optional: methylated fraction for fraction-only
                                    inputs (continuous npz triples, bedGraph percentages)

``<k>`` is the chromosome's index in ``manifest["chromosomes"]`` (contig names may contain characters
that are not safe in file names). A segment of consecutive sites is one slice of the CSR arrays, so
reading it touches only that part of the files.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cpgformer import __version__
from cpgformer.codes import MISSING
from cpgformer.errors import InputError, UsageError
from cpgformer.integrity import _store_entries, file_digests, verify_store_files
from cpgformer.io.fasta import Reference
from cpgformer.utils.atomic import atomic_dir

log = logging.getLogger(__name__)

FORMAT = "cpgformer-store"
FORMAT_VERSION = 1
CELL_COLUMNS = ["name", "source_file", "n_calls", "n_meth", "global_meth_frac", "mean_cov", "flags"]
_ARRAYS = (
    ("positions", np.int64),
    ("indptr", np.int64),
    ("cell", np.int32),
    ("mc", np.int32),
    ("cov", np.int32),
    ("label", np.int8),
)


@dataclass
class ChromArrays:
    """One chromosome of a store, in memory (or as memmaps), CSR by site.

    ``beta`` is optional (additive to the v1 contract): float32 methylated fractions for inputs that
    carry no counts; when absent, ``beta = mc / cov``.
    """

    name: str
    positions: np.ndarray  # int64 [n_sites]
    indptr: np.ndarray  # int64 [n_sites + 1]
    cell: np.ndarray  # int32 [nnz]
    mc: np.ndarray  # int32 [nnz]
    cov: np.ndarray  # int32 [nnz]
    label: np.ndarray  # int8 [nnz]
    beta: np.ndarray | None = None  # float32 [nnz], optional

    @property
    def n_sites(self) -> int:
        return int(self.positions.shape[0])

    @property
    def nnz(self) -> int:
        return int(self.cell.shape[0])


def _check_chrom(ch: ChromArrays, n_cells: int) -> None:
    """Validate one chromosome's arrays (internal invariants of whoever built them)."""

    def bad(msg: str) -> UsageError:
        return UsageError(f"store chromosome {ch.name!r}: {msg}")

    pos = np.asarray(ch.positions)
    indptr = np.asarray(ch.indptr)
    n = pos.shape[0]
    if pos.ndim != 1 or indptr.shape != (n + 1,):
        raise bad(f"indptr must have n_sites + 1 = {n + 1} entries, got shape {indptr.shape}")
    nnz = int(indptr[-1])
    if int(indptr[0]) != 0 or (n and np.any(np.diff(indptr) < 0)):
        raise bad("indptr must start at 0 and be non-decreasing")
    for name in ("cell", "mc", "cov", "label"):
        arr = np.asarray(getattr(ch, name))
        if arr.shape != (nnz,):
            raise bad(f"{name} must have indptr[-1] = {nnz} entries, got shape {arr.shape}")
    if ch.beta is not None and np.asarray(ch.beta).shape != (nnz,):
        raise bad(f"beta must have {nnz} entries")
    if n and (pos[0] < 0 or np.any(np.diff(pos) <= 0)):
        raise bad("positions must be non-negative and strictly increasing")
    if nnz == 0:
        return
    cell = np.asarray(ch.cell)
    if cell.min() < 0 or cell.max() >= n_cells:
        raise bad(f"cell index out of range [0, {n_cells})")
    # strictly increasing within a row: every step inside a row must be > 0
    step = np.diff(cell.astype(np.int64))
    row_start = np.zeros(nnz, dtype=bool)
    row_start[indptr[:-1][indptr[:-1] < nnz]] = True
    if np.any((step <= 0) & ~row_start[1:]):
        raise bad("cell indices must be strictly increasing within a site (one call per cell)")
    mc = np.asarray(ch.mc)
    cov = np.asarray(ch.cov)
    if np.any(mc < 0) or np.any(mc > cov):
        raise bad("counts must satisfy 0 <= mc <= cov")
    label = np.asarray(ch.label)
    if np.any((label < MISSING) | (label > 1)):
        raise bad("labels must be -1, 0 or 1")


def _le(arr: np.ndarray, dtype: type) -> bytes:
    """Array bytes in a fixed little-endian dtype (so the fingerprint is platform independent)."""
    return np.ascontiguousarray(arr, dtype=np.dtype(dtype).newbyteorder("<")).tobytes()


def _hash_chrom(h: Any, ch: ChromArrays) -> None:
    h.update(b"chrom\0" + ch.name.encode() + b"\0")
    for field, dtype in _ARRAYS:
        arr = getattr(ch, field)
        h.update(field.encode() + b"\0" + str(len(arr)).encode() + b"\0")
        # hash in blocks so memmapped inputs are never materialised at once
        step = 1 << 22
        for i in range(0, len(arr), step):
            h.update(_le(arr[i : i + step], dtype))
    if ch.beta is not None:
        h.update(b"beta\0")
        for i in range(0, len(ch.beta), 1 << 22):
            h.update(_le(ch.beta[i : i + (1 << 22)], np.float32))


def _cell_frame(
    cell_names: Sequence[str],
    n_calls: np.ndarray,
    n_meth: np.ndarray,
    n_labelled: np.ndarray,
    cov_sum: np.ndarray,
    cell_info: Any,
) -> pd.DataFrame:
    with np.errstate(divide="ignore", invalid="ignore"):
        frac = np.where(n_labelled > 0, n_meth / np.maximum(n_labelled, 1), np.nan)
        mean_cov = np.where(n_calls > 0, cov_sum / np.maximum(n_calls, 1), np.nan)
    df = pd.DataFrame(
        {
            "name": list(cell_names),
            "source_file": [""] * len(cell_names),
            "n_calls": n_calls.astype(np.int64),
            "n_meth": n_meth.astype(np.int64),
            "global_meth_frac": frac,
            "mean_cov": mean_cov,
            "flags": [""] * len(cell_names),
        }
    )
    if cell_info is None:
        return df
    info = cell_info if isinstance(cell_info, pd.DataFrame) else pd.DataFrame(cell_info)
    if "name" in info.columns:
        info = info.set_index("name").reindex(list(cell_names)).reset_index(drop=True)
    elif len(info) != len(cell_names):
        raise UsageError(
            f"cell_info has {len(info)} rows for {len(cell_names)} cells and no 'name' column"
        )
    for col in info.columns:
        if col in ("n_calls", "n_meth", "global_meth_frac", "mean_cov"):
            continue  # computed from the data, never taken from the caller
        values = info[col].reset_index(drop=True)
        if col in ("source_file", "flags"):
            values = values.fillna("").astype(str)
        df[col] = values
    return df


def set_default_dir_mode(path: str | os.PathLike[str]) -> None:
    """Give a directory the mode a plain ``mkdir`` would (temporary dirs are created 0700)."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o777 & ~umask)


def write_store_into(
    directory: str | os.PathLike[str],
    chroms: Iterable[ChromArrays],
    cell_names: Sequence[str],
    manifest_extra: Mapping[str, Any] | None = None,
    cell_info: Any = None,
) -> dict:
    """Write the store files into an existing (temporary) directory; return the manifest.

    Used by :func:`write_store` and by callers that manage their own atomic directory (``prepare``
    spills intermediate files into the same partial directory). ``chroms`` may be a generator: each
    chromosome is written and released before the next is requested.
    """
    out = Path(directory)
    cell_names = [str(c) for c in cell_names]
    if len(set(cell_names)) != len(cell_names):
        seen: set[str] = set()
        dup = next(c for c in cell_names if c in seen or seen.add(c))
        raise UsageError(f"duplicate cell name {dup!r}")
    n_cells = len(cell_names)
    h = hashlib.sha256()
    h.update(f"{FORMAT} {FORMAT_VERSION}\0".encode())
    for name in cell_names:
        h.update(name.encode() + b"\n")
    n_calls = np.zeros(n_cells, dtype=np.int64)
    n_meth = np.zeros(n_cells, dtype=np.int64)
    n_labelled = np.zeros(n_cells, dtype=np.int64)
    cov_sum = np.zeros(n_cells, dtype=np.float64)
    chrom_meta: list[dict] = []
    seen_chroms: set[str] = set()
    set_default_dir_mode(out)
    (out / "chroms").mkdir(parents=True, exist_ok=True)
    for k, ch in enumerate(chroms):
        if ch.name in seen_chroms:
            raise UsageError(f"store chromosome {ch.name!r} given twice")
        seen_chroms.add(ch.name)
        _check_chrom(ch, n_cells)
        d = out / "chroms" / str(k)
        d.mkdir()
        for field, dtype in _ARRAYS:
            np.save(d / f"{field}.npy", np.asarray(getattr(ch, field), dtype=dtype))
        has_beta = ch.beta is not None
        if has_beta:
            np.save(d / "beta.npy", np.asarray(ch.beta, dtype=np.float32))
        _hash_chrom(h, ch)
        cell = np.asarray(ch.cell)
        label = np.asarray(ch.label)
        n_calls += np.bincount(cell, minlength=n_cells)
        n_meth += np.bincount(cell[label == 1], minlength=n_cells)
        n_labelled += np.bincount(cell[label >= 0], minlength=n_cells)
        cov_sum += np.bincount(
            cell, weights=np.asarray(ch.cov, dtype=np.float64), minlength=n_cells
        )
        chrom_meta.append(
            {
                "name": ch.name,
                "dir": str(k),
                "n_sites": ch.n_sites,
                "n_calls": ch.nnz,
                "beta": has_beta,
            }
        )
    fingerprint = h.hexdigest()
    extra = dict(manifest_extra or {})
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "package_version": __version__,
        "parameters": extra.pop("parameters", {}),
        "inputs": extra.pop("inputs", []),
        "fasta": extra.pop("fasta", None),
        "strand_rule": extra.pop("strand_rule", None),
        "binarisation": extra.pop("binarisation", None),
        **extra,
        "chromosomes": chrom_meta,
        "n_cells": n_cells,
        "n_sites": int(sum(c["n_sites"] for c in chrom_meta)),
        "n_calls": int(sum(c["n_calls"] for c in chrom_meta)),
        "cells": cell_names,
        "fingerprint": fingerprint,
    }
    df = _cell_frame(cell_names, n_calls, n_meth, n_labelled, cov_sum, cell_info)
    df.to_csv(out / "cells.tsv", sep="\t", index=False, na_rep="NA")
    names = [rel for rel, _shape, _dtype in _store_entries(manifest)] + ["cells.tsv"]
    manifest["files"] = file_digests(out, names)  # sizes and SHA-256 (cpgformer check)
    with open(out / "manifest.json", "w") as fh:
        json.dump(manifest, fh, indent=1, default=_json_default)
        fh.write("\n")
    return manifest


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return float(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"cannot write {type(obj).__name__} to the manifest")


def write_store(
    path: str | os.PathLike[str],
    chroms: Iterable[ChromArrays],
    cell_names: Sequence[str],
    manifest_extra: Mapping[str, Any] | None = None,
    cell_info: Any = None,
    *,
    overwrite: bool = False,
    inputs: Sequence[str | os.PathLike[str] | None] = (),
) -> dict:
    """Write a store atomically (``.partial-`` directory renamed into place); return the manifest.

    ``manifest_extra`` keys ``parameters``, ``inputs``, ``fasta``, ``strand_rule``, ``binarisation``
    fill the standard manifest fields; other keys are stored as given. ``cell_info`` (DataFrame, dict
    of columns or list of row dicts; matched by a ``name`` column or by order) adds ``source_file``,
    ``flags`` and any extra per-cell columns to ``cells.tsv``. The fingerprint is a SHA-256 over the
    cell names and every chromosome's positions, indptr, cell, mc, cov and label arrays.
    """
    with atomic_dir(path, overwrite=overwrite, kind="store", inputs=inputs) as tmp:
        manifest = write_store_into(tmp, chroms, cell_names, manifest_extra, cell_info)
    log.debug(
        "wrote store %s: %d cells, %d chromosomes, %d sites, %d calls",
        path,
        manifest["n_cells"],
        len(manifest["chromosomes"]),
        manifest["n_sites"],
        manifest["n_calls"],
    )
    return manifest


CSR_FIELDS = ("indptr", "cell", "mc", "cov", "label")


def read_manifest(path: Path, fmt: str, version: int, what: str, hint: str = "") -> dict:
    """The ``manifest.json`` of a directory output, checked to be ``fmt`` at ``version`` (``hint``:
    what to do about another version)."""
    mpath = path / "manifest.json"
    try:
        with open(mpath) as fh:
            manifest = json.load(fh)
    except (OSError, ValueError) as exc:
        raise InputError(mpath, None, f"unreadable {what} manifest: {exc}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != fmt:
        raise InputError(mpath, None, f"not a cpgformer {what} (format != {fmt!r})")
    if manifest.get("format_version") != version:
        raise InputError(
            mpath,
            None,
            f"{what} format_version {manifest.get('format_version')} is not supported by "
            f"cpgformer {__version__} (expects {version}){hint}",
        )
    return manifest


class CallStore:
    """Read-only, memory-mapped observed calls of a directory store: per chromosome a sites x cells
    matrix in CSR by site (``chroms/<k>/{positions,indptr,cell,mc,cov,label}[,beta].npy``) and a
    ``cells.tsv``. Shared by the dataset store (:class:`Dataset`) and the imputed store
    (:class:`cpgformer.impute.ImputedStore`); reading a segment never loads a chromosome."""

    what = "store"  # in messages

    def __init__(self, path: Path, manifest: dict) -> None:
        self.path = path
        self.manifest: dict = manifest
        self._chrom_meta = {c["name"]: c for c in manifest["chromosomes"]}
        self.chromosomes: list[str] = [c["name"] for c in manifest["chromosomes"]]
        self._arrays: dict[str, dict[str, np.ndarray]] = {}
        self._cell_table: pd.DataFrame | None = None
        cells = manifest.get("cells")
        self.cells: list[str] = list(cells) if cells is not None else list(self.cell_table["name"])

    @property
    def n_cells(self) -> int:
        return len(self.cells)

    @property
    def fasta_path(self) -> str | None:
        """The reference FASTA the store records (None: none)."""
        fasta = self.manifest.get("fasta")
        if not fasta:
            return None
        return fasta.get("path") if isinstance(fasta, dict) else str(fasta)

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

    def _missing_chromosome(self, chrom: str) -> str:
        more = " ..." if len(self.chromosomes) > 10 else ""
        return (
            f"{self.path}: chromosome {chrom!r} is not in the {self.what} "
            f"(has {', '.join(self.chromosomes[:10])}{more})"
        )

    def _meta(self, chrom: str) -> dict:
        try:
            return self._chrom_meta[chrom]
        except KeyError:
            raise UsageError(self._missing_chromosome(chrom)) from None

    def _file(self, chrom: str, field: str) -> Path:
        return self.path / "chroms" / self._meta(chrom)["dir"] / f"{field}.npy"

    def _array(self, chrom: str, field: str) -> np.ndarray:
        arrays = self._arrays.setdefault(chrom, {})
        if field not in arrays:
            f = self._file(chrom, field)
            try:
                arrays[field] = np.load(f, mmap_mode="r")
            except (OSError, ValueError) as exc:
                raise InputError(f, None, f"unreadable {self.what} array: {exc}") from None
        return arrays[field]

    def n_sites(self, chrom: str) -> int:
        return int(self._meta(chrom)["n_sites"])

    def positions(self, chrom: str) -> np.ndarray:
        """int64 [n_sites] 0-based + strand C positions (memmap)."""
        return self._array(chrom, "positions")

    def has_beta(self, chrom: str) -> bool:
        return bool(self._meta(chrom).get("beta", False))

    def csr(self, chrom: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(indptr, cell, mc, cov, label) memmaps of one chromosome."""
        return tuple(self._array(chrom, f) for f in CSR_FIELDS)  # type: ignore[return-value]

    def beta_values(self, chrom: str) -> np.ndarray:
        """float32 [nnz] methylated fraction per stored call (``beta.npy`` if stored, else mc/cov)."""
        if self.has_beta(chrom):
            return self._array(chrom, "beta")
        mc = self._array(chrom, "mc")
        cov = self._array(chrom, "cov")
        return (np.asarray(mc, dtype=np.float32) / np.asarray(cov, dtype=np.float32)).astype(
            np.float32
        )

    def check_rows(self, chrom: str, start: int, stop: int) -> tuple[int, int]:
        """``(start, stop)`` as ints, checked to be a row range of ``chrom``."""
        n = self.n_sites(chrom)
        start, stop = int(start), int(stop)
        if not 0 <= start <= stop <= n:
            raise UsageError(f"rows [{start}, {stop}) out of range for {chrom!r} with {n} sites")
        return start, stop

    def _segment(
        self, chrom: str, start: int, stop: int
    ) -> tuple[int, int, np.ndarray, np.ndarray]:
        start, stop = self.check_rows(chrom, start, stop)
        ip = np.asarray(self._array(chrom, "indptr")[start : stop + 1])
        lo, hi = int(ip[0]), int(ip[-1])
        rows = np.repeat(np.arange(stop - start), np.diff(ip))
        cols = np.asarray(self._array(chrom, "cell")[lo:hi], dtype=np.int64)
        return lo, hi, rows, cols

    def states(self, chrom: str, start: int, stop: int) -> np.ndarray:
        """int8 [stop - start, n_cells] labels of sites ``start:stop`` (site indices), ``MISSING``
        where unobserved (or excluded by the binarisation rule)."""
        lo, hi, rows, cols = self._segment(chrom, start, stop)
        out = np.full((stop - start, self.n_cells), MISSING, dtype=np.int8)
        out[rows, cols] = self._array(chrom, "label")[lo:hi]
        return out

    def betas(self, chrom: str, start: int, stop: int) -> np.ndarray:
        """float32 [stop - start, n_cells] methylated fractions, ``MISSING`` where unobserved."""
        lo, hi, rows, cols = self._segment(chrom, start, stop)
        out = np.full((stop - start, self.n_cells), float(MISSING), dtype=np.float32)
        if self.has_beta(chrom):
            out[rows, cols] = self._array(chrom, "beta")[lo:hi]
        else:
            mc = np.asarray(self._array(chrom, "mc")[lo:hi], dtype=np.float32)
            cov = np.asarray(self._array(chrom, "cov")[lo:hi], dtype=np.float32)
            out[rows, cols] = mc / cov
        return out

    def counts(self, chrom: str, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        """(mc, cov) int32 [stop - start, n_cells]; cov 0 = unobserved."""
        lo, hi, rows, cols = self._segment(chrom, start, stop)
        mc = np.zeros((stop - start, self.n_cells), dtype=np.int32)
        cov = np.zeros((stop - start, self.n_cells), dtype=np.int32)
        mc[rows, cols] = self._array(chrom, "mc")[lo:hi]
        cov[rows, cols] = self._array(chrom, "cov")[lo:hi]
        return mc, cov


class Dataset(CallStore):
    """A dataset store written by ``cpgformer prepare`` (read-only, memory-mapped)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        path = Path(path)
        if not path.exists():
            raise InputError(path, None, "no such store")
        if not path.is_dir() or not (path / "manifest.json").is_file():
            raise InputError(
                path, None, "not a cpgformer store (no manifest.json; run cpgformer prepare)"
            )
        manifest = read_manifest(
            path, FORMAT, FORMAT_VERSION, "store", "; re-run cpgformer prepare"
        )
        super().__init__(path, manifest)
        self.fingerprint: str = manifest["fingerprint"]
        verify_store_files(self.path, manifest)  # every array there, complete, as promised

    def __repr__(self) -> str:
        return (
            f"Dataset({str(self.path)!r}: {self.n_cells} cells, {len(self.chromosomes)} "
            f"chromosomes, {self.manifest.get('n_sites')} sites, {self.manifest.get('n_calls')} calls)"
        )

    def n_calls(self, chrom: str) -> int:
        return int(self._meta(chrom)["n_calls"])

    def chrom_arrays(self, chrom: str) -> ChromArrays:
        """All arrays of one chromosome as memmaps (for copying into another store)."""
        indptr, cell, mc, cov, label = self.csr(chrom)
        beta = self._array(chrom, "beta") if self.has_beta(chrom) else None
        return ChromArrays(chrom, self.positions(chrom), indptr, cell, mc, cov, label, beta)


def open_dataset(path: str | os.PathLike[str]) -> Dataset:
    """Open a store written by :func:`write_store` / ``cpgformer prepare`` (memory-mapped)."""
    return Dataset(path)


def as_dataset(store: Dataset | str | os.PathLike[str]) -> Dataset:
    """``store`` itself when it is open, else the store at that path opened."""
    return store if isinstance(store, Dataset) else open_dataset(store)


def fasta_for(fasta: str | os.PathLike[str] | None, store: Any) -> str | None:
    """The reference FASTA used with ``store``: ``fasta`` (``--fasta``) if given, else the one the
    store records (None: neither)."""
    if fasta:
        return str(fasta)
    return getattr(store, "fasta_path", None) or None


def reference(fasta: str | os.PathLike[str] | None, store: Any, need: str | None = None) -> Any:
    """The :class:`~cpgformer.io.fasta.Reference` of :func:`fasta_for` (one rule for every command).

    ``need``: why one is required (e.g. "the model uses DNA windows"): without any FASTA this raises
    a ``UsageError`` naming it. Without ``need`` the reference is optional: None when there is no
    FASTA, or when the store's recorded one is no longer on disk (logged)."""
    path = fasta_for(fasta, store)
    if path is None:
        if need:
            raise UsageError(f"{need}: give the reference with --fasta (the store records none)")
        return None
    if not fasta and not need and not Path(path).exists():
        log.info("the FASTA the store records (%s) is not there: no DNA features", path)
        return None
    return Reference(path)


def nan_to_none(value: float) -> float | None:
    """JSON-friendly float: NaN -> None."""
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else value
