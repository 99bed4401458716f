"""``cpgformer benchmark``: CpG Transformer and baselines on identical hidden entries, with a report."""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass

from cpgformer import options
from cpgformer.benchmark.baselines import CaMeliaConfig, DeepCpGConfig
from cpgformer.benchmark.report import markdown_table
from cpgformer.benchmark.run import BenchmarkOptions, run_benchmark
from cpgformer.options import option

NAME = "benchmark"
HELP = "score cpgformer and baselines on hidden calls of test chromosomes (tables, report, plots)"


@dataclass
class DeepCpGFlags:
    """DeepCpG training (bounded by default)."""

    deepcpg_max_steps: int = option(600, "training steps")
    deepcpg_max_seconds: float | None = option(None, "wall-clock budget of training")
    deepcpg_lr: float = option(1e-3, "learning rate")
    deepcpg_hidden: int = option(256, "CpG-module width (GRU hidden size, as published)")

    def config(self, seed: int) -> DeepCpGConfig:
        return DeepCpGConfig(
            max_steps=self.deepcpg_max_steps, max_seconds=self.deepcpg_max_seconds,
            lr=self.deepcpg_lr, cpg_hidden=self.deepcpg_hidden, seed=seed,
        )  # fmt: skip


@dataclass
class CaMeliaFlags:
    """CaMelia."""

    camelia_iterations: int = option(1000, "CatBoost rounds per cell")
    camelia_max_train_rows: int | None = option(
        None, "subsample each cell's training rows (seeded)"
    )

    def config(self, seed: int) -> CaMeliaConfig:
        return CaMeliaConfig(
            iterations=self.camelia_iterations, max_train_rows=self.camelia_max_train_rows,
            seed=seed,
        )  # fmt: skip


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("store", help="dataset store written by `cpgformer prepare`")
    parser.add_argument("-o", "--output", required=True, help="report directory (created)")
    options.add_options(parser, BenchmarkOptions, skip={"deepcpg", "camelia"})
    options.add_alias(parser, "--no-plots", "--no-figures", "figures", store=False)
    options.add_options(parser.add_argument_group("DeepCpG training (bounded)"), DeepCpGFlags)
    options.add_options(parser.add_argument_group("CaMelia"), CaMeliaFlags)


def run(args: argparse.Namespace) -> int:
    opts = options.from_args(BenchmarkOptions, args)
    opts.deepcpg = options.from_args(DeepCpGFlags, args).config(opts.seed)
    opts.camelia = options.from_args(CaMeliaFlags, args).config(opts.seed)
    result = run_benchmark(args.store, opts, out_dir=args.output)
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
