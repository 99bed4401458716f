"""The sites file (which predictions to explain) and the receptive-field windows around them."""

from __future__ import annotations

import logging
import math
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cpgformer.codes import MISSING
from cpgformer.errors import InputError, UsageError

log = logging.getLogger(__name__)

LABEL_KEEP = None
"""``label_change`` value meaning: leave the target's input as stored."""

_MASK_TOKENS = {"-1", "mask", "masked", "?", "unknown"}
_KEEP_TOKENS = {"none", "na", ".", "keep", ""}


@dataclass(frozen=True)
class SiteQuery:
    """One prediction to explain: cell ``cell`` at site ``(chrom, position)``.

    ``position`` is the 0-based coordinate of the + strand C (as in the store). ``label_change`` is
    applied to the target's own input before explaining: ``None`` keeps the stored call, ``-1``
    masks it (the model then predicts it from the context only, as in training and the benchmark),
    ``0``/``1`` set it unmethylated/methylated (a fraction in [0, 1] for continuous models).
    """

    chrom: str
    position: int
    cell: str
    label_change: float | None = LABEL_KEEP
    line: int | None = None
    source: str | None = None  # the sites file (for error messages)

    def error(self, message: str) -> Exception:
        """An :class:`InputError` naming the sites file and line (``UsageError`` without a file)."""
        if self.source is not None:
            return InputError(self.source, self.line, message)
        return UsageError(f"{self.chrom}:{self.position} cell {self.cell}: {message}")

    @property
    def label_change_text(self) -> str:
        if self.label_change is None:
            return "none"
        if self.label_change == MISSING:
            return "mask"
        return f"{self.label_change:g}"


def _parse_label_change(token: str) -> float | None:
    low = token.strip().lower()
    if low in _KEEP_TOKENS:
        return LABEL_KEEP
    if low in _MASK_TOKENS:
        return float(MISSING)
    value = float(low)  # ValueError handled by the caller
    if not math.isfinite(value) or not 0.0 <= value <= 1.0:
        raise ValueError(low)
    return value


def read_sites(path: str | os.PathLike[str]) -> list[SiteQuery]:
    """Read a sites file: one row ``chrom position cell [label_change]`` per prediction to explain.

    Columns are separated by tabs, spaces or commas. ``position`` is 0-based (the + strand C, as in
    the store). ``cell`` is a cell name (or a 0-based cell index when no cell has that name, resolved
    later). ``label_change``: ``mask`` / ``-1`` / ``?`` (hide the target's own call), ``0`` / ``1``
    (or a fraction) to set it, ``none`` / ``.`` / absent to keep it. Blank lines and ``#`` lines
    are skipped; a first line whose position field is not an integer is a header.
    """
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise InputError(p, None, "not a text file (binary or compressed content)") from None
    except OSError as exc:
        raise InputError(p, None, f"cannot read sites file: {exc.strerror or exc}") from None
    queries: list[SiteQuery] = []
    first_data_line = True
    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        fields = [f for f in re.split(r"[,\s]+", line) if f != ""]
        if first_data_line:
            first_data_line = False
            if len(fields) >= 2 and not re.fullmatch(r"[+-]?\d+", fields[1]):
                log.info("%s:%d: header line skipped", p, lineno)
                continue
        if len(fields) not in (3, 4):
            raise InputError(
                p,
                lineno,
                f"expected 3 or 4 columns (chrom position cell [label_change]), got {len(fields)}",
            )
        chrom, pos_text, cell = fields[:3]
        try:
            position = int(pos_text)
        except ValueError:
            raise InputError(
                p, lineno, f"position {pos_text!r} is not an integer (0-based + strand C)"
            ) from None
        if position < 0:
            raise InputError(p, lineno, f"position {position} is negative (0-based coordinates)")
        if position > 1 << 40:
            raise InputError(p, lineno, f"position {position} is beyond any chromosome")
        change: float | None = LABEL_KEEP
        if len(fields) == 4:
            try:
                change = _parse_label_change(fields[3])
            except ValueError:
                raise InputError(
                    p,
                    lineno,
                    f"label change {fields[3]!r} is not one of mask/-1, 0, 1, a fraction in [0, 1] "
                    "or none",
                ) from None
        queries.append(SiteQuery(chrom, position, cell, change, lineno, str(p)))
    if not queries:
        raise InputError(p, None, "no sites to explain (expected rows: chrom position cell)")
    return queries


# --------------------------------------------------------------------------------------------------
# Receptive-field windows
# --------------------------------------------------------------------------------------------------


def site_window(n_sites: int, row: int, radius: int) -> tuple[int, int]:
    """Rows ``[start, stop)`` of the receptive field of ``row``: ``radius`` rows each side, cut at
    the chromosome's first and last site (never wrapped)."""
    if not 0 <= row < n_sites:
        raise IndexError(f"row {row} out of range for {n_sites} sites")
    return max(0, row - radius), min(n_sites, row + radius + 1)


def dna_windows(reference: Any, chrom: str, positions: np.ndarray, width: int) -> np.ndarray:
    """int8 nucleotide codes ``[len(positions), width]`` centred on each C, N-padded past the
    chromosome's ends (never wrapped), via ``reference.windows`` (:class:`cpgformer.io.fasta.Reference`).
    """
    windows = np.asarray(reference.windows(chrom, np.asarray(positions, dtype=np.int64), width))
    if windows.shape != (len(positions), width):
        raise UsageError(
            f"reference returned DNA windows of shape {windows.shape}, expected "
            f"{(len(positions), width)}"
        )
    return windows.astype(np.int8, copy=False)


def resolve_cell(query: SiteQuery, cells: Sequence[str]) -> int:
    if query.cell in cells:
        return list(cells).index(query.cell)
    if re.fullmatch(r"\d+", query.cell) and int(query.cell) < len(cells):
        return int(query.cell)
    raise query.error(f"cell {query.cell!r} is not in the store (names or 0-based indices)")


def site_row(query: SiteQuery, dataset: Any) -> int:
    if query.chrom not in dataset.chromosomes:
        raise query.error(f"chromosome {query.chrom!r} is not in the store")
    positions = dataset.positions(query.chrom)
    row = int(np.searchsorted(positions, query.position))
    if row >= len(positions) or int(positions[row]) != query.position:
        near = [int(positions[i]) for i in (row - 1, row) if 0 <= i < len(positions)]
        hint = f" (nearest: {', '.join(map(str, near))})" if near else ""
        raise query.error(
            f"{query.chrom}:{query.position} is not a site of the store (0-based + strand C){hint}"
        )
    return row
