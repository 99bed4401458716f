"""One writer per output: an advisory lock file next to the output while a command writes it.

``output_lock(target)`` creates ``<parent>/.<name>.cpgformer-lock``, locks it with ``flock`` and
writes who holds it (pid, host, command, start time). A second process asking for the same output
fails at once with a message naming the holder. The kernel drops the lock when its holder dies (even
with SIGKILL), so a lock file left by a killed run is taken over by the next run and removed when
that run finishes.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import errno
import fcntl
import json
import logging
import os
import socket
import sys
from collections.abc import Iterator
from pathlib import Path

from cpgformer.errors import UsageError

log = logging.getLogger(__name__)

LOCK_SUFFIX = ".cpgformer-lock"
_NO_LOCKING = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL}


def lock_path(target: str | os.PathLike[str]) -> Path:
    """Where the lock of ``target`` lives: a hidden sibling file."""
    t = Path(os.path.abspath(target))
    return t.parent / f".{t.name}{LOCK_SUFFIX}"


def _holder_text(info: dict) -> str:
    parts = [f"pid {info.get('pid', '?')}"]
    if info.get("host"):
        parts[0] += f" on {info['host']}"
    if info.get("command"):
        parts.append(f"`{info['command']}`")
    if info.get("started"):
        parts.append(f"since {info['started']}")
    return ", ".join(parts)


def read_holder(path: Path) -> dict:
    """The holder information recorded in a lock file ({} when unreadable)."""
    try:
        data = json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _command_line() -> str:
    argv = [Path(sys.argv[0]).name if sys.argv else "python", *sys.argv[1:]]
    text = " ".join(argv)
    return text if len(text) <= 200 else text[:197] + "..."


@contextlib.contextmanager
def output_lock(target: str | os.PathLike[str]) -> Iterator[Path]:
    """Hold the write lock of ``target`` for the block; raise :class:`UsageError` if held."""
    path = lock_path(target)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(
            f"{path.parent}: cannot create the output folder ({exc.strerror or exc})"
        ) from None
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as exc:
            raise UsageError(
                f"{path.parent}: cannot write there ({exc.strerror or exc}); choose another output"
            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno in _NO_LOCKING:  # e.g. some network file systems: write unlocked
                log.warning(
                    "%s: this file system does not support locks; make sure no other cpgformer "
                    "process writes the same output",
                    path.parent,
                )
                break
            os.close(fd)
            if exc.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise
            holder = read_holder(path)
            raise UsageError(
                f"{target}: another cpgformer process is writing this output "
                f"({_holder_text(holder)}); wait for it to finish or stop it"
            ) from None
        # the file may have been removed (released) between our open and our flock: retry then
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        previous = read_holder(path)
        if previous.get("pid"):
            log.info(
                "%s: taking over the lock of a stopped run (%s)", target, _holder_text(previous)
            )
        info = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "command": _command_line(),
            "started": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC"),
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)
        yield path
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        os.close(fd)  # releases the flock
