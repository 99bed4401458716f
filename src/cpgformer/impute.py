"""Genome-wide imputation: overlap-tiled streaming inference into a compact, resumable imputed store.

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

The DNA embedding of each site is computed once per chunk (in sub-chunks of ``embed_chunk`` windows)
and shared by all tiles that contain the site. Memory is bounded by the chunk size, not the chromosome.

The imputed store
-----------------
::

    OUT/manifest.json            format "cpgformer-imputed", format_version 1, written last
    OUT/cells.tsv                the dataset store's cell table (same order = same columns)
    OUT/chroms/<k>/positions.npy int64 [n_sites] 0-based + strand C (the imputed sites)
                   indptr.npy, cell.npy, mc.npy, cov.npy, label.npy [, beta.npy]
                                 the observed calls at those sites (CSR by site, as the dataset store)
                   p-<i>.npy     [rows, n_cells] float16 probabilities (or uint8: round(255 p)),
                                 chunk i = rows [i * chunk_sites, min(n_sites, (i + 1) * chunk_sites))

A run writes into ``<parent>/.partial-<name>.impute/`` (every file there written as temp + rename) and
renames that directory to ``OUT`` only after ``manifest.json`` is written, so an unfinished run is never
readable as complete; rerunning the same command resumes at the first chunk not yet written.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from cpgformer import __version__
from cpgformer.codes import MISSING
from cpgformer.errors import InputError, UsageError
from cpgformer.utils.atomic import PARTIAL_PREFIX, atomic_file, replace_dir
from cpgformer.utils.locks import output_lock
from cpgformer.utils.outputs import check_output, remove_leftovers
from cpgformer.utils.progress import bar

log = logging.getLogger(__name__)

FORMAT = "cpgformer-imputed"
FORMAT_VERSION = 1
DTYPES = ("float16", "uint8")
SITE_MODES = ("store", "all")
_CSR_FIELDS = ("indptr", "cell", "mc", "cov", "label")
_UINT8_SCALE = 255.0

PredictFn = Callable[[Tensor, Tensor, Tensor, "Tensor | None"], Tensor]
"""``predict_fn(states [B, L, C], positions [B, L], cell_ids [B, C], dna_embedding [B, L, E] | None)``
-> logits (binary) or raw values (continuous) ``[B, L, C]``; states are in model-input coding."""


# --------------------------------------------------------------------------------------------------
# the model seam


@dataclass
class Predictor:
    """What imputation needs from a model; built from a ``CpGTransformer`` or by hand (tests).

    ``margin`` is the receptive field in sites on each side; ``embed_fn`` maps ``[N, dna_window]``
    nucleotide codes to ``[N, E]`` (``None`` for a model without DNA).
    """

    predict_fn: PredictFn
    margin: int
    n_cells: int
    embed_fn: Callable[[Tensor], Tensor] | None = None
    dna_window: int = 0
    data_mode: str = "binary"
    dna_encoder: Any = None  # the model's DNAEncoder: enables shared convolutions (faster)

    @classmethod
    def from_model(
        cls, model: torch.nn.Module, device: str | torch.device | None = None
    ) -> Predictor:
        """Wrap a ``CpGTransformer`` (switched to eval mode: no dropout at inference).

        ``device``: where the model runs (``"cpu"``, ``"cuda"``, ``"cuda:1"``…; default: where its
        parameters are). Inputs are moved there and outputs come back to the CPU.
        """
        model.eval()
        config = model.config  # type: ignore[attr-defined]
        dev = resolve_device(device) if device is not None else next(model.parameters()).device
        model.to(dev)

        def predict(
            states: Tensor, positions: Tensor, cell_ids: Tensor, dna_embedding: Tensor | None
        ) -> Tensor:
            emb = None if dna_embedding is None else dna_embedding.to(dev)
            out = model(states.to(dev), positions.to(dev), cell_ids.to(dev), dna_embedding=emb)
            return out.cpu()

        def embed(windows: Tensor) -> Tensor:
            return model.embed_dna(windows.to(dev)).cpu()  # type: ignore[attr-defined]

        has_dna = bool(config.dna_window)
        return cls(
            predict_fn=predict,
            margin=int(model.receptive_field_sites),  # type: ignore[attr-defined]
            n_cells=int(config.n_cells),
            embed_fn=embed if has_dna else None,
            dna_window=int(config.dna_window or 0),
            data_mode=str(config.data_mode),
            # shared convolutions run on the CPU; on an accelerator the per-window CNN is used
            dna_encoder=getattr(model, "dna_encoder", None) if dev.type == "cpu" else None,
        )


def resolve_device(device: str | torch.device) -> torch.device:
    """A torch device, checked to be usable (``UsageError`` naming what is missing otherwise)."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise UsageError(f"--device: not a torch device: {device!r} ({exc})") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device {device}: CUDA is not available in this torch build/machine")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise UsageError(f"--device {device}: MPS is not available on this machine")
    return dev


@dataclass
class ModelSource:
    """A predictor plus what the checkpoint says about the data it was trained on."""

    predictor: Predictor
    checkpoint_id: str
    cells: list[str] | None = None  # the checkpoint's cell table; None: take the store's order
    store_fingerprint: str | None = None
    config: dict = field(default_factory=dict)
    temperature: float = 1.0
    loaded: Any = None  # the LoadedCheckpoint (inductive models embed the store's cells with it)

    @property
    def inductive(self) -> bool:
        """True when the model embeds any cell from its data (applies to new cells)."""
        return self.config.get("cell_encoder") == "profile" or not self.config.get(
            "cell_identity", True
        )

    def cell_ids_for(self, ds: Any, ignore_fingerprint: bool = False) -> np.ndarray:
        """Model cell id of each store column, after checking store and checkpoint fit together.

        Inductive models take any store: the store's cells are embedded from their own profiles.
        Table models impute exactly their training cells: the store must be the training store
        (fingerprint, unless ``ignore_fingerprint``) and hold the same cells (any order)."""
        if self.inductive:
            if self.loaded is None:
                raise UsageError("an inductive model needs its checkpoint to embed new cells")
            self.loaded.use_cells_of(ds)
            return np.arange(ds.n_cells, dtype=np.int64)
        if self.store_fingerprint and self.store_fingerprint != ds.fingerprint:
            if not ignore_fingerprint:
                raise UsageError(
                    f"{ds.path}: store fingerprint {ds.fingerprint[:12]} differs from the one the "
                    f"checkpoint was trained on ({self.store_fingerprint[:12]}); impute the "
                    "training store, or pass --ignore-fingerprint to apply the model to another "
                    "store of the same cells"
                )
        cell_ids = cell_index_map(ds.cells, self.cells)
        if self.predictor.n_cells != ds.n_cells:
            raise UsageError(
                f"the model's cell table has {self.predictor.n_cells} cells, the store "
                f"{ds.n_cells}: a model imputes exactly the cells it was trained on"
            )
        if self.cells is None:
            log.warning(
                "the checkpoint records no cell names: assuming the store's columns are the "
                "model's cells in the same order"
            )
        return cell_ids


def file_digest(path: str | os.PathLike[str]) -> str:
    """SHA-256 of a file (the checkpoint id recorded in the imputed store)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def load_model_source(
    path: str | os.PathLike[str], device: str | torch.device | None = None
) -> ModelSource:
    """Load a checkpoint (``cpgformer.checkpoint.load_checkpoint``) as a :class:`ModelSource`."""
    from cpgformer.checkpoint import load_checkpoint

    loaded = load_checkpoint(path)
    config = loaded.config
    config_dict = config.to_dict() if hasattr(config, "to_dict") else dict(config)
    temperature = getattr(loaded, "temperature", None)
    return ModelSource(
        predictor=Predictor.from_model(loaded.model, device),
        checkpoint_id=file_digest(path),
        cells=list(loaded.cells) if loaded.cells is not None else None,
        store_fingerprint=loaded.store_fingerprint,
        config=config_dict,
        temperature=float(temperature) if temperature else 1.0,
        loaded=loaded,
    )


# --------------------------------------------------------------------------------------------------
# tiling arithmetic


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


def embed_sites(
    predictor: Predictor,
    windows_fn: Callable[[int, int], np.ndarray],
    n_rows: int,
    embed_chunk: int = 1024,
) -> Tensor | None:
    """DNA embeddings ``[n_rows, E]`` of rows ``0..n_rows`` of a block, computed in chunks.

    ``windows_fn(a, b)`` returns the ``[b - a, dna_window]`` nucleotide codes of rows ``a:b``.
    """
    if predictor.embed_fn is None or not predictor.dna_window:
        return None
    parts = []
    with torch.inference_mode():
        for a in range(0, n_rows, embed_chunk):
            b = min(n_rows, a + embed_chunk)
            w = torch.from_numpy(np.ascontiguousarray(windows_fn(a, b), dtype=np.int64))
            parts.append(predictor.embed_fn(w).float())
    if not parts:
        return torch.zeros((0, 0))
    return torch.cat(parts, dim=0)


def _phase_maps(encoder: Any, h: Tensor, layer: int) -> dict[int, Tensor]:
    """Feature maps of the DNA CNN over a long sequence, one per window-start phase.

    ``h`` ``[1, channels, length]`` is the input of conv ``layer``. Returns phase -> map ``[ch, n]``
    such that ``map[:, k]`` is what a window starting at ``phase + stride * k`` (in units of ``h``'s
    positions; stride = product of the remaining poolings) has at its first output position.
    """
    maps: dict[int, Tensor] = {}
    if h.shape[-1] < encoder.convs[layer].kernel_size[0]:
        return maps  # too short for any window of these phases (none of them is used)
    g = torch.relu(encoder.convs[layer](h))
    pool = int(encoder.pools[layer])
    for r in range(pool):
        if g.shape[-1] - r < pool:
            continue
        pooled = torch.nn.functional.max_pool1d(g[..., r:], pool)
        if layer + 1 < len(encoder.convs):
            for sub, m in _phase_maps(encoder, pooled, layer + 1).items():
                maps[r + pool * sub] = m
        else:
            maps[r] = pooled[0]
    return maps


def shared_dna_embedding(
    encoder: Any,
    fetch_codes: Callable[[int, int], np.ndarray],
    positions: np.ndarray,
    *,
    block_bp: int = 1 << 15,
    max_gap: int = 400,
) -> Tensor:
    """DNA embeddings of the windows centred on sorted ``positions``, convolutions shared.

    Windows of nearby CpGs overlap; the CNN's convolutions are computed once per base over the
    region the windows cover (one map per window-start phase modulo the product of the poolings)
    and each window's flattened features are gathered from them, then the per-window Linear layers
    run as usual. Same arithmetic as :meth:`DNAEncoder.forward` on each window. Sites farther than
    ``max_gap`` bp from both neighbours are embedded directly. ``fetch_codes(start, end)`` returns
    the nucleotide codes of ``[start, end)`` (N outside the contig).
    """
    width = int(encoder.dna_window)
    half = width // 2
    stride = int(np.prod(encoder.pools))
    starts = np.asarray(positions, dtype=np.int64) - half
    n = len(starts)
    out_dim = encoder.proj.out_features
    result = torch.empty((n, out_dim))
    if n == 0:
        return result
    # runs of windows whose starts are close; each run is cut into blocks of ~block_bp
    breaks = np.flatnonzero(np.diff(starts) > max_gap) + 1
    runs = np.split(np.arange(n), breaks)
    hlen = None
    for run in runs:
        if len(run) < 3:  # isolated sites: per-window CNN is cheaper
            windows = np.stack([fetch_codes(int(s), int(s) + width) for s in starts[run]])
            result[run] = encoder(torch.from_numpy(windows.astype(np.int64)))
            continue
        a = 0
        while a < len(run):
            b = int(np.searchsorted(starts[run], starts[run[a]] + block_bp, "right"))
            b = max(b, a + 1)
            idx = run[a:b]
            region_start = int(starts[idx[0]])
            codes = fetch_codes(region_start, int(starts[idx[-1]]) + width)
            h = encoder.nucleotide_embed(torch.from_numpy(codes.astype(np.int64)))
            maps = _phase_maps(encoder, h.t().unsqueeze(0), 0)
            if hlen is None:
                probe = encoder.nucleotide_embed(torch.zeros((1, width), dtype=torch.long))
                hlen = _phase_maps(encoder, probe.transpose(1, 2), 0)[0].shape[1]
            offsets = starts[idx] - region_start
            feats = torch.empty((len(idx), maps[0].shape[0] * hlen))
            for phase in np.unique(offsets % stride):
                sel = np.flatnonzero(offsets % stride == phase)
                k = torch.from_numpy((offsets[sel] - phase) // stride)
                m = maps[int(phase)]
                gathered = m[:, k[:, None] + torch.arange(hlen)]  # [ch, n, hlen]
                feats[torch.from_numpy(sel)] = gathered.permute(1, 0, 2).reshape(len(sel), -1)
            hidden = encoder.dropout(torch.relu(encoder.fc(feats)))
            result[idx] = encoder.proj(hidden)
            a = b
    return result


def _has_shared_path(encoder: Any) -> bool:
    return all(
        hasattr(encoder, name)
        for name in ("convs", "pools", "nucleotide_embed", "fc", "proj", "dropout", "dna_window")
    )


# --------------------------------------------------------------------------------------------------
# probabilities, quantisation, calibration


def to_probabilities(raw: np.ndarray, data_mode: str, temperature: float = 1.0) -> np.ndarray:
    """Binary: ``sigmoid(logit / T)``; continuous: the raw beta estimate clipped to [0, 1]."""
    if data_mode == "continuous":
        return np.clip(raw, 0.0, 1.0).astype(np.float32)
    z = np.asarray(raw, dtype=np.float32) / np.float32(temperature)
    return (0.5 * (1.0 + np.tanh(0.5 * z))).astype(np.float32)  # stable sigmoid


def quantize(p: np.ndarray, dtype: str) -> np.ndarray:
    if dtype == "float16":
        return p.astype(np.float16)
    if dtype == "uint8":
        return np.rint(np.clip(p, 0.0, 1.0) * _UINT8_SCALE).astype(np.uint8)
    raise UsageError(f"unknown output dtype {dtype!r} (choose from {', '.join(DTYPES)})")


def dequantize(q: np.ndarray) -> np.ndarray:
    if q.dtype == np.uint8:
        return q.astype(np.float32) / np.float32(_UINT8_SCALE)
    return q.astype(np.float32)


def fit_temperature(
    logits: np.ndarray, labels: np.ndarray, bounds: tuple[float, float] = (0.05, 20.0)
) -> float:
    """Temperature T minimising the mean binary cross-entropy of ``sigmoid(logits / T)``.

    Fitted on held-out masked entries (labels 0/1). T > 1 softens over-confident predictions.
    """
    from scipy.optimize import minimize_scalar

    z = np.asarray(logits, dtype=np.float64).ravel()
    y = np.asarray(labels, dtype=np.float64).ravel()
    if z.shape != y.shape or z.size == 0:
        raise UsageError(
            f"need equal, non-empty logits and labels to fit a temperature (got {z.size}, {y.size})"
        )

    def nll(log_t: float) -> float:
        return binary_nll(z / math.exp(log_t), y)

    res = minimize_scalar(
        nll,
        bounds=(math.log(bounds[0]), math.log(bounds[1])),
        method="bounded",
        options={"xatol": 1e-5},
    )
    return float(math.exp(res.x))


def binary_nll(logits: np.ndarray, labels: np.ndarray) -> float:
    """Mean binary cross-entropy of logits against 0/1 labels (numerically stable)."""
    z = np.asarray(logits, dtype=np.float64)
    y = np.asarray(labels, dtype=np.float64)
    return float(np.mean(np.maximum(z, 0.0) - z * y + np.log1p(np.exp(-np.abs(z)))))


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, n_bins: int = 15) -> float:
    """ECE with ``n_bins`` equal-width confidence bins on P(methylated) (bin weight = its share).

    ECE = sum_b |B_b|/N * |mean(y in b) - mean(p in b)|; the last bin includes p = 1.
    """
    p = np.asarray(probs, dtype=np.float64).ravel()
    y = np.asarray(labels, dtype=np.float64).ravel()
    if p.size == 0:
        return float("nan")
    idx = np.minimum((p * n_bins).astype(np.int64), n_bins - 1)
    sum_p = np.bincount(idx, weights=p, minlength=n_bins)
    sum_y = np.bincount(idx, weights=y, minlength=n_bins)
    return float(np.sum(np.abs(sum_y - sum_p)) / p.size)


def calibration_report(logits: np.ndarray, labels: np.ndarray, temperature: float) -> dict:
    """ECE and NLL before (T = 1) and after temperature scaling on the same entries."""
    z = np.asarray(logits, dtype=np.float64)
    y = np.asarray(labels)
    return {
        "n": int(z.size),
        "temperature": float(temperature),
        "ece_before": expected_calibration_error(to_probabilities(z, "binary", 1.0), y),
        "ece_after": expected_calibration_error(to_probabilities(z, "binary", temperature), y),
        "nll_before": binary_nll(z, y),
        "nll_after": binary_nll(z / temperature, y),
    }


# --------------------------------------------------------------------------------------------------
# site sources: which rows are imputed and where their observed calls come from


class _ChromSource:
    """Rows to impute on one chromosome and their observed calls (store rows, or all CpGs)."""

    def __init__(self, ds: Any, chrom: str, positions: np.ndarray | None = None) -> None:
        self.ds = ds
        self.chrom = chrom
        store_pos = ds.positions(chrom)
        if positions is None:
            self.positions = store_pos
            self.store_rows: np.ndarray | None = None  # identity
        else:
            self.positions = np.asarray(positions, dtype=np.int64)
            rows = np.searchsorted(self.positions, store_pos)
            ok = rows < len(self.positions)
            ok[ok] = self.positions[rows[ok]] == np.asarray(store_pos)[ok]
            if not np.all(ok):
                bad = int(np.asarray(store_pos)[~ok][0])
                raise UsageError(
                    f"{chrom}:{bad} (0-based) is a store site but not a CpG of the reference; "
                    "is the FASTA the one the store was prepared with?"
                )
            self.store_rows = rows.astype(np.int64)

    @property
    def n_sites(self) -> int:
        return int(len(self.positions))

    def _store_range(self, a: int, b: int) -> tuple[int, int]:
        if self.store_rows is None:
            return a, b
        return (
            int(np.searchsorted(self.store_rows, a, "left")),
            int(np.searchsorted(self.store_rows, b, "left")),
        )

    def _expand(self, arr: np.ndarray, a: int, b: int, s0: int, fill: float) -> np.ndarray:
        if self.store_rows is None:
            return arr
        out = np.full((b - a, arr.shape[1]), fill, dtype=arr.dtype)
        out[self.store_rows[s0 : s0 + len(arr)] - a] = arr
        return out

    def states(self, a: int, b: int) -> np.ndarray:
        s0, s1 = self._store_range(a, b)
        return self._expand(self.ds.states(self.chrom, s0, s1), a, b, s0, MISSING)

    def betas(self, a: int, b: int) -> np.ndarray:
        s0, s1 = self._store_range(a, b)
        return self._expand(self.ds.betas(self.chrom, s0, s1), a, b, s0, -1.0)

    def csr_arrays(self) -> dict[str, np.ndarray]:
        """Observed calls of the imputed rows (CSR by row; cells as in the store)."""
        indptr, cell, mc, cov, label = self.ds.csr(self.chrom)
        arrays = {"cell": cell, "mc": mc, "cov": cov, "label": label}
        if self.ds.has_beta(self.chrom):
            arrays["beta"] = self.ds.beta_values(self.chrom)
        if self.store_rows is None:
            arrays["indptr"] = indptr
        else:
            counts = np.zeros(self.n_sites, dtype=np.int64)
            counts[self.store_rows] = np.diff(np.asarray(indptr))
            new = np.zeros(self.n_sites + 1, dtype=np.int64)
            np.cumsum(counts, out=new[1:])
            arrays["indptr"] = new
        return arrays


def all_cpg_positions(reference: Any, chrom: str, block: int = 1 << 24) -> np.ndarray:
    """0-based positions of every ``CG`` dinucleotide (case-insensitive) of a reference contig.

    ``reference`` is a :class:`cpgformer.io.fasta.Reference`; the contig is read in blocks.
    """
    from cpgformer.codes import CODE_C, CODE_G

    target = reference.resolve(chrom)
    if target is None:
        raise UsageError(f"--sites all: contig {chrom!r} is not in the FASTA {reference.path}")
    length = int(reference.contigs[target])
    parts = []
    for a in range(0, max(0, length - 1), block):
        codes = reference.fetch_codes(target, a, min(length, a + block + 1))
        hits = (codes[:-1] == CODE_C) & (codes[1:] == CODE_G)
        parts.append(np.flatnonzero(hits).astype(np.int64) + a)
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)


# --------------------------------------------------------------------------------------------------
# running an imputation


@dataclass
class ImputeOptions:
    """Everything that determines an imputation's output (batch size and threads do not)."""

    chroms: Sequence[str] | None = None
    keep_observed: bool = False
    dtype: str = "float16"
    sites: str = "store"
    tile_sites: int = 1024
    max_tile_tokens: int = MAX_TILE_TOKENS  # bounds memory: tiles shrink, then cells are grouped
    chunk_sites: int | None = None  # default: about 4 M entries per chunk
    batch_size: int = 8
    embed_chunk: int = 1024
    shared_dna: bool = True  # share DNA convolutions between overlapping windows
    fasta: str | None = None
    temperature: float | None = None  # None: the checkpoint's
    ignore_fingerprint: bool = False
    overwrite: bool = False


def default_chunk_sites(n_cells: int) -> int:
    """Rows per chunk: ~4 M (site, cell) entries, between 1,024 and 65,536 rows, a multiple of 256."""
    rows = (1 << 22) // max(1, n_cells)
    return int(min(65536, max(1024, rows // 256 * 256)))


def cell_index_map(store_cells: Sequence[str], model_cells: Sequence[str] | None) -> np.ndarray:
    """Model cell id for each store column; the store may list the model's cells in another order."""
    store_cells = list(store_cells)
    if model_cells is None or list(model_cells) == store_cells:
        return np.arange(len(store_cells), dtype=np.int64)
    model_index = {name: i for i, name in enumerate(model_cells)}
    missing = [c for c in store_cells if c not in model_index]
    extra = [c for c in model_cells if c not in set(store_cells)]
    if missing or extra or len(model_cells) != len(store_cells):
        parts = []
        if missing:
            parts.append(f"{len(missing)} store cell(s) unknown to the model (e.g. {missing[:3]})")
        if extra:
            parts.append(f"{len(extra)} model cell(s) missing from the store (e.g. {extra[:3]})")
        raise UsageError(
            "the store's cells differ from the checkpoint's: "
            + "; ".join(parts)
            + ". A model imputes exactly the cells it was trained on (its cell table); fine-tune "
            "it on this store to impute other cells"
        )
    log.info("store lists the checkpoint's cells in another order: matched by name")
    return np.array([model_index[c] for c in store_cells], dtype=np.int64)


def _clean_partials(work: Path) -> None:
    """Remove temporary files that killed earlier runs left inside a resumed output."""
    for path in work.rglob(PARTIAL_PREFIX + "*"):
        if path.is_file():
            path.unlink()


def _partial_dir(out: Path) -> Path:
    return out.parent / f"{PARTIAL_PREFIX}{out.name}.impute"


def _save_npy(path: Path, arr: np.ndarray) -> None:
    with atomic_file(path) as fh:
        np.save(fh, np.asarray(arr))


def _save_json(path: Path, data: dict) -> None:
    with atomic_file(path, "w") as fh:
        json.dump(data, fh, indent=1, default=_json_default)
        fh.write("\n")


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return float(obj)
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"cannot write {type(obj).__name__} to JSON")


def _open_reference(path: str) -> Any:
    from cpgformer.io.fasta import Reference

    return Reference(path)


def impute(
    store: Any,
    model: ModelSource | str | os.PathLike[str],
    out: str | os.PathLike[str],
    options: ImputeOptions | None = None,
    *,
    device: str | torch.device | None = None,
) -> ImputedStore:
    """Impute every (site, cell) of ``store`` with ``model`` into the imputed store ``out``.

    ``store``: a path or an open :class:`cpgformer.io.store.Dataset`; ``model``: a checkpoint path or a
    :class:`ModelSource`; ``device``: where a checkpoint's model runs (default CPU; the output does
    not depend on it beyond floating-point rounding, so a run may resume on another device). Resumes an interrupted run with the same settings; see the module docstring.
    """
    opts = options or ImputeOptions()
    out = Path(out)
    inputs = [getattr(store, "path", store), None if isinstance(model, ModelSource) else model]
    check_output(out, "imputed", overwrite=opts.overwrite, inputs=[*inputs, opts.fasta])
    with output_lock(out):  # one writer per output; the partial run below is ours to resume
        return _impute(store, model, out, opts, device=device)


def _impute(
    store: Any,
    model: ModelSource | str | os.PathLike[str],
    out: str | os.PathLike[str],
    options: ImputeOptions | None = None,
    *,
    device: str | torch.device | None = None,
) -> ImputedStore:
    """:func:`impute` while holding the output's lock."""
    from cpgformer.io.store import Dataset, open_dataset

    opts = options or ImputeOptions()
    ds = store if isinstance(store, Dataset) else open_dataset(store)
    source = model if isinstance(model, ModelSource) else load_model_source(model, device)
    predictor = source.predictor
    out = Path(out)
    if opts.dtype not in DTYPES:
        raise UsageError(f"unknown output dtype {opts.dtype!r} (choose from {', '.join(DTYPES)})")
    if opts.sites not in SITE_MODES:
        raise UsageError(f"--sites must be one of {', '.join(SITE_MODES)}, got {opts.sites!r}")

    # ---- compatibility of store and checkpoint
    cell_ids = source.cell_ids_for(ds, opts.ignore_fingerprint)
    temperature = float(opts.temperature if opts.temperature else source.temperature)
    if temperature <= 0:
        raise UsageError(f"temperature must be > 0, got {temperature}")

    chroms = list(opts.chroms) if opts.chroms else list(ds.chromosomes)
    for c in chroms:
        if c not in ds.chromosomes:
            raise UsageError(
                f"{ds.path}: chromosome {c!r} is not in the store (has {', '.join(ds.chromosomes[:10])})"
            )
    fasta = opts.fasta or ds.fasta_path
    reference = None
    if predictor.dna_window or opts.sites == "all":
        if not fasta:
            need = "the model uses DNA windows" if predictor.dna_window else "--sites all"
            raise UsageError(f"{need}: give the reference with --fasta (the store records none)")
        reference = _open_reference(str(fasta))

    sources = []
    for c in chroms:
        positions = all_cpg_positions(reference, c) if opts.sites == "all" else None
        sources.append(_ChromSource(ds, c, positions))
    chunk_sites = int(opts.chunk_sites or default_chunk_sites(ds.n_cells))
    if chunk_sites < 1:
        raise UsageError(f"chunk size must be >= 1 site, got {chunk_sites}")

    plan = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "store": str(Path(ds.path).resolve()),
        "store_fingerprint": ds.fingerprint,
        "checkpoint_id": source.checkpoint_id,
        "temperature": temperature,
        "data_mode": predictor.data_mode,
        "keep_observed": bool(opts.keep_observed),
        "dtype": opts.dtype,
        "sites": opts.sites,
        "fasta": str(fasta) if fasta else None,
        "chunk_sites": chunk_sites,
        "cells": list(ds.cells),
        "chromosomes": [
            {
                "name": s.chrom,
                "dir": str(k),
                "n_sites": s.n_sites,
                "n_chunks": math.ceil(s.n_sites / chunk_sites),
            }
            for k, s in enumerate(sources)
        ],
    }

    # ---- output directory: fresh, or resume an unfinished run with the same plan (one writer)
    inputs = [ds.path, model if not isinstance(model, ModelSource) else None, fasta]
    check_output(out, "imputed", overwrite=opts.overwrite, inputs=inputs)
    work = _partial_dir(out)
    plan_path = work / "plan.json"
    if work.exists():
        try:
            with open(plan_path) as fh:
                old = json.load(fh)
        except (OSError, ValueError):
            old = None
        if old is None:  # a run stopped before its plan was written: nothing to adopt
            log.info("removing %s (an earlier run stopped before it started)", work)
            shutil.rmtree(work)
        elif old != json.loads(json.dumps(plan, default=_json_default)):
            if not opts.overwrite:
                raise UsageError(
                    f"{work}: an unfinished imputation with other settings (store, checkpoint or "
                    "options) is there; rerun it with its settings to resume, or pass --overwrite"
                )
            shutil.rmtree(work)
        else:
            log.info("resuming the unfinished imputation in %s", work)
    if not work.exists():
        work.mkdir(parents=True)
        _save_json(plan_path, plan)
    ds.cell_table.to_csv(work / "cells.tsv.tmp", sep="\t", index=False, na_rep="NA")
    os.replace(work / "cells.tsv.tmp", work / "cells.tsv")

    # ---- chunks
    total = sum(c["n_chunks"] for c in plan["chromosomes"])
    done_before = 0
    with bar(total, desc="imputing", unit="chunk") as progress_bar:
        for k, src in enumerate(sources):
            cdir = work / "chroms" / str(k)
            cdir.mkdir(parents=True, exist_ok=True)
            _write_static(cdir, src)
            windows_fn = None
            if predictor.dna_window:
                windows_fn = _windows_fn(reference, src, predictor.dna_window)
            for i in range(plan["chromosomes"][k]["n_chunks"]):
                path = cdir / f"p-{i:06d}.npy"
                if path.exists():
                    done_before += 1
                    progress_bar.update(1)
                    continue
                a, b = i * chunk_sites, min(src.n_sites, (i + 1) * chunk_sites)
                probs = _impute_chunk(predictor, src, a, b, cell_ids, windows_fn, temperature, opts)
                _save_npy(path, quantize(probs, opts.dtype))
                progress_bar.update(1)
    if done_before:
        log.info("skipped %d of %d chunks finished by an earlier run", done_before, total)

    manifest = dict(plan)
    manifest.update(
        {
            "complete": True,
            "package_version": __version__,
            "model_config": source.config,
            "tile_sites": opts.tile_sites,
            "margin_sites": predictor.margin,
            "n_cells": ds.n_cells,
            "n_sites": int(sum(s.n_sites for s in sources)),
        }
    )
    _clean_partials(work)
    from cpgformer.integrity import file_digests

    manifest["files"] = file_digests(work)  # sizes and SHA-256 (cpgformer check)
    _save_json(work / "manifest.json", manifest)
    plan_path.unlink()
    replace_dir(work, out)
    log.info(
        "imputed %d sites x %d cells on %d chromosome(s) into %s",
        manifest["n_sites"],
        ds.n_cells,
        len(sources),
        out,
    )
    return open_imputed(out)


def _write_static(cdir: Path, src: _ChromSource) -> None:
    """Positions and observed calls of one chromosome (skipped when an earlier run wrote them)."""
    if not (cdir / "positions.npy").exists():
        _save_npy(cdir / "positions.npy", np.asarray(src.positions, dtype=np.int64))
    if (cdir / "indptr.npy").exists():
        return
    arrays = src.csr_arrays()
    for name, arr in arrays.items():
        if name != "indptr":
            _save_npy(cdir / f"{name}.npy", arr)
    _save_npy(cdir / "indptr.npy", arrays["indptr"])  # written last: marks the set complete


def _windows_fn(reference: Any, src: _ChromSource, width: int) -> Callable[[int, int], np.ndarray]:
    def windows(a: int, b: int) -> np.ndarray:
        return reference.windows(src.chrom, np.asarray(src.positions[a:b]), width)

    windows.reference = reference  # type: ignore[attr-defined]
    return windows


def _impute_chunk(
    predictor: Predictor,
    src: _ChromSource,
    a: int,
    b: int,
    cell_ids: np.ndarray,
    windows_fn: Callable[[int, int], np.ndarray] | None,
    temperature: float,
    opts: ImputeOptions,
) -> np.ndarray:
    """Probabilities ``[b - a, C]`` of rows ``[a, b)`` (reads m rows of context on each side)."""
    m = predictor.margin
    lo, hi = max(0, a - m), min(src.n_sites, b + m)
    continuous = predictor.data_mode == "continuous"
    observed = src.betas(lo, hi) if continuous else src.states(lo, hi)
    model_input = _model_input(observed, continuous)
    embedding = None
    if windows_fn is not None:
        embedding = _chunk_embedding(predictor, src, lo, hi, windows_fn, opts)
    raw = predict_block(
        predictor,
        model_input,
        np.asarray(src.positions[lo:hi], dtype=np.int64),
        a - lo,
        b - lo,
        cell_ids=cell_ids,
        dna_embedding=embedding,
        tile_sites=opts.tile_sites,
        batch_size=opts.batch_size,
        max_tokens=opts.max_tile_tokens,
    )
    probs = to_probabilities(raw, predictor.data_mode, temperature)
    if opts.keep_observed:
        obs = observed[a - lo : b - lo]
        seen = obs >= 0
        probs[seen] = obs[seen].astype(np.float32)
    return probs


def _chunk_embedding(
    predictor: Predictor,
    src: _ChromSource,
    lo: int,
    hi: int,
    windows_fn: Callable[[int, int], np.ndarray],
    opts: ImputeOptions,
) -> Tensor | None:
    """DNA embeddings of rows ``[lo, hi)``: shared convolutions when the encoder allows it."""
    encoder = predictor.dna_encoder
    reference = getattr(windows_fn, "reference", None)
    if (
        opts.shared_dna
        and encoder is not None
        and reference is not None
        and hasattr(encoder, "encode")
    ):
        from cpgformer.data.batch import dna_sequence

        positions = np.asarray(src.positions[lo:hi], dtype=np.int64)
        seq, starts = dna_sequence(reference, src.chrom, positions, encoder.dna_window)
        with torch.inference_mode():
            return encoder.encode(torch.from_numpy(seq), torch.from_numpy(starts)).float()
    return embed_sites(
        predictor, lambda x, y: windows_fn(lo + x, lo + y), hi - lo, opts.embed_chunk
    )


def _model_input(observed: np.ndarray, continuous: bool) -> np.ndarray:
    """Stored labels (-1/0/1) or betas (-1 / [0, 1]) -> model-input coding (``codes.to_model_input``)."""
    from cpgformer.codes import to_model_input

    if continuous:
        x = to_model_input(observed.astype(np.float32))
        x[observed < 0] = 0.0
        return x
    return to_model_input(observed.astype(np.int8))


# --------------------------------------------------------------------------------------------------
# reading an imputed store


class ImputedStore:
    """A complete imputed store (read-only, memory-mapped chunks)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        mpath = self.path / "manifest.json"
        if not self.path.exists():
            partial = _partial_dir(self.path)
            if partial.exists():
                raise UsageError(
                    f"{self.path}: imputation not finished (the unfinished run is in {partial}); "
                    "rerun the same cpgformer impute command to resume it"
                )
            raise InputError(self.path, None, "no such imputed store")
        if not mpath.is_file():
            raise UsageError(
                f"{self.path}: not a complete cpgformer imputed store (no manifest.json)"
            )
        try:
            with open(mpath) as fh:
                manifest = json.load(fh)
        except (OSError, ValueError) as exc:
            raise InputError(mpath, None, f"unreadable manifest: {exc}") from None
        if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
            raise InputError(mpath, None, f"not a cpgformer imputed store (format != {FORMAT!r})")
        if manifest.get("format_version") != FORMAT_VERSION:
            raise InputError(
                mpath,
                None,
                f"imputed store format_version {manifest.get('format_version')} unsupported",
            )
        if not manifest.get("complete"):
            raise UsageError(f"{self.path}: imputed store is incomplete")
        self.manifest: dict = manifest
        self.cells: list[str] = list(manifest["cells"])
        self.chromosomes: list[str] = [c["name"] for c in manifest["chromosomes"]]
        self._meta = {c["name"]: c for c in manifest["chromosomes"]}
        self.chunk_sites: int = int(manifest["chunk_sites"])
        from cpgformer.integrity import verify_imputed_files

        verify_imputed_files(self.path, manifest)  # every chunk there and complete
        self._cache: dict[tuple[str, str], np.ndarray] = {}
        self._cell_table: pd.DataFrame | None = None

    def __repr__(self) -> str:
        return (
            f"ImputedStore({str(self.path)!r}: {self.n_cells} cells, "
            f"{len(self.chromosomes)} chromosomes, {self.manifest.get('n_sites')} sites)"
        )

    @property
    def n_cells(self) -> int:
        return len(self.cells)

    @property
    def temperature(self) -> float:
        return float(self.manifest.get("temperature", 1.0))

    @property
    def keep_observed(self) -> bool:
        return bool(self.manifest.get("keep_observed"))

    @property
    def data_mode(self) -> str:
        return str(self.manifest.get("data_mode", "binary"))

    @property
    def fasta_path(self) -> str | None:
        return self.manifest.get("fasta")

    @property
    def cell_table(self) -> pd.DataFrame:
        if self._cell_table is None:
            self._cell_table = pd.read_csv(
                self.path / "cells.tsv",
                sep="\t",
                dtype={"name": str, "source_file": str, "flags": str},
                keep_default_na=False,
                na_values={"global_meth_frac": ["NA"], "mean_cov": ["NA"]},
            )
        return self._cell_table

    def _chrom(self, chrom: str) -> dict:
        try:
            return self._meta[chrom]
        except KeyError:
            raise UsageError(
                f"{self.path}: chromosome {chrom!r} was not imputed (has {', '.join(self.chromosomes[:10])})"
            ) from None

    def _array(self, chrom: str, name: str) -> np.ndarray:
        key = (chrom, name)
        if key not in self._cache:
            f = self.path / "chroms" / self._chrom(chrom)["dir"] / f"{name}.npy"
            try:
                self._cache[key] = np.load(f, mmap_mode="r")
            except (OSError, ValueError) as exc:
                raise InputError(f, None, f"unreadable imputed-store array: {exc}") from None
        return self._cache[key]

    def n_sites(self, chrom: str) -> int:
        return int(self._chrom(chrom)["n_sites"])

    def positions(self, chrom: str) -> np.ndarray:
        return self._array(chrom, "positions")

    def chunks(self, chrom: str) -> list[tuple[int, int]]:
        """Row ranges of the stored chunks (read chunk by chunk for bounded memory)."""
        n, s = self.n_sites(chrom), self.chunk_sites
        return [(a, min(n, a + s)) for a in range(0, n, s)]

    def values(self, chrom: str, start: int, stop: int) -> np.ndarray:
        """float32 ``[stop - start, C]`` stored outputs (model probabilities; with ``keep_observed``
        the observed calls replace them)."""
        n = self.n_sites(chrom)
        if not 0 <= start <= stop <= n:
            raise UsageError(f"rows [{start}, {stop}) out of range for {chrom!r} with {n} sites")
        out = np.empty((stop - start, self.n_cells), dtype=np.float32)
        s = self.chunk_sites
        for i in range(start // s, (stop + s - 1) // s):
            a, b = max(start, i * s), min(stop, (i + 1) * s)
            chunk = self._array(chrom, f"p-{i:06d}")
            out[a - start : b - start] = dequantize(np.asarray(chunk[a - i * s : b - i * s]))
        return out

    def csr(self, chrom: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(indptr, cell, mc, cov, label) of the observed calls at the imputed sites."""
        return tuple(self._array(chrom, f) for f in _CSR_FIELDS)  # type: ignore[return-value]

    def _segment(
        self, chrom: str, start: int, stop: int
    ) -> tuple[int, int, np.ndarray, np.ndarray]:
        indptr = np.asarray(self._array(chrom, "indptr")[start : stop + 1])
        lo, hi = int(indptr[0]), int(indptr[-1])
        rows = np.repeat(np.arange(stop - start), np.diff(indptr))
        cols = np.asarray(self._array(chrom, "cell")[lo:hi], dtype=np.int64)
        return lo, hi, rows, cols

    def states(self, chrom: str, start: int, stop: int) -> np.ndarray:
        """int8 ``[rows, C]`` observed labels, -1 missing (or excluded by the binarisation rule)."""
        lo, hi, rows, cols = self._segment(chrom, start, stop)
        out = np.full((stop - start, self.n_cells), MISSING, dtype=np.int8)
        out[rows, cols] = self._array(chrom, "label")[lo:hi]
        return out

    def counts(self, chrom: str, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        """(mc, cov) int32 ``[rows, C]``; cov 0 = unobserved."""
        lo, hi, rows, cols = self._segment(chrom, start, stop)
        mc = np.zeros((stop - start, self.n_cells), dtype=np.int32)
        cov = np.zeros((stop - start, self.n_cells), dtype=np.int32)
        mc[rows, cols] = self._array(chrom, "mc")[lo:hi]
        cov[rows, cols] = self._array(chrom, "cov")[lo:hi]
        return mc, cov

    def observed_values(self, chrom: str, start: int, stop: int) -> np.ndarray:
        """float32 ``[rows, C]`` observed value (label, or beta for continuous stores), NaN missing."""
        if self.data_mode == "continuous":
            lo, hi, rows, cols = self._segment(chrom, start, stop)
            out = np.full((stop - start, self.n_cells), np.nan, dtype=np.float32)
            mc = np.asarray(self._array(chrom, "mc")[lo:hi], dtype=np.float32)
            cov = np.asarray(self._array(chrom, "cov")[lo:hi], dtype=np.float32)
            d = self.path / "chroms" / self._chrom(chrom)["dir"]
            beta = (
                np.asarray(self._array(chrom, "beta")[lo:hi])
                if (d / "beta.npy").exists()
                else mc / np.maximum(cov, 1)
            )
            out[rows, cols] = beta
            return out
        s = self.states(chrom, start, stop)
        out = s.astype(np.float32)
        out[s < 0] = np.nan
        return out

    def imputed(self, chrom: str, start: int, stop: int) -> np.ndarray:
        """float32 ``[rows, C]``: observed calls kept, model probabilities for missing entries."""
        v = self.values(chrom, start, stop)
        obs = self.observed_values(chrom, start, stop)
        seen = ~np.isnan(obs)
        v[seen] = obs[seen]
        return v


def open_imputed(path: str | os.PathLike[str]) -> ImputedStore:
    """Open a complete imputed store; an unfinished or interrupted run raises a clear ``UsageError``."""
    return ImputedStore(path)


# --------------------------------------------------------------------------------------------------
# calibration on seeded masked entries


@dataclass
class HeldOut:
    """Model outputs for held-out entries: ``masked`` entries were hidden from the model (input
    unknown); ``observed`` entries are the other observed calls, predicted with their own label in
    the input (the "denoised" outputs)."""

    masked_logits: np.ndarray
    masked_labels: np.ndarray
    observed_logits: np.ndarray
    observed_labels: np.ndarray
    masked_cells: np.ndarray | None = None  # store column of each masked call
    observed_cells: np.ndarray | None = None


def _mask_for(chrom: str, label: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Seeded choice of observed calls (label >= 0) to hide; independent of chunking."""
    key = int.from_bytes(hashlib.sha256(chrom.encode()).digest()[:8], "little")
    rng = np.random.default_rng([seed, key])
    return (rng.random(label.shape[0]) < fraction) & (np.asarray(label) >= 0)


def masked_holdout(
    store: Any,
    model: ModelSource | str | os.PathLike[str],
    chroms: Sequence[str],
    *,
    fraction: float = 0.1,
    seed: int = 0,
    tile_sites: int = 1024,
    batch_size: int = 8,
    chunk_sites: int | None = None,
    fasta: str | None = None,
    max_observed: int = 2_000_000,
) -> HeldOut:
    """Hide a seeded ``fraction`` of the observed calls of ``chroms`` and predict every call.

    Returns the logits of the hidden calls with their labels (for fitting / scoring a temperature),
    and of up to ``max_observed`` of the remaining observed calls (their denoised predictions).
    """
    from cpgformer.io.store import Dataset, open_dataset

    ds = store if isinstance(store, Dataset) else open_dataset(store)
    source = model if isinstance(model, ModelSource) else load_model_source(model)
    predictor = source.predictor
    if predictor.data_mode != "binary":
        raise UsageError("calibration by temperature scaling applies to binary models only")
    if not 0 < fraction < 1:
        raise UsageError(f"mask fraction must be in (0, 1), got {fraction}")
    cell_ids = source.cell_ids_for(ds)
    reference = None
    if predictor.dna_window:
        fasta = fasta or ds.fasta_path
        if not fasta:
            raise UsageError("the model uses DNA windows: give the reference with --fasta")
        reference = _open_reference(str(fasta))
    chunk = int(chunk_sites or default_chunk_sites(ds.n_cells))
    out: dict[str, list[np.ndarray]] = {k: [] for k in ("ml", "my", "mc", "ol", "oy", "oc")}
    m = predictor.margin
    for chrom in chroms:
        if chrom not in ds.chromosomes:
            raise UsageError(f"{ds.path}: chromosome {chrom!r} is not in the store")
        src = _ChromSource(ds, chrom)
        indptr, cell, _, _, label = (np.asarray(a) for a in ds.csr(chrom))
        hide = _mask_for(chrom, label, fraction, seed)
        windows_fn = _windows_fn(reference, src, predictor.dna_window) if reference else None
        for a in range(0, src.n_sites, chunk):
            b = min(src.n_sites, a + chunk)
            lo, hi = max(0, a - m), min(src.n_sites, b + m)
            states = src.states(lo, hi)
            k0, k1 = int(indptr[lo]), int(indptr[hi])
            nnz_rows = np.repeat(np.arange(hi - lo), np.diff(indptr[lo : hi + 1]))
            hidden = hide[k0:k1]
            states[nnz_rows[hidden], cell[k0:k1][hidden]] = MISSING
            embedding = None
            if windows_fn is not None:
                embedding = _chunk_embedding(predictor, src, lo, hi, windows_fn, ImputeOptions())
            raw = predict_block(
                predictor,
                _model_input(states, False),
                np.asarray(src.positions[lo:hi], dtype=np.int64),
                a - lo,
                b - lo,
                cell_ids=cell_ids,
                dna_embedding=embedding,
                tile_sites=tile_sites,
                batch_size=batch_size,
            )
            inside = (nnz_rows >= a - lo) & (nnz_rows < b - lo)
            r = nnz_rows - (a - lo)
            c = cell[k0:k1]
            lab = label[k0:k1]
            sel = inside & hidden
            out["ml"].append(raw[r[sel], c[sel]])
            out["my"].append(lab[sel])
            out["mc"].append(c[sel])
            sel = inside & ~hidden & (lab >= 0)
            out["ol"].append(raw[r[sel], c[sel]])
            out["oy"].append(lab[sel])
            out["oc"].append(c[sel])

    def cat(key: str, dtype: type) -> np.ndarray:
        return np.concatenate(out[key]).astype(dtype) if out[key] else np.zeros(0, dtype)

    ol, oy, oc = cat("ol", np.float32), cat("oy", np.int8), cat("oc", np.int32)
    if ol.size > max_observed:
        keep = np.sort(np.random.default_rng(seed).choice(ol.size, max_observed, replace=False))
        ol, oy, oc = ol[keep], oy[keep], oc[keep]
    return HeldOut(cat("ml", np.float32), cat("my", np.int8), ol, oy, cat("mc", np.int32), oc)


def calibrate(
    store: Any,
    checkpoint: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    chroms: Sequence[str] | None = None,
    fraction: float = 0.1,
    seed: int = 0,
    tile_sites: int = 1024,
    batch_size: int = 8,
    fasta: str | None = None,
    overwrite: bool = False,
) -> dict:
    """Fit a temperature on seeded masked calls of ``chroms`` and write a calibrated checkpoint.

    ``chroms`` default to the checkpoint's validation chromosomes. The new checkpoint (a plain model
    file, see :func:`cpgformer.checkpoint.save_checkpoint`) carries the same weights, cells,
    fingerprint and data parameters, and the fitted ``temperature``. Returns the report (ECE and
    NLL before/after on the masked calls, ECE of the denoised observed calls before/after).
    """
    out = Path(out)
    inputs = [getattr(store, "path", store), checkpoint, fasta]
    check_output(out, "model", overwrite=overwrite, inputs=inputs)
    with output_lock(out):
        check_output(out, "model", overwrite=overwrite, inputs=inputs)
        remove_leftovers(out)
        return _calibrate(
            store, checkpoint, out, chroms, fraction, seed, tile_sites, batch_size, fasta
        )


def _calibrate(
    store: Any,
    checkpoint: str | os.PathLike[str],
    out: Path,
    chroms: Sequence[str] | None,
    fraction: float,
    seed: int,
    tile_sites: int,
    batch_size: int,
    fasta: str | None,
) -> dict:
    from cpgformer.checkpoint import load_checkpoint, save_checkpoint
    from cpgformer.io.store import open_dataset

    ds = open_dataset(store)
    loaded = load_checkpoint(checkpoint)
    if loaded.store_fingerprint and loaded.store_fingerprint != ds.fingerprint:
        raise UsageError(
            f"{ds.path}: store fingerprint {ds.fingerprint[:12]} differs from the checkpoint's "
            f"({loaded.store_fingerprint[:12]}); calibrate on the training store"
        )
    if not chroms:
        wanted = list((loaded.data or {}).get("val_chromosomes") or [])
        chroms = [_store_name(ds, c) for c in wanted]
        chroms = [c for c in chroms if c is not None]
        if not chroms:
            raise UsageError(
                "the checkpoint names no validation chromosome of this store: pass --chroms"
            )
    source = ModelSource(
        Predictor.from_model(loaded.model),
        checkpoint_id=file_digest(checkpoint),
        cells=loaded.cells,
        store_fingerprint=loaded.store_fingerprint,
    )
    held = masked_holdout(
        ds,
        source,
        chroms,
        fraction=fraction,
        seed=seed,
        tile_sites=tile_sites,
        batch_size=batch_size,
        fasta=fasta,
    )
    if held.masked_labels.size < 100:
        raise UsageError(
            f"only {held.masked_labels.size} masked calls on {', '.join(chroms)}: too few to fit a "
            "temperature (use more chromosomes or a larger --mask-fraction)"
        )
    temperature = fit_temperature(held.masked_logits, held.masked_labels)
    report = calibration_report(held.masked_logits, held.masked_labels, temperature)
    report.update(
        {
            "chromosomes": list(chroms),
            "mask_fraction": fraction,
            "seed": seed,
            "previous_temperature": float(loaded.temperature or 1.0),
            "n_observed": int(held.observed_labels.size),
            "ece_observed_before": expected_calibration_error(
                to_probabilities(held.observed_logits, "binary"), held.observed_labels
            ),
            "ece_observed_after": expected_calibration_error(
                to_probabilities(held.observed_logits, "binary", temperature),
                held.observed_labels,
            ),
        }
    )
    data = dict(loaded.data or {})
    data["calibration"] = report
    save_checkpoint(
        out,
        loaded.model,
        cells=loaded.cells,
        store_fingerprint=loaded.store_fingerprint,
        data=data,
        temperature=temperature,
    )
    log.info(
        "temperature %.3f fitted on %d masked calls: ECE %.4f -> %.4f",
        temperature,
        report["n"],
        report["ece_before"],
        report["ece_after"],
    )
    return report


def _store_name(ds: Any, name: str) -> str | None:
    if name in ds.chromosomes:
        return name
    alt = name[3:] if name.startswith("chr") else "chr" + name
    return alt if alt in ds.chromosomes else None
