"""Fused C++ kernels of the attention, registered as PyTorch operators (``torch.ops.cpgformer``).

The attention cores are many tiny problems (per token and head: 21 dot products of length 8, a
softmax over 21, a weighted sum of 21 vectors along sites; C of each across cells); as tensor ops
they cost a dozen passes over score tensors, most of it memory traffic and op overhead.
``csrc/site_attention.cpp`` and ``csrc/cell_attention.cpp`` do the whole forward (and the whole
backward) of a token in one pass over cache-resident rows (layouts and work split are described
at the top of each file and in ``docs/model.md``).

``csrc/ops.cpp`` registers them as operators (``TORCH_LIBRARY``: schemas, checks of shapes, dtypes
and layouts, CPU implementations); this module registers their fake (shape) implementations and
autograd formulas (``torch.library.register_fake`` / ``register_autograd``), so they work under
autograd, ``torch.compile`` and ``torch.library.opcheck`` like built-in operators:

* ``cpgformer::site_attention`` / ``site_attention_backward``: window attention along sites;
* ``cpgformer::cell_attention`` / ``cell_attention_backward``: attention across cells;
* ``cpgformer::cell_draws``: the cell kernels' dropout draws (for tests).

They are compiled on first use by :func:`torch.utils.cpp_extension.load` (ninja, the system's C++
compiler ``$CXX`` or ``c++``) into a cache directory (``$CPGFORMER_KERNELS_CACHE``, else
``$XDG_CACHE_HOME/cpgformer/kernels`` or ``~/.cache/cpgformer/kernels``), one folder per PyTorch
version, CPU instruction set (the kernels are built with ``-march=native``) and version and place of
the sources; a later process finds the library there and loads it. The kernels run on PyTorch's own
OpenMP threads (the library links the ``libgomp`` PyTorch has loaded).

:func:`available` says whether they loaded; where they cannot (no compiler, no ninja, a failed
build), one warning names the reason and :mod:`cpgformer.nn.attention.backends` runs the tensor-op
cores of :mod:`cpgformer.nn.attention.cores`: the same function.
"""

from __future__ import annotations

import hashlib
import logging
import os
import platform
import shutil
import threading
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from cpgformer.nn.attention.dropout import dropout_threshold, random_draws

CSRC = Path(__file__).resolve().parent.parent / "csrc"
SOURCES = tuple(CSRC / name for name in ("ops.cpp", "site_attention.cpp", "cell_attention.cpp"))
NAME = "cpgformer_kernels"
CFLAGS = ("-O3", "-march=native", "-ffast-math", "-fopenmp")
"""``-ffast-math`` lets the compiler use the vectorised ``exp`` of the C library; it is given to
the compile step only (linking with it would add ``crtfastmath.o``, which switches the whole
process to flush-to-zero arithmetic)."""
LDFLAGS = ("-fopenmp",)

_LOCK = threading.Lock()
_STATE: dict[str, object] = {}


def _cpu_flags() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return line
    except OSError:
        pass
    return platform.processor()


def cache_dir() -> Path:
    """Where the kernels are built (one sub-folder per PyTorch version and CPU)."""
    if os.environ.get("CPGFORMER_KERNELS_CACHE"):
        return Path(os.environ["CPGFORMER_KERNELS_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "cpgformer" / "kernels"


def build_dir() -> Path:
    """The build folder of these sources (their location and contents: installs of different
    versions, or checkouts in other places, never rebuild each other's), this PyTorch and this CPU."""
    key = hashlib.sha256(
        (_cpu_flags() + platform.machine() + platform.system() + torch.__version__).encode()
    )
    key.update(str(CSRC).encode())
    for source in (*SOURCES, CSRC / "kernels.h"):
        key.update(source.read_bytes())
    return cache_dir() / f"torch-{torch.__version__.split('+')[0]}-{key.hexdigest()[:16]}"


def compiler() -> str | None:
    """The C++ compiler :mod:`torch.utils.cpp_extension` would use, if it exists."""
    return shutil.which(os.environ.get("CXX", "c++"))


def build(verbose: bool = False) -> Path:
    """Compile (unless cached) and load the kernels into this process; raises on failure."""
    from torch.utils import cpp_extension

    if compiler() is None:
        raise RuntimeError("no C++ compiler (set CXX or install g++)")
    if not cpp_extension.is_ninja_available():
        raise RuntimeError("ninja is not installed (pip install ninja)")
    directory = build_dir()
    directory.mkdir(parents=True, exist_ok=True)
    logging.getLogger(__name__).info(
        "loading the fused CPU kernels (built once) from %s", directory
    )
    path = cpp_extension.load(
        NAME,
        [str(s) for s in SOURCES],
        extra_cflags=list(CFLAGS),
        extra_ldflags=list(LDFLAGS),
        extra_include_paths=[str(CSRC)],
        build_directory=str(directory),
        is_python_module=False,
        verbose=verbose,
    )
    _register_python_parts()
    return Path(str(path))


def unavailable_reason() -> str | None:
    """None where the kernels are loaded (building them on first use); else why not, warned once."""
    with _LOCK:
        if "reason" not in _STATE:
            reason = None
            try:
                build()
            except Exception as error:  # noqa: BLE001  (any build failure: the tensor path runs)
                reason = str(error).strip().splitlines()[-1][:300] if str(error) else repr(error)
                warnings.warn(
                    f"cpgformer: fused CPU kernels unavailable ({reason}); using the tensor-op "
                    "path (same results, slower)",
                    RuntimeWarning,
                    stacklevel=3,
                )
            _STATE["reason"] = reason
        return _STATE["reason"]  # type: ignore[return-value]


def available() -> bool:
    return unavailable_reason() is None


def supports(qkv: Tensor) -> bool:
    """Whether the kernels take ``qkv``: on the CPU, fp32 or fp64 (and built)."""
    return qkv.device.type == "cpu" and qkv.dtype in (torch.float32, torch.float64) and available()


# ----------------------------------------------------------------------------------------------
# fake implementations and autograd formulas of the operators


def _site_fake(qkv, relt, u, v, draws, width, threshold, scale, store_probs):  # noqa: ANN001, ANN202
    batch, length, cells, _, heads, dim = qkv.shape
    probs = (batch, length, cells, heads, width) if store_probs else (0,)
    return qkv.new_empty(batch, length, cells, heads, dim), qkv.new_empty(probs)


def _site_backward_fake(grad, qkv, relt, u, v, probs, draws, width, threshold, scale):  # noqa: ANN001, ANN202
    return tuple(torch.empty_like(t) for t in (qkv, relt, u, v))


def _site_setup(ctx, inputs, output) -> None:  # noqa: ANN001
    qkv, relt, u, v, draws, width, threshold, scale, _ = inputs
    ctx.set_materialize_grads(False)  # probs get no gradient: no zero tensor of their size
    ctx.save_for_backward(qkv, relt, u, v, output[1], draws)
    ctx.params = (width, threshold, scale)


def _site_backward(ctx, grad: Tensor, _grad_probs: Tensor):  # noqa: ANN001, ANN202
    if grad is None:  # only probs were used (never, in this package)
        return (None,) * 9
    qkv, relt, u, v, probs, draws = ctx.saved_tensors
    width, threshold, scale = ctx.params
    grads = torch.ops.cpgformer.site_attention_backward(
        grad.contiguous(), qkv, relt, u, v, probs, draws, width, threshold, scale
    )
    return (*grads, None, None, None, None, None)


def _cell_fake(qkv, seed, threshold, scale):  # noqa: ANN001, ANN202
    batch, length, cells, _, heads, dim = qkv.shape
    return qkv.new_empty(batch, length, cells, heads, dim)


def _cell_backward_fake(grad, qkv, seed, threshold, scale):  # noqa: ANN001, ANN202
    return torch.empty_like(qkv)


def _cell_setup(ctx, inputs, output) -> None:  # noqa: ANN001
    qkv, seed, threshold, scale = inputs
    ctx.save_for_backward(qkv)
    ctx.params = (seed, threshold, scale)


def _cell_backward(ctx, grad: Tensor):  # noqa: ANN001, ANN202
    (qkv,) = ctx.saved_tensors
    d_qkv = torch.ops.cpgformer.cell_attention_backward(grad.contiguous(), qkv, *ctx.params)
    return d_qkv, None, None, None


def _draws_fake(seed, sites, heads, cells):  # noqa: ANN001, ANN202
    return torch.empty(sites, heads, cells, cells, dtype=torch.int8)


def _register_python_parts() -> None:
    """Fake implementations and autograd formulas, once per process (the operators must exist)."""
    if _STATE.get("registered"):
        return
    lib = torch.library
    lib.register_fake("cpgformer::site_attention")(_site_fake)
    lib.register_fake("cpgformer::site_attention_backward")(_site_backward_fake)
    lib.register_fake("cpgformer::cell_attention")(_cell_fake)
    lib.register_fake("cpgformer::cell_attention_backward")(_cell_backward_fake)
    lib.register_fake("cpgformer::cell_draws")(_draws_fake)
    lib.register_autograd("cpgformer::site_attention", _site_backward, setup_context=_site_setup)
    lib.register_autograd("cpgformer::cell_attention", _cell_backward, setup_context=_cell_setup)
    _STATE["registered"] = True


# ----------------------------------------------------------------------------------------------
# entry points


def relt(rel: Tensor) -> Tensor:
    """Window encodings ``[B, L, W, H, d]`` -> the kernels' ``[B, L, H, d, P]`` (slot-minor, zero
    padded to a multiple of 8 slots)."""
    width = rel.shape[2]
    return F.pad(rel.permute(0, 1, 3, 4, 2), (0, -(-width // 8) * 8 - width)).contiguous()


def site_attention(qkv: Tensor, rel: Tensor, u: Tensor, v: Tensor, dropout: float) -> Tensor:
    """Window attention along sites: ``qkv [B, L, C, 3, H, d]`` (q pre-scaled), ``rel [B, L, W, H,
    d]`` (projected window encodings), content and position biases ``u``, ``v [H, d]`` -> ``z [B,
    L, C, H, d]``; the function of :class:`~cpgformer.nn.attention.cores.SiteBandCore` (dropout
    decisions from :func:`~cpgformer.nn.attention.dropout.random_draws`, one byte per window slot).
    Keeps the probabilities and draws for backward (5 bytes per window slot, independent of C)."""
    batch, length, cells, _, heads, _ = qkv.shape
    width = rel.shape[2]
    threshold, scale = dropout_threshold(dropout)
    draws = None
    if threshold:
        draws = random_draws((batch, length, cells, heads, width), qkv.device)
    grad = torch.is_grad_enabled() and any(t.requires_grad for t in (qkv, rel, u, v))
    z, _ = torch.ops.cpgformer.site_attention(
        qkv.contiguous(), relt(rel), u.contiguous(), v.contiguous(), draws, width, threshold,
        scale, grad,
    )  # fmt: skip
    return z


def cell_attention(qkv: Tensor, dropout: float) -> Tensor:
    """Attention across the cells of each site: ``qkv [B, L, C, 3, H, d]`` (q pre-scaled) -> ``z
    [B, L, C, H, d]``; the function of :class:`~cpgformer.nn.attention.cores.CellCore`. Keeps only
    ``qkv``: the backward recomputes each row's probabilities, and the dropout draws come from a
    counter-based hash of (seed, row, cell) (:func:`cell_draws`), so nothing of size C x C is kept."""
    threshold, scale = dropout_threshold(dropout)
    seed = int(torch.randint(0, 2**62, (1,)).item()) if threshold else 0
    return torch.ops.cpgformer.cell_attention(qkv.contiguous(), seed, threshold, scale)


def cell_draws(seed: int, sites: int, heads: int, cells: int) -> Tensor:
    """The int8 dropout draws :func:`cell_attention` uses with ``seed``: ``[sites, heads, C
    (query), C (key)]`` (kept where ``draw >= threshold - 128``)."""
    return torch.ops.cpgformer.cell_draws(seed, sites, heads, cells)
