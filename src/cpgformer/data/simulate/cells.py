"""Simulated cells: their types, methylation states and reads, and :func:`simulate` itself."""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from cpgformer.data.simulate.config import QC_KINDS, Protocol, SimulationConfig
from cpgformer.data.simulate.genome import (
    ChromModel,
    _chrom_model,
    _sigmoid,
    read_fasta,
    synthetic_genome,
)
from cpgformer.errors import UsageError
from cpgformer.io.store import ChromArrays
from cpgformer.utils.progress import progress

log = logging.getLogger(__name__)


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
