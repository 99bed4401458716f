"""AUROC of models scored on the same hidden calls, with paired bootstrap 95 % intervals.

Reads one or more ``predictions.tsv.gz`` files written by ``cpgformer benchmark`` (columns chrom, pos,
cell, label and one column per model), joins them on (chrom, pos, cell) — e.g. two benchmark runs of
different checkpoints with the same store, seed and hide fraction, which hide the same calls — and
reports each model's AUROC and the difference of ``--reference`` minus every other model, overall
and per group of cells (``--groups TSV`` with columns cell, group).

Example: ``python benchmarks/paired_auroc.py a/predictions.tsv.gz:axial_ b/predictions.tsv.gz:induced_
--reference induced_cpgformer``. A ``:PREFIX`` after a file prefixes its model columns.
"""

from __future__ import annotations

import argparse
import sys

import pandas as pd

from cpgformer.benchmark.metrics import paired_bootstrap

KEYS = ["chrom", "pos", "cell"]
NOT_MODELS = (*KEYS, "label", "cpg_density", "tss_distance", "round")


def load(specs: list[str]) -> pd.DataFrame:
    merged = None
    for spec in specs:
        path, _, prefix = spec.partition(":")
        frame = pd.read_csv(path, sep="\t", dtype={"chrom": str, "cell": str})
        models = [c for c in frame.columns if c not in NOT_MODELS]
        frame = frame.rename(columns={m: prefix + m for m in models})
        if merged is None:
            merged = frame
        else:
            keep = KEYS + [prefix + m for m in models]
            merged = merged.merge(frame[keep], on=KEYS, how="inner", validate="one_to_one")
    assert merged is not None
    return merged


def table(frame: pd.DataFrame, reference: str, n_boot: int, seed: int) -> list[str]:
    models = [c for c in frame.columns if c not in (*NOT_MODELS, "group")]
    others = {m: frame[m].to_numpy() for m in models if m != reference}
    boot = paired_bootstrap(
        frame["label"].to_numpy(), frame[reference].to_numpy(), others, n_boot=n_boot, seed=seed
    )
    auroc = {r["model"]: r for r in boot if r["metric"] == "auroc"}
    lines = []
    for model in models:
        if model == reference:
            value = next(iter(auroc.values()))["reference"]
            lines.append(f"| {model} | {len(frame):,} | {value:.4f} | – |")
            continue
        r = auroc[model]
        lines.append(
            f"| {model} | {len(frame):,} | {r['other']:.4f} | {r['difference']:+.4f} "
            f"[{r['ci_low']:+.4f}, {r['ci_high']:+.4f}] |"
        )
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("predictions", nargs="+", help="predictions.tsv.gz[:PREFIX]")
    parser.add_argument("--reference", required=True, help="model column compared to the others")
    parser.add_argument("--groups", help="TSV with columns cell, group: also report per group")
    parser.add_argument("--cells", help="only these cells (file with one name per line)")
    parser.add_argument("--bootstrap", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    frame = load(args.predictions)
    if args.cells:
        keep = {line.strip() for line in open(args.cells) if line.strip()}
        frame = frame[frame["cell"].isin(keep)]
    header = [
        f"| model | calls | AUROC | {args.reference} minus model [95 % CI] |",
        "|---|---|---|---|",
    ]
    out = ["all cells", "", *header, *table(frame, args.reference, args.bootstrap, args.seed)]
    if args.groups:
        groups = pd.read_csv(args.groups, sep="\t", dtype=str)
        groups.columns = ["cell", "group", *groups.columns[2:]]
        frame = frame.merge(groups[["cell", "group"]], on="cell", how="left")
        for name, part in frame.groupby("group"):
            out += ["", f"group {name}", "", *header]
            out += table(part.drop(columns="group"), args.reference, args.bootstrap, args.seed)
    sys.stdout.write("\n".join(out) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
