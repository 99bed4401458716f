"""Whole-model speed, DNA network included: cpgformer vs the original formulation, side by side.

Both run the same weights on the same inputs (fp32, CPU, batch 1 segment of L sites x C cells,
default architecture: 4 axial layers, hidden 64, window 21, DNA window 1001 with 2 conv layers):

* ``fast``: ``CpGTransformer.forward`` as training and imputation call it: the DNA CNN over the
  segment's covered sequence with convolutions shared between overlapping windows
  (``dna_sequence`` + ``dna_starts``, built by ``cpgformer.data.batch.dna_sequence``), the fast
  attention path;
* ``port``: the original formulation: ``original_port.port_forward`` with the DNA CNN run on each
  site's 1001-bp window separately (``dna`` windows ``[1, L, 1001]``).

Sites are real: L consecutive sites of the 30 scbs cells (the union of their CpGs; segments drawn at
random with a fixed seed), so the spacing of CpGs — which decides how much the windows overlap — is
that of real data; the genome is synthetic (random bases), which does not change the cost. Without
the scbs files, positions are drawn with the same gap distribution as a fallback (stated in the
output). ``--no-dna`` rows use a model without DNA branch.

Phases: training step = forward + backward (train mode, dropout on); inference = eval mode under
``torch.inference_mode``. Every (impl, phase, C, L) runs in a fresh process (as a training or
imputation job does), fast and port alternating for ``--rounds`` rounds, each timing the sum over
``--segments`` segments after one untimed pass; the best round is kept. The same run measures the
machine's fp32 matmul peak (2048^3 matmul, best of 5) and reports FLOP/s counted by
``torch.utils.flop_counter`` (matmuls and convolutions; attention cores outside PyTorch ops are not
counted, so this is a lower bound) as a fraction of it. ``--memory`` adds the peak RSS of one
direct inference call on a ``--memory-sites`` segment (windows vs sequence input).

Example: ``python benchmarks/whole_model.py --cells 20 122 --sites 256 1024 --output out.md``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import glob
import gzip
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

SCBS = Path(__file__).resolve().parents[2] / "shared/data/scbs_tutorial"
CLOCK = time.perf_counter


def real_positions(folder: Path) -> dict[str, np.ndarray] | None:
    """Sorted union of the CpG positions of the scbs cells per chromosome (None without them)."""
    files = sorted(glob.glob(str(folder / "cell_*.cov.gz")))
    if not files:
        return None
    chroms: dict[str, set[int]] = {}
    for name in files:
        with gzip.open(name, "rt") as handle:
            for line in handle:
                chrom, start = line.split("\t", 2)[:2]
                chroms.setdefault(chrom, set()).add(int(start))
    return {c: np.array(sorted(p), dtype=np.int64) for c, p in chroms.items()}


def draw_segments(positions: dict[str, np.ndarray] | None, sites: int, count: int, seed: int):
    """``count`` segments of ``sites`` consecutive positions (bp, from 0)."""
    rng = np.random.default_rng(seed)
    if positions is None:  # fallback: gaps of promoter-rich data (median 28, mean ~3.6 kb)
        gaps = np.where(rng.random((count, sites)) < 0.97, rng.geometric(1 / 40, (count, sites)),
                        rng.integers(5_000, 100_000, (count, sites)))  # fmt: skip
        return [np.cumsum(g) for g in gaps]
    chroms = [c for c, p in positions.items() if len(p) > sites]
    out = []
    for _ in range(count):
        p = positions[chroms[rng.integers(len(chroms))]]
        a = int(rng.integers(0, len(p) - sites))
        out.append(p[a : a + sites] - p[a] + 600)
    return out


class SyntheticGenome:
    """Random bases around the segment (N beyond its ends); ``fetch_codes`` as a Reference."""

    def __init__(self, length: int, seed: int) -> None:
        self.codes = np.random.default_rng(seed).integers(0, 4, length).astype(np.int8)

    def fetch_codes(self, chrom: str, start: int, end: int) -> np.ndarray:
        out = np.full(end - start, 4, dtype=np.int8)
        lo, hi = max(start, 0), min(end, len(self.codes))
        if hi > lo:
            out[lo - start : hi - start] = self.codes[lo:hi]
        return out


def _inputs(config, segment: np.ndarray, cells: int, seed: int) -> dict:
    from cpgformer.data.batch import dna_sequence

    g = torch.Generator().manual_seed(seed)
    sites = len(segment)
    out = {
        "states": torch.randint(0, 3, (1, sites, cells), generator=g),
        "positions": torch.from_numpy(segment - segment[0]).unsqueeze(0),
        "cell_ids": torch.arange(cells).unsqueeze(0),
    }
    if config.has_dna:
        genome = SyntheticGenome(int(segment[-1]) + 1200, seed)
        seq, starts = dna_sequence(genome, "x", segment, config.dna_window)
        out["dna_sequence"] = torch.from_numpy(seq).unsqueeze(0)
        out["dna_starts"] = torch.from_numpy(starts).unsqueeze(0)
        windows = torch.from_numpy(seq).unfold(0, config.dna_window, 1)[torch.from_numpy(starts)]
        out["dna"] = windows.unsqueeze(0).contiguous()
        out["covered"] = len(seq)
    return out


def _call(model, impl: str, x: dict):
    from cpgformer.nn.original_port import port_forward

    base = (x["states"], x["positions"], x["cell_ids"])
    if impl == "port":
        return port_forward(model, *base, dna=x.get("dna"))
    if "dna_sequence" in x:
        return model(*base, dna_sequence=x["dna_sequence"], dna_starts=x["dna_starts"])
    return model(*base)


def worker(spec: dict) -> dict:
    """Time one workload in this process: sum over the segments, best of ``repeats``."""
    from cpgformer.nn import CpGTransformer, ModelConfig

    torch.manual_seed(0)
    dna_window = 1001 if spec["dna"] else 0
    config = ModelConfig(n_cells=spec["cells"], dna_window=dna_window)
    model = CpGTransformer(config)
    if spec["impl"] == "fast-bf16":
        model.set_dna_precision("bf16")
    segments = np.load(spec["segments"])
    inputs = [_inputs(config, seg, spec["cells"], k) for k, seg in enumerate(segments)]
    train = spec["phase"] == "train"
    model.train(train)

    def once() -> None:
        for x in inputs:
            if train:
                model.zero_grad(set_to_none=True)
                _call(model, spec["impl"], x).square().mean().backward()
            else:
                with torch.inference_mode():
                    _call(model, spec["impl"], x)

    once()
    best = float("inf")
    for _ in range(spec["repeats"]):
        start = CLOCK()
        once()
        best = min(best, CLOCK() - start)
    result = {"seconds": best}
    if spec.get("flops"):
        from torch.utils.flop_counter import FlopCounterMode

        with FlopCounterMode(display=False) as counter:
            once()
        result["flops"] = counter.get_total_flops()
    if config.has_dna:
        result["covered_per_site"] = sum(x["covered"] for x in inputs) / (
            len(inputs) * len(segments[0])
        )
    return result


def matmul_peak(repeats: int = 5) -> float:
    """fp32 FLOP/s of a 2048^3 matmul, timed with the benchmark's clock (wall or CPU time)."""
    a = torch.randn(2048, 2048)
    b = torch.randn(2048, 2048)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        start = CLOCK()
        a @ b
        best = min(best, CLOCK() - start)
    return 2 * 2048**3 / best


def memory_worker(spec: dict) -> dict:
    """Peak RSS of one direct inference call on a long segment (windows or sequence input)."""
    from cpgformer.nn import CpGTransformer, ModelConfig

    torch.manual_seed(0)
    config = ModelConfig(n_cells=spec["cells"])
    model = CpGTransformer(config).eval()
    segment = np.load(spec["segments"])[0]
    x = _inputs(config, segment, spec["cells"], 0)
    if spec["impl"] == "windows":
        x.pop("dna_sequence")
        kwargs = {"dna": x["dna"]}
    else:
        x.pop("dna")
        kwargs = {"dna_sequence": x["dna_sequence"], "dna_starts": x["dna_starts"]}
    base_rss = _rss_mib("VmRSS")
    start = time.perf_counter()
    with torch.inference_mode():
        model(x["states"], x["positions"], x["cell_ids"], **kwargs)
    return {
        "seconds": time.perf_counter() - start,
        "peak_mib": _rss_mib("VmHWM"),
        "before_mib": base_rss,
    }


def _rss_mib(key: str) -> float:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _subprocess(spec: dict, args: argparse.Namespace) -> dict:
    command = [sys.executable, __file__, "--worker", json.dumps(spec)]
    if args.threads:
        command += ["--threads", str(args.threads)]
    if args.cpu_time:
        command.append("--cpu-time")
    done = subprocess.run(command, check=True, capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def port_fits(cells: int, sites: int, train: bool, budget_gb: float) -> bool:
    """Estimated memory of the port (activations ~(25 KB + 80 B C) per token per layer, C x C
    probabilities; per-window DNA CNN ~1.5 MB per site) within ``budget_gb``."""
    tokens = sites * cells
    per_token = 25_000 + 80 * cells + 12 * 8 * cells
    stack = tokens * per_token * 4 * (1.0 if train else 0.3)
    dna = sites * 1.5e6 * (1.0 if train else 0.3)
    return stack + dna <= budget_gb * 1e9


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cells", type=int, nargs="+", default=[20, 122])
    parser.add_argument("--sites", type=int, nargs="+", default=[256, 1024])
    parser.add_argument("--segments", type=int, default=2, help="segments per timing")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--no-dna", action="store_true", help="also time models without DNA")
    parser.add_argument("--phases", nargs="+", default=["train", "infer"])
    parser.add_argument("--memory-budget-gb", type=float, default=9.0)
    parser.add_argument("--memory", action="store_true", help="peak RSS of a long direct call")
    parser.add_argument("--memory-sites", type=int, default=16384)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--dna-bf16", action="store_true", help="also time the fast path with the DNA CNN in bf16"
    )
    parser.add_argument(
        "--cpu-time",
        action="store_true",
        help="process CPU time instead of wall time (with --threads 1: robust on a loaded machine)",
    )
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--output")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    global CLOCK
    if args.cpu_time:
        CLOCK = time.process_time
    if args.worker:
        spec = json.loads(args.worker)
        fn = memory_worker if spec.get("memory") else worker
        sys.stdout.write(json.dumps(fn(spec)) + "\n")
        return 0
    positions = real_positions(SCBS)
    source = "scbs (30 cells) CpG positions" if positions else "synthetic positions (fallback)"
    tmp = Path(tempfile.mkdtemp(prefix="whole_model_"))
    peak = matmul_peak()
    rows = []
    for sites in args.sites:
        seg_path = tmp / f"segments-{sites}.npy"
        np.save(seg_path, np.stack(draw_segments(positions, sites, args.segments, args.seed)))
        for cells in args.cells:
            for dna in [True] + ([False] if args.no_dna else []):
                for phase in args.phases:
                    if not port_fits(cells, sites, phase == "train", args.memory_budget_gb):
                        sys.stderr.write(f"skip C={cells} L={sites} {phase}: port too large\n")
                        continue
                    sys.stderr.write(f"C={cells} L={sites} dna={dna} {phase} ...\n")
                    best: dict[str, dict] = {}
                    impls = ["fast", "port"] + (["fast-bf16"] if args.dna_bf16 and dna else [])
                    for r in range(args.rounds):
                        for impl in impls:
                            spec = {
                                "impl": impl, "phase": phase, "cells": cells, "dna": dna,
                                "segments": str(seg_path), "repeats": args.repeats,
                                "flops": r == 0 and impl != "port",
                            }  # fmt: skip
                            res = _subprocess(spec, args)
                            if impl not in best or res["seconds"] < best[impl]["seconds"]:
                                best[impl] = {**best.get(impl, {}), **res}
                    tokens = sites * cells * args.segments
                    fast, port = best["fast"], best["port"]
                    rows.append(
                        {
                            "cells": cells,
                            "sites": sites,
                            "dna": dna,
                            "phase": phase,
                            "fast_tok_s": tokens / fast["seconds"],
                            "port_tok_s": tokens / port["seconds"],
                            "speedup": port["seconds"] / fast["seconds"],
                            "peak_fraction": fast.get("flops", 0) / fast["seconds"] / peak,
                            "covered": fast.get("covered_per_site"),
                        }  # fmt: skip
                    )
                    if "fast-bf16" in best:
                        b16 = best["fast-bf16"]
                        rows[-1]["bf16_tok_s"] = tokens / b16["seconds"]
                        rows[-1]["bf16_speedup"] = port["seconds"] / b16["seconds"]
                        rows[-1]["bf16_fraction"] = b16.get("flops", 0) / b16["seconds"] / peak
                    sys.stderr.write(json.dumps(rows[-1]) + "\n")
                    (tmp / "rows.json").write_text(json.dumps(rows))
    memory = []
    if args.memory:
        seg_path = tmp / "segments-memory.npy"
        np.save(seg_path, np.stack(draw_segments(positions, args.memory_sites, 1, args.seed)))
        for impl in ("windows", "sequence"):
            spec = {"memory": True, "impl": impl, "cells": 20, "segments": str(seg_path)}
            memory.append({"impl": impl, **_subprocess(spec, args)})
    load = os.getloadavg()
    header = (
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch "
        f"{torch.__version__}, {torch.get_num_threads()} threads, fp32, batch 1; date "
        f"{dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC; "
        f"{'process CPU' if args.cpu_time else 'wall'} time; load average at the end "
        f"{load[0]:.1f}/{load[1]:.1f}/{load[2]:.1f}; sites: {source}; measured fp32 matmul peak "
        f"{peak / 1e9:.0f} GFLOP/s.\nCommand: python benchmarks/whole_model.py "
        + " ".join(argv if argv is not None else sys.argv[1:])
    )
    lines = [
        "| C | L | DNA | phase | fast (tokens/s) | original formulation | speed-up | "
        "counted FLOP/s / peak (fast) | covered bp per site | fast, DNA CNN in bf16 | speed-up |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        covered = f"{r['covered']:.0f}" if r["covered"] else "–"
        lines.append(
            f"| {r['cells']} | {r['sites']} | {'yes' if r['dna'] else 'no'} | {r['phase']} | "
            f"{r['fast_tok_s']:,.0f} | {r['port_tok_s']:,.0f} | {r['speedup']:.1f}x | "
            f"{100 * r['peak_fraction']:.0f} % | {covered} | "
            + (
                f"{r['bf16_tok_s']:,.0f} | {r['bf16_speedup']:.1f}x |"
                if "bf16_tok_s" in r
                else "– | – |"
            )
        )
    if memory:
        lines += ["", f"| direct call, C = 20, L = {args.memory_sites:,}, inference | seconds | peak RSS MiB |", "|---|---|---|"]  # fmt: skip
        for m in memory:
            lines.append(f"| DNA as {m['impl']} | {m['seconds']:.1f} | {m['peak_mib']:,.0f} |")
    text = header + "\n\n" + "\n".join(lines) + "\n"
    sys.stdout.write(text)
    if args.output:
        Path(args.output).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
