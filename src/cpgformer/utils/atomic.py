"""Atomic writes: a killed run never leaves a half-written output that looks complete.

Files and directories are written under a temporary sibling name and renamed into place only when
complete. Anything left over after a crash carries the ``.partial-`` prefix and is never read as output.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

PARTIAL_PREFIX = ".partial-"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike[str], overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary directory that becomes ``path`` on success and is removed on failure."""
    target = Path(path)
    if target.exists() and not overwrite:
        from cpgformer.errors import UsageError

        raise UsageError(f"{target}: already exists (choose another output or remove it)")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=PARTIAL_PREFIX + target.name + "-", dir=target.parent))
    tmp.chmod(0o777 & ~_umask())  # mkdtemp makes 0700; outputs get the usual umask mode
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if target.exists():
        shutil.rmtree(target)
    os.replace(tmp, target)


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike[str], mode: str = "wb") -> Iterator:
    """Open a temporary file that replaces ``path`` only when the block finishes without error."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=PARTIAL_PREFIX + target.name + "-", dir=target.parent)
    os.close(fd)
    try:
        with open(tmp_name, mode) as handle:
            yield handle
        os.replace(tmp_name, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        raise


def atomic_path(path: str | os.PathLike[str]) -> contextlib.AbstractContextManager[Path]:
    """Yield a temporary file *path* (for libraries that write by name) renamed to ``path`` on success."""

    @contextlib.contextmanager
    def _cm() -> Iterator[Path]:
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        suffix = "".join(target.suffixes)
        fd, tmp_name = tempfile.mkstemp(
            prefix=PARTIAL_PREFIX + target.stem + "-", suffix=suffix, dir=target.parent
        )
        os.close(fd)
        os.unlink(tmp_name)
        try:
            yield Path(tmp_name)
            os.replace(tmp_name, target)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp_name)
            raise

    return _cm()
