"""``cpgformer benchmark``: CpG Transformer and baselines on identical hidden entries, with a report."""

from __future__ import annotations

import argparse
import sys

from cpgformer.model import IGNORE_FINGERPRINT_HELP

NAME = "benchmark"
HELP = "score cpgformer and baselines on hidden calls of test chromosomes (tables, report, plots)"


def _csv(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from cpgformer.benchmark.baselines import MODEL_NAMES
    from cpgformer.benchmark.holdout import DEFAULT_RUN_GAP
    from cpgformer.benchmark.run import PROTOCOLS

    parser.add_argument("store", help="dataset store written by `cpgformer prepare`")
    parser.add_argument("-o", "--output", required=True, help="report directory (created)")
    parser.add_argument(
        "--models",
        default="all",
        help=f"comma-separated: {', '.join(MODEL_NAMES)}; 'all' = every baseline (+ cpgformer "
        "with --checkpoint), 'baselines' = every baseline (default: all)",
    )
    parser.add_argument("--checkpoint", help="trained cpgformer checkpoint (for model cpgformer)")
    parser.add_argument(
        "--test-chroms",
        type=_csv,
        help="comma-separated test chromosomes (default: the checkpoint's test chromosomes or "
        "test blocks; without a checkpoint, the split `cpgformer train` makes by default)",
    )
    parser.add_argument(
        "--exclude-cells",
        type=_csv,
        default=[],
        help="comma-separated cells never hidden nor scored (they stay visible input)",
    )
    parser.add_argument(
        "--protocol",
        choices=PROTOCOLS,
        default="holdout",
        help="holdout: hide a fraction of observed test calls in read-sized runs; exhaustive: "
        "the original's leave-one-out scoring of every observed call",
    )
    parser.add_argument(
        "--hide-fraction",
        type=float,
        help="holdout: expected fraction of observed test calls hidden (default 0.2); "
        "exhaustive: fraction of observed test calls scored, each hidden alone (default 1)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the hidden-entry choice")
    parser.add_argument(
        "--run-gap",
        type=int,
        default=DEFAULT_RUN_GAP,
        help="bp: observed sites of one cell this close are hidden together (default %(default)s)",
    )
    parser.add_argument("--tss-bed", help="BED of TSSs for per-context metrics by TSS distance")
    parser.add_argument(
        "--fasta", help="reference FASTA for DNA features (default: the store's, if present)"
    )
    parser.add_argument("--knn-cells", type=int, default=5, help="k of knn-cells (default 5)")
    g = parser.add_argument_group("DeepCpG training (bounded by default)")
    g.add_argument("--deepcpg-max-steps", type=int, default=600, help="default %(default)s")
    g.add_argument("--deepcpg-max-seconds", type=float, help="wall-clock budget of training")
    g.add_argument("--deepcpg-lr", type=float, default=1e-3, help="default %(default)s")
    g.add_argument(
        "--deepcpg-hidden",
        type=int,
        default=256,
        help="CpG-module width (GRU hidden size; default %(default)s as published)",
    )
    g = parser.add_argument_group("CaMelia")
    g.add_argument(
        "--camelia-iterations", type=int, default=1000, help="CatBoost rounds per cell (1000)"
    )
    g.add_argument(
        "--camelia-max-train-rows", type=int, help="subsample each cell's training rows (seeded)"
    )
    g = parser.add_argument_group("cpgformer inference")
    g.add_argument("--tile-sites", type=int, default=1024, help="sites per tile (default 1024)")
    g.add_argument("--batch-size", type=int, default=8, help="tiles per forward (default 8)")
    parser.add_argument(
        "--bootstrap",
        type=int,
        default=1000,
        help="paired bootstrap resamples for the intervals of cpgformer minus each model "
        "(0 = none; default %(default)s)",
    )
    parser.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    parser.add_argument("--ignore-fingerprint", action="store_true", help=IGNORE_FINGERPRINT_HELP)
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output")


def run(args: argparse.Namespace) -> int:
    from cpgformer.benchmark.baselines import CaMeliaConfig, DeepCpGConfig
    from cpgformer.benchmark.report import markdown_table
    from cpgformer.benchmark.run import run_benchmark
    from cpgformer.errors import UsageError

    if args.bootstrap < 0:
        raise UsageError(f"--bootstrap must be >= 0, got {args.bootstrap}")

    deepcpg = DeepCpGConfig(
        max_steps=args.deepcpg_max_steps,
        max_seconds=args.deepcpg_max_seconds,
        lr=args.deepcpg_lr,
        cpg_hidden=args.deepcpg_hidden,
        seed=args.seed,
    )
    camelia = CaMeliaConfig(
        iterations=args.camelia_iterations,
        max_train_rows=args.camelia_max_train_rows,
        seed=args.seed,
    )
    result = run_benchmark(
        args.store,
        models=args.models,
        checkpoint=args.checkpoint,
        out_dir=args.output,
        test_chroms=args.test_chroms,
        cells_exclude=args.exclude_cells,
        hide_fraction=args.hide_fraction,
        seed=args.seed,
        protocol=args.protocol,
        tss_bed=args.tss_bed,
        fasta=args.fasta,
        run_gap=args.run_gap,
        deepcpg=deepcpg,
        camelia=camelia,
        knn_k=args.knn_cells,
        tile_sites=args.tile_sites,
        batch_size=args.batch_size,
        overwrite=args.overwrite,
        plots=not args.no_plots,
        bootstrap=args.bootstrap,
        ignore_fingerprint=args.ignore_fingerprint,
    )
    table = result.metrics.sort_values("auroc", ascending=False, na_position="last")
    sys.stdout.write(markdown_table(table) + "\n")
    boot = result.bootstrap
    if not boot.empty:
        sys.stdout.write("cpgformer minus each model, paired bootstrap 95 % interval:\n")
        for r in boot[boot["scope"] == "all"].itertuples(index=False):
            interval = (
                "undefined" if r.ci_low != r.ci_low else f"[{r.ci_low:+.4f}, {r.ci_high:+.4f}]"
            )
            sys.stdout.write(f"  {r.model} {r.metric}: {r.difference:+.4f} {interval}\n")
    sys.stdout.write(f"report: {result.out_dir / 'report.md'}\n")
    return 0
