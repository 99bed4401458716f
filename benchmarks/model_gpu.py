"""One-shot GPU check of the CpG Transformer: correctness of the fast path on the device, and speed.

1. Correctness: for every attention mode, binary data, with and without DNA, fp32 and fp64, a tiny
   model (hidden 16, 2 heads x 4, window 7, 37 sites, 4 cells, batch 2, eval mode) — fast vs
   reference outputs and all parameter gradients on the device (max abs output difference; max
   gradient difference relative to the largest reference gradient), against 1e-5 (fp32) / 1e-6
   (fp64); in fp64 also the device's fast path vs the CPU's fast path of the same weights. Then one
   model with ``attention.SDPA_MIN_CELLS + 3`` cells: with gradients (cell core) and under
   ``torch.inference_mode`` (``scaled_dot_product_attention``). TF32 is off for these checks.
2. Speed: default architecture (4 layers, hidden 64, 8 heads x 8, window 21, axial), fp32, batch
   1, the transformer stack: training step (forward + backward, train mode, attention dropout 0.2)
   and inference (eval, ``torch.inference_mode``), fast path vs the port of the original's
   formulation; 2 warm-up calls, best of 5; peak allocated device memory of one training step. Then
   the whole model with the DNA encoder (inference).

Needs torch (and numpy, which ``cpgformer.codes`` imports) only:
``PYTHONPATH=src python3 benchmarks/model_gpu.py --output model_gpu.md``;
``--device cpu --quick`` is a tiny smoke run of every code path.
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import gc
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

from cpgformer.nn import MODES, CpGTransformer, ModelConfig
from cpgformer.nn import attention as attn
from cpgformer.nn.original_port import port_forward

sys.path.insert(0, str(Path(__file__).resolve().parent))
from model_speed import _infer, _inputs, _stack_runners, _train_step  # noqa: E402  (the CPU benchmark's)

NOTES: list[str] = []

TOLERANCE = {torch.float32: 1e-5, torch.float64: 1e-6}
DTYPE_NAME = {torch.float32: "fp32", torch.float64: "fp64"}


# ----------------------------------------------------------------------------------------------
# environment


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _error(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:200]


# ----------------------------------------------------------------------------------------------
# 1. correctness


def _tiny_model(mode: str, dna: bool, n_cells: int, dtype: torch.dtype) -> CpGTransformer:
    config = ModelConfig(
        n_cells=n_cells,
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
        data_mode="binary",
    )
    return CpGTransformer(config).to(dtype).eval()


def _tiny_inputs(model: CpGTransformer, batch: int, length: int, cells: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    states = torch.randint(0, 3, (batch, length, cells), generator=g)
    positions = torch.cumsum(torch.randint(1, 3000, (batch, length), generator=g), dim=1) + 10**6
    cell_ids = torch.stack(
        [torch.randperm(model.config.n_cells, generator=g)[:cells] for _ in range(batch)]
    )
    dna = None
    if model.config.has_dna:
        dna = torch.randint(0, 5, (batch, length, model.config.dna_window), generator=g)
    return states, positions, cell_ids, dna


def _to(inputs, device: torch.device):  # noqa: ANN001, ANN202
    return tuple(None if t is None else t.to(device) for t in inputs)


def _run(model: CpGTransformer, inputs, impl: str, weights: torch.Tensor):  # noqa: ANN001, ANN202
    model.zero_grad(set_to_none=True)
    states, positions, cell_ids, dna = inputs
    out = model(states, positions, cell_ids, dna=dna, attention_impl=impl)
    (out * weights).sum().backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
    return out.detach(), grads


def _compare(out_a, grads_a, out_b, grads_b) -> tuple[float, float]:  # noqa: ANN001
    """(max |out_a - out_b|, max over parameters of max |grad_a - grad_b| / max |grad_b|)."""
    if set(grads_a) != set(grads_b):
        raise AssertionError(f"different parameters got gradients: {set(grads_a) ^ set(grads_b)}")
    out_err = (out_a - out_b).abs().max().item()
    if not torch.isfinite(out_a).all():
        out_err = float("inf")
    scale = max(g.abs().max().item() for g in grads_b.values())
    if not scale > 0:
        raise AssertionError("all reference gradients are zero")
    grad_err = max((grads_a[n] - g).abs().max().item() / scale for n, g in grads_b.items())
    return out_err, grad_err


def check_case(mode: str, dna: bool, dtype: torch.dtype, device: torch.device) -> dict:
    torch.manual_seed(0)
    model = _tiny_model(mode, dna, n_cells=5, dtype=dtype)
    inputs = _tiny_inputs(model, batch=2, length=37, cells=4)
    weights = torch.randn(inputs[0].shape, generator=torch.Generator().manual_seed(3), dtype=dtype)
    cpu_model = copy.deepcopy(model) if dtype == torch.float64 else None
    model = model.to(device)
    dev_inputs = _to(inputs, device)
    out_ref, grads_ref = _run(model, dev_inputs, "reference", weights.to(device))
    out_fast, grads_fast = _run(model, dev_inputs, "fast", weights.to(device))
    out_err, grad_err = _compare(out_fast, grads_fast, out_ref, grads_ref)
    tol = TOLERANCE[dtype]
    row = {"mode": mode, "dna": dna, "dtype": dtype, "out": out_err, "grad": grad_err, "tol": tol}
    ok = out_err <= tol and grad_err <= tol
    if cpu_model is not None:
        out_cpu, grads_cpu = _run(cpu_model, inputs, "fast", weights)
        cpu_out, cpu_grad = _compare(
            out_fast.cpu(), {n: g.cpu() for n, g in grads_fast.items()}, out_cpu, grads_cpu
        )
        row.update(cpu_out=cpu_out, cpu_grad=cpu_grad)
        ok = ok and cpu_out <= tol and cpu_grad <= tol
    row["ok"] = ok
    return row


def check_many_cells(dtype: torch.dtype, device: torch.device) -> dict:
    """Fast vs reference with ``SDPA_MIN_CELLS + 3`` cells: outputs and gradients (training cores),
    and outputs under ``inference_mode`` (``scaled_dot_product_attention``, calls counted)."""
    torch.manual_seed(2)
    cells = attn.SDPA_MIN_CELLS + 3
    model = _tiny_model("axial", False, n_cells=cells, dtype=dtype).to(device)
    inputs = _to(_tiny_inputs(model, batch=1, length=18, cells=cells), device)
    g = torch.Generator().manual_seed(3)
    weights = torch.randn(inputs[0].shape, generator=g, dtype=dtype).to(device)
    out_ref, grads_ref = _run(model, inputs, "reference", weights)
    out_fast, grads_fast = _run(model, inputs, "fast", weights)
    out_err, grad_err = _compare(out_fast, grads_fast, out_ref, grads_ref)
    functional = attn.F
    sdpa = functional.scaled_dot_product_attention
    calls = 0

    def counting(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        nonlocal calls
        calls += 1
        return sdpa(*args, **kwargs)

    functional.scaled_dot_product_attention = counting
    try:
        with torch.inference_mode():
            states, positions, cell_ids, dna = inputs
            out_infer = model(states, positions, cell_ids, dna=dna, attention_impl="fast")
    finally:
        functional.scaled_dot_product_attention = sdpa
    infer_err = (out_infer - out_ref).abs().max().item()
    if not torch.isfinite(out_infer).all():
        infer_err = float("inf")
    tol = TOLERANCE[dtype]
    ok = max(out_err, grad_err, infer_err) <= tol and calls > 0
    return {
        "cells": cells,
        "dtype": dtype,
        "out": out_err,
        "grad": grad_err,
        "infer": infer_err,
        "sdpa_calls": calls,
        "tol": tol,
        "ok": ok,
    }


def correctness(device: torch.device) -> tuple[list[str], bool]:
    lines = [
        "## Correctness on the device: fast vs reference",
        "",
        "Tiny model (hidden 16, 2 layers, 2 heads x 4, window 7; DNA window 31), binary data, "
        "batch 2 x 37 sites x 4 cells, eval mode; gradients of `(out * w).sum()` for a fixed "
        "random `w`. Output: max abs difference; gradients: max over parameters of max abs "
        "difference / largest reference gradient. fp64 rows also compare the device's fast path "
        "with the CPU's fast path (same weights and inputs).",
        "",
        "| mode | DNA | dtype | output diff | grad diff (rel.) | device vs CPU fast: output | "
        "grads (rel.) | tol | result |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    all_ok = True
    for dtype in (torch.float32, torch.float64):
        for mode in MODES:
            for dna in (False, True):
                try:
                    r = check_case(mode, dna, dtype, device)
                except Exception as exc:  # noqa: BLE001 - report and go on
                    all_ok = False
                    lines.append(
                        f"| {mode} | {'yes' if dna else 'no'} | {DTYPE_NAME[dtype]} | "
                        f"ERROR `{_error(exc)}` | | | | | FAIL |"
                    )
                    continue
                all_ok = all_ok and r["ok"]
                cpu = f"{r['cpu_out']:.1e} | {r['cpu_grad']:.1e}" if "cpu_out" in r else "— | —"
                lines.append(
                    f"| {mode} | {'yes' if dna else 'no'} | {DTYPE_NAME[dtype]} | {r['out']:.1e} | "
                    f"{r['grad']:.1e} | {cpu} | {r['tol']:.0e} | {'PASS' if r['ok'] else 'FAIL'} |"
                )
    lines += [
        "",
        f"Many cells (axial, no DNA, batch 1 x 18 sites x {attn.SDPA_MIN_CELLS + 3} cells, eval): "
        "with gradients the cell core runs; under `torch.inference_mode` the cell attention uses "
        "`scaled_dot_product_attention` (calls counted).",
        "",
        "| cells | dtype | output diff | grad diff (rel.) | inference-mode output diff | "
        "SDPA calls | tol | result |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for dtype in (torch.float32, torch.float64):
        try:
            r = check_many_cells(dtype, device)
        except Exception as exc:  # noqa: BLE001
            all_ok = False
            lines.append(
                f"| {attn.SDPA_MIN_CELLS + 3} | {DTYPE_NAME[dtype]} | ERROR `{_error(exc)}` "
                "| | | | | FAIL |"
            )
            continue
        all_ok = all_ok and r["ok"]
        lines.append(
            f"| {r['cells']} | {DTYPE_NAME[dtype]} | {r['out']:.1e} | {r['grad']:.1e} | "
            f"{r['infer']:.1e} | {r['sdpa_calls']} | {r['tol']:.0e} | "
            f"{'PASS' if r['ok'] else 'FAIL'} |"
        )
    return lines, all_ok


# ----------------------------------------------------------------------------------------------
# 2. speed


class _OOM(Exception):
    pass


def _is_oom(exc: BaseException) -> bool:
    oom = getattr(torch.cuda, "OutOfMemoryError", None)
    return (oom is not None and isinstance(exc, oom)) or "out of memory" in str(exc)


def _free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _timeit(fn: Callable[[], object], device: torch.device, warmup: int, repeats: int) -> float:
    """Best of ``repeats`` synchronised calls after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
    _sync(device)
    best = float("inf")
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        fn()
        _sync(device)
        best = min(best, time.perf_counter() - start)
    return best


def _peak_mb(fn: Callable[[], object], device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    _sync(device)
    torch.cuda.reset_peak_memory_stats(device)
    fn()
    _sync(device)
    return torch.cuda.max_memory_allocated(device) / 2**20


def _setup(cells: int, sites: int, device: torch.device):  # noqa: ANN202
    torch.manual_seed(0)
    config = ModelConfig(n_cells=cells)
    model = CpGTransformer(config).to(device)
    inputs = _to(_inputs(config, sites, cells, with_dna=True), device)
    states, positions, cell_ids, dna = inputs
    with torch.no_grad():
        dna_embedding = model.embed_dna(dna.view(sites, -1)).view(1, sites, -1)
        x0 = model.embed_tokens(states, cell_ids, dna_embedding)
    return model, x0, inputs, dna_embedding


def _measure(
    model: CpGTransformer, fn: Callable[[], torch.Tensor], phase: str, device, warmup, repeats
) -> tuple[float, float | None]:
    """(seconds, peak MB of one training step or None); raises ``_OOM`` on out-of-memory."""
    try:
        model.train(phase == "train")
        step = _train_step(model, fn) if phase == "train" else _infer(fn)
        seconds = _timeit(step, device, warmup, repeats)
        peak = _peak_mb(step, device) if phase == "train" else None
        model.zero_grad(set_to_none=True)
        return seconds, peak
    except Exception as exc:
        if not _is_oom(exc):
            raise
    model.zero_grad(set_to_none=True)
    _free(device)
    raise _OOM


def bench_row(cells: int, sites: int, device, warmup: int, repeats: int) -> dict:
    """Stack timings at (C, L); L halved (same L for both paths) while the port runs out of memory."""
    first = sites
    while True:
        model, x0, inputs, _ = _setup(cells, sites, device)
        positions = inputs[1]
        row: dict = {"cells": cells, "sites": sites, "first_sites": first}
        retry = False
        for impl in ("fast", "port"):
            for phase in ("train", "infer"):
                try:
                    seconds, peak = _measure(
                        model,
                        _stack_runners(model, x0, positions)[impl],
                        phase,
                        device,
                        warmup,
                        repeats,
                    )
                    row[f"{phase}_{impl}"] = cells * sites / seconds
                    if phase == "train":
                        row[f"peak_{impl}"] = peak
                except _OOM:
                    if impl == "port" and sites > 8:
                        retry = True
                        break
                    row[f"{phase}_{impl}"] = "OOM"
                    row.setdefault(f"peak_{impl}", "OOM")
                except Exception as exc:  # noqa: BLE001
                    row[f"{phase}_{impl}"] = f"ERROR `{_error(exc)}`"
            if retry:
                break
        del model, x0, inputs
        _free(device)
        if not retry:
            return row
        sys.stderr.write(f"  port OOM at C={cells} L={sites}: halving L\n")
        sites //= 2


def bench_whole_model(cells: int, sites: int, device, warmup: int, repeats: int) -> dict:
    """Inference of the whole model with DNA windows in (fast and port), with the DNA embedding
    given (no CNN), and the DNA encoder alone."""
    model, _, inputs, dna_embedding = _setup(cells, sites, device)
    states, positions, cell_ids, dna = inputs
    model.eval()
    runs = {
        "model_fast": lambda: model(states, positions, cell_ids, dna=dna),
        "model_fast_emb": lambda: model(states, positions, cell_ids, dna_embedding=dna_embedding),
        "model_port": lambda: port_forward(model, states, positions, cell_ids, dna=dna),
        "dna_only": lambda: model.embed_dna(dna.view(sites, -1)),
    }
    out: dict = {"cells": cells, "sites": sites}
    for name, fn in runs.items():
        try:
            out[name] = _timeit(_infer(fn), device, warmup, repeats)
        except Exception as exc:  # noqa: BLE001
            out[name] = "OOM" if _is_oom(exc) else f"ERROR `{_error(exc)}`"
            _free(device)
    return out  # the caller frees the model and inputs (this frame's locals) afterwards


def _fmt(value: object) -> str:
    if isinstance(value, str):
        return value
    if value is None:
        return "n/a"
    return f"{value:,.0f}" if value >= 100 else f"{value:.3g}"


def _ratio(a: object, b: object) -> str:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and b > 0:
        return f"{a / b:.1f}x"
    return "—"


def speed(device, shapes, whole, warmup: int, repeats: int) -> list[str]:
    lines = [
        "## Speed: transformer stack, fast path vs port of the original formulation",
        "",
        "Default architecture (4 layers, hidden 64, 8 heads x 8, window 21, axial), fp32, batch 1; "
        f"tokens = C x L; {warmup} warm-up calls, best of {repeats}; training step = forward + "
        "backward of `out.square().mean()` in train mode (attention dropout 0.2); inference = "
        "eval mode under `torch.inference_mode`. Peak = `torch.cuda.max_memory_allocated` during "
        "one training step (after `reset_peak_memory_stats`; includes weights and inputs).",
        "",
        "| C | L | train fast (tok/s) | train port (tok/s) | speed-up | infer fast (tok/s) | "
        "infer port (tok/s) | speed-up | peak MB train fast | peak MB train port |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for cells, sites in shapes:
        sys.stderr.write(f"speed C={cells} L={sites} ...\n")
        r = bench_row(cells, sites, device, warmup, repeats)
        length = f"{r['sites']}" + (
            f" (port OOM at {r['first_sites']})" if r["sites"] != r["first_sites"] else ""
        )
        lines.append(
            f"| {cells} | {length} | {_fmt(r.get('train_fast'))} | {_fmt(r.get('train_port'))} | "
            f"{_ratio(r.get('train_fast'), r.get('train_port'))} | {_fmt(r.get('infer_fast'))} | "
            f"{_fmt(r.get('infer_port'))} | {_ratio(r.get('infer_fast'), r.get('infer_port'))} | "
            f"{_fmt(r.get('peak_fast'))} | {_fmt(r.get('peak_port'))} |"
        )
    cells, sites = whole
    sys.stderr.write(f"whole model C={cells} L={sites} ...\n")
    w = bench_whole_model(cells, sites, device, warmup, repeats)
    _free(device)
    tokens = cells * sites

    def cell(key: str, per: int) -> str:
        value = w[key]
        if isinstance(value, str):
            return f"{value} | {value}"
        return f"{value * 1e3:.2f} | {_fmt(per / value)}"

    lines += [
        "",
        f"Whole model, inference (eval, `torch.inference_mode`), C={cells}, L={sites}, "
        "DNA window 1001:",
        "",
        "| run | ms | throughput |",
        "|---|---|---|",
        f"| fast model, DNA windows in (CNN on the L windows) | {cell('model_fast', tokens)} tok/s |",
        f"| fast model, DNA embedding given (no CNN) | {cell('model_fast_emb', tokens)} tok/s |",
        f"| port model, DNA windows in | {cell('model_port', tokens)} tok/s |",
        f"| DNA encoder alone (L windows) | {cell('dna_only', sites)} windows/s |",
    ]
    return lines


# ----------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, 1 repeat (smoke run)")
    parser.add_argument("--output", help="also write the markdown to this file")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            sys.stderr.write("CUDA is not available\n")
            return 2
        device = torch.device("cuda", torch.cuda.current_device())
        name = torch.cuda.get_device_name(device)
    else:
        name = f"{device.type} ({torch.get_num_threads()} threads)"
    if args.quick:
        shapes, whole, warmup, repeats = [(4, 32)], (4, 32), 1, 1
    else:
        shapes, whole, warmup, repeats = [(20, 1024), (122, 512), (1000, 64)], (20, 1024), 2, 5
    started = time.perf_counter()

    tf32 = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    sys.stderr.write("correctness ...\n")
    correct_lines, all_ok = correctness(device)
    correct_seconds = time.perf_counter() - started
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32

    speed_lines = speed(device, shapes, whole, warmup, repeats)
    total = time.perf_counter() - started

    cuda = f", CUDA {torch.version.cuda}" if device.type == "cuda" else ""
    shown = [a for a in (argv if argv is not None else sys.argv[1:])]
    if "--output" in shown:  # the device's output folder means nothing here
        shown[shown.index("--output") + 1] = "model_gpu.md"
    command = "python3 benchmarks/model_gpu.py " + " ".join(shown)
    header = [
        "# CpG Transformer on the GPU: correctness and speed",
        "",
        f"Device: {name}; torch {torch.__version__}{cuda}; date "
        f"{dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC; correctness with TF32 off, "
        f"speed with torch defaults (matmul TF32 {tf32[0]}, cuDNN TF32 {tf32[1]}); "
        f"run time {total:.0f} s (correctness {correct_seconds:.0f} s).",
        f"Command: `{command.strip()}`",
        "",
        f"**All correctness checks: {'PASS' if all_ok else 'FAIL'}**",
        "",
    ]
    if NOTES:
        header += ["Notes:", ""] + [f"* {note}" for note in NOTES] + [""]
    text = "\n".join(header + correct_lines + [""] + speed_lines) + "\n"
    sys.stdout.write(text)
    if args.output:
        Path(args.output).write_text(text)
    return 0 if all_ok else 1


if __name__ == "__main__":
    sys.exit(main())
