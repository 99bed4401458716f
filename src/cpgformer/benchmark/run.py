"""``run_benchmark``: every model on identical hidden entries of the test chromosomes, then the report.

Flow: open the store; load the training chromosomes (all but the test ones) as dense matrices and
``fit`` every model on them; per test chromosome choose the scored entries (seeded, from the observed
pattern only), build *one* masked input and give that same input to every model; score and write
the report (:mod:`cpgformer.benchmark.report`).

Memory: chromosomes are densified (sites x cells int8), the training ones all at once -- fine for
benchmark-sized data (1e6 sites x 100 cells = 100 MB), not for whole atlases.
"""

from __future__ import annotations

import logging
import os
import time
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cpgformer.benchmark import holdout as ho
from cpgformer.benchmark.baselines import (
    BASELINE_NAMES,
    CaMeliaConfig,
    CpgformerModel,
    DeepCpGConfig,
    build_models,
)
from cpgformer.benchmark.holdout import ChromData
from cpgformer.benchmark.metrics import (
    cpg_density,
    match_tss_chromosomes,
    read_tss_bed,
    tss_distance,
)
from cpgformer.errors import UsageError

log = logging.getLogger(__name__)

PROTOCOLS = ("holdout", "exhaustive")
DEFAULT_HIDE_FRACTION = {"holdout": 0.2, "exhaustive": 1.0}


@dataclass
class BenchmarkResult:
    """What a benchmark produced (also written to ``out_dir``)."""

    out_dir: Path
    metrics: pd.DataFrame
    per_cell: pd.DataFrame
    per_context: pd.DataFrame
    predictions: pd.DataFrame
    settings: dict = field(default_factory=dict)


def load_chromosome(ds: Any, chrom: str, reference: Any = None) -> ChromData:
    """A store chromosome as a dense :class:`ChromData` (with its sequence when a reference is
    given)."""
    n = ds.n_sites(chrom)
    states = np.ascontiguousarray(ds.states(chrom, 0, n), dtype=np.int8)
    positions = np.asarray(ds.positions(chrom), dtype=np.int64)
    sequence = None
    if reference is not None:
        target = reference.resolve(chrom)
        if target is None:
            raise UsageError(f"chromosome {chrom!r} is not in the FASTA {reference.path}")
        sequence = reference.fetch_codes(chrom, 0, reference.contigs[target])
    return ChromData(chrom, positions, states, sequence)


def _chrom_rng(seed: int, chrom: str) -> np.random.Generator:
    """Per-chromosome generator: a chromosome's hidden entries do not depend on the others."""
    return np.random.default_rng([int(seed), zlib.crc32(chrom.encode())])


def _model_list(models: str | Sequence[Any], checkpoint: str | None) -> list[Any]:
    if isinstance(models, str):
        models = [m.strip() for m in models.split(",") if m.strip()]
    names: list[str] = []
    for m in models:
        if isinstance(m, str) and m == "all":
            names += (["cpgformer"] if checkpoint else []) + list(BASELINE_NAMES)
        elif isinstance(m, str) and m == "baselines":
            names += list(BASELINE_NAMES)
        else:
            names.append(m)
    if not names:
        raise UsageError("no models to benchmark")
    return names


def run_benchmark(
    store: Any,
    models: str | Sequence[Any] = "all",
    checkpoint: str | os.PathLike[str] | None = None,
    out_dir: str | os.PathLike[str] = "benchmark",
    test_chroms: Sequence[str] | None = None,
    cells_exclude: Sequence[str] = (),
    hide_fraction: float | None = None,
    seed: int = 0,
    protocol: str = "holdout",
    *,
    tss_bed: str | os.PathLike[str] | None = None,
    fasta: str | os.PathLike[str] | None = None,
    run_gap: int = ho.DEFAULT_RUN_GAP,
    deepcpg: DeepCpGConfig | None = None,
    camelia: CaMeliaConfig | None = None,
    knn_k: int = 5,
    tile_sites: int = 1024,
    batch_size: int = 8,
    overwrite: bool = False,
    plots: bool = True,
) -> BenchmarkResult:
    """Benchmark ``models`` on the test chromosomes of ``store`` and write the report to ``out_dir``.

    ``models``: comma-separated names or a list of names and/or model objects (``all`` = every
    baseline, plus ``cpgformer`` when a checkpoint is given). ``test_chroms`` default: the
    checkpoint's held-out test chromosomes. ``cells_exclude``: cells never hidden nor scored (their
    calls stay visible input). ``hide_fraction``: holdout -- expected fraction of observed entries
    hidden (default 0.2); exhaustive -- fraction of observed entries scored, each hidden alone
    (default 1.0 = all).
    """
    from cpgformer.benchmark.report import write_report
    from cpgformer.io.store import Dataset, open_dataset
    from cpgformer.utils.atomic import atomic_dir

    if protocol not in PROTOCOLS:
        raise UsageError(f"unknown protocol {protocol!r}; choose from {', '.join(PROTOCOLS)}")
    if hide_fraction is None:
        hide_fraction = DEFAULT_HIDE_FRACTION[protocol]
    if not 0.0 < hide_fraction <= 1.0:
        raise UsageError(f"--hide-fraction must be in (0, 1], got {hide_fraction}")
    out_path = Path(out_dir)
    if out_path.exists() and not overwrite:
        raise UsageError(f"{out_path}: already exists (choose another output or remove it)")
    ds = store if isinstance(store, Dataset) else open_dataset(store)
    store_path = str(getattr(ds, "path", store))
    cells = list(ds.cells)

    names = _model_list(models, None if checkpoint is None else str(checkpoint))
    objs: list[Any] = []
    wanted = [n for n in names if isinstance(n, str)]
    built = iter(
        build_models(
            wanted,
            None if checkpoint is None else str(checkpoint),
            deepcpg,
            camelia,
            knn_k,
            tile_sites,
            batch_size,
        )
    )
    for n in names:
        objs.append(next(built) if isinstance(n, str) else n)
    model_names = [m.name for m in objs]
    if len(set(model_names)) != len(model_names):
        raise UsageError(f"two models share a name: {', '.join(model_names)}")

    # test / training chromosomes
    ckpt_data: dict = {}
    for m in objs:
        if isinstance(m, CpgformerModel):
            ckpt_data = m.data
    if not test_chroms:
        test_chroms = list(ckpt_data.get("test_chromosomes_resolved") or [])
        if not test_chroms:
            raise UsageError("give the test chromosomes (--test-chroms)")
        log.info("test chromosomes from the checkpoint: %s", ", ".join(test_chroms))
    test_chroms = list(dict.fromkeys(test_chroms))
    unknown = [c for c in test_chroms if c not in ds.chromosomes]
    if unknown:
        raise UsageError(
            f"test chromosome(s) {', '.join(unknown)} not in the store "
            f"(it has {', '.join(ds.chromosomes)})"
        )
    train_chroms = [c for c in ds.chromosomes if c not in test_chroms]
    if not train_chroms:
        raise UsageError("every chromosome is a test chromosome: nothing left to fit baselines on")
    held = set(ckpt_data.get("test_chromosomes_resolved") or []) | set(
        ckpt_data.get("val_chromosomes_resolved") or []
    )
    if ckpt_data and held and not set(test_chroms) <= held:
        log.warning(
            "the checkpoint was trained on test chromosome(s) %s: its scores are optimistic",
            ", ".join(sorted(set(test_chroms) - held)),
        )
    missing_cells = [c for c in cells_exclude if c not in cells]
    if missing_cells:
        raise UsageError(f"--exclude-cells: unknown cell(s) {', '.join(missing_cells)}")
    cell_mask = np.array([c not in set(cells_exclude) for c in cells], dtype=bool)
    if not cell_mask.any():
        raise UsageError("every cell is excluded")

    reference = None
    fasta_path = str(fasta) if fasta else None
    if fasta_path is None and ds.fasta_path and Path(ds.fasta_path).exists():
        fasta_path = ds.fasta_path
    if fasta_path:
        from cpgformer.io.fasta import Reference

        reference = Reference(fasta_path)
        log.info("DNA features from %s", fasta_path)
    tss = None
    if tss_bed is not None:
        tss = match_tss_chromosomes(read_tss_bed(tss_bed), list(ds.chromosomes), tss_bed)

    timings: dict[str, dict[str, float]] = {
        n: {"fit_s": 0.0, "predict_s": 0.0} for n in model_names
    }
    train = [load_chromosome(ds, c, reference) for c in train_chroms]
    for m in objs:
        t0 = time.perf_counter()
        log.info("fitting %s on %d training chromosome(s)", m.name, len(train))
        m.fit(train, cells)
        timings[m.name]["fit_s"] = time.perf_counter() - t0
    del train

    frames = []
    for chrom in test_chroms:
        data = load_chromosome(ds, chrom, reference)
        rng = _chrom_rng(seed, chrom)
        if protocol == "holdout":
            hidden = ho.holdout_entries(data, hide_fraction, rng, run_gap, cell_mask)
            masked = ho.mask_entries(data, hidden.rows, hidden.cols)
        else:
            hidden = ho.sample_entries(data, hide_fraction, rng, cell_mask)
            masked = None
        log.info("%s: %d entries scored (%s protocol)", chrom, len(hidden), protocol)
        frame = pd.DataFrame(
            {
                "chrom": chrom,
                "pos": data.positions[hidden.rows],
                "cell": np.asarray(cells, dtype=object)[hidden.cols],
                "label": hidden.labels.astype(np.int8),
            }
        )
        qpos = data.positions[hidden.rows]
        frame["cpg_density"] = cpg_density(data.positions, qpos, data.sequence)
        if tss is not None:
            frame["tss_distance"] = tss_distance(qpos, tss.get(chrom))
        for m in objs:
            t0 = time.perf_counter()
            if masked is not None:
                probs = ho.predict_holdout(m, masked, hidden)
            else:
                probs = ho.predict_exhaustive(m, data, hidden)
            timings[m.name]["predict_s"] += time.perf_counter() - t0
            frame[m.name] = probs
        frames.append(frame)
    predictions = pd.concat(frames, ignore_index=True)
    if predictions.shape[0] == 0:
        raise UsageError("no observed entries to score on the test chromosomes")

    settings = {
        "store": store_path,
        "store_fingerprint": getattr(ds, "fingerprint", None),
        "checkpoint": None if checkpoint is None else str(checkpoint),
        "protocol": protocol,
        "hide_fraction": hide_fraction,
        "run_gap_bp": run_gap if protocol == "holdout" else None,
        "seed": seed,
        "test_chromosomes": test_chroms,
        "train_chromosomes": train_chroms,
        "excluded_cells": list(cells_exclude),
        "n_cells": len(cells),
        "fasta": fasta_path,
        "tss_bed": None if tss_bed is None else str(tss_bed),
        "models": model_names,
        "timings": timings,
        "n_entries": int(predictions.shape[0]),
    }
    with atomic_dir(out_path, overwrite, kind="benchmark", inputs=[store_path, checkpoint]) as tmp:
        tables = write_report(tmp, predictions, model_names, settings, plots=plots)
    log.info("benchmark report written to %s", out_path)
    return BenchmarkResult(out_path, *tables, predictions, settings)
