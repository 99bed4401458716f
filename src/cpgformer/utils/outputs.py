"""What an output path may be, and what ``--overwrite`` may replace.

One rule for every command (:func:`check_output`):

* never the working directory or a folder containing it, never an input of the command or a folder
  containing one (with or without ``--overwrite``);
* an existing path is replaced only with ``--overwrite`` and only when it is an output of the same
  kind that cpgformer wrote, recognised by its manifest (:func:`output_kind`); anything else is
  refused with one line.

Directory outputs without a manifest of their own (benchmark reports, explanations, npz triples, the
demo folder, bedGraph/ALLC export folders) carry a small ``.cpgformer-output.json`` marker.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import re
import shutil
import zipfile
from collections.abc import Iterable, Sequence
from pathlib import Path

from cpgformer.errors import UsageError

MARKER = ".cpgformer-output.json"

#: kind -> what users call it
KIND_LABELS: dict[str, str] = {
    "store": "dataset store",
    "imputed": "imputed store",
    "simulation": "simulation folder",
    "npz": "npz triple folder",
    "benchmark": "benchmark report folder",
    "explain": "explanation folder",
    "demo": "demo folder",
    "run": "training run folder",
    "export": "export folder",
    "model": "model file",
    "h5ad": "AnnData file",
    "cells": "cell map folder",
}

#: kinds recognised by their own manifest: kind -> (file name, its ``format`` value)
MANIFEST_FORMATS: dict[str, tuple[str, str]] = {
    "store": ("manifest.json", "cpgformer-store"),
    "imputed": ("manifest.json", "cpgformer-imputed"),
    "simulation": ("simulation.json", "cpgformer-simulation"),
}

# names ``tempfile.mkstemp``/``mkdtemp`` give: 8 characters of this alphabet
_RANDOM = "[a-z0-9_]{8}"


def label(kind: str) -> str:
    return KIND_LABELS.get(kind, kind)


def write_marker(directory: str | os.PathLike[str], kind: str, **extra: object) -> None:
    """Mark ``directory`` as a cpgformer output of ``kind`` (merged with an existing marker)."""
    from cpgformer import __version__

    path = Path(directory) / MARKER
    data: dict = {}
    with contextlib.suppress(OSError, ValueError):
        old = json.loads(path.read_text())
        if isinstance(old, dict) and old.get("kind") == kind:
            data = old
    data.update(
        {
            "format": "cpgformer-output",
            "kind": kind,
            "package_version": __version__,
            "written": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC"),
        }
    )
    data.update(extra)
    from cpgformer.utils.atomic import atomic_file

    with atomic_file(path, "w") as fh:
        json.dump(data, fh, indent=1)
        fh.write("\n")


def read_marker(directory: str | os.PathLike[str]) -> dict:
    """The marker of a cpgformer output directory ({} when there is none)."""
    try:
        data = json.loads((Path(directory) / MARKER).read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict) or data.get("format") != "cpgformer-output":
        return {}
    return data


def _manifest_format(path: Path) -> str | None:
    try:
        with open(path) as fh:
            data = json.load(fh)
    except (OSError, ValueError):
        return None
    return data.get("format") if isinstance(data, dict) else None


def _is_model_file(path: Path) -> bool:
    """A ``torch.save`` zip whose pickle names cpgformer (read without unpickling anything)."""
    try:
        with zipfile.ZipFile(path) as zf:
            names = [n for n in zf.namelist() if n.endswith("data.pkl")]
            if not names:
                return False
            with zf.open(names[0]) as fh:
                head = fh.read(1 << 20)
    except (OSError, zipfile.BadZipFile, ValueError):
        return False
    return b"cpgformer-model" in head or b"cpgformer" in head


def _is_cpgformer_h5ad(path: Path) -> bool:
    try:
        import h5py

        with h5py.File(path, "r") as f:
            return "uns" in f and "cpgformer" in f["uns"]
    except Exception:  # noqa: BLE001 - anything unreadable is simply not ours
        return False


def output_kind(path: str | os.PathLike[str]) -> str | None:
    """The kind of cpgformer output at ``path``, or None when cpgformer did not write it."""
    p = Path(path)
    if p.is_symlink():
        return None
    if p.is_dir():
        for kind, (name, fmt) in MANIFEST_FORMATS.items():
            if _manifest_format(p / name) == fmt:
                return kind
        marker = read_marker(p)
        kind = marker.get("kind")
        return kind if isinstance(kind, str) else None
    if p.is_file():
        if _is_model_file(p):
            return "model"
        if _is_cpgformer_h5ad(p):
            return "h5ad"
    return None


def _resolved(path: str | os.PathLike[str]) -> Path:
    return Path(os.path.realpath(os.path.abspath(path)))


def _contains(folder: Path, path: Path) -> bool:
    return folder == path or folder in path.parents


def check_output(
    target: str | os.PathLike[str],
    kind: str,
    *,
    overwrite: bool = False,
    inputs: Iterable[str | os.PathLike[str] | None] = (),
    exist_ok: bool = False,
) -> bool:
    """Refuse an output path that must not be written; return whether it exists (and may be replaced).

    ``exist_ok``: an existing *directory* may be written into (bedGraph/ALLC exports add files to a
    folder); files inside are then checked by :func:`check_files_in`.
    """
    t = _resolved(target)
    what = label(kind)
    cwd = _resolved(os.getcwd())
    if _contains(t, cwd):
        raise UsageError(
            f"{target}: is the working directory or contains it; refusing to write a {what} "
            "there (choose a new output path)"
        )
    for item in inputs:
        if item is None:
            continue
        i = _resolved(item)
        if t == i:
            raise UsageError(f"{target}: is an input of this command; choose another output path")
        if _contains(t, i):
            raise UsageError(
                f"{target}: contains an input of this command ({item}); choose another output path"
            )
        if i in t.parents and i.is_dir():  # e.g. -o STORE/imputed: never write into an input
            raise UsageError(
                f"{target}: is inside an input of this command ({item}); choose another output path"
            )
    p = Path(target)
    if not (p.exists() or p.is_symlink()):
        return False
    is_dir = p.is_dir() and not p.is_symlink()
    if is_dir and not exist_ok and not any(p.iterdir()):
        return True  # an empty folder (e.g. made with mkdir beforehand) holds nothing to lose
    if exist_ok and is_dir:
        found = output_kind(p)
        if found not in (None, kind):
            raise UsageError(
                f"{target}: is a cpgformer {label(found)}; files are never added to it "
                "(choose another output)"
            )
        return True
    if not overwrite:
        raise UsageError(
            f"{target}: already exists (choose another output, or pass --overwrite to replace a "
            f"{what} that cpgformer wrote)"
        )
    found = output_kind(p)
    if found != kind:
        what_it_is = (
            f"a cpgformer {label(found)}" if found else "not an output written by cpgformer"
        )
        raise UsageError(
            f"{target}: is {what_it_is}; --overwrite replaces only a {what} that cpgformer wrote "
            "(remove it yourself or choose another output)"
        )
    return True


def check_files_in(
    directory: str | os.PathLike[str], names: Sequence[str], *, overwrite: bool
) -> None:
    """Files to be written into an export folder: an existing one is replaced only with
    ``--overwrite`` and only when this folder's marker lists it as written by cpgformer."""
    d = Path(directory)
    marker = read_marker(d)
    pending = set(marker.get("pending") or [])  # being written by a run that did not finish
    existing = [n for n in names if ((d / n).exists() or (d / n).is_symlink()) and n not in pending]
    if not existing:
        return
    if not overwrite:
        raise UsageError(
            f"{d / existing[0]}: already exists (choose another output, or pass --overwrite to "
            "replace files that cpgformer wrote)"
        )
    ours = set(marker.get("files") or [])
    for n in existing:
        if n not in ours or (d / n).is_symlink() or not (d / n).is_file():
            raise UsageError(
                f"{d / n}: not a file cpgformer wrote in this folder; --overwrite replaces only "
                "those (remove it yourself or choose another output)"
            )


def begin_files_in(directory: str | os.PathLike[str], kind: str, names: Iterable[str]) -> None:
    """Record in the folder's marker that cpgformer is about to write ``names`` there: if the run
    is killed, its rerun replaces them without ``--overwrite``."""
    old = read_marker(directory)
    files = sorted(set(old.get("files") or [])) if old.get("kind") == kind else []
    write_marker(directory, kind, files=files, pending=sorted(set(names)))


def record_files_in(directory: str | os.PathLike[str], kind: str, names: Iterable[str]) -> None:
    """Add ``names`` to the marker of an export folder (the files cpgformer wrote there)."""
    old = read_marker(directory)
    files = set(old.get("files") or []) if old.get("kind") == kind else set()
    files.update(names)
    pending = sorted(set(old.get("pending") or []) - files)
    write_marker(directory, kind, files=sorted(files), pending=pending)


def leftover_pattern(target: str | os.PathLike[str]) -> re.Pattern[str]:
    """Names of the temporary siblings that atomic writes of ``target`` create."""
    t = Path(target)
    name, stem, suffixes = t.name, t.stem, "".join(t.suffixes)  # as in atomic_path
    first = name.split(".")[0]  # as in the export writers
    return re.compile(
        rf"^\.partial-(?:{re.escape(name)}-(?:old-)?{_RANDOM}"
        rf"|{re.escape(stem)}-{_RANDOM}{re.escape(suffixes)}"
        rf"|{re.escape(first)}-{_RANDOM}{re.escape(suffixes)})$"
    )


def remove_leftovers(target: str | os.PathLike[str]) -> list[Path]:
    """Remove what killed runs writing ``target`` left next to it (call while holding its lock)."""
    t = Path(os.path.abspath(target))
    pattern = leftover_pattern(t)
    removed = []
    try:
        entries = list(os.scandir(t.parent))
    except OSError:
        return removed
    for entry in entries:
        if not pattern.match(entry.name):
            continue
        path = Path(entry.path)
        if entry.is_dir(follow_symlinks=False):
            shutil.rmtree(path, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                path.unlink()
        removed.append(path)
    return removed


_WRITER_TEMP = re.compile(rf"^\.partial-(?P<first>[^.]*)-{_RANDOM}(?P<suffixes>\..*)$")


def remove_leftovers_in(directory: str | os.PathLike[str], names: Iterable[str]) -> int:
    """Remove temporary files that killed runs left in an export folder for the files ``names``
    (call while holding the folder's lock); return how many were removed."""
    wanted = set(names)
    n = 0
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return 0
    for entry in entries:
        m = _WRITER_TEMP.match(entry.name)
        if m and m["first"] + m["suffixes"] in wanted and entry.is_file(follow_symlinks=False):
            with contextlib.suppress(OSError):
                os.unlink(entry.path)
                n += 1
    return n
