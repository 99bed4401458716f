"""One exception hierarchy for everything a user can cause.

The CLI prints ``str(error)`` on one line and exits with code 2 for any :class:`CpgformerError`;
tracebacks are shown only with ``-v``.
"""

from __future__ import annotations

import errno
from os import PathLike


class CpgformerError(Exception):
    """Base class of errors caused by user input or environment (exit code 2 in the CLI)."""


class InputError(CpgformerError):
    """Bad input file content: names the file and, where there is one, the 1-based line number.

    ``str(InputError("cells/c1.cov.gz", 1042, "expected 6 tab-separated columns for bismark-cov, got 4"))``
    is ``cells/c1.cov.gz:1042: expected 6 tab-separated columns for bismark-cov, got 4``.
    """

    def __init__(self, path: str | PathLike[str] | None, line: int | None, message: str) -> None:
        self.path = None if path is None else str(path)
        self.line = line
        self.message = message
        super().__init__(self._format())

    def _format(self) -> str:
        where = ""
        if self.path is not None:
            where = self.path
            if self.line is not None:
                where += f":{self.line}"
            where += ": "
        return where + self.message


class UsageError(CpgformerError):
    """Inconsistent options or arguments (e.g. duplicate cell names, incompatible store and checkpoint)."""


class CheckpointError(CpgformerError):
    """A checkpoint that cannot be loaded: missing/unexpected keys, shape mismatch, wrong format."""


class NoCallsError(InputError):
    """An input file without a single usable call (empty, header only, everything filtered out)."""


class EnvironmentProblem(CpgformerError):
    """The environment stopped a command: permissions, a full disk, a read-only or damaged file
    system. The message names the file and the cause."""


_CAUSES = {
    errno.ENOSPC: "no space left on the device (disk full)",
    errno.EDQUOT: "disk quota exceeded",
    errno.EFBIG: "file too large (disk full or file-size limit)",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.EROFS: "read-only file system",
    errno.ENOENT: "no such file or directory",
    errno.ENOTDIR: "a part of the path is not a directory",
    errno.EISDIR: "is a directory",
    errno.EEXIST: "already exists",
    errno.EIO: "input/output error (damaged file or failing disk)",
    errno.EMFILE: "too many open files (raise `ulimit -n`)",
    errno.ENFILE: "too many open files in the system",
    errno.ENAMETOOLONG: "file name too long",
    errno.ENOMEM: "out of memory",
    errno.ELOOP: "too many levels of symbolic links",
    errno.ETXTBSY: "file busy",
}


def describe_os_error(exc: OSError, path: str | PathLike[str] | None = None) -> str:
    """One line for an OS error: ``<file>: <cause>`` (``path`` when the error names no file)."""
    cause = _CAUSES.get(exc.errno or -1) or exc.strerror or str(exc) or type(exc).__name__
    where = exc.filename if exc.filename is not None else path
    if exc.filename2 is not None:
        where = f"{exc.filename} -> {exc.filename2}"
    return f"{where}: {cause}" if where is not None else cause


def environment_problem(
    exc: OSError, path: str | PathLike[str] | None = None
) -> EnvironmentProblem:
    """The :class:`EnvironmentProblem` for ``exc`` (``path``: the output being written)."""
    err = EnvironmentProblem(describe_os_error(exc, path))
    err.errno = exc.errno  # type: ignore[attr-defined]
    return err
