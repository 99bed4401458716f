"""Files (+ optional FASTA) -> dataset store: strand pooling, validation, binarisation, manifest.

The pipeline streams (memory never grows with the number of input files):

1. Each input file is one cell. Its rows are read (:func:`cpgformer.io.readers.read_calls`), contig
   names normalised, grouped per contig, sorted, checked for repeated (pos, strand) calls, and pooled
   onto the + strand C of each CpG (:func:`cpgformer.io.pooling.pool_chunk`; exact with a FASTA).
2. The pooled calls of the cell are appended to an in-memory spill buffer; when the buffer exceeds
   ``spill_bytes`` it is written, per contig, as ``.npy`` files inside the partial output directory.
3. After the last file, each contig's spilled calls of all cells are concatenated, sorted by
   (position, cell) and turned into one CSR matrix, labelled by the binarisation rule and written.
   Peak memory is one contig's calls (at most the final store's size) plus one cell's file.

Everything is written inside a ``.partial-`` directory renamed into place at the end, so a failure
leaves no store behind.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import shutil
import time
from collections import Counter, defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cpgformer.errors import InputError, NoCallsError, UsageError
from cpgformer.io.records import CallChunk
from cpgformer.io.store import ChromArrays, write_store_into
from cpgformer.utils.atomic import atomic_dir
from cpgformer.utils.progress import progress

log = logging.getLogger(__name__)

BINARIZE_RULES = ("threshold", "drop-mixed", "majority")
CHROM_NAME_MODES = ("keep", "add-chr", "strip-chr")
DEFAULT_SPILL_BYTES = 128 << 20


@dataclass
class PrepareOptions:
    """All parameters of :func:`prepare` (recorded in the manifest)."""

    input_format: str | None = None
    columns: str | None = None
    fasta: str | None = None
    min_valid_frac: float = 0.95
    chrom_names: str = "keep"
    binarize: str = "threshold"
    threshold: float = 0.5
    min_cov: int = 1
    pair_adjacent: bool = False
    cell_names: list[str] | None = None
    spill_bytes: int = DEFAULT_SPILL_BYTES
    jobs: int = 1
    skip_empty: bool = False  # cells whose file holds no call are left out and listed
    contig_aliases: str = "unify"  # io/contigs.py: "unify" or "refuse"
    keep_contigs: tuple[str, ...] = ()  # io/contigs.py: "spike-in", "unplaced"

    def check(self) -> None:
        if self.binarize not in BINARIZE_RULES:
            raise UsageError(f"--binarize must be one of {', '.join(BINARIZE_RULES)}")
        if self.chrom_names not in CHROM_NAME_MODES:
            raise UsageError(f"--chrom-names must be one of {', '.join(CHROM_NAME_MODES)}")
        if not 0.0 < self.threshold <= 1.0:
            raise UsageError(f"--threshold must be in (0, 1], got {self.threshold}")
        if self.min_cov < 1:
            raise UsageError(f"--min-cov must be >= 1, got {self.min_cov}")
        if not 0.0 <= self.min_valid_frac <= 1.0:
            raise UsageError(f"--min-valid-frac must be in [0, 1], got {self.min_valid_frac}")
        if self.spill_bytes < 1 << 16:
            raise UsageError("spill buffer must be at least 64 KiB")
        if self.jobs < 1:
            raise UsageError(f"--jobs must be >= 1, got {self.jobs}")
        from cpgformer.io.contigs import ALIAS_POLICIES, parse_keep

        if self.contig_aliases not in ALIAS_POLICIES:
            raise UsageError(f"--contig-aliases must be one of {', '.join(ALIAS_POLICIES)}")
        self.keep_contigs = parse_keep(self.keep_contigs)

    def as_manifest(self) -> dict:
        return {
            "input_format": self.input_format or "auto",
            "columns": self.columns,
            "fasta": self.fasta,
            "min_valid_frac": self.min_valid_frac,
            "chrom_names": self.chrom_names,
            "binarize": self.binarize,
            "threshold": self.threshold,
            "min_cov": self.min_cov,
            "pair_adjacent": self.pair_adjacent,
            "explicit_cell_names": self.cell_names is not None,
            "skip_empty": self.skip_empty,
            "contig_aliases": self.contig_aliases,
            "keep_contigs": list(self.keep_contigs),
        }


# --------------------------------------------------------------------------------------------------
# Small pure helpers (tested directly)
# --------------------------------------------------------------------------------------------------


def cell_name_from_path(path: str | os.PathLike[str]) -> str:
    """Basename minus a trailing ``.gz`` and one extension: ``a/cell_01.cov.gz`` -> ``cell_01``."""
    name = Path(path).name
    if name.endswith(".gz"):
        name = name[:-3]
    stem, dot, _ = name.rpartition(".")
    return stem if dot and stem else name


def normalise_chrom(name: str, mode: str) -> str:
    """``keep``; ``add-chr``: ``1`` -> ``chr1``, ``MT`` -> ``chrM``; ``strip-chr``: the inverse."""
    if mode == "keep":
        return name
    if mode == "add-chr":
        if name.lower().startswith("chr"):
            return name
        return "chrM" if name == "MT" else "chr" + name
    if name.lower().startswith("chr") and len(name) > 3:
        rest = name[3:]
        return "MT" if rest == "M" else rest
    return name


def chrom_sort_key(name: str) -> tuple:
    """Natural order without a FASTA: 1, 2, ..., 10, ..., X, Y, M, then others alphabetically."""
    base = name[3:] if name.lower().startswith("chr") else name
    if base.isdigit():
        return (0, int(base), name)
    special = {"X": 1, "Y": 2, "M": 3, "MT": 3}
    if base.upper() in special:
        return (1, special[base.upper()], name)
    parts = re.split(r"(\d+)", name)
    return (2, 0, tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in parts))


def binarize_labels(
    mc: np.ndarray, cov: np.ndarray, rule: str, threshold: float = 0.5, min_cov: int = 1
) -> np.ndarray:
    """int8 labels from counts: 1 methylated, 0 unmethylated, -1 excluded.

    * ``threshold``: mc / cov >= threshold -> 1 (ties, e.g. 1 of 2 reads at 0.5, count as methylated).
    * ``drop-mixed``: 1 if all reads methylated, 0 if none, -1 for any mixture.
    * ``majority``: 1 if mc / cov > 0.5, 0 if < 0.5, -1 for exact ties.

    Calls with ``cov < min_cov`` get -1 under every rule.
    """
    mc = np.asarray(mc, dtype=np.int64)
    cov = np.asarray(cov, dtype=np.int64)
    if rule == "threshold":
        label = (mc >= threshold * cov).astype(np.int8)
    elif rule == "drop-mixed":
        label = np.full(mc.shape, -1, dtype=np.int8)
        label[mc == 0] = 0
        label[(mc == cov) & (cov > 0)] = 1
    elif rule == "majority":
        label = np.full(mc.shape, -1, dtype=np.int8)
        label[2 * mc > cov] = 1
        label[2 * mc < cov] = 0
    else:
        raise UsageError(f"unknown binarisation rule {rule!r}")
    label[cov < min_cov] = -1
    return label


def binarize_fractions(beta: np.ndarray, rule: str, threshold: float = 0.5) -> np.ndarray:
    """Labels for fraction-only calls (one nominal read): the same rules applied to beta."""
    beta = np.asarray(beta, dtype=np.float64)
    if rule == "threshold":
        return (beta >= threshold).astype(np.int8)
    label = np.full(beta.shape, -1, dtype=np.int8)
    if rule == "drop-mixed":
        label[beta == 0] = 0
        label[beta == 1] = 1
    else:
        label[beta > 0.5] = 1
        label[beta < 0.5] = 0
    return label


# --------------------------------------------------------------------------------------------------
# Per-file processing
# --------------------------------------------------------------------------------------------------


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


class _CellReader:
    """Reads one file into per-contig pooled calls and fills a :class:`FileReport`."""

    def __init__(self, opts: PrepareOptions, reference: Any, spec: Any) -> None:
        self.opts = opts
        self.reference = reference
        self.spec = spec
        self._random_frac: float | None = None

    def read(self, path: Path, cell: str) -> tuple[list[CellCalls], FileReport]:
        from cpgformer.io import pooling, readers

        report = FileReport(path=str(path), cell=cell)
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

        if self.reference is not None:
            # the alias map must be one-to-one within a file ("1" and "chr1" both -> "chr1" is an error)
            try:
                self.reference.resolve_all(sorted({chrom for chrom, _ in per_chrom}))
            except UsageError as exc:
                raise InputError(path, None, str(exc)) from None
            sample = [c for chunks in per_chrom.values() for c in chunks]
            verdict = pooling.offset_verdict(pooling.offset_diagnostic(self.reference, sample))
            if verdict is not None:
                raise InputError(path, None, verdict)

        out: list[CellCalls] = []
        invalid: Counter[str] = Counter()
        n_valid = 0
        first_bad: tuple[int, str] | None = None
        by_chrom: dict[str, list[pooling.PooledCalls]] = defaultdict(list)
        for key in list(per_chrom):
            chunk = pooling.concat_chunks(per_chrom.pop(key))  # release raw rows as we go
            report.n_calls_read += len(chunk)
            pos = chunk.pos
            ordered = len(pos) < 2 or bool(np.all(pos[1:] > pos[:-1]))  # no repeat possible
            dup = None if ordered else pooling.duplicate_lines(pos, chunk.strand, chunk.line)
            if dup is not None:
                i = int(np.nonzero(chunk.line == dup[1])[0][0])
                strand = {1: "+", -1: "-"}.get(int(chunk.strand[i]), "unstranded")
                raise InputError(
                    path,
                    dup[1],
                    f"repeated call at {chunk.chrom}:{int(chunk.pos[i]) + 1} "
                    f"(1-based C, strand {strand}); first given at line {dup[0]}",
                )
            zero = chunk.cov <= 0
            if zero.any():
                dropped["zero_coverage"] += int(zero.sum())
                chunk = _drop_rows(chunk, ~zero)
                if not len(chunk):
                    continue
            if self.reference is not None:
                if self.reference.resolve(chunk.chrom) is None:
                    report.unknown_contigs[chunk.chrom] = report.unknown_contigs.get(
                        chunk.chrom, 0
                    ) + len(chunk)
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
                        if stats.counts_available or pooled.frac is None
                        else np.asarray(pooled.frac, dtype=np.float32)
                    ),
                )
            )
        dropped.update(invalid)
        report.dropped = dict(dropped)
        report.n_calls = int(sum(len(c.start) for c in out))
        if self.reference is not None:
            self._threshold_check(path, n_valid, dict(invalid), first_bad)
        if report.n_calls == 0:
            raise NoCallsError(
                path, None, f"no calls left after validation (dropped {report.dropped})"
            )
        return out, report

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
        from cpgformer.io import pooling

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


# --------------------------------------------------------------------------------------------------
# Spilling and merging
# --------------------------------------------------------------------------------------------------


class _Spill:
    """Buffers pooled calls of consecutive cells and writes them per contig as ``.npy`` parts."""

    def __init__(self, directory: Path, limit_bytes: int) -> None:
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.limit = limit_bytes
        self.buffer: dict[str, list[tuple[int, CellCalls]]] = defaultdict(list)
        self.buffered = 0
        self.parts: dict[str, list[Path]] = defaultdict(list)
        self.chrom_dirs: dict[str, Path] = {}
        self.has_beta: set[str] = set()
        self.n_flushes = 0

    def add(self, cell: int, calls: list[CellCalls]) -> None:
        for c in calls:
            self.buffer[c.chrom].append((cell, c))
            self.buffered += len(c.start) * 20
            if c.beta is not None:
                self.has_beta.add(c.chrom)
        if self.buffered >= self.limit:
            self.flush()

    def flush(self) -> None:
        for chrom, items in self.buffer.items():
            d = self.chrom_dirs.get(chrom)
            if d is None:
                d = self.dir / str(len(self.chrom_dirs))
                d.mkdir()
                self.chrom_dirs[chrom] = d
            k = len(self.parts[chrom])
            start = np.concatenate([c.start for _, c in items])
            cell = np.concatenate([np.full(len(c.start), i, dtype=np.int32) for i, c in items])
            mc = np.concatenate([c.mc for _, c in items])
            cov = np.concatenate([c.cov for _, c in items])
            base = d / f"part{k:05d}"
            np.save(str(base) + ".start.npy", start)
            np.save(str(base) + ".ints.npy", np.stack([cell, mc, cov]))
            if chrom in self.has_beta:
                beta = np.concatenate(
                    [
                        c.beta if c.beta is not None else (c.mc / c.cov).astype(np.float32)
                        for _, c in items
                    ]
                )
                np.save(str(base) + ".beta.npy", beta.astype(np.float32))
            self.parts[chrom].append(base)
        self.buffer.clear()
        self.buffered = 0
        self.n_flushes += 1

    def load(self, chrom: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, Any]:
        """All spilled calls of one contig, filled part by part into preallocated arrays."""
        bases = self.parts[chrom]
        sizes = [np.load(str(b) + ".start.npy", mmap_mode="r").shape[0] for b in bases]
        n = int(sum(sizes))
        start = np.empty(n, dtype=np.int64)
        cell = np.empty(n, dtype=np.int32)
        mc = np.empty(n, dtype=np.int32)
        cov = np.empty(n, dtype=np.int32)
        beta = np.empty(n, dtype=np.float32) if chrom in self.has_beta else None
        at = 0
        for base, size in zip(bases, sizes):
            sl = slice(at, at + size)
            start[sl] = np.load(str(base) + ".start.npy", mmap_mode="r")
            ints = np.load(str(base) + ".ints.npy", mmap_mode="r")
            cell[sl], mc[sl], cov[sl] = ints[0], ints[1], ints[2]
            if beta is not None:
                bpath = Path(str(base) + ".beta.npy")
                if bpath.exists():
                    beta[sl] = np.load(bpath, mmap_mode="r")
                else:
                    beta[sl] = ints[1] / ints[2]
            del ints
            at += size
        return start, cell, mc, cov, beta

    def release(self, chrom: str) -> None:
        d = self.chrom_dirs.get(chrom)
        if d is not None:
            shutil.rmtree(d, ignore_errors=True)


def _merge_chrom(
    chrom: str,
    start: np.ndarray,
    cell: np.ndarray,
    mc: np.ndarray,
    cov: np.ndarray,
    beta: np.ndarray | None,
    opts: PrepareOptions,
) -> ChromArrays:
    """All cells' calls of one contig (each cell's starts unique) -> CSR by site."""
    # parts were written in cell order, so a stable sort by start gives (start, cell) order
    # (one permuted copy at a time keeps the peak near one contig's calls plus the order)
    if len(start) > 1 and np.any(start[1:] < start[:-1]):
        order = np.argsort(start, kind="stable")
        start = start[order]
        cell = cell[order]
        mc = mc[order]
        cov = cov[order]
        if beta is not None:
            beta = beta[order]
        del order
    new_site = np.empty(len(start), dtype=bool)
    if len(start):
        new_site[0] = True
        np.not_equal(start[1:], start[:-1], out=new_site[1:])
    first = np.flatnonzero(new_site)
    positions = start[first]
    indptr = np.empty(len(first) + 1, dtype=np.int64)
    indptr[:-1] = first
    indptr[-1] = len(start)
    label = np.empty(len(start), dtype=np.int8)
    step = 1 << 22  # bounded temporaries
    for lo in range(0, len(start), step):
        sl = slice(lo, lo + step)
        if beta is not None:
            lab = binarize_fractions(beta[sl], opts.binarize, opts.threshold)
            lab[cov[sl] < opts.min_cov] = -1
        else:
            lab = binarize_labels(mc[sl], cov[sl], opts.binarize, opts.threshold, opts.min_cov)
        label[sl] = lab
    return ChromArrays(chrom, positions, indptr, cell, mc, cov, label, beta)


# --------------------------------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------------------------------


_WORKER: _CellReader | None = None


def _init_worker(opts: PrepareOptions) -> None:
    global _WORKER
    spec = None
    if opts.columns is not None:
        from cpgformer.io.readers import parse_column_spec

        spec = parse_column_spec(opts.columns)
    _WORKER = _CellReader(opts, _reference(opts.fasta), spec)


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


def _read_all(
    paths: list[Path], names: list[str], opts: PrepareOptions, reader: _CellReader
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
    import collections
    import concurrent.futures as cf

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


def _check_inputs(inputs: Sequence[str | os.PathLike[str]]) -> list[Path]:
    if not inputs:
        raise UsageError("no input files given")
    paths = [Path(p) for p in inputs]
    for p in paths:
        if p.is_dir():
            raise InputError(p, None, "is a directory, expected a methylation call file")
        if not p.exists():
            raise InputError(p, None, "no such file")
    return paths


def _cell_names(paths: list[Path], explicit: list[str] | None) -> list[str]:
    if explicit is not None:
        if len(explicit) != len(paths):
            raise UsageError(f"{len(explicit)} cell names given for {len(paths)} input files")
        names = list(explicit)
    else:
        names = [cell_name_from_path(p) for p in paths]
    first: dict[str, int] = {}
    for i, n in enumerate(names):
        if not n:
            raise UsageError(f"{paths[i]}: empty cell name")
        if n in first:
            raise UsageError(
                f"duplicate cell name {n!r}: {paths[first[n]]} and {paths[i]} "
                "(one file per cell; rename a file or give --cell-names)"
            )
        first[n] = i
    return names


def _reference(fasta: str | None) -> Any:
    if fasta is None:
        return None
    from cpgformer.io.fasta import Reference

    return Reference(fasta)


def _fasta_identity(reference: Any, fasta: str | None) -> dict | None:
    if reference is None:
        return None
    ident = reference.identity()
    ident = dict(ident) if isinstance(ident, dict) else {"identity": ident}
    if fasta:
        ident["path"] = str(Path(fasta).resolve())
    return ident


def prepare(
    inputs: Sequence[str | os.PathLike[str]],
    output: str | os.PathLike[str],
    options: PrepareOptions | None = None,
    *,
    overwrite: bool = False,
) -> dict:
    """Build a store from per-cell call files (one file = one cell); return the manifest.

    Raises :class:`InputError` / :class:`UsageError` for bad input; no output is left behind then.
    """
    opts = options or PrepareOptions()
    opts.check()
    if opts.input_format == "npz" or (
        len(inputs) == 1 and opts.input_format is None and _is_triple(inputs[0])
    ):
        from cpgformer.io.npz import import_npz

        if len(inputs) != 1:
            raise UsageError("npz import takes one directory holding X.npz/y.npz/pos.npz")
        return import_npz(
            inputs[0],
            output,
            cell_names=opts.cell_names,
            overwrite=overwrite,
            extra_parameters={"binarize": "threshold", "threshold": 0.5},
        )
    methscan_dir = _methscan_input(inputs, opts.input_format)
    if methscan_dir is not None:
        return _prepare_methscan(methscan_dir[0], methscan_dir[1], output, opts, overwrite)
    paths = _check_inputs(inputs)
    names = _cell_names(paths, opts.cell_names)
    spec = None
    if opts.columns is not None:
        from cpgformer.io.readers import parse_column_spec

        spec = parse_column_spec(opts.columns)
    elif opts.input_format == "tsv":
        raise UsageError("--input-format tsv needs --columns")
    reference = _reference(opts.fasta)
    reader = _CellReader(opts, reference, spec)
    t0 = time.perf_counter()
    reports: list[FileReport] = []
    skipped: list[SkippedCell] = []
    with atomic_dir(output, overwrite=overwrite, kind="store", inputs=[*paths, opts.fasta]) as tmp:
        spill = _Spill(tmp / "spill", opts.spill_bytes)
        results = _read_all(paths, names, opts, reader)
        kept: list[int] = []
        for i, result in enumerate(
            progress(results, desc="reading cells", total=len(paths), unit="file")
        ):
            if isinstance(result, SkippedCell):
                skipped.append(result)
                continue
            calls, report = result
            spill.add(len(kept), calls)
            kept.append(i)
            reports.append(report)
            del calls, result
        spill.flush()
        if not kept:
            raise UsageError(f"none of the {len(paths)} input files holds a call")
        paths = [paths[i] for i in kept]
        names = [names[i] for i in kept]
        t_read = time.perf_counter() - t0
        from cpgformer.io.contigs import reconcile_contigs  # aliases, spike-ins, unplaced

        chroms, contigs = reconcile_contigs(spill, reports, opts.contig_aliases, opts.keep_contigs)
        if reference is not None:
            order = {c: k for k, c in enumerate(reference.contigs)}
            chroms.sort(key=lambda c: order.get(c, len(order)))
        else:
            chroms.sort(key=chrom_sort_key)

        def merged() -> Iterator[ChromArrays]:
            for chrom in progress(chroms, desc="merging", unit="chrom"):
                arrays = _merge_chrom(chrom, *spill.load(chrom), opts)
                yield arrays
                del arrays
                spill.release(chrom)

        n_adjacent = sum(r.n_adjacent_pairs for r in reports)
        from cpgformer.io.pooling import strand_rule as _strand_rule

        strand_rule = _strand_rule(reference, opts.pair_adjacent)
        flags = []
        for r in reports:
            f = []
            if not r.counts_available:
                f.append("counts_unavailable")
            if r.n_adjacent_pairs:
                f.append("unpooled_strands")
            flags.append(",".join(f))
        manifest_extra = {
            "parameters": opts.as_manifest(),
            "inputs": [r.as_dict() for r in reports],
            "fasta": _fasta_identity(reference, opts.fasta),
            "strand_rule": strand_rule,
            "binarisation": {
                "rule": opts.binarize,
                "threshold": opts.threshold if opts.binarize == "threshold" else 0.5,
                "ties": {
                    "threshold": "methylated (mc/cov >= threshold)",
                    "drop-mixed": "any mixed call excluded",
                    "majority": "excluded (label -1)",
                }[opts.binarize],
                "min_cov": opts.min_cov,
            },
            "data_mode": "binary",
            "dropped": dict(sum((Counter(r.dropped) for r in reports), Counter())),
            "n_adjacent_pairs": n_adjacent,
            "skipped_empty": [dataclasses.asdict(c) for c in skipped],
            "contigs": contigs,
        }
        cell_info = {
            "name": names,
            "source_file": [str(p) for p in paths],
            "flags": flags,
            "format": [r.format for r in reports],
        }
        manifest = write_store_into(tmp, merged(), names, manifest_extra, cell_info)
        shutil.rmtree(tmp / "spill", ignore_errors=True)
    elapsed = time.perf_counter() - t0
    n_read = sum(r.n_calls_read for r in reports)
    formats = Counter(r.format.split(" ")[0] for r in reports)
    log.info(
        "prepared %s: %d cells%s, %d chromosomes, %d sites, %d calls from %d rows of %d files "
        "(%s; read %.1f s, total %.1f s)",
        output,
        manifest["n_cells"],
        f" ({len(skipped)} without calls skipped)" if skipped else "",
        len(manifest["chromosomes"]),
        manifest["n_sites"],
        manifest["n_calls"],
        n_read,
        len(reports) + len(skipped),
        ", ".join(f"{n} {fmt}" for fmt, n in formats.most_common()),
        t_read,
        elapsed,
    )
    if skipped:
        shown = ", ".join(c.cell for c in skipped[:5]) + (" ..." if len(skipped) > 5 else "")
        log.warning(
            "%d cell(s) without calls left out (listed in the manifest under skipped_empty): %s",
            len(skipped),
            shown,
        )
    if n_adjacent and reference is None and not opts.pair_adjacent:
        log.warning(
            "%d adjacent (x, x+1) call pairs within cells look like unpooled strands of one CpG; "
            "give --fasta to pool them exactly (or --pair-adjacent)",
            n_adjacent,
        )
    invalid_reasons = ("not_cpg", "out_of_range", "n_base", "unknown_contig")
    with_invalid = [r for r in reports if any(r.dropped.get(k) for k in invalid_reasons)]
    if reference is not None and with_invalid:
        total: Counter[str] = Counter()
        for r in with_invalid:
            total.update({k: r.dropped[k] for k in invalid_reasons if r.dropped.get(k)})
        log.warning(
            "%d of %d files had calls invalid against the FASTA, %d dropped in all (%s; per file "
            "in the manifest's inputs)",
            len(with_invalid),
            len(reports),
            sum(total.values()),
            ", ".join(f"{k} {v}" for k, v in sorted(total.items())),
        )
    if opts.input_format is None and opts.columns is None and formats.get("deepcpg"):
        log.info(
            "%d file(s) read as DeepCpG profiles (one row per CpG at its + strand C); if their "
            "rows are per-C calls on both strands, give --input-format per-c-state",
            formats["deepcpg"],
        )
    return manifest


def _is_triple(path: str | os.PathLike[str]) -> bool:
    from cpgformer.io.npz import is_npz_triple_dir

    return is_npz_triple_dir(path)


# --------------------------------------------------------------------------------------------------
# MethSCAn prepared matrices
# --------------------------------------------------------------------------------------------------


def _methscan_input(
    inputs: Sequence[str | os.PathLike[str]], input_format: str | None
) -> tuple[Path, list[Path] | None] | None:
    """(directory, chosen matrices or None for all) when the inputs are MethSCAn matrices."""
    from cpgformer.io import methscan

    if input_format not in (None, "methscan"):
        return None
    if len(inputs) == 1 and methscan.is_methscan_dir(inputs[0]):
        return Path(inputs[0]), None
    paths = [Path(p) for p in inputs]
    directory = methscan.methscan_dir_of(paths)
    if directory is not None:
        return directory, paths
    if input_format == "methscan":
        raise UsageError(
            "--input-format methscan takes the directory written by MethSCAn prepare (with "
            f"{methscan.HEADER_FILE} and <chromosome>.npz files) or some of its .npz files"
        )
    return None


def _prepare_methscan(
    directory: Path,
    only: list[Path] | None,
    output: str | os.PathLike[str],
    opts: PrepareOptions,
    overwrite: bool,
) -> dict:
    """A store from MethSCAn's per-chromosome matrices (see :mod:`cpgformer.io.methscan`).

    With ``--fasta`` each call is anchored on its CpG (a call on the G is the - strand C), both
    strands of a CpG are pooled within a cell and rows that are no CpG are dropped and counted.
    """
    from cpgformer.io import methscan
    from cpgformer.io.fasta import SiteClass
    from cpgformer.io.pooling import DROP_REASONS
    from cpgformer.io.pooling import strand_rule as _strand_rule
    from cpgformer.io.store import write_store

    t0 = time.perf_counter()
    file_names = methscan.read_cell_names(directory)
    names = list(opts.cell_names) if opts.cell_names is not None else file_names
    if len(names) != len(file_names):
        raise UsageError(
            f"{len(names)} cell names given for {len(file_names)} cells in {directory}"
        )
    if len(set(names)) != len(names):
        raise UsageError(f"{directory}: duplicate cell names")
    reference = _reference(opts.fasta)
    files = methscan.matrix_files(directory, only)
    files.sort(key=lambda f: chrom_sort_key(f.name[: -len(".npz")]))
    dropped: Counter[str] = Counter()
    n_merged = 0

    def chroms() -> Iterator[ChromArrays]:
        nonlocal n_merged
        for path in progress(files, desc="MethSCAn matrices", unit="chrom"):
            m = methscan.read_matrix(path, len(names))
            chrom = m.chrom
            if opts.chrom_names != "keep":
                chrom = normalise_chrom(chrom, opts.chrom_names)
            start, cell, meth = m.start, m.cell, m.meth
            if reference is not None:
                classes = reference.classify_sites(chrom, start)
                valid = (classes == SiteClass.PLUS) | (classes == SiteClass.MINUS)
                for code, reason in DROP_REASONS.items():
                    n = int((classes == code).sum())
                    if n:
                        dropped[reason] += n
                start = np.where(classes == SiteClass.MINUS, start - 1, start)[valid]
                cell, meth = cell[valid], meth[valid]
                order = np.lexsort((cell, start))
                start, cell, meth = start[order], cell[order], meth[order]
                new = np.ones(len(start), dtype=bool)
                new[1:] = (start[1:] != start[:-1]) | (cell[1:] != cell[:-1])
                first = np.flatnonzero(new)
                n_merged += int(len(start) - len(first))
                mc = np.add.reduceat(meth, first) if len(first) else meth[:0]
                cov = np.diff(np.append(first, len(start))).astype(np.int32)
                start, cell = start[first], cell[first]
            else:
                cov = np.ones(len(start), dtype=np.int32)
                mc = meth
            if not len(start):
                continue
            yield _merge_chrom(
                chrom,
                start.astype(np.int64),
                cell.astype(np.int32),
                np.asarray(mc, dtype=np.int32),
                cov,
                None,
                opts,
            )

    extra = {
        "parameters": {**opts.as_manifest(), "input_format": "methscan"},
        "inputs": [
            {
                "path": str(directory),
                "format": "methscan",
                "matrices": [f.name for f in files],
                "counts_available": False,
            }
        ],
        "fasta": _fasta_identity(reference, opts.fasta),
        "strand_rule": _strand_rule(reference, False),
        "binarisation": {
            "rule": opts.binarize,
            "threshold": opts.threshold if opts.binarize == "threshold" else 0.5,
            "min_cov": opts.min_cov,
            "note": "MethSCAn keeps one binary call per C (1/-1): mc/cov 1/1 or 0/1",
        },
        "data_mode": "binary",
        "dropped": dropped,
    }
    cell_info = {
        "name": names,
        "source_file": [str(directory)] * len(names),
        "flags": ["counts_unavailable"] * len(names),
        "format": ["methscan"] * len(names),
    }
    manifest = write_store(output, chroms(), names, extra, cell_info, overwrite=overwrite)
    if n_merged:
        manifest_note = f", {n_merged} strand pairs pooled"
    else:
        manifest_note = ""
    log.info(
        "prepared %s: %d cells, %d chromosomes, %d sites, %d calls from MethSCAn matrices in %s "
        "(%d matrices%s%s; %.1f s)",
        output,
        manifest["n_cells"],
        len(manifest["chromosomes"]),
        manifest["n_sites"],
        manifest["n_calls"],
        directory,
        len(files),
        manifest_note,
        "; dropped " + ", ".join(f"{n} {k}" for k, n in dropped.items()) if dropped else "",
        time.perf_counter() - t0,
    )
    return manifest
