"""Writing a simulation: Bismark coverage files, the truth file, FASTA, parameters, and the store."""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import os
import zipfile
import zlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cpgformer import __version__
from cpgformer.codes import decode_sequence
from cpgformer.data.simulate.cells import (
    CellInfo,
    Simulation,
    _chrom_arrays,
    _make_config,
    _prepare,
    _Prepared,
    _simulate_cell,
    _store_metadata,
    _StoreCollector,
)
from cpgformer.data.simulate.config import TRUTH_FORMAT, SimulationConfig
from cpgformer.data.simulate.genome import ChromModel
from cpgformer.errors import InputError, UsageError
from cpgformer.io.store import write_store
from cpgformer.utils.atomic import atomic_dir
from cpgformer.utils.progress import progress

log = logging.getLogger(__name__)


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

    chroms = (
        _chrom_arrays(name, sim.positions[k], sim.pooled(k)) for k, name in enumerate(sim.chroms)
    )
    extra, cell_info = _store_metadata(sim.config, sim.seed, sim.cells)
    return write_store(path, chroms, sim.cell_names, extra, cell_info, overwrite=overwrite)
