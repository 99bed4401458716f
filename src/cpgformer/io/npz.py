"""Import and export of the original CpG Transformer ``X.npz`` / ``y.npz`` / ``pos.npz`` triple.

* ``X.npz``: {contig: int8 [length]} genome in the 16-letter code of :mod:`cpgformer.codes`.
* ``y.npz``: {contig: [n_sites, n_cells]} int8 -1/0/1 (binary) or float32 -1 / beta in [0, 1]
  (continuous).
* ``pos.npz``: {contig: int32 [n_sites]} sorted 0-based positions of each row's C (+ strand only).

Import turns each row into a store site and each non-missing entry into a call. Binary entries keep
their value as the label with ``mc = value, cov = 1``. Continuous entries keep the exact float32 beta
(``beta.npy``), label ``beta >= 0.5`` (ties methylated) and ``mc = label, cov = 1``. Rows with no
observed cell are kept (as empty sites) so that export reproduces the triple exactly. Import reads one
contig at a time; the format itself stores each contig densely, so that is the memory bound.

Export writes the same three files (plus ``cells.txt`` with the column names, which the original
does not keep), one contig at a time into the zip archives. ``X.npz`` needs a genome: the ``X.npz``
the store was imported from, another ``X.npz``, or a FASTA.
"""

from __future__ import annotations

import hashlib
import logging
import os
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cpgformer import codes
from cpgformer.errors import InputError, UsageError
from cpgformer.io.fasta import Reference
from cpgformer.io.store import (
    ChromArrays,
    Dataset,
    open_dataset,
    set_default_dir_mode,
    write_store,
)
from cpgformer.options import option
from cpgformer.utils.atomic import atomic_dir
from cpgformer.utils.progress import progress

log = logging.getLogger(__name__)

TRIPLE_FILES = ("X.npz", "y.npz", "pos.npz")


def is_npz_triple_dir(path: str | os.PathLike[str]) -> bool:
    """True if ``path`` is a directory holding ``y.npz`` and ``pos.npz``."""
    p = Path(path)
    return p.is_dir() and (p / "y.npz").is_file() and (p / "pos.npz").is_file()


def _open_npz(path: Path) -> Any:
    if path.is_dir():
        raise InputError(path, None, "is a directory, expected an .npz file")
    if not path.is_file():
        raise InputError(path, None, "no such file")
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise InputError(path, None, f"not a readable .npz archive ({exc})") from None


def _get(npz: Any, path: Path, key: str) -> np.ndarray:
    try:
        return npz[key]
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise InputError(path, None, f"array {key!r} unreadable ({exc})") from None


def default_cell_names(n_cells: int) -> list[str]:
    """``cell_000``, ``cell_001``, ... (at least three digits, more when needed)."""
    width = max(3, len(str(max(n_cells - 1, 0))))
    return [f"cell_{i:0{width}d}" for i in range(n_cells)]


def read_names_file(path: str | os.PathLike[str]) -> list[str]:
    """One cell name per line (blank lines ignored)."""
    p = Path(path)
    if not p.is_file():
        raise InputError(p, None, "no such file (expected one cell name per line)")
    try:
        with open(p, encoding="utf-8-sig") as fh:
            names = [line.strip() for line in fh]
    except UnicodeDecodeError:
        raise InputError(p, None, "not a text file of cell names (binary content)") from None
    return [n for n in names if n]


def _check_y(y: np.ndarray, ypath: Path, key: str) -> None:
    if y.ndim != 2:
        raise InputError(
            ypath, None, f"{key!r}: expected a 2-D [sites, cells] array, got {y.shape}"
        )
    if y.dtype.kind in "iu":
        bad = (y < -1) | (y > 1)
    elif y.dtype.kind == "f":
        bad = ~((y == -1) | ((y >= 0) & (y <= 1)))  # NaN fails both tests
    else:
        raise InputError(ypath, None, f"{key!r}: unsupported dtype {y.dtype} (int8 or float32)")
    if bad.any():
        r, c = (int(v[0]) for v in np.nonzero(bad))
        raise InputError(
            ypath,
            None,
            f"{key!r}: value {y[r, c].item()!r} at row {r}, cell {c} "
            f"(expected -1 missing, {'0/1' if y.dtype.kind in 'iu' else 'a fraction in [0, 1]'}); "
            f"{int(bad.sum())} such values",
        )


def _check_pos(pos: np.ndarray, n_rows: int, ppath: Path, key: str) -> None:
    if pos.ndim != 1 or pos.dtype.kind not in "iu":
        raise InputError(ppath, None, f"{key!r}: expected a 1-D integer array, got {pos.dtype}")
    if pos.shape[0] != n_rows:
        raise InputError(ppath, None, f"{key!r}: {pos.shape[0]} positions but y has {n_rows} rows")
    if n_rows and int(pos.min()) < 0:
        raise InputError(ppath, None, f"{key!r}: negative position {int(pos.min())}")
    if n_rows > 1:
        d = np.diff(pos.astype(np.int64))
        if np.any(d <= 0):
            i = int(np.nonzero(d <= 0)[0][0])
            what = "repeated" if d[i] == 0 else "not sorted"
            raise InputError(
                ppath,
                None,
                f"{key!r}: positions {what} at rows {i} and {i + 1} ({pos[i]} then {pos[i + 1]})",
            )


def _check_genome(genome: np.ndarray, pos: np.ndarray, xpath: Path, key: str) -> None:
    p = pos.astype(np.int64)
    if len(p) and int(p[-1]) + 1 >= genome.shape[0]:
        raise InputError(
            xpath,
            None,
            f"{key!r}: position {int(p[-1])} past the end of the genome contig "
            f"(length {genome.shape[0]})",
        )
    ok = (genome[p] == codes.CODE_C) & (genome[p + 1] == codes.CODE_G)
    if not ok.all():
        i = int(np.nonzero(~ok)[0][0])
        found = codes.decode_sequence(genome[p[i] : p[i] + 2])
        raise InputError(
            xpath,
            None,
            f"{key!r}: {int((~ok).sum())} rows are not at a CpG C in X "
            f"(first: row {i}, position {int(p[i])}, found {found!r})",
        )


def _genome_identity(xpath: Path, xnpz: Any) -> dict:
    h = hashlib.sha256()
    with open(xpath, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            h.update(block)
    contigs = []
    for k in xnpz.files:
        shape = _read_npy_shape(xnpz, k)
        contigs.append({"name": k, "length": shape[0] if shape else 0})
    return {"path": str(xpath.resolve()), "sha256": h.hexdigest(), "contigs": contigs}


def _read_npy_header(npz: Any, path: Path, key: str) -> tuple[tuple[int, ...], np.dtype]:
    """(shape, dtype) of one member of an npz without reading its data."""
    try:
        with npz.zip.open(key + ".npy") as fh:
            version = np.lib.format.read_magic(fh)
            if version == (1, 0):
                shape, _, dtype = np.lib.format.read_array_header_1_0(fh)
            else:
                shape, _, dtype = np.lib.format.read_array_header_2_0(fh)
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as exc:
        raise InputError(path, None, f"array {key!r} unreadable ({exc})") from None
    return tuple(shape), np.dtype(dtype)


def _read_npy_shape(npz: Any, key: str) -> tuple[int, ...]:
    return _read_npy_header(npz, Path(npz.zip.filename or ""), key)[0]


def _triple_paths(
    base: Path | None,
    y_path: str | os.PathLike[str] | None,
    pos_path: str | os.PathLike[str] | None,
    x_path: str | os.PathLike[str] | None,
) -> tuple[Path, Path, Path | None]:
    """(y, pos, X or None): explicit paths, else the files in ``base``."""
    ypath = Path(y_path) if y_path is not None else (base / "y.npz" if base else None)
    ppath = Path(pos_path) if pos_path is not None else (base / "pos.npz" if base else None)
    if ypath is None or ppath is None:
        raise UsageError("npz import needs a directory or both y.npz and pos.npz paths")
    if x_path is not None:
        return ypath, ppath, Path(x_path)
    if base is not None and (base / "X.npz").is_file():
        return ypath, ppath, base / "X.npz"
    return ypath, ppath, None


def _check_keys(y_npz: Any, pos_npz: Any, x_npz: Any, paths: tuple) -> list[str]:
    """The chromosomes (keys of y.npz), the same in pos.npz and present in X.npz."""
    ypath, ppath, xpath = paths
    keys = list(y_npz.files)
    if not keys:
        raise InputError(ypath, None, "empty archive (no chromosomes)")
    if set(keys) != set(pos_npz.files):
        only_y = sorted(set(keys) - set(pos_npz.files))
        only_p = sorted(set(pos_npz.files) - set(keys))
        raise InputError(
            ppath,
            None,
            f"keys differ from y.npz (only in y: {only_y[:5]}, only in pos: {only_p[:5]})",
        )
    if x_npz is not None:
        missing = [k for k in keys if k not in x_npz.files]
        if missing:
            raise InputError(xpath, None, f"genome has no contig for y.npz keys {missing[:5]}")
    return keys


def _survey(
    y_npz: Any, pos_npz: Any, keys: list[str], ypath: Path, ppath: Path
) -> tuple[int, bool, str, dict[str, str]]:
    """Headers only: (cells, continuous values?, y dtype, pos dtype per chromosome)."""
    n_cells = None
    kinds = set()
    y_dtypes = set()
    pos_dtypes: dict[str, str] = {}
    for k in keys:
        shape, dtype = _read_npy_header(y_npz, ypath, k)
        pos_dtypes[k] = _read_npy_header(pos_npz, ppath, k)[1].str
        if len(shape) != 2:
            raise InputError(
                ypath, None, f"{k!r}: expected a 2-D [sites, cells] array, got {shape}"
            )
        if n_cells is None:
            n_cells = shape[1]
        elif shape[1] != n_cells:
            raise InputError(
                ypath, None, f"{k!r}: {shape[1]} cells, other chromosomes have {n_cells}"
            )
        kinds.add(np.dtype(dtype).kind)
        y_dtypes.add(np.dtype(dtype).str)
    assert n_cells is not None
    if len(kinds - {"i", "u"}) and len(kinds & {"i", "u"}):
        raise InputError(ypath, None, "mixes integer and float chromosomes; convert to one dtype")
    if len(y_dtypes) > 1:
        raise InputError(ypath, None, f"chromosomes have different dtypes {sorted(y_dtypes)}")
    return n_cells, "f" in kinds, y_dtypes.pop(), pos_dtypes


def _triple_chroms(
    keys: list[str], npzs: tuple[Any, Any, Any], paths: tuple, continuous: bool
) -> Iterator[ChromArrays]:
    """Each chromosome of the triple as CSR arrays (checked against pos and the genome)."""
    y_npz, pos_npz, x_npz = npzs
    ypath, ppath, xpath = paths
    for k in progress(keys, desc="import npz", unit="chrom"):
        y = _get(y_npz, ypath, k)
        _check_y(y, ypath, k)
        pos = _get(pos_npz, ppath, k)
        _check_pos(pos, y.shape[0], ppath, k)
        if x_npz is not None:
            _check_genome(_get(x_npz, xpath, k), pos, xpath, k)
        observed = y != -1
        rows, cols = np.nonzero(observed)
        values = y[rows, cols]
        indptr = np.zeros(y.shape[0] + 1, dtype=np.int64)
        np.cumsum(observed.sum(axis=1), out=indptr[1:])
        if continuous:
            beta = values.astype(np.float32)
            label = (beta >= 0.5).astype(np.int8)
        else:
            beta = None
            label = values.astype(np.int8)
        del y, observed
        yield ChromArrays(
            name=k,
            positions=pos.astype(np.int64),
            indptr=indptr,
            cell=cols.astype(np.int32),
            mc=label.astype(np.int32),
            cov=np.ones(len(cols), dtype=np.int32),
            label=label,
            beta=beta,
        )


def import_npz(
    directory: str | os.PathLike[str] | None,
    output: str | os.PathLike[str],
    *,
    y_path: str | os.PathLike[str] | None = None,
    pos_path: str | os.PathLike[str] | None = None,
    x_path: str | os.PathLike[str] | None = None,
    cell_names: Sequence[str] | None = None,
    overwrite: bool = False,
    extra_parameters: dict | None = None,
) -> dict:
    """Import a triple into a store at ``output``; return the store manifest.

    ``directory`` holds ``y.npz``, ``pos.npz`` and optionally ``X.npz`` and ``cells.txt``;
    explicit paths override. Cell names: ``cell_names``, else ``cells.txt`` beside ``y.npz``, else
    ``cell_000``, ``cell_001``, ...
    """
    base = Path(directory) if directory is not None else None
    paths = _triple_paths(base, y_path, pos_path, x_path)
    ypath, ppath, xpath = paths
    npzs = (_open_npz(ypath), _open_npz(ppath), _open_npz(xpath) if xpath is not None else None)
    keys = _check_keys(*npzs, paths)
    n_cells, continuous, y_dtype, pos_dtypes = _survey(npzs[0], npzs[1], keys, ypath, ppath)
    if cell_names is None and (ypath.parent / "cells.txt").is_file():
        cell_names = read_names_file(ypath.parent / "cells.txt")
        log.info("cell names from %s", ypath.parent / "cells.txt")
    names = list(cell_names) if cell_names is not None else default_cell_names(n_cells)
    if len(names) != n_cells:
        raise UsageError(f"{len(names)} cell names given for {n_cells} cells in {ypath}")
    extra = {
        "parameters": {"input_format": "npz", **(extra_parameters or {})},
        "inputs": [
            {"path": str(p.resolve()), "format": "npz", "role": role}
            for p, role in zip(paths, ("y", "pos", "X"))
            if p is not None
        ],
        "fasta": None,
        "strand_rule": "npz triple: rows are declared + strand C (no pooling)",
        "binarisation": (
            {"rule": "threshold", "threshold": 0.5, "ties": "methylated", "min_cov": 1}
            if continuous
            else {"rule": "as given (binary input)"}
        ),
        "data_mode": "continuous" if continuous else "binary",
        "genome_npz": _genome_identity(xpath, npzs[2]) if npzs[2] is not None else None,
        # dtypes as imported, so that export reproduces the triple exactly
        "npz": {"y_dtype": y_dtype, "pos_dtype": pos_dtypes},
    }
    chroms = _triple_chroms(keys, npzs, paths, continuous)
    manifest = write_store(output, chroms, names, extra, overwrite=overwrite, inputs=[base, *paths])
    log.info(
        "imported %s: %d cells, %d chromosomes, %d calls (%s)",
        ypath.parent,
        n_cells,
        len(keys),
        manifest["n_calls"],
        "continuous" if continuous else "binary",
    )
    return manifest


class _NpzWriter:
    """Write arrays one at a time into an ``.npz`` (zip of ``.npy``), never holding them all."""

    def __init__(self, path: Path) -> None:
        self._zip = zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED, allowZip64=True)

    def add(self, key: str, arr: np.ndarray) -> None:
        with self._zip.open(key + ".npy", "w", force_zip64=True) as fh:
            np.lib.format.write_array(fh, np.asanyarray(arr), allow_pickle=False)

    def close(self) -> None:
        self._zip.close()


def _genome_source(
    ds: Dataset, genome_npz: str | os.PathLike[str] | None, fasta: str | os.PathLike[str] | None
) -> tuple[str, Any] | None:
    if genome_npz is not None and fasta is not None:
        raise UsageError("give either --genome-npz or --fasta, not both")
    if genome_npz is not None:
        p = Path(genome_npz)
        return ("npz", (p, _open_npz(p)))
    if fasta is not None:
        return ("fasta", Path(fasta))
    recorded = ds.manifest.get("genome_npz")
    if recorded and Path(recorded["path"]).is_file():
        p = Path(recorded["path"])
        return ("npz", (p, _open_npz(p)))
    if ds.fasta_path and Path(ds.fasta_path).is_file():
        return ("fasta", Path(ds.fasta_path))
    return None


def _fasta_contigs(path: Path) -> Iterator[tuple[str, np.ndarray]]:
    with Reference(path) as ref:
        for name, length in ref.contigs.items():
            yield name, ref.fetch_codes(name, 0, length)


@dataclass
class ExportNpzOptions:
    """The keyword parameters of :func:`export_npz` (the ``export-npz`` command's flags)."""

    values: str | None = option(
        None,
        "y.npz as int8 -1/0/1 labels or float32 methylated fractions",
        choices=("binary", "continuous"),
        shown="as imported, else binary",
    )
    fasta: str | None = option(
        None, "reference FASTA to encode X.npz from", shown="the store's, if any", metavar="FASTA"
    )
    genome_npz: str | None = option(None, "an X.npz to copy the genome from", metavar="GENOME_NPZ")
    with_genome: bool = option(
        True, "write X.npz (--no-genome: y.npz and pos.npz only)", flag="--genome"
    )
    overwrite: bool = option(False, "replace an existing directory")

    def check(self) -> None:
        """:class:`UsageError` when more than one genome source is chosen."""
        chosen = [
            flag
            for flag, given in (
                ("--fasta", self.fasta is not None),
                ("--genome-npz", self.genome_npz is not None),
                ("--no-genome", not self.with_genome),
            )
            if given
        ]
        if len(chosen) > 1:
            raise UsageError(f"{' and '.join(chosen)} exclude each other: give one")


def export_npz(
    store: str | os.PathLike[str] | Dataset,
    output: str | os.PathLike[str],
    *,
    values: str | None = None,
    genome_npz: str | os.PathLike[str] | None = None,
    fasta: str | os.PathLike[str] | None = None,
    with_genome: bool = True,
    overwrite: bool = False,
) -> dict:
    """Write ``X.npz`` (when a genome is available), ``y.npz``, ``pos.npz`` and ``cells.txt``.

    ``values``: ``"binary"`` (int8 labels -1/0/1) or ``"continuous"`` (float32 beta, -1 missing);
    default: as imported for stores made from a triple, else ``binary``. Returns a summary dict.
    """
    ds = store if isinstance(store, Dataset) else open_dataset(store)
    npz_meta = ds.manifest.get("npz") or {}
    if values is None:
        values = ds.manifest.get("data_mode") or "binary"
    if values not in ("binary", "continuous"):
        raise UsageError(f"values must be 'binary' or 'continuous', got {values!r}")
    default_y = "|i1" if values == "binary" else "<f4"
    y_dtype = np.dtype(npz_meta.get("y_dtype", default_y))
    if (values == "binary") != (y_dtype.kind in "iu"):
        y_dtype = np.dtype(default_y)
    pos_dtypes = npz_meta.get("pos_dtype") or {}
    source = _genome_source(ds, genome_npz, fasta) if with_genome else None
    if with_genome and source is None:
        log.warning(
            "no genome for X.npz (give --fasta or --genome-npz): writing y.npz and pos.npz only"
        )
    out = Path(output)
    summary: dict = {"values": values, "chromosomes": len(ds.chromosomes), "X": source is not None}
    inputs = [ds.path, genome_npz, fasta]
    with atomic_dir(out, overwrite=overwrite, kind="npz", inputs=inputs) as tmp:
        set_default_dir_mode(tmp)
        yw = _NpzWriter(tmp / "y.npz")
        pw = _NpzWriter(tmp / "pos.npz")
        try:
            for chrom in progress(ds.chromosomes, desc="export npz", unit="chrom"):
                pos = np.asarray(ds.positions(chrom))
                pos_dtype = np.dtype(pos_dtypes.get(chrom, "<i4"))
                if len(pos) and pos_dtype.kind == "i" and pos[-1] > np.iinfo(pos_dtype).max:
                    pos_dtype = np.dtype("<i8")
                n = ds.n_sites(chrom)
                if values == "binary":
                    y = ds.states(chrom, 0, n)
                else:
                    y = ds.betas(chrom, 0, n)
                yw.add(chrom, y.astype(y_dtype, copy=False))
                pw.add(chrom, pos.astype(pos_dtype))
                del y
        finally:
            yw.close()
            pw.close()
        if source is not None:
            xw = _NpzWriter(tmp / "X.npz")
            try:
                kind, src = source
                if kind == "npz":
                    xp, xnpz = src
                    contigs: Any = ((k, _get(xnpz, xp, k)) for k in xnpz.files)
                else:
                    contigs = _fasta_contigs(src)
                written = set()
                for name, genome in contigs:
                    xw.add(name, np.asarray(genome, dtype=np.int8))
                    written.add(name)
                missing = [c for c in ds.chromosomes if c not in written]
                if missing:
                    raise UsageError(
                        f"genome {src if kind == 'fasta' else src[0]} lacks store chromosomes "
                        f"{missing[:5]}"
                    )
            finally:
                xw.close()
        with open(tmp / "cells.txt", "w") as fh:
            fh.write("".join(f"{c}\n" for c in ds.cells))
    log.info("exported %s to %s (%s)", ds.path, out, values)
    return summary
