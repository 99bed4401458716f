"""Segments: runs of consecutive sites of one chromosome fed to the model together, and data splits.

A chromosome with ``n`` sites and segment length ``L`` gives non-overlapping windows starting at
``0, L, 2L, ...`` plus, when ``n`` is not a multiple of ``L``, one final window aligned to the
chromosome end (overlapping its predecessor). A chromosome with fewer than ``L`` sites gives one
shorter segment: nothing is skipped silently (the original dropped such chromosomes).

Splits are by chromosome (validation/test chromosome names matched to the store's naming, so
``chr5`` finds ``5`` and the other way round) or by a seeded random fraction of segments.
"""

from __future__ import annotations

import logging
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from cpgformer.errors import UsageError

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class Segment:
    """Rows ``start:stop`` of chromosome ``chrom`` (``chrom_index`` in the store's order).

    ``index`` numbers the segments within their chromosome (0, 1, ...); together with the chromosome
    name it keys the seeded validation masks.
    """

    chrom: str
    chrom_index: int
    index: int
    start: int
    stop: int

    @property
    def length(self) -> int:
        return self.stop - self.start


def segment_starts(n_sites: int, length: int) -> np.ndarray:
    """Start rows of the segments of a chromosome with ``n_sites`` rows (int64).

    >>> segment_starts(10, 4).tolist()
    [0, 4, 6]
    >>> segment_starts(8, 4).tolist()
    [0, 4]
    >>> segment_starts(3, 4).tolist()
    [0]
    """
    if length < 1:
        raise UsageError(f"segment length must be >= 1, got {length}")
    if n_sites <= 0:
        return np.zeros(0, dtype=np.int64)
    if n_sites <= length:
        return np.zeros(1, dtype=np.int64)
    starts = np.arange(0, n_sites - length + 1, length, dtype=np.int64)
    if starts[-1] + length < n_sites:
        starts = np.append(starts, n_sites - length)
    return starts


def build_segments(n_sites: Mapping[str, int], length: int) -> list[Segment]:
    """Every segment of every chromosome, in chromosome order (``n_sites``: name -> rows, ordered)."""
    segments: list[Segment] = []
    for k, (chrom, n) in enumerate(n_sites.items()):
        if n == 0:
            log.warning("chromosome %s has no sites; it contributes no segment", chrom)
            continue
        if n < length:
            log.info("chromosome %s has %d < %d sites: one shorter segment", chrom, n, length)
        for i, start in enumerate(segment_starts(int(n), length).tolist()):
            segments.append(Segment(chrom, k, i, int(start), int(min(start + length, n))))
    return segments


def _canonical(name: str) -> str:
    """Chromosome name without a ``chr`` prefix, lower case (``chr5``, ``Chr5``, ``5`` -> ``5``)."""
    lowered = name.strip().lower()
    return lowered[3:] if lowered.startswith("chr") else lowered


def match_chromosomes(requested: Sequence[str], available: Sequence[str]) -> list[str]:
    """Map requested chromosome names onto the store's names (exact match first, then ``chr``-insensitive).

    Raises :class:`UsageError` for a name that matches nothing.
    """
    by_canonical: dict[str, list[str]] = {}
    for name in available:
        by_canonical.setdefault(_canonical(name), []).append(name)
    out: list[str] = []
    for name in requested:
        if name in available:
            out.append(name)
            continue
        found = by_canonical.get(_canonical(name), [])
        if len(found) != 1:
            shown = ", ".join(list(available)[:12]) + (" ..." if len(available) > 12 else "")
            raise UsageError(
                f"chromosome {name!r} is not in the store (has {shown}); "
                "choose others with --val-chromosomes/--test-chromosomes or split by fraction"
            )
        out.append(found[0])
    return out


def stable_hash(text: str) -> int:
    """A process-independent 32-bit hash of a string (Python's ``hash`` is salted per process)."""
    return zlib.crc32(text.encode("utf-8")) & 0xFFFFFFFF


def split_segments(
    segments: Sequence[Segment],
    *,
    val_chromosomes: Sequence[str] = (),
    test_chromosomes: Sequence[str] = (),
    val_fraction: float | None = None,
    test_fraction: float | None = None,
    seed: int = 0,
) -> dict[str, list[Segment]]:
    """Split segments into ``train``/``val``/``test``.

    With ``val_fraction``/``test_fraction`` (either given) segments are assigned at random (seeded;
    neighbouring segments share context, so this leaks — prefer chromosome splits). Otherwise whole
    chromosomes go to validation and test (names as in the store, see :func:`match_chromosomes`).
    """
    if val_fraction is not None or test_fraction is not None:
        vf = float(val_fraction or 0.0)
        tf = float(test_fraction or 0.0)
        if vf < 0 or tf < 0 or vf + tf >= 1:
            raise UsageError(
                f"validation and test fractions must be >= 0 and sum below 1, got {vf} and {tf}"
            )
        n = len(segments)
        order = np.random.default_rng(np.random.SeedSequence([seed, 0x5E6])).permutation(n)
        n_val = int(round(vf * n))
        n_test = int(round(tf * n))
        val_idx = set(order[:n_val].tolist())
        test_idx = set(order[n_val : n_val + n_test].tolist())
        out: dict[str, list[Segment]] = {s: [] for s in SPLITS}
        for i, seg in enumerate(segments):
            key = "val" if i in val_idx else "test" if i in test_idx else "train"
            out[key].append(seg)
        return out
    val = set(val_chromosomes)
    test = set(test_chromosomes)
    both = val & test
    if both:
        raise UsageError(f"chromosome(s) {', '.join(sorted(both))} in both validation and test")
    out = {s: [] for s in SPLITS}
    for seg in segments:
        key = "val" if seg.chrom in val else "test" if seg.chrom in test else "train"
        out[key].append(seg)
    return out
