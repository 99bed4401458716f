"""Columns of one parsed block of a call file -> validated :class:`CallChunk` objects.

Each step reads the columns the layout (:class:`~cpgformer.io.formats.ColumnSpec`) names, refuses
impossible values with the 1-based line of the first offending row, and converts coordinates to
the 0-based position of the C each row describes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pandas as pd

from cpgformer.errors import InputError
from cpgformer.io.formats import MAX_COORDINATE, ColumnSpec
from cpgformer.io.records import CallChunk, ReadStats

STRAND_WORDS = {"+": 1, "-": -1, "F": 1, "R": -1, "1": 1, "+1": 1, "-1": -1, ".": 0, "*": 0}


class RowError(Exception):
    """A refused row: its index in the block and the message."""

    def __init__(self, index: int, message: str) -> None:
        super().__init__(message)
        self.index = index
        self.message = message


def first_true(mask: np.ndarray) -> int:
    return int(np.flatnonzero(mask)[0])


def _fail(mask: np.ndarray, message: str) -> None:
    if mask.any():
        raise RowError(first_true(mask), message)


def category_map(
    series: pd.Series,
    mapper: Callable[[str], int | None],
    what: str,
    line_nos: np.ndarray,
    path: Path,
) -> np.ndarray:
    """int8 codes of a categorical column through ``mapper`` (None: an unexpected value)."""
    cats = [str(c).strip() for c in series.cat.categories]
    values = [mapper(c) for c in cats]
    codes = series.cat.codes.to_numpy()
    for i, v in enumerate(values):
        if v is None:
            row = first_true(codes == i)
            raise InputError(path, int(line_nos[row]), f"{what}: unexpected value {cats[i]!r}")
    table = np.asarray(values, dtype=np.int8)
    return table[codes]


class _Block:
    """The parsed columns of one block (1-based column numbers as in the spec)."""

    def __init__(self, df: pd.DataFrame, spec: ColumnSpec, fmt: str) -> None:
        self.df, self.spec, self.fmt, self.n = df, spec, fmt, len(df)

    def col(self, c: int | None) -> np.ndarray:
        assert c is not None
        return self.df[c - 1].to_numpy()

    def cg_context(self, stats: ReadStats) -> np.ndarray:
        """Rows whose context starts with CG (all rows when the layout has no context)."""
        if self.spec.context is None:
            return np.ones(self.n, dtype=bool)
        ctx = self.df[self.spec.context - 1]
        is_cg = np.asarray([str(c).upper().startswith("CG") for c in ctx.cat.categories], bool)
        codes = ctx.cat.codes.to_numpy()
        cg = is_cg[codes] if len(is_cg) else np.zeros(self.n, dtype=bool)
        stats.n_skipped_context += int(self.n - cg.sum())
        return cg

    def counts(
        self, keep: np.ndarray, stats: ReadStats
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray]:
        """(mc, cov, fraction or None, rows kept) from counts, fractions or states."""
        spec = self.spec
        if spec.meth is not None:
            mc, cov = self._read_counts()
            if spec.skip_zero_coverage:
                stats.n_skipped_zero += int((keep & (cov == 0)).sum())
                keep = keep & (cov > 0)
            frac = None
        elif spec.frac is not None:
            mc, cov, frac = self._read_fractions()
        else:
            state = self.col(spec.state)
            _fail(~((state == 0.0) | (state == 1.0)), f"column {spec.state}: state must be 0 or 1")
            mc, cov, frac = state.astype(np.int64), np.ones(self.n, dtype=np.int64), None
        _fail(cov > np.iinfo(np.int32).max, "count too large")
        return mc, cov, frac, keep

    def _read_counts(self) -> tuple[np.ndarray, np.ndarray]:
        spec = self.spec
        mc = self.col(spec.meth)
        _fail(mc < 0, f"column {spec.meth} (methylated count) is negative")
        if spec.unmeth is not None:
            other = self.col(spec.unmeth)
            _fail(other < 0, f"column {spec.unmeth} (unmethylated count) is negative")
            return mc, mc + other
        cov = self.col(spec.cov)
        _fail(cov < 0, f"column {spec.cov} (total count) is negative")
        _fail(mc > cov, f"methylated count (column {spec.meth}) exceeds total (column {spec.cov})")
        return mc, cov

    def _read_fractions(self) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        spec = self.spec
        raw = self.col(spec.frac) / spec.frac_scale
        what = (
            "percentage outside [0, 100]" if spec.frac_scale != 1.0 else "fraction outside [0, 1]"
        )
        _fail(~((raw >= 0.0) & (raw <= 1.0)), f"column {spec.frac}: methylation {what}")
        if spec.cov is not None:  # fraction with depth (methylKit): counts from both
            cov = self.col(spec.cov)
            _fail(cov < 0, f"column {spec.cov} (total count) is negative")
            return np.floor(raw * cov + 0.5).astype(np.int64), cov, None
        mc = np.floor(raw + 0.5).astype(np.int64)
        return mc, np.ones(self.n, dtype=np.int64), raw.astype(np.float32)

    def positions(self) -> tuple[np.ndarray, np.ndarray | None]:
        """(0-based C position, rows that are pooled CpGs or None) of every row; coordinates
        beyond any chromosome are refused before any arithmetic can overflow."""
        spec = self.spec
        start = self.col(spec.pos)
        _fail(start > MAX_COORDINATE, f"column {spec.pos}: position beyond {MAX_COORDINATE}")
        start = start.astype(np.int64, copy=False)
        if spec.base == 1:
            _fail(start < 1, f"column {spec.pos}: position must be >= 1 in a 1-based file")
        else:
            _fail(start < 0, f"column {spec.pos}: negative position")
        pooled_rows: np.ndarray | None = None
        if spec.end is not None:
            end = self.col(spec.end)
            _fail(end > MAX_COORDINATE, f"column {spec.end}: coordinate beyond {MAX_COORDINATE}")
            end = end.astype(np.int64, copy=False)
            _fail(end < 0, f"column {spec.end}: negative end coordinate")
            pos, pooled_rows = self._interval(start, end - start)
        else:
            pos = start - spec.base
        if spec.pooled:
            pooled_rows = np.ones(self.n, dtype=bool)
        return pos, pooled_rows

    def _interval(
        self, start: np.ndarray, length: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """Position and pooled rows of interval layouts (``spec.interval``)."""
        kind, fmt, every = self.spec.interval, self.fmt, np.ones(self.n, dtype=bool)
        if kind == "point1":
            _fail(length < 0, "inverted interval (end < start)")
            _fail(
                length != 0,
                f"expected start == end for {fmt} (1-based single-C rows), got "
                "end - start = 1 (a .zero.cov or merged_CpG_evidence file? give --input-format)",
            )
            return start - 1, None
        _fail(length <= 0, "zero-length or inverted interval (end <= start)")
        if kind == "c0":
            _fail(length != 1, f"expected end == start + 1 for {fmt} (0-based single-C rows)")
            return start, None
        if kind == "cpg1":
            _fail(length != 1, f"expected end == start + 1 (the C and its G) for {fmt}")
            return start - 1, every
        if kind == "merged":
            _fail(
                length > 2,
                "expected end - start of 1 (1-based) or 2 (--zero_based) for merged CpG rows",
            )
            pos = np.where(length == 1, start - 1, start)
            _fail(pos < 0, f"column {self.spec.pos}: position must be >= 1 in a 1-based file")
            return pos, every
        if kind == "dackel":
            _fail(
                length > 2,
                "expected end - start of 1 (per C) or 2 (--mergeContext) for MethylDackel rows",
            )
            return start, length == 2
        raise AssertionError(kind)  # pragma: no cover - programming error

    def strands(
        self, pooled_rows: np.ndarray | None, line_nos: np.ndarray, path: Path
    ) -> np.ndarray:
        """int8 strand of every row: the strand column, else +1 for pooled rows, else 0."""
        spec = self.spec
        if spec.strand is not None:
            return category_map(
                self.df[spec.strand - 1],
                lambda s: STRAND_WORDS.get(s.upper() if s in ("f", "r") else s),
                f"column {spec.strand} (strand)",
                line_nos,
                path,
            )
        if pooled_rows is not None:
            return np.where(pooled_rows, 1, 0).astype(np.int8)
        return np.zeros(self.n, dtype=np.int8)


def _groups(group: np.ndarray, keep: np.ndarray, n: int) -> list[tuple[int, np.ndarray | slice]]:
    """(group, rows) of the kept rows per group (contig x pooled), in order of first appearance."""
    idx = None if keep.all() else np.flatnonzero(keep)
    if idx is not None:
        group = group[idx]
    if len(group) == 0:
        return []
    changes = np.flatnonzero(group[1:] != group[:-1])
    run_starts = np.concatenate([[0], changes + 1])
    run_groups = group[run_starts]
    if len(set(run_groups.tolist())) == len(run_groups):
        # each contig in one contiguous run (sorted input): slices, no sorting
        run_ends = np.append(run_starts[1:], len(group))
        return [
            (int(g), slice(int(a), int(b)) if idx is None else idx[a:b])
            for g, a, b in zip(run_groups, run_starts, run_ends)
        ]
    uniq, first_index = np.unique(group, return_index=True)
    order_groups = uniq[np.argsort(first_index)]
    order = np.argsort(group, kind="stable")
    sorted_groups = group[order]
    bounds = np.searchsorted(sorted_groups, order_groups, side="left")
    ends = np.searchsorted(sorted_groups, order_groups, side="right")
    base_idx = idx if idx is not None else np.arange(n)
    return [(int(g), base_idx[order[b:e]]) for g, b, e in zip(order_groups, bounds, ends)]


def convert_block(
    path: Path,
    spec: ColumnSpec,
    fmt: str,
    df: pd.DataFrame,
    line_nos: np.ndarray,
    stats: ReadStats,
) -> Iterator[CallChunk]:
    """Columns of one parsed block -> validated CallChunks (one per contig and pooling kind)."""
    block = _Block(df, spec, fmt)
    try:
        keep = block.cg_context(stats)
        mc, cov, frac, keep = block.counts(keep, stats)
        pos, pooled_rows = block.positions()
        strand = block.strands(pooled_rows, line_nos, path)
    except RowError as exc:
        raise InputError(path, int(line_nos[exc.index]), exc.message) from None
    chrom = df[spec.chrom - 1]
    names = [str(c) for c in chrom.cat.categories]
    group = chrom.cat.codes.to_numpy().astype(np.int64) * 2
    if pooled_rows is not None:
        group += pooled_rows.astype(np.int64)
    for g, rows in _groups(group, keep, len(df)):
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
