"""Calibration of imputed probabilities on real data, before and after temperature scaling.

Prepares the embedded demo data (30 real mouse cells, chromosomes 16-19; or ``--data DIR`` of
Bismark ``.cov.gz`` files), trains a small bounded model (no DNA: no FASTA ships with the data),
fits a temperature on seeded masked calls of the validation chromosome and reports on *other*
seeded masked calls of the test chromosome: ECE (15 equal-width bins), NLL and AUROC before and
after, for masked calls (what imputation of missing entries is) and for the observed calls predicted
with their own label in the input (the denoised outputs). Cells 10, 20 and 30 (deliberately degraded
by the data's authors) are left out of the scores.

Calls are hidden singly (``calibrate``'s default). ``--compare-units`` fits the temperature on
validation calls hidden singly and in whole read-sized runs (``calibrate --mask-unit run``: as
missing calls are at imputation, with no read of their cell nearby) and scores both temperatures on
the test chromosome's calls hidden either way.

    .venv/bin/python benchmarks/calibration.py --work WORK --max-steps 300 --out calibration.md
"""

from __future__ import annotations

import argparse
import datetime
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

from cpgformer.impute import (
    binary_nll,
    expected_calibration_error,
    fit_temperature,
    masked_holdout,
    to_probabilities,
)

DEGRADED = {"cell_10", "cell_20", "cell_30"}


def auroc(scores: np.ndarray, labels: np.ndarray) -> float:
    from scipy.stats import rankdata

    pos = labels == 1
    n1, n0 = int(pos.sum()), int((~pos).sum())
    if n1 == 0 or n0 == 0:
        return float("nan")
    ranks = rankdata(scores)
    return float((ranks[pos].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def scores(logits: np.ndarray, labels: np.ndarray, t: float) -> dict[str, float]:
    p = to_probabilities(logits, "binary", t)
    return {
        "ece": expected_calibration_error(p, labels),
        "nll": binary_nll(np.asarray(logits, dtype=np.float64) / t, labels),
        "auroc": auroc(logits, labels),
        "mean_p": float(p.mean()),
        "frac_meth": float(np.mean(labels)),
    }


def compare_units(ds, source, args, keep_cells: np.ndarray, single) -> list[str]:  # noqa: ANN001
    """Temperatures fitted on validation calls hidden in read-sized runs and singly, each scored
    on the test chromosome's calls hidden both ways (ECE, NLL). ``single``: the (validation, test)
    hold-outs of single calls, already predicted by :func:`main`."""
    temps, tests = {}, {}
    for unit in ("run", "call"):
        if unit == "call":
            val, test = single
        else:
            val = masked_holdout(
                ds, source, [args.val], fraction=args.mask_fraction, seed=1, unit=unit
            )
            test = masked_holdout(
                ds, source, [args.test], fraction=args.mask_fraction, seed=2, unit=unit
            )
        vm = keep_cells[val.masked_cells]
        temps[unit] = fit_temperature(val.masked_logits[vm], val.masked_labels[vm])
        tm = keep_cells[test.masked_cells]
        tests[unit] = (test.masked_logits[tm], test.masked_labels[tm])
    lines = [
        f"Temperature fitted on validation calls hidden in read-sized runs: T = {temps['run']:.3f}; "
        f"on single hidden calls: T = {temps['call']:.3f}.",
        "",
        "| test calls hidden as | n | AUROC | ECE, T = 1 | ECE, T (runs) | ECE, T (single calls) | "
        "NLL, T = 1 | NLL, T (runs) | NLL, T (single calls) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for unit, label in (("run", "read-sized runs"), ("call", "single calls")):
        logits, labels = tests[unit]
        s1, sr, sc = (scores(logits, labels, t) for t in (1.0, temps["run"], temps["call"]))
        lines.append(
            f"| {label} | {labels.size} | {s1['auroc']:.4f} | {s1['ece']:.4f} | {sr['ece']:.4f} | "
            f"{sc['ece']:.4f} | {s1['nll']:.4f} | {sr['nll']:.4f} | {sc['nll']:.4f} |"
        )
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", default="/tmp/cpgformer-calibration", help="scratch directory")
    ap.add_argument("--data", help="folder of Bismark .cov.gz files (default: the demo data)")
    ap.add_argument("--val", default="18", help="validation chromosome (temperature fit)")
    ap.add_argument("--test", default="19", help="test chromosome (scores)")
    ap.add_argument("--max-steps", type=int, default=300, help="training steps (bounded run)")
    ap.add_argument("--segment-length", type=int, default=256)
    ap.add_argument("--hidden", type=int, default=32, help="model hidden size (small: bounded run)")
    ap.add_argument("--layers", type=int, default=2, help="transformer layers")
    ap.add_argument("--val-batches", type=int, default=20, help="validation batches per check")
    ap.add_argument("--checkpoint", help="use this trained checkpoint instead of training")
    ap.add_argument("--mask-fraction", type=float, default=0.1)
    ap.add_argument("--store", help="use this prepared store instead of preparing the data")
    ap.add_argument(
        "--compare-units",
        action="store_true",
        help="temperatures fitted on read-sized runs and on single calls, scored both ways",
    )
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", help="markdown file for the results (default: stdout)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    from cpgformer.cli import main as cli

    store = Path(args.store) if args.store else work / "store"
    if not store.exists():
        data = (
            Path(args.data)
            if args.data
            else Path(__file__).resolve().parents[1] / ("src/cpgformer/demo_data")
        )
        files = sorted(str(p) for p in data.glob("*.cov.gz"))
        assert cli(["-q", "prepare", *files, "-o", str(store), "--pair-adjacent"]) == 0
    from cpgformer.checkpoint import load_checkpoint
    from cpgformer.io.store import open_dataset

    ds = open_dataset(store)
    t0 = time.time()
    ckpt = args.checkpoint
    if ckpt is None:
        from cpgformer.data.datamodule import DataConfig
        from cpgformer.nn import ModelConfig
        from cpgformer.training.fit import TrainConfig, fit

        result = fit(
            store,
            work / "run",
            ModelConfig(
                n_cells=ds.n_cells,
                dna_window=0,
                hidden=args.hidden,
                n_layers=args.layers,
                n_heads=4,
                head_dim=args.hidden // 4,
            ),
            DataConfig(
                val_chromosomes=(args.val,),
                test_chromosomes=(args.test,),
                segment_length=args.segment_length,
            ),
            TrainConfig(
                schedule="published",
                max_steps=args.max_steps,
                warmup_steps=min(1000, args.max_steps // 3),
                accelerator="cpu",
                devices="1",
                tensorboard=False,
                early_stopping=False,
                limit_val_batches=args.val_batches,
                val_check_interval=min(100, args.max_steps),
            ),
            progress_bar=False,
        )
        ckpt = str(result.best_checkpoint or result.last_checkpoint)
    train_s = time.time() - t0
    source = load_checkpoint(ckpt)
    keep_cells = np.array([c not in DEGRADED for c in ds.cells])
    val = masked_holdout(ds, source, [args.val], fraction=args.mask_fraction, seed=1)
    test = masked_holdout(ds, source, [args.test], fraction=args.mask_fraction, seed=2)
    vm = keep_cells[val.masked_cells]
    t = fit_temperature(val.masked_logits[vm], val.masked_labels[vm])
    tm = keep_cells[test.masked_cells]
    to = keep_cells[test.observed_cells]
    rows = []
    for what, logits, labels in (
        ("masked (imputation)", test.masked_logits[tm], test.masked_labels[tm]),
        ("observed (denoised)", test.observed_logits[to], test.observed_labels[to]),
    ):
        before, after = scores(logits, labels, 1.0), scores(logits, labels, t)
        rows.append((what, int(labels.size), before, after))
    lines = [
        "# Calibration of imputed probabilities (temperature scaling)",
        "",
        f"- date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC; machine: "
        f"{platform.machine()}, {torch.get_num_threads()} torch threads, {platform.processor() or ''}",
        f"- command: `{' '.join(['.venv/bin/python', *sys.argv])}`",
        f"- data: {ds.n_cells} real cells, store {store} ({ds.manifest.get('n_sites')} sites); "
        + (
            f"model: trained {args.max_steps} steps (no DNA, hidden {args.hidden}, {args.layers} "
            f"layers, segments of {args.segment_length}; {train_s:.0f} s)"
            if not args.checkpoint
            else f"model: the given checkpoint {Path(ckpt).name}"
        ),
        f"- temperature fitted on {int(vm.sum())} masked calls of chromosome {args.val} "
        f"(fraction {args.mask_fraction}, seed 1): **T = {t:.3f}**",
        f"- scored on chromosome {args.test} (seed 2), cells 10/20/30 excluded; ECE with 15 bins",
        "",
        "| entries | n | ECE before | ECE after | NLL before | NLL after | AUROC | mean p before | "
        "mean p after | methylated share |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for what, n, b, a in rows:
        lines.append(
            f"| {what} | {n} | {b['ece']:.4f} | {a['ece']:.4f} | {b['nll']:.4f} | {a['nll']:.4f} | "
            f"{b['auroc']:.4f} | {b['mean_p']:.4f} | {a['mean_p']:.4f} | {b['frac_meth']:.4f} |"
        )
    if args.compare_units:
        lines += ["", *compare_units(ds, source, args, keep_cells, (val, test))]
    text = "\n".join(lines) + "\n"
    if args.out:
        Path(args.out).write_text(text)
    sys.stdout.write(text)


if __name__ == "__main__":
    main()
