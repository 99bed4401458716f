"""Strand pooling: reader rows -> one site per CpG (0-based + strand C), formats.md §3 and §4.

Anchoring (``CallChunk.pos`` is already the 0-based position of the row's own C):

* pooled rows (merged_CpG_evidence, MethylDackel ``--mergeContext``, DeepCpG): start = pos;
* stranded rows (CpG report, ALLC): + C at x -> start x; - C at x -> start x - 1;
* unstranded per-C rows (Bismark cov/bedGraph, MethylDackel per C) need the FASTA: ref[x..x+1] = CG
  -> start x; ref[x-1..x] = CG -> start x - 1; otherwise the row is invalid and dropped. Without a
  FASTA they stay at their own coordinate (``PooledCalls.unanchored``), and the number of adjacent
  (x, x+1) pairs is reported; ``pair_adjacent=True`` merges x+1 into x (greedy, left to right within
  each run of consecutive positions; wrong inside CGCG runs).

With a FASTA every row is checked (stranded rows must sit on the C of their strand, pooled rows on a
+ C) and invalid rows are dropped and counted by reason (``not_cpg``, ``out_of_range``, ``n_base``,
``unknown_contig``). Pooling sums mc and cov of the rows that land on one start.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

from cpgformer.errors import InputError
from cpgformer.io.fasta import Reference, SiteClass
from cpgformer.io.records import CallChunk

log = logging.getLogger(__name__)

DROP_REASONS = {
    SiteClass.NOT_CPG: "not_cpg",
    SiteClass.OUT_OF_RANGE: "out_of_range",
    SiteClass.N_BASE: "n_base",
    SiteClass.UNKNOWN_CONTIG: "unknown_contig",
}
"""SiteClass of an invalid row -> key in ``PooledCalls.n_dropped_by_reason``."""

STRAND_RULE_FASTA = "fasta: unstranded rows anchored by the reference base (formats.md §3.3)"
STRAND_RULE_NO_FASTA = (
    "no-fasta: stranded/pooled rows anchored exactly; unstranded rows kept at their own coordinate"
)
STRAND_RULE_PAIR_ADJACENT = (
    "pair-adjacent: stranded/pooled rows anchored exactly; unstranded x+1 merged into x"
)


def strand_rule(reference: Reference | None, pair_adjacent: bool) -> str:
    """The strand rule string to record in a store manifest for these pooling settings."""
    if reference is not None:
        return STRAND_RULE_FASTA
    return STRAND_RULE_PAIR_ADJACENT if pair_adjacent else STRAND_RULE_NO_FASTA


@dataclass
class PooledCalls:
    """Calls of one cell on one contig after pooling: sorted unique ``start`` (0-based + C)."""

    chrom: str
    start: np.ndarray  # int64 [n], sorted, unique
    mc: np.ndarray  # int32 [n]
    cov: np.ndarray  # int32 [n]
    n_dropped_by_reason: dict[str, int] = field(default_factory=dict)
    n_merged: int = 0  # input rows that were summed into another row's site
    unanchored: bool = False  # unstranded rows without FASTA: starts are the rows' own C
    n_adjacent_pairs: int = 0  # unanchored only: starts x with x+1 also present (before pairing)
    frac: np.ndarray | None = None  # float32 mean fraction, for fraction-only inputs

    def __len__(self) -> int:
        return int(self.start.shape[0])

    @property
    def n_dropped(self) -> int:
        return int(sum(self.n_dropped_by_reason.values()))


def pool_sorted(
    start: np.ndarray,
    mc: np.ndarray,
    cov: np.ndarray,
    frac: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
    """Merge rows with equal ``start`` by summing mc and cov (fractions are averaged).

    Input may be unsorted (it is stable-sorted first). Returns (start, mc, cov, frac) with sorted,
    unique starts; mc/cov int32 (int64 sums are checked for overflow).
    """
    start = np.asarray(start, dtype=np.int64)
    mc = np.asarray(mc)
    cov = np.asarray(cov)
    if start.size and np.any(start[1:] < start[:-1]):
        order = np.argsort(start, kind="stable")
        start, mc, cov = start[order], mc[order], cov[order]
        if frac is not None:
            frac = np.asarray(frac)[order]
    if start.size == 0:
        empty_frac = None if frac is None else np.zeros(0, dtype=np.float32)
        return (
            start,
            np.zeros(0, dtype=np.int32),
            np.zeros(0, dtype=np.int32),
            empty_frac,
        )
    first = np.ones(start.size, dtype=bool)
    first[1:] = start[1:] != start[:-1]
    if first.all():
        out_frac = None if frac is None else np.asarray(frac, dtype=np.float32)
        return start, mc.astype(np.int32), cov.astype(np.int32), out_frac
    bounds = np.flatnonzero(first)
    mc_sum = np.add.reduceat(mc.astype(np.int64), bounds)
    cov_sum = np.add.reduceat(cov.astype(np.int64), bounds)
    if cov_sum.size and cov_sum.max() > np.iinfo(np.int32).max:
        raise OverflowError("pooled coverage exceeds int32")
    out_frac = None
    if frac is not None:
        counts = np.diff(np.append(bounds, start.size))
        out_frac = (np.add.reduceat(np.asarray(frac, np.float64), bounds) / counts).astype(
            np.float32
        )
    return start[bounds], mc_sum.astype(np.int32), cov_sum.astype(np.int32), out_frac


def count_adjacent_pairs(start: np.ndarray) -> int:
    """Number of x in sorted unique ``start`` with x + 1 also present."""
    start = np.asarray(start)
    if start.size < 2:
        return 0
    return int(np.count_nonzero(np.diff(start) == 1))


def pair_adjacent_starts(start: np.ndarray) -> np.ndarray:
    """For sorted unique starts: the start each row pairs into (x+1 -> x), greedy per run.

    Within a run of consecutive positions x, x+1, ..., x+k the pairs are (x, x+1), (x+2, x+3), ...
    """
    start = np.asarray(start, dtype=np.int64)
    if start.size == 0:
        return start.copy()
    new_run = np.ones(start.size, dtype=bool)
    new_run[1:] = np.diff(start) != 1
    run_id = np.cumsum(new_run) - 1
    run_first = np.flatnonzero(new_run)
    offset = np.arange(start.size) - run_first[run_id]
    return start - (offset % 2)


def concat_chunks(chunks: Sequence[CallChunk]) -> CallChunk:
    """Concatenate chunks of one contig (and one pooled kind) into one chunk."""
    if not chunks:
        raise ValueError("no chunks to concatenate")
    chrom = chunks[0].chrom
    pooled = chunks[0].pooled
    for c in chunks:
        if c.chrom != chrom or c.pooled != pooled:
            raise ValueError("concat_chunks needs chunks of one contig and one pooled kind")
    has_frac = all(c.frac is not None for c in chunks)
    return CallChunk(
        chrom=chrom,
        pos=np.concatenate([c.pos for c in chunks]),
        strand=np.concatenate([c.strand for c in chunks]),
        mc=np.concatenate([c.mc for c in chunks]),
        cov=np.concatenate([c.cov for c in chunks]),
        line=np.concatenate([c.line for c in chunks]),
        pooled=pooled,
        frac=np.concatenate([c.frac for c in chunks]) if has_frac else None,  # type: ignore[misc]
    )


def duplicate_lines(
    pos: np.ndarray, strand: np.ndarray, line: np.ndarray
) -> tuple[int, int] | None:
    """The source lines of the first repeated (pos, strand) among one contig's rows, or None.

    formats.md §1: a repeated (cell, chrom, pos, strand) is an error; the caller raises it.
    """
    pos = np.asarray(pos, dtype=np.int64)
    if pos.size < 2:
        return None
    key = pos * 4 + (np.asarray(strand, dtype=np.int64) + 1)
    order = np.argsort(key, kind="stable")
    sk = key[order]
    dup = np.flatnonzero(sk[1:] == sk[:-1])
    if dup.size == 0:
        return None
    lines = np.asarray(line)
    pairs = np.stack([lines[order[dup]], lines[order[dup + 1]]], axis=1)
    best = int(np.argmin(pairs.max(axis=1)))
    a, b = sorted(int(x) for x in pairs[best])
    return a, b


def _valid_mask(classes: np.ndarray, strand: np.ndarray, pooled: bool) -> np.ndarray:
    if pooled:
        return classes == SiteClass.PLUS
    return (
        ((strand == 1) & (classes == SiteClass.PLUS))
        | ((strand == -1) & (classes == SiteClass.MINUS))
        | ((strand == 0) & ((classes == SiteClass.PLUS) | (classes == SiteClass.MINUS)))
    )


def _reasons(classes: np.ndarray, valid: np.ndarray) -> dict[str, int]:
    bad = classes[~valid]
    out: dict[str, int] = {}
    for cls, name in DROP_REASONS.items():
        n = int(np.count_nonzero(bad == cls))
        if n:
            out[name] = n
    # a stranded row whose C sits on the other strand's C of a CpG is "not_cpg" for its strand
    n_other = int(np.count_nonzero((bad == SiteClass.PLUS) | (bad == SiteClass.MINUS)))
    if n_other:
        out["not_cpg"] = out.get("not_cpg", 0) + n_other
    return out


def pool_chunk(
    chunk: CallChunk, reference: Reference | None, pair_adjacent: bool = False
) -> PooledCalls:
    """Anchor every row of ``chunk`` to its CpG's + strand C and pool both strands (sum mc, cov).

    With a ``reference``, rows are validated (invalid ones dropped, counted by reason) and the output
    contig name is the FASTA's name (aliases resolved). Without one, unstranded rows stay at their own
    coordinate (``unanchored=True``) unless ``pair_adjacent`` merges x+1 into x.
    """
    pos = np.asarray(chunk.pos, dtype=np.int64)
    strand = np.asarray(chunk.strand, dtype=np.int8)
    mc, cov, frac = chunk.mc, chunk.cov, chunk.frac
    chrom = chunk.chrom
    reasons: dict[str, int] = {}
    unanchored = False
    n_pairs = 0

    if reference is not None:
        target = reference.resolve(chrom)
        if target is not None:
            chrom = target
        claim = np.ones_like(strand) if chunk.pooled else strand
        classes = reference.classify_sites(chrom, pos, claim)
        valid = _valid_mask(classes, strand, chunk.pooled)
        reasons = _reasons(classes, valid)
        start = pos - (classes == SiteClass.MINUS).astype(np.int64)
        if not valid.all():
            start, mc, cov = start[valid], mc[valid], cov[valid]
            frac = None if frac is None else frac[valid]
    elif chunk.pooled:
        start = pos
    else:
        start = pos - (strand == -1).astype(np.int64)
        loose = strand == 0
        if loose.any():
            unanchored = True
            s_loose, mc_l, cov_l, frac_l = pool_sorted(
                start[loose], mc[loose], cov[loose], None if frac is None else frac[loose]
            )
            n_pairs = count_adjacent_pairs(s_loose)
            if pair_adjacent:
                s_loose = pair_adjacent_starts(s_loose)
            if loose.all():
                start, mc, cov, frac = s_loose, mc_l, cov_l, frac_l
            else:
                keep = ~loose
                start = np.concatenate([start[keep], s_loose])
                mc = np.concatenate([mc[keep], mc_l])
                cov = np.concatenate([cov[keep], cov_l])
                if frac is not None and frac_l is not None:
                    frac = np.concatenate([frac[keep], frac_l])
    n_kept_rows = len(chunk) - sum(reasons.values())
    start, mc_out, cov_out, frac_out = pool_sorted(start, mc, cov, frac)
    if unanchored and n_pairs:
        log.debug("%s: %d adjacent (x, x+1) pairs among unstranded rows", chrom, n_pairs)
    return PooledCalls(
        chrom=chrom,
        start=start,
        mc=mc_out,
        cov=cov_out,
        n_dropped_by_reason=reasons,
        n_merged=n_kept_rows - len(start),
        unanchored=unanchored and not pair_adjacent,
        n_adjacent_pairs=n_pairs,
        frac=frac_out,
    )


def merge_pooled(parts: Sequence[PooledCalls]) -> PooledCalls:
    """Combine :class:`PooledCalls` of one cell and contig (e.g. from several chunks) by summing.

    Pairing of adjacent unanchored rows is not redone across parts: to use ``pair_adjacent`` on a
    contig split over chunks, concatenate the chunks first (:func:`concat_chunks`).
    """
    if not parts:
        raise ValueError("no parts to merge")
    chrom = parts[0].chrom
    if any(p.chrom != chrom for p in parts):
        raise ValueError("merge_pooled needs parts of one contig")
    has_frac = all(p.frac is not None for p in parts)
    start, mc, cov, frac = pool_sorted(
        np.concatenate([p.start for p in parts]),
        np.concatenate([p.mc for p in parts]),
        np.concatenate([p.cov for p in parts]),
        np.concatenate([p.frac for p in parts]) if has_frac else None,  # type: ignore[misc]
    )
    reasons: dict[str, int] = {}
    for p in parts:
        for k, v in p.n_dropped_by_reason.items():
            reasons[k] = reasons.get(k, 0) + v
    unanchored = any(p.unanchored for p in parts)
    n_in = sum(len(p) for p in parts)
    return PooledCalls(
        chrom=chrom,
        start=start,
        mc=mc,
        cov=cov,
        n_dropped_by_reason=reasons,
        n_merged=sum(p.n_merged for p in parts) + n_in - len(start),
        unanchored=unanchored,
        n_adjacent_pairs=count_adjacent_pairs(start) if unanchored else 0,
        frac=frac,
    )


# --------------------------------------------------------------------------------------------------
# FASTA diagnostics (formats.md §4)
# --------------------------------------------------------------------------------------------------

OFFSET_SHIFTS = (-1, 0, 1)


def offset_diagnostic(
    reference: Reference, chunks: Iterable[CallChunk], max_rows: int = 10_000
) -> dict[int, float]:
    """Valid fraction of the first ``max_rows`` rows (on contigs the FASTA knows) at shifts -1/0/+1.

    Shift s means the rows' positions + s are checked. Empty dict when no row is on a known contig.
    """
    taken = 0
    valid = {s: 0 for s in OFFSET_SHIFTS}
    total = 0
    for chunk in chunks:
        if taken >= max_rows:
            break
        n = min(len(chunk), max_rows - taken)
        taken += n
        if reference.resolve(chunk.chrom) is None:
            continue
        pos = np.asarray(chunk.pos[:n], dtype=np.int64)
        strand = np.asarray(chunk.strand[:n], dtype=np.int8)
        claim = np.ones_like(strand) if chunk.pooled else strand
        total += n
        for s in OFFSET_SHIFTS:
            classes = reference.classify_sites(chunk.chrom, pos + s, claim)
            valid[s] += int(np.count_nonzero(_valid_mask(classes, strand, chunk.pooled)))
    if total == 0:
        return {}
    return {s: valid[s] / total for s in OFFSET_SHIFTS}


def offset_verdict(diagnostic: dict[int, float], margin: float = 0.5) -> str | None:
    """A message when a shifted reading beats the reading as given by >= ``margin``, else None.

    Shift +1 wins when the file was read as 1-based but is 0-based, -1 in the opposite case.
    """
    if not diagnostic:
        return None
    here = diagnostic.get(0, 0.0)
    best = max(OFFSET_SHIFTS, key=lambda s: diagnostic.get(s, 0.0))
    if best == 0 or diagnostic[best] - here < margin:
        return None
    looks = "0-based" if best == 1 else "1-based"
    hint = (
        "a 0-based format such as bismark-zero-cov or methyldackel"
        if best == 1
        else "a 1-based format such as bismark-cov or allc"
    )
    return (
        f"coordinates look {looks}: {diagnostic[best]:.0%} of calls are CpGs when shifted by "
        f"{best:+d} bp vs {here:.0%} as read; give the matching --input-format ({hint}) or a "
        f"--columns spec with base={0 if best == 1 else 1}"
    )


def random_valid_fraction(
    reference: Reference, stranded: bool = False, n: int = 20_000, seed: int = 0
) -> float:
    """Valid fraction that uniformly random positions would reach (the "wrong build" baseline).

    ``stranded=False``: a random position is valid when it is the C of a CpG on either strand;
    ``stranded=True``: with a random strand claim it must be the C of that strand.
    """
    rng = np.random.default_rng(seed)
    names = list(reference.contigs)
    lengths = np.asarray([reference.contigs[c] for c in names], dtype=np.float64)
    which = rng.choice(len(names), size=n, p=lengths / lengths.sum())
    hits = 0
    for k, name in enumerate(names):
        m = int(np.count_nonzero(which == k))
        if m == 0:
            continue
        pos = rng.integers(0, int(lengths[k]), size=m)
        strand = rng.choice(np.array([-1, 1], dtype=np.int8), size=m) if stranded else 0
        classes = reference.classify_sites(name, pos, strand)
        claim = np.broadcast_to(np.asarray(strand, dtype=np.int8), pos.shape)
        hits += int(np.count_nonzero(_valid_mask(classes, claim, False)))
    return hits / n


def validity_verdict(
    n_valid: int,
    n_dropped_by_reason: dict[str, int],
    min_valid_frac: float = 0.95,
    random_fraction: float | None = None,
) -> str | None:
    """None when ``n_valid / total >= min_valid_frac``, else the error text (with the breakdown).

    A valid fraction within 3x of ``random_fraction`` (or below 10 % when it is not given) adds
    "wrong genome build or species?".
    """
    n_bad = int(sum(n_dropped_by_reason.values()))
    total = n_valid + n_bad
    if total == 0:
        return None
    fraction = n_valid / total
    if fraction >= min_valid_frac:
        return None
    parts = ", ".join(f"{k} {v}" for k, v in sorted(n_dropped_by_reason.items()) if v)
    text = (
        f"only {fraction:.1%} of {total} calls are valid CpGs in the FASTA "
        f"(minimum {min_valid_frac:.0%}; invalid: {parts})"
    )
    near_random = (
        fraction <= 3 * random_fraction if random_fraction is not None else fraction < 0.10
    )
    if near_random:
        expect = "" if random_fraction is None else f" (random positions: {random_fraction:.1%})"
        text += f"; close to chance{expect}: wrong genome build or species?"
    return text


def check_validity(
    path: str,
    n_valid: int,
    n_dropped_by_reason: dict[str, int],
    min_valid_frac: float = 0.95,
    random_fraction: float | None = None,
) -> None:
    """Raise :class:`InputError` for ``path`` when :func:`validity_verdict` objects."""
    message = validity_verdict(n_valid, n_dropped_by_reason, min_valid_frac, random_fraction)
    if message is not None:
        raise InputError(path, None, message)
