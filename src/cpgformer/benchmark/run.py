"""``run_benchmark``: every model on identical hidden entries of the test chromosomes, then the report.

Flow: open the store; resolve the split (:func:`resolve_benchmark_split`: test chromosomes, or the
test blocks of a region hold-out); load the training chromosomes (all but the test ones) or the
training blocks as dense matrices and ``fit`` every model on them; per test chromosome or block
choose the scored entries (seeded, from the observed pattern only), build *one* masked input and
give that same input to every model; score and write the report, with paired bootstrap intervals
of cpgformer minus each model (:mod:`cpgformer.benchmark.report`).

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
from cpgformer.data.segments import Region, regions_from_record, resolve_split
from cpgformer.errors import UsageError
from cpgformer.io.store import reference as find_reference

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
    bootstrap: pd.DataFrame = field(default_factory=pd.DataFrame)
    """cpgformer minus each model: paired bootstrap intervals (empty without cpgformer)."""


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


@dataclass
class BenchmarkSplit:
    """What the benchmark scores and fits on: whole chromosomes, or blocks (``regions``)."""

    mode: str
    test_chromosomes: list[str]
    train_chromosomes: list[str]
    regions: dict[str, list[Region]] | None = None
    note: str = ""


def resolve_benchmark_split(
    ds: Any,
    test_chroms: Sequence[str] | None,
    ckpt_data: dict,
    receptive_field: int | None = None,
) -> BenchmarkSplit:
    """Test chromosomes or test blocks: ``--test-chroms`` if given, else the checkpoint's held-out
    split (chromosomes or region blocks), else the split ``cpgformer train`` makes by default.

    Region blocks: baselines fit on the training blocks only, and the test blocks are scored.
    """
    from cpgformer.data.config import DataConfig
    from cpgformer.nn import ModelConfig

    names = list(ds.chromosomes)
    if not test_chroms and ckpt_data:
        regions = regions_from_record(ckpt_data)
        if regions is not None:
            for block in regions["train"] + regions["test"]:
                if block.chrom not in names or block.stop > ds.n_sites(block.chrom):
                    raise UsageError(
                        f"the checkpoint's held-out block {block.chrom}:{block.start}-{block.stop} "
                        "is not in this store (was it trained on another store?)"
                    )
            if not regions["test"]:
                raise UsageError("the checkpoint has no test blocks: give --test-chroms")
            log.info("test blocks from the checkpoint: %d", len(regions["test"]))
            return BenchmarkSplit(
                "regions", sorted({b.chrom for b in regions["test"]}), [], regions
            )
        test_chroms = list(ckpt_data.get("test_chromosomes_resolved") or [])
        if not test_chroms:
            raise UsageError("the checkpoint has no test chromosomes: give --test-chroms")
        log.info("test chromosomes from the checkpoint: %s", ", ".join(test_chroms))
    note = ""
    if not test_chroms:
        # no checkpoint: the split `cpgformer train` makes with its defaults
        defaults = DataConfig()
        rf = (
            ModelConfig(n_cells=1).receptive_field_sites
            if receptive_field is None
            else receptive_field
        )
        plan = resolve_split(
            {c: ds.positions(c) for c in names},
            segment_length=defaults.segment_length,
            val_chromosomes=defaults.val_chromosomes,
            test_chromosomes=defaults.test_chromosomes,
            receptive_field=rf,
        )
        note = plan.note
        if note:
            log.warning("%s", note)
        if plan.mode == "regions":
            assert plan.regions is not None
            return BenchmarkSplit(
                "regions", sorted({b.chrom for b in plan.regions["test"]}), [], plan.regions, note
            )
        test_chroms = list(plan.test_chromosomes)
        log.info("test chromosomes (train's default split): %s", ", ".join(test_chroms))
    test_chroms = list(dict.fromkeys(test_chroms))
    unknown = [c for c in test_chroms if c not in names]
    if unknown:
        raise UsageError(
            f"test chromosome(s) {', '.join(unknown)} not in the store (it has {', '.join(names)})"
        )
    train_chroms = [c for c in names if c not in test_chroms]
    if not train_chroms:
        raise UsageError(
            "every chromosome is a test chromosome: nothing left to fit baselines on "
            "(leave --test-chroms out for a region hold-out)"
        )
    held = set(ckpt_data.get("test_chromosomes_resolved") or []) | set(
        ckpt_data.get("val_chromosomes_resolved") or []
    )
    if ckpt_data.get("split_resolved") == "regions":
        log.warning("the checkpoint was trained with a region hold-out: its scores are optimistic")
    elif ckpt_data and held and not set(test_chroms) <= held:
        log.warning(
            "the checkpoint was trained on test chromosome(s) %s: its scores are optimistic",
            ", ".join(sorted(set(test_chroms) - held)),
        )
    return BenchmarkSplit("chromosomes", test_chroms, train_chroms, None, note)


def block_of(data: ChromData, blocks: Sequence[Region]) -> list[ChromData]:
    """Row blocks of a loaded chromosome as their own :class:`ChromData` (sequence kept whole,
    since it is indexed by bp; named ``chrom:start-stop`` by rows)."""
    return [
        ChromData(
            f"{data.name}:{b.start}-{b.stop}",
            data.positions[b.start : b.stop],
            np.ascontiguousarray(data.states[b.start : b.stop]),
            data.sequence,
        )
        for b in blocks
    ]


def _by_chromosome(blocks: Sequence[Region]) -> dict[str, list[Region]]:
    out: dict[str, list[Region]] = {}
    for b in blocks:
        out.setdefault(b.chrom, []).append(b)
    return out


def _test_parts(ds: Any, split: BenchmarkSplit, reference: Any):
    """(chromosome, [ChromData to score]) one chromosome at a time."""
    if split.regions is None:
        for chrom in split.test_chromosomes:
            yield chrom, [load_chromosome(ds, chrom, reference)]
        return
    for chrom, blocks in _by_chromosome(split.regions["test"]).items():
        yield chrom, block_of(load_chromosome(ds, chrom, reference), blocks)


def _region_rows(ds: Any, regions: dict[str, list[Region]] | None, split: str) -> list | None:
    if regions is None:
        return None
    rows = []
    for b in regions[split]:
        pos = ds.positions(b.chrom)
        rows.append([b.chrom, b.start, b.stop, int(pos[b.start]), int(pos[b.stop - 1]) + 1])
    return rows


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
    bootstrap: int = 1000,
    ignore_fingerprint: bool = False,
) -> BenchmarkResult:
    """Benchmark ``models`` on the test chromosomes of ``store`` and write the report to ``out_dir``.

    ``models``: comma-separated names or a list of names and/or model objects (``all`` = every
    baseline, plus ``cpgformer`` when a checkpoint is given). ``test_chroms`` default: the
    checkpoint's held-out test chromosomes or test blocks, else the split ``cpgformer train``
    makes by default (see :func:`resolve_benchmark_split`). ``cells_exclude``: cells never hidden
    nor scored (their calls stay visible input). ``hide_fraction``: holdout -- expected fraction of
    observed entries hidden (default 0.2); exhaustive -- fraction of observed entries scored, each
    hidden alone (default 1.0 = all). ``bootstrap``: resamples of the paired bootstrap intervals of
    cpgformer minus each model (0 = none). ``ignore_fingerprint``: let the checkpoint apply to a
    store other than its training store (:meth:`cpgformer.model.Model.check`).
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

    # the split: test chromosomes, or test blocks of a region hold-out
    ckpt_data: dict = {}
    ckpt_rf: int | None = None
    for m in objs:
        if isinstance(m, CpgformerModel):
            m.use_store(ds, ignore_fingerprint)  # checked against the checkpoint in fit
            ckpt_data = m.data
            ckpt_rf = m.receptive_field
    split = resolve_benchmark_split(ds, test_chroms, ckpt_data, ckpt_rf)
    test_chroms = split.test_chromosomes
    train_chroms = split.train_chromosomes
    missing_cells = [c for c in cells_exclude if c not in cells]
    if missing_cells:
        raise UsageError(f"--exclude-cells: unknown cell(s) {', '.join(missing_cells)}")
    cell_mask = np.array([c not in set(cells_exclude) for c in cells], dtype=bool)
    if not cell_mask.any():
        raise UsageError("every cell is excluded")

    reference = find_reference(fasta, ds)  # optional: DNA features where a FASTA is there
    fasta_path = None if reference is None else str(reference.path)
    if fasta_path:
        log.info("DNA features from %s", fasta_path)
    tss = None
    if tss_bed is not None:
        tss = match_tss_chromosomes(read_tss_bed(tss_bed), list(ds.chromosomes), tss_bed)

    timings: dict[str, dict[str, float]] = {
        n: {"fit_s": 0.0, "predict_s": 0.0} for n in model_names
    }
    if split.regions is None:
        train = [load_chromosome(ds, c, reference) for c in train_chroms]
    else:
        train = [
            block_of(load_chromosome(ds, chrom, reference), blocks)
            for chrom, blocks in _by_chromosome(split.regions["train"]).items()
        ]
        train = [piece for pieces in train for piece in pieces]
    for m in objs:
        t0 = time.perf_counter()
        log.info("fitting %s on %d training chromosome(s) or block(s)", m.name, len(train))
        m.fit(train, cells)
        timings[m.name]["fit_s"] = time.perf_counter() - t0
    del train

    frames = []
    for chrom, parts in _test_parts(ds, split, reference):
        for data in parts:
            rng = _chrom_rng(seed, data.name)
            if protocol == "holdout":
                hidden = ho.holdout_entries(data, hide_fraction, rng, run_gap, cell_mask)
                masked = ho.mask_entries(data, hidden.rows, hidden.cols)
            else:
                hidden = ho.sample_entries(data, hide_fraction, rng, cell_mask)
                masked = None
            log.info("%s: %d entries scored (%s protocol)", data.name, len(hidden), protocol)
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
        "split": split.mode,
        "split_note": split.note,
        "test_chromosomes": test_chroms,
        "train_chromosomes": train_chroms,
        "test_regions": _region_rows(ds, split.regions, "test"),
        "train_regions": _region_rows(ds, split.regions, "train"),
        "excluded_cells": list(cells_exclude),
        "n_cells": len(cells),
        "fasta": fasta_path,
        "tss_bed": None if tss_bed is None else str(tss_bed),
        "models": model_names,
        "timings": timings,
        "n_entries": int(predictions.shape[0]),
        "bootstrap_resamples": bootstrap,
    }
    with atomic_dir(out_path, overwrite, kind="benchmark", inputs=[store_path, checkpoint]) as tmp:
        metrics, per_cell, per_context, boot = write_report(
            tmp, predictions, model_names, settings, plots=plots, bootstrap=bootstrap
        )
    log.info("benchmark report written to %s", out_path)
    return BenchmarkResult(out_path, metrics, per_cell, per_context, predictions, settings, boot)
