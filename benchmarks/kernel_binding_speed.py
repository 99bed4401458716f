"""The fused attention kernels called as registered PyTorch operators vs through ctypes, one process.

The same C++ kernels (``src/cpgformer/nn/csrc/site_attention.cpp``, ``cell_attention.cpp``) reach
Python two ways:

* ``op``: ``torch.ops.cpgformer.*`` (``cpgformer.nn.attention.kernels``: ``torch.library``
  operators with registered autograd, built by ``torch.utils.cpp_extension``);
* ``ctypes``: the kernels' C entry points compiled into a plain shared library with the same flags
  and called through ``ctypes`` from a ``torch.autograd.Function`` (the binding the project used
  before), built here into a temporary folder.

Timed side by side, alternating, best of ``--repeats``: window attention along sites and attention
across cells, inference (no gradients) and training (forward + backward, dropout 0.1), fp32,
8 heads x 8, window 21. Prints a markdown table of milliseconds and the op / ctypes ratio.

``PYTHONPATH=src python benchmarks/kernel_binding_speed.py --cells 20 122 --sites 1024 512``
"""

from __future__ import annotations

import argparse
import ctypes
import datetime as dt
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from cpgformer.nn.attention import kernels
from cpgformer.nn.attention.dropout import dropout_threshold, random_draws

_P, _I64 = ctypes.c_void_p, ctypes.c_int64


def build_ctypes(folder: Path) -> ctypes.CDLL:
    sources = [kernels.CSRC / "site_attention.cpp", kernels.CSRC / "cell_attention.cpp"]
    objects = []
    for source in sources:
        obj = folder / f"{source.stem}.o"
        command = ["c++", *kernels.CFLAGS, "-fPIC", "-std=c++17", "-c", str(source), "-o", str(obj)]
        subprocess.run(command, check=True)
        objects.append(str(obj))
    lib = folder / "kernels_ctypes.so"
    subprocess.run(["c++", "-shared", "-fopenmp", *objects, "-o", str(lib), "-lm"], check=True)
    library = ctypes.CDLL(str(lib))
    for dtype in ("f32", "f64"):
        f = getattr(library, f"site_forward_{dtype}")
        f.argtypes = (
            [_P] * 5 + [ctypes.c_int, ctypes.c_double, _P, _P] + [_I64] * 7 + [ctypes.c_int]
        )
        b = getattr(library, f"site_backward_{dtype}")
        b.argtypes = [_P] * 6 + [ctypes.c_int, ctypes.c_double] + [_P] * 5 + [_I64] * 7
        b.argtypes += [ctypes.c_int]
        cf = getattr(library, f"cell_forward_{dtype}")
        cf.argtypes = [_P, ctypes.c_uint64, ctypes.c_int, ctypes.c_double, _P] + [_I64] * 4
        cf.argtypes += [ctypes.c_int]
        cb = getattr(library, f"cell_backward_{dtype}")
        cb.argtypes = [_P, ctypes.c_uint64, ctypes.c_int, ctypes.c_double, _P, _P] + [_I64] * 4
        cb.argtypes += [ctypes.c_int]
    return library


LIB: ctypes.CDLL | None = None


def _ptr(t: torch.Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


class CtypesSite(torch.autograd.Function):
    """The window kernels through ctypes (the former binding, condensed)."""

    @staticmethod
    def forward(ctx, qkv, rel, u, v, p):  # noqa: ANN001, ANN205
        qkv, u, v = (t.contiguous() for t in (qkv, u, v))
        batch, length, cells, _, heads, dim = qkv.shape
        width = rel.shape[2]
        relt = kernels.relt(rel)
        threshold, scale = dropout_threshold(p)
        grad = any(ctx.needs_input_grad)
        z = qkv.new_empty(batch, length, cells, heads, dim)
        slots = (batch, length, cells, heads, width)
        probs = qkv.new_empty(slots) if grad else None
        draws = random_draws(slots, qkv.device) if threshold else None
        LIB.site_forward_f32(
            _ptr(qkv), _ptr(relt), _ptr(u), _ptr(v), _ptr(draws), threshold, scale, _ptr(z),
            _ptr(probs), batch, length, cells, heads, dim, width, min(4, length),
            torch.get_num_threads(),
        )  # fmt: skip
        if grad:
            ctx.save_for_backward(qkv, relt, u, v, probs, *([draws] if threshold else []))
        ctx.params = (threshold, scale, width)
        return z

    @staticmethod
    def backward(ctx, grad):  # noqa: ANN001, ANN205
        qkv, relt, u, v, probs, *rest = ctx.saved_tensors
        draws = rest[0] if rest else None
        threshold, scale, width = ctx.params
        grad = grad.contiguous()
        batch, length, cells, _, heads, dim = qkv.shape
        d_qkv, d_rel = torch.empty_like(qkv), torch.empty_like(relt)
        d_u, d_v = torch.empty_like(u), torch.empty_like(v)
        LIB.site_backward_f32(
            _ptr(qkv), _ptr(relt), _ptr(u), _ptr(v), _ptr(probs), _ptr(draws), threshold, scale,
            _ptr(grad), _ptr(d_qkv), _ptr(d_rel), _ptr(d_u), _ptr(d_v), batch, length, cells,
            heads, dim, width, min(4, length), torch.get_num_threads(),
        )  # fmt: skip
        return d_qkv, d_rel[..., :width].permute(0, 1, 4, 2, 3), d_u, d_v, None


class CtypesCell(torch.autograd.Function):
    @staticmethod
    def forward(ctx, qkv, p):  # noqa: ANN001, ANN205
        qkv = qkv.contiguous()
        batch, length, cells, _, heads, dim = qkv.shape
        threshold, scale = dropout_threshold(p)
        seed = int(torch.randint(0, 2**62, (1,)).item()) if threshold else 0
        z = qkv.new_empty(batch, length, cells, heads, dim)
        LIB.cell_forward_f32(
            _ptr(qkv), seed, threshold, scale, _ptr(z), batch * length, cells, heads, dim,
            torch.get_num_threads(),
        )  # fmt: skip
        ctx.save_for_backward(qkv)
        ctx.params = (seed, threshold, scale)
        return z

    @staticmethod
    def backward(ctx, grad):  # noqa: ANN001, ANN205
        (qkv,) = ctx.saved_tensors
        seed, threshold, scale = ctx.params
        grad = grad.contiguous()
        batch, length, cells, _, heads, dim = qkv.shape
        d_qkv = torch.empty_like(qkv)
        LIB.cell_backward_f32(
            _ptr(qkv), seed, threshold, scale, _ptr(grad), _ptr(d_qkv), batch * length, cells,
            heads, dim, torch.get_num_threads(),
        )  # fmt: skip
        return d_qkv, None


CLOCK = time.perf_counter


def _timed(fn, repeats: int) -> float:  # noqa: ANN001
    best = float("inf")
    for _ in range(repeats):
        start = CLOCK()
        fn()
        best = min(best, CLOCK() - start)
    return best


def bench(cells: int, sites: int, repeats: int, rounds: int) -> list[tuple[str, float, float]]:
    g = torch.Generator().manual_seed(0)
    heads, dim, half = 8, 8, 10
    qkv = torch.randn(1, sites, cells, 3, heads, dim, generator=g).requires_grad_(True)
    rel = torch.randn(1, sites, 2 * half + 1, heads, dim, generator=g).requires_grad_(True)
    u, v = (torch.randn(heads, dim, generator=g).requires_grad_(True) for _ in range(2))
    weights = torch.randn(1, sites, cells, heads, dim, generator=g)

    def plain(t: torch.Tensor, p: float) -> torch.Tensor:  # inference: inputs without gradients
        return t if p else t.detach()

    calls = {
        "site": (
            lambda p: kernels.site_attention(*(plain(t, p) for t in (qkv, rel, u, v)), p),
            lambda p: CtypesSite.apply(*(plain(t, p) for t in (qkv, rel, u, v)), p),
        ),
        "cell": (
            lambda p: kernels.cell_attention(plain(qkv, p), p),
            lambda p: CtypesCell.apply(plain(qkv, p), p),
        ),
    }
    rows = []
    for kind, (op, legacy) in calls.items():
        for phase in ("infer", "train"):
            if phase == "infer":
                step_op = lambda op=op: _no_grad(op)  # noqa: E731
                step_ct = lambda legacy=legacy: _no_grad(legacy)  # noqa: E731
            else:
                step_op = lambda op=op: (op(0.1) * weights).sum().backward()  # noqa: E731
                step_ct = lambda legacy=legacy: (legacy(0.1) * weights).sum().backward()  # noqa: E731
            torch.testing.assert_close(_no_grad(op), _no_grad(legacy))  # same kernels, same result
            step_op(), step_ct()  # warm-up
            best_op = best_ct = float("inf")
            for _ in range(rounds):  # alternate
                best_op = min(best_op, _timed(step_op, repeats))
                best_ct = min(best_ct, _timed(step_ct, repeats))
            rows.append((f"{kind} {phase}", best_op * 1e3, best_ct * 1e3))
    return rows


def _no_grad(fn):  # noqa: ANN001, ANN202
    with torch.no_grad():
        return fn(0.0)


def main() -> int:
    global LIB, CLOCK
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cells", type=int, nargs="+", default=[20, 122])
    parser.add_argument("--sites", type=int, nargs="+", default=[1024, 512])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3, help="alternations of the two bindings")
    parser.add_argument("--threads", type=int)
    parser.add_argument(
        "--cpu-time",
        action="store_true",
        help="process CPU time instead of wall time (with --threads 1 on a loaded machine)",
    )
    args = parser.parse_args()
    if args.cpu_time:
        CLOCK = time.process_time
    if args.threads:
        torch.set_num_threads(args.threads)
    if not kernels.available():
        print(f"the fused kernels cannot be built here: {kernels.unavailable_reason()}")
        return 0
    with tempfile.TemporaryDirectory() as folder:
        LIB = build_ctypes(Path(folder))
        print(
            f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
            f"torch {torch.__version__}, {torch.get_num_threads()} threads, fp32, "
            f"{dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC, "
            f"{'process CPU' if args.cpu_time else 'wall'} time, best of {args.rounds} x "
            f"{args.repeats} alternating\n"
            f"Command: python benchmarks/kernel_binding_speed.py {' '.join(sys.argv[1:])}\n"
        )
        print("| C | L | workload | op (ms) | ctypes (ms) | op / ctypes time |")
        print("|---|---|---|---|---|---|")
        for cells, sites in zip(args.cells, args.sites):
            for name, op_ms, ct_ms in bench(cells, sites, args.repeats, args.rounds):
                print(
                    f"| {cells} | {sites} | {name} | {op_ms:.1f} | {ct_ms:.1f} | {op_ms / ct_ms:.2f} |"
                )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
