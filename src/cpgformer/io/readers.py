"""Readers for per-cell methylation call files: one layout per format, format detection, custom specs.

Every reader yields :class:`~cpgformer.io.records.CallChunk` objects (one contig per chunk; a contig
may come back in several chunks and the input need not be sorted: the consumer sorts). Coordinates
are converted here, at the boundary: ``CallChunk.pos`` is the 0-based position of the C a row
describes (for pooled formats the + strand C of the CpG, with ``pooled=True``).

Parsing is vectorised: the decompressed text is cut into blocks of whole lines and each block goes
through pandas' C parser. Only when a block fails (wrong column count, non-numeric field, ...) is it
re-scanned line by line to name the offending 1-based line in an :class:`~cpgformer.errors.InputError`.

Formats (see ``docs/formats-supported.md``): ``bismark-cov``, ``bismark-zero-cov``,
``bismark-bedgraph``, ``bismark-cpg-report``, ``bismark-merged-cov``, ``methyldackel``,
``methyldackel-fraction``, ``allc``, ``deepcpg`` and ``tsv`` (a :class:`ColumnSpec`).
"""

from __future__ import annotations

import gzip
import io
import logging
import math
import os
import re
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import BinaryIO

import numpy as np
import pandas as pd

from cpgformer.errors import InputError, NoCallsError, UsageError
from cpgformer.io.records import CallChunk

log = logging.getLogger(__name__)

GZIP_MAGIC = b"\x1f\x8b"
_BLOCK_BYTES = 8 << 20
_SNIFF_LINES = 200

# --------------------------------------------------------------------------------------------------
# Column layouts
# --------------------------------------------------------------------------------------------------

MAX_COORDINATE = 1 << 40
"""Largest coordinate read (about 1.1e12 bp, beyond any chromosome); larger values are refused."""


@dataclass(frozen=True)
class ColumnSpec:
    """Where the fields of a tabular call file are. Column numbers are **1-based** (as typed by users).

    Exactly one value source must be set: ``meth`` together with ``unmeth`` or ``cov`` (counts),
    ``frac`` (methylated fraction in [0, 1], ``frac_scale=100`` for percent), or ``state`` (0/1 call).
    ``base`` is the coordinate base of ``pos`` (and ``end``). ``strand`` (values ``+``/``-``, ``F``/``R``,
    ``1``/``-1``; ``.`` = unknown) makes the rows stranded; ``pooled=True`` declares that ``pos`` already
    is the + strand C of a CpG (DeepCpG-style); otherwise rows are unstranded per-C calls.
    ``context`` keeps only rows whose context starts with ``CG``. ``end`` with ``interval`` describes an
    end column (used by the built-in bedGraph-like formats).
    """

    chrom: int = 1
    pos: int = 2
    meth: int | None = None
    unmeth: int | None = None
    cov: int | None = None
    frac: int | None = None
    frac_scale: float = 1.0
    state: int | None = None
    strand: int | None = None
    context: int | None = None
    end: int | None = None
    interval: str | None = None
    base: int = 1
    sep: str = "\t"
    header: bool = False
    pooled: bool = False
    n_columns: tuple[int, ...] | None = None
    skip_zero_coverage: bool = False
    fused: bool = False  # column 1 of the file is ``chrom_pos`` (scAge); numbers count it as two

    def __post_init__(self) -> None:
        counts = self.meth is not None
        if counts and (self.unmeth is None) == (self.cov is None):
            raise UsageError(
                "column spec: a methylated-count column needs exactly one of unmeth/cov"
            )
        if not counts and self.unmeth is not None:
            raise UsageError("column spec: unmethylated column given without methylated column")
        if not counts and self.cov is not None and self.frac is None:
            raise UsageError(
                "column spec: a total-coverage column needs a methylated-count or fraction column"
            )
        n_sources = int(counts) + int(self.frac is not None) + int(self.state is not None)
        if n_sources != 1:
            raise UsageError(
                "column spec: give exactly one of meth+unmeth, meth+cov, frac or state columns"
            )
        if self.base not in (0, 1):
            raise UsageError(f"column spec: base must be 0 or 1, got {self.base}")
        for name in ("chrom", "pos", "meth", "unmeth", "cov", "frac", "state", "strand", "context"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise UsageError(f"column spec: column numbers are 1-based, got {name}={value}")
        if self.pooled and self.strand is not None:
            raise UsageError("column spec: pooled=1 and a strand column exclude each other")
        used: dict[int, str] = {}
        for name in (
            "chrom",
            "pos",
            "end",
            "meth",
            "unmeth",
            "cov",
            "frac",
            "state",
            "strand",
            "context",
        ):
            value = getattr(self, name)
            if value is None:
                continue
            if value in used:
                raise UsageError(
                    f"column spec: column {value} is used for both {used[value]} and {name}"
                )
            used[value] = name

    @property
    def max_column(self) -> int:
        cols = [
            c
            for c in (
                self.chrom,
                self.pos,
                self.meth,
                self.unmeth,
                self.cov,
                self.frac,
                self.state,
                self.strand,
                self.context,
                self.end,
            )
            if c is not None
        ]
        return max(cols)

    @property
    def counts_available(self) -> bool:
        """True when reads are counted (mc/cov are depths), False for fraction/state-only inputs."""
        return self.meth is not None or (self.frac is not None and self.cov is not None)


@dataclass(frozen=True)
class FormatInfo:
    """A built-in input format: its column layout and a one-line description for docs and logs."""

    name: str
    spec: ColumnSpec | None
    description: str


def _fmt(name: str, description: str, **kw: object) -> FormatInfo:
    return FormatInfo(name, ColumnSpec(**kw) if kw else None, description)  # type: ignore[arg-type]


FORMATS: dict[str, FormatInfo] = {
    f.name: f
    for f in (
        _fmt(
            "bismark-cov",
            "Bismark coverage: chrom, start, end, meth%, mc, unmeth; 1-based, start == end",
            pos=2,
            end=3,
            interval="point1",
            meth=5,
            unmeth=6,
            base=1,
            n_columns=(6,),
        ),
        _fmt(
            "bismark-zero-cov",
            "Bismark .zero.cov: as bismark-cov but 0-based start, end = start + 1",
            pos=2,
            end=3,
            interval="c0",
            meth=5,
            unmeth=6,
            base=0,
            n_columns=(6,),
        ),
        _fmt(
            "bismark-bedgraph",
            "Bismark bedGraph: chrom, start, end, meth% (0-100); 0-based, no counts (cov 1 nominal)",
            pos=2,
            end=3,
            interval="c0",
            frac=4,
            frac_scale=100.0,
            base=0,
            n_columns=(4,),
        ),
        _fmt(
            "bismark-cpg-report",
            "Bismark CpG report: chrom, pos, strand, mc, unmeth, context, trinucleotide; 1-based",
            pos=2,
            strand=3,
            meth=4,
            unmeth=5,
            context=6,
            base=1,
            n_columns=(7,),
            skip_zero_coverage=True,
        ),
        _fmt(
            "bismark-merged-cov",
            "Bismark merged_CpG_evidence.cov: chrom, start (+ C), end (G), meth%, mc, unmeth; pooled",
            pos=2,
            end=3,
            interval="merged",
            meth=5,
            unmeth=6,
            base=1,
            n_columns=(6,),
        ),
        _fmt(
            "methyldackel",
            "MethylDackel bedGraph: chrom, start, end, meth%, mc, unmeth; 0-based half-open; "
            "end - start = 1 per C, 2 with --mergeContext (pooled)",
            pos=2,
            end=3,
            interval="dackel",
            meth=5,
            unmeth=6,
            base=0,
            n_columns=(6,),
        ),
        _fmt(
            "methyldackel-fraction",
            "MethylDackel --fraction .meth.bedGraph: chrom, start, end, fraction 0-1; 0-based",
            pos=2,
            end=3,
            interval="dackel",
            frac=4,
            base=0,
            n_columns=(4,),
        ),
        _fmt(
            "allc",
            "ALLC: chrom, pos, strand, context, mc, cov (total), methylated [, 2 SNP columns]; "
            "1-based; CG contexts kept",
            pos=2,
            strand=3,
            context=4,
            meth=5,
            cov=6,
            base=1,
            n_columns=(7, 8, 9),
        ),
        _fmt(
            "deepcpg",
            "DeepCpG profile: chrom, pos (1-based + C of the CpG), value in [0, 1]",
            pos=2,
            frac=3,
            base=1,
            pooled=True,
            n_columns=(3,),
        ),
        _fmt(
            "deepcpg-bedgraph",
            "DeepCpG bedGraph export: chrom, start (1-based + C), end (the G), value in [0, 1]",
            pos=2,
            end=3,
            interval="cpg1",
            frac=4,
            base=1,
            pooled=True,
            n_columns=(4,),
        ),
        _fmt(
            "methyldackel-methylkit",
            "MethylDackel --methylKit: chrBase, chr, base (1-based), strand F/R, coverage, "
            "freqC %, freqT % (header); mc = round(coverage * freqC / 100)",
            chrom=2,
            pos=3,
            strand=4,
            cov=5,
            frac=6,
            frac_scale=100.0,
            base=1,
            header=True,
            n_columns=(7,),
        ),
        _fmt(
            "methrix",
            "methrix-style counts: chrom, pos (1-based C), M (methylated reads), U (unmethylated "
            "reads); per C, unstranded",
            pos=2,
            meth=3,
            unmeth=4,
            base=1,
            n_columns=(4,),
        ),
        _fmt(
            "per-c-state",
            "per-C calls: chrom, pos (1-based C on either strand), 0/1 call; unstranded",
            pos=2,
            state=3,
            base=1,
            n_columns=(3,),
        ),
        _fmt(
            "percent-rate",
            "per-C rates: chrom, pos (1-based C), methylation percentage 0-100; unstranded, "
            "no counts (cov 1 nominal)",
            pos=2,
            frac=3,
            frac_scale=100.0,
            base=1,
            n_columns=(3,),
        ),
        _fmt(
            "scage",
            "scAge: chrom_pos (fused, 1-based C, e.g. chr1_3014555), methylation 0/1 or "
            "fraction in [0, 1]; unstranded",
            pos=2,
            frac=3,
            base=1,
            fused=True,
            n_columns=(3,),
        ),
        FormatInfo("tsv", None, "generic delimited file described by a column spec (--columns)"),
    )
}

REJECTED_SUFFIXES = {
    ".counts.bedgraph": "MethylDackel --counts output has total coverage only (no methylation)",
    ".logit.bedgraph": "MethylDackel --logit output holds logit values, not calls; rerun with the "
    "default or --fraction output",
    ".gpc.cov": "NOMe-seq GpC accessibility calls (*.NOMe.GpC.cov) are not CpG methylation; "
    "use the *.NOMe.CpG.cov file",
    "_chg.bedgraph": "MethylDackel CHG-context output is not CpG methylation; use the _CpG file",
    "_chh.bedgraph": "MethylDackel CHH-context output is not CpG methylation; use the _CpG file",
}


# --------------------------------------------------------------------------------------------------
# Custom column spec
# --------------------------------------------------------------------------------------------------

_SEP_WORDS = {"\\t": "\t", "tab": "\t", "t": "\t", ",": ",", "comma": ",", ";": ";", " ": " "}
_SPEC_KEYS = {
    "chrom",
    "pos",
    "meth",
    "unmeth",
    "cov",
    "frac",
    "percent",
    "state",
    "strand",
    "context",
    "base",
    "sep",
    "header",
    "pooled",
}


def parse_column_spec(text: str) -> ColumnSpec:
    """Parse a custom column spec.

    Grammar: colon-separated fields. The first fields may be MethSCAn's positional form
    ``chrom:pos:meth:X{c|u}:sep:header`` (1-based columns; ``Xc`` = column X is total coverage,
    ``Xu`` = unmethylated count; sep ``\\t``/``tab`` or ``,``; header 0/1). Any field may instead be
    ``key=value`` with keys ``chrom pos meth unmeth cov frac percent state strand context base sep
    header pooled``. Examples: ``1:2:4:5c:,:1:strand=3`` (vmrseq csv),
    ``1:2:5:6c:\\t:0`` (ALLC-like), ``chrom=1:pos=2:frac=3:base=1``, ``chrom=1:pos=2:state=4:base=0``.
    """
    if not text or not text.strip():
        raise UsageError("column spec is empty")
    fields = text.split(":")
    positional: list[str] = []
    keys: dict[str, str] = {}
    for item in fields:
        if "=" in item:
            key, _, value = item.partition("=")
            key = key.strip().lower()
            if key not in _SPEC_KEYS:
                raise UsageError(
                    f"column spec {text!r}: unknown key {key!r} (known: {', '.join(sorted(_SPEC_KEYS))})"
                )
            keys[key] = value
        else:
            if keys:
                raise UsageError(
                    f"column spec {text!r}: positional field {item!r} after key=value fields"
                )
            positional.append(item)
    if len(positional) > 6:
        raise UsageError(
            f"column spec {text!r}: at most 6 positional fields (chrom:pos:meth:X{{c|u}}:sep:header)"
        )

    def col(value: str, what: str) -> int:
        try:
            number = int(value)
        except ValueError:
            raise UsageError(
                f"column spec {text!r}: {what} must be a 1-based column number, got {value!r}"
            ) from None
        if number < 1:
            raise UsageError(f"column spec {text!r}: {what} must be >= 1, got {number}")
        return number

    kw: dict[str, object] = {}
    names = ["chrom", "pos", "meth", "count", "sep", "header"]
    for name, value in zip(names, positional):
        if value in ("", "-") and name in ("meth", "count"):
            continue
        if name in ("chrom", "pos", "meth"):
            kw[name] = col(value, name)
        elif name == "count":
            match = re.fullmatch(r"(\d+)([cCuU])", value)
            if not match:
                raise UsageError(
                    f"column spec {text!r}: 4th field must be a column number followed by c "
                    f"(total coverage) or u (unmethylated), got {value!r}"
                )
            kind = "cov" if match.group(2).lower() == "c" else "unmeth"
            kw[kind] = col(match.group(1), kind)
        elif name == "sep":
            kw["sep"] = value
        elif name == "header":
            kw["header"] = value
    for key, value in keys.items():
        if key in ("chrom", "pos", "meth", "unmeth", "cov", "frac", "state", "strand", "context"):
            kw[key] = col(value, key)
        elif key == "percent":
            kw["frac"] = col(value, key)
            kw["frac_scale"] = 100.0
        else:
            kw[key] = value
    if "sep" in kw:
        sep = str(kw["sep"])
        if sep not in _SEP_WORDS:
            raise UsageError(
                f"column spec {text!r}: separator must be \\t, ',' or ';' (got {sep!r})"
            )
        kw["sep"] = _SEP_WORDS[sep]
    for flag in ("header", "pooled"):
        if flag in kw:
            value = str(kw[flag]).strip().lower()
            if value not in ("0", "1", "true", "false", "yes", "no"):
                raise UsageError(f"column spec {text!r}: {flag} must be 0 or 1, got {value!r}")
            kw[flag] = value in ("1", "true", "yes")
    if "base" in kw:
        value = str(kw["base"]).strip()
        if value not in ("0", "1"):
            raise UsageError(f"column spec {text!r}: base must be 0 or 1, got {value!r}")
        kw["base"] = int(value)
    return ColumnSpec(**kw)  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------------
# Statistics exposed to the caller
# --------------------------------------------------------------------------------------------------


@dataclass
class ReadStats:
    """Counters filled in while :func:`read_calls` iterates (pass one in to see them).

    ``n_skipped_context``: rows dropped because their context does not start with ``CG`` (ALLC,
    CpG report ``--CX``); ``n_skipped_zero``: CpG-report rows with mc + unmeth = 0;
    ``counts_available`` is False for fraction-only formats (cov = 1 nominal, flag the cell).
    """

    format: str = ""
    n_lines: int = 0
    n_skipped_lines: int = 0
    header: str | None = None
    n_rows: int = 0
    n_calls: int = 0
    n_skipped_context: int = 0
    n_skipped_zero: int = 0
    counts_available: bool = True
    contigs: dict[str, int] = field(default_factory=dict)


# --------------------------------------------------------------------------------------------------
# Low-level file access
# --------------------------------------------------------------------------------------------------


def _check_path(path: Path) -> None:
    if path.is_dir():
        raise InputError(path, None, "is a directory, expected a methylation call file")
    if not path.exists():
        raise InputError(path, None, "no such file")


def is_gzip(path: str | os.PathLike[str]) -> bool:
    """True if the file starts with the gzip magic bytes (BGZF included), whatever its name."""
    with open(path, "rb") as handle:
        return handle.read(2) == GZIP_MAGIC


def _open(path: Path, raw_block: int = 1 << 20) -> BinaryIO:
    _check_path(path)
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


def _read(handle: BinaryIO, path: Path, n: int) -> bytes:
    try:
        return handle.read(n)
    except (EOFError, gzip.BadGzipFile, zlib.error) as exc:
        raise InputError(path, None, f"truncated or corrupt gzip file ({exc})") from None
    except OSError as exc:
        raise InputError(path, None, f"read error: {exc}") from None


def _iter_blocks(path: Path, block_bytes: int = _BLOCK_BYTES) -> Iterator[tuple[int, bytes, int]]:
    """Yield (1-based number of the first line, block of whole ``\\n``-ended lines, line count).

    Carriage returns are removed; a last line without a line end gets one.
    """
    handle = _open(path)
    try:
        line_no = 1
        rest = b""
        while True:
            data = _read(handle, path, block_bytes)
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


def _head_lines(path: Path, n: int = _SNIFF_LINES) -> list[str]:
    """The first ``n`` lines (decoded, no line ends) for sniffing."""
    handle = _open(path, raw_block=1 << 14)
    try:
        data = _read(handle, path, 1 << 16)
        while data.count(b"\n") < n:
            more = _read(handle, path, 1 << 16)
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


def _is_comment(line: bytes | str) -> bool:
    if isinstance(line, bytes):
        line = line.decode("utf-8", errors="replace")
    stripped = line.strip()
    return (
        not stripped
        or stripped.startswith("#")
        or stripped.startswith("track")
        or stripped.startswith("browser")
    )


def _split(line: str, sep: str) -> list[str]:
    if sep == " ":
        return line.split()
    if sep in (",", ";"):
        return [part.strip() for part in line.split(sep)]
    return line.split(sep)


def _is_int(text: str) -> bool:
    try:
        int(text)
    except ValueError:
        return False
    return True


# --------------------------------------------------------------------------------------------------
# Format detection
# --------------------------------------------------------------------------------------------------


def _check_rejected(path: Path) -> None:
    lower = path.name.lower()
    if lower.endswith(".gz"):
        lower = lower[:-3]
    for suffix, why in REJECTED_SUFFIXES.items():
        if lower.endswith(suffix):
            raise InputError(path, None, f"unsupported input: {why}")


def _data_lines(lines: list[str]) -> tuple[list[str], list[str]]:
    """Split sniffed lines into leading comment/track lines (+ header) and data lines."""
    skipped: list[str] = []
    i = 0
    while i < len(lines) and _is_comment(lines[i]):
        skipped.append(lines[i])
        i += 1
    data = [line for line in lines[i:] if line.strip() and not _is_comment(line)]
    return skipped, data


def _sniff_sep(line: str) -> str:
    """The field separator of a data line: tab, else comma, else semicolon, else whitespace."""
    if "\t" in line:
        return "\t"
    if "," in line:
        return ","
    if ";" in line:
        return ";"
    return " "


def _fields(line: str, sep: str | None = None) -> list[str]:
    sep = sep or _sniff_sep(line)
    if sep in (",", ";"):
        return [part.strip() for part in line.split(sep)]
    parts = line.split("\t")
    if len(parts) == 1 or any(p != p.strip() for p in parts):
        parts = line.split()
    return parts


_FUSED = re.compile(r"^(.+)_(\d+)$")
_BINARY_MAGIC = {
    b"PK\x03\x04": "a zip archive (a NumPy .npz? For MethSCAn's prepared matrices give their "
    "directory: cpgformer prepare DATA_DIR; for the X/y/pos triple the folder holding it)",
    b"\x93NUMPY": "a NumPy .npy array, not a call table",
    b"BAM\x01": "a BAM file (call methylation first, e.g. with Bismark or MethylDackel)",
    b"\x89HDF": "an HDF5 file, not a call table",
}

# header names -> column roles (lower case, '#', quotes and blanks removed)
_HEADER_ROLES: dict[str, str] = {}
for _role, _names in {
    "chrom": "chrom chr chromosome chromo seqnames seqname contig seqid",
    "pos": "pos position start loc locus base coordinate bp cpg_pos",
    "end": "end stop",
    "meth": "m mc meth methylated n_meth nmeth meth_reads methylated_reads count_methylated "
    "numcs num_meth mcount",
    "unmeth": "u unmeth unmethylated n_unmeth nunmeth unmeth_reads unmethylated_reads "
    "count_unmethylated numts num_unmeth",
    "cov": "cov coverage total depth n n_total total_reads reads",
    "frac": "beta frac fraction meth_frac methylation rate meth_rate level meth_level "
    "methylation_level value met ratio",
    "percent": "percent pct perc meth_pct methylation_percentage percent_methylated freqc "
    "meth_percent rate_percent",
    "state": "state call methylation_state is_methylated binary",
    "strand": "strand",
    "context": "context",
}.items():
    for _name in _names.split():
        _HEADER_ROLES[_name] = _role


def _header_spec(header: list[str], rows: list[list[str]], sep: str) -> ColumnSpec | None:
    """A column spec from header names (``chrom pos M U``, ``chr,pos,rate``, ...), or None."""
    roles: dict[str, int] = {}
    for i, name in enumerate(header):
        key = name.strip().strip("\"'#").strip().lower().replace(" ", "_").replace(".", "_")
        role = _HEADER_ROLES.get(key)
        if role is None or role in roles:
            continue
        roles[role] = i + 1
    if "chrom" not in roles or "pos" not in roles:
        return None
    kw: dict[str, object] = {"chrom": roles["chrom"], "pos": roles["pos"], "sep": sep}
    kw["header"] = True

    def numbers(col: int) -> list[float] | None:
        try:
            return [float(r[col - 1]) for r in rows if len(r) >= col]
        except ValueError:
            return None

    if "meth" in roles and ("unmeth" in roles or "cov" in roles):
        kw["meth"] = roles["meth"]
        kw["unmeth" if "unmeth" in roles else "cov"] = roles.get("unmeth", roles.get("cov"))
    elif "percent" in roles or "frac" in roles:
        col = roles.get("percent", roles.get("frac"))
        values = numbers(col)  # type: ignore[arg-type]
        if values is None:
            return None
        kw["frac"] = col
        if "percent" in roles or (values and max(values) > 1.0):
            kw["frac_scale"] = 100.0
        if "cov" in roles:
            kw["cov"] = roles["cov"]
    elif "state" in roles:
        kw["state"] = roles["state"]
    else:
        return None
    if "strand" in roles:
        kw["strand"] = roles["strand"]
    if "context" in roles:
        kw["context"] = roles["context"]
    base = 1
    if "end" in roles:
        starts, ends = numbers(roles["pos"]), numbers(roles["end"])
        if starts is None or ends is None:
            return None
        diffs = {e - s for s, e in zip(starts, ends)}
        if diffs == {1.0}:
            base = 0
        elif diffs != {0.0}:
            return None
    kw["base"] = base
    try:
        return ColumnSpec(**kw)  # type: ignore[arg-type]
    except UsageError:
        return None


def spec_text(spec: ColumnSpec) -> str:
    """The ``--columns`` text of a spec (key=value form)."""
    parts = [f"chrom={spec.chrom}", f"pos={spec.pos}"]
    for role in ("meth", "unmeth", "cov", "state", "strand", "context"):
        value = getattr(spec, role)
        if value is not None:
            parts.append(f"{role}={value}")
    if spec.frac is not None:
        parts.append(f"{'percent' if spec.frac_scale == 100.0 else 'frac'}={spec.frac}")
    parts.append(f"base={spec.base}")
    if spec.sep != "\t":
        parts.append(f"sep={_SEP_KEYS.get(spec.sep, spec.sep)}")
    if spec.header:
        parts.append("header=1")
    if spec.pooled:
        parts.append("pooled=1")
    return ":".join(parts)


_SEP_KEYS = {",": ",", ";": ";", " ": " "}


def _suggest_spec(rows: list[list[str]], sep: str, header: bool) -> str:
    """A plausible ``--columns`` for a table no rule recognised (named in the error message)."""
    ncols = len(rows[0]) if rows else 0
    numeric: list[int] = []
    for col in range(2, ncols):
        try:
            [float(r[col]) for r in rows if len(r) > col]
        except ValueError:
            continue
        numeric.append(col + 1)
    tail = ("" if sep == "\t" else f":sep={sep}") + (":header=1" if header else "")
    if len(numeric) >= 2:
        return (
            f"chrom=1:pos=2:meth={numeric[0]}:unmeth={numeric[1]}:base=1{tail} (counts; "
            f"cov={numeric[1]} if column {numeric[1]} is the total)"
        )
    if len(numeric) == 1:
        return (
            f"chrom=1:pos=2:frac={numeric[0]}:base=1{tail} (fraction 0-1; percent={numeric[0]} "
            f"for 0-100, state={numeric[0]} for 0/1 calls)"
        )
    return f"chrom=1:pos=2:meth=3:cov=4:base=1{tail}"


def _binary_content(path: Path) -> str | None:
    """What a binary file is (zip/npz, npy, BAM, HDF5, other), or None for text."""
    handle = _open(path, raw_block=1 << 12)
    try:
        head = _read(handle, path, 4096)
    finally:
        handle.close()
    for magic, what in _BINARY_MAGIC.items():
        if head.startswith(magic):
            return what
    if b"\0" in head:
        return "binary content, not a text call table"
    return None


@dataclass(frozen=True)
class Detected:
    """The outcome of format detection: a built-in format, or ``tsv`` with a spec from a header."""

    format: str
    spec: ColumnSpec | None
    reason: str


def detect_format(path: str | os.PathLike[str]) -> str:
    """Guess the input format of ``path`` from its content and name (formats.md §1/§2).

    Returns a key of :data:`FORMATS`; ``"tsv"`` when a header line named the columns (the spec is
    :func:`detect`'s). Raises :class:`InputError` for rejected inputs (MethylDackel
    ``.counts``/``.logit`` bedGraphs, binary files) and for content no rule recognises, naming a
    column spec to try.
    """
    return detect(path).format


def detect(path: str | os.PathLike[str]) -> Detected:
    """:func:`detect_format` with the column spec read from a header line (if any) and the reason."""
    p = Path(path)
    _check_path(p)
    _check_rejected(p)
    binary = _binary_content(p)
    if binary is not None:
        raise InputError(p, None, f"not a text call table: {binary}")
    name = p.name.lower()
    lines = _head_lines(p)
    skipped, data = _data_lines(lines)
    track = " ".join(s for s in skipped if s.strip().startswith("track")).lower()
    methylkit_header = bool(data) and data[0].strip().lower().startswith("chrbase")
    sep = _sniff_sep(data[0]) if data else "\t"
    header_fields: list[str] | None = None
    if data:
        first = _fields(data[0], sep)
        if not _is_int(first[1] if len(first) > 1 else "") and not _FUSED.match(first[0]):
            header_fields = first
            data = data[1:]  # header line (legacy ALLC and friends)
    if not data:
        raise NoCallsError(p, None, "no calls (empty file or only header/comment lines)")
    if header_fields is None and skipped and skipped[-1].lstrip().startswith("#"):
        candidate = _fields(skipped[-1].lstrip()[1:], sep)
        if len(candidate) == len(_fields(data[0], sep)):
            header_fields = candidate  # a '#chrom pos ...' header
    rows = [_fields(line, sep) for line in data]
    ncols = len(rows[0])
    fmt: str | None = None
    why = ""
    spec: ColumnSpec | None = None

    def ints(col: int) -> list[int] | None:
        try:
            return [int(r[col]) for r in rows if len(r) > col]
        except ValueError:
            return None

    def floats(col: int) -> list[float] | None:
        try:
            return [float(r[col]) for r in rows if len(r) > col]
        except ValueError:
            return None

    if methylkit_header or name.endswith((".methylkit", ".methylkit.gz")):
        fmt, why = "methyldackel-methylkit", "methylKit header chrBase/chr/base/strand"
    elif "merged_cpg_evidence" in name:
        fmt, why = "bismark-merged-cov", "file name contains merged_CpG_evidence"
    elif "cpg_report" in name or "cytosine_report" in name:
        fmt, why = "bismark-cpg-report", "file name contains CpG_report"
    elif ".allc" in name or name.startswith("allc_"):
        fmt, why = "allc", "file name contains allc"
    elif name.endswith((".meth.bedgraph", ".meth.bedgraph.gz")):
        fmt, why = "methyldackel-fraction", "file name ends with .meth.bedGraph"
    elif name.endswith((".zero.cov", ".zero.cov.gz")):
        fmt, why = "bismark-zero-cov", "file name ends with .zero.cov"
    if fmt is None:
        strands = {r[2] for r in rows if len(r) > 2}
        if ncols in (7, 8, 9) and strands <= {"+", "-"} and ints(1) is not None:
            contexts = {r[3] for r in rows if len(r) > 3}
            if ncols == 7 and {r[5] for r in rows} <= {"CG", "CHG", "CHH"}:
                fmt, why = "bismark-cpg-report", "7 columns with strand and CG/CHG/CHH context"
            elif all(re.fullmatch(r"[ACGTNHDacgtn]{2,}", c) for c in contexts):
                fmt, why = "allc", f"{ncols} columns with strand and sequence context"
        elif ncols == 6 and ints(1) is not None and ints(2) is not None:
            diffs = {e - s for s, e in zip(ints(1) or [], ints(2) or [])}
            if "methyldackel" in track or "cpg methylation levels" in track:
                fmt, why = "methyldackel", "MethylDackel track line"
            elif diffs == {0}:
                fmt, why = "bismark-cov", "6 columns with end == start (1-based)"
            elif diffs == {1}:
                fmt, why = "bismark-zero-cov", "6 columns with end == start + 1 (0-based per C)"
            elif diffs and diffs <= {1, 2}:
                fmt, why = "methyldackel", "6 columns with end - start of 2 (merged CpGs)"
    if fmt is None and header_fields is not None:
        spec = _header_spec(header_fields, rows, sep)
        if spec is not None:
            fmt, why = "tsv", f"header {' '.join(header_fields)!r} names the columns"
    if fmt is None:
        fmt, why = _shape_rules(rows, ncols, track, ints, floats)
    if fmt is not None and fmt != "tsv" and sep in (",", ";"):
        spec = replace(FORMATS[fmt].spec, sep=sep)  # type: ignore[arg-type]
        why += f", {_sep_name(sep)}-separated"
    if fmt is None:
        suggestion = _suggest_spec(rows, sep, header_fields is not None)
        shown = data[0] if len(data[0]) <= 80 else data[0][:77] + "..."
        raise InputError(
            p,
            None,
            f"cannot detect the input format ({ncols} {_sep_name(sep)}-separated columns; first "
            f"data line {shown!r}); describe it with --columns {suggestion}, or give "
            "--input-format",
        )
    log.debug("%s: detected format %s (%s)", p, fmt, why)
    return Detected(fmt, spec, why)


def _shape_rules(
    rows: list[list[str]],
    ncols: int,
    track: str,
    ints: Callable[[int], list[int] | None],
    floats: Callable[[int], list[float] | None],
) -> tuple[str | None, str]:
    """Headerless tables recognised by the shape of their values."""
    if ncols == 2 and all(_FUSED.match(r[0]) for r in rows):
        values = floats(1)
        if values is not None and all(0.0 <= v <= 1.0 for v in values):
            return "scage", "2 columns: fused chrom_pos and a value in [0, 1]"
        return None, ""
    if ncols == 4 and ints(1) is not None and ints(2) is not None:
        starts, third = ints(1) or [], ints(2) or []
        if ints(3) is not None and any(e <= s for s, e in zip(starts, third)):
            return "methrix", "4 integer columns, the third no end coordinate: chrom pos M U"
        values = floats(3)
        if values is not None:
            if "methyldackel" in track or "cpg methylation levels" in track:
                return "methyldackel-fraction", "MethylDackel track line, 4 columns"
            if max(values) > 1.0:
                return "bismark-bedgraph", "4 columns with percentages"
            return "methyldackel-fraction", "4 columns with fractions in [0, 1]"
    if ncols == 3 and ints(1) is not None:
        values = floats(2)
        if values is None or not all(0.0 <= v <= 100.0 for v in values):
            return None, ""
        if max(values, default=0.0) > 1.0:
            return "percent-rate", "3 columns: chrom, position, percentage 0-100"
        if set(values) <= {0.0, 1.0} and _has_adjacent(rows, ints(1) or []):
            return "per-c-state", "3 columns of 0/1 calls on C and C+1 (both strands): per C"
        return "deepcpg", "3 columns: chrom, position, value in [0, 1] (one row per CpG)"
    return None, ""


def _has_adjacent(rows: list[list[str]], positions: list[int]) -> bool:
    """True when some contig has calls at x and x + 1 (both strands of a CpG, per-C rows)."""
    seen = {(r[0], x) for r, x in zip(rows, positions)}
    return any((chrom, x + 1) in seen for chrom, x in seen)


# --------------------------------------------------------------------------------------------------
# Parsing
# --------------------------------------------------------------------------------------------------


class _RowError(Exception):
    def __init__(self, index: int, message: str) -> None:
        super().__init__(message)
        self.index = index
        self.message = message


def _first(mask: np.ndarray) -> int:
    return int(np.flatnonzero(mask)[0])


@dataclass
class _Plan:
    """How to parse one file: the spec plus what was learned from its first lines."""

    fmt: str
    spec: ColumnSpec
    sep: str  # "\t", "," or " " (whitespace)
    ncols: int
    header_line: int | None  # 1-based line number of a skipped header, if any


def _numeric_columns(spec: ColumnSpec) -> dict[int, tuple[str, str]]:
    """0-based column -> (role, "int"|"float") for every numeric column we read."""
    out: dict[int, tuple[str, str]] = {}
    for role in ("pos", "end", "meth", "unmeth", "cov"):
        c = getattr(spec, role)
        if c is not None:
            out[c - 1] = (role, "int")
    for role in ("frac", "state"):
        c = getattr(spec, role)
        if c is not None:
            out[c - 1] = (role, "float")
    return out


def _sep_name(sep: str) -> str:
    return {"\t": "tab", ",": "comma", ";": "semicolon", " ": "whitespace"}.get(sep, repr(sep))


def _plan(path: Path, fmt: str, spec: ColumnSpec) -> _Plan:
    lines = _head_lines(path, 64)
    data = [(i + 1, line) for i, line in enumerate(lines) if not _is_comment(line)]
    if not data:
        raise NoCallsError(path, None, "no calls (empty file or only header/comment lines)")
    line_no, first = data[0]
    header_line = None
    sep = spec.sep
    if sep == "\t" and "\t" not in first:
        sep = _sniff_sep(first)  # built-in layouts also come comma- or semicolon-separated
    if spec.fused:
        first = _fuse_line(first)
    parts = _fields(first, sep)
    pos_field = parts[spec.pos - 1] if len(parts) >= spec.pos else ""
    if not _is_int(pos_field.strip()):
        # a header line (header=1 or not); a line whose position is a number is always data, so a
        # '#' header line before it (skipped as a comment) does not cost a call
        header_line = line_no
        log.debug("%s: line %d is a header, skipped: %s", path, header_line, first.strip()[:120])
        if len(data) < 2:
            raise NoCallsError(path, None, "no calls (empty file or only header/comment lines)")
        line_no, first = data[1]
        if spec.fused:
            first = _fuse_line(first)
    elif spec.header and line_no == 1:
        # warned once per process (not once per cell file); every such file is read the same way
        (log.warning if not _HEADER_WARNED else log.debug)(
            "%s: header=1 but line 1 holds a call (position %s): read as data (files without a "
            "header line are read whole)",
            path,
            pos_field,
        )
        _header_warned()
    if sep == "\t":
        # tab unless the first data line has no tab or pads its fields with blanks
        tab_parts = first.split("\t")
        if len(tab_parts) == 1 or any(part != part.strip() for part in tab_parts):
            sep = " "
    parts = _split(first, sep)
    ncols = len(parts)
    allowed = spec.n_columns
    if allowed is not None and ncols not in allowed:
        want = " or ".join(str(n - int(spec.fused)) for n in allowed)
        raise InputError(
            path,
            line_no,
            f"expected {want} {_sep_name(sep)}-separated columns for {fmt}, "
            f"got {ncols - int(spec.fused)}",
        )
    if ncols < spec.max_column:
        raise InputError(
            path,
            line_no,
            f"expected at least {spec.max_column} {_sep_name(sep)}-separated columns for {fmt}, "
            f"got {ncols}",
        )
    if sep != "\t":
        log.debug("%s: fields separated by %s", path, _sep_name(sep))
    return _Plan(fmt, spec, sep, ncols, header_line)


_HEADER_WARNED = False


def _header_warned() -> None:
    global _HEADER_WARNED
    _HEADER_WARNED = True


_FUSE_BYTES = re.compile(rb"(?m)^([^\t\n]*?)_(\d+)(?=[\t\n])")


def _fuse_line(line: str) -> str:
    """``chr1_3014555<TAB>1`` -> ``chr1<TAB>3014555<TAB>1`` (the scAge fused column split)."""
    head, sep_, rest = line.partition("\t")
    match = _FUSED.match(head)
    if match is None:
        return line
    return f"{match.group(1)}\t{match.group(2)}{sep_}{rest}"


def _split_fused(block: bytes) -> bytes:
    """The fused first column of every line split in two (the last ``_`` before digits)."""
    return _FUSE_BYTES.sub(rb"\1\t\2", block)


def _locate_bad_line(
    path: Path, plan: _Plan, lines: list[bytes], line_nos: np.ndarray, cause: Exception | None
) -> InputError:
    """Slow path: find the first line in a block that the fast parser refused and describe it."""
    numeric = _numeric_columns(plan.spec)
    want = plan.ncols
    for raw, line_no in zip(lines, line_nos.tolist()):
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            return InputError(path, line_no, "line is not UTF-8 text (binary file?)")
        parts = _split(text, plan.sep)
        if plan.spec.fused and len(parts) != want:
            return InputError(
                path,
                line_no,
                f"expected {want - 1} {_sep_name(plan.sep)}-separated columns for {plan.fmt}, "
                f"the first a fused chrom_pos like chr1_3014555 (got {text.strip()[:60]!r})",
            )
        if len(parts) != want:
            return InputError(
                path,
                line_no,
                f"expected {want} {_sep_name(plan.sep)}-separated columns for {plan.fmt}, "
                f"got {len(parts)}",
            )
        for col, (role, kind) in numeric.items():
            value = parts[col].strip()
            try:
                if kind == "int":
                    if abs(int(value)) > MAX_COORDINATE:
                        return InputError(
                            path,
                            line_no,
                            f"column {col + 1} ({role}): {value} is out of range "
                            f"(at most {MAX_COORDINATE})",
                        )
                elif not math.isfinite(float(value)):
                    raise ValueError(value)
            except ValueError:
                what = "an integer" if kind == "int" else "a number"
                return InputError(
                    path,
                    line_no,
                    f"column {col + 1} ({role}): expected {what}, got {parts[col]!r}",
                )
        for col in (plan.spec.chrom - 1,):
            if not parts[col].strip():
                return InputError(path, line_no, f"column {col + 1} (chrom) is empty")
    first = int(line_nos[0]) if len(line_nos) else None
    return InputError(path, first, f"cannot parse block starting here ({cause})")


class _SlowPath(Exception):
    """The fast parser refused a block: filter comment/blank lines, or locate the bad line."""


def _parse_block(
    path: Path,
    plan: _Plan,
    block: bytes,
    line_nos: np.ndarray,
    lines: list[bytes] | None,
    strict: bool,
) -> pd.DataFrame:
    """Parse a block of whole lines with pandas' C parser.

    With ``strict=False`` any failure raises :class:`_SlowPath`; with ``strict=True`` (after comment
    lines were filtered out) a failure is turned into an :class:`InputError` naming the bad line.
    """
    spec = plan.spec
    numeric = _numeric_columns(spec)
    usecols = sorted(
        {spec.chrom - 1}
        | set(numeric)
        | {c - 1 for c in (spec.strand, spec.context) if c is not None}
    )
    dtype: dict[int, object] = {spec.chrom - 1: "category"}
    for col, (_role, kind) in numeric.items():
        dtype[col] = np.int64 if kind == "int" else np.float64
    for c in (spec.strand, spec.context):
        if c is not None:
            dtype[c - 1] = "category"
    n_lines = len(line_nos)

    def refuse(cause: Exception | None) -> Exception:
        if not strict:
            return _SlowPath()
        bad_lines = lines if lines is not None else block.split(b"\n")[:-1]
        return _locate_bad_line(path, plan, bad_lines, line_nos, cause)

    sepchar = "\t" if plan.sep == " " else plan.sep  # whitespace blocks arrive normalised to tabs
    if block.count(sepchar.encode()) != (plan.ncols - 1) * n_lines:
        raise refuse(None)
    try:
        df = pd.read_csv(
            io.BytesIO(block),
            sep=sepchar,
            header=None,
            names=list(range(plan.ncols)),
            usecols=usecols,
            dtype=dtype,  # type: ignore[arg-type]
            index_col=False,
            engine="c",
            na_filter=False,
            skip_blank_lines=False,
            keep_default_na=False,
            skipinitialspace=plan.sep in (",", ";"),
        )
    except (ValueError, OverflowError, pd.errors.ParserError) as exc:
        raise refuse(exc) from None
    if len(df) != n_lines:
        raise refuse(ValueError(f"{len(df)} rows for {n_lines} lines"))
    chrom = df[spec.chrom - 1]
    categories = [str(c) for c in chrom.cat.categories]
    if not strict and any(_is_comment(c) for c in categories):
        raise _SlowPath()
    if "" in categories:
        bad = chrom.astype(str).to_numpy() == ""
        raise InputError(path, int(line_nos[_first(bad)]), f"column {spec.chrom} (chrom) is empty")
    return df


_STRAND_WORDS = {"+": 1, "-": -1, "F": 1, "R": -1, "1": 1, "+1": 1, "-1": -1, ".": 0, "*": 0}


def _category_map(
    series: pd.Series,
    mapper: Callable[[str], int | None],
    what: str,
    line_nos: np.ndarray,
    path: Path,
) -> np.ndarray:
    cats = [str(c).strip() for c in series.cat.categories]
    values = [mapper(c) for c in cats]
    codes = series.cat.codes.to_numpy()
    for i, v in enumerate(values):
        if v is None:
            row = _first(codes == i)
            raise InputError(path, int(line_nos[row]), f"{what}: unexpected value {cats[i]!r}")
    table = np.asarray(values, dtype=np.int8)
    return table[codes]


def _convert(
    path: Path, plan: _Plan, df: pd.DataFrame, line_nos: np.ndarray, stats: ReadStats
) -> Iterator[CallChunk]:
    """Columns of one parsed block -> validated CallChunks (one per contig and pooling kind)."""
    spec = plan.spec
    n = len(df)
    keep = np.ones(n, dtype=bool)

    def col(c: int | None) -> np.ndarray:
        assert c is not None
        return df[c - 1].to_numpy()

    def fail(mask: np.ndarray, message: str) -> None:
        if mask.any():
            raise _RowError(_first(mask), message)

    try:
        # ---- context filter (ALLC, CpG report --CX)
        if spec.context is not None:
            ctx = df[spec.context - 1]
            is_cg = np.asarray(
                [str(c).upper().startswith("CG") for c in ctx.cat.categories], dtype=bool
            )
            codes = ctx.cat.codes.to_numpy()
            cg = is_cg[codes] if len(is_cg) else np.zeros(n, dtype=bool)
            stats.n_skipped_context += int(n - cg.sum())
            keep &= cg

        # ---- values
        frac = None
        if spec.meth is not None:
            mc = col(spec.meth)
            fail(mc < 0, f"column {spec.meth} (methylated count) is negative")
            if spec.unmeth is not None:
                other = col(spec.unmeth)
                fail(other < 0, f"column {spec.unmeth} (unmethylated count) is negative")
                cov = mc + other
            else:
                cov = col(spec.cov)
                fail(cov < 0, f"column {spec.cov} (total count) is negative")
                fail(
                    mc > cov,
                    f"methylated count (column {spec.meth}) exceeds total (column {spec.cov})",
                )
            if spec.skip_zero_coverage:
                zero = keep & (cov == 0)
                stats.n_skipped_zero += int(zero.sum())
                keep &= cov > 0
        elif spec.frac is not None:
            raw = col(spec.frac) / spec.frac_scale
            fail(
                ~((raw >= 0.0) & (raw <= 1.0)),
                f"column {spec.frac}: methylation "
                + (
                    "percentage outside [0, 100]"
                    if spec.frac_scale != 1.0
                    else "fraction outside [0, 1]"
                ),
            )
            if spec.cov is not None:  # fraction with depth (methylKit): counts from both
                cov = col(spec.cov)
                fail(cov < 0, f"column {spec.cov} (total count) is negative")
                mc = np.floor(raw * cov + 0.5).astype(np.int64)
            else:
                frac = raw.astype(np.float32)
                mc = np.floor(raw + 0.5).astype(np.int64)
                cov = np.ones(n, dtype=np.int64)
        else:
            state = col(spec.state)
            fail(~((state == 0.0) | (state == 1.0)), f"column {spec.state}: state must be 0 or 1")
            mc = state.astype(np.int64)
            cov = np.ones(n, dtype=np.int64)
            frac = None
        fail(cov > np.iinfo(np.int32).max, "count too large")

        # ---- coordinates (beyond any chromosome: refused before any arithmetic can overflow)
        start = col(spec.pos)
        fail(start > MAX_COORDINATE, f"column {spec.pos}: position beyond {MAX_COORDINATE}")
        start = start.astype(np.int64, copy=False)
        pooled_rows: np.ndarray | None = None
        if spec.base == 1:
            fail(start < 1, f"column {spec.pos}: position must be >= 1 in a 1-based file")
        else:
            fail(start < 0, f"column {spec.pos}: negative position")
        if spec.end is not None:
            end = col(spec.end)
            fail(end > MAX_COORDINATE, f"column {spec.end}: coordinate beyond {MAX_COORDINATE}")
            end = end.astype(np.int64, copy=False)
            fail(end < 0, f"column {spec.end}: negative end coordinate")
            length = end - start
            kind = spec.interval
            if kind == "point1":
                fail(length < 0, "inverted interval (end < start)")
                fail(
                    length != 0,
                    f"expected start == end for {plan.fmt} (1-based single-C rows), got "
                    "end - start = 1 (a .zero.cov or merged_CpG_evidence file? give --input-format)",
                )
                pos = start - 1
            elif kind == "c0":
                fail(length <= 0, "zero-length or inverted interval (end <= start)")
                fail(
                    length != 1, f"expected end == start + 1 for {plan.fmt} (0-based single-C rows)"
                )
                pos = start
            elif kind == "cpg1":
                fail(length <= 0, "zero-length or inverted interval (end <= start)")
                fail(length != 1, f"expected end == start + 1 (the C and its G) for {plan.fmt}")
                pos = start - 1
                pooled_rows = np.ones(n, dtype=bool)
            elif kind == "merged":
                fail(length <= 0, "zero-length or inverted interval (end <= start)")
                fail(
                    length > 2,
                    "expected end - start of 1 (1-based) or 2 (--zero_based) for merged CpG rows",
                )
                pos = np.where(length == 1, start - 1, start)
                fail(pos < 0, f"column {spec.pos}: position must be >= 1 in a 1-based file")
                pooled_rows = np.ones(n, dtype=bool)
            elif kind == "dackel":
                fail(length <= 0, "zero-length or inverted interval (end <= start)")
                fail(
                    length > 2,
                    "expected end - start of 1 (per C) or 2 (--mergeContext) for MethylDackel rows",
                )
                pos = start
                pooled_rows = length == 2
            else:  # pragma: no cover - programming error
                raise AssertionError(kind)
        else:
            pos = start - spec.base
        if spec.pooled:
            pooled_rows = np.ones(n, dtype=bool)

        # ---- strand
        if spec.strand is not None:
            strand = _category_map(
                df[spec.strand - 1],
                lambda s: _STRAND_WORDS.get(s.upper() if s in ("f", "r") else s),
                f"column {spec.strand} (strand)",
                line_nos,
                path,
            )
        elif pooled_rows is not None:
            strand = np.where(pooled_rows, 1, 0).astype(np.int8)
        else:
            strand = np.zeros(n, dtype=np.int8)
    except _RowError as exc:
        raise InputError(path, int(line_nos[exc.index]), exc.message) from None

    # ---- split by contig (and pooled/per-C kind) and yield
    chrom = df[spec.chrom - 1]
    names = [str(c) for c in chrom.cat.categories]
    codes = chrom.cat.codes.to_numpy().astype(np.int64)
    group = codes * 2 + (pooled_rows.astype(np.int64) if pooled_rows is not None else 0)
    if not keep.all():
        idx = np.flatnonzero(keep)
        group = group[idx]
    else:
        idx = None
    if len(group) == 0:
        return
    splits: list[tuple[int, np.ndarray | slice]]
    changes = np.flatnonzero(group[1:] != group[:-1])
    run_starts = np.concatenate([[0], changes + 1])
    run_groups = group[run_starts]
    if len(set(run_groups.tolist())) == len(run_groups):
        # each contig in one contiguous run (sorted input): slices, no sorting
        run_ends = np.append(run_starts[1:], len(group))
        splits = [
            (int(g), slice(int(a), int(b)) if idx is None else idx[a:b])
            for g, a, b in zip(run_groups, run_starts, run_ends)
        ]
    else:
        uniq, first_index = np.unique(group, return_index=True)
        order_groups = uniq[np.argsort(first_index)]
        order = np.argsort(group, kind="stable")
        sorted_groups = group[order]
        bounds = np.searchsorted(sorted_groups, order_groups, side="left")
        ends = np.searchsorted(sorted_groups, order_groups, side="right")
        base_idx = idx if idx is not None else np.arange(n)
        splits = [(int(g), base_idx[order[b:e]]) for g, b, e in zip(order_groups, bounds, ends)]
    for g, rows in splits:
        name = names[g // 2]
        chunk = CallChunk(
            chrom=name,
            pos=np.ascontiguousarray(pos[rows], dtype=np.int64),
            strand=np.ascontiguousarray(strand[rows], dtype=np.int8),
            mc=np.ascontiguousarray(mc[rows], dtype=np.int32),
            cov=np.ascontiguousarray(cov[rows], dtype=np.int32),
            line=np.ascontiguousarray(line_nos[rows], dtype=np.int64),
            pooled=bool(g % 2) or spec.pooled,
            frac=None if frac is None else np.ascontiguousarray(frac[rows], dtype=np.float32),
        )
        stats.contigs[name] = stats.contigs.get(name, 0) + len(chunk)
        stats.n_calls += len(chunk)
        yield chunk


_WS_EDGES = re.compile(rb"(?m)^[ \t]+|[ \t]+$")
_WS_INNER = re.compile(rb"[ \t]+")


def _drop_zero_coverage_lines(
    block: bytes, line_nos: np.ndarray, spec: ColumnSpec
) -> tuple[bytes, np.ndarray, int]:
    """Drop CpG-report lines with mc = unmeth = 0 before parsing (byte pattern, vectorised).

    Such a line contains ``<TAB>0<TAB>0<TAB>C`` (mc, unmeth, context): the pattern can only align
    there when the count columns are adjacent and followed by the context column.
    """
    if spec.unmeth != spec.meth + 1 or spec.context != spec.meth + 2:  # type: ignore[operator]
        return block, line_nos, 0
    arr = np.frombuffer(block, dtype=np.uint8)
    pattern = b"\t0\t0\tC"
    n = arr.size - len(pattern) + 1
    if n <= 0:
        return block, line_nos, 0
    hit = arr[:n] == pattern[0]
    for k in range(1, len(pattern)):
        hit &= arr[k : k + n] == pattern[k]
    where = np.flatnonzero(hit)
    if where.size == 0:
        return block, line_nos, 0
    ends = np.flatnonzero(arr == 10)
    drop = np.zeros(ends.size, dtype=bool)
    drop[np.searchsorted(ends, where)] = True
    n_drop = int(drop.sum())
    keep = ~drop
    if n_drop == ends.size:
        return b"", line_nos[:0], n_drop
    starts = np.empty_like(ends)
    starts[0] = 0
    starts[1:] = ends[:-1] + 1
    byte_keep = np.repeat(keep, ends - starts + 1)
    return arr[byte_keep].tobytes(), line_nos[keep], n_drop


def _normalise_whitespace(block: bytes) -> bytes:
    """Whitespace-separated text -> tab-separated (runs of blanks become one tab, edges trimmed)."""
    return _WS_INNER.sub(b"\t", _WS_EDGES.sub(b"", block))


def read_calls(
    path: str | os.PathLike[str],
    fmt: str | None = None,
    spec: ColumnSpec | None = None,
    chunk_rows: int = 1_000_000,
    stats: ReadStats | None = None,
) -> Iterator[CallChunk]:
    """Read one call file as :class:`CallChunk` objects (each on one contig, at most ``chunk_rows``).

    ``fmt`` is a key of :data:`FORMATS` (detected with :func:`detect_format` when None); ``spec``
    describes a custom layout (implies ``fmt="tsv"``). Gzip is recognised by its magic bytes. Leading
    ``track``/``browser``/``#`` lines, blank lines and a header line (position field not an integer)
    are skipped. Pass a :class:`ReadStats` to receive counters (skipped contexts, zero-coverage rows).

    Raises :class:`InputError` naming the file and 1-based line for malformed content, and
    ``"no calls"`` when the file holds no usable row.
    """
    p = Path(path)
    if chunk_rows < 1:
        raise UsageError("chunk_rows must be >= 1")
    _check_path(p)
    _check_rejected(p)
    if spec is None and fmt is None:
        found = detect(p)  # (refuses binary files itself)
        fmt, spec = found.format, found.spec
    else:
        if spec is not None:
            if fmt not in (None, "tsv"):
                raise UsageError(f"a column spec is used with the tsv format, not {fmt!r}")
            fmt = "tsv"
        binary = _binary_content(p)
        if binary is not None:
            raise InputError(p, None, f"not a text call table: {binary}")
    if fmt not in FORMATS:
        raise UsageError(f"unknown input format {fmt!r} (known: {', '.join(FORMATS)})")
    if spec is None:
        spec = FORMATS[fmt].spec
        if spec is None:
            raise UsageError("the tsv format needs a column spec (--columns)")
    if stats is None:
        stats = ReadStats()
    stats.format = fmt if fmt != "tsv" else f"tsv {spec_text(spec)}"
    stats.counts_available = spec.counts_available
    return _read_calls(p, fmt, spec, chunk_rows, stats)


def _read_calls(
    path: Path, fmt: str, spec: ColumnSpec, chunk_rows: int, stats: ReadStats
) -> Iterator[CallChunk]:
    plan = _plan(path, fmt, spec)
    in_prefix = True
    block_bytes = int(min(_BLOCK_BYTES, max(1 << 16, chunk_rows * 48)))
    for first_line, block, n_lines in _iter_blocks(path, block_bytes):
        stats.n_lines += n_lines
        if in_prefix:
            # drop leading comment/track lines and the header line by byte offset
            in_prefix = False
            offset = 0
            while offset < len(block):
                stop = block.index(b"\n", offset) + 1
                raw = block[offset:stop]
                if first_line == plan.header_line:
                    stats.header = raw.decode("utf-8", errors="replace").strip()
                elif not _is_comment(raw):
                    break
                stats.n_skipped_lines += 1
                first_line += 1
                n_lines -= 1
                offset = stop
            block = block[offset:]
            if not block:
                continue
        line_nos = np.arange(first_line, first_line + n_lines, dtype=np.int64)
        if plan.sep == " ":
            block = _normalise_whitespace(block)
        if spec.fused:
            block = _split_fused(block)
        if spec.skip_zero_coverage and plan.sep != "," and spec.meth is not None:
            block, line_nos, n_zero = _drop_zero_coverage_lines(block, line_nos, spec)
            stats.n_skipped_zero += n_zero
            stats.n_rows += n_zero
            if not len(line_nos):
                continue
        try:
            df = _parse_block(path, plan, block, line_nos, None, strict=False)
        except _SlowPath:
            lines = block.split(b"\n")[:-1]
            kept = [i for i, raw in enumerate(lines) if not _is_comment(raw)]
            stats.n_skipped_lines += len(lines) - len(kept)
            if not kept:
                continue
            if len(kept) < len(lines):
                lines = [lines[i] for i in kept]
                line_nos = line_nos[np.asarray(kept, dtype=np.int64)]
                block = b"\n".join(lines) + b"\n"
            df = _parse_block(path, plan, block, line_nos, lines, strict=True)
        stats.n_rows += len(df)
        for chunk in _convert(path, plan, df, line_nos, stats):
            if len(chunk) <= chunk_rows:
                yield chunk
            else:
                for lo in range(0, len(chunk), chunk_rows):
                    hi = lo + chunk_rows
                    yield replace(
                        chunk,
                        pos=chunk.pos[lo:hi],
                        strand=chunk.strand[lo:hi],
                        mc=chunk.mc[lo:hi],
                        cov=chunk.cov[lo:hi],
                        line=chunk.line[lo:hi],
                        frac=None if chunk.frac is None else chunk.frac[lo:hi],
                    )
    if stats.n_rows == 0:
        raise NoCallsError(path, None, "no calls (empty file or only header/comment lines)")
    if stats.n_calls == 0:
        reasons = []
        if stats.n_skipped_context:
            reasons.append(f"{stats.n_skipped_context} non-CG context rows")
        if stats.n_skipped_zero:
            reasons.append(f"{stats.n_skipped_zero} zero-coverage rows")
        raise NoCallsError(path, None, "no calls (skipped " + ", ".join(reasons) + ")")
    log.debug(
        "%s: %d rows, %d calls, %d non-CG skipped, %d zero-coverage skipped",
        path,
        stats.n_rows,
        stats.n_calls,
        stats.n_skipped_context,
        stats.n_skipped_zero,
    )
