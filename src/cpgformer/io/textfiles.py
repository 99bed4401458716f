"""Low-level access to call files: gzip by content, blocks of whole lines, the first lines."""

from __future__ import annotations

import gzip
import os
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from cpgformer.errors import InputError

GZIP_MAGIC = b"\x1f\x8b"
BLOCK_BYTES = 8 << 20
SNIFF_LINES = 200

# --------------------------------------------------------------------------------------------------
# Low-level file access
# --------------------------------------------------------------------------------------------------


def check_path(path: Path) -> None:
    if path.is_dir():
        raise InputError(path, None, "is a directory, expected a methylation call file")
    if not path.exists():
        raise InputError(path, None, "no such file")


def is_gzip(path: str | os.PathLike[str]) -> bool:
    """True if the file starts with the gzip magic bytes (BGZF included), whatever its name."""
    with open(path, "rb") as handle:
        return handle.read(2) == GZIP_MAGIC


def open_binary(path: Path, raw_block: int = 1 << 20) -> BinaryIO:
    check_path(path)
    try:
        raw = open(path, "rb")  # noqa: SIM115
    except OSError as exc:
        raise InputError(path, None, f"cannot open: {exc.strerror}") from None
    if raw.read(2) == GZIP_MAGIC:
        raw.seek(0)
        return _GzipStream(raw, raw_block)  # type: ignore[return-value]
    raw.seek(0)
    return raw


class _GzipStream:
    """Minimal gzip reader on zlib (multi-member/BGZF aware, CRC checked by zlib).

    ``read(n)`` returns at least ``n`` bytes unless the stream ends (possibly more); ``b""`` at the
    end. A stream that stops inside a member raises EOFError; bad data raises zlib.error.
    """

    def __init__(self, raw: BinaryIO, raw_block: int = 1 << 20) -> None:
        self._raw = raw
        self._raw_block = raw_block
        self._d = zlib.decompressobj(31)
        self._started = False  # current member received input
        self._pending = b""  # compressed bytes not yet fed

    def _next_piece(self) -> bytes | None:
        while True:
            data = self._pending or self._raw.read(self._raw_block)
            self._pending = b""
            if not data:
                if self._started and not self._d.eof:
                    raise EOFError(
                        "compressed file ended before the end-of-stream marker was reached"
                    )
                return None
            if self._d.eof:  # previous member complete: next member (or zero padding)
                if not data.strip(b"\0"):
                    continue
                self._d = zlib.decompressobj(31)
                self._started = False
            self._started = True
            out = self._d.decompress(data)
            if self._d.eof:
                self._pending = self._d.unused_data
            if out:
                return out

    def read(self, n: int) -> bytes:
        pieces: list[bytes] = []
        size = 0
        while size < n:
            piece = self._next_piece()
            if piece is None:
                break
            pieces.append(piece)
            size += len(piece)
        return b"".join(pieces)

    def close(self) -> None:
        self._raw.close()


def read_some(handle: BinaryIO, path: Path, n: int) -> bytes:
    try:
        return handle.read(n)
    except (EOFError, gzip.BadGzipFile, zlib.error) as exc:
        raise InputError(path, None, f"truncated or corrupt gzip file ({exc})") from None
    except OSError as exc:
        raise InputError(path, None, f"read error: {exc}") from None


def iter_blocks(path: Path, block_bytes: int = BLOCK_BYTES) -> Iterator[tuple[int, bytes, int]]:
    """Yield (1-based number of the first line, block of whole ``\\n``-ended lines, line count).

    Carriage returns are removed; a last line without a line end gets one.
    """
    handle = open_binary(path)
    try:
        line_no = 1
        rest = b""
        while True:
            data = read_some(handle, path, block_bytes)
            if not data:
                if rest:
                    block = rest if rest.endswith(b"\n") else rest + b"\n"
                    if b"\r" in block:
                        block = block.replace(b"\r", b"")
                    yield line_no, block, block.count(b"\n")
                return
            data = rest + data
            cut = data.rfind(b"\n")
            if cut < 0:
                rest = data
                continue
            block, rest = data[: cut + 1], data[cut + 1 :]
            if b"\r" in block:
                block = block.replace(b"\r", b"")
            n_lines = block.count(b"\n")
            yield line_no, block, n_lines
            line_no += n_lines
    finally:
        handle.close()


def head_lines(path: Path, n: int = SNIFF_LINES) -> list[str]:
    """The first ``n`` lines (decoded, no line ends) for sniffing."""
    handle = open_binary(path, raw_block=1 << 14)
    try:
        data = read_some(handle, path, 1 << 16)
        while data.count(b"\n") < n:
            more = read_some(handle, path, 1 << 16)
            if not more:
                break
            data += more
    finally:
        handle.close()
    cut = -1
    for _ in range(n):
        cut = data.find(b"\n", cut + 1)
        if cut < 0:
            break
    if cut >= 0:
        data = data[: cut + 1]
    text = data.decode("utf-8", errors="replace")
    lines = text.split("\n")
    if text.endswith("\n"):
        lines = lines[:-1]
    return [line.rstrip("\r") for line in lines[:n]]


def is_comment(line: bytes | str) -> bool:
    if isinstance(line, bytes):
        line = line.decode("utf-8", errors="replace")
    stripped = line.strip()
    return (
        not stripped
        or stripped.startswith("#")
        or stripped.startswith("track")
        or stripped.startswith("browser")
    )


def split_line(line: str, sep: str) -> list[str]:
    if sep == " ":
        return line.split()
    if sep in (",", ";"):
        return [part.strip() for part in line.split(sep)]
    return line.split(sep)


def is_int(text: str) -> bool:
    try:
        int(text)
    except ValueError:
        return False
    return True
