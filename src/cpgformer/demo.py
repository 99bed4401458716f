"""``cpgformer demo``: the whole pipeline on real data shipped inside the package.

prepare → train → benchmark → impute → export, on 30 real mouse single cells (scbs tutorial data,
chromosomes 16–19, no FASTA): chromosomes 16 and 17 train, 18 validates, 19 is the held-out test
chromosome. Cells 10, 20 and 30 (degraded on purpose by the data's authors) stay in the input but are
never scored. Training is bounded (``max_steps``) so the demo finishes in minutes on a 2-core CPU; the
warm-up is shortened accordingly (the published 1,000 warm-up steps would never reach the full rate).
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import pandas as pd

from cpgformer.errors import UsageError
from cpgformer.utils import progress
from cpgformer.utils.locks import output_lock
from cpgformer.utils.outputs import check_output, write_marker

log = logging.getLogger(__name__)

DEMO_TRAIN = ("16", "17")
DEMO_VAL = ("18",)
DEMO_TEST = ("19",)
DEMO_EXCLUDED_CELLS = ("cell_10", "cell_20", "cell_30")
DEMO_MODEL = {"dna_window": 0, "hidden": 32, "n_layers": 2, "n_heads": 4, "head_dim": 8}
"""A smaller stack than the published one (hidden 64, 4 layers, 8 heads) so that training fits in
minutes on a 2-core CPU; ``cpgformer train`` defaults to the published model."""
DEMO_SEGMENT = 256
DEMO_BASELINES = (
    "site-mean",
    "cell-mean",
    "nearest-neighbour",
    "knn-cells",
    "camelia",
    "deepcpg",
)


@dataclass
class DemoResult:
    out_dir: Path
    store: Path
    run_dir: Path
    checkpoint: Path
    benchmark_dir: Path
    imputed: Path
    h5ad: Path
    metrics: pd.DataFrame
    seconds: dict[str, float] = field(default_factory=dict)


def demo_files() -> tuple[list[Path], Path]:
    """The embedded Bismark coverage files (one per cell) and the TSS annotation."""
    root = Path(str(resources.files("cpgformer") / "demo_data"))
    cells = sorted(root.glob("cell_*.cov.gz"))
    if len(cells) != 30:
        raise UsageError(f"{root}: expected 30 embedded demo cells, found {len(cells)}")
    return cells, root / "tss_chr16-19.bed.gz"


def run_demo(
    out_dir: str | os.PathLike[str] = "cpgformer-demo",
    *,
    max_steps: int = 800,
    baselines: tuple[str, ...] = DEMO_BASELINES,
    overwrite: bool = False,
    seed: int = 0,
) -> DemoResult:
    """Run the demo pipeline into ``out_dir`` and return where everything went."""
    out = Path(out_dir)
    empty = out.is_dir() and not out.is_symlink() and not any(out.iterdir())
    check_output(out, "demo", overwrite=overwrite, exist_ok=empty)
    with output_lock(out):
        check_output(out, "demo", overwrite=overwrite, exist_ok=empty)
        if out.exists() and not empty:
            shutil.rmtree(out)
        out.mkdir(parents=True, exist_ok=True)
        write_marker(out, "demo")  # an interrupted demo folder can be replaced with --overwrite
        return _run_demo(out, max_steps, baselines, seed)


def _run_demo(out: Path, max_steps: int, baselines: tuple[str, ...], seed: int) -> DemoResult:
    from cpgformer.benchmark.baselines import CaMeliaConfig, DeepCpGConfig
    from cpgformer.benchmark.run import run_benchmark
    from cpgformer.data.datamodule import DataConfig
    from cpgformer.export import ExportOptions, export
    from cpgformer.impute import ImputeOptions, impute
    from cpgformer.nn import ModelConfig
    from cpgformer.prepare import PrepareOptions, prepare
    from cpgformer.training.fit import TrainConfig, fit

    cells, tss = demo_files()
    seconds: dict[str, float] = {}

    t0 = time.perf_counter()
    store = out / "store"
    log.info("demo 1/5 prepare: %d embedded cells -> %s", len(cells), store)
    prepare([str(c) for c in cells], store, PrepareOptions())
    seconds["prepare"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    run_dir = out / "run"
    log.info("demo 2/5 train (%d steps, no DNA: no FASTA ships) -> %s", max_steps, run_dir)
    result = fit(
        store,
        run_dir,
        config=ModelConfig(**{**DEMO_MODEL, "n_cells": len(cells)}),
        data=DataConfig(
            val_chromosomes=DEMO_VAL,
            test_chromosomes=DEMO_TEST,
            segment_length=DEMO_SEGMENT,
            seed=seed,
        ),
        training=TrainConfig(
            schedule="published",
            max_steps=max_steps,
            max_epochs=1000,
            warmup_steps=min(1000, max(1, max_steps // 10)),
            val_check_interval=None,
            accelerator="cpu",
            devices="1",
            tensorboard=False,
            seed=seed,
        ),
        progress_bar=progress.enabled(),
    )
    checkpoint = result.best_checkpoint or result.last_checkpoint
    if checkpoint is None:
        raise UsageError(f"{run_dir}: training wrote no checkpoint")
    seconds["train"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    bench_dir = out / "benchmark"
    models = ["cpgformer", *baselines]
    log.info(
        "demo 3/5 benchmark %s on chromosome %s -> %s", ",".join(models), DEMO_TEST[0], bench_dir
    )
    bench = run_benchmark(
        store,
        models=",".join(models),
        checkpoint=checkpoint,
        out_dir=bench_dir,
        test_chromosomes=DEMO_TEST,
        exclude_cells=DEMO_EXCLUDED_CELLS,
        seed=seed,
        tss_bed=tss,
        deepcpg=DeepCpGConfig(max_steps=150, cpg_hidden=128, joint_hidden=256),
        camelia=CaMeliaConfig(iterations=150, max_train_rows=5000),
    )
    seconds["benchmark"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    imputed = out / "imputed"
    log.info("demo 4/5 impute every site x cell -> %s", imputed)
    impute(store, checkpoint, imputed, ImputeOptions())
    seconds["impute"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    h5ad = out / "demo.h5ad"
    log.info("demo 5/5 export AnnData -> %s", h5ad)
    export(imputed, h5ad, "h5ad", ExportOptions())
    seconds["export"] = time.perf_counter() - t0

    return DemoResult(
        out_dir=out,
        store=store,
        run_dir=run_dir,
        checkpoint=Path(checkpoint),
        benchmark_dir=bench_dir,
        imputed=imputed,
        h5ad=h5ad,
        metrics=bench.metrics,
        seconds=seconds,
    )
