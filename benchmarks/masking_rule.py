"""Which perturbation count rule trains better under the same budget? (chooses the default)

Trains one model per mask rule (``original``: min(floor(L * p), #observed) entries per segment;
``observed``: a fraction p of the observed entries) for the same number of optimiser steps, then
scores every model on the *same* fixed validation masks of each rule (AUROC over the perturbed
entries), next to the per-site mean of the other cells on those entries.

    python benchmarks/masking_rule.py STORE --steps 300 --segment-length 128 --out masking-rule.md

Extra flags after ``--`` go to ``cpgformer train`` (model size etc.).
"""

from __future__ import annotations

import argparse
import datetime
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from torchmetrics.classification import BinaryAUROC

from cpgformer.checkpoint import load_checkpoint
from cpgformer.data.datamodule import DataConfig, SegmentDataModule
from cpgformer.training.task import other_cells_mean


def evaluate(
    ckpt: Path, store: str, rule: str, data: dict, max_batches: int
) -> tuple[float, float]:
    """(model AUROC, per-site-mean AUROC) on the fixed validation masks of ``rule``."""
    loaded = load_checkpoint(ckpt)
    cfg = {k: v for k, v in data.items() if k in DataConfig.__dataclass_fields__}
    cfg.update(mask_rule=rule, num_workers=0)
    dm = SegmentDataModule(
        store,
        DataConfig.from_dict(cfg),
        data_mode=loaded.config.data_mode,
        dna_window=loaded.config.dna_window or 0,
        rank=0,
        world_size=1,
    )
    model_auc, base_auc = BinaryAUROC(), BinaryAUROC()
    with torch.no_grad():
        for k, batch in enumerate(dm.val_dataloader()):
            if k >= max_batches:
                break
            logits = loaded.model(batch.states, batch.positions, batch.cell_ids, dna=batch.dna)
            labels = batch.targets[batch.loss_mask].round().long()
            model_auc.update(torch.sigmoid(logits[batch.loss_mask]), labels)
            base_auc.update(other_cells_mean(batch.states)[batch.loss_mask], labels)
    return float(model_auc.compute()), float(base_auc.compute())


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("store")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--segment-length", type=int, default=128)
    parser.add_argument("--val-batches", type=int, default=30)
    parser.add_argument("--out", default="masking-rule.md")
    parser.add_argument("--work", default=None, help="folder for the runs (default: a temp dir)")
    argv = sys.argv[1:]
    extra = argv[argv.index("--") + 1 :] if "--" in argv else []
    args = parser.parse_args(argv[: argv.index("--")] if "--" in argv else argv)
    work = Path(args.work or tempfile.mkdtemp(prefix="masking-rule-"))
    rules = ("original", "observed")
    rows = []
    for rule in rules:
        run = work / rule
        cmd = [
            sys.executable,
            "-m",
            "cpgformer.cli",
            "-q",
            "train",
            args.store,
            "-o",
            str(run),
            "--mask-rule",
            rule,
            "--segment-length",
            str(args.segment_length),
            "--max-steps",
            str(args.steps),
            "--limit-val-batches",
            str(args.val_batches),
            "--val-check-interval",
            str(max(1, args.steps // 3)),
            "--no-early-stopping",
            *extra,
        ]
        t0 = time.time()
        subprocess.run(cmd, check=True)
        seconds = time.time() - t0
        ckpt = run / "checkpoints" / "last.ckpt"
        data = load_checkpoint(ckpt).data
        scores = {r: evaluate(ckpt, args.store, r, data, args.val_batches) for r in rules}
        rows.append((rule, seconds, scores, shlex.join(cmd[3:])))
    lines = [
        "# Mask count rule: original vs. observed (same steps, same fixed validation masks)",
        "",
        f"Date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC; machine: "
        f"{platform.machine()}, {torch.get_num_threads()} torch threads, {platform.processor() or 'cpu'}; "
        f"store: `{args.store}`; {args.steps} steps; segment length {args.segment_length}; "
        f"{args.val_batches} validation segments.",
        "",
        "| trained with | wall s | AUROC on original-rule masks | AUROC on observed-rule masks | per-site mean (orig / obs) |",
        "|---|---|---|---|---|",
    ]
    for rule, seconds, scores, _ in rows:
        o, b = scores["original"], scores["observed"]
        lines.append(
            f"| {rule} | {seconds:.0f} | {o[0]:.4f} | {b[0]:.4f} | {o[1]:.4f} / {b[1]:.4f} |"
        )
    lines += ["", "Commands:", ""] + [f"    cpgformer {c}" for *_, c in rows] + [""]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n".join(lines))
    sys.stdout.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
