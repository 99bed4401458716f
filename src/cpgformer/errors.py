"""One exception hierarchy for everything a user can cause.

The CLI prints ``str(error)`` on one line and exits with code 2 for any :class:`CpgformerError`;
tracebacks are shown only with ``-v``.
"""

from __future__ import annotations

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
