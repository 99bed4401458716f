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

import io
import logging
import math
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd

from cpgformer.errors import InputError, NoCallsError, UsageError
from cpgformer.io.columns import convert_block, first_true
from cpgformer.io.detect import (
    FUSED,
    binary_content,
    check_rejected,
    detect,
    detect_format,
    fields_of,
    sniff_sep,
    spec_text,
)
from cpgformer.io.formats import (
    FORMATS,
    MAX_COORDINATE,
    ColumnSpec,
    FormatInfo,
    parse_column_spec,
    sep_name,
)
from cpgformer.io.records import CallChunk, ReadStats
from cpgformer.io.textfiles import (
    BLOCK_BYTES,
    check_path,
    head_lines,
    is_comment,
    is_gzip,
    is_int,
    iter_blocks,
    split_line,
)

log = logging.getLogger(__name__)

__all__ = [  # the reader's public names, wherever they are defined
    "FORMATS",
    "MAX_COORDINATE",
    "ColumnSpec",
    "FormatInfo",
    "ReadStats",
    "detect",
    "detect_format",
    "is_gzip",
    "parse_column_spec",
    "read_calls",
    "spec_text",
]

# --------------------------------------------------------------------------------------------------
# Parsing
# --------------------------------------------------------------------------------------------------


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


def _plan(path: Path, fmt: str, spec: ColumnSpec) -> _Plan:
    lines = head_lines(path, 64)
    data = [(i + 1, line) for i, line in enumerate(lines) if not is_comment(line)]
    if not data:
        raise NoCallsError(path, None, "no calls (empty file or only header/comment lines)")
    line_no, first = data[0]
    header_line = None
    sep = spec.sep
    if sep == "\t" and "\t" not in first:
        sep = sniff_sep(first)  # built-in layouts also come comma- or semicolon-separated
    if spec.fused:
        first = _fuse_line(first)
    parts = fields_of(first, sep)
    pos_field = parts[spec.pos - 1] if len(parts) >= spec.pos else ""
    if not is_int(pos_field.strip()):
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
    parts = split_line(first, sep)
    ncols = len(parts)
    allowed = spec.n_columns
    if allowed is not None and ncols not in allowed:
        want = " or ".join(str(n - int(spec.fused)) for n in allowed)
        raise InputError(
            path,
            line_no,
            f"expected {want} {sep_name(sep)}-separated columns for {fmt}, "
            f"got {ncols - int(spec.fused)}",
        )
    if ncols < spec.max_column:
        raise InputError(
            path,
            line_no,
            f"expected at least {spec.max_column} {sep_name(sep)}-separated columns for {fmt}, "
            f"got {ncols}",
        )
    if sep != "\t":
        log.debug("%s: fields separated by %s", path, sep_name(sep))
    return _Plan(fmt, spec, sep, ncols, header_line)


_HEADER_WARNED = False


def _header_warned() -> None:
    global _HEADER_WARNED
    _HEADER_WARNED = True


_FUSE_BYTES = re.compile(rb"(?m)^([^\t\n]*?)_(\d+)(?=[\t\n])")


def _fuse_line(line: str) -> str:
    """``chr1_3014555<TAB>1`` -> ``chr1<TAB>3014555<TAB>1`` (the scAge fused column split)."""
    head, sep_, rest = line.partition("\t")
    match = FUSED.match(head)
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
        parts = split_line(text, plan.sep)
        if plan.spec.fused and len(parts) != want:
            return InputError(
                path,
                line_no,
                f"expected {want - 1} {sep_name(plan.sep)}-separated columns for {plan.fmt}, "
                f"the first a fused chrom_pos like chr1_3014555 (got {text.strip()[:60]!r})",
            )
        if len(parts) != want:
            return InputError(
                path,
                line_no,
                f"expected {want} {sep_name(plan.sep)}-separated columns for {plan.fmt}, "
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
    if not strict and any(is_comment(c) for c in categories):
        raise _SlowPath()
    if "" in categories:
        bad = chrom.astype(str).to_numpy() == ""
        raise InputError(
            path, int(line_nos[first_true(bad)]), f"column {spec.chrom} (chrom) is empty"
        )
    return df


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
    check_path(p)
    check_rejected(p)
    if spec is None and fmt is None:
        found = detect(p)  # (refuses binary files itself)
        fmt, spec = found.format, found.spec
    else:
        if spec is not None:
            if fmt not in (None, "tsv"):
                raise UsageError(f"a column spec is used with the tsv format, not {fmt!r}")
            fmt = "tsv"
        binary = binary_content(p)
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
    block_bytes = int(min(BLOCK_BYTES, max(1 << 16, chunk_rows * 48)))
    for first_line, block, n_lines in iter_blocks(path, block_bytes):
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
                elif not is_comment(raw):
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
            kept = [i for i, raw in enumerate(lines) if not is_comment(raw)]
            stats.n_skipped_lines += len(lines) - len(kept)
            if not kept:
                continue
            if len(kept) < len(lines):
                lines = [lines[i] for i in kept]
                line_nos = line_nos[np.asarray(kept, dtype=np.int64)]
                block = b"\n".join(lines) + b"\n"
            df = _parse_block(path, plan, block, line_nos, lines, strict=True)
        stats.n_rows += len(df)
        for chunk in convert_block(path, plan.spec, plan.fmt, df, line_nos, stats):
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
