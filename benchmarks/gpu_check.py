"""GPU check of the CpG Transformer (a few minutes on one device): equivalence, then speed vs the port.

1. Equivalence on the device: for every attention mode, with and without DNA, fp32 and fp64, a tiny
   model (hidden 16, 2 layers, 2 heads x 4, window 7; DNA window 31), binary data, batch 2 x 150
   sites x 4 cells (several SDPA query blocks, sites at both segment edges), eval mode: the fast path
   (backend chosen by ``cpgformer.nn.attention.backends``: SDPA on CUDA) and the tensor-op cores
   (forced) against the dense reference — outputs and every parameter gradient of
   ``(out * w).sum()``; then attention across ``SDPA_MIN_CELLS + 3`` cells. TF32 off. Tolerance
   1e-5 (fp32) / 1e-6 (fp64), gradients relative to the largest reference gradient.
2. Speed: the published architecture (4 layers, hidden 64, 8 heads x 8, window 21, axial), fp32,
   batch 1; the transformer stack and the whole model with its DNA network: inference
   (``torch.inference_mode``) and a training step (forward + backward, dropout 0.2), fast path vs
   the port of the original's formulation (``cpgformer.nn.original_port``); 2 warm-up calls, best
   of 5. Sizes run in order until ``--budget-s`` is spent (sizes the port cannot fit are marked OOM).

Exits 0 with a message where there is no CUDA device; 1 if an equivalence check fails.
``PYTHONPATH=src python benchmarks/gpu_check.py [--output FILE]``; ``--device cpu --quick`` is a
small smoke run of every code path on a CPU.
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import sys
import time
from collections.abc import Callable

import torch

from cpgformer.nn import MODES, CpGTransformer, ModelConfig
from cpgformer.nn import attention as attn
from cpgformer.nn.original_port import port_forward, port_stack

TOLERANCE = {torch.float32: 1e-5, torch.float64: 1e-6}
NAMES = {torch.float32: "fp32", torch.float64: "fp64"}
SIZES = [(20, 1024), (122, 1024), (500, 256), (20, 4096), (1000, 128)]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _error(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:160]


# ----------------------------------------------------------------------------------------------
# 1. equivalence


def _tiny(mode: str, dna: bool, cells: int, dtype: torch.dtype, device) -> CpGTransformer:  # noqa: ANN001
    config = ModelConfig(
        n_cells=cells,
        dna_window=31 if dna else 0,
        dna_embed=8,
        cell_embed=8,
        state_embed=8,
        hidden=16,
        n_layers=2,
        n_heads=2,
        head_dim=4,
        site_window=7,
        mode=mode,
    )
    return CpGTransformer(config).to(dtype).to(device).eval()


def _inputs(config: ModelConfig, batch: int, length: int, cells: int, device, seed: int = 0):  # noqa: ANN001, ANN202
    g = torch.Generator().manual_seed(seed)
    states = torch.randint(0, 3, (batch, length, cells), generator=g)
    positions = torch.cumsum(torch.randint(1, 3000, (batch, length), generator=g), dim=1)
    cell_ids = torch.stack(
        [torch.randperm(config.n_cells, generator=g)[:cells] for _ in range(batch)]
    )
    dna = None
    if config.has_dna:
        dna = torch.randint(0, 5, (batch, length, config.dna_window), generator=g)
    return tuple(None if t is None else t.to(device) for t in (states, positions, cell_ids, dna))


def _run(model: CpGTransformer, inputs, impl: str, weights: torch.Tensor):  # noqa: ANN001, ANN202
    model.zero_grad(set_to_none=True)
    states, positions, cell_ids, dna = inputs
    out = model(states, positions, cell_ids, dna=dna, attention_impl=impl)
    (out * weights).sum().backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
    return out.detach(), grads


def _errors(model: CpGTransformer, inputs, dtype: torch.dtype, backend: str | None):  # noqa: ANN001, ANN202
    """(output error, relative gradient error) of the fast path against the reference."""
    g = torch.Generator().manual_seed(3)
    weights = torch.randn(inputs[0].shape, generator=g, dtype=dtype).to(inputs[0].device)
    out_ref, grads_ref = _run(model, inputs, "reference", weights)
    if backend is None:
        out, grads = _run(model, inputs, "fast", weights)
    else:
        with attn.use(backend):
            out, grads = _run(model, inputs, "fast", weights)
    if set(grads) != set(grads_ref) or not torch.isfinite(out).all():
        return float("inf"), float("inf")
    scale = max(t.abs().max().item() for t in grads_ref.values())
    grad_err = max((grads[n] - t).abs().max().item() / scale for n, t in grads_ref.items())
    return (out - out_ref).abs().max().item(), grad_err


def equivalence(device: torch.device, quick: bool) -> tuple[list[str], bool]:
    length = 40 if quick else 150
    probe = torch.zeros(1, 1, 1, 3, 1, 1, device=device)
    default = attn.choose("sites", probe)
    lines = [
        "## Equivalence on the device: fast path vs dense reference",
        "",
        f"Tiny model, batch 2 x {length} sites x 4 cells, eval mode. Backend chosen on this "
        f"device: `{default}` (window and cell attention). Output: max abs difference; gradients: "
        "max over parameters of max abs difference / largest reference gradient.",
        "",
        "| mode | DNA | dtype | chosen: output | grads | tensor cores: output | grads | result |",
        "|---|---|---|---|---|---|---|---|",
    ]
    all_ok = True
    for dtype in (torch.float32, torch.float64):
        for mode in MODES:
            for dna in (False, True):
                cells = [f"| {mode} | {'yes' if dna else 'no'} | {NAMES[dtype]} |"]
                ok = True
                for backend in (None, "tensor"):
                    try:
                        torch.manual_seed(0)
                        model = _tiny(mode, dna, 5, dtype, device)
                        inputs = _inputs(model.config, 2, length, 4, device)
                        out_err, grad_err = _errors(model, inputs, dtype, backend)
                        ok = ok and max(out_err, grad_err) <= TOLERANCE[dtype]
                        cells.append(f" {out_err:.1e} | {grad_err:.1e} |")
                    except Exception as exc:  # noqa: BLE001 - reported in the table
                        ok = False
                        cells.append(f" ERROR `{_error(exc)}` | |")
                all_ok = all_ok and ok
                lines.append("".join(cells) + f" {'PASS' if ok else 'FAIL'} |")
    cells = attn.SDPA_MIN_CELLS + 3
    lines += ["", f"Across {cells} cells (axial, no DNA, 1 x 18 sites):", ""]
    for dtype in (torch.float32, torch.float64):
        try:
            torch.manual_seed(2)
            model = _tiny("axial", False, cells, dtype, device)
            out_err, grad_err = _errors(
                model, _inputs(model.config, 1, 18, cells, device), dtype, None
            )
            ok = max(out_err, grad_err) <= TOLERANCE[dtype]
            lines.append(
                f"- {NAMES[dtype]}: output {out_err:.1e}, grads {grad_err:.1e}: {'PASS' if ok else 'FAIL'}"
            )
        except Exception as exc:  # noqa: BLE001
            ok = False
            lines.append(f"- {NAMES[dtype]}: ERROR `{_error(exc)}`")
        all_ok = all_ok and ok
    return lines, all_ok


# ----------------------------------------------------------------------------------------------
# 2. speed


def _is_oom(exc: BaseException) -> bool:
    return isinstance(exc, torch.cuda.OutOfMemoryError) or "out of memory" in str(exc)


def _timeit(fn: Callable[[], object], device: torch.device, repeats: int) -> float:
    for _ in range(2):
        fn()
    best = float("inf")
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        fn()
        _sync(device)
        best = min(best, time.perf_counter() - start)
    return best


def _step(model: CpGTransformer, fn: Callable[[], torch.Tensor], phase: str) -> Callable[[], None]:
    if phase == "infer":

        def infer() -> None:
            with torch.inference_mode():
                fn()

        return infer

    def train() -> None:
        model.zero_grad(set_to_none=True)
        fn().float().square().mean().backward()

    return train


def speed_row(cells: int, sites: int, device: torch.device, repeats: int) -> dict:
    torch.manual_seed(0)
    config = ModelConfig(n_cells=cells, attention_dropout=0.2)
    model = CpGTransformer(config).to(device)
    g = torch.Generator().manual_seed(1)
    states = torch.randint(0, 3, (1, sites, cells), generator=g).to(device)
    positions = torch.cumsum(torch.randint(1, 300, (1, sites), generator=g), 1).to(device)
    cell_ids = torch.arange(cells).view(1, -1).to(device)
    dna = torch.randint(0, 4, (1, sites, config.dna_window), generator=g).to(device)
    with torch.no_grad():
        x = model.embed_tokens(states, cell_ids, model.embed_dna(dna.view(sites, -1)).unsqueeze(0))
    runs = {
        ("stack", "fast"): lambda: model.transform(x, positions),
        ("stack", "port"): lambda: port_stack(model, x, positions),
        ("model", "fast"): lambda: model(states, positions, cell_ids, dna=dna),
        ("model", "port"): lambda: port_forward(model, states, positions, cell_ids, dna=dna),
    }
    row: dict = {"cells": cells, "sites": sites}
    for (part, impl), fn in runs.items():
        for phase in ("infer", "train"):
            model.train(phase == "train")
            try:
                row[part, phase, impl] = (
                    cells * sites / _timeit(_step(model, fn, phase), device, repeats)
                )
            except Exception as exc:  # noqa: BLE001 - reported in the table
                row[part, phase, impl] = "OOM" if _is_oom(exc) else f"ERROR `{_error(exc)}`"
            model.zero_grad(set_to_none=True)
            gc.collect()
            if device.type == "cuda":
                torch.cuda.empty_cache()
    return row


def _ratio(a: object, b: object) -> str:
    ok = isinstance(a, float) and isinstance(b, float)
    return f"**{a / b:.1f}x**" if ok else "n/a"


def _fmt(value: object) -> str:
    return f"{value:,.0f}" if isinstance(value, float) else str(value)


def speed(device: torch.device, quick: bool, budget_s: float, start: float) -> list[str]:
    sizes = [(6, 64), (30, 32)] if quick else SIZES
    lines = [
        "## Speed: fast path vs the port (tokens/s, fp32, batch 1)",
        "",
        "| C | L | part | infer fast | port | speed-up | train fast | port | speed-up |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for cells, sites in sizes:
        if time.perf_counter() - start > budget_s:
            lines.append(f"| {cells} | {sites} | (time budget spent: not run) | | | | | | |")
            continue
        sys.stderr.write(f"speed C={cells} L={sites} ...\n")
        row = speed_row(cells, sites, device, 2 if quick else 5)
        for part in ("stack", "model"):
            infer = (row[part, "infer", "fast"], row[part, "infer", "port"])
            train = (row[part, "train", "fast"], row[part, "train", "port"])
            lines.append(
                f"| {cells} | {sites} | {part} | {_fmt(infer[0])} | {_fmt(infer[1])} | "
                f"{_ratio(*infer)} | {_fmt(train[0])} | {_fmt(train[1])} | {_ratio(*train)} |"
            )
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--quick", action="store_true", help="tiny sizes (a smoke run)")
    parser.add_argument(
        "--budget-s", type=float, default=420, help="stop starting sizes after this"
    )
    parser.add_argument("--output", help="also write the markdown here")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print(
            "gpu_check: no CUDA device on this machine: nothing checked (run it on a GPU machine)"
        )
        return 0
    start = time.perf_counter()
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        name = torch.cuda.get_device_name(device)
    else:
        name = "CPU"
    header = [
        f"# GPU check: {name}, torch {torch.__version__}, "
        f"{dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC",
        "",
        f"Command: `python benchmarks/gpu_check.py {' '.join(argv if argv is not None else sys.argv[1:])}`",
        "",
    ]
    lines, ok = equivalence(device, args.quick)
    sys.stderr.write(
        f"equivalence {'passed' if ok else 'FAILED'} in {time.perf_counter() - start:.0f} s\n"
    )
    lines += [""] + speed(device, args.quick, args.budget_s, start)
    lines += [
        "",
        f"Total {time.perf_counter() - start:.0f} s; equivalence {'PASS' if ok else 'FAIL'}.",
    ]
    text = "\n".join(header + lines) + "\n"
    print(text)
    if args.output:
        with open(args.output, "w") as handle:
            handle.write(text)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
