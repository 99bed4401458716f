"""Time per token and peak memory against the number of cells: full axial attention vs ``induced``.

For each attention mode and cell count C, the whole model (``--size published``: 4 layers, hidden
64, 8 heads x 8, window 21; ``compact``: 2 layers, hidden 32, 4 heads x 8; no DNA branch) runs on
one segment of L sites x C cells, L = max(--min-sites, --tokens // C), so every measurement handles
the same number of tokens
(160,000 by default: the cost per token of any model grows with the size of a step, so equal steps
are compared):

* training step: forward + backward in train mode (attention dropout 0.2), loss on all tokens;
* inference: eval mode under ``torch.inference_mode``.

The ``induced`` mode embeds cells with the profile encoder (random profiles; the cost does not depend
on their values); ``axial`` uses the published cell table. Every measurement runs in a fresh process
(best of ``--repeats`` after one warm-up call); peak memory is that process's maximum resident set.
Example: ``python benchmarks/cells_scaling.py --cells 20 100 1000 10000``. Prints a markdown table;
``--output FILE`` also writes it.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import resource
import subprocess
import sys
import time

import torch

from cpgformer.nn import CpGTransformer, ModelConfig

PROFILE_FEATURES = 18


SIZES = {
    "published": {},
    "compact": {"hidden": 32, "n_layers": 2, "n_heads": 4, "head_dim": 8},
}
"""Model sizes: the published one, and the compact one ``cpgformer train`` suggests for small stores."""


def build(mode: str, cells: int, size: str = "published") -> CpGTransformer:
    torch.manual_seed(0)
    if mode == "induced":
        config = ModelConfig(
            n_cells=1, dna_window=0, mode="induced", cell_encoder="profile",
            profile_features=PROFILE_FEATURES, **SIZES[size],
        )  # fmt: skip
        model = CpGTransformer(config)
        model.set_cell_profiles(torch.randn(cells, PROFILE_FEATURES))
        return model
    return CpGTransformer(ModelConfig(n_cells=cells, dna_window=0, mode=mode, **SIZES[size]))


def inputs(sites: int, cells: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    states = torch.randint(0, 3, (1, sites, cells), generator=generator)
    positions = torch.cumsum(torch.randint(1, 200, (1, sites), generator=generator), 1)
    return states, positions, torch.arange(cells).unsqueeze(0)


def worker(mode: str, cells: int, sites: int, part: str, repeats: int, size: str) -> dict:
    model = build(mode, cells, size)
    states, positions, cell_ids = inputs(sites, cells)
    if part == "train":
        model.train()

        def step() -> None:
            model.zero_grad(set_to_none=True)
            model(states, positions, cell_ids).square().mean().backward()

    else:
        model.eval()

        def step() -> None:
            with torch.inference_mode():
                model(states, positions, cell_ids)

    step()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        best = min(best, time.perf_counter() - start)
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {
        "seconds": best,
        "us_per_token": best / (sites * cells) * 1e6,
        "peak_gb": peak_kb / 2**20,
    }


def measure(mode: str, cells: int, sites: int, part: str, args: argparse.Namespace) -> dict:
    command = [
        sys.executable, __file__, "--worker", f"{mode},{cells},{sites},{part}",
        "--repeats", str(args.repeats), "--size", args.size,
    ]  # fmt: skip
    try:
        out = subprocess.run(
            command, capture_output=True, text=True, check=True, timeout=args.timeout
        )
    except subprocess.TimeoutExpired:
        return {"seconds": float("nan"), "us_per_token": float("nan"), "peak_gb": float("nan")}
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cells", type=int, nargs="+", default=[20, 100, 1000, 10000])
    parser.add_argument("--modes", nargs="+", default=["axial", "induced"])
    parser.add_argument("--tokens", type=int, default=160_000, help="tokens per step (about)")
    parser.add_argument("--min-sites", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--size", choices=sorted(SIZES), default="published", help="model size")
    parser.add_argument("--timeout", type=float, default=900, help="seconds per measurement")
    parser.add_argument("--output", help="also write the markdown table here")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        mode, cells, sites, part = args.worker.split(",")
        print(json.dumps(worker(mode, int(cells), int(sites), part, args.repeats, args.size)))
        return 0
    rows = []
    for cells in args.cells:
        sites = max(args.min_sites, args.tokens // cells)
        for mode in args.modes:
            train = measure(mode, cells, sites, "train", args)
            infer = measure(mode, cells, sites, "infer", args)
            rows.append((mode, cells, sites, train, infer))
            print(
                f"{mode} C={cells} L={sites}: train {train['us_per_token']:.2f} us/token, "
                f"infer {infer['us_per_token']:.2f} us/token",
                file=sys.stderr,
            )
    lines = [
        f"Run {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC, {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPUs, torch {torch.__version__} ({torch.get_num_threads()} threads); "
        f"command: `python benchmarks/cells_scaling.py {' '.join(argv or sys.argv[1:])}`",
        "",
        "| mode | cells | sites | training µs/token | training peak GB | inference µs/token "
        "| inference peak GB |",
        "|---|---|---|---|---|---|---|",
    ]
    for mode, cells, sites, train, infer in rows:
        lines.append(
            f"| {mode} | {cells:,} | {sites} | {train['us_per_token']:.2f} | {train['peak_gb']:.2f} "
            f"| {infer['us_per_token']:.2f} | {infer['peak_gb']:.2f} |"
        )
    for mode in args.modes:
        mine = {c: (t, i) for m, c, _, t, i in rows if m == mode}
        if 100 in mine and max(mine) > 100:
            top = max(mine)
            lines.append(
                f"\n{mode}: time per token at {top:,} cells / at 100 cells = training "
                f"{mine[top][0]['us_per_token'] / mine[100][0]['us_per_token']:.2f}x, inference "
                f"{mine[top][1]['us_per_token'] / mine[100][1]['us_per_token']:.2f}x"
            )
    text = "\n".join(lines) + "\n"
    print(text)
    if args.output:
        with open(args.output, "w") as fh:
            fh.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
