"""Attention cores of the fast path with hand-written backward, run in cache-sized chunks.

Both cores compute ``z = dropout(softmax(scores)) @ values`` for many small independent problems
(one per sequence x query block along sites, one per site x head across cells). Autograd would
store and revisit every intermediate of a dozen elementwise passes over the score tensor, each
pass streaming tens of MB through memory; here forward and backward walk the problems in chunks
of about ``CHUNK_ELEMENTS`` score entries, so that every pass over a chunk's scores stays in
cache, and the backward uses the identity ``sum_j dP_ij P_ij = dz_i . z_i`` (the row term of the
softmax gradient from the outputs, as in FlashAttention) instead of another pass.

* :class:`SiteBandCore` — the window attention along sites: query blocks of ``block`` sites
  against their key span of ``block + 2w`` sites for the content matmuls, the softmax and everything
  elementwise on the ``2w + 1`` window slots only.
* :class:`CellCore` — full attention across cells (memory linear in C).

The site core stores its window probabilities and dropout draws (5 bytes per window slot,
independent of C); the cell core stores nothing of size C x C: its backward recomputes each chunk's probabilities
and redraws the chunk's dropout mask from a seed. Seeds come from the default generator, so seeded
runs are reproducible.

Dropout masks come from :func:`keep_mask`: one byte of a 64-bit random word per decision (the CPU
generator costs ~4 ns per word, so ~0.5 ns per decision against ~5 ns for ``F.dropout``'s
``bernoulli_``). The drop probability is therefore rounded to a multiple of 1/256 (0.2 -> 51/256 =
0.1992) and survivors are scaled by the exact inverse keep rate of the rounded value, so the
expected output is unchanged. The plain autograd equivalents (same masks) are in the tests.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

CHUNK_ELEMENTS = 1 << 19
"""Score entries per chunk (2 MiB of fp32: a chunk's passes stay in cache; measured best of
2^17-2^20 on this machine's 2 cores with 512 KiB L2 each and 32 MiB L3)."""


def dropout_threshold(p: float) -> tuple[int, float]:
    """``p`` rounded to a multiple of 1/256, as a count of 256ths, and the survivors' scale
    ``1 / (1 - rounded p)``. A positive ``p`` never rounds to zero."""
    threshold = min(max(round(p * 256), 1 if p > 0 else 0), 255)
    return threshold, 256 / (256 - threshold)


def random_draws(
    shape: torch.Size | tuple[int, ...], device: torch.device, seed: int | None = None
) -> Tensor:
    """Uniform int8 draws (one byte of a 64-bit random word each), from the default generator or
    from a fresh generator seeded with ``seed`` (so that the same draws can be made again)."""
    generator = None
    if seed is not None:
        generator = torch.Generator(device=device)
        generator.manual_seed(seed)
    n = math.prod(shape)
    words = torch.empty((n + 7) // 8, dtype=torch.int64, device=device)
    words.random_(-(2**63), None, generator=generator)
    return words.view(torch.int8)[:n].view(shape)


def keep_from_draws(draws: Tensor, threshold: int, dtype: torch.dtype) -> Tensor:
    """Float mask: 1 where a draw is kept (probability ``1 - threshold / 256``), 0 elsewhere."""
    out = torch.empty(draws.shape, dtype=dtype, device=draws.device)
    return torch.ge(draws, threshold - 128, out=out)


def keep_mask(
    shape: torch.Size | tuple[int, ...],
    threshold: int,
    dtype: torch.dtype,
    device: torch.device,
    seed: int | None = None,
) -> Tensor:
    """Float mask of 1 (kept, probability ``1 - threshold / 256``) and 0 (dropped), from
    :func:`random_draws`."""
    return keep_from_draws(random_draws(shape, device, seed), threshold, dtype)


_POOL: ThreadPoolExecutor | None = None


def _run_chunks(
    work: Callable[[int, Any], Any], items: list[Any], device: torch.device
) -> list[Any]:
    """``work(index, item)`` for every item, on ``torch.get_num_threads()`` threads.

    The chunks' ops are small (most below PyTorch's intra-op grain size, or tiny GEMMs), so one op
    at a time leaves the other cores idle; independent chunks on a thread pool use them. Each
    chunk's result is computed exactly as on one thread (seeded masks, no shared accumulators), so
    the outputs do not depend on the thread count.
    """
    global _POOL
    threads = torch.get_num_threads() if device.type == "cpu" else 1  # accelerators: one stream
    if threads <= 1 or len(items) <= 1:
        with torch.no_grad():
            return [work(index, item) for index, item in enumerate(items)]
    if _POOL is None or _POOL._max_workers != threads:  # noqa: SLF001
        _POOL = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="cpgformer-core")
    inference = torch.is_inference_mode_enabled()  # grad modes are per thread: carry it over

    def run(pair: tuple[int, Any]) -> Any:
        with torch.inference_mode(inference), torch.no_grad():
            return work(*pair)

    return list(_POOL.map(run, enumerate(items)))


def _budget(device: torch.device) -> int:
    """Score entries per chunk: cache-sized on CPUs; on accelerators a few large launches."""
    return CHUNK_ELEMENTS if device.type == "cpu" else CHUNK_ELEMENTS << 8


def _chunks(total: int, per_item: int, device: torch.device) -> list[slice]:
    step = max(1, _budget(device) // max(per_item, 1))
    return [slice(start, min(start + step, total)) for start in range(0, total, step)]


# ----------------------------------------------------------------------------------------------
# band attention along sites


def _windows(t: Tensor, span: int, block: int) -> Tensor:
    """``[n, nblk*block + span - block, d]`` -> ``[n*nblk, span, d]`` (copy): the key span of each
    query block."""
    n = t.shape[0]
    win = t.unfold(1, span, block).transpose(-1, -2)  # [n, nblk, span, d], a view
    return win.reshape(n * win.shape[1], span, t.shape[2])


def _fold_windows(grad: Tensor, out: Tensor, span: int, block: int) -> None:
    """Add window gradients ``[n, nblk, span, d]`` back onto ``out`` ``[n, nblk*block + span - block, d]``
    (the adjoint of :func:`_windows`), in non-overlapping pieces of ``block`` rows."""
    n, n_blocks = grad.shape[:2]
    pieces = -(-span // block)
    length = out.shape[1]
    padded = out.new_zeros(n, (n_blocks + pieces - 1) * block, out.shape[2])
    grid = padded.view(n, n_blocks + pieces - 1, block, out.shape[2])
    for piece in range(pieces):
        rows = min(block, span - piece * block)
        grid[:, piece : piece + n_blocks, :rows].add_(
            grad[:, :, piece * block : piece * block + rows]
        )
    out.add_(padded[:, :length])


def _site_chunks(
    cells: int, n_blocks: int, block: int, span: int, device: torch.device
) -> list[slice]:
    """Cells split into equal chunks of at most ``CHUNK_ELEMENTS`` band scores each."""
    most = max(1, _budget(device) // (n_blocks * block * span))
    count = -(-cells // most)
    step = -(-cells // count)
    return [slice(start, min(start + step, cells)) for start in range(0, cells, step)]


_BUFFERS = threading.local()


def _band_buffer(name: str, rows: int, block: int, span: int, like: Tensor) -> Tensor:
    """A per-thread ``[rows, block, span]`` scratch tensor that is zero off the band.

    Only window slots (column ``j + o`` of row ``j``) are ever written, so the zeros elsewhere
    survive reuse and need no refilling."""
    # inference tensors cannot be updated outside inference mode: one buffer per mode
    key = (name, block, span, like.dtype, like.device, torch.is_inference_mode_enabled())
    cache: dict = getattr(_BUFFERS, "cache", None) or {}
    _BUFFERS.cache = cache
    buffer = cache.get(key)
    if buffer is None or buffer.shape[0] < rows:
        buffer = like.new_zeros(rows, block, span)
        cache[key] = buffer
    return buffer[:rows]


def _on_window(band: Tensor, width: int) -> Tensor:
    """The window slots of band rows ``[rows, block, span]`` as a strided view ``[rows, block, W]``:
    row j's slot o is column j + o."""
    rows, block, span = band.shape
    return band.as_strided((rows, block, width), (block * span, span + 1, 1), band.storage_offset())


class SiteBandCore(torch.autograd.Function):
    """Window attention along sites for every (batch, head, cell) sequence, position term included.

    Inputs: ``qkv [B, L, C, 3, H, d]`` (the qkv projection of the tokens, q pre-scaled), ``rel
    [B, H, nblk*block, d, W]`` (projected relative encodings of each site's W window slots,
    transposed, zero past the segment), the content and position biases ``u``, ``v [H, d]`` and
    ``mask [nblk, block, W]`` (0 on slots whose key lies in the segment, the lowest finite value
    elsewhere) -> ``z [B, L, C, H, d]`` (token layout: the output projection's input as a view).

    For a chunk of cells of one (batch, head), in cache:

    * the chunk's queries, keys and values are gathered from ``qkv`` into sequences zero-padded to
      whole query blocks (keys and values with w zero sites each side);
    * content scores: each block of ``block`` queries against its span of ``block + 2w`` keys, one
      small matmul per block (the "band"); the W window slots of each row are a strided view of it;
    * position scores: ``(q + v) @ rel`` per site, with the chunk's cells as the matmul's M
      dimension — computed once per site and head, never repeated per cell;
    * softmax, dropout and all elementwise work run on the W window slots only (not the band's
      ``block + 2w`` columns); probabilities enter the band matmuls through per-thread band buffers
      that are zero off the window.

    Stores ``qkv``, the output, the window probabilities and the dropout draws (5 bytes per window
    slot: ~0.8 KB per token and layer, independent of C). Backward writes every gradient of ``qkv``
    exactly once, so no gradient is ever concatenated or zero-filled at full size.
    """

    @staticmethod
    def _sequences(qkv: Tensor, b: int, h: int, s: slice, mask: Tensor) -> tuple[Tensor, ...]:
        """The chunk's queries ``[n, Lp, d]`` and keys, values ``[n, Lp + 2w, d]`` (zero padded)."""
        length, dim = qkv.shape[1], qkv.shape[-1]
        n_blocks, block, width = mask.shape
        half = (width - 1) // 2
        count = s.stop - s.start
        part = qkv[b, :, s, :, h]  # [L, n, 3, d]
        queries = qkv.new_zeros(count, n_blocks * block, dim)
        queries[:, :length] = part[:, :, 0].transpose(0, 1)
        keys = qkv.new_zeros(count, n_blocks * block + 2 * half, dim)
        keys[:, half : half + length] = part[:, :, 1].transpose(0, 1)
        values = torch.zeros_like(keys)
        values[:, half : half + length] = part[:, :, 2].transpose(0, 1)
        return queries, keys, values

    @staticmethod
    def _scores(q_chunk: Tensor, keys: Tensor, rel: Tensor, u: Tensor, v: Tensor, mask: Tensor):  # noqa: ANN205
        """Window probabilities ``[n, nblk, block, W]``, key spans ``[rows, S, d]``, queries + u."""
        count, _, dim = q_chunk.shape
        n_blocks, block, width = mask.shape
        span = block + width - 1
        rows = count * n_blocks
        k_win = _windows(keys, span, block)  # [rows, S, d]
        queries = (q_chunk + u).view(rows, block, dim)
        content = _on_window(torch.bmm(queries, k_win.transpose(1, 2)), width)
        position = torch.bmm((q_chunk + v).transpose(0, 1), rel)  # [Lp, n, W]
        position = position.transpose(0, 1).view(count, n_blocks, block, width)
        scores = q_chunk.new_empty(count, n_blocks, block, width)
        torch.add(content.view(count, n_blocks, block, width), position, out=scores)
        return scores.add_(mask).softmax(-1), k_win, queries

    @staticmethod
    def forward(  # noqa: ANN001, PLR0913
        ctx, qkv: Tensor, rel: Tensor, u: Tensor, v: Tensor, mask: Tensor, dropout: float
    ) -> Tensor:
        batch, length, cells, _, heads, dim = qkv.shape
        n_blocks, block, width = mask.shape
        span = block + width - 1
        threshold, scale = dropout_threshold(dropout)
        grad = any(ctx.needs_input_grad)
        z = qkv.new_empty(batch, length, cells, heads, dim)
        items = [
            (b, h, s)
            for b in range(batch)
            for h in range(heads)
            for s in _site_chunks(cells, n_blocks, block, span, qkv.device)
        ]
        seeds = torch.randint(0, 2**62, (len(items),)).tolist() if threshold else []

        def work(index: int, item: tuple[int, int, slice]) -> list[Tensor]:
            b, h, s = item
            rows = (s.stop - s.start) * n_blocks
            q_chunk, keys, values = SiteBandCore._sequences(qkv, b, h, s, mask)
            probs, _, _ = SiteBandCore._scores(q_chunk, keys, rel[b, h], u[h], v[h], mask)
            kept = [probs] if grad else []
            dropped = probs
            if threshold:
                draws = random_draws(probs.shape, probs.device, seeds[index])
                dropped = probs * keep_from_draws(draws, threshold, probs.dtype)
                kept += [draws] if grad else []
            band = _band_buffer("probs", rows, block, span, probs)
            _on_window(band, width).copy_(dropped.view(rows, block, width))
            out = torch.bmm(band, _windows(values, span, block)).view(-1, n_blocks * block, dim)
            if threshold:
                out.mul_(scale)
            z[b, :, s, h].copy_(out[:, :length].transpose(0, 1))
            return kept

        stored = [t for kept in _run_chunks(work, items, qkv.device) for t in kept]
        if grad:
            ctx.save_for_backward(qkv, rel, u, v, mask, z, *stored)
        ctx.params = (threshold, scale, items)
        return z

    @staticmethod
    def backward(ctx, grad: Tensor):  # noqa: ANN001, ANN205
        qkv, rel, u, v, mask, z, *stored = ctx.saved_tensors
        threshold, scale, items = ctx.params
        batch, length, cells, _, heads, dim = qkv.shape
        n_blocks, block, width = mask.shape
        span = block + width - 1
        half = (width - 1) // 2
        padded_length = n_blocks * block
        per_item = 2 if threshold else 1
        d_qkv = torch.empty_like(qkv)

        def work(index: int, item: tuple[int, int, slice]) -> tuple[Tensor, Tensor, Tensor]:
            b, h, s = item
            count = s.stop - s.start
            rows = count * n_blocks
            probs = stored[per_item * index].view(rows, block, width)
            dropped = probs
            if threshold:
                keep = keep_from_draws(stored[2 * index + 1], threshold, probs.dtype)
                dropped = probs * keep.view(rows, block, width)
            q_chunk, keys, values = SiteBandCore._sequences(qkv, b, h, s, mask)
            queries = (q_chunk + u[h]).view(rows, block, dim)
            query_position = q_chunk + v[h]
            k_win = _windows(keys, span, block)  # [rows, S, d]
            v_win = _windows(values, span, block)
            dz = q_chunk.new_zeros(count, padded_length, dim)
            dz[:, :length] = grad[b, :, s, h].transpose(0, 1)
            dz = dz.view(rows, block, dim)
            row = (grad[b, :, s, h] * z[b, :, s, h]).sum(-1).transpose(0, 1)  # [n, L]
            row = F.pad(row, (0, padded_length - length)).reshape(rows, block, 1)
            if threshold:
                dz = dz.mul_(scale)
            band = _band_buffer("probs", rows, block, span, probs)
            _on_window(band, width).copy_(dropped)
            d_v_win = torch.bmm(band.transpose(1, 2), dz)  # [rows, S, d]
            d_dropped = _on_window(torch.bmm(dz, v_win.transpose(1, 2)), width)
            d_scores = torch.mul(d_dropped, dropped, out=torch.empty_like(dropped))
            d_scores.addcmul_(probs, row, value=-1)
            d_band = _band_buffer("d_scores", rows, block, span, probs)
            _on_window(d_band, width).copy_(d_scores)
            d_queries = torch.bmm(d_band, k_win).view(count, -1, dim)
            d_k_win = torch.bmm(d_band.transpose(1, 2), queries)  # [rows, S, d]
            d_keys = torch.zeros_like(keys)
            d_values = torch.zeros_like(values)
            _fold_windows(d_k_win.view(count, n_blocks, span, dim), d_keys, span, block)
            _fold_windows(d_v_win.view(count, n_blocks, span, dim), d_values, span, block)
            # position term: scores[c, i, :] += (q + v)[c, i] @ rel[i]
            d_position = d_scores.view(count, padded_length, width).transpose(0, 1)
            d_query_position = torch.bmm(d_position, rel[b, h].transpose(1, 2)).transpose(0, 1)
            d_rel = torch.bmm(query_position.transpose(0, 1).transpose(1, 2), d_position)
            d_q = d_queries + d_query_position
            target = d_qkv[b, :, s, :, h]  # [L, n, 3, d]
            target[:, :, 0].copy_(d_q[:, :length].transpose(0, 1))
            target[:, :, 1].copy_(d_keys[:, half : half + length].transpose(0, 1))
            target[:, :, 2].copy_(d_values[:, half : half + length].transpose(0, 1))
            return d_rel, d_queries.sum((0, 1)), d_query_position.sum((0, 1))

        d_rel = torch.zeros_like(rel)
        d_u = torch.zeros_like(u)
        d_v = torch.zeros_like(v)
        for (b, h, _), (rel_part, u_part, v_part) in zip(
            items, _run_chunks(work, items, qkv.device)
        ):
            d_rel[b, h] += rel_part
            d_u[h] += u_part
            d_v[h] += v_part
        return d_qkv, d_rel, d_u, d_v, None, None


# ----------------------------------------------------------------------------------------------
# attention across cells


class CellCore(torch.autograd.Function):
    """``qkv [B, L, C, 3, H, d]`` (q pre-scaled) -> ``z [B, L, C, H, d]`` (token layout): softmax
    attention across the C cells of each site and head, with dropout on the probabilities.

    Each chunk of sites gathers its q, k, v from the packed projection in cache, and backward writes
    each gradient of ``qkv`` exactly once. Stores ``qkv`` and ``z`` only (nothing of size C x C);
    backward recomputes each chunk's probabilities and redraws its dropout mask from its seed."""

    @staticmethod
    def _gather(qkv_rows: Tensor, s: slice) -> tuple[Tensor, Tensor, Tensor]:
        """Chunk ``s`` of ``[R, C, 3, H, d]`` -> q ``[r, H, C, d]``, k^T ``[r, H, d, C]``, v."""
        part = qkv_rows[s]
        q = part[:, :, 0].transpose(1, 2).contiguous()
        k_t = part[:, :, 1].permute(0, 2, 3, 1).contiguous()
        v = part[:, :, 2].transpose(1, 2).contiguous()
        return q, k_t, v

    @staticmethod
    def _probs(q: Tensor, k_t: Tensor, threshold: int, seed: int) -> tuple[Tensor, Tensor]:
        probs = torch.matmul(q, k_t).softmax(-1)
        dropped = probs
        if threshold:
            dropped = probs * keep_mask(probs.shape, threshold, probs.dtype, q.device, seed)
        return probs, dropped

    @staticmethod
    def forward(ctx, qkv: Tensor, dropout: float) -> Tensor:  # noqa: ANN001
        batch, length, cells, _, heads, dim = qkv.shape
        rows = batch * length
        qkv_rows = qkv.view(rows, cells, 3, heads, dim)
        threshold, scale = dropout_threshold(dropout)
        seed = int(torch.randint(0, 2**62, (1,)).item()) if threshold else 0
        z = qkv.new_empty(batch, length, cells, heads, dim)
        z_rows = z.view(rows, cells, heads, dim)

        def work(index: int, s: slice) -> None:
            q, k_t, v = CellCore._gather(qkv_rows, s)
            _, dropped = CellCore._probs(q, k_t, threshold, seed + index)
            out = torch.matmul(dropped, v)
            if threshold:
                out.mul_(scale)
            z_rows[s].copy_(out.transpose(1, 2))

        _run_chunks(work, _chunks(rows, heads * cells * cells, qkv.device), qkv.device)
        if any(ctx.needs_input_grad):
            ctx.save_for_backward(qkv, z)
        ctx.params = (threshold, scale, seed)
        return z

    @staticmethod
    def backward(ctx, grad: Tensor):  # noqa: ANN001, ANN205
        qkv, z = ctx.saved_tensors
        threshold, scale, seed = ctx.params
        batch, length, cells, _, heads, dim = qkv.shape
        rows = batch * length
        qkv_rows = qkv.view(rows, cells, 3, heads, dim)
        grad_rows = grad.reshape(rows, cells, heads, dim)
        z_rows = z.view(rows, cells, heads, dim)
        d_qkv = torch.empty_like(qkv)
        d_rows = d_qkv.view(rows, cells, 3, heads, dim)

        def work(index: int, s: slice) -> None:
            q, k_t, v = CellCore._gather(qkv_rows, s)
            probs, dropped = CellCore._probs(q, k_t, threshold, seed + index)
            row = (grad_rows[s] * z_rows[s]).sum(-1).transpose(1, 2).unsqueeze(-1)  # [r, H, C, 1]
            dz = grad_rows[s].transpose(1, 2).contiguous()  # [r, H, C, d]
            if threshold:
                dz.mul_(scale)
            d_v = torch.matmul(dropped.transpose(-1, -2), dz)
            d_scores = torch.matmul(dz, v.transpose(-1, -2)).mul_(dropped)
            d_scores.addcmul_(probs, row, value=-1)
            d_q = torch.matmul(d_scores, k_t.transpose(-1, -2))
            d_k = torch.matmul(d_scores.transpose(-1, -2), q)
            target = d_rows[s]  # [r, C, 3, H, d]
            target[:, :, 0].copy_(d_q.transpose(1, 2))
            target[:, :, 1].copy_(d_k.transpose(1, 2))
            target[:, :, 2].copy_(d_v.transpose(1, 2))

        _run_chunks(work, _chunks(rows, heads * cells * cells, qkv.device), qkv.device)
        return d_qkv, None
