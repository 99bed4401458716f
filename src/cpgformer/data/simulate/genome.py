"""CpG sites and the methylation landscape of a simulated genome: sequences (FASTA or synthetic),
CpG positions, MspI fragments, CpG density and the per-chromosome model of regions and cell types."""

from __future__ import annotations

import gzip
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cpgformer.codes import CODE_A, CODE_C, CODE_G, CODE_T, encode_sequence
from cpgformer.data.simulate.config import Protocol, SimulationConfig
from cpgformer.errors import InputError, UsageError

log = logging.getLogger(__name__)


def read_fasta(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """Read a plain or gzip FASTA (detected by magic bytes) into ``{name: int8 nucleotide codes}``."""
    p = Path(path)
    try:
        with open(p, "rb") as fh:
            magic = fh.read(2)
    except OSError as exc:
        raise InputError(p, None, f"cannot read FASTA: {exc.strerror or exc}") from exc
    opener = gzip.open if magic == b"\x1f\x8b" else open
    records: dict[str, np.ndarray] = {}
    name: str | None = None
    parts: list[bytes] = []

    def flush() -> None:
        if name is not None:
            records[name] = encode_sequence(b"".join(parts))

    with opener(p, "rb") as fh:
        for lineno, raw in enumerate(fh, start=1):
            line = raw.strip()
            if line.startswith(b">"):
                flush()
                words = line[1:].split()
                if not words:
                    raise InputError(p, lineno, "FASTA header without a name")
                name = words[0].decode("ascii", errors="replace")
                if name in records:
                    raise InputError(p, lineno, f"duplicate FASTA record {name!r}")
                parts = []
            elif line:
                if name is None:
                    raise InputError(p, lineno, "sequence before the first '>' header")
                parts.append(line)
    flush()
    if not records:
        raise InputError(p, None, "no FASTA records found")
    return records


def synthetic_genome(
    length: int, seed: int, config: SimulationConfig | None = None, name: str = "chrS"
) -> dict[str, np.ndarray]:
    """A random sequence with mammalian CpG depletion and CpG-island-like dense regions.

    Background: GC 41 % and only 22 % of the CpGs a random sequence would have (CpG o/e ~0.2); islands
    (``island_min``–``island_max`` bp, one per ``island_spacing`` bp on average): GC 65 %, 90 % of CpGs kept
    (the ``background_*`` and ``island_*`` fields of :class:`SimulationConfig`).
    """
    cfg = config or SimulationConfig()
    if length < 10:
        raise UsageError("--genome-length must be at least 10 bp")
    rng = np.random.default_rng(np.random.SeedSequence([seed, 7]))
    n_islands = rng.poisson(length / cfg.island_spacing)
    starts = rng.integers(0, max(1, length - cfg.island_min), n_islands)
    lens = rng.integers(cfg.island_min, cfg.island_max + 1, n_islands)
    island = np.zeros(length + 1, dtype=np.int32)
    np.add.at(island, starts, 1)
    np.add.at(island, np.minimum(starts + lens, length), -1)
    in_island = np.cumsum(island[:-1]) > 0
    gc = np.where(in_island, cfg.island_gc, cfg.background_gc)
    u = rng.random(length)
    seq = np.full(length, CODE_T, dtype=np.int8)
    seq[u < gc + (1 - gc) / 2] = CODE_A
    seq[u < gc] = CODE_G
    seq[u < gc / 2] = CODE_C
    cg = np.flatnonzero((seq[:-1] == CODE_C) & (seq[1:] == CODE_G))
    keep = np.where(in_island[cg], cfg.island_cpg_keep, cfg.background_cpg_keep)
    drop = cg[rng.random(cg.size) >= keep]
    seq[drop + 1] = CODE_A
    return {name: seq}


def cpg_positions(codes: np.ndarray) -> np.ndarray:
    """0-based positions of every CpG (C followed by G) in an int8 code array."""
    codes = np.asarray(codes)
    return np.flatnonzero((codes[:-1] == CODE_C) & (codes[1:] == CODE_G)).astype(np.int64)


def mspi_fragments(codes: np.ndarray, min_len: int, max_len: int) -> tuple[np.ndarray, np.ndarray]:
    """Size-selected MspI fragments ``[start, end)`` (0-based): the enzyme cuts C^CGG on the + strand."""
    codes = np.asarray(codes)
    if codes.size < 4:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    site = np.flatnonzero(
        (codes[:-3] == CODE_C)
        & (codes[1:-2] == CODE_C)
        & (codes[2:-1] == CODE_G)
        & (codes[3:] == CODE_G)
    )
    cuts = site + 1
    starts, ends = cuts[:-1], cuts[1:]
    lens = ends - starts
    sel = (lens >= min_len) & (lens <= max_len)
    return starts[sel].astype(np.int64), ends[sel].astype(np.int64)


def local_density(positions: np.ndarray, window: int) -> np.ndarray:
    """Number of CpGs (the site included) within ``±window`` bp of each position."""
    positions = np.asarray(positions, dtype=np.int64)
    hi = np.searchsorted(positions, positions + window, side="right")
    lo = np.searchsorted(positions, positions - window, side="left")
    return (hi - lo).astype(np.int32)


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, 1e-4, 1 - 1e-4)
    return np.log(p / (1 - p))


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


@dataclass
class ChromModel:
    """Everything about one chromosome that is shared by all cells."""

    name: str
    length: int
    positions: np.ndarray  # int64 [n_sites]
    density: np.ndarray  # int32 [n_sites]
    region: np.ndarray  # int64 [n_sites] region index of each site
    bulk: np.ndarray  # float32 [n_sites] bulk methylation probability
    prob: np.ndarray  # float32 [K, n_sites] per-type methylation probability
    logit: np.ndarray  # float32 [K, n_sites] logit of prob (clipped to 1e-4)
    keep_prob: np.ndarray  # float32 [n_sites] exp(-gap / correlation_length); 0 at the first site
    dmr: np.ndarray  # bool [K, n_regions] regions where type k deviates from the bulk
    fragments: tuple[np.ndarray, np.ndarray] | None  # MspI fragments (scrrbs)
    dense_anchor: np.ndarray  # int64 positions of dense sites (for enrichment)

    @property
    def n_sites(self) -> int:
        return int(self.positions.size)


def _chrom_model(
    name: str,
    codes: np.ndarray,
    n_types: int,
    cfg: SimulationConfig,
    protocol: Protocol,
    rng: np.random.Generator,
) -> ChromModel:
    pos = cpg_positions(codes)
    n = pos.size
    dens = local_density(pos, cfg.density_window)
    base = cfg.dense_level + (cfg.sparse_level - cfg.dense_level) / (
        1.0 + np.exp((dens - cfg.density_midpoint) / cfg.density_scale)
    )
    length = int(codes.size)
    # regions of region_min..region_max bp tiling the chromosome
    n_draw = length // cfg.region_min + 2
    bounds = np.cumsum(rng.integers(cfg.region_min, cfg.region_max + 1, n_draw))
    bounds = bounds[bounds < length]
    n_regions = bounds.size + 1
    region = np.searchsorted(bounds, pos, side="right").astype(np.int64)
    region_offset = rng.normal(0.0, cfg.region_sd, n_regions)
    lmr = rng.random(n_regions) < cfg.lmr_fraction
    bulk = _sigmoid(_logit(base) + region_offset[region] * (base > 0.2))
    bulk = np.where(lmr[region] & (base > 0.2), bulk * cfg.lmr_factor, bulk)
    # cell types: each deviates in dmr_fraction of the regions by |delta| >= 0.5
    counts = np.bincount(region, minlength=n_regions)
    mean_bulk = np.bincount(region, weights=bulk, minlength=n_regions) / np.maximum(counts, 1)
    prob = np.empty((n_types, n), dtype=np.float32)
    dmr = np.zeros((n_types, n_regions), dtype=bool)
    # differential regions are drawn among methylated-leaning regions (CpG-island cores stay unmethylated
    # in every type), with a rate that keeps the fraction of all regions at dmr_fraction
    candidate = (counts > 0) & (mean_bulk >= 0.3)
    rate = min(1.0, cfg.dmr_fraction * n_regions / max(int(candidate.sum()), 1))
    for k in range(n_types):
        dmr[k] = (rng.random(n_regions) < rate) & candidate
        t = rng.random(n_regions)
        level = np.where(
            mean_bulk >= 0.5,
            (mean_bulk - 0.5) * t,
            mean_bulk + 0.5 + (0.5 - mean_bulk) * t,
        )
        prob[k] = np.where(dmr[k][region], level[region], bulk)
    gaps = np.diff(pos).astype(np.float64)
    keep_prob = np.concatenate([[0.0], np.exp(-gaps / cfg.correlation_length)])
    fragments = None
    if protocol.kind == "mspi":
        fragments = mspi_fragments(codes, protocol.fragment_min, protocol.fragment_max)
    dense_anchor = pos[dens > 30]
    return ChromModel(
        name=name,
        length=length,
        positions=pos,
        density=dens,
        region=region,
        bulk=bulk.astype(np.float32),
        prob=prob,
        logit=_logit(prob).astype(np.float32),
        keep_prob=keep_prob.astype(np.float32),
        dmr=dmr,
        fragments=fragments,
        dense_anchor=dense_anchor,
    )
