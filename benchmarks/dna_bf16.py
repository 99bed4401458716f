"""How much the opt-in bf16 DNA CNN (``CpGTransformer.set_dna_precision("bf16")``) changes outputs.

Whole model, eval mode, fp32 stack, DNA CNN in bf16 vs fp32, on segments of real CpG spacing (the
scbs cells' positions, as ``benchmarks/whole_model.py``) and a synthetic genome. Weights: the
published initialisation (random), or a trained checkpoint with ``--checkpoint``. Reports the DNA
embeddings' relative error and the predicted probabilities' absolute differences (max, mean,
99.9th percentile) and how often the predicted class (p > 0.5) flips.

With ``--store STORE --checkpoint CKPT --out DIR`` it scores the trained model instead on the
store's held-out calls (``cpgformer benchmark`` with its defaults: the checkpoint's test
chromosomes or blocks, 20 % of the observed test calls hidden) twice — the DNA network in fp32 and
in bf16 — and reports both AUROCs with the paired bootstrap interval of their difference and the
largest change of a predicted probability.

Example: ``python benchmarks/dna_bf16.py --cells 20 --sites 1024 --segments 8``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import whole_model  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cells", type=int, default=20)
    parser.add_argument("--sites", type=int, default=1024)
    parser.add_argument("--segments", type=int, default=8)
    parser.add_argument("--checkpoint", help="a trained cpgformer checkpoint (with DNA)")
    parser.add_argument("--store", help="score the checkpoint on this store's held-out calls")
    parser.add_argument("--out", help="benchmark output folder (with --store)")
    args = parser.parse_args(argv)
    if args.store:
        if not (args.checkpoint and args.out):
            parser.error("--store needs --checkpoint and --out")
        return held_out(args.store, args.checkpoint, args.out)
    from cpgformer.nn import CpGTransformer, ModelConfig

    torch.manual_seed(0)
    if args.checkpoint:
        from cpgformer.checkpoint import load_checkpoint

        model = load_checkpoint(args.checkpoint).model
    else:
        model = CpGTransformer(ModelConfig(n_cells=args.cells))
    model.eval()
    config = model.config
    positions = whole_model.real_positions(whole_model.SCBS)
    segments = whole_model.draw_segments(positions, args.sites, args.segments, seed=1)
    emb_err, diffs, flips = [], [], []
    for k, segment in enumerate(segments):
        x = whole_model._inputs(config, segment, config.n_cells, k)
        with torch.inference_mode():
            model.set_dna_precision("fp32")
            e32 = model.embed_dna_sequence(x["dna_sequence"], x["dna_starts"])
            p32 = torch.sigmoid(whole_model._call(model, "fast", x))
            model.set_dna_precision("bf16")
            e16 = model.embed_dna_sequence(x["dna_sequence"], x["dna_starts"])
            p16 = torch.sigmoid(whole_model._call(model, "fast", x))
        emb_err.append(float((e16 - e32).norm() / e32.norm()))
        diffs.append((p16 - p32).abs().flatten())
        flips.append(((p16 > 0.5) != (p32 > 0.5)).float().mean().item())
    d = torch.cat(diffs).numpy()
    print(
        f"weights: {'checkpoint ' + args.checkpoint if args.checkpoint else 'random (published init)'}; "
        f"C={config.n_cells}, {args.segments} segments x {args.sites} sites\n"
        f"DNA embedding relative error (L2): mean {np.mean(emb_err):.2e}, max {max(emb_err):.2e}\n"
        f"|p_bf16 - p_fp32|: max {d.max():.2e}, mean {d.mean():.2e}, "
        f"99.9th pct {np.percentile(d, 99.9):.2e}; class flips {np.mean(flips):.2e}"
    )
    return 0


def held_out(store: str, checkpoint: str, out: str) -> int:
    """The benchmark's hidden calls scored with the DNA network in fp32 and in bf16."""
    import pandas as pd

    from cpgformer.benchmark.cpgformer_model import CpgformerModel
    from cpgformer.benchmark.run import run_benchmark

    models = []
    for precision in ("fp32", "bf16"):
        model = CpgformerModel.from_checkpoint(checkpoint)
        model.name = "cpgformer" if precision == "fp32" else "cpgformer-bf16"  # fp32: reference
        model.model.network.set_dna_precision(precision)
        models.append(model)
    run_benchmark(store, models=[*models, "site-mean"], checkpoint=checkpoint, out_dir=out)
    frame = pd.read_csv(Path(out) / "predictions.tsv.gz", sep="\t")
    change = (frame["cpgformer-bf16"] - frame["cpgformer"]).abs()
    boot = pd.read_csv(Path(out) / "paired_bootstrap.tsv", sep="\t")
    print(boot.to_string(index=False))
    print(
        f"{len(frame):,} hidden calls; |p_bf16 - p_fp32|: max {change.max():.2e}, mean "
        f"{change.mean():.2e}; class flips {((frame['cpgformer-bf16'] > 0.5) != (frame['cpgformer'] > 0.5)).mean():.2e}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
