"""Time per explained prediction of ``cpgformer explain`` (integrated gradients + attention maps).

Uses the published architecture (4 layers, hidden 64, 8 heads, site window 21; random weights: the
cost does not depend on them) on one receptive field of 81 sites x C cells, without DNA and with the
1001-bp DNA branch, and writes a markdown table (``--markdown``).

    .venv/bin/python benchmarks/explain_speed.py
    .venv/bin/python benchmarks/explain_speed.py --cells 30 122 --n-steps 50 --device cuda --markdown /tmp/x.md
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import resource
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def measure(n_cells: int, dna_window: int, n_steps: int, device: str, repeats: int) -> dict:
    from cpgformer.explain import attention_maps, integrated_gradients
    from cpgformer.nn import CpGTransformer, ModelConfig

    torch.manual_seed(0)
    config = ModelConfig(n_cells=n_cells, dna_window=dna_window)
    model = CpGTransformer(config).to(device).eval()
    length = 2 * config.receptive_field_sites + 1
    g = torch.Generator().manual_seed(1)
    states = torch.randint(0, 3, (1, length, n_cells), generator=g).to(device)
    positions = torch.cumsum(torch.randint(1, 200, (1, length), generator=g), 1).to(device)
    cells = torch.arange(n_cells).unsqueeze(0).to(device)
    dna = None
    if dna_window:
        dna = torch.randint(0, 4, (1, length, dna_window), generator=g).to(device)
    target = length // 2
    ig_times, attn_times, deltas = [], [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        attr = integrated_gradients(
            model, states, positions, cells, target, 0, dna=dna, n_steps=n_steps
        )
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        t1 = time.perf_counter()
        attention_maps(model, states, positions, cells, target, dna=dna)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        t2 = time.perf_counter()
        ig_times.append(t1 - t0)
        attn_times.append(t2 - t1)
        deltas.append(abs(attr.convergence_delta))
    return {
        "cells": n_cells,
        "dna_window": dna_window,
        "sites": length,
        "n_steps": n_steps,
        "ig_s": min(ig_times),
        "attention_s": min(attn_times),
        "delta": max(deltas),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", type=int, nargs="+", default=[30])
    parser.add_argument("--dna-windows", type=int, nargs="+", default=[0, 1001])
    parser.add_argument("--n-steps", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--threads", type=int, default=None, help="torch threads (default: torch's)"
    )
    parser.add_argument("--markdown", default="explain-speed.md")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    rows = [
        measure(c, w, args.n_steps, args.device, args.repeats)
        for c in args.cells
        for w in args.dna_windows
    ]
    load_after = os.getloadavg()
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    device = (
        torch.cuda.get_device_name(torch.device(args.device))
        if args.device.startswith("cuda")
        else f"{cpu_model()}, {os.cpu_count()} CPUs, {torch.get_num_threads()} torch threads"
    )
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        "# Benchmark: `cpgformer explain` time per prediction",
        "",
        f"Date: {now}. Device: {device}; Python {platform.python_version()}, torch "
        f"{torch.__version__}. Load average {load_before[0]:.1f} before, {load_after[0]:.1f} "
        "after (a shared machine: times are upper bounds).",
        "",
        f"Command: `.venv/bin/python benchmarks/explain_speed.py {' '.join(sys.argv[1:])}`".rstrip()
        + " — published architecture (4 layers, hidden 64, 8 heads × 8, site window 21), random "
        "weights, one receptive field (81 sites × all cells), Gauss–Legendre integrated gradients, "
        f"best of {args.repeats}.",
        "",
        "| cells | DNA window | sites | n_steps | integrated gradients | attention maps | "
        "max abs delta |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['cells']} | {r['dna_window'] or 'none'} | {r['sites']} | {r['n_steps']} | "
            f"{r['ig_s']:.2f} s | {r['attention_s']:.3f} s | {r['delta']:.2e} |"
        )
    lines += ["", f"Peak RSS of the benchmark process: {peak_mb:.0f} MB.", ""]
    text = "\n".join(lines)
    Path(args.markdown).parent.mkdir(parents=True, exist_ok=True)
    Path(args.markdown).write_text(text)
    sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
