"""Reading the cells: one file = one cell, read into per-contig pooled calls and a report.

:class:`CellReader` turns one file into :class:`CellCalls` (sorted, pooled onto the + strand C of
each CpG) and a :class:`FileReport`; :func:`read_cells` runs it over all files in input order,
in worker processes with ``--jobs``, never more than a few files in flight.
"""

from __future__ import annotations

import collections
import concurrent.futures as cf
import logging
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cpgformer.errors import InputError, NoCallsError, UsageError
from cpgformer.io import pooling, readers
from cpgformer.io.fasta import Reference
from cpgformer.io.records import CallChunk
from cpgformer.prepare.options import PrepareOptions, normalise_chrom

log = logging.getLogger("cpgformer.prepare")  # one name for all of prepare's messages


@dataclass
class CellCalls:
    """One cell's pooled calls on one contig, sorted by start (unique)."""

    chrom: str
    start: np.ndarray  # int64
    mc: np.ndarray  # int32
    cov: np.ndarray  # int32
    beta: np.ndarray | None = None  # float32 for fraction-only inputs


@dataclass
class FileReport:
    """What happened to one input file (recorded in the manifest)."""

    path: str
    cell: str
    format: str = ""
    n_lines: int = 0
    n_rows: int = 0
    n_calls_read: int = 0
    n_calls: int = 0
    n_merged: int = 0
    n_adjacent_pairs: int = 0
    counts_available: bool = True
    dropped: dict[str, int] = field(default_factory=dict)
    unknown_contigs: dict[str, int] = field(default_factory=dict)  # with a FASTA: name -> rows
    header: str | None = None

    def as_dict(self) -> dict:
        return {
            "path": self.path,
            "cell": self.cell,
            "format": self.format,
            "n_lines": self.n_lines,
            "n_rows": self.n_rows,
            "n_calls_read": self.n_calls_read,
            "n_calls": self.n_calls,
            "n_strand_merged": self.n_merged,
            "n_adjacent_pairs": self.n_adjacent_pairs,
            "counts_available": self.counts_available,
            "dropped": dict(self.dropped),
            "unknown_contigs": dict(self.unknown_contigs),
            "header": self.header,
        }


def _drop_rows(chunk: CallChunk, keep: np.ndarray) -> CallChunk:
    return CallChunk(
        chunk.chrom,
        chunk.pos[keep],
        chunk.strand[keep],
        chunk.mc[keep],
        chunk.cov[keep],
        chunk.line[keep],
        chunk.pooled,
        None if chunk.frac is None else chunk.frac[keep],
    )


class CellReader:
    """Reads one file into per-contig pooled calls and fills a :class:`FileReport`."""

    def __init__(self, opts: PrepareOptions, reference: Any, spec: Any) -> None:
        self.opts = opts
        self.reference = reference
        self.spec = spec
        self._random_frac: float | None = None

    def read(self, path: Path, cell: str) -> tuple[list[CellCalls], FileReport]:
        """The cell's pooled calls per contig and its report; :class:`NoCallsError` when none
        is left, :class:`InputError` for bad rows."""
        report = FileReport(path=str(path), cell=cell)
        per_chrom, counts_available = self._rows(path, report)
        if self.reference is not None:
            self._check_reference(path, per_chrom)
        by_chrom, n_valid, invalid, first_bad = self._pool(path, per_chrom, report)
        out = self._cells(by_chrom, report, counts_available)
        report.dropped = dict(Counter(report.dropped) + invalid)
        report.n_calls = int(sum(len(c.start) for c in out))
        if self.reference is not None:
            self._threshold_check(path, n_valid, dict(invalid), first_bad)
        if report.n_calls == 0:
            raise NoCallsError(
                path, None, f"no calls left after validation (dropped {report.dropped})"
            )
        return out, report

    def _rows(
        self, path: Path, report: FileReport
    ) -> tuple[dict[tuple[str, bool], list[CallChunk]], bool]:
        """The file's rows grouped by (contig, pooled); the reader's statistics into ``report``."""
        stats = readers.ReadStats()
        per_chrom: dict[tuple[str, bool], list[CallChunk]] = defaultdict(list)
        fmt = self.opts.input_format if self.spec is None else None
        for chunk in readers.read_calls(path, fmt=fmt, spec=self.spec, stats=stats):
            if self.opts.chrom_names != "keep":
                chunk.chrom = normalise_chrom(chunk.chrom, self.opts.chrom_names)
            per_chrom[(chunk.chrom, chunk.pooled)].append(chunk)
        report.format = stats.format
        report.n_lines = stats.n_lines
        report.n_rows = stats.n_rows
        report.header = stats.header
        report.counts_available = stats.counts_available
        dropped: Counter[str] = Counter()
        if stats.n_skipped_context:
            dropped["non_cg_context"] += stats.n_skipped_context
        if stats.n_skipped_zero:
            dropped["zero_coverage"] += stats.n_skipped_zero
        report.dropped = dict(dropped)
        return per_chrom, stats.counts_available

    def _check_reference(
        self, path: Path, per_chrom: dict[tuple[str, bool], list[CallChunk]]
    ) -> None:
        """Contig aliases one-to-one within the file; no systematic offset against the FASTA."""
        try:
            self.reference.resolve_all(sorted({chrom for chrom, _ in per_chrom}))
        except UsageError as exc:
            raise InputError(path, None, str(exc)) from None
        sample = [c for chunks in per_chrom.values() for c in chunks]
        verdict = pooling.offset_verdict(pooling.offset_diagnostic(self.reference, sample))
        if verdict is not None:
            raise InputError(path, None, verdict)

    def _pool(
        self, path: Path, per_chrom: dict[tuple[str, bool], list[CallChunk]], report: FileReport
    ) -> tuple[dict[str, list[Any]], int, Counter[str], tuple[int, str] | None]:
        """Pool every contig's rows: (pooled parts per contig, valid rows, invalid rows by
        reason, first bad line)."""
        invalid: Counter[str] = Counter()
        n_valid = 0
        first_bad: tuple[int, str] | None = None
        by_chrom: dict[str, list[pooling.PooledCalls]] = defaultdict(list)
        for key in list(per_chrom):
            chunk = pooling.concat_chunks(per_chrom.pop(key))  # release raw rows as we go
            report.n_calls_read += len(chunk)
            _refuse_repeats(path, chunk)
            zero = chunk.cov <= 0
            if zero.any():
                report.dropped["zero_coverage"] = report.dropped.get("zero_coverage", 0) + int(
                    zero.sum()
                )
                chunk = _drop_rows(chunk, ~zero)
                if not len(chunk):
                    continue
            if self.reference is not None:
                if self.reference.resolve(chunk.chrom) is None:
                    unknown = report.unknown_contigs
                    unknown[chunk.chrom] = unknown.get(chunk.chrom, 0) + len(chunk)
                if first_bad is None:
                    first_bad = self._first_bad_line(chunk)
            pooled = pooling.pool_chunk(chunk, self.reference, self.opts.pair_adjacent)
            for reason, n in pooled.n_dropped_by_reason.items():
                invalid[reason] += int(n)
            n_valid += len(chunk) - pooled.n_dropped
            report.n_merged += int(pooled.n_merged)
            report.n_adjacent_pairs += int(pooled.n_adjacent_pairs)
            if len(pooled):
                by_chrom[pooled.chrom].append(pooled)
        return by_chrom, n_valid, invalid, first_bad

    @staticmethod
    def _cells(
        by_chrom: dict[str, list[Any]], report: FileReport, counts_available: bool
    ) -> list[CellCalls]:
        out = []
        for chrom, parts in by_chrom.items():
            # one contig may come as pooled and per-C rows, or under two aliases of one name
            pooled = parts[0] if len(parts) == 1 else pooling.merge_pooled(parts)
            if len(parts) > 1:
                report.n_merged += int(pooled.n_merged) - sum(p.n_merged for p in parts)
            out.append(
                CellCalls(
                    chrom=chrom,
                    start=np.asarray(pooled.start, dtype=np.int64),
                    mc=np.asarray(pooled.mc, dtype=np.int32),
                    cov=np.asarray(pooled.cov, dtype=np.int32),
                    beta=(
                        None
                        if counts_available or pooled.frac is None
                        else np.asarray(pooled.frac, dtype=np.float32)
                    ),
                )
            )
        return out

    def _first_bad_line(self, chunk: CallChunk) -> tuple[int, str] | None:
        """Line of the first row on an unknown contig or past the contig end (cheap checks)."""
        target = self.reference.resolve(chunk.chrom)
        if target is None:
            return int(chunk.line.min()), f"contig {chunk.chrom!r} is not in the FASTA"
        length = self.reference.contigs[target]
        past = chunk.pos >= length
        if past.any():
            i = int(np.argmin(np.where(past, chunk.line, np.iinfo(np.int64).max)))
            return (
                int(chunk.line[i]),
                f"position {int(chunk.pos[i]) + 1} (1-based) past the end of "
                f"{target} (length {length})",
            )
        return None

    def _threshold_check(
        self, path: Path, n_valid: int, invalid: dict[str, int], first_bad: tuple[int, str] | None
    ) -> None:
        n_invalid = sum(invalid.values())
        if not n_invalid:
            return
        if self._random_frac is None:
            self._random_frac = pooling.random_valid_fraction(self.reference)
        message = pooling.validity_verdict(
            n_valid, invalid, self.opts.min_valid_frac, self._random_frac
        )
        if message is not None:
            line = None
            if first_bad is not None:
                line = first_bad[0]
                message += f"; first: {first_bad[1]}"
            raise InputError(path, line, message + f" [{self.opts.fasta}]")
        log.debug(  # summed over the files in prepare's summary; per file in the manifest
            "%s: dropped %d of %d calls invalid against the FASTA (%s)",
            path,
            n_invalid,
            n_valid + n_invalid,
            ", ".join(f"{k} {v}" for k, v in sorted(invalid.items())),
        )


def _refuse_repeats(path: Path, chunk: CallChunk) -> None:
    """:class:`InputError` naming the line of a repeated (position, strand) call."""
    pos = chunk.pos
    if len(pos) < 2 or bool(np.all(pos[1:] > pos[:-1])):
        return  # strictly increasing: no repeat possible
    dup = pooling.duplicate_lines(pos, chunk.strand, chunk.line)
    if dup is None:
        return
    i = int(np.nonzero(chunk.line == dup[1])[0][0])
    strand = {1: "+", -1: "-"}.get(int(chunk.strand[i]), "unstranded")
    raise InputError(
        path,
        dup[1],
        f"repeated call at {chunk.chrom}:{int(chunk.pos[i]) + 1} "
        f"(1-based C, strand {strand}); first given at line {dup[0]}",
    )


def open_reference(fasta: str | None) -> Reference | None:
    return None if fasta is None else Reference(fasta)


_WORKER: CellReader | None = None


def _init_worker(opts: PrepareOptions) -> None:
    global _WORKER
    spec = None
    if opts.columns is not None:
        spec = readers.parse_column_spec(opts.columns)
    _WORKER = CellReader(opts, open_reference(opts.fasta), spec)


def _worker_read(path: Path, name: str) -> tuple:
    """Run in a worker process; errors come back as data (our exceptions do not pickle)."""
    assert _WORKER is not None
    try:
        return ("ok", *_WORKER.read(path, name))
    except NoCallsError as exc:
        return ("empty", exc.path, exc.line, exc.message)
    except InputError as exc:
        return ("input", exc.path, exc.line, exc.message)
    except UsageError as exc:
        return ("usage", str(exc))


@dataclass
class SkippedCell:
    """A cell left out by ``--skip-empty`` (recorded in the manifest)."""

    cell: str
    path: str
    reason: str


_EMPTY_HINT = " (--skip-empty leaves cells without calls out)"


def read_cells(
    paths: list[Path], names: list[str], opts: PrepareOptions, reader: CellReader
) -> Iterator[tuple[list[CellCalls], FileReport] | SkippedCell]:
    """Per-file results in input order; with ``jobs > 1`` files are read by worker processes.

    At most ``2 * jobs`` files are in flight, so memory stays bounded by a few files' rows. A file
    without calls gives a :class:`SkippedCell` with ``skip_empty``, else a :class:`NoCallsError`.
    """

    def empty(path: Path, name: str, line: int | None, message: str) -> SkippedCell:
        if not opts.skip_empty:
            raise NoCallsError(path, line, message + _EMPTY_HINT)
        return SkippedCell(name, str(path), message)

    if opts.jobs == 1 or len(paths) == 1:
        for path, name in zip(paths, names):
            try:
                result = reader.read(path, name)
            except NoCallsError as exc:
                yield empty(path, name, exc.line, exc.message)
                continue
            yield result
        return
    jobs = min(opts.jobs, len(paths))
    with cf.ProcessPoolExecutor(jobs, initializer=_init_worker, initargs=(opts,)) as pool:
        pending: collections.deque = collections.deque()
        todo = iter(zip(paths, names))
        try:
            while True:
                while len(pending) < 2 * jobs:
                    item = next(todo, None)
                    if item is None:
                        break
                    pending.append((item, pool.submit(_worker_read, *item)))
                if not pending:
                    return
                (path, name), future = pending.popleft()
                result = future.result()
                if result[0] == "empty":
                    yield empty(path, name, result[2], result[3])
                    continue
                if result[0] == "input":
                    raise InputError(result[1], result[2], result[3])
                if result[0] == "usage":
                    raise UsageError(result[1])
                yield result[1], result[2]
        finally:
            for _item, f in pending:
                f.cancel()
