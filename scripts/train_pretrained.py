"""Train the pretrained model shipped in the package (``cpgformer.pretrained``), reproducibly.

    python scripts/train_pretrained.py WORKDIR [--steps 150] [--threads 1]
        [--evaluate NAME=STORE ...] [--install]

1. Simulates the training data sets of :data:`DATASETS` with ``cpgformer simulate`` (fixed seeds;
   synthetic genomes, so no real data set is part of the training): scBS-seq, scRRBS and snmC-seq
   read sampling, 40 to 800 cells, 3 to 6 cell types, 3 % to ~30 % of the CpGs per cell.
2. Trains one inductive model over them in stages, each ``cpgformer train --max-steps N --seed S``
   initialised from the previous stage's best checkpoint (``--init-from``): no cell table
   (``--no-cell-identity``: any cells), no DNA network (any genome, no FASTA), input summaries and
   the per-site-mean offset, induced attention across cells (cost flat in the number of cells).
   Steps and seeds are fixed, so the same machine and thread count give the same weights.
3. Writes the plain model file (weights + config, no optimiser state, no training split) and its
   card (data sets, steps, wall time, SHA-256) into WORKDIR/pretrained/; ``--install`` copies both
   into ``src/cpgformer/pretrained/``.
4. ``--evaluate NAME=STORE``: zero-shot ``cpgformer benchmark STORE --checkpoint MODEL`` against
   the fast baselines, on stores that were not part of the training; the AUROCs and the paired
   bootstrap intervals go into the card.

Every step is skipped when its output exists (rerun the same command to continue after a stop).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGE_DIR = REPO / "src" / "cpgformer" / "pretrained"

DATASETS: list[dict] = [
    # name, cpgformer simulate arguments
    {
        "name": "scbs40",
        "protocol": "scbs",
        "cells": 40,
        "cell_types": 4,
        "genome_length": 1_500_000,
        "coverage": None,
        "seed": 101,
    },
    {
        "name": "scrrbs100",
        "protocol": "scrrbs",
        "cells": 100,
        "cell_types": 3,
        "genome_length": 2_000_000,
        "coverage": None,
        "seed": 102,
    },
    {
        "name": "snmc300",
        "protocol": "snmc",
        "cells": 300,
        "cell_types": 6,
        "genome_length": 400_000,
        "coverage": None,
        "seed": 103,
    },
    {
        "name": "sparse800",
        "protocol": "scbs",
        "cells": 800,
        "cell_types": 4,
        "genome_length": 150_000,
        "coverage": 0.03,
        "seed": 104,
    },
]
ARCHITECTURE = [
    "--no-cell-identity",
    "--dna-window", "0",
    "--mode", "induced",
    "--input-summaries",
    "--summary-offset",
]  # fmt: skip
STAGES = ["scbs40", "scrrbs100", "snmc300", "sparse800", "scbs40", "sparse800"]
"""Training order: every data set, then the two kinds of real data users bring most (genome-wide
scBS-seq with tens of cells; many sparse cells at few loci) once more."""
EVAL_MODELS = "cpgformer,site-mean,cell-mean,nearest-neighbour,knn-cells"


def cpgformer(*args: str, log: Path, threads: int) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    cmd = [sys.executable, "-m", "cpgformer", *args]
    print("$ cpgformer " + " ".join(args), flush=True)
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as fh:
        done = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, check=False)
    if done.returncode != 0:
        sys.exit(f"failed ({done.returncode}): see {log}")


def simulate(work: Path, spec: dict, threads: int) -> Path:
    store = work / "data" / f"{spec['name']}.store"
    if (store / "manifest.json").is_file():
        return store
    args = [
        "simulate", "-o", str(work / "data" / spec["name"]), "--store", str(store),
        "--genome-length", str(spec["genome_length"]), "--cells", str(spec["cells"]),
        "--cell-types", str(spec["cell_types"]), "--protocol", spec["protocol"],
        "--seed", str(spec["seed"]),
    ]  # fmt: skip
    if spec["coverage"] is not None:
        args += ["--coverage", str(spec["coverage"])]
    cpgformer(*args, log=work / "data" / f"{spec['name']}.log", threads=threads)
    return store


def stage_dir(work: Path, k: int, name: str) -> Path:
    """The run directory of stage ``k`` (its log is this path + ``.log``)."""
    return work / "stages" / f"{k:02d}-{name}"


def train_stages(work: Path, stores: dict[str, Path], steps: int, threads: int) -> Path:
    previous: Path | None = None
    for k, name in enumerate(STAGES):
        run = stage_dir(work, k, name)
        best = run / "checkpoints" / "best.ckpt"
        if not best.is_file():
            if run.exists():
                shutil.rmtree(run)  # an unfinished stage of this script: start it again
            args = ["train", str(stores[name]), "-o", str(run), "--max-steps", str(steps),
                    "--seed", str(1000 + k)]  # fmt: skip
            args += ARCHITECTURE if previous is None else ["--init-from", str(previous)]
            cpgformer(*args, log=run.with_name(run.name + ".log"), threads=threads)
        previous = best
    assert previous is not None
    return previous


def export(best: Path, out: Path) -> Path:
    """The shipped file: weights and config, data settings without any training split."""
    from cpgformer.model import Model

    model = Model.load(best)
    keep = ("segment_length", "mask_rule", "mask_fraction", "random_fraction", "mask_unit",
            "mask_run_gap", "resample_cells", "data_mode", "dna_window")  # fmt: skip
    data = {k: v for k, v in (model.data or {}).items() if k in keep}
    out.mkdir(parents=True, exist_ok=True)
    target = out / "cpgformer-pretrained.pt"
    model.save(target, cells=None, store_fingerprint=None, data=data, cell_profiles=None)
    return target


def evaluate(work: Path, weights: Path, evals: list[str], threads: int) -> dict:
    scores: dict[str, dict] = {}
    for spec in evals:
        name, store = spec.split("=", 1)
        out = work / "eval" / name
        if not (out / "metrics.tsv").is_file():
            (work / "eval").mkdir(parents=True, exist_ok=True)
            cpgformer("benchmark", store, "--checkpoint", str(weights), "-o", str(out),
                      "--models", EVAL_MODELS, "--no-figures",
                      log=work / "eval" / f"{name}.log", threads=threads)  # fmt: skip
        with open(out / "metrics.tsv") as fh:
            rows = list(csv.DictReader(fh, delimiter="\t"))
        overall = {r["model"]: r for r in rows}  # one row per model
        entry: dict = {"auroc": {m: float(r["auroc"]) for m, r in overall.items()},
                       "n_scored": int(float(next(iter(overall.values()))["n"]))}  # fmt: skip
        paired = out / "paired_bootstrap.tsv"
        if paired.is_file():
            with open(paired) as fh:
                entry["cpgformer_minus"] = {
                    r["model"]: [float(r["difference"]), float(r["ci_low"]), float(r["ci_high"])]
                    for r in csv.DictReader(fh, delimiter="\t")
                    if r.get("metric") == "auroc" and r.get("scope") == "all"
                }
        scores[name] = entry
    return scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("workdir", type=Path)
    parser.add_argument("--steps", type=int, default=150, help="optimiser steps per stage")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--evaluate", nargs="*", default=[], metavar="NAME=STORE")
    parser.add_argument("--install", action="store_true", help="copy into the package")
    args = parser.parse_args()
    work: Path = args.workdir
    work.mkdir(parents=True, exist_ok=True)
    stores = {spec["name"]: simulate(work, spec, args.threads) for spec in DATASETS}
    best = train_stages(work, stores, args.steps, args.threads)
    weights = export(best, work / "pretrained")
    from cpgformer.integrity import sha256_file

    stages = []
    for k, name in enumerate(STAGES):
        summary = json.loads((stage_dir(work, k, name) / "summary.json").read_text())
        last = summary.get("metrics") or {}
        stages.append(
            {
                "data": name,
                "steps": summary["global_step"],
                "seconds": round(float(summary["seconds"]), 1),
                "val_auroc": last.get("val_auroc"),
                "val_site_mean_auroc": last.get("val_baseline_auroc"),
            }
        )
    import torch

    import cpgformer

    card = {
        "model": "cpgformer-pretrained",
        "package_version": cpgformer.__version__,
        "recipe": f"scripts/train_pretrained.py --steps {args.steps} --threads {args.threads}",
        "architecture": ARCHITECTURE,
        "training_data": DATASETS,
        "stages": stages,
        "steps_per_stage": args.steps,
        "train_seconds": round(sum(st["seconds"] for st in stages), 1),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}",
        "date": time.strftime("%Y-%m-%d"),
        "sha256": sha256_file(weights),
        "size_bytes": weights.stat().st_size,
    }
    if args.evaluate:
        card["zero_shot"] = evaluate(work, weights, args.evaluate, args.threads)
    (work / "pretrained" / "card.json").write_text(json.dumps(card, indent=1) + "\n")
    print(json.dumps({k: card[k] for k in ("sha256", "size_bytes", "train_seconds")}))
    if args.install:
        for name in ("cpgformer-pretrained.pt", "card.json"):
            shutil.copyfile(work / "pretrained" / name, PACKAGE_DIR / name)
        print(f"installed into {PACKAGE_DIR}")


if __name__ == "__main__":
    main()
