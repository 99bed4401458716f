"""Integrity of what cpgformer wrote: dataset stores, imputed stores, checkpoints.

Two levels:

* **cheap, on every open** (:func:`verify_store_files`, :func:`verify_imputed_files`): every array the
  manifest promises exists, its ``.npy`` header has the promised shape and dtype, and the file is as
  long as the header says (a truncated or deleted array, or an edited site count, is an error naming
  the file). Costs one small read per file.
* **full** (``cpgformer check``, :func:`check_path`): also the SHA-256 of every file against the
  manifest, the content rules of the format (sorted positions, CSR pointers, cell indices, counts,
  labels, probabilities in [0, 1]) and, for a store, the fingerprint recomputed from the arrays; for a
  checkpoint, the CRC of every member of the archive and a strict load of the weights.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from cpgformer import pretrained
from cpgformer.errors import InputError

STORE_ARRAYS = {
    "positions": (np.int64, "sites"),
    "indptr": (np.int64, "sites+1"),
    "cell": (np.int32, "calls"),
    "mc": (np.int32, "calls"),
    "cov": (np.int32, "calls"),
    "label": (np.int8, "calls"),
}
HINT = "the output is damaged; run `cpgformer check` on it, and rebuild it"


def npy_header(path: Path) -> tuple[tuple[int, ...], np.dtype, int]:
    """(shape, dtype, data offset) of an ``.npy`` file, reading only its header."""
    with open(path, "rb") as fh:
        version = np.lib.format.read_magic(fh)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(fh)
        else:
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(fh)
        return tuple(shape), np.dtype(dtype), fh.tell()


def _check_npy(path: Path, shape: tuple[int, ...], dtype: Any, recorded: dict | None) -> None:
    """Raise :class:`InputError` unless ``path`` is a complete ``.npy`` of ``shape``/``dtype``."""
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise InputError(path, None, f"missing array ({HINT})") from None
    except OSError as exc:
        raise InputError(path, None, f"unreadable array ({exc.strerror}; {HINT})") from None
    if recorded is not None and "size" in recorded and size != recorded["size"]:
        raise InputError(
            path, None, f"{size} bytes, the manifest records {recorded['size']} ({HINT})"
        )
    try:
        got_shape, got_dtype, offset = npy_header(path)
    except (OSError, ValueError, SyntaxError) as exc:
        raise InputError(path, None, f"not a readable .npy array ({exc}; {HINT})") from None
    if got_shape != tuple(shape) or got_dtype != np.dtype(dtype):
        raise InputError(
            path,
            None,
            f"holds {got_dtype} {list(got_shape)}, the manifest promises {np.dtype(dtype)} "
            f"{list(shape)} ({HINT})",
        )
    expected = offset + int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
    if size != expected:
        raise InputError(path, None, f"truncated: {size} bytes, expected {expected} ({HINT})")


def _store_entries(manifest: dict) -> Iterable[tuple[str, tuple[int, ...], Any]]:
    for c in manifest.get("chromosomes", []):
        sizes = {"sites": (int(c["n_sites"]),), "sites+1": (int(c["n_sites"]) + 1,)}
        sizes["calls"] = (int(c["n_calls"]),)
        for field, (dtype, kind) in STORE_ARRAYS.items():
            yield f"chroms/{c['dir']}/{field}.npy", sizes[kind], dtype
        if c.get("beta"):
            yield f"chroms/{c['dir']}/beta.npy", sizes["calls"], np.float32


def verify_store_files(path: str | os.PathLike[str], manifest: dict) -> None:
    """The cheap check of a dataset store (run by ``open_dataset``)."""
    root = Path(path)
    files = manifest.get("files") or {}
    try:
        for rel, shape, dtype in _store_entries(manifest):
            _check_npy(root / rel, shape, dtype, files.get(rel))
        sites = sum(int(c["n_sites"]) for c in manifest["chromosomes"])
        calls = sum(int(c["n_calls"]) for c in manifest["chromosomes"])
    except (KeyError, TypeError, ValueError) as exc:
        raise InputError(
            root / "manifest.json", None, f"malformed store manifest ({exc})"
        ) from None
    for key, total in (("n_sites", sites), ("n_calls", calls)):
        if key in manifest and manifest[key] != total:
            raise InputError(
                root / "manifest.json",
                None,
                f"{key} {manifest[key]} disagrees with its chromosomes ({total}) ({HINT})",
            )
    if not (root / "cells.tsv").is_file():
        raise InputError(root / "cells.tsv", None, f"missing cell table ({HINT})")


def _imputed_entries(manifest: dict) -> Iterable[tuple[str, tuple[int, ...] | None, Any]]:
    n_cells = len(manifest["cells"])
    chunk = int(manifest["chunk_sites"])
    dtype = np.float16 if manifest.get("dtype", "float16") == "float16" else np.uint8
    for c in manifest["chromosomes"]:
        n = int(c["n_sites"])
        yield f"chroms/{c['dir']}/positions.npy", (n,), np.int64
        yield f"chroms/{c['dir']}/indptr.npy", (n + 1,), np.int64
        for i in range(int(c["n_chunks"])):
            rows = min(n, (i + 1) * chunk) - i * chunk
            yield f"chroms/{c['dir']}/p-{i:06d}.npy", (rows, n_cells), dtype


def verify_imputed_files(path: str | os.PathLike[str], manifest: dict) -> None:
    """The cheap check of an imputed store (run when it is opened): every chunk is there and
    complete. With recorded sizes only a ``stat`` per file; otherwise the headers are read."""
    root = Path(path)
    files = manifest.get("files")
    try:
        entries = list(_imputed_entries(manifest))
    except (KeyError, TypeError, ValueError) as exc:
        raise InputError(root / "manifest.json", None, f"malformed manifest ({exc})") from None
    for rel, shape, dtype in entries:
        p = root / rel
        if files is not None and rel in files:
            try:
                size = p.stat().st_size
            except FileNotFoundError:
                raise InputError(p, None, f"missing array ({HINT})") from None
            if size != files[rel]["size"]:
                raise InputError(
                    p, None, f"{size} bytes, the manifest records {files[rel]['size']} ({HINT})"
                )
        else:
            _check_npy(p, shape, dtype, None)


# ------------------------------------------------------------------------------------ checksums


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def file_digests(root: str | os.PathLike[str], names: Iterable[str] | None = None) -> dict:
    """{relative path: {"size", "sha256"}} of ``names`` (default: every file under ``root`` but
    the manifest), for the manifest's ``files`` record."""
    base = Path(root)
    if names is None:
        names = sorted(
            str(p.relative_to(base))
            for p in base.rglob("*")
            if p.is_file() and p.name not in ("manifest.json", "plan.json")
        )
    return {n: {"size": (base / n).stat().st_size, "sha256": sha256_file(base / n)} for n in names}


def _check_digests(root: Path, manifest: dict, problems: list[str]) -> str:
    """Compare recorded sizes and SHA-256; return what was verified."""
    files = manifest.get("files")
    if files is None:
        return "not recorded (older cpgformer): sizes and content checked"
    for rel, meta in files.items():
        p = root / rel
        if not p.is_file():
            problems.append(f"{p}: missing")
            continue
        size = p.stat().st_size
        if size != meta.get("size"):
            problems.append(f"{p}: {size} bytes, the manifest records {meta.get('size')}")
        elif sha256_file(p) != meta.get("sha256"):
            problems.append(f"{p}: checksum differs from the manifest (content changed)")
    return f"{len(files)} files verified"


# ------------------------------------------------------------------------------------ full checks


def _merge(problems: list[str], exc: InputError) -> list[str]:
    """``problems`` plus the error of ``exc`` unless its file is already reported."""
    text = str(exc).replace(f" ({HINT})", "").replace(f"; {HINT})", ")")
    if exc.path is not None and any(p.startswith(exc.path + ":") for p in problems):
        return problems
    return [*problems, text]


def _read_manifest(root: Path) -> dict:
    try:
        data = json.loads((root / "manifest.json").read_text())
    except (OSError, ValueError) as exc:
        raise InputError(root / "manifest.json", None, f"unreadable manifest ({exc})") from None
    if not isinstance(data, dict):
        raise InputError(root / "manifest.json", None, "not a manifest (not a JSON object)")
    return data


def _open_checked(root: Path, opener: Any, problems: list[str]) -> tuple[Any, Any]:
    """(checksums, opened store or None): the manifest's file digests checked, then ``opener``;
    what fails is appended to ``problems``."""
    manifest = _read_manifest(root)
    checksums = _check_digests(root, manifest, problems)
    try:
        return checksums, opener(root)
    except InputError as exc:
        problems[:] = _merge(problems, exc)
        return checksums, None


def check_store(path: str | os.PathLike[str]) -> tuple[dict, list[str]]:
    """Full check of a dataset store -> (summary, problems)."""
    from cpgformer.io.store import ChromArrays, open_dataset

    root = Path(path)
    problems: list[str] = []
    checksums, ds = _open_checked(root, open_dataset, problems)
    if ds is None:
        return {"kind": "store"}, problems
    n_cells = ds.n_cells
    h = hashlib.sha256()
    from cpgformer.io.store import FORMAT, FORMAT_VERSION, _hash_chrom

    h.update(f"{FORMAT} {FORMAT_VERSION}\0".encode())
    for name in ds.cells:
        h.update(name.encode() + b"\n")
    for chrom in ds.chromosomes:
        where = f"{root}: chromosome {chrom!r}"
        pos = np.asarray(ds.positions(chrom))
        indptr, cell, mc, cov, label = (np.asarray(a) for a in ds.csr(chrom))
        if len(pos) and (pos[0] < 0 or np.any(pos[1:] <= pos[:-1])):
            problems.append(f"{where}: positions not strictly increasing and >= 0")
        if len(indptr) and (indptr[0] != 0 or np.any(np.diff(indptr) < 0)):
            problems.append(f"{where}: indptr does not start at 0 or decreases")
        elif len(indptr) and indptr[-1] != len(cell):
            problems.append(f"{where}: indptr ends at {indptr[-1]}, {len(cell)} calls stored")
        if len(cell) and (cell.min() < 0 or cell.max() >= n_cells):
            problems.append(f"{where}: cell index outside 0..{n_cells - 1}")
        if np.any(cov < 1) or np.any(mc < 0) or np.any(mc > cov):
            problems.append(f"{where}: read counts outside 0 <= mc <= cov, cov >= 1")
        if np.any((label < -1) | (label > 1)):
            problems.append(f"{where}: labels outside -1, 0, 1")
        beta = np.asarray(ds._array(chrom, "beta")) if ds.has_beta(chrom) else None
        _hash_chrom(h, ChromArrays(chrom, pos, indptr, cell, mc, cov, label, beta))
    if h.hexdigest() != ds.fingerprint:
        problems.append(
            f"{root}: content fingerprint {h.hexdigest()[:12]} differs from the manifest's "
            f"{ds.fingerprint[:12]} (arrays or cell names changed)"
        )
    if len(ds.cell_table) != n_cells or list(ds.cell_table["name"].astype(str)) != ds.cells:
        problems.append(f"{root / 'cells.tsv'}: cell names differ from the manifest")
    summary = {
        "kind": "store",
        "n_cells": n_cells,
        "chromosomes": len(ds.chromosomes),
        "n_sites": int(sum(ds.n_sites(c) for c in ds.chromosomes)),
        "n_calls": int(sum(ds.n_calls(c) for c in ds.chromosomes)),
        "checksums": checksums,
    }
    return summary, problems


def check_imputed(path: str | os.PathLike[str]) -> tuple[dict, list[str]]:
    """Full check of an imputed store -> (summary, problems)."""
    from cpgformer.impute import open_imputed

    root = Path(path)
    problems: list[str] = []
    checksums, imp = _open_checked(root, open_imputed, problems)
    if imp is None:
        return {"kind": "imputed"}, problems
    manifest = imp.manifest
    for rel, shape, dtype in _imputed_entries(manifest):
        try:
            _check_npy(root / rel, shape, dtype, None)
        except InputError as exc:
            problems = _merge(problems, exc)
    if problems:
        return {"kind": "imputed"}, problems
    for chrom in imp.chromosomes:
        pos = np.asarray(imp.positions(chrom))
        if len(pos) and (pos[0] < 0 or np.any(pos[1:] <= pos[:-1])):
            problems.append(f"{root}: chromosome {chrom!r}: positions not strictly increasing")
        for a, b in imp.chunks(chrom):
            v = imp.values(chrom, a, b)
            finite = v[~np.isnan(v)]
            if finite.size and (finite.min() < 0 or finite.max() > 1):
                problems.append(f"{root}: chromosome {chrom!r}: probabilities outside [0, 1]")
                break
    summary = {
        "kind": "imputed",
        "n_cells": imp.n_cells,
        "chromosomes": len(imp.chromosomes),
        "n_sites": int(manifest.get("n_sites", 0)),
        "checksums": checksums,
    }
    return summary, problems


def check_checkpoint(path: str | os.PathLike[str]) -> tuple[dict, list[str]]:
    """Full check of a checkpoint file -> (summary, problems)."""
    import zipfile

    from cpgformer.checkpoint import diagnose_file, load_checkpoint
    from cpgformer.errors import CheckpointError

    problem = diagnose_file(path)
    if problem is not None:
        return {"kind": "checkpoint"}, [f"{path}: {problem}"]
    problems: list[str] = []
    if zipfile.is_zipfile(path):
        try:
            with zipfile.ZipFile(path) as zf:
                bad = zf.testzip()
            if bad is not None:
                problems.append(f"{path}: archive member {bad} fails its CRC check (damaged)")
        except (zipfile.BadZipFile, OSError, ValueError) as exc:
            problems.append(f"{path}: damaged archive ({exc})")
        if problems:
            return {"kind": "checkpoint"}, problems
    try:
        loaded = load_checkpoint(path)
    except CheckpointError as exc:
        return {"kind": "checkpoint"}, [str(exc)]
    for name, tensor in loaded.model.state_dict().items():
        if tensor.is_floating_point() and not bool(tensor.isfinite().all()):
            problems.append(f"{path}: weight {name} holds NaN or infinite values")
    summary = {
        "kind": "checkpoint",
        "format": loaded.kind,
        "n_cells": loaded.config.n_cells,
        "n_parameters": int(sum(p.numel() for p in loaded.model.parameters())),
        "temperature": loaded.temperature,
    }
    return summary, problems


def check_path(path: str | os.PathLike[str]) -> tuple[dict, list[str]]:
    """Check a store, an imputed store or a checkpoint (recognised by what is at ``path``;
    ``pretrained`` is the model shipped with cpgformer)."""
    p = Path(pretrained.resolve(path))
    if p.is_dir():
        fmt = None
        try:
            fmt = json.loads((p / "manifest.json").read_text()).get("format")
        except (OSError, ValueError, AttributeError):
            pass
        if fmt == "cpgformer-store":
            return check_store(p)
        if fmt == "cpgformer-imputed":
            return check_imputed(p)
        raise InputError(
            p, None, "not a cpgformer store or imputed store (no manifest.json of either)"
        )
    if not p.exists():
        raise InputError(p, None, "no such file or directory")
    return check_checkpoint(p)
