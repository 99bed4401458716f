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
                "choose others with --val-chromosomes/--test-chromosomes, or --split regions "
                "(blocks along the chromosomes)"
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


# ---- region hold-out -----------------------------------------------------------------------------
DEFAULT_REGION_FRACTION = 0.1
"""Share of a chromosome's sites in validation blocks (and, separately, in test blocks)."""
READ_GAP_BP = 150
"""bp: calls of one cell this close may come from one read; held-out blocks keep training this far
away (the benchmark's ``--run-gap`` default)."""


@dataclass(frozen=True)
class Region:
    """Rows ``start:stop`` of chromosome ``chrom`` (a block of consecutive sites)."""

    chrom: str
    start: int
    stop: int

    @property
    def length(self) -> int:
        return self.stop - self.start


@dataclass
class SplitPlan:
    """How a store is split: ``mode`` "chromosomes", "regions" or "fraction".

    ``regions`` (region mode only): split -> blocks of rows. ``note``: why an automatic choice was
    made (empty when the requested split was used as given).
    """

    mode: str
    val_chromosomes: list[str]
    test_chromosomes: list[str]
    segments: dict[str, list[Segment]]
    regions: dict[str, list[Region]] | None = None
    note: str = ""
    gap_rows: int = 0
    gap_bp: int = 0

    def describe(self) -> str:
        if self.mode == "regions":
            assert self.regions is not None
            parts = []
            for split in ("val", "test"):
                blocks = self.regions[split]
                sites = sum(b.length for b in blocks)
                parts.append(f"{split} {len(blocks)} block(s), {sites} sites")
            train_sites = sum(b.length for b in self.regions["train"])
            return (
                f"region hold-out: train {train_sites} sites, {'; '.join(parts)} "
                f"(gaps of >= {self.gap_rows} sites and > {self.gap_bp} bp)"
            )
        if self.mode == "chromosomes":
            return (
                f"chromosome hold-out: validation {', '.join(self.val_chromosomes) or 'none'}, "
                f"test {', '.join(self.test_chromosomes) or 'none'}"
            )
        return "random segment fractions"

    def record(self, positions: Mapping[str, np.ndarray] | None = None) -> dict:
        """JSON-able description for checkpoints and run configs (rows, and bp with positions)."""
        out: dict = {"split_resolved": self.mode, "split_note": self.note}
        if self.regions is not None:
            for split, blocks in self.regions.items():
                rows = []
                for b in blocks:
                    row: list = [b.chrom, int(b.start), int(b.stop)]
                    if positions is not None:
                        pos = positions[b.chrom]
                        row += [int(pos[b.start]), int(pos[b.stop - 1]) + 1]
                    rows.append(row)
                out[f"{split}_regions"] = rows
            out["region_gap_sites"] = self.gap_rows
            out["region_gap_bp"] = self.gap_bp
        return out


def regions_from_record(record: Mapping) -> dict[str, list[Region]] | None:
    """Inverse of :meth:`SplitPlan.record` for the blocks (None when the split was not by region)."""
    if record.get("split_resolved") != "regions":
        return None
    return {
        split: [Region(str(r[0]), int(r[1]), int(r[2])) for r in record.get(f"{split}_regions", [])]
        for split in SPLITS
    }


def region_layout(
    positions: np.ndarray,
    *,
    val_fraction: float,
    test_fraction: float,
    block_sites: int,
    gap_rows: int,
    gap_bp: int,
) -> dict[str, list[tuple[int, int]]] | None:
    """Validation and test blocks along one chromosome, training pieces in between.

    Blocks of about ``block_sites`` sites are spread evenly along the chromosome, alternating
    validation and test, so that each split holds about its fraction of the sites. Around every block
    a gap is left out of every split: training (and the other held-out split) keeps more than
    ``gap_rows`` sites *and* more than ``gap_bp`` bp away from the block, so no training segment sees
    a held-out call in its input nor a call of the same read. Returns ``None`` when the chromosome
    is too short to hold a block of each split with its gaps.
    """
    n = int(positions.shape[0])
    k_val = max(1, round(val_fraction * n / block_sites)) if val_fraction > 0 else 0
    k_test = max(1, round(test_fraction * n / block_sites)) if test_fraction > 0 else 0
    m = k_val + k_test
    if m == 0:
        return {"train": [(0, n)], "val": [], "test": []}
    size = {"val": val_fraction * n / max(k_val, 1), "test": test_fraction * n / max(k_test, 1)}
    # alternate val/test as evenly as the counts allow
    kinds: list[str] = []
    nv = nt = 0
    for _ in range(m):
        if nt * k_val < nv * k_test or nv >= k_val:
            kinds.append("test")
            nt += 1
        else:
            kinds.append("val")
            nv += 1
    blocks: list[tuple[str, int, int]] = []
    for j, kind in enumerate(kinds):
        length = max(1, int(round(size[kind])))
        centre = (j + 0.5) * n / m
        start = int(round(centre - length / 2))
        start = min(max(start, 0), n - length)
        blocks.append((kind, start, start + length))

    def far_left(row: int) -> int:
        """Exclusive end of the rows more than gap_rows and gap_bp before ``row``."""
        by_bp = int(np.searchsorted(positions, positions[row] - gap_bp, side="left"))
        return max(0, min(row - gap_rows, by_bp))

    def far_right(row: int) -> int:
        """First row more than gap_rows and gap_bp after ``row`` (the last row of a block)."""
        by_bp = int(np.searchsorted(positions, positions[row] + gap_bp, side="right"))
        return min(n, max(row + gap_rows + 1, by_bp))

    out: dict[str, list[tuple[int, int]]] = {"train": [], "val": [], "test": []}
    cursor = 0
    for k, (kind, start, stop) in enumerate(blocks):
        if k and far_right(blocks[k - 1][2] - 1) > start:
            return None  # blocks too close to keep their gaps
        left = far_left(start)
        if left > cursor:
            out["train"].append((cursor, left))
        out[kind].append((start, stop))
        cursor = far_right(stop - 1)
    if cursor < n:
        out["train"].append((cursor, n))
    if not out["train"]:
        return None
    return out


def choose_chromosomes(n_sites: Mapping[str, int]) -> tuple[str, str] | None:
    """An automatic (validation, test) chromosome pair, or None when holding out whole chromosomes
    would leave too little to train on.

    Needs >= 3 chromosomes: the test chromosome is the one whose share of the sites is closest to
    10 % (at most 25 %), validation the next closest; together at most half the sites.
    """
    total = sum(n_sites.values())
    if len(n_sites) < 3 or total == 0:
        return None
    ranked = sorted(
        (c for c, n in n_sites.items() if 0 < n <= 0.25 * total),
        key=lambda c: (abs(n_sites[c] / total - DEFAULT_REGION_FRACTION), list(n_sites).index(c)),
    )
    if len(ranked) < 2:
        return None
    test, val = ranked[0], ranked[1]
    if n_sites[test] + n_sites[val] > 0.5 * total:
        return None
    return val, test


def _region_segments(
    chrom: str, chrom_index: int, pieces: Sequence[tuple[str, int, int]], length: int
) -> list[tuple[str, Segment]]:
    """Segments inside each piece (split, start, stop) of one chromosome, numbered along it."""
    out: list[tuple[str, Segment]] = []
    index = 0
    for split, a, b in sorted(pieces, key=lambda p: p[1]):
        for s in segment_starts(b - a, length).tolist():
            out.append(
                (split, Segment(chrom, chrom_index, index, a + s, a + min(s + length, b - a)))
            )
            index += 1
    return out


def region_split(
    positions: Mapping[str, np.ndarray],
    length: int,
    *,
    val_fraction: float,
    test_fraction: float,
    block_sites: int,
    gap_rows: int,
    gap_bp: int,
) -> tuple[dict[str, list[Region]], dict[str, list[Segment]]]:
    """Region hold-out on every chromosome that is long enough (others train entirely)."""
    regions: dict[str, list[Region]] = {s: [] for s in SPLITS}
    segments: dict[str, list[Segment]] = {s: [] for s in SPLITS}
    for k, (chrom, pos) in enumerate(positions.items()):
        n = int(pos.shape[0])
        if n == 0:
            continue
        layout = region_layout(
            pos,
            val_fraction=val_fraction,
            test_fraction=test_fraction,
            block_sites=block_sites,
            gap_rows=gap_rows,
            gap_bp=gap_bp,
        )
        if layout is None:
            log.info("chromosome %s (%d sites) is too short for held-out blocks: trains", chrom, n)
            layout = {"train": [(0, n)], "val": [], "test": []}
        pieces = []
        for split, blocks in layout.items():
            for a, b in blocks:
                regions[split].append(Region(chrom, a, b))
                pieces.append((split, a, b))
        for split, seg in _region_segments(chrom, k, pieces, length):
            segments[split].append(seg)
    return regions, segments


def default_block_sites(segment_length: int, gap_rows: int) -> int:
    """Automatic held-out block size: four segments, and at least ten gaps long."""
    return max(4 * segment_length, 10 * max(gap_rows, 1))


def resolve_split(
    positions: Mapping[str, np.ndarray],
    *,
    segment_length: int,
    split: str = "auto",
    val_chromosomes: Sequence[str] = ("chr5",),
    test_chromosomes: Sequence[str] = ("chr10",),
    val_fraction: float | None = None,
    test_fraction: float | None = None,
    region_block_sites: int = 0,
    region_gap_sites: int = 0,
    receptive_field: int = 0,
    read_gap_bp: int = READ_GAP_BP,
    seed: int = 0,
) -> SplitPlan:
    """The train/validation/test split of a store (``positions``: chromosome -> sorted positions).

    ``split``: ``chromosomes`` (the named ones; an unknown name is an error), ``regions`` (blocks
    along every chromosome, see :func:`region_layout`), ``fraction`` (random segments) or ``auto``:
    the fraction split when a fraction is given, else the named chromosomes when the store has them
    all, else an automatic choice -- two chromosomes (:func:`choose_chromosomes`) when the store has
    enough, else regions. Region gaps: ``region_gap_sites`` (0 = the model's ``receptive_field``),
    and always more than ``read_gap_bp`` bp.
    """
    if split not in ("auto", "chromosomes", "regions", "fraction"):
        raise UsageError(f"unknown split {split!r}; choose auto, chromosomes, regions or fraction")
    names = list(positions)
    n_sites = {c: int(p.shape[0]) for c, p in positions.items()}
    note = ""
    if split == "auto":
        if val_fraction is not None or test_fraction is not None:
            split = "fraction"
        else:
            try:
                match_chromosomes(list(val_chromosomes) + list(test_chromosomes), names)
                split = "chromosomes"
            except UsageError:
                missing = [
                    c
                    for c in list(val_chromosomes) + list(test_chromosomes)
                    if not _matches(c, names)
                ]
                pair = choose_chromosomes(n_sites)
                if pair is not None:
                    val_chromosomes, test_chromosomes = [pair[0]], [pair[1]]
                    split = "chromosomes"
                    how = f"validation chromosome {pair[0]}, test chromosome {pair[1]}"
                else:
                    split = "regions"
                    how = "validation and test blocks along the chromosomes (region hold-out)"
                note = (
                    f"chromosome(s) {', '.join(missing)} not in the store: automatic split, {how}"
                )
    if split == "fraction":
        segs = build_segments(n_sites, segment_length)
        parts = split_segments(
            segs,
            val_fraction=val_fraction if val_fraction is not None else DEFAULT_REGION_FRACTION,
            test_fraction=test_fraction,
            seed=seed,
        )
        return SplitPlan("fraction", [], [], parts, note=note)
    if split == "chromosomes":
        val = match_chromosomes(val_chromosomes, names)
        test = match_chromosomes(test_chromosomes, names)
        segs = build_segments(n_sites, segment_length)
        parts = split_segments(segs, val_chromosomes=val, test_chromosomes=test)
        return SplitPlan("chromosomes", val, test, parts, note=note)
    vf = DEFAULT_REGION_FRACTION if val_fraction is None else float(val_fraction)
    tf = DEFAULT_REGION_FRACTION if test_fraction is None else float(test_fraction)
    if vf < 0 or tf < 0 or vf + tf >= 0.8 or vf == 0:
        raise UsageError(
            f"region hold-out needs a validation fraction > 0 and fractions summing below 0.8, "
            f"got {vf} and {tf}"
        )
    gap_rows = int(region_gap_sites) if region_gap_sites > 0 else int(receptive_field)
    block = int(region_block_sites) or default_block_sites(segment_length, gap_rows)
    regions, parts = region_split(
        positions,
        segment_length,
        val_fraction=vf,
        test_fraction=tf,
        block_sites=block,
        gap_rows=gap_rows,
        gap_bp=int(read_gap_bp),
    )
    if not regions["val"] or (tf > 0 and not regions["test"]):
        raise UsageError(
            "no chromosome is long enough for held-out blocks with gaps of "
            f"{gap_rows} sites and {read_gap_bp} bp (largest has {max(n_sites.values(), default=0)} "
            "sites); use --split fraction or smaller --region-gap-sites"
        )
    return SplitPlan(
        "regions", [], [], parts, regions=regions, note=note, gap_rows=gap_rows, gap_bp=read_gap_bp
    )


def _matches(name: str, available: Sequence[str]) -> bool:
    try:
        match_chromosomes([name], available)
    except UsageError:
        return False
    return True
