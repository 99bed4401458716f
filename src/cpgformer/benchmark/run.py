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

import dataclasses
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
from cpgformer.benchmark.report import write_report
from cpgformer.codes import MISSING
from cpgformer.data.config import DataConfig
from cpgformer.data.segments import Region, regions_from_record, resolve_split
from cpgformer.errors import UsageError
from cpgformer.io.store import Dataset, open_dataset
from cpgformer.io.store import reference as find_reference
from cpgformer.model import IGNORE_FINGERPRINT_HELP
from cpgformer.nn import ModelConfig
from cpgformer.utils.atomic import atomic_dir

log = logging.getLogger(__name__)

PROTOCOLS = ("holdout", "exhaustive")
DEFAULT_HIDE_FRACTION = {"holdout": 0.2, "exhaustive": 1.0}
AUTO_ROUNDS_BELOW = 5000
"""``--rounds 0`` (auto): score every observed test call once when one round would score fewer."""


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
    """Test chromosomes or test blocks: ``--test-chromosomes`` if given, else the checkpoint's held-out
    split (chromosomes or region blocks), else the split ``cpgformer train`` makes by default.

    Region blocks: baselines fit on the training blocks only, and the test blocks are scored.
    """

    names = list(ds.chromosomes)
    if ckpt_data and not (
        "split_resolved" in ckpt_data or "test_chromosomes_resolved" in ckpt_data
    ):
        log.info("the checkpoint records no training split (e.g. the pretrained model)")
        ckpt_data = {}
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
                raise UsageError("the checkpoint has no test blocks: give --test-chromosomes")
            log.info("test blocks from the checkpoint: %d", len(regions["test"]))
            return BenchmarkSplit(
                "regions", sorted({b.chrom for b in regions["test"]}), [], regions
            )
        test_chroms = list(ckpt_data.get("test_chromosomes_resolved") or [])
        if not test_chroms:
            raise UsageError("the checkpoint has no test chromosomes: give --test-chromosomes")
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
            "(leave --test-chromosomes out for a region hold-out)"
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
            data.chrom,
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


def _meta(help: str) -> dict[str, str]:  # noqa: A002 - the argparse name
    return {"help": help}


@dataclass
class BenchmarkOptions:
    """What to benchmark and how (``cpgformer benchmark`` makes one flag per field but the last two).

    ``models``: comma-separated names or a list of names and/or model objects. ``test_chromosomes``
    empty: the checkpoint's held-out test chromosomes or test blocks, else the split ``cpgformer
    train`` makes by default (see :func:`resolve_benchmark_split`).
    """

    models: Any = field(
        default="all",
        metadata=_meta(
            "comma-separated model names; 'all' = every baseline (+ cpgformer with --checkpoint), "
            "'baselines' = every baseline"
        ),
    )
    checkpoint: str | None = field(
        default=None, metadata=_meta("trained cpgformer checkpoint (for model cpgformer)")
    )
    test_chromosomes: tuple[str, ...] = field(
        default=(),
        metadata={
            **_meta(
                "test chromosomes (default: the checkpoint's test chromosomes or test blocks; "
                "without a checkpoint, the split `cpgformer train` makes by default)"
            ),
            "deprecated": ("--test-chroms",),
        },
    )
    exclude_cells: tuple[str, ...] = field(
        default=(), metadata=_meta("cells never hidden nor scored (they stay visible input)")
    )
    protocol: str = field(
        default="holdout",
        metadata={
            **_meta(
                "holdout: hide a fraction of observed test calls in read-sized runs; exhaustive: "
                "the original's leave-one-out scoring of every observed call"
            ),
            "choices": PROTOCOLS,
        },
    )
    hide_fraction: float | None = field(
        default=None,
        metadata=_meta(
            "holdout: expected fraction of observed test calls hidden (default 0.2); exhaustive: "
            "fraction of observed test calls scored, each hidden alone (default 1)"
        ),
    )
    rounds: int = field(
        default=0,
        metadata=_meta(
            "holdout: disjoint hiding rounds, each predicted from its own masked input (at most "
            "1 / hide fraction; that many scores every observed test call once); 0 = that many when "
            f"one round would score fewer than {AUTO_ROUNDS_BELOW:,} calls, else 1"
        ),
    )
    seed: int = field(default=0, metadata=_meta("seed of the hidden-entry choice"))
    run_gap: int = field(
        default=ho.DEFAULT_RUN_GAP,
        metadata=_meta("bp: observed sites of one cell this close are hidden together"),
    )
    tss_bed: str | None = field(
        default=None, metadata=_meta("BED of TSSs for per-context metrics by TSS distance")
    )
    fasta: str | None = field(
        default=None,
        metadata=_meta("reference FASTA for DNA features (default: the store's, if present)"),
    )
    knn_cells: int = field(default=5, metadata=_meta("k of knn-cells"))
    tile_sites: int = field(default=1024, metadata=_meta("cpgformer: sites per tile"))
    batch_size: int = field(default=8, metadata=_meta("cpgformer: tiles per forward"))
    bootstrap: int = field(
        default=1000,
        metadata=_meta(
            "paired bootstrap resamples for the intervals of cpgformer minus each model (0 = none)"
        ),
    )
    figures: bool = field(default=True, metadata=_meta("write the PNG figures"))
    overwrite: bool = field(default=False, metadata=_meta("replace an existing output"))
    ignore_fingerprint: bool = field(default=False, metadata=_meta(IGNORE_FINGERPRINT_HELP))
    deepcpg: DeepCpGConfig | None = None
    camelia: CaMeliaConfig | None = None

    def __post_init__(self) -> None:
        self.test_chromosomes = tuple(self.test_chromosomes or ())
        self.exclude_cells = tuple(self.exclude_cells or ())
        if self.protocol not in PROTOCOLS:
            raise UsageError(
                f"unknown protocol {self.protocol!r}; choose from {', '.join(PROTOCOLS)}"
            )
        if self.hide_fraction is None:
            self.hide_fraction = DEFAULT_HIDE_FRACTION[self.protocol]
        if not 0.0 < self.hide_fraction <= 1.0:
            raise UsageError(f"--hide-fraction must be in (0, 1], got {self.hide_fraction}")
        if self.bootstrap < 0:
            raise UsageError(f"--bootstrap must be >= 0, got {self.bootstrap}")
        if self.protocol == "holdout":
            most = ho.max_rounds(self.hide_fraction)
            if not 0 <= self.rounds <= most:
                raise UsageError(
                    f"--rounds must be in 0..{most} with --hide-fraction {self.hide_fraction}, "
                    f"got {self.rounds}"
                )
        elif self.rounds > 1:
            raise UsageError("--rounds applies to the holdout protocol only")


def run_benchmark(
    store: Any,
    options: BenchmarkOptions | None = None,
    *,
    out_dir: str | os.PathLike[str] = "benchmark",
    **fields: Any,
) -> BenchmarkResult:
    """Benchmark the models of ``options`` (or of the :class:`BenchmarkOptions` fields given as
    keywords) on the test chromosomes of ``store`` and write the report to ``out_dir``."""
    opts = dataclasses.replace(options, **fields) if options else BenchmarkOptions(**fields)
    out_path = Path(out_dir)
    if out_path.exists() and not opts.overwrite:
        raise UsageError(f"{out_path}: already exists (choose another output or remove it)")
    ds = store if isinstance(store, Dataset) else open_dataset(store)
    store_path = str(getattr(ds, "path", store))
    cells = list(ds.cells)
    objs = _models(opts)
    model_names = [m.name for m in objs]
    split = resolve_benchmark_split(
        ds, opts.test_chromosomes, *_checkpoint_split(objs, ds, opts.ignore_fingerprint)
    )
    cell_mask = _scored_cells(cells, opts.exclude_cells)
    reference = find_reference(opts.fasta, ds)  # optional: DNA features where a FASTA is there
    if reference is not None:
        log.info("DNA features from %s", reference.path)
    tss = None
    if opts.tss_bed is not None:
        tss = match_tss_chromosomes(read_tss_bed(opts.tss_bed), list(ds.chromosomes), opts.tss_bed)
    timings = {n: {"fit_s": 0.0, "predict_s": 0.0} for n in model_names}
    _fit_models(objs, _training_data(ds, split, reference), cells, cell_mask, timings)
    rounds = resolve_rounds(opts, _observed_test_calls(ds, split, cell_mask))
    frames = [
        _score_part(chrom, data, objs, opts, rounds, cells, cell_mask, tss, timings)
        for chrom, parts in _test_parts(ds, split, reference)
        for data in parts
    ]
    predictions = pd.concat(frames, ignore_index=True)
    if predictions.shape[0] == 0:
        raise UsageError("no observed entries to score on the test chromosomes")
    settings = {
        "store": store_path,
        "store_fingerprint": getattr(ds, "fingerprint", None),
        "checkpoint": None if opts.checkpoint is None else str(opts.checkpoint),
        "protocol": opts.protocol,
        "hide_fraction": opts.hide_fraction,
        "rounds": rounds,
        "run_gap_bp": opts.run_gap if opts.protocol == "holdout" else None,
        "seed": opts.seed,
        "split": split.mode,
        "split_note": split.note,
        "test_chromosomes": split.test_chromosomes,
        "train_chromosomes": split.train_chromosomes,
        "test_regions": _region_rows(ds, split.regions, "test"),
        "train_regions": _region_rows(ds, split.regions, "train"),
        "excluded_cells": list(opts.exclude_cells),
        "n_cells": len(cells),
        "fasta": None if reference is None else str(reference.path),
        "tss_bed": None if opts.tss_bed is None else str(opts.tss_bed),
        "models": model_names,
        "timings": timings,
        "n_entries": int(predictions.shape[0]),
        "bootstrap_resamples": opts.bootstrap,
    }
    inputs = [store_path, opts.checkpoint]
    with atomic_dir(out_path, opts.overwrite, kind="benchmark", inputs=inputs) as tmp:
        metrics, per_cell, per_context, boot = write_report(
            tmp, predictions, model_names, settings, plots=opts.figures, bootstrap=opts.bootstrap
        )
    log.info("benchmark report written to %s", out_path)
    return BenchmarkResult(out_path, metrics, per_cell, per_context, predictions, settings, boot)


def _models(opts: BenchmarkOptions) -> list[Any]:
    """The model objects of ``opts.models`` (names built, objects kept), in order."""
    checkpoint = None if opts.checkpoint is None else str(opts.checkpoint)
    names = _model_list(opts.models, checkpoint)
    wanted = [n for n in names if isinstance(n, str)]
    built = iter(
        build_models(
            wanted, checkpoint, opts.deepcpg, opts.camelia, opts.knn_cells, opts.tile_sites,
            opts.batch_size,
        )
    )  # fmt: skip
    objs = [next(built) if isinstance(n, str) else n for n in names]
    model_names = [m.name for m in objs]
    if len(set(model_names)) != len(model_names):
        raise UsageError(f"two models share a name: {', '.join(model_names)}")
    return objs


def _checkpoint_split(
    objs: Sequence[Any], ds: Any, ignore_fingerprint: bool
) -> tuple[dict, int | None]:
    """(data parameters, receptive field) of the cpgformer model among ``objs`` ({} and None); the
    model is told the store it will be checked against (in its ``fit``)."""
    ckpt_data: dict = {}
    ckpt_rf: int | None = None
    for m in objs:
        if isinstance(m, CpgformerModel):
            m.use_store(ds, ignore_fingerprint)
            ckpt_data, ckpt_rf = m.data, m.receptive_field
    return ckpt_data, ckpt_rf


def _scored_cells(cells: Sequence[str], excluded: Sequence[str]) -> np.ndarray:
    missing = [c for c in excluded if c not in cells]
    if missing:
        raise UsageError(f"--exclude-cells: unknown cell(s) {', '.join(missing)}")
    mask = np.array([c not in set(excluded) for c in cells], dtype=bool)
    if not mask.any():
        raise UsageError("every cell is excluded")
    return mask


def _training_data(ds: Any, split: BenchmarkSplit, reference: Any) -> list[ChromData]:
    """The training chromosomes, or the training blocks of a region hold-out."""
    if split.regions is None:
        return [load_chromosome(ds, c, reference) for c in split.train_chromosomes]
    return [
        piece
        for chrom, blocks in _by_chromosome(split.regions["train"]).items()
        for piece in block_of(load_chromosome(ds, chrom, reference), blocks)
    ]


def _fit_models(
    objs: Sequence[Any],
    train: list[ChromData],
    cells: list[str],
    cell_mask: np.ndarray,
    timings: dict,
) -> None:
    """Fit every model; a model with per-cell parts (``fit_cells``) fits the scored cells only."""
    for m in objs:
        if hasattr(m, "fit_cells"):
            m.fit_cells = None if cell_mask.all() else cell_mask
        t0 = time.perf_counter()
        log.info("fitting %s on %d training chromosome(s) or block(s)", m.name, len(train))
        m.fit(train, cells)
        timings[m.name]["fit_s"] = time.perf_counter() - t0


def _observed_test_calls(ds: Any, split: BenchmarkSplit, cell_mask: np.ndarray) -> int:
    """Observed calls of the scored cells on the test chromosomes or blocks, counted in the
    store's sparse arrays (nothing densified)."""
    if split.regions is None:
        spans = [(c, 0, ds.n_sites(c)) for c in split.test_chromosomes]
    else:
        spans = [(b.chrom, b.start, b.stop) for b in split.regions["test"]]
    total = 0
    for chrom, start, stop in spans:
        indptr, cell, _, _, label = ds.csr(chrom)
        lo, hi = int(indptr[start]), int(indptr[stop])
        seen = np.asarray(label[lo:hi]) != MISSING
        total += int((seen & cell_mask[np.asarray(cell[lo:hi], dtype=np.int64)]).sum())
    return total


def resolve_rounds(opts: BenchmarkOptions, observed: int) -> int:
    """The hiding rounds of a run: ``opts.rounds``, or for 0 (auto) all ``1 / hide fraction`` of
    them when one round would hide fewer than :data:`AUTO_ROUNDS_BELOW` of the ``observed`` test
    calls (expected), else 1. Always 1 for the exhaustive protocol."""
    assert opts.hide_fraction is not None
    if opts.protocol != "holdout":
        return 1
    if opts.rounds:
        return opts.rounds
    if observed * opts.hide_fraction >= AUTO_ROUNDS_BELOW:
        return 1
    rounds = ho.max_rounds(opts.hide_fraction)
    if rounds > 1:
        log.info(
            "about %d calls would be scored in one round: %d disjoint rounds score every observed "
            "test call once (--rounds 1 for one)",
            round(observed * opts.hide_fraction),
            rounds,
        )
    return rounds


def _score_part(
    chrom: str,
    data: ChromData,
    objs: Sequence[Any],
    opts: BenchmarkOptions,
    rounds: int,
    cells: list[str],
    cell_mask: np.ndarray,
    tss: Any,
    timings: dict,
) -> pd.DataFrame:
    """Hide the entries of one test chromosome or block (in ``rounds`` disjoint rounds, each with
    its own masked input), and every model's predictions of them."""
    rng = _chrom_rng(opts.seed, data.name)
    assert opts.hide_fraction is not None
    if opts.protocol != "holdout":
        hidden = ho.sample_entries(data, opts.hide_fraction, rng, cell_mask)
        return _score_round(chrom, data, hidden, None, objs, opts, cells, tss, timings)
    frames = []
    for r, hidden in enumerate(
        ho.holdout_rounds(data, opts.hide_fraction, rng, rounds, opts.run_gap, cell_mask)
    ):
        masked = ho.mask_entries(data, hidden.rows, hidden.cols)
        frame = _score_round(chrom, data, hidden, masked, objs, opts, cells, tss, timings)
        if rounds > 1:
            frame.insert(4, "round", r)
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)


def _score_round(
    chrom: str,
    data: ChromData,
    hidden: ho.HiddenEntries,
    masked: ChromData | None,
    objs: Sequence[Any],
    opts: BenchmarkOptions,
    cells: list[str],
    tss: Any,
    timings: dict,
) -> pd.DataFrame:
    """Every model's predictions of ``hidden``: from ``masked`` (holdout) or each alone
    (exhaustive)."""
    log.info("%s: %d entries scored (%s protocol)", data.name, len(hidden), opts.protocol)
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
    return frame
