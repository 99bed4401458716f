"""Tiling arithmetic: which rows go through the model in which tile, and one block's predictions.

How a chromosome is predicted
-----------------------------
The model sees ``receptive_field_sites`` = ``n_layers * (site_window - 1) // 2`` sites on each side of a
site (the *margin* m). A chromosome is processed in *chunks* of ``chunk_sites`` output rows; a chunk
reads its rows plus m rows of context on each side, cuts that block into *tiles* of at most
``tile_sites`` rows whose starts advance by ``tile_sites - 2m``, and keeps from each tile only the rows
that lie at least m rows from a tile edge (or next to a chromosome end). Every row therefore gets
exactly one output, computed with its whole receptive field inside its tile: the result equals one
pass over the whole chromosome (tested to 1e-5). Chromosomes shorter than a tile are one shorter tile;
every row is written.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

from cpgformer.errors import UsageError
from cpgformer.model import Predictor


class Tile(NamedTuple):
    """Rows ``[start, stop)`` go through the model; rows ``[keep_start, keep_stop)`` are kept."""

    start: int
    stop: int
    keep_start: int
    keep_stop: int


def plan_tiles(start: int, stop: int, n_sites: int, tile_sites: int, margin: int) -> list[Tile]:
    """Tiles whose kept rows cover ``[start, stop)`` exactly once, each with its full receptive field.

    A kept row is at least ``margin`` rows from its tile's edges, unless the edge is a chromosome end
    (row 0 or ``n_sites``), where a single pass would see no more context either. Tiles are
    ``tile_sites`` long (the last one may be shorter) and advance by ``tile_sites - 2 * margin``.
    """
    if not 0 <= start <= stop <= n_sites:
        raise ValueError(f"rows [{start}, {stop}) out of range for {n_sites} sites")
    if tile_sites <= 2 * margin:
        raise UsageError(
            f"tile length {tile_sites} sites must exceed twice the model's receptive field "
            f"({margin} sites each side)"
        )
    tiles: list[Tile] = []
    keep = start
    need_end = min(n_sites, stop + margin)
    while keep < stop:
        t0 = max(0, keep - margin)
        t1 = min(t0 + tile_sites, need_end)
        keep_stop = stop if t1 == need_end else t1 - margin
        tiles.append(Tile(t0, t1, keep, keep_stop))
        keep = keep_stop
    return tiles


MAX_TILE_TOKENS = 1 << 21
"""Default bound on the (site, cell) tokens of one forward pass (about 1.2 KB each at inference)."""


class TileShape(NamedTuple):
    """How a block is cut for the model: tiles of ``tile_sites`` rows, ``batch_size`` tiles per
    forward pass, cells in groups of ``cell_group`` columns."""

    tile_sites: int
    batch_size: int
    cell_group: int


def plan_tile_shape(
    n_cells: int, tile_sites: int, batch_size: int, margin: int, max_tokens: int
) -> TileShape:
    """Tile length, batch and cell group so one forward pass holds at most ``max_tokens`` tokens
    (unless a single tile of the shortest useful length and one cell already exceeds it).

    Tiles shrink first (down to ``2 * margin + 64`` rows: shorter ones waste most rows as context),
    then the cells are cut into groups. Cells of a group are imputed together; with attention
    across cells a cell then sees only its group at a site."""
    n_cells = max(1, n_cells)
    shortest = min(tile_sites, 2 * margin + 64)
    tile = max(shortest, min(tile_sites, max_tokens // n_cells))
    group = n_cells if tile * n_cells <= max_tokens else max(1, max_tokens // tile)
    batch = max(1, min(batch_size, max_tokens // (tile * group)))
    return TileShape(tile, batch, group)


def predict_block(
    predictor: Predictor,
    states: np.ndarray,
    positions: np.ndarray,
    keep_start: int,
    keep_stop: int,
    *,
    cell_ids: np.ndarray | None = None,
    dna_embedding: Tensor | None = None,
    tile_sites: int = 1024,
    batch_size: int = 8,
    max_tokens: int | None = None,
) -> np.ndarray:
    """Model outputs for rows ``[keep_start, keep_stop)`` of a block of consecutive sites.

    ``states`` ``[R, C]`` in model-input coding (int: 0 unknown, 1 unmethylated, 2 methylated; float
    for continuous models), ``positions`` ``[R]`` bp, ``dna_embedding`` ``[R, E]``. Rows within
    ``margin`` of the block edges are used as context only, unless the block edge is a chromosome end
    (pass a block that starts or stops there). Returns float32 ``[keep_stop - keep_start, C]``.
    """
    n_rows, n_cells = states.shape
    if cell_ids is None:
        cell_ids = np.arange(n_cells)
    if max_tokens is not None:
        shape = plan_tile_shape(n_cells, tile_sites, batch_size, predictor.margin, max_tokens)
        tile_sites, batch_size = shape.tile_sites, shape.batch_size
        if shape.cell_group < n_cells:
            out = np.empty((keep_stop - keep_start, n_cells), dtype=np.float32)
            for g in range(0, n_cells, shape.cell_group):
                cols = slice(g, min(n_cells, g + shape.cell_group))
                out[:, cols] = predict_block(
                    predictor,
                    np.ascontiguousarray(states[:, cols]),
                    positions,
                    keep_start,
                    keep_stop,
                    cell_ids=np.asarray(cell_ids)[cols],
                    dna_embedding=dna_embedding,
                    tile_sites=tile_sites,
                    batch_size=batch_size,
                )
            return out
    cells_t = torch.as_tensor(np.asarray(cell_ids, dtype=np.int64))
    tiles = plan_tiles(keep_start, keep_stop, n_rows, tile_sites, predictor.margin)
    out = np.empty((keep_stop - keep_start, n_cells), dtype=np.float32)
    continuous = predictor.data_mode == "continuous"
    by_length: dict[int, list[Tile]] = {}
    for tile in tiles:
        by_length.setdefault(tile.stop - tile.start, []).append(tile)
    with torch.inference_mode():
        for group in by_length.values():
            for b in range(0, len(group), batch_size):
                batch = group[b : b + batch_size]
                s = np.stack([states[t.start : t.stop] for t in batch])
                p = np.stack([positions[t.start : t.stop] - positions[t.start] for t in batch])
                s_t = torch.from_numpy(s).float() if continuous else torch.from_numpy(s).long()
                p_t = torch.from_numpy(p.astype(np.int64))
                c_t = cells_t.unsqueeze(0).expand(len(batch), -1)
                e_t = None
                if dna_embedding is not None:
                    e_t = torch.stack([dna_embedding[t.start : t.stop] for t in batch])
                logits = predictor.predict_fn(s_t, p_t, c_t, e_t).float().numpy()
                for t, lg in zip(batch, logits):
                    out[t.keep_start - keep_start : t.keep_stop - keep_start] = lg[
                        t.keep_start - t.start : t.keep_stop - t.start
                    ]
    return out
