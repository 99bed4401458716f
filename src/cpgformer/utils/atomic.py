"""Atomic writes: a killed run never leaves a half-written output that looks complete.

Files and directories are written under a temporary sibling name and renamed into place only when
complete. Anything left over after a crash carries the ``.partial-`` prefix and is never read as output.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import NoReturn

PARTIAL_PREFIX = ".partial-"

# OS errors of writing an output (reported as the output's problem, not as a crash)
_WRITE_ERRNOS = {
    errno.ENOSPC,
    errno.EDQUOT,
    errno.EFBIG,
    errno.EROFS,
    errno.EACCES,
    errno.EPERM,
    errno.EIO,
}


def _raise_for(exc: BaseException, target: Path) -> NoReturn:
    """Re-raise ``exc``, as an environment problem naming ``target`` where it is one."""
    problem = _as_environment_problem(exc, target)
    if problem is not None:
        raise problem from exc
    raise exc


def _as_environment_problem(exc: BaseException, target: Path) -> BaseException | None:
    """An :class:`~cpgformer.errors.EnvironmentProblem` naming ``target`` for an error of the
    environment while writing it (a full disk, permissions); None for anything else."""
    from cpgformer.errors import EnvironmentProblem, environment_problem

    if isinstance(exc, OSError) and exc.errno in _WRITE_ERRNOS:
        return environment_problem(exc, target)
    if isinstance(exc, RuntimeError) and "write failed" in str(exc):  # torch.save's stream writer
        return EnvironmentProblem(f"{target}: writing failed (disk full or file-size limit?)")
    return None


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def default_file_mode() -> int:
    """The mode a plain ``open(path, "w")`` gives a new file under the current umask."""
    return 0o666 & ~_umask()


def default_dir_mode() -> int:
    """The mode a plain ``mkdir`` gives a new directory under the current umask."""
    return 0o777 & ~_umask()


def _mkstemp(target: Path, prefix: str, suffix: str = "") -> str:
    fd, tmp_name = tempfile.mkstemp(prefix=prefix, suffix=suffix, dir=target.parent)
    os.close(fd)
    os.chmod(tmp_name, default_file_mode())  # mkstemp makes 0600; outputs follow the umask
    return tmp_name


@contextlib.contextmanager
def atomic_dir(
    path: str | os.PathLike[str],
    overwrite: bool = False,
    *,
    kind: str = "output",
    inputs: Iterable[str | os.PathLike[str] | None] = (),
) -> Iterator[Path]:
    """Yield a temporary directory that becomes ``path`` on success and is removed on failure.

    The output is checked first (:func:`cpgformer.utils.outputs.check_output`: ``--overwrite``
    replaces only a cpgformer output of the same ``kind``, never the working directory or an
    input) and locked for the whole block (:func:`cpgformer.utils.locks.output_lock`); leftovers of
    killed runs writing the same output are removed. Kinds without a manifest of their own get a
    marker file.
    """
    from cpgformer.utils.locks import output_lock
    from cpgformer.utils.outputs import (
        MANIFEST_FORMATS,
        check_output,
        remove_leftovers,
        write_marker,
    )

    target = Path(path)
    inputs = list(inputs)
    check_output(target, kind, overwrite=overwrite, inputs=inputs)
    with output_lock(target):
        check_output(target, kind, overwrite=overwrite, inputs=inputs)  # again, now under the lock
        remove_leftovers(target)
        tmp = Path(tempfile.mkdtemp(prefix=PARTIAL_PREFIX + target.name + "-", dir=target.parent))
        try:
            tmp.chmod(default_dir_mode())  # mkdtemp makes 0700; outputs get the usual umask mode
            yield tmp
            if kind not in MANIFEST_FORMATS:
                write_marker(tmp, kind)
            replace_dir(tmp, target)
        except BaseException as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            _raise_for(exc, target)


def replace_dir(tmp: Path, target: Path) -> None:
    """Rename the finished ``tmp`` to ``target``; an existing ``target`` (already checked as
    replaceable) is first moved aside and removed only once the new output is in place."""
    if not (target.exists() or target.is_symlink()):
        os.replace(tmp, target)
        return
    old = Path(tempfile.mkdtemp(prefix=PARTIAL_PREFIX + target.name + "-old-", dir=target.parent))
    os.rmdir(old)
    os.replace(target, old)
    try:
        os.replace(tmp, target)
    except BaseException:
        os.replace(old, target)
        raise
    if old.is_dir() and not old.is_symlink():
        shutil.rmtree(old, ignore_errors=True)
    else:
        old.unlink()


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike[str], mode: str = "wb") -> Iterator:
    """Open a temporary file that replaces ``path`` only when the block finishes without error."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        tmp_name = _mkstemp(target, PARTIAL_PREFIX + target.name + "-")
    except OSError as exc:
        _raise_for(exc, target)
    try:
        with open(tmp_name, mode) as handle:
            yield handle
        os.replace(tmp_name, target)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        _raise_for(exc, target)


def atomic_path(path: str | os.PathLike[str]) -> contextlib.AbstractContextManager[Path]:
    """Yield a temporary file *path* (for libraries that write by name) renamed to ``path`` on success."""

    @contextlib.contextmanager
    def _cm() -> Iterator[Path]:
        target = Path(path)
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            suffix = "".join(target.suffixes)
            fd, tmp_name = tempfile.mkstemp(
                prefix=PARTIAL_PREFIX + target.stem + "-", suffix=suffix, dir=target.parent
            )
            os.close(fd)
            os.unlink(tmp_name)
        except OSError as exc:
            _raise_for(exc, target)
        try:
            yield Path(tmp_name)
            os.replace(tmp_name, target)
        except BaseException as exc:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp_name)
            _raise_for(exc, target)

    return _cm()


def ensure_free_space(path: str | os.PathLike[str], nbytes: int) -> None:
    """Refuse to start writing about ``nbytes`` at ``path`` when its file system has less free.

    For writers that cannot fail cleanly half-way (HDF5 on a full disk), so that a full disk is
    reported before anything is written.
    """
    from cpgformer.errors import EnvironmentProblem

    target = Path(path)
    folder = target.parent if target.parent.exists() else Path.cwd()
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        return
    if nbytes > free:
        raise EnvironmentProblem(
            f"{target}: not enough free space (needs about {nbytes / 1e6:.1f} MB, "
            f"{free / 1e6:.1f} MB free)"
        )
