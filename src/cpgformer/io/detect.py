"""Format detection: which layout a call file has, from its content and name."""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from cpgformer.errors import InputError, NoCallsError, UsageError
from cpgformer.io.formats import FORMATS, REJECTED_SUFFIXES, ColumnSpec, sep_name
from cpgformer.io.textfiles import (
    check_path,
    head_lines,
    is_comment,
    is_int,
    open_binary,
    read_some,
)

log = logging.getLogger("cpgformer.io.readers")  # one name for all reader messages

# --------------------------------------------------------------------------------------------------
# Format detection
# --------------------------------------------------------------------------------------------------


def check_rejected(path: Path) -> None:
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
    while i < len(lines) and is_comment(lines[i]):
        skipped.append(lines[i])
        i += 1
    data = [line for line in lines[i:] if line.strip() and not is_comment(line)]
    return skipped, data


def sniff_sep(line: str) -> str:
    """The field separator of a data line: tab, else comma, else semicolon, else whitespace."""
    if "\t" in line:
        return "\t"
    if "," in line:
        return ","
    if ";" in line:
        return ";"
    return " "


def fields_of(line: str, sep: str | None = None) -> list[str]:
    sep = sep or sniff_sep(line)
    if sep in (",", ";"):
        return [part.strip() for part in line.split(sep)]
    parts = line.split("\t")
    if len(parts) == 1 or any(p != p.strip() for p in parts):
        parts = line.split()
    return parts


FUSED = re.compile(r"^(.+)_(\d+)$")
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


def binary_content(path: Path) -> str | None:
    """What a binary file is (zip/npz, npy, BAM, HDF5, other), or None for text."""
    handle = open_binary(path, raw_block=1 << 12)
    try:
        head = read_some(handle, path, 4096)
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
    check_path(p)
    check_rejected(p)
    binary = binary_content(p)
    if binary is not None:
        raise InputError(p, None, f"not a text call table: {binary}")
    name = p.name.lower()
    lines = head_lines(p)
    skipped, data = _data_lines(lines)
    track = " ".join(s for s in skipped if s.strip().startswith("track")).lower()
    methylkit_header = bool(data) and data[0].strip().lower().startswith("chrbase")
    sep = sniff_sep(data[0]) if data else "\t"
    header_fields: list[str] | None = None
    if data:
        first = fields_of(data[0], sep)
        if not is_int(first[1] if len(first) > 1 else "") and not FUSED.match(first[0]):
            header_fields = first
            data = data[1:]  # header line (legacy ALLC and friends)
    if not data:
        raise NoCallsError(p, None, "no calls (empty file or only header/comment lines)")
    if header_fields is None and skipped and skipped[-1].lstrip().startswith("#"):
        candidate = fields_of(skipped[-1].lstrip()[1:], sep)
        if len(candidate) == len(fields_of(data[0], sep)):
            header_fields = candidate  # a '#chrom pos ...' header
    rows = [fields_of(line, sep) for line in data]
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
            if ncols == 7 and {r[5] if len(r) > 5 else "" for r in rows} <= {"CG", "CHG", "CHH"}:
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
        why += f", {sep_name(sep)}-separated"
    if fmt is None:
        suggestion = _suggest_spec(rows, sep, header_fields is not None)
        shown = data[0] if len(data[0]) <= 80 else data[0][:77] + "..."
        raise InputError(
            p,
            None,
            f"cannot detect the input format ({ncols} {sep_name(sep)}-separated columns; first "
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
    if ncols == 2 and all(FUSED.match(r[0]) for r in rows):
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
