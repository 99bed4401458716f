"""Fused C++ kernels of the fast path, compiled on first use and loaded with :mod:`ctypes`.

The attention cores are many tiny problems (per token and head: 21 dot products of length 8, a
softmax over 21, a weighted sum of 21 vectors along sites; C of each across cells); as tensor ops
they cost a dozen passes over score tensors, most of it memory traffic and op overhead.
``csrc/site_attention.cpp`` and ``csrc/cell_attention.cpp`` do the whole forward (and the whole
backward) of a token in one pass over cache-resident rows (layouts and work split are described
at the top of each file and in ``docs/model.md``).

The sources are plain C++ (no PyTorch headers) built with the system's C++ compiler (``$CXX``,
else ``c++``) into a cache directory (``$CPGFORMER_NATIVE_CACHE``, else
``$XDG_CACHE_HOME/cpgformer/native`` or ``~/.cache/cpgformer/native``), keyed by the sources, the
compiler, the flags and this CPU's instruction-set flags (it is built with ``-march=native``).
The kernels run on OpenMP threads: the library links ``libgomp``, and since PyTorch has already
loaded its own, the dynamic linker hands it that one, so the kernels share PyTorch's threads.

Used when :func:`available` (a compiler was found, the build succeeded, and ``CPGFORMER_NATIVE``
is not ``0``); otherwise the tensor-op cores of :mod:`cpgformer.nn.cores` run the same math, after
one warning saying why.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
import threading
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from cpgformer.nn.cores import PARTS_MULTIPLE, dropout_threshold, random_draws

SOURCES = tuple(sorted((Path(__file__).with_name("csrc")).glob("*.cpp")))
ABI_VERSION = 4
COMPILE_FLAGS = ("-O3", "-march=native", "-ffast-math", "-fopenmp", "-fPIC", "-std=c++17")
"""``-ffast-math`` lets the compiler use the vectorised ``exp`` of the C library; it is given to
the compile step only: linking with it would add ``crtfastmath.o``, which switches the whole
process to flush-to-zero arithmetic."""
LINK_FLAGS = ("-shared", "-fopenmp")
ENV_SWITCH = "CPGFORMER_NATIVE"

_LOCK = threading.Lock()
_STATE: dict[str, object] = {}
_P = ctypes.c_void_p
_I64 = ctypes.c_int64


def _cpu_flags() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return line
    except OSError:
        pass
    return platform.processor()


def _compiler() -> str | None:
    name = os.environ.get("CXX", "c++")
    return shutil.which(name)


def cache_dir() -> Path:
    if os.environ.get("CPGFORMER_NATIVE_CACHE"):
        return Path(os.environ["CPGFORMER_NATIVE_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "cpgformer" / "native"


def _build(compiler: str) -> Path:
    """The shared library, compiled unless the cache already holds this exact build."""
    version = subprocess.run(
        [compiler, "--version"], capture_output=True, text=True, check=True
    ).stdout
    key = hashlib.sha256()
    for part in (*(p.read_bytes() for p in SOURCES), version.encode()):
        key.update(part)
    key.update(repr(COMPILE_FLAGS + LINK_FLAGS).encode())
    key.update((_cpu_flags() + platform.machine() + platform.system()).encode())
    target = cache_dir() / f"kernels-{key.hexdigest()[:16]}.so"
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    logging.getLogger(__name__).info("compiling the fused CPU kernels (once) into %s", target)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        objects = [Path(tmp) / f"{source.stem}.o" for source in SOURCES]
        lib = Path(tmp) / "kernels.so"
        commands = [
            [compiler, *COMPILE_FLAGS, "-c", str(source), "-o", str(obj)]
            for source, obj in zip(SOURCES, objects)
        ]
        commands.append([compiler, *LINK_FLAGS, *map(str, objects), "-o", str(lib), "-lm"])
        for command in commands:
            done = subprocess.run(command, capture_output=True, text=True)
            if done.returncode:
                raise RuntimeError(f"{' '.join(command)} failed: {done.stderr.strip()[-2000:]}")
        os.replace(lib, target)  # atomic: concurrent processes see a whole library or none
    return target


def _declare(lib: ctypes.CDLL) -> None:
    for dtype in ("f32", "f64"):
        forward = getattr(lib, f"site_forward_{dtype}")
        forward.argtypes = [_P] * 5 + [ctypes.c_int, ctypes.c_double, _P, _P] + [_I64] * 7
        forward.argtypes += [ctypes.c_int]
        forward.restype = None
        backward = getattr(lib, f"site_backward_{dtype}")
        backward.argtypes = [_P] * 6 + [ctypes.c_int, ctypes.c_double] + [_P] * 5 + [_I64] * 7
        backward.argtypes += [ctypes.c_int]
        backward.restype = None
        cell_forward = getattr(lib, f"cell_forward_{dtype}")
        cell_forward.argtypes = [_P, ctypes.c_uint64, ctypes.c_int, ctypes.c_double, _P]
        cell_forward.argtypes += [_I64] * 4 + [ctypes.c_int]
        cell_forward.restype = None
        cell_backward = getattr(lib, f"cell_backward_{dtype}")
        cell_backward.argtypes = [_P, ctypes.c_uint64, ctypes.c_int, ctypes.c_double, _P, _P]
        cell_backward.argtypes += [_I64] * 4 + [ctypes.c_int]
        cell_backward.restype = None
    lib.cell_draws.argtypes = [ctypes.c_uint64, _I64, _I64, _P]
    lib.cell_draws.restype = None
    lib.cpgformer_abi_version.restype = ctypes.c_int


def library() -> ctypes.CDLL | None:
    """The loaded kernels, building them on first use; None where disabled or unbuildable (with
    one warning naming the reason)."""
    if os.environ.get(ENV_SWITCH, "1") == "0":
        return None
    with _LOCK:
        if "lib" in _STATE:
            return _STATE["lib"]  # type: ignore[return-value]
        lib = None
        try:
            compiler = _compiler()
            if compiler is None:
                raise RuntimeError("no C++ compiler (set CXX or install g++)")
            lib = ctypes.CDLL(str(_build(compiler)))
            _declare(lib)
            if lib.cpgformer_abi_version() != ABI_VERSION:
                raise RuntimeError("stale kernel library")
        except (OSError, RuntimeError, AttributeError, subprocess.SubprocessError) as error:
            lib = None
            warnings.warn(
                f"cpgformer: fused CPU kernels unavailable ({error}); using the tensor-op path "
                "(same results, slower)",
                RuntimeWarning,
                stacklevel=2,
            )
        _STATE["lib"] = lib
        return lib


def available() -> bool:
    return library() is not None


def usable(qkv: Tensor) -> bool:
    """Whether the kernels can run on ``qkv`` (CPU, fp32 or fp64) and are built."""
    return qkv.device.type == "cpu" and qkv.dtype in (torch.float32, torch.float64) and available()


def _kernel(name: str, dtype: torch.dtype):  # noqa: ANN202
    """The library's function ``name`` for ``dtype`` (fp32 or fp64)."""
    lib = library()
    assert lib is not None
    return getattr(lib, f"{name}_{'f32' if dtype == torch.float32 else 'f64'}")


def _ptr(t: Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


def _parts(length: int) -> int:
    """Site ranges per batch entry (the kernels' range ``k`` is ``[k·L/parts, (k+1)·L/parts)``):
    ``PARTS_MULTIPLE`` where the segment has that many sites, whatever the thread count."""
    return min(PARTS_MULTIPLE, length)


class NativeSiteCore(torch.autograd.Function):
    """Window attention along sites by the fused kernels.

    ``qkv [B, L, C, 3, H, d]`` (q pre-scaled), ``rel [B, L, W, H, d]`` (projected window
    encodings), content and position biases ``u``, ``v [H, d]``, dropout ``p`` -> ``z [B, L, C,
    H, d]``. The same function as :class:`cpgformer.nn.cores.SiteBandCore` (dropout decisions from
    :func:`~cpgformer.nn.cores.random_draws`, one byte per window slot, drawn in one call). Each
    kernel call splits the sites of every batch entry into a fixed number of ranges and runs them
    on PyTorch's own OpenMP threads (the library links the ``libgomp`` PyTorch loaded). Stores
    ``qkv``, ``rel``, the probabilities and the draws (5 bytes per window slot, independent of C).
    """

    @staticmethod
    def forward(ctx, qkv: Tensor, rel: Tensor, u: Tensor, v: Tensor, p: float) -> Tensor:  # noqa: ANN001
        qkv, u, v = (t.contiguous() for t in (qkv, u, v))
        batch, length, cells, _, heads, dim = qkv.shape
        width = rel.shape[2]
        padded = -(-width // 8) * 8
        # [B, L, W, H, d] -> [B, L, H, d, P]: slot-minor, zero padded to a multiple of 8 slots
        rel = F.pad(rel.permute(0, 1, 3, 4, 2), (0, padded - width)).contiguous()
        threshold, scale = dropout_threshold(p)
        grad = any(ctx.needs_input_grad)
        z = qkv.new_empty(batch, length, cells, heads, dim)
        slots = (batch, length, cells, heads, width)
        probs = qkv.new_empty(slots) if grad else None
        draws = random_draws(slots, qkv.device) if threshold else None
        kernel = _kernel("site_forward", qkv.dtype)
        kernel(
            _ptr(qkv), _ptr(rel), _ptr(u), _ptr(v), _ptr(draws), threshold, scale, _ptr(z),
            _ptr(probs), batch, length, cells, heads, dim, width, _parts(length),
            torch.get_num_threads(),
        )  # fmt: skip
        if grad:
            ctx.save_for_backward(qkv, rel, u, v, probs, *([draws] if threshold else []))
        ctx.params = (threshold, scale, width)
        return z

    @staticmethod
    def backward(ctx, grad: Tensor):  # noqa: ANN001, ANN205
        qkv, rel, u, v, probs, *rest = ctx.saved_tensors
        draws = rest[0] if rest else None
        threshold, scale, width = ctx.params
        grad = grad.contiguous()
        batch, length, cells, _, heads, dim = qkv.shape
        d_qkv = torch.empty_like(qkv)  # every entry written by the kernel
        d_rel = torch.empty_like(rel)
        d_u, d_v = torch.empty_like(u), torch.empty_like(v)
        kernel = _kernel("site_backward", qkv.dtype)
        kernel(
            _ptr(qkv), _ptr(rel), _ptr(u), _ptr(v), _ptr(probs), _ptr(draws), threshold, scale,
            _ptr(grad), _ptr(d_qkv), _ptr(d_rel), _ptr(d_u), _ptr(d_v), batch, length, cells,
            heads, dim, width, _parts(length), torch.get_num_threads(),
        )  # fmt: skip
        d_rel = d_rel[..., :width].permute(0, 1, 4, 2, 3)  # [B, L, W, H, d]
        return d_qkv, d_rel, d_u, d_v, None


class NativeCellCore(torch.autograd.Function):
    """Attention across the cells of each site by the fused kernels: ``qkv [B, L, C, 3, H, d]``
    (q pre-scaled), dropout ``p`` -> ``z [B, L, C, H, d]``; the function of
    :class:`cpgformer.nn.cores.CellCore`. Stores only ``qkv``: the backward recomputes each row's
    probabilities, and the dropout draws come from a counter-based hash of (seed, row, cell)
    (:func:`cell_draws`), so nothing of size C x C is kept whatever C."""

    @staticmethod
    def forward(ctx, qkv: Tensor, p: float) -> Tensor:  # noqa: ANN001
        qkv = qkv.contiguous()
        batch, length, cells, _, heads, dim = qkv.shape
        threshold, scale = dropout_threshold(p)
        seed = int(torch.randint(0, 2**62, (1,)).item()) if threshold else 0
        z = qkv.new_empty(batch, length, cells, heads, dim)
        kernel = _kernel("cell_forward", qkv.dtype)
        kernel(
            _ptr(qkv), seed, threshold, scale, _ptr(z), batch * length, cells, heads, dim,
            torch.get_num_threads(),
        )  # fmt: skip
        if any(ctx.needs_input_grad):
            ctx.save_for_backward(qkv)
        ctx.params = (seed, threshold, scale)
        return z

    @staticmethod
    def backward(ctx, grad: Tensor):  # noqa: ANN001, ANN205
        (qkv,) = ctx.saved_tensors
        seed, threshold, scale = ctx.params
        grad = grad.contiguous()
        batch, length, cells, _, heads, dim = qkv.shape
        d_qkv = torch.empty_like(qkv)  # every entry written by the kernel
        kernel = _kernel("cell_backward", qkv.dtype)
        kernel(
            _ptr(qkv), seed, threshold, scale, _ptr(grad), _ptr(d_qkv), batch * length, cells,
            heads, dim, torch.get_num_threads(),
        )  # fmt: skip
        return d_qkv, None


def cell_draws(seed: int, sites: int, heads: int, cells: int) -> Tensor:
    """The int8 dropout draws :class:`NativeCellCore` uses with ``seed``: ``[sites, heads, C
    (query), C (key)]`` (kept where ``draw >= threshold - 128``, as in
    :func:`~cpgformer.nn.cores.keep_from_draws`)."""
    lib = library()
    assert lib is not None
    out = torch.empty(sites, heads, cells, cells, dtype=torch.int8)
    lib.cell_draws(seed, sites * heads * cells, cells, _ptr(out))
    return out


def cell_attention(qkv: Tensor, p: float) -> Tensor:
    """:class:`NativeCellCore` (see there)."""
    return NativeCellCore.apply(qkv, p)


def site_attention(qkv: Tensor, rel: Tensor, u: Tensor, v: Tensor, p: float) -> Tensor:
    """:class:`NativeSiteCore` (see there)."""
    return NativeSiteCore.apply(qkv, rel, u, v, p)
