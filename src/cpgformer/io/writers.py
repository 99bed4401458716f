"""File writers for exported methylation: per-cell bedGraph and ALLC-like files, BED regions.

Coordinates: the package's sites are 0-based + strand C positions (``start``). bedGraph rows are
0-based half-open ``[start, start + 2)`` (the CpG; ``interval="c"``: ``[start, start + 1)``); ALLC
rows are 1-based ``pos = start + 1``. Every file is written under a ``.partial-`` name and renamed
into place when complete (the ``.tbi`` index of an ALLC file first, then the data file).
"""

from __future__ import annotations

import contextlib
import gzip
import io
import os
import re
import tempfile
from pathlib import Path
from typing import IO, Any

import numpy as np
import pandas as pd

from cpgformer.errors import InputError, UsageError
from cpgformer.io.readers import MAX_COORDINATE
from cpgformer.utils.atomic import PARTIAL_PREFIX, default_file_mode

_UNSAFE = re.compile(r"[^A-Za-z0-9._+-]")


def safe_file_name(name: str) -> str:
    """A cell name as a file-name part: characters other than ``A-Za-z0-9._+-`` become ``_``."""
    safe = _UNSAFE.sub("_", name)
    return safe if safe not in ("", ".", "..") else f"_{safe}_"


def cell_file_names(cells: list[str], suffix: str) -> list[str]:
    """Unique per-cell file names ``<safe cell name><suffix>`` (a counter resolves collisions)."""
    names, seen = [], set()
    for cell in cells:
        base = safe_file_name(cell)
        name, k = base + suffix, 1
        while name in seen:
            k += 1
            name = f"{base}.{k}{suffix}"
        seen.add(name)
        names.append(name)
    return names


def _temp_name(target: Path) -> Path:
    fd, tmp = tempfile.mkstemp(
        prefix=PARTIAL_PREFIX + target.name.split(".")[0] + "-",
        suffix="".join(target.suffixes) or ".tmp",
        dir=target.parent,
    )
    os.close(fd)
    os.chmod(tmp, default_file_mode())  # mkstemp makes 0600; exported files follow the umask
    return Path(tmp)


def _format_rows(columns: list[Any], float_format: str | None = None) -> str:
    """Tab-separated text of equally long columns (strings repeated when scalar)."""
    n = max(len(c) for c in columns if not isinstance(c, str))
    frame = pd.DataFrame(
        {
            i: (np.full(n, c, dtype=object) if isinstance(c, str) else c)
            for i, c in enumerate(columns)
        }
    )
    buf = io.StringIO()
    frame.to_csv(
        buf, sep="\t", header=False, index=False, float_format=float_format, lineterminator="\n"
    )
    return buf.getvalue()


class BedGraphWriter:
    """One gzipped bedGraph file: a track line, then ``chrom start end value`` rows.

    ``write(chrom, starts, values)`` appends rows (call in contig order, positions sorted); rows with
    NaN values are skipped. ``close()`` renames the finished file into place; ``abort()`` removes it.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        track_name: str,
        description: str,
        *,
        percent: bool = False,
        interval: str = "cpg",
        compresslevel: int = 6,
    ) -> None:
        if interval not in ("cpg", "c"):
            raise UsageError(f"interval must be 'cpg' or 'c', got {interval!r}")
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.width = 2 if interval == "cpg" else 1
        self.percent = percent
        self._tmp = _temp_name(self.path)
        self._fh: IO[str] = gzip.open(self._tmp, "wt", compresslevel=compresslevel)  # noqa: SIM115
        name = track_name.replace('"', "'")
        desc = description.replace('"', "'")
        self._fh.write(f'track type=bedGraph name="{name}" description="{desc}"\n')

    def write(self, chrom: str, starts: np.ndarray, values: np.ndarray) -> None:
        values = np.asarray(values, dtype=np.float64)
        keep = ~np.isnan(values)
        if not keep.any():
            return
        starts = np.asarray(starts, dtype=np.int64)[keep]
        values = values[keep] * (100.0 if self.percent else 1.0)
        fmt = "%.2f" if self.percent else "%.4f"
        self._fh.write(_format_rows([chrom, starts, starts + self.width, values], fmt))

    def close(self) -> Path:
        self._fh.close()
        os.replace(self._tmp, self.path)
        return self.path

    def abort(self) -> None:
        with contextlib.suppress(Exception):
            self._fh.close()
        with contextlib.suppress(FileNotFoundError):
            self._tmp.unlink()


class AllcWriter:
    """One ALLC-like file (7 columns, no header), BGZF-compressed and tabix-indexed via pysam.

    Columns: chrom, pos (1-based C), strand ``+``, context, mc, cov, methylated flag. Tabix index:
    sequence column 1, begin = end = column 2 (1-based).
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        import pysam

        self.path = Path(path)
        if not self.path.name.endswith(".gz"):
            raise UsageError(f"{self.path}: ALLC output names must end in .gz")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._tmp = _temp_name(self.path)
        self._fh = pysam.BGZFile(str(self._tmp), "wb")

    def write(
        self,
        chrom: str,
        starts: np.ndarray,
        contexts: np.ndarray | str,
        mc: np.ndarray,
        cov: np.ndarray,
        flag: np.ndarray,
    ) -> None:
        starts = np.asarray(starts, dtype=np.int64)
        if starts.size == 0:
            return
        text = _format_rows(
            [chrom, starts + 1, "+", contexts, np.asarray(mc), np.asarray(cov), np.asarray(flag)]
        )
        self._fh.write(text.encode())

    def close(self) -> Path:
        import pysam

        self._fh.close()
        pysam.tabix_index(
            str(self._tmp), seq_col=0, start_col=1, end_col=1, zerobased=False, force=True
        )
        os.replace(str(self._tmp) + ".tbi", str(self.path) + ".tbi")
        os.replace(self._tmp, self.path)
        return self.path

    def abort(self) -> None:
        with contextlib.suppress(Exception):
            self._fh.close()
        for p in (self._tmp, Path(str(self._tmp) + ".tbi")):
            with contextlib.suppress(FileNotFoundError):
                p.unlink()


def read_bed_regions(path: str | os.PathLike[str]) -> pd.DataFrame:
    """Regions of a BED file (0-based half-open; optional 4th column = name; ``.gz`` allowed).

    Returns a DataFrame with ``chrom`` (str), ``start``, ``end`` (int64), ``name`` (str; the
    ``chrom:start-end`` label with a 1-based start when the file has no name column) and ``strand`` (column 6, else
    ``.``). ``track``/``browser``/``#`` lines
    are skipped; malformed lines raise :class:`InputError` naming the line.
    """
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            opener = gzip.open if fh.read(2) == b"\x1f\x8b" else open  # by content, not name
    except OSError as exc:
        raise InputError(path, None, f"cannot read BED file: {exc.strerror or exc}") from None
    chroms, starts, ends, names, strands = [], [], [], [], []
    try:
        with opener(path, "rt") as fh:
            for lineno, line in enumerate(fh, start=1):
                if not line.strip() or line.startswith(("#", "track", "browser")):
                    continue
                fields = line.rstrip("\n\r").split("\t")
                if len(fields) < 3:
                    fields = line.split()
                if len(fields) < 3:
                    raise InputError(path, lineno, f"expected >= 3 BED columns, got {len(fields)}")
                try:
                    start, end = int(fields[1]), int(fields[2])
                except ValueError:
                    raise InputError(
                        path,
                        lineno,
                        f"BED start/end must be integers, got {fields[1]!r}, {fields[2]!r}",
                    ) from None
                if start < 0 or end < start or end > MAX_COORDINATE:
                    raise InputError(path, lineno, f"invalid interval [{start}, {end})")
                chroms.append(fields[0])
                starts.append(start)
                ends.append(end)
                names.append(
                    fields[3]
                    if len(fields) > 3 and fields[3]
                    else f"{fields[0]}:{start + 1}-{end}"  # 1-based, as browsers read it
                )
                strands.append(fields[5] if len(fields) > 5 else ".")
    except UnicodeDecodeError:
        raise InputError(path, None, "not a text BED file (binary content)") from None
    except (OSError, EOFError) as exc:  # truncated or damaged gzip included
        raise InputError(path, None, f"cannot read BED file: {exc}") from None
    return pd.DataFrame(
        {
            "chrom": pd.Series(chroms, dtype=str),
            "start": np.asarray(starts, dtype=np.int64),
            "end": np.asarray(ends, dtype=np.int64),
            "name": pd.Series(names, dtype=str),
            "strand": pd.Series(strands, dtype=str),
        }
    )
