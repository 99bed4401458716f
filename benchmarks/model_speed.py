"""Speed and memory of the CpG Transformer: fast path vs a port of the original's formulation.

Fast path and port run the same weights on the same inputs, fp32, CPU, batch 1 segment of L sites
x C cells, default architecture (4 layers, hidden 64, 8 heads x 8, window 21, axial unless --mode).
Every timing runs in a fresh process, as a training or imputation job would (the allocator's state
left by one workload changes the next one's speed by up to 2x: the port's large temporaries are
page-faulted in on every step with glibc's default malloc settings), and fast and port alternate
for ``--rounds`` rounds; the best time of each is reported:

* stack: the transformer layers only (token embeddings in, hidden states out) — this is where the
  two formulations differ; training step = forward + backward with attention dropout 0.2 (train mode),
  inference = eval mode under ``torch.inference_mode``;
* model: the whole model (state/cell/DNA embeddings with the DNA CNN run on the L windows, the stack,
  the head) — training step and inference;
* DNA encoder: windows/s of the CNN alone (inference, and forward+backward);
* memory (torch profiler memory events, measured with one thread: the profiler sees only the
  calling thread's allocations, and with one thread the attention cores run all their work in
  it): activation memory = what a training-mode forward of the stack leaves allocated for
  backward, per token per layer; peak = highest allocation level during one stack training step
  (forward + backward) above its start.

Example: ``python benchmarks/model_speed.py --cells 20 122 1000 --sites 1024 --repeats 3``.
Prints a markdown table; ``--output FILE`` also writes it.
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable

import torch

from cpgformer.nn import CpGTransformer, ModelConfig
from cpgformer.nn.original_port import port_forward, port_stack

CLOCK = time.perf_counter


def _timeit(fn: Callable[[], object], repeats: int) -> float:
    """Best wall (or CPU) time of ``repeats`` calls after one untimed call."""
    fn()  # warm-up
    best = float("inf")
    for _ in range(repeats):
        start = CLOCK()
        fn()
        best = min(best, CLOCK() - start)
    return best


def _memory_events(fn: Callable[[], object]) -> tuple[list[int], object]:
    """Net allocation of each profiler event in time order (op's own net allocation, children
    excluded, plus frees outside ops) while running ``fn``; and ``fn``'s result."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        result = fn()
    events = sorted(prof.events(), key=lambda e: e.time_range.start)
    return [e.self_cpu_memory_usage for e in events], result


def _retained_bytes(fn: Callable[[], torch.Tensor]) -> int:
    """Memory still allocated after a training-mode forward (activations kept for backward)."""
    sizes, out = _memory_events(fn)
    del out
    return sum(sizes)


def _peak_bytes(fn: Callable[[], None]) -> int:
    """Peak allocated CPU memory during ``fn`` above the level at its start (temporaries freed
    inside a single op are netted, so this slightly underestimates)."""
    sizes, _ = _memory_events(fn)
    level = peak = 0
    for size in sizes:
        level += size
        peak = max(peak, level)
    return peak


def _inputs(config: ModelConfig, sites: int, cells: int, with_dna: bool):
    g = torch.Generator().manual_seed(0)
    states = torch.randint(0, 3, (1, sites, cells), generator=g)
    positions = torch.cumsum(torch.randint(1, 500, (1, sites), generator=g), dim=1)
    cell_ids = torch.randperm(config.n_cells, generator=g)[:cells].unsqueeze(0)
    dna = None
    if with_dna:
        dna = torch.randint(0, 4, (1, sites, config.dna_window), generator=g, dtype=torch.int8)
    return states, positions, cell_ids, dna


def _stack_runners(model: CpGTransformer, x: torch.Tensor, positions: torch.Tensor):
    def fast() -> torch.Tensor:
        return model.transform(x, positions, "fast")

    def port() -> torch.Tensor:
        return port_stack(model, x, positions)

    return {"fast": fast, "port": port}


def _train_step(model: CpGTransformer, fn: Callable[[], torch.Tensor]) -> Callable[[], None]:
    def step() -> None:
        model.zero_grad(set_to_none=True)
        fn().square().mean().backward()

    return step


def _infer(fn: Callable[[], torch.Tensor]) -> Callable[[], None]:
    def run() -> None:
        with torch.inference_mode():
            fn()

    return run


def default_sites(cells: int, sites: int, budget_gb: float) -> int:
    """Largest power-of-two L <= sites for which the port's training step fits in ``budget_gb``.

    Estimate of the port's activations: (25 KB + 80 B·C) per token per layer plus the C x C
    probabilities with their dropout copy (12 B per entry per head), 4 layers.
    """
    length = sites
    while length > 8:
        tokens = length * cells
        per_token = 25_000 + 80 * cells + 12 * 8 * cells
        if tokens * per_token * 4 <= budget_gb * 1e9:
            return length
        length //= 2
    return length


def _setup(cells: int, sites: int, mode: str):
    """The benchmark's model and inputs, identical in every process (fixed seeds)."""
    torch.manual_seed(0)
    config = ModelConfig(n_cells=cells, mode=mode)
    model = CpGTransformer(config)
    states, positions, cell_ids, dna = _inputs(config, sites, cells, with_dna=True)
    with torch.no_grad():
        dna_embedding = model.embed_dna(dna.view(sites, -1)).view(1, sites, -1)
        x0 = model.embed_tokens(states, cell_ids, dna_embedding)
    return model, x0, (states, positions, cell_ids, dna)


def _runner(model: CpGTransformer, x0: torch.Tensor, inputs, part: str, impl: str):
    states, positions, cell_ids, dna = inputs
    if part == "stack":
        return _stack_runners(model, x0, positions)[impl]
    if impl == "fast":
        return lambda: model(states, positions, cell_ids, dna=dna)
    return lambda: port_forward(model, states, positions, cell_ids, dna=dna)


def worker(spec: str, repeats: int, mode: str) -> dict:
    """Time one workload (``part:phase:impl:cells:sites``) in this process: one untimed call, then
    the best of ``repeats`` — the steady state of a training (or imputation) loop."""
    part, phase, impl, cells, sites = spec.split(":")
    model, x0, inputs = _setup(int(cells), int(sites), mode)
    fn = _runner(model, x0, inputs, part, impl)
    model.train(phase == "train")
    step = _train_step(model, fn) if phase == "train" else _infer(fn)
    return {"seconds": _timeit(step, repeats)}


def _in_subprocess(spec: str, args: argparse.Namespace) -> float:
    command = [sys.executable, __file__, "--worker", spec, "--repeats", str(args.repeats)]
    command += ["--mode", args.mode]
    if args.threads:
        command += ["--threads", str(args.threads)]
    if args.cpu_time:
        command.append("--cpu-time")
    done = subprocess.run(command, check=True, capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])["seconds"]


def bench(cells: int, sites: int, args: argparse.Namespace) -> dict:
    """Timings: every (part, phase, implementation) in its own fresh process — as a training or
    imputation job runs — alternating fast and port for ``args.rounds`` rounds; best of all.
    Memory: in this process, with the torch profiler."""
    tokens = sites * cells
    row: dict = {"cells": cells, "sites": sites, "tokens": tokens}
    parts = ["stack"] if args.no_model else ["stack", "model"]
    best: dict[str, float] = {}
    workloads = [
        (part, phase, impl)
        for part in parts
        for phase in ("train", "infer")
        for impl in ("fast", "port")
    ]
    for _ in range(args.rounds):
        for part, phase, impl in workloads:
            seconds = _in_subprocess(f"{part}:{phase}:{impl}:{cells}:{sites}", args)
            key = f"{part}_{phase}_{impl}"
            best[key] = min(best.get(key, float("inf")), seconds)
    row.update({key: tokens / seconds for key, seconds in best.items()})
    model, x0, inputs = _setup(cells, sites, args.mode)
    positions = inputs[1]
    # the profiler sees the allocations of the calling thread only: with one thread the fast
    # path's attention cores run their work items in this thread, so every allocation counts
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for impl in ("fast", "port"):
            model.train()
            x_grad = x0.clone().requires_grad_(True)
            runner = _stack_runners(model, x_grad, positions)[impl]
            row[f"act_kb_{impl}"] = _retained_bytes(runner) / tokens / model.config.n_layers / 1e3
            model.zero_grad(set_to_none=True)
            fn = _stack_runners(model, x0, positions)[impl]
            row[f"peak_mb_{impl}"] = _peak_bytes(_train_step(model, fn)) / 1e6
            gc.collect()
    finally:
        torch.set_num_threads(threads)
    return row


def bench_dna(sites: int, repeats: int) -> dict:
    torch.manual_seed(0)
    model = CpGTransformer(ModelConfig(n_cells=2))
    windows = torch.randint(0, 4, (sites, 1001), dtype=torch.int8)
    model.eval()
    infer = sites / _timeit(_infer(lambda: model.embed_dna(windows)), repeats)
    model.train()
    train = sites / _timeit(_train_step(model, lambda: model.embed_dna(windows)), repeats)
    return {"dna_infer": infer, "dna_train": train}


def _fmt(value: float) -> str:
    return f"{value:,.0f}" if value >= 100 else f"{value:.3g}"


def table(rows: list[dict], dna: dict | None, whole_model: bool) -> str:
    lines = [
        "| C | L | stack train fast (tok/s) | port | speed-up | stack infer fast (tok/s) | port | "
        "speed-up | act. KB/token/layer fast | port | peak MB train fast | port |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['cells']} | {r['sites']} | {_fmt(r['stack_train_fast'])} | "
            f"{_fmt(r['stack_train_port'])} | {r['stack_train_fast'] / r['stack_train_port']:.1f}x | "
            f"{_fmt(r['stack_infer_fast'])} | {_fmt(r['stack_infer_port'])} | "
            f"{r['stack_infer_fast'] / r['stack_infer_port']:.1f}x | {r['act_kb_fast']:.1f} | "
            f"{r['act_kb_port']:.1f} | {r['peak_mb_fast']:,.0f} | {r['peak_mb_port']:,.0f} |"
        )
    if whole_model:
        lines += [
            "",
            "| C | L | model train fast (tok/s) | port | speed-up | model infer fast (tok/s) | port | "
            "speed-up |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for r in rows:
            lines.append(
                f"| {r['cells']} | {r['sites']} | {_fmt(r['model_train_fast'])} | "
                f"{_fmt(r['model_train_port'])} | "
                f"{r['model_train_fast'] / r['model_train_port']:.1f}x | "
                f"{_fmt(r['model_infer_fast'])} | {_fmt(r['model_infer_port'])} | "
                f"{r['model_infer_fast'] / r['model_infer_port']:.1f}x |"
            )
    if dna:
        lines += [
            "",
            "| DNA encoder (window 1001) | sites/s |",
            "|---|---|",
            f"| inference | {_fmt(dna['dna_infer'])} |",
            f"| training (fwd+bwd) | {_fmt(dna['dna_train'])} |",
        ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cells", type=int, nargs="+", default=[20, 122, 1000])
    parser.add_argument("--sites", type=int, default=1024, help="segment length L (upper bound)")
    parser.add_argument(
        "--repeats", type=int, default=3, help="timed calls per block (best is reported)"
    )
    parser.add_argument(
        "--rounds", type=int, default=2, help="rounds of alternating fast/port processes"
    )
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--mode", default="axial")
    parser.add_argument(
        "--memory-budget-gb",
        type=float,
        default=6.0,
        help="L is halved per C until the port's estimated training memory fits this budget",
    )
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all)")
    parser.add_argument(
        "--cpu-time",
        action="store_true",
        help="time with process CPU time instead of wall time (use with --threads 1 on a loaded "
        "machine: less sensitive to other processes)",
    )
    parser.add_argument("--no-model", action="store_true", help="skip whole-model timings")
    parser.add_argument("--no-dna", action="store_true", help="skip the DNA encoder timing")
    parser.add_argument("--dna-sites", type=int, default=256)
    parser.add_argument("--output", help="also write the markdown to this file")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    global CLOCK
    if args.cpu_time:
        CLOCK = time.process_time
    if args.worker:
        sys.stdout.write(json.dumps(worker(args.worker, args.repeats, args.mode)) + "\n")
        return 0
    rows = []
    for cells in args.cells:
        sites = default_sites(cells, args.sites, args.memory_budget_gb)
        sys.stderr.write(f"C={cells} L={sites} ...\n")
        rows.append(bench(cells, sites, args))
        gc.collect()
    dna = None if args.no_dna else bench_dna(args.dna_sites, args.repeats)
    header = (
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, fp32, batch 1, "
        f"mode {args.mode}, 4 layers, {'process CPU' if args.cpu_time else 'wall'} time; date {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC; "
        f"each timing in a fresh process (one untimed call, best of {args.repeats}), fast and port "
        f"alternating, best of {args.rounds} rounds; glibc malloc "
        f"{'tuned by GLIBC_TUNABLES' if os.environ.get('GLIBC_TUNABLES') else 'defaults'}.\nCommand: python benchmarks/model_speed.py "
        + " ".join(argv if argv is not None else sys.argv[1:])
    )
    text = header + "\n\n" + table(rows, dna, not args.no_model) + "\n"
    sys.stdout.write(text)
    if args.output:
        with open(args.output, "w") as handle:
            handle.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
