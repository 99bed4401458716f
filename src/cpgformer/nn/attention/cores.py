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

:func:`site_attention` and :func:`cell_attention` are the backend entry points (the ``tensor``
backend of :mod:`cpgformer.nn.attention.backends`): they run on any device and dtype.

The site core stores its window probabilities and dropout draws (5 bytes per window slot,
independent of C); the cell core keeps its probabilities and draws only up to
``STORE_CELL_PROBS_UP_TO`` cells, beyond which its backward recomputes each chunk's probabilities and
redraws the chunk's dropout mask from a seed. Seeds come from the default generator, so seeded runs
are reproducible.

Dropout masks come from :func:`cpgformer.nn.attention.dropout.keep_mask` (the drop probability
rounded to a multiple of 1/256). The plain autograd equivalents (same masks) are in the tests.
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

from cpgformer.nn.attention.dropout import (  # noqa: F401  (re-exported)
    dropout_threshold,
    fast_dropout,
    keep_from_draws,
    keep_mask,
    random_draws,
)

CHUNK_ELEMENTS = 1 << 19
"""Score entries per chunk (2 MiB of fp32, so that a chunk's passes stay in cache; chosen by
measurement among 2^17-2^20)."""


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


def _budget(device: torch.device, elements: int | None = None) -> int:
    """Score entries per chunk (default ``CHUNK_ELEMENTS``): cache-sized on CPUs; on accelerators
    a few large launches."""
    elements = CHUNK_ELEMENTS if elements is None else elements
    return elements if device.type == "cpu" else elements << 8


PARTS_MULTIPLE = 4
"""Work is split into a multiple of this many equal parts where it has that many (so that 1, 2
or 4 threads get equal shares); the split never depends on the thread count, so neither do the
dropout masks drawn per part."""


def _split(total: int, most: int) -> list[slice]:
    """``range(total)`` in equal consecutive parts of at most ``most``, a multiple of
    ``PARTS_MULTIPLE`` of them where ``total`` allows."""
    count = -(-total // max(1, most))
    if count > 1 and total >= PARTS_MULTIPLE:
        count = min(-(-count // PARTS_MULTIPLE) * PARTS_MULTIPLE, total)
    bounds = [part * total // count for part in range(count + 1)]
    return [slice(start, stop) for start, stop in zip(bounds, bounds[1:])]


def _chunks(total: int, per_item: int, device: torch.device) -> list[slice]:
    return _split(total, _budget(device) // max(per_item, 1))


# ----------------------------------------------------------------------------------------------
# band attention along sites


SITE_CHUNK_ELEMENTS = 1 << 21
"""Band scores per work item of the site core, all heads together (2^19-2^22 measured within noise
of each other here)."""
MIN_SITE_BLOCKS = 4
"""Query blocks per work item of the site core at least (each item also reads ``w`` halo sites
either side)."""


def _windows(t: Tensor, span: int, block: int) -> Tensor:
    """``[n, nblk*block + span - block, d]`` -> ``[n*nblk, span, d]`` (copy): the key span of each
    query block."""
    n = t.shape[0]
    win = t.unfold(1, span, block).transpose(-1, -2)  # [n, nblk, span, d], a view
    return win.reshape(n * win.shape[1], span, t.shape[2])


def _fold_windows(grad: Tensor, out: Tensor, span: int, block: int) -> None:
    """Add window gradients ``[n, nblk, span, d]`` onto ``out [n, >= nblk*block + span - block, d]``
    (the adjoint of :func:`_windows`), in non-overlapping pieces of ``block`` rows — directly into
    ``out`` where its rows are whole blocks covering every piece, else through a padded copy."""
    n, n_blocks, _, dim = grad.shape
    pieces = -(-span // block)
    length = out.shape[1]
    direct = length % block == 0 and length >= (n_blocks + pieces - 1) * block
    target = out if direct else out.new_zeros(n, (n_blocks + pieces - 1) * block, dim)
    grid = target.view(n, -1, block, dim)
    for piece in range(pieces):
        rows = min(block, span - piece * block)
        grid[:, piece : piece + n_blocks, :rows].add_(
            grad[:, :, piece * block : piece * block + rows]
        )
    if not direct:
        out.add_(target[:, :length])


def _site_items(
    batch: int, cells: int, n_blocks: int, per_block: int, device: torch.device
) -> list[tuple[int, slice, slice]]:
    """Work items ``(batch index, cell slice, query-block slice)`` of the site core, all heads
    each, of about ``SITE_CHUNK_ELEMENTS`` band scores (``per_block`` per cell and query block): runs of
    whole blocks for all cells where that fits in at least ``MIN_SITE_BLOCKS`` blocks, else that
    many blocks for equal chunks of cells."""
    budget = _budget(device, SITE_CHUNK_ELEMENTS)
    blocks = min(n_blocks, max(MIN_SITE_BLOCKS, budget // max(1, cells * per_block)))
    block_parts = _split(n_blocks, blocks)
    blocks = max(part.stop - part.start for part in block_parts)
    cell_parts = _split(cells, budget // (blocks * per_block))
    return [(b, s, bs) for b in range(batch) for s in cell_parts for bs in block_parts]


_BUFFERS = threading.local()


def _thread_cache() -> dict:
    """This thread's scratch buffers, by key."""
    cache = getattr(_BUFFERS, "cache", None)
    if cache is None:
        cache = _BUFFERS.cache = {}
    return cache


def _scratch(name: str, shape: tuple[int, ...], like: Tensor) -> Tensor:
    """A per-thread scratch tensor of ``shape``, its contents undefined (callers write what they
    read). One grow-only buffer per name, dtype, device and mode, viewed at the shape asked for, so
    that segments of many lengths do not pile up buffers."""
    # inference tensors cannot be updated outside inference mode: one buffer per mode
    key = (name, like.dtype, like.device, torch.is_inference_mode_enabled())
    cache = _thread_cache()
    size = math.prod(shape)
    buffer = cache.get(key)
    if buffer is None or buffer.numel() < size:
        buffer = cache[key] = like.new_zeros(size)
    return buffer[:size].view(shape)


def _band_buffer(name: str, rows: int, block: int, span: int, like: Tensor) -> Tensor:
    """A per-thread ``[rows, block, span]`` scratch tensor that is zero off the band.

    Only window slots (column ``j + o`` of row ``j``) are ever written, so the zeros elsewhere
    survive reuse and need no refilling."""
    key = (name, block, span, like.dtype, like.device, torch.is_inference_mode_enabled())
    cache = _thread_cache()
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


def _gather_sequences(
    src: Tensor, item: tuple[int, slice, slice], block: int, half: int
) -> tuple[Tensor, int, int]:
    """The item's sites with ``half`` sites of halo either side, head-major, in a per-thread buffer.

    ``src [B, L, C, k, H, d]`` (``k`` = 3 for q, k, v) -> ``[k, H, n, R, d]`` (``Sp`` = the item's
    query sites, ``R`` = ``Sp + 2*half`` rounded up to whole blocks), row ``r`` of a cell holding site
    ``b0*block - half + r``; rows of sites outside the segment are zero, the rounding rows (never
    read) undefined. Also returns the first site held and the number of rows that are
    sites. One copy reads the item's rows of ``src`` (contiguous runs of all its heads)."""
    b, s, bs = item
    length = src.shape[1]
    first = bs.start * block - half
    rows = (bs.stop - bs.start) * block + 2 * half
    start, stop = max(first, 0), min(first + rows, length)
    parts, heads, dim = src.shape[3], src.shape[4], src.shape[5]
    whole = -(-rows // block) * block  # whole blocks: window gradients fold in place
    seq = _scratch("seq", (parts, heads, s.stop - s.start, whole, dim), src)
    seq[:, :, :, start - first : stop - first].copy_(src[b, start:stop, s].permute(2, 3, 1, 0, 4))
    if start > first:
        seq[:, :, :, : start - first].zero_()
    if stop < first + rows:
        seq[:, :, :, stop - first : rows].zero_()
    return seq, first, stop - first


class SiteBandCore(torch.autograd.Function):
    """Window attention along sites for every (batch, head, cell) sequence, position term included.

    Inputs: ``qkv [B, L, C, 3, H, d]`` (the qkv projection of the tokens, q pre-scaled), ``rel
    [B, H, nblk*block, d, W]`` (projected relative encodings of each site's W window slots,
    transposed, zero past the segment), the content and position biases ``u``, ``v [H, d]`` and
    ``mask [nblk, block, W]`` (0 on slots whose key lies in the segment, the lowest finite value
    elsewhere) -> ``z [B, L, C, H, d]`` (token layout: the output projection's input as a view).

    Work items are runs of query blocks (all cells where the cache allows, else chunks of cells),
    all heads at once (one op per step for every head: few, larger ops). For an item:

    * one copy gathers its q, k, v (with ``w`` halo sites either side) from ``qkv`` — contiguous
      runs of whole token rows — into per-thread head-major sequences;
    * content scores: each block of ``block`` queries against its span of ``block + 2w`` keys, one
      small matmul per block (the "band"); the W window slots of each row are a strided view of it;
    * position scores: ``(q + v) @ rel`` per site, with the item's cells as the matmul's M
      dimension — computed once per site and head, never repeated per cell;
    * softmax, dropout and all elementwise work run on the W window slots only (not the band's
      ``block + 2w`` columns); probabilities enter the band matmuls through per-thread band buffers
      that are zero off the window;
    * small matmuls whose result would have 8 (= d) columns are computed transposed (8 rows):
      several times faster with these shapes.

    Stores ``qkv``, the output, the window probabilities and the dropout draws (5 bytes per window
    slot: ~0.8 KB per token and layer, independent of C). Backward writes every gradient of ``qkv``
    once per item (halo gradients of keys and values are added after all items).
    """

    @staticmethod
    def _operands(seq: Tensor, u: Tensor, v: Tensor, block: int, span: int, half: int, sites: int):  # noqa: ANN205, PLR0913
        """From the gathered sequences ``[3, H, n, R, d]``: queries + u ``[H*rows, block, d]``,
        queries + v ``[H, n, Sp, d]``, key and value spans ``[H*rows, span, d]``."""
        heads, count, rows_seq, dim = seq.shape[1:]
        query = seq[0, :, :, half : half + sites]  # [H, n, Sp, d]
        queries = (query + u.view(heads, 1, 1, dim)).view(-1, block, dim)
        query_position = query + v.view(heads, 1, 1, dim)
        k_win = _windows(seq[1].view(heads * count, rows_seq, dim), span, block)
        v_win = _windows(seq[2].view(heads * count, rows_seq, dim), span, block)
        return queries, query_position, k_win, v_win

    @staticmethod
    def forward(  # noqa: ANN001, PLR0913
        ctx, qkv: Tensor, rel: Tensor, u: Tensor, v: Tensor, mask: Tensor, dropout: float
    ) -> Tensor:
        batch, length, cells, _, heads, dim = qkv.shape
        n_blocks, block, width = mask.shape
        span, half = block + width - 1, (width - 1) // 2
        edges = mask.ne(0).flatten(1).any(1).nonzero().flatten().tolist()
        threshold, scale = dropout_threshold(dropout)
        grad = any(ctx.needs_input_grad)
        z = qkv.new_empty(batch, length, cells, heads, dim)
        items = _site_items(batch, cells, n_blocks, heads * block * span, qkv.device)
        seeds = torch.randint(0, 2**62, (len(items),)).tolist() if threshold else []

        def work(index: int, item: tuple[int, slice, slice]) -> list[Tensor]:
            b, s, bs = item
            count, n_part = s.stop - s.start, bs.stop - bs.start
            rows, sites, start = heads * count * n_part, n_part * block, bs.start * block
            seq, _, _ = _gather_sequences(qkv, item, block, half)  # [3, H, n, R, d]
            queries, query_position, k_win, v_win = SiteBandCore._operands(
                seq, u, v, block, span, half, sites
            )
            shape = (heads, count, n_part, block, width)
            band = torch.bmm(queries, k_win.transpose(1, 2))  # [H*rows, block, span]
            content = _on_window(band, width).view(shape)
            # position term with the cells as M: [H*Sp, n, d] @ [H*Sp, d, W]
            position = torch.bmm(
                query_position.transpose(1, 2).reshape(heads * sites, count, dim),
                rel[b, :, start : start + sites].reshape(heads * sites, dim, width),
            )
            position = position.view(heads, sites, count, width).transpose(1, 2).view(shape)
            scores = torch.add(content, position, out=qkv.new_empty(shape))
            for i in edges:  # blocks with slots outside the segment
                if bs.start <= i < bs.stop:
                    scores[:, :, i - bs.start].add_(mask[i])
            probs = scores.softmax(-1)
            draws = None
            dropped = probs
            if threshold:
                draws = random_draws(shape, qkv.device, seeds[index])
                dropped = probs * keep_from_draws(draws, threshold, qkv.dtype)
            buffer = _band_buffer("probs", rows, block, span, qkv)
            _on_window(buffer, width).copy_(dropped.view(rows, block, width))
            # (probs @ values)^T: small matmuls with 8 output columns are slow, 8 rows fast
            out = torch.bmm(v_win.transpose(1, 2), buffer.transpose(1, 2))  # [H*rows, d, B]
            if threshold:
                out.mul_(scale)
            valid = min(length - start, sites)
            blocks_out = out.view(heads, count, n_part, dim, block).permute(2, 4, 1, 0, 3)
            full = valid // block  # [nb, block, n, H, d]
            z[b, start : start + full * block, s].view(full, block, count, heads, dim).copy_(
                blocks_out[:full]
            )
            if valid > full * block:
                z[b, start + full * block : start + valid, s].copy_(
                    blocks_out[full, : valid - full * block]
                )
            return ([probs] + ([draws] if threshold else [])) if grad else []

        stored = [t for kept in _run_chunks(work, items, qkv.device) for t in kept]
        if grad:
            ctx.save_for_backward(qkv, rel, u, v, mask, z, *stored)
        ctx.params = (threshold, scale, items)
        return z

    @staticmethod
    def backward(ctx, grad: Tensor):  # noqa: ANN001, ANN205
        qkv, rel, u, v, mask, z, *stored = ctx.saved_tensors
        threshold, scale, items = ctx.params
        length, heads, dim = qkv.shape[1], qkv.shape[4], qkv.shape[5]
        _, block, width = mask.shape
        span, half = block + width - 1, (width - 1) // 2
        per_item = 2 if threshold else 1
        d_qkv = torch.empty_like(qkv)

        def work(index: int, item: tuple[int, slice, slice]) -> tuple[Tensor, ...]:
            b, s, bs = item
            count, n_part = s.stop - s.start, bs.stop - bs.start
            rows, sites, start = heads * count * n_part, n_part * block, bs.start * block
            valid = min(length - start, sites)
            probs = stored[per_item * index].view(rows, block, width)
            dropped = probs
            if threshold:
                keep = keep_from_draws(stored[per_item * index + 1], threshold, qkv.dtype)
                dropped = probs * keep.view(rows, block, width)
            seq, first, filled = _gather_sequences(qkv, item, block, half)
            queries, query_position, k_win, v_win = SiteBandCore._operands(
                seq, u, v, block, span, half, sites
            )
            d_seq = _scratch("d_seq", seq.shape, qkv)
            d_seq[1:].zero_()  # keys and values are accumulated by folds
            grad_part = grad[b, start : start + valid, s]  # [valid, n, H, d]
            dz = _scratch("dz", (heads, count, sites, dim), qkv)
            torch.mul(grad_part.permute(2, 1, 0, 3), scale, out=dz[:, :, :valid])
            dz[:, :, valid:].zero_()
            dz = dz.view(rows, block, dim)
            # row term of the softmax gradient: sum_o dP * P = dz . z (before the dropout scale)
            row = (grad_part * z[b, start : start + valid, s]).sum(-1).permute(2, 1, 0)
            row = F.pad(row, (0, sites - valid)).reshape(rows, block, 1)
            band = _band_buffer("probs", rows, block, span, qkv)
            _on_window(band, width).copy_(dropped)
            # gradients of 8 columns are computed transposed (8 rows: much faster)
            d_v_win = torch.bmm(dz.transpose(1, 2), band).transpose(1, 2)  # [H*rows, span, d]
            folded = d_seq[2].view(heads * count, -1, dim)
            _fold_windows(d_v_win.view(heads * count, n_part, span, dim), folded, span, block)
            d_dropped = _on_window(torch.bmm(dz, v_win.transpose(1, 2)), width)
            d_scores = torch.mul(d_dropped, dropped, out=torch.empty_like(dropped))
            d_scores.addcmul_(probs, row, value=-1)
            d_band = _band_buffer("d_scores", rows, block, span, qkv)
            _on_window(d_band, width).copy_(d_scores)
            d_queries = torch.bmm(k_win.transpose(1, 2), d_band.transpose(1, 2))  # [H*rows, d, B]
            d_k_win = torch.bmm(queries.transpose(1, 2), d_band).transpose(1, 2)
            folded = d_seq[1].view(heads * count, -1, dim)
            _fold_windows(d_k_win.view(heads * count, n_part, span, dim), folded, span, block)
            # position term: scores[h, c, i, :] += (q + v)[h, c, i] @ rel[h, i]
            d_position = d_scores.view(heads, count, sites, width).transpose(1, 2)
            d_position = d_position.reshape(heads * sites, count, width)  # [H*Sp, n, W]
            rel_part = rel[b, :, start : start + sites].reshape(heads * sites, dim, width)
            d_query_position = torch.bmm(rel_part, d_position.transpose(1, 2))  # [H*Sp, d, n]
            positional = query_position.transpose(1, 2).reshape(heads * sites, count, dim)
            d_rel = torch.bmm(positional.transpose(1, 2), d_position)  # [H*Sp, d, W]
            target = d_seq[0, :, :, half : half + sites].unflatten(2, (n_part, block))
            torch.add(
                d_queries.view(heads, count, n_part, dim, block).transpose(3, 4),
                d_query_position.view(heads, n_part, block, dim, count).permute(0, 4, 1, 2, 3),
                out=target,
            )
            d_u = d_queries.view(heads, -1, dim, block).sum((1, 3))
            d_v = d_query_position.view(heads, -1, dim, count).sum((1, 3))
            body = d_seq[:, :, :, half : half + valid]  # [3, H, n, valid, d]
            d_qkv[b, start : start + valid, s].copy_(body.permute(3, 2, 0, 1, 4))
            # key and value gradients of the halo sites (other items' sites): added afterwards
            left = d_seq[1:, :, :, max(-first, 0) : half].clone()
            right = d_seq[1:, :, :, half + sites : filled].clone()
            return d_rel.view(heads, sites, dim, width), d_u, d_v, left, right

        d_rel = torch.zeros_like(rel)
        d_u = torch.zeros_like(u)
        d_v = torch.zeros_like(v)
        for (b, s, bs), (rel_part, u_part, v_part, left, right) in zip(
            items, _run_chunks(work, items, qkv.device)
        ):
            start, stop = bs.start * block, bs.stop * block
            d_rel[b, :, start:stop] += rel_part
            d_u += u_part
            d_v += v_part
            if left.shape[3]:
                d_qkv[b, start - left.shape[3] : start, s, 1:].add_(left.permute(3, 2, 0, 1, 4))
            if right.shape[3]:
                d_qkv[b, stop : stop + right.shape[3], s, 1:].add_(right.permute(3, 2, 0, 1, 4))
        return d_qkv, d_rel, d_u, d_v, None, None


# ----------------------------------------------------------------------------------------------
# attention across cells


STORE_CELL_PROBS_UP_TO = 32
"""Up to this many cells the cell core keeps its probabilities and dropout draws for backward
(at most 8 heads x 32 x 5 bytes = 1.3 KB per token and layer: bounded, whatever C); above, backward
recomputes them, so nothing of size C x C is kept."""


class CellCore(torch.autograd.Function):
    """``qkv [B, L, C, 3, H, d]`` (q pre-scaled) -> ``z [B, L, C, H, d]`` (token layout): softmax
    attention across the C cells of each site and head, with dropout on the probabilities.

    Each chunk of sites gathers its q, k, v from the packed projection in cache, and backward writes
    each gradient of ``qkv`` exactly once. Stores ``qkv`` and ``z``, and up to
    ``STORE_CELL_PROBS_UP_TO`` cells the probabilities and dropout draws; with more cells nothing of
    size C x C: backward recomputes each chunk's probabilities and redraws its dropout mask from its
    seed."""

    @staticmethod
    def _gather(qkv_rows: Tensor, s: slice) -> tuple[Tensor, Tensor, Tensor]:
        """Chunk ``s`` of ``[R, C, 3, H, d]`` -> q ``[r, H, C, d]``, k^T ``[r, H, d, C]`` (a
        transposed view), v ``[r, H, C, d]``: one copy of the chunk's contiguous rows."""
        q, k, v = qkv_rows[s].permute(2, 0, 3, 1, 4).contiguous()
        return q, k.transpose(-1, -2), v

    @staticmethod
    def _probs(q: Tensor, k_t: Tensor, threshold: int, seed: int) -> tuple[Tensor, Tensor, Tensor]:
        """Probabilities, with dropout applied, and the dropout draws (or None)."""
        probs = torch.matmul(q, k_t).softmax(-1)
        dropped, draws = probs, None
        if threshold:
            draws = random_draws(probs.shape, q.device, seed)
            dropped = probs * keep_from_draws(draws, threshold, probs.dtype)
        return probs, dropped, draws

    @staticmethod
    def forward(ctx, qkv: Tensor, dropout: float) -> Tensor:  # noqa: ANN001
        batch, length, cells, _, heads, dim = qkv.shape
        rows = batch * length
        qkv_rows = qkv.view(rows, cells, 3, heads, dim)
        threshold, scale = dropout_threshold(dropout)
        seed = int(torch.randint(0, 2**62, (1,)).item()) if threshold else 0
        z = qkv.new_empty(batch, length, cells, heads, dim)
        z_rows = z.view(rows, cells, heads, dim)
        grad = any(ctx.needs_input_grad)
        store = grad and cells <= STORE_CELL_PROBS_UP_TO

        def work(index: int, s: slice) -> list[Tensor]:
            q, k_t, v = CellCore._gather(qkv_rows, s)
            probs, dropped, draws = CellCore._probs(q, k_t, threshold, seed + index)
            out = torch.matmul(v.transpose(-1, -2), dropped.transpose(-1, -2))  # (P V)^T
            if threshold:
                out.mul_(scale)
            z_rows[s].copy_(out.permute(0, 3, 1, 2))
            return [probs] + ([draws] if threshold else []) if store else []

        chunks = _chunks(rows, heads * cells * cells, qkv.device)
        stored = [t for kept in _run_chunks(work, chunks, qkv.device) for t in kept]
        if grad:
            ctx.save_for_backward(qkv, z, *stored)
        ctx.params = (threshold, scale, seed, store, chunks)
        return z

    @staticmethod
    def backward(ctx, grad: Tensor):  # noqa: ANN001, ANN205
        qkv, z, *stored = ctx.saved_tensors
        threshold, scale, seed, kept, chunks = ctx.params
        per_chunk = 2 if threshold else 1
        batch, length, cells, _, heads, dim = qkv.shape
        rows = batch * length
        qkv_rows = qkv.view(rows, cells, 3, heads, dim)
        grad_rows = grad.reshape(rows, cells, heads, dim)
        z_rows = z.view(rows, cells, heads, dim)
        d_qkv = torch.empty_like(qkv)
        d_rows = d_qkv.view(rows, cells, 3, heads, dim)

        def work(index: int, s: slice) -> None:
            q, k_t, v = CellCore._gather(qkv_rows, s)
            if kept:  # stored in forward
                probs = dropped = stored[per_chunk * index]
                if threshold:
                    draws = stored[per_chunk * index + 1]
                    dropped = probs * keep_from_draws(draws, threshold, probs.dtype)
            else:  # recomputed, the dropout mask redrawn from the chunk's seed
                probs, dropped, _ = CellCore._probs(q, k_t, threshold, seed + index)
            row = (grad_rows[s] * z_rows[s]).sum(-1).transpose(1, 2).unsqueeze(-1)  # [r, H, C, 1]
            dz = torch.mul(grad_rows[s].transpose(1, 2), scale)  # [r, H, C, d], contiguous
            # gradients [C, d] are computed transposed ([d, C]: small matmuls with 8 output
            # columns are slow, with 8 rows fast) into one buffer, written back in one copy
            d_t = q.new_empty(3, *k_t.shape)  # [3, r, H, d, C]
            torch.matmul(dz.transpose(-1, -2), dropped, out=d_t[2])
            d_scores = torch.matmul(dz, v.transpose(-1, -2)).mul_(dropped)
            d_scores.addcmul_(probs, row, value=-1)
            torch.matmul(k_t, d_scores.transpose(-1, -2), out=d_t[0])
            torch.matmul(q.transpose(-1, -2), d_scores, out=d_t[1])
            d_rows[s].copy_(d_t.permute(1, 4, 0, 2, 3))  # [r, C, 3, H, d]

        _run_chunks(work, chunks, qkv.device)
        return d_qkv, None


# ----------------------------------------------------------------------------------------------
# entry points


SITE_BLOCK = 16
"""Query sites per block of :class:`SiteBandCore` (its band scores per block: 16 x (16 + 2w))."""


def window_encodings(rel: Tensor, count: int, block: int = SITE_BLOCK) -> Tensor:
    """Window encodings ``[B, L, W, H, d]`` -> ``[B, H, nblk*block, d, W]`` (zero on padded sites)."""
    length = rel.shape[1]
    rel = F.pad(rel, (0, 0, 0, 0, 0, 0, 0, count * block - length))
    return rel.permute(0, 3, 1, 4, 2).contiguous()


def window_mask(
    length: int, half_window: int, count: int, dtype: torch.dtype, device: torch.device
) -> Tensor:
    """``[nblk, SITE_BLOCK, W]``: 0 where window slot o of site i has its key inside the segment,
    the lowest finite value elsewhere (masks it in the softmax)."""
    width = 2 * half_window + 1
    site = torch.arange(count * SITE_BLOCK, device=device).unsqueeze(1)
    key = site + torch.arange(width, device=device).unsqueeze(0) - half_window
    valid = (key >= 0) & (key < length)
    mask = torch.zeros(valid.shape, dtype=dtype, device=device)
    return mask.masked_fill_(~valid, torch.finfo(dtype).min).view(count, SITE_BLOCK, width)


def site_attention(
    qkv: Tensor, rel: Tensor, u: Tensor, v: Tensor, half_window: int, dropout: float
) -> Tensor:
    """:class:`SiteBandCore` from the packed projection ``qkv [B, L, C, 3, H, d]`` (q pre-scaled)
    and the projected window encodings ``rel [B, L, W, H, d]`` -> ``z [B, L, C, H, d]``."""
    length = qkv.shape[1]
    count = max(1, -(-length // SITE_BLOCK))
    mask = window_mask(length, half_window, count, qkv.dtype, qkv.device)
    return SiteBandCore.apply(qkv, window_encodings(rel, count), u, v, mask, dropout)


def cell_attention(qkv: Tensor, dropout: float) -> Tensor:
    """:class:`CellCore`: ``qkv [B, L, C, 3, H, d]`` (q pre-scaled) -> ``z [B, L, C, H, d]``."""
    return CellCore.apply(qkv, dropout)
