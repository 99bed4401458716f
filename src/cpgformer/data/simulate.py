"""Simulate single-cell methylomes with known truth.

The simulator reproduces the statistics that matter for imputation (see ``docs/simulation.md``):

* **Sequence-driven methylation.** CpG sites come from a real sequence (FASTA) or a synthetic genome with
  CpG-island-like dense regions. The number of CpGs within ±250 bp sets the bulk methylation level: dense
  regions (> 30 CpGs) are ~1–4 % methylated, sparse regions 65–80 %.
* **Regions and cell types.** Each chromosome is cut into regions of 0.5–3 kb with their own bulk offset (a
  few are low-methylated, enhancer-like). ``K`` cell types share this bulk profile and each deviates from it in
  ``dmr_fraction`` of the regions by at least 0.5. Every cell has a global offset (SD ~2.5 points).
* **Spatial correlation.** A cell's state at site ``i`` is ``u_i < p_i`` where ``p_i`` is the cell's
  methylation probability and ``u`` a latent uniform variable that is redrawn between consecutive CpGs with
  probability ``1 - exp(-d / correlation_length)`` (``d`` in bp) and otherwise kept. This gives a two-state
  process with exact marginals ``p_i`` whose unmethylated runs last ``correlation_length / p`` bp. A fraction
  ``resample`` of the sites is redrawn independently (short-range discordance).
* **Read-structured missingness.** Fragments of 100–300 bp (``scbs``, ``snmc``) or size-selected MspI
  fragments (``scrrbs``, cut at C^CGG) mark every CpG inside them as observed on one strand; the number of reads
  per fragment is ``1 + Poisson(extra_reads)``; per-cell coverage varies ~2-fold (log-normal factor).
* **Noise.** Each read of an unmethylated C is called methylated with probability ``non_conversion``
  (default 1 %). Optional QC-failure cells: ``low_methylation`` (global level ~0.15 of normal) and
  ``no_correlation`` (every site drawn independently).

Coordinates: a site is the 0-based position of the + strand C. Files written by :func:`write_simulation` use
Bismark coverage conventions (1-based, start == end, + strand C at p+1 and − strand C at p+2 in 1-based terms).
Every random draw comes from a generator seeded by ``(seed, purpose, cell)``, so a cell's data does not
depend on how the work is split, and the same seed gives byte-identical files.
"""

from __future__ import annotations

import dataclasses
import gzip
import io
import json
import logging
import os
import zipfile
import zlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from cpgformer.codes import CODE_A, CODE_C, CODE_G, CODE_T, encode_sequence
from cpgformer.errors import InputError, UsageError
from cpgformer.utils.atomic import atomic_dir
from cpgformer.utils.progress import progress

if TYPE_CHECKING:
    from cpgformer.io.store import ChromArrays

log = logging.getLogger(__name__)

PROTOCOL_NAMES = ("scbs", "scrrbs", "snmc")
QC_KINDS = ("low_methylation", "no_correlation")
TRUTH_FORMAT = "cpgformer-simulation-truth"


@dataclass(frozen=True)
class Protocol:
    """How reads sample a cell's methylome.

    ``kind`` ``"fragments"``: random fragments of ``fragment_min``–``fragment_max`` bp; ``coverage`` is the
    expected fraction of CpGs observed in a median cell. ``kind`` ``"mspi"``: the MspI fragments (C^CGG cuts)
    whose length lies in ``fragment_min``–``fragment_max`` are the only ones sequenced; ``coverage`` is the
    probability that a median cell captures one strand of such a fragment.
    """

    name: str
    kind: str
    fragment_min: int
    fragment_max: int
    coverage: float
    extra_reads: float
    coverage_sd: float


PROTOCOLS: dict[str, Protocol] = {
    "scbs": Protocol("scbs", "fragments", 100, 300, 0.10, 0.17, 0.15),
    "scrrbs": Protocol("scrrbs", "mspi", 40, 220, 0.30, 0.25, 0.15),
    "snmc": Protocol("snmc", "fragments", 100, 300, 0.03, 0.10, 0.30),
}


@dataclass(frozen=True)
class SimulationConfig:
    """Every parameter of the generative model (defaults reproduce the targets in ``docs/simulation.md``)."""

    protocol: str = "scbs"
    # sequence -> bulk methylation
    density_window: int = 250
    sparse_level: float = 0.8
    dense_level: float = 0.025
    density_midpoint: float = 18.0
    density_scale: float = 2.5
    # regions and cell types
    region_min: int = 500
    region_max: int = 3000
    region_sd: float = 0.5
    lmr_fraction: float = 0.05
    lmr_factor: float = 0.35
    dmr_fraction: float = 0.075
    cell_offset_sd: float = 0.025
    # spatial process
    correlation_length: float = 340.0
    resample: float = 0.08
    # reads and noise
    coverage: float | None = None
    coverage_sd: float | None = None
    extra_reads: float | None = None
    dense_enrichment: float = 1.0
    enrichment_flank: int = 1000
    non_conversion: float = 0.01
    false_unmethylated: float = 0.0
    # QC failures
    qc_failures: int = 0
    qc_low_factor: float = 0.15
    # synthetic genome
    island_spacing: float = 50_000.0
    island_min: int = 500
    island_max: int = 2000
    island_gc: float = 0.65
    island_cpg_keep: float = 0.9
    background_gc: float = 0.41
    background_cpg_keep: float = 0.22

    def protocol_params(self) -> Protocol:
        if self.protocol not in PROTOCOLS:
            raise UsageError(
                f"unknown protocol {self.protocol!r} (choose one of {', '.join(PROTOCOL_NAMES)})"
            )
        base = PROTOCOLS[self.protocol]
        return dataclasses.replace(
            base,
            coverage=base.coverage if self.coverage is None else self.coverage,
            coverage_sd=base.coverage_sd if self.coverage_sd is None else self.coverage_sd,
            extra_reads=base.extra_reads if self.extra_reads is None else self.extra_reads,
        )

    def validate(self) -> None:
        self.protocol_params()
        checks = [
            (
                0 <= self.dense_level <= 1 and 0 <= self.sparse_level <= 1,
                "levels must be in [0, 1]",
            ),
            (self.correlation_length > 0, "correlation_length must be > 0"),
            (0 <= self.resample <= 1, "resample must be in [0, 1]"),
            (0 <= self.dmr_fraction <= 1, "dmr_fraction must be in [0, 1]"),
            (0 <= self.lmr_fraction <= 1, "lmr_fraction must be in [0, 1]"),
            (0 <= self.non_conversion < 0.5, "non_conversion must be in [0, 0.5)"),
            (0 <= self.false_unmethylated < 0.5, "false_unmethylated must be in [0, 0.5)"),
            (0 < self.region_min <= self.region_max, "need 0 < region_min <= region_max"),
            (self.dense_enrichment >= 1, "dense_enrichment must be >= 1"),
            (self.qc_failures >= 0, "qc_failures must be >= 0"),
        ]
        cov = self.protocol_params().coverage
        checks.append((0 < cov < 1, "coverage must be in (0, 1)"))
        for ok, msg in checks:
            if not ok:
                raise UsageError(msg)


# ----------------------------------------------------------------------------------------- genome


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


# ------------------------------------------------------------------------------------------ cells


@dataclass
class CellInfo:
    """Per-cell parameters drawn once per simulation."""

    names: list[str]
    cell_type: np.ndarray  # int64 [n_cells] index into type_names
    type_names: list[str]
    global_offset: np.ndarray  # float64 [n_cells] logit-scale offset
    coverage_factor: np.ndarray  # float64 [n_cells]
    qc: list[str]  # "ok" or one of QC_KINDS


@dataclass
class ChromCalls:
    """Observed calls of all cells on one chromosome, one row per (cell, site, strand).

    Rows are sorted by cell, then site, then strand (+ before −). ``site`` indexes the chromosome's
    ``positions``; ``strand`` is +1 (C at the site) or −1 (C at site + 1).
    """

    cell: np.ndarray  # int32
    site: np.ndarray  # int64
    strand: np.ndarray  # int8
    mc: np.ndarray  # int32
    cov: np.ndarray  # int32


@dataclass
class Simulation:
    """A simulated data set held in memory (use for tests and small runs).

    ``truth[k]`` is the int8 [n_sites, n_cells] true state (0/1) of every CpG of chromosome ``k``;
    ``calls[k]`` the observed reads; ``probability[k]`` the float32 [K, n_sites] methylation probability of
    each cell type before cell offsets; ``bulk[k]`` the shared bulk profile; ``region[k]`` each site's region;
    ``density[k]`` the number of CpGs within ±250 bp.
    """

    chroms: list[str]
    positions: list[np.ndarray]
    truth: list[np.ndarray]
    calls: list[ChromCalls]
    probability: list[np.ndarray]
    density: list[np.ndarray]
    bulk: list[np.ndarray]
    region: list[np.ndarray]
    cells: CellInfo
    config: SimulationConfig
    seed: int
    sequences: dict[str, np.ndarray] | None = field(default=None, repr=False)
    synthetic: bool = False

    @property
    def cell_names(self) -> list[str]:
        return self.cells.names

    @property
    def n_cells(self) -> int:
        return len(self.cells.names)

    @property
    def cell_types(self) -> np.ndarray:
        return self.cells.cell_type

    def pooled(self, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Strand-pooled calls of chromosome ``k`` as CSR by site: ``(indptr, cell, mc, cov)``.

        ``indptr`` has ``n_sites + 1`` entries over all CpGs of the chromosome; cells sorted within a site.
        """
        c = self.calls[k]
        return _pool_coo(self.positions[k].size, c.cell, c.site, c.mc, c.cov)

    def observed_states(self, k: int) -> np.ndarray:
        """Dense int8 [n_sites, n_cells]: -1 missing, else 1 when mc/cov >= 0.5 (strands pooled)."""
        indptr, cell, mc, cov = self.pooled(k)
        out = np.full((self.positions[k].size, self.n_cells), -1, dtype=np.int8)
        site = np.repeat(np.arange(self.positions[k].size), np.diff(indptr))
        out[site, cell] = (2 * mc >= cov).astype(np.int8)
        return out


def _pool_coo(
    n_sites: int, cell: np.ndarray, site: np.ndarray, mc: np.ndarray, cov: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per-strand rows (any order) -> strand-pooled CSR by site ``(indptr, cell, mc, cov)``."""
    order = np.lexsort((cell, site))
    site, cell = site[order], cell[order]
    first = np.ones(site.size, dtype=bool)
    first[1:] = (site[1:] != site[:-1]) | (cell[1:] != cell[:-1])
    starts = np.flatnonzero(first)
    mc_out = np.add.reduceat(mc[order].astype(np.int64), starts) if starts.size else starts
    cov_out = np.add.reduceat(cov[order].astype(np.int64), starts) if starts.size else starts
    indptr = np.zeros(n_sites + 1, dtype=np.int64)
    np.cumsum(np.bincount(site[starts], minlength=n_sites), out=indptr[1:])
    return indptr, cell[starts].astype(np.int32), mc_out.astype(np.int32), cov_out.astype(np.int32)


def _chrom_arrays(
    name: str,
    positions: np.ndarray,
    pooled: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray],
) -> ChromArrays:
    """Store arrays for one chromosome: the sites observed in at least one cell, threshold labels."""
    from cpgformer.io.store import ChromArrays

    indptr, cell, mc, cov = pooled
    counts = np.diff(indptr)
    keep = counts > 0
    new_indptr = np.zeros(int(keep.sum()) + 1, dtype=np.int64)
    np.cumsum(counts[keep], out=new_indptr[1:])
    return ChromArrays(
        name=name,
        positions=positions[keep],
        indptr=new_indptr,
        cell=cell,
        mc=mc,
        cov=cov,
        label=(2 * mc.astype(np.int64) >= cov).astype(np.int8),
    )


class _StoreCollector:
    """Strand-pooled calls of every cell (4 × int32 per call), kept until the store is written."""

    def __init__(self, models: list[ChromModel]) -> None:
        self.models = models
        self.parts: list[list[tuple]] = [[] for _ in models]

    def add(self, k: int, cell: int, site: np.ndarray, mc: np.ndarray, cov: np.ndarray) -> None:
        """One cell's rows of chromosome ``k`` (sorted by site, then strand)."""
        if site.size == 0:
            return
        first = np.ones(site.size, dtype=bool)
        first[1:] = site[1:] != site[:-1]
        starts = np.flatnonzero(first)
        self.parts[k].append(
            (
                cell,
                site[starts].astype(np.int32),
                np.add.reduceat(mc, starts).astype(np.int32),
                np.add.reduceat(cov, starts).astype(np.int32),
            )
        )

    def chrom_arrays(self, k: int) -> ChromArrays:
        """CSR by site (cells ascending within a site: cells were added in order); frees the parts."""
        parts, self.parts[k] = self.parts[k], []
        m = self.models[k]
        sizes = np.array([p[1].size for p in parts], dtype=np.int64)
        cell = np.repeat(np.array([p[0] for p in parts], dtype=np.int32), sizes)
        site = np.concatenate([p[1] for p in parts] or [np.zeros(0, np.int32)])
        mc = np.concatenate([p[2] for p in parts] or [np.zeros(0, np.int32)])
        cov = np.concatenate([p[3] for p in parts] or [np.zeros(0, np.int32)])
        del parts
        order = np.argsort(site, kind="stable")
        site, cell, mc, cov = site[order], cell[order], mc[order], cov[order]
        del order
        indptr = np.zeros(m.n_sites + 1, dtype=np.int64)
        np.cumsum(np.bincount(site, minlength=m.n_sites), out=indptr[1:])
        return _chrom_arrays(m.name, m.positions, (indptr, cell, mc, cov))


def _store_metadata(cfg: SimulationConfig, seed: int, cells: CellInfo) -> tuple[dict, dict]:
    cell_info = {
        "name": list(cells.names),
        "source_file": [f"simulated:{n}" for n in cells.names],
        "cell_type": [cells.type_names[t] for t in cells.cell_type],
        "qc": list(cells.qc),
    }
    extra = {
        "parameters": {"simulation": dataclasses.asdict(cfg), "seed": seed},
        "inputs": ["simulated"],
        "fasta": None,
        "strand_rule": "pooled",
        "binarisation": {"rule": "threshold", "min_cov": 1},
    }
    return extra, cell_info


def _cell_info(n_cells: int, type_names: list[str], cfg: SimulationConfig, seed: int) -> CellInfo:
    rng = np.random.default_rng(np.random.SeedSequence([seed, 1]))
    k = len(type_names)
    cell_type = rng.permutation(np.arange(n_cells) % k)
    protocol = cfg.protocol_params()
    coverage_factor = np.exp(rng.normal(0.0, protocol.coverage_sd, n_cells))
    global_offset = rng.normal(0.0, 1.0, n_cells)  # scaled per genome in _scale_offsets
    qc = ["ok"] * n_cells
    n_fail = min(cfg.qc_failures, n_cells)
    if n_fail:
        for j, idx in enumerate(sorted(rng.choice(n_cells, n_fail, replace=False).tolist())):
            qc[idx] = QC_KINDS[j % len(QC_KINDS)]
    width = max(5, len(str(n_cells)))
    names = [f"cell_{i + 1:0{width}d}" for i in range(n_cells)]
    return CellInfo(names, cell_type, type_names, global_offset, coverage_factor, qc)


def _cell_states(
    cm: ChromModel, cell: int, cells: CellInfo, cfg: SimulationConfig, rng: np.random.Generator
) -> np.ndarray:
    n = cm.n_sites
    t = cells.cell_type[cell]
    offset = np.float32(cells.global_offset[cell])
    p = cm.prob[t] if offset == 0 else _sigmoid(cm.logit[t] + offset)
    qc = cells.qc[cell]
    if qc == "low_methylation":
        p = p * np.float32(cfg.qc_low_factor)
    f32 = np.float32
    keep = rng.random(n, dtype=f32) < cm.keep_prob
    fresh = rng.random(n, dtype=f32)
    idx = np.where(keep, 0, np.arange(n, dtype=np.int32))
    np.maximum.accumulate(idx, out=idx)
    u = fresh[idx]
    redraw_u = rng.random(n, dtype=f32)
    redraw = rng.random(n, dtype=f32) < (1.0 if qc == "no_correlation" else cfg.resample)
    u = np.where(redraw, redraw_u, u)
    return (u < p).astype(np.int8)


def _expand(
    positions: np.ndarray,
    starts: np.ndarray,
    ends: np.ndarray,
    strand: np.ndarray,
    copies: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """CpGs inside fragments -> unique (site, strand) with summed reads, sorted by site then strand."""
    lo = np.searchsorted(positions, starts, side="left")
    hi = np.searchsorted(positions, ends, side="left")
    counts = hi - lo
    total = int(counts.sum())
    if total == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int8), np.zeros(0, np.int32)
    frag = np.repeat(np.arange(counts.size), counts)
    first = np.cumsum(counts) - counts
    site = lo[frag] + (np.arange(total) - first[frag])
    key = site * 2 + strand[frag]
    uniq, inv = np.unique(key, return_inverse=True)
    reads = np.bincount(inv, weights=copies[frag], minlength=uniq.size).astype(np.int32)
    return uniq // 2, np.where(uniq % 2 == 0, 1, -1).astype(np.int8), reads


def _cell_reads(
    cm: ChromModel,
    cell: int,
    cells: CellInfo,
    cfg: SimulationConfig,
    protocol: Protocol,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    factor = cells.coverage_factor[cell]
    if protocol.kind == "mspi":
        assert cm.fragments is not None
        fs, fe = cm.fragments
        q = min(0.95, protocol.coverage * factor)
        hit = rng.random((fs.size, 2)) < q
        fidx, sidx = np.nonzero(hit)
        starts, ends = fs[fidx], fe[fidx]
        strand = sidx.astype(np.int64)
        copies = 1 + rng.poisson(protocol.extra_reads, fidx.size)
    else:
        f = min(0.95, protocol.coverage * factor)
        mean_len = 0.5 * (protocol.fragment_min + protocol.fragment_max)
        rate = -np.log1p(-f) / mean_len
        span = cm.length + protocol.fragment_max
        n_frag = rng.poisson(rate * span)
        starts = np.sort(rng.integers(-protocol.fragment_max, cm.length, n_frag))
        lens = rng.integers(protocol.fragment_min, protocol.fragment_max + 1, n_frag)
        strand = rng.integers(0, 2, n_frag)
        copies = 1 + rng.poisson(protocol.extra_reads, n_frag)
        thin = rng.random(n_frag)
        ends = starts + lens
        if cfg.dense_enrichment > 1:
            mid = starts + lens // 2
            anchors = cm.dense_anchor
            if anchors.size:
                j = np.clip(np.searchsorted(anchors, mid), 1, anchors.size - 1)
                near = np.minimum(np.abs(anchors[j] - mid), np.abs(anchors[j - 1] - mid))
                near = near <= cfg.enrichment_flank
            else:
                near = np.zeros(n_frag, dtype=bool)
            sel = near | (thin < 1.0 / cfg.dense_enrichment)
            starts, ends, strand, copies = starts[sel], ends[sel], strand[sel], copies[sel]
    return _expand(cm.positions, starts, ends, strand, copies)


def _simulate_cell(
    models: list[ChromModel],
    cell: int,
    cells: CellInfo,
    cfg: SimulationConfig,
    protocol: Protocol,
    seed: int,
) -> list[tuple[np.ndarray, tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]]]:
    """One cell on every chromosome: ``[(truth int8 [n_sites], (site, strand, mc, cov, reads))]``."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, 2, cell]))
    out = []
    for cm in models:
        truth = _cell_states(cm, cell, cells, cfg, rng)
        site, strand, cov = _cell_reads(cm, cell, cells, cfg, protocol, rng)
        p_call = np.where(truth[site] == 1, 1.0 - cfg.false_unmethylated, cfg.non_conversion)
        mc = rng.binomial(cov, p_call).astype(np.int32)
        out.append((truth, (site, strand, mc, cov)))
    return out


@dataclass
class _Prepared:
    models: list[ChromModel]
    cells: CellInfo
    cfg: SimulationConfig
    protocol: Protocol
    seed: int
    sequences: dict[str, np.ndarray]
    synthetic: bool


def _prepare(
    genome: str | os.PathLike[str] | np.ndarray | Mapping[str, np.ndarray] | int,
    n_cells: int,
    n_cell_types: int,
    seed: int,
    cfg: SimulationConfig,
) -> _Prepared:
    cfg.validate()
    if n_cells < 1:
        raise UsageError("need at least one cell")
    if n_cell_types < 1:
        raise UsageError("need at least one cell type")
    synthetic = False
    if isinstance(genome, (int, np.integer)) and not isinstance(genome, bool):
        sequences = synthetic_genome(int(genome), seed, cfg)
        synthetic = True
    elif isinstance(genome, np.ndarray):
        sequences = {"chrS": np.asarray(genome, dtype=np.int8)}
    elif isinstance(genome, Mapping):
        sequences = {str(k): np.asarray(v, dtype=np.int8) for k, v in genome.items()}
    else:
        sequences = read_fasta(genome)
    protocol = cfg.protocol_params()
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0]))
    models = [
        _chrom_model(name, codes, n_cell_types, cfg, protocol, rng)
        for name, codes in sequences.items()
    ]
    models = [m for m in models if m.n_sites > 0]
    if not models:
        raise UsageError("the genome contains no CpG sites")
    type_names = [f"type_{k + 1}" for k in range(n_cell_types)]
    cells = _cell_info(n_cells, type_names, cfg, seed)
    # logit-scale offsets that move global methylation by cell_offset_sd on average
    all_bulk = np.concatenate([m.bulk for m in models]).astype(np.float64)
    slope = float(np.mean(all_bulk * (1 - all_bulk)))
    cells.global_offset = cells.global_offset * (cfg.cell_offset_sd / max(slope, 1e-3))
    n_sites = sum(m.n_sites for m in models)
    log.info(
        "simulating %d cells (%d types, protocol %s) on %d chromosomes, %d CpGs",
        n_cells,
        n_cell_types,
        cfg.protocol,
        len(models),
        n_sites,
    )
    return _Prepared(models, cells, cfg, protocol, seed, sequences, synthetic)


def _make_config(
    config: SimulationConfig | None, protocol: str | None, overrides: dict
) -> SimulationConfig:
    cfg = config or SimulationConfig()
    if protocol is not None:
        overrides = {"protocol": protocol, **overrides}
    if overrides:
        names = {f.name for f in dataclasses.fields(SimulationConfig)}
        unknown = sorted(set(overrides) - names)
        if unknown:
            raise UsageError(f"unknown simulation parameter(s): {', '.join(unknown)}")
        cfg = dataclasses.replace(cfg, **overrides)
    return cfg


def simulate(
    genome: str | os.PathLike[str] | np.ndarray | Mapping[str, np.ndarray] | int,
    n_cells: int = 20,
    n_cell_types: int = 2,
    protocol: str | None = None,
    seed: int = 0,
    config: SimulationConfig | None = None,
    **overrides: object,
) -> Simulation:
    """Simulate ``n_cells`` single-cell methylomes and return every array in memory.

    ``genome`` is a FASTA path, an int8 code array (one chromosome ``chrS``), a ``{name: codes}`` mapping,
    or an int: the length of a synthetic genome. ``overrides`` set fields of :class:`SimulationConfig`.
    Memory: the dense truth needs n_sites × n_cells bytes; use :func:`simulate_to_directory` for large runs.
    """
    cfg = _make_config(config, protocol, dict(overrides))
    prep = _prepare(genome, n_cells, n_cell_types, seed, cfg)
    truth = [np.empty((m.n_sites, n_cells), dtype=np.int8) for m in prep.models]
    parts: list[list[tuple]] = [[] for _ in prep.models]
    for cell in progress(range(n_cells), desc="simulating cells", unit="cell"):
        for k, (states, (site, strand, mc, cov)) in enumerate(
            _simulate_cell(prep.models, cell, prep.cells, cfg, prep.protocol, seed)
        ):
            truth[k][:, cell] = states
            parts[k].append((np.full(site.size, cell, np.int32), site, strand, mc, cov))
    calls = []
    for k in range(len(prep.models)):
        cols = list(zip(*parts[k])) if parts[k] else [[]] * 5
        calls.append(
            ChromCalls(
                cell=np.concatenate(cols[0]).astype(np.int32),
                site=np.concatenate(cols[1]).astype(np.int64),
                strand=np.concatenate(cols[2]).astype(np.int8),
                mc=np.concatenate(cols[3]).astype(np.int32),
                cov=np.concatenate(cols[4]).astype(np.int32),
            )
        )
    return Simulation(
        chroms=[m.name for m in prep.models],
        positions=[m.positions for m in prep.models],
        truth=truth,
        calls=calls,
        probability=[m.prob for m in prep.models],
        density=[m.density for m in prep.models],
        bulk=[m.bulk for m in prep.models],
        region=[m.region for m in prep.models],
        cells=prep.cells,
        config=cfg,
        seed=seed,
        sequences=prep.sequences,
        synthetic=prep.synthetic,
    )


# ---------------------------------------------------------------------------------------- writing


def _tails(mc: np.ndarray, cov: np.ndarray) -> list[str]:
    """``"<percent>\t<mc>\t<unmethylated>\n"`` per row, formatted once per distinct (mc, cov)."""
    mc = np.asarray(mc, dtype=np.int64)
    cov = np.asarray(cov, dtype=np.int64)
    if mc.size == 0:
        return []
    key = mc * (int(cov.max()) + 1) + cov
    uniq, inv = np.unique(key, return_inverse=True)
    first = np.zeros(uniq.size, dtype=np.int64)
    first[inv[::-1]] = np.arange(key.size)[::-1]
    table = [
        f"{100.0 * m / c:.6f}\t{m}\t{c - m}\n"
        for m, c in zip(mc[first].tolist(), cov[first].tolist())
    ]
    return [table[i] for i in inv.tolist()]


def format_bismark_cov(
    chrom_calls: Sequence[tuple[str, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]],
) -> bytes:
    """Bismark coverage text for one cell.

    ``chrom_calls`` items are ``(chrom, positions, site, strand, mc, cov)`` with 0-based + C ``positions``;
    a + strand call is written at ``pos + 1`` and a − strand call at ``pos + 2`` (1-based, start == end).
    """
    out: list[str] = []
    for chrom, positions, site, strand, mc, cov in chrom_calls:
        coord = (positions[site] + np.where(strand > 0, 1, 2)).tolist()
        out.extend([f"{chrom}\t{p}\t{p}\t{t}" for p, t in zip(coord, _tails(mc, cov))])
    return "".join(out).encode("ascii")


def _gzip_bytes(data: bytes, level: int = 1) -> bytes:
    """Deterministic gzip (mtime 0, no file name in the header)."""
    comp = zlib.compressobj(level, zlib.DEFLATED, 31)
    return comp.compress(data) + comp.flush()


def _write_npz(path: Path, arrays: Mapping[str, np.ndarray]) -> None:
    """An ``.npz`` readable by :func:`numpy.load`, byte-identical for identical arrays (fixed zip times)."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
        for key, arr in arrays.items():
            buf = io.BytesIO()
            np.lib.format.write_array(buf, np.ascontiguousarray(arr), allow_pickle=False)
            info = zipfile.ZipInfo(f"{key}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, buf.getvalue(), compresslevel=1)


def _write_fasta(path: Path, sequences: Mapping[str, np.ndarray]) -> None:
    from cpgformer.codes import decode_sequence

    with open(path, "w") as fh:
        for name, codes in sequences.items():
            fh.write(f">{name}\n")
            seq = decode_sequence(codes)
            fh.write("\n".join(seq[i : i + 60] for i in range(0, len(seq), 60)))
            fh.write("\n")


def _cell_table(cells: CellInfo) -> str:
    lines = ["cell\tcell_type\tqc\tcoverage_factor\tglobal_offset_logit\n"]
    for i, name in enumerate(cells.names):
        lines.append(
            f"{name}\t{cells.type_names[cells.cell_type[i]]}\t{cells.qc[i]}\t"
            f"{cells.coverage_factor[i]:.6f}\t{cells.global_offset[i]:.6f}\n"
        )
    return "".join(lines)


def _params_json(cfg: SimulationConfig, seed: int, n_cells: int, n_types: int, genome: str) -> str:
    from cpgformer import __version__

    doc = {
        "format": "cpgformer-simulation",
        "package_version": __version__,
        "seed": seed,
        "n_cells": n_cells,
        "n_cell_types": n_types,
        "genome": genome,
        "config": dataclasses.asdict(cfg),
        "protocol": dataclasses.asdict(cfg.protocol_params()),
    }
    return json.dumps(doc, indent=2, sort_keys=True) + "\n"


class _TruthWriter:
    """Collects true states as bits (n_sites × ceil(n_cells / 8) bytes per chromosome)."""

    def __init__(self, models: list[ChromModel], n_cells: int) -> None:
        self.n_cells = n_cells
        nbytes = (n_cells + 7) // 8
        self.bits = [np.zeros((m.n_sites, nbytes), dtype=np.uint8) for m in models]

    def set(self, k: int, cell: int, states: np.ndarray) -> None:
        self.bits[k][:, cell // 8] |= states.astype(np.uint8) << np.uint8(7 - cell % 8)

    def save(self, path: Path, models: list[ChromModel], cells: CellInfo) -> None:
        arrays: dict[str, np.ndarray] = {
            "format": np.array(TRUTH_FORMAT),
            "chroms": np.array([m.name for m in models]),
            "cells": np.array(cells.names),
            "cell_type": np.asarray(cells.cell_type, dtype=np.int64),
        }
        for k, m in enumerate(models):
            arrays[f"positions_{k}"] = m.positions
            arrays[f"truth_bits_{k}"] = self.bits[k]
            arrays[f"probability_{k}"] = m.prob
        _write_npz(path, arrays)


@dataclass
class Truth:
    """The content of ``truth.npz`` (see :func:`load_truth`)."""

    chroms: list[str]
    cells: list[str]
    cell_type: np.ndarray
    positions: list[np.ndarray]
    states: list[np.ndarray]  # int8 [n_sites, n_cells] 0/1
    probability: list[np.ndarray]  # float32 [K, n_sites]


def load_truth(path: str | os.PathLike[str]) -> Truth:
    """Read a ``truth.npz`` written by the simulator (true states unpacked to int8 [n_sites, n_cells])."""
    with np.load(path, allow_pickle=False) as z:
        if "format" not in z.files or str(z["format"].reshape(-1)[0]) != TRUTH_FORMAT:
            raise InputError(path, None, "not a cpgformer simulation truth file")
        chroms = [str(c) for c in z["chroms"]]
        cells = [str(c) for c in z["cells"]]
        n = len(cells)
        positions, states, probability = [], [], []
        for k in range(len(chroms)):
            positions.append(z[f"positions_{k}"])
            states.append(np.unpackbits(z[f"truth_bits_{k}"], axis=1, count=n).astype(np.int8))
            probability.append(z[f"probability_{k}"])
        return Truth(chroms, cells, z["cell_type"], positions, states, probability)


def _write_outputs(
    out: Path,
    prep: _Prepared,
    cell_results: Iterator[tuple[int, list]],
    genome_label: str,
    store_rows: _StoreCollector | None = None,
) -> None:
    """Write every output file; with ``store_rows`` also collect each cell's calls for a store."""
    models = prep.models
    n_cells = len(prep.cells.names)
    cells_dir = out / "cells"
    cells_dir.mkdir()
    truth = _TruthWriter(models, n_cells)
    total_rows = 0
    for cell, per_chrom in cell_results:
        items = []
        for k, (states, (site, strand, mc, cov)) in enumerate(per_chrom):
            truth.set(k, cell, states)
            items.append((models[k].name, models[k].positions, site, strand, mc, cov))
            total_rows += site.size
            if store_rows is not None:
                store_rows.add(k, cell, site, mc, cov)
        data = _gzip_bytes(format_bismark_cov(items))
        (cells_dir / f"{prep.cells.names[cell]}.cov.gz").write_bytes(data)
    truth.save(out / "truth.npz", models, prep.cells)
    (out / "cell_types.tsv").write_text(_cell_table(prep.cells))
    if prep.synthetic:
        _write_fasta(out / "genome.fa", prep.sequences)
    (out / "simulation.json").write_text(
        _params_json(prep.cfg, prep.seed, n_cells, len(prep.cells.type_names), genome_label)
    )
    log.info("%d cells, %d coverage rows", n_cells, total_rows)


def _genome_label(genome: object) -> str:
    if isinstance(genome, (int, np.integer)):
        return f"synthetic:{int(genome)}"
    if isinstance(genome, (str, os.PathLike)):
        return os.path.basename(os.fspath(genome))
    return "array"


def simulate_to_directory(
    genome: str | os.PathLike[str] | np.ndarray | Mapping[str, np.ndarray] | int,
    out_dir: str | os.PathLike[str],
    n_cells: int = 20,
    n_cell_types: int = 2,
    protocol: str | None = None,
    seed: int = 0,
    config: SimulationConfig | None = None,
    overwrite: bool = False,
    store: str | os.PathLike[str] | None = None,
    **overrides: object,
) -> Path:
    """Simulate and stream the files of :func:`write_simulation` cell by cell (bounded memory).

    Memory: the chromosome models plus n_sites × n_cells / 8 bytes of packed truth; one cell at a time.
    ``store``: also write the observed calls as a dataset store there (the same store as ``prepare`` on
    the written files); this keeps every call in memory (16 bytes each) until the end.
    """
    cfg = _make_config(config, protocol, dict(overrides))
    out = Path(out_dir)
    for target in (out, None if store is None else Path(store)):
        if target is not None and target.exists() and not overwrite:
            raise UsageError(f"{target}: already exists (choose another output or remove it)")
    prep = _prepare(genome, n_cells, n_cell_types, seed, cfg)
    store_rows = None if store is None else _StoreCollector(prep.models)

    def results() -> Iterator[tuple[int, list]]:
        for cell in progress(range(n_cells), desc="simulating cells", unit="cell"):
            yield cell, _simulate_cell(prep.models, cell, prep.cells, cfg, prep.protocol, seed)

    inputs = [genome] if isinstance(genome, (str, os.PathLike)) else []
    with atomic_dir(out, overwrite=overwrite, kind="simulation", inputs=inputs) as tmp:
        _write_outputs(tmp, prep, results(), _genome_label(genome), store_rows)
    log.info("wrote simulation to %s", out)
    if store is not None and store_rows is not None:
        from cpgformer.io.store import write_store

        collector = store_rows
        chroms = (collector.chrom_arrays(k) for k in range(len(prep.models)))
        extra, cell_info = _store_metadata(cfg, seed, prep.cells)
        write_store(
            store,
            chroms,
            prep.cells.names,
            extra,
            cell_info,
            overwrite=overwrite,
            inputs=[*inputs, out],
        )
    return out


def write_simulation(
    sim: Simulation, out_dir: str | os.PathLike[str], overwrite: bool = False
) -> Path:
    """Write a :class:`Simulation` as files (atomically, as one directory).

    ``cells/<cell>.cov.gz`` (Bismark coverage, one per cell), ``truth.npz`` (see :func:`load_truth`),
    ``cell_types.tsv`` (cell, cell_type, qc, coverage_factor, global_offset_logit), ``simulation.json`` and,
    for a synthetic genome, ``genome.fa``.
    """
    models = [
        ChromModel(
            name=name,
            length=0,
            positions=pos,
            density=dens,
            region=np.zeros(0, np.int64),
            bulk=np.zeros(0, np.float32),
            prob=prob,
            logit=prob,
            keep_prob=np.zeros(0, np.float32),
            dmr=np.zeros((0, 0), bool),
            fragments=None,
            dense_anchor=np.zeros(0, np.int64),
        )
        for name, pos, dens, prob in zip(sim.chroms, sim.positions, sim.density, sim.probability)
    ]
    prep = _Prepared(
        models,
        sim.cells,
        sim.config,
        sim.config.protocol_params(),
        sim.seed,
        sim.sequences or {},
        sim.synthetic,
    )

    def results() -> Iterator[tuple[int, list]]:
        bounds = []
        for c in sim.calls:
            bounds.append(np.searchsorted(c.cell, np.arange(sim.n_cells + 1)))
        for cell in range(sim.n_cells):
            per_chrom = []
            for k, c in enumerate(sim.calls):
                a, b = bounds[k][cell], bounds[k][cell + 1]
                per_chrom.append(
                    (sim.truth[k][:, cell], (c.site[a:b], c.strand[a:b], c.mc[a:b], c.cov[a:b]))
                )
            yield cell, per_chrom

    genome_label = (
        f"synthetic:{sum(v.size for v in sim.sequences.values())}"
        if sim.synthetic and sim.sequences
        else "simulation"
    )
    out = Path(out_dir)
    with atomic_dir(out, overwrite=overwrite, kind="simulation") as tmp:
        _write_outputs(tmp, prep, results(), genome_label)
    return out


# ------------------------------------------------------------------------------------------ store


def simulation_to_store(
    sim: Simulation, path: str | os.PathLike[str], overwrite: bool = False
) -> dict:
    """Write the observed calls of ``sim`` as a dataset store (strands pooled, threshold labels).

    As ``prepare`` does, the store holds the sites observed in at least one cell. Returns the manifest.
    """
    from cpgformer.io.store import write_store

    chroms = (
        _chrom_arrays(name, sim.positions[k], sim.pooled(k)) for k, name in enumerate(sim.chroms)
    )
    extra, cell_info = _store_metadata(sim.config, sim.seed, sim.cells)
    return write_store(path, chroms, sim.cell_names, extra, cell_info, overwrite=overwrite)


# ------------------------------------------------------------------------------------- statistics

DISTANCE_BINS = (1, 11, 26, 51, 101, 201, 401, 801, 1601, 3201, 10001)


def concordance_by_distance(
    positions: np.ndarray, states: np.ndarray, bins: Sequence[int] = DISTANCE_BINS
) -> tuple[np.ndarray, np.ndarray]:
    """P(same state) of consecutive observed CpGs of one cell, by bp distance.

    ``positions`` sorted int [n] and ``states`` 0/1 [n] of one cell on one chromosome. Returns
    ``(pairs, same)`` per bin, where bin ``j`` holds distances in ``[bins[j], bins[j+1])`` and the last bin
    everything from ``bins[-1]`` on.
    """
    positions = np.asarray(positions)
    states = np.asarray(states)
    nb = len(bins)
    if positions.size < 2:
        return np.zeros(nb, np.int64), np.zeros(nb, np.int64)
    dist = np.diff(positions)
    same = states[1:] == states[:-1]
    b = np.searchsorted(np.asarray(bins), dist, side="right") - 1
    ok = b >= 0
    pairs = np.bincount(b[ok], minlength=nb)[:nb]
    hits = np.bincount(b[ok], weights=same[ok], minlength=nb)[:nb]
    return pairs.astype(np.int64), hits.astype(np.int64)
