"""Explain predictions: integrated gradients (Captum) and attention maps.

For one target (site, cell) the model's logit (log-odds of "methylated") is explained over the
model's receptive field: ``model.receptive_field_sites`` sites on each side of the target (truncated
at chromosome ends, exactly what a whole-chromosome pass sees: the band attention has no rows
there) times all cells, plus the DNA window of every site when the model uses DNA.

Integrated gradients are taken on the outputs of the three input embeddings:

* call-state embedding, one vector per (site, cell) -- baseline: the embedding of the model's own
  "unknown" input (code 0, what a missing or masked call looks like to the model);
* cell embedding, one vector per cell -- baseline: the zero vector (there is no "unknown cell");
* nucleotide embedding inside the DNA encoder, one vector per base of every site's DNA window --
  baseline: the embedding of N (the model's "unknown base", also what pads chromosome ends).

The default path has two straight stages: the cell embeddings first (every call unknown, every base
N), then the calls and bases (cells at their values); see :func:`integrated_gradients`.
Attributions are summed over the embedding channels, so there is one number per (site, cell) for the
states, one per cell for the cell embedding and one per base for the DNA. By the completeness
property of integrated gradients, all attributions together add up to ``logit - baseline_logit``
(the logit with every input at its baseline), up to the integration error Captum reports as the
convergence delta.

Attention maps are read from the model's own attention modules (see :func:`attention_maps`).

Coordinates: a site is (chrom, 0-based position of the + strand C), like the store.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cpgformer.errors import InputError, UsageError

log = logging.getLogger(__name__)

# --------------------------------------------------------------------------------------------------
# The sites file
# --------------------------------------------------------------------------------------------------

LABEL_KEEP = None
"""``label_change`` value meaning: leave the target's input as stored."""

_MASK_TOKENS = {"-1", "mask", "masked", "?", "unknown"}
_KEEP_TOKENS = {"none", "na", ".", "keep", ""}


@dataclass(frozen=True)
class SiteQuery:
    """One prediction to explain: cell ``cell`` at site ``(chrom, position)``.

    ``position`` is the 0-based coordinate of the + strand C (as in the store). ``label_change`` is
    applied to the target's own input before explaining: ``None`` keeps the stored call, ``-1``
    masks it (the model then predicts it from the context only, as in training and the benchmark),
    ``0``/``1`` set it unmethylated/methylated (a fraction in [0, 1] for continuous models).
    """

    chrom: str
    position: int
    cell: str
    label_change: float | None = LABEL_KEEP
    line: int | None = None
    source: str | None = None  # the sites file (for error messages)

    def error(self, message: str) -> Exception:
        """An :class:`InputError` naming the sites file and line (``UsageError`` without a file)."""
        if self.source is not None:
            return InputError(self.source, self.line, message)
        return UsageError(f"{self.chrom}:{self.position} cell {self.cell}: {message}")

    @property
    def label_change_text(self) -> str:
        if self.label_change is None:
            return "none"
        if self.label_change == -1:
            return "mask"
        return f"{self.label_change:g}"


def _parse_label_change(token: str) -> float | None:
    low = token.strip().lower()
    if low in _KEEP_TOKENS:
        return LABEL_KEEP
    if low in _MASK_TOKENS:
        return -1.0
    value = float(low)  # ValueError handled by the caller
    if not math.isfinite(value) or not 0.0 <= value <= 1.0:
        raise ValueError(low)
    return value


def read_sites(path: str | os.PathLike[str]) -> list[SiteQuery]:
    """Read a sites file: one row ``chrom position cell [label_change]`` per prediction to explain.

    Columns are separated by tabs, spaces or commas. ``position`` is 0-based (the + strand C, as in
    the store). ``cell`` is a cell name (or a 0-based cell index when no cell has that name, resolved
    later). ``label_change``: ``mask`` / ``-1`` / ``?`` (hide the target's own call), ``0`` / ``1``
    (or a fraction) to set it, ``none`` / ``.`` / absent to keep it. Blank lines and ``#`` lines
    are skipped; a first line whose position field is not an integer is a header.
    """
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise InputError(p, None, "not a text file (binary or compressed content)") from None
    except OSError as exc:
        raise InputError(p, None, f"cannot read sites file: {exc.strerror or exc}") from None
    queries: list[SiteQuery] = []
    first_data_line = True
    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        fields = [f for f in re.split(r"[,\s]+", line) if f != ""]
        if first_data_line:
            first_data_line = False
            if len(fields) >= 2 and not re.fullmatch(r"[+-]?\d+", fields[1]):
                log.info("%s:%d: header line skipped", p, lineno)
                continue
        if len(fields) not in (3, 4):
            raise InputError(
                p,
                lineno,
                f"expected 3 or 4 columns (chrom position cell [label_change]), got {len(fields)}",
            )
        chrom, pos_text, cell = fields[:3]
        try:
            position = int(pos_text)
        except ValueError:
            raise InputError(
                p, lineno, f"position {pos_text!r} is not an integer (0-based + strand C)"
            ) from None
        if position < 0:
            raise InputError(p, lineno, f"position {position} is negative (0-based coordinates)")
        if position > 1 << 40:
            raise InputError(p, lineno, f"position {position} is beyond any chromosome")
        change: float | None = LABEL_KEEP
        if len(fields) == 4:
            try:
                change = _parse_label_change(fields[3])
            except ValueError:
                raise InputError(
                    p,
                    lineno,
                    f"label change {fields[3]!r} is not one of mask/-1, 0, 1, a fraction in [0, 1] "
                    "or none",
                ) from None
        queries.append(SiteQuery(chrom, position, cell, change, lineno, str(p)))
    if not queries:
        raise InputError(p, None, "no sites to explain (expected rows: chrom position cell)")
    return queries


# --------------------------------------------------------------------------------------------------
# Receptive-field windows
# --------------------------------------------------------------------------------------------------


def site_window(n_sites: int, row: int, radius: int) -> tuple[int, int]:
    """Rows ``[start, stop)`` of the receptive field of ``row``: ``radius`` rows each side, cut at
    the chromosome's first and last site (never wrapped)."""
    if not 0 <= row < n_sites:
        raise IndexError(f"row {row} out of range for {n_sites} sites")
    return max(0, row - radius), min(n_sites, row + radius + 1)


def dna_windows(reference: Any, chrom: str, positions: np.ndarray, width: int) -> np.ndarray:
    """int8 nucleotide codes ``[len(positions), width]`` centred on each C, N-padded past the
    chromosome's ends (never wrapped), via ``reference.windows`` (:class:`cpgformer.io.fasta.Reference`).
    """
    windows = np.asarray(reference.windows(chrom, np.asarray(positions, dtype=np.int64), width))
    if windows.shape != (len(positions), width):
        raise UsageError(
            f"reference returned DNA windows of shape {windows.shape}, expected "
            f"{(len(positions), width)}"
        )
    return windows.astype(np.int8, copy=False)


# --------------------------------------------------------------------------------------------------
# Results
# --------------------------------------------------------------------------------------------------


@dataclass
class SiteExplanation:
    """Attributions and attention maps for one target (site, cell).

    Shapes: L sites of the receptive field (fewer near chromosome ends), C cells, W DNA window (bp),
    N layers, H heads, S site window (2 * half-window + 1 offsets).
    """

    query: SiteQuery
    chrom: str
    cells: list[str]  # C names, in the order of every cell axis below
    target_cell: int  # index into ``cells``
    site_rows: np.ndarray  # int64 [L] row indices in the chromosome
    positions: np.ndarray  # int64 [L] 0-based + C positions
    target_index: int  # index of the target site within the L sites
    states: (
        np.ndarray
    )  # float32 [L, C] model input after the label change, stored coding (-1 missing)
    logit: float  # model output for the target
    baseline_logit: float  # output with every input at its baseline
    state_attribution: np.ndarray  # float64 [L, C]
    cell_attribution: np.ndarray  # float64 [C]
    cell_totals: np.ndarray  # float64 [C]: state attributions summed over sites + cell attribution
    convergence_delta: float  # Captum's delta: sum(attributions) - (logit - baseline_logit)
    n_steps: int
    dna: np.ndarray | None = None  # int8 [L, W] nucleotide codes, N-padded
    dna_attribution: np.ndarray | None = None  # float64 [L, W]
    site_attention: np.ndarray | None = None  # float32 [N, H, C, S]: query (target site, cell)
    cell_attention: np.ndarray | None = None  # float32 [N, H, C, C]: queries x keys at target site
    site_offsets: np.ndarray | None = None  # int64 [S] offsets (sites) of the site-attention slots
    extras: dict[str, Any] = field(default_factory=dict)

    @property
    def probability(self) -> float:
        return 1.0 / (1.0 + math.exp(-self.logit))

    @property
    def attribution_sum(self) -> float:
        total = float(self.state_attribution.sum() + self.cell_attribution.sum())
        if self.dna_attribution is not None:
            total += float(self.dna_attribution.sum())
        return total

    @property
    def name(self) -> str:
        """File-name stem: ``<chrom>_<position>_<cell>`` with unsafe characters replaced."""
        raw = f"{self.chrom}_{self.query.position}_{self.cells[self.target_cell]}"
        return re.sub(r"[^A-Za-z0-9._-]+", "-", raw)

    def to_arrays(self) -> dict[str, np.ndarray]:
        """Everything as named numpy arrays (what :func:`save_npz` writes)."""
        out: dict[str, np.ndarray] = {
            "chrom": np.array(self.chrom),
            "position": np.array(self.query.position, dtype=np.int64),
            "cell": np.array(self.cells[self.target_cell]),
            "target_cell": np.array(self.target_cell, dtype=np.int64),
            "label_change": np.array(self.query.label_change_text),
            "cells": np.array(self.cells),
            "site_rows": self.site_rows,
            "positions": self.positions,
            "target_index": np.array(self.target_index, dtype=np.int64),
            "states": self.states,
            "logit": np.array(self.logit),
            "probability": np.array(self.probability),
            "baseline_logit": np.array(self.baseline_logit),
            "state_attribution": self.state_attribution,
            "cell_attribution": self.cell_attribution,
            "cell_totals": self.cell_totals,
            "convergence_delta": np.array(self.convergence_delta),
            "n_steps": np.array(self.n_steps, dtype=np.int64),
        }
        optional = {
            "dna": self.dna,
            "dna_attribution": self.dna_attribution,
            "site_attention": self.site_attention,
            "cell_attention": self.cell_attention,
            "site_offsets": self.site_offsets,
        }
        out.update({k: v for k, v in optional.items() if v is not None})
        return out


def save_npz(explanation: SiteExplanation, path: str | os.PathLike[str]) -> Path:
    """Write one explanation as a compressed ``.npz`` (atomically); keys as in ``to_arrays``."""
    from cpgformer.utils.atomic import atomic_file

    target = Path(path)
    with atomic_file(target, "wb") as handle:
        np.savez_compressed(handle, **explanation.to_arrays())
    return target


def load_npz(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """Read an explanation written by :func:`save_npz` into a dict of arrays."""
    with np.load(path, allow_pickle=False) as data:
        return {k: data[k] for k in data.files}


# --------------------------------------------------------------------------------------------------
# Integrated gradients on the embedding outputs
# --------------------------------------------------------------------------------------------------

BASELINES = ("unknown", "zero")
"""``unknown`` (default): state embedding of input code 0, cell embedding 0, nucleotide embedding of
N, with a two-stage path (cells first, then the data); ``zero``: every embedding output 0, one
straight path (the original script's choice). See :func:`integrated_gradients`."""

_TOKENS_PER_CHUNK = 32_000
"""(site, cell) tokens per forward/backward chunk (~40 KB each for the published model: ~1.3 GB)."""
_DNA_WINDOWS_PER_CHUNK = 512


@dataclass
class Attributions:
    """Integrated-gradient attributions of one target logit (tensors already summed over channels)."""

    state: np.ndarray  # float64 [L, C]
    cell: np.ndarray  # float64 [C]
    dna: np.ndarray | None  # float64 [L, W]
    logit: float
    baseline_logit: float
    convergence_delta: float

    @property
    def total(self) -> float:
        total = float(self.state.sum() + self.cell.sum())
        return total + (float(self.dna.sum()) if self.dna is not None else 0.0)


@contextlib.contextmanager
def _replaced_outputs(replacements: Sequence[tuple[Any, Any]]) -> Iterator[None]:
    """Make each module return slices of a given tensor instead of its own output.

    Successive calls of one module consume consecutive leading-dimension slices, so a module run in
    chunks (the DNA encoder) is fed the right rows. Shapes must match the module's own output.
    """
    handles = []
    for module, value in replacements:
        consumed = [0]

        def hook(mod: Any, args: Any, output: Any, value: Any = value, consumed: list = consumed):
            start = consumed[0]
            part = value[start : start + output.shape[0]]
            if part.shape != output.shape:
                raise RuntimeError(
                    f"cannot replace the output of {type(mod).__name__}: shape "
                    f"{tuple(output.shape)} vs {tuple(part.shape)}"
                )
            consumed[0] = start + output.shape[0]
            return part.to(output.dtype)

        handles.append(module.register_forward_hook(hook))
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


@contextlib.contextmanager
def _eval_mode(model: Any) -> Iterator[None]:
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def _target_logit(
    model: Any,
    states: Any,
    positions: Any,
    cell_ids: Any,
    dna: Any,
    target_site: int,
    target_cell: int,
) -> Any:
    """The model's logit ``[B]`` of one (site, cell), computing only what reaches it.

    Same math as ``model(...)[:, target_site, target_cell]``, but after each layer only the sites
    that can still influence the target are kept (``(layers left) * half_window`` each side), as the
    original's leave-one-out benchmark did: about 40 % fewer token-layers for the published model.
    Every output of :func:`integrated_gradients` is checked against a plain ``model(...)`` call.
    """
    from cpgformer.nn.posenc import RelativePositions

    config = model.config
    impl = model.attention_impl
    batch, length, _ = states.shape
    dna_embedding = None
    if model.dna_encoder is not None:
        dna_embedding = model.dna_encoder(dna.reshape(batch * length, -1)).view(batch, length, -1)
    x = model.embed_tokens(states, cell_ids, dna_embedding, impl)
    positional = any(kind != "cells" for kind in config.attention_kinds)
    half = config.half_window
    n_layers = len(model.layers)
    target = target_site
    for index, layer in enumerate(model.layers):
        rel = RelativePositions(positions, half, config.hidden) if positional else None
        x = layer(x, rel, impl)
        keep = (n_layers - index - 1) * half
        lo, hi = max(0, target - keep), min(x.shape[1], target + keep + 1)
        x, positions, target = x[:, lo:hi], positions[:, lo:hi], target - lo
    out = model.head(x[:, target, target_cell]).squeeze(-1)
    offset = model.output_offset(states)  # the per-site-mean offset of new-run models
    return out if offset is None else out + offset[:, target_site, target_cell].to(out.dtype)


def integrated_gradients(
    model: Any,
    states: Any,
    positions: Any,
    cell_ids: Any,
    target_site: int,
    target_cell: int,
    dna: Any = None,
    n_steps: int = 50,
    baseline: str = "unknown",
    internal_batch_size: int | None = None,
) -> Attributions:
    """Integrated gradients of the logit of ``(target_site, target_cell)`` for one segment.

    Inputs are one segment in model coding (``states [1, L, C]``, ``positions [1, L]``,
    ``cell_ids [1, C]``, ``dna [1, L, W]`` or ``None``), see :class:`cpgformer.nn.CpGTransformer`.
    The path integral runs over the outputs of the state, cell and nucleotide embedding modules,
    with Captum's Gauss-Legendre rule of ``n_steps`` points per stage; the model runs in eval mode.

    ``baseline="unknown"`` (default): every call unknown (state embedding of input code 0), every
    base N, cell embeddings 0. The path has two stages: (1) the cell embeddings go from 0 to their
    values while every call is unknown and every base N (what each cell's identity alone does to
    the prediction: its prior), then (2) calls and bases go from unknown to observed with the cells
    fixed (what the observed data add). Both stages are straight lines, so completeness holds for
    the whole path: all attributions add up to ``logit - baseline_logit``.
    ``baseline="zero"``: one straight line from all-zero embedding outputs (the original script).
    """
    import torch
    from captum.attr import IntegratedGradients

    from cpgformer.codes import CODE_N

    if baseline not in BASELINES:
        raise UsageError(f"baseline must be one of {BASELINES}, got {baseline!r}")
    if n_steps < 1:
        raise UsageError(f"n_steps must be >= 1, got {n_steps}")
    if states.dim() != 3 or states.shape[0] != 1:
        raise ValueError(f"states must be [1, L, C], got {tuple(states.shape)}")
    _, length, n_cells = states.shape
    encoder = getattr(model, "dna_encoder", None)
    use_dna = encoder is not None
    if use_dna and dna is None:
        raise UsageError("this model uses DNA: DNA windows (a reference FASTA) are required")
    with _eval_mode(model), torch.no_grad():
        actual = {"state": model.state_embed(states), "cell": model.cell_embed(cell_ids)}
        if baseline == "unknown":
            base = {"state": model.state_embed(torch.zeros_like(states))}
        else:
            base = {"state": torch.zeros_like(actual["state"])}
        base["cell"] = torch.zeros_like(actual["cell"])
        dna_model = None
        if use_dna:
            width = dna.shape[-1]
            codes = dna.reshape(length, width).long()
            actual["dna"] = encoder.nucleotide_embed(codes).unsqueeze(0)  # [1, L, W, 4]
            if baseline == "unknown":
                base["dna"] = encoder.nucleotide_embed(torch.full_like(codes, CODE_N)).unsqueeze(0)
            else:
                base["dna"] = torch.zeros_like(actual["dna"])
            dna_model = dna.long()
    names = ["state", "cell", "dna"] if use_dna else ["state", "cell"]

    def make_forward(varying: Sequence[str], fixed: dict[str, Any]) -> Any:
        def forward(*embeddings: Any) -> Any:
            n = embeddings[0].shape[0]
            values = dict(zip(varying, embeddings))
            for name in names:
                if name not in values:
                    values[name] = fixed[name].expand(n, *fixed[name].shape[1:])
            replacements = [
                (model.state_embed, values["state"]),
                (model.cell_embed, values["cell"]),
            ]
            if use_dna:
                flat = values["dna"].reshape(n * length, *values["dna"].shape[2:])
                replacements.append((encoder.nucleotide_embed, flat))
            with _replaced_outputs(replacements):
                return _target_logit(
                    model,
                    states.expand(n, -1, -1),
                    positions.expand(n, -1),
                    cell_ids.expand(n, -1),
                    None if dna_model is None else dna_model.expand(n, -1, -1),
                    target_site,
                    target_cell,
                )

        return forward

    if internal_batch_size is None:
        internal_batch_size = max(1, _TOKENS_PER_CHUNK // max(1, length * n_cells))
        if use_dna:
            internal_batch_size = min(internal_batch_size, max(1, _DNA_WINDOWS_PER_CHUNK // length))
    internal_batch_size = min(internal_batch_size, n_steps)
    if baseline == "unknown":
        # stage 1: cells from 0 with no data; stage 2: data from unknown with the actual cells
        stages = [(["cell"], {**base}), ([n for n in names if n != "cell"], {**actual})]
    else:
        stages = [(list(names), {})]
    results: dict[str, Any] = {}
    delta = 0.0
    with _eval_mode(model):
        full = make_forward(names, {})
        with torch.no_grad():
            logit = float(full(*(actual[n] for n in names))[0])
            baseline_logit = float(full(*(base[n] for n in names))[0])
            plain = float(
                model(states, positions, cell_ids, dna=dna_model)[0, target_site, target_cell]
            )
        if not math.isclose(logit, plain, rel_tol=1e-4, abs_tol=1e-4):
            raise RuntimeError(
                f"embedding replacement changed the model output ({logit} vs {plain}): the "
                "model's embedding modules are not used as explain.py expects"
            )
        for varying, fixed in stages:
            ig = IntegratedGradients(make_forward(varying, fixed))
            attributions, stage_delta = ig.attribute(
                tuple(actual[n] for n in varying),
                baselines=tuple(base[n] for n in varying),
                n_steps=n_steps,
                method="gausslegendre",
                internal_batch_size=internal_batch_size,
                return_convergence_delta=True,
            )
            delta += float(stage_delta.reshape(-1)[0])
            for name, value in zip(varying, attributions):
                results[name] = value[0].sum(-1).detach().double().cpu().numpy()
    for param in model.parameters():
        param.grad = None
    return Attributions(
        state=results["state"],
        cell=results["cell"],
        dna=results.get("dna"),
        logit=logit,
        baseline_logit=baseline_logit,
        convergence_delta=delta,
    )


# --------------------------------------------------------------------------------------------------
# Attention maps, recomputed from each attention module's own inputs and parameters
# --------------------------------------------------------------------------------------------------


def attention_probabilities(attention: Any, x: Any, rel: Any, half_window: int) -> tuple[Any, Any]:
    """Dense attention probabilities of one attention sublayer and its output, from its parameters.

    ``x`` ``[B, L, C, D]`` is the sublayer's input, ``rel`` the batch's
    :class:`~cpgformer.nn.posenc.RelativePositions`. Plain dense math with a band mask (the
    reference path). Returns ``(probs, output)`` with probs of shape

    * ``cells``: ``[B, L, H, C, C]`` (query cell, key cell at each site);
    * ``sites``: ``[B, C, H, L, L]`` (query site, key site within each cell; 0 outside the band);
    * ``sites_cells``: ``[B, H, C, L, L, C]`` (query cell, query site, key site, key cell).
    """
    import torch

    batch, length, n_cells, _ = x.shape
    heads, dim = attention.heads, attention.head_dim
    q, k, v = attention.qkv(x).view(batch, length, n_cells, 3, heads, dim).unbind(3)
    q = q * dim**-0.5
    if attention.kind == "cells":
        scores = torch.einsum("bicnd,bisnd->bincs", q, k)
        probs = scores.softmax(-1)
        z = torch.einsum("bincs,bisnd->bicnd", probs, v)
    else:
        projected = attention.pos_proj(rel.dense(x.dtype))
        projected = projected.view(batch, length, length, heads, dim)
        index = torch.arange(length, device=x.device)
        band = (index[None, :] - index[:, None]).abs() <= half_window  # [Lq, Lk]
        q_content = q + attention.content_bias
        q_position = q + attention.position_bias
        if attention.kind == "sites":
            scores = torch.einsum("bicnd,bjcnd->bcnij", q_content, k)
            scores = scores + torch.einsum("bicnd,bijnd->bcnij", q_position, projected)
            probs = scores.masked_fill(~band, float("-inf")).softmax(-1)
            z = torch.einsum("bcnij,bjcnd->bicnd", probs, v)
        elif attention.kind == "sites_cells":
            scores = torch.einsum("bicnd,bjsnd->bncijs", q_content, k)
            scores = scores + torch.einsum("bicnd,bijnd->bncij", q_position, projected)[..., None]
            scores = scores.masked_fill(~band[:, :, None], float("-inf"))
            shape = scores.shape
            probs = scores.flatten(-2).softmax(-1).view(shape)
            z = torch.einsum("bncijs,bjsnd->bicnd", probs, v)
        else:
            raise ValueError(f"unknown attention kind {attention.kind!r}")
    output = attention.out(z.reshape(batch, length, n_cells, heads * dim))
    return probs, output


@dataclass
class AttentionMaps:
    """Attention of the queries at one site, per layer (N layers, H heads, C cells, S = 2w+1).

    ``site[n, h, c, s]``: weight that (site t, cell c) gives to site t + offsets[s] of the same cell
    (NaN where that site is outside the chromosome). ``cell[n, h, c, c']``: weight that (t, c) gives
    to (t, c'). For 2D attention (keys = sites x cells) both are marginals of the one distribution.
    Either is ``None`` when the model's mode has no such attention.
    """

    site: np.ndarray | None
    cell: np.ndarray | None
    offsets: np.ndarray
    max_abs_error: float  # recomputed vs the model's own sublayer outputs


def attention_maps(
    model: Any,
    states: Any,
    positions: Any,
    cell_ids: Any,
    target_site: int,
    dna: Any = None,
    check_tolerance: float = 1e-4,
) -> AttentionMaps:
    """Attention weights of every query at ``target_site`` in every layer, for one segment.

    The model runs once (eval mode); forward hooks capture each attention sublayer's input and
    output; the probabilities are recomputed densely from the sublayer's parameters
    (:func:`attention_probabilities`) and the recomputed sublayer outputs are checked against the
    model's own (fast or reference path) to ``check_tolerance`` (relative to the output scale), so
    the maps are provably the ones the model used.
    """
    import torch

    from cpgformer.nn.attention import Attention

    config = model.config
    half = config.half_window
    offsets = np.arange(-half, half + 1, dtype=np.int64)
    captured: list[tuple[int, Any, tuple, Any]] = []
    handles = []
    for layer_index, layer in enumerate(model.layers):
        for module in layer.modules():
            if isinstance(module, Attention):

                def hook(mod: Any, args: tuple, kwargs: dict, output: Any, i: int = layer_index):
                    captured.append((i, mod, args, output.detach()))

                handles.append(module.register_forward_hook(hook, with_kwargs=True))
    try:
        with _eval_mode(model), torch.no_grad():
            model(states, positions, cell_ids, dna=None if dna is None else dna.long())
    finally:
        for handle in handles:
            handle.remove()
    n_layers = len(model.layers)
    heads = config.n_heads
    n_cells = states.shape[2]
    length = states.shape[1]
    site = cell = None
    kinds = set()
    worst = 0.0
    for layer_index, module, args, output in captured:
        x, rel = args[0], args[1]
        with torch.no_grad():
            probs, recomputed = attention_probabilities(module, x, rel, half)
        scale = max(1.0, float(output.abs().max()))
        error = float((recomputed - output).abs().max()) / scale
        worst = max(worst, error)
        if error > check_tolerance:
            raise RuntimeError(
                f"recomputed attention of layer {layer_index + 1} ({module.kind}) differs from the "
                f"model's output by {error:.2e}: attention maps would not be the model's"
            )
        kinds.add(module.kind)
        probs = probs.double().cpu().numpy()[0]
        if module.kind in ("sites", "sites_cells"):
            if module.kind == "sites":
                along = probs[:, :, target_site, :].transpose(1, 0, 2)  # [H, C, Lk]
            else:
                along = probs[:, :, target_site].sum(-1)  # [H, C, Lk]
            if site is None:
                site = np.full((n_layers, heads, n_cells, len(offsets)), np.nan)
            keys = target_site + offsets
            inside = (keys >= 0) & (keys < length)
            site[layer_index][:, :, inside] = along[:, :, keys[inside]]
        if module.kind in ("cells", "sites_cells"):
            if module.kind == "cells":
                across = probs[target_site]  # [H, C, C]
            else:
                across = probs[:, :, target_site].sum(-2)  # [H, C, C]
            if cell is None:
                cell = np.zeros((n_layers, heads, n_cells, n_cells))
            cell[layer_index] = across
    log.debug("attention maps recomputed for kinds %s, max error %.2e", sorted(kinds), worst)
    return AttentionMaps(
        site=None if site is None else site.astype(np.float32),
        cell=None if cell is None else cell.astype(np.float32),
        offsets=offsets,
        max_abs_error=worst,
    )


# --------------------------------------------------------------------------------------------------
# Sites of a store
# --------------------------------------------------------------------------------------------------


def _cell_mapping(
    dataset: Any, model_cells: Sequence[str] | None, n_model_cells: int
) -> np.ndarray:
    """Index into the model's cell table of every store cell (store order)."""
    if model_cells is None:
        if dataset.n_cells != n_model_cells:
            raise UsageError(
                f"the store has {dataset.n_cells} cells but the model was trained on "
                f"{n_model_cells} (and the checkpoint names no cells)"
            )
        return np.arange(dataset.n_cells, dtype=np.int64)
    lookup = {name: i for i, name in enumerate(model_cells)}
    missing = [name for name in dataset.cells if name not in lookup]
    if missing:
        raise UsageError(
            f"{len(missing)} store cell(s) are not in the model's cell table (e.g. {missing[0]!r}); "
            "a model can only explain the cells it was trained on"
        )
    return np.array([lookup[name] for name in dataset.cells], dtype=np.int64)


def _resolve_cell(query: SiteQuery, cells: Sequence[str]) -> int:
    if query.cell in cells:
        return list(cells).index(query.cell)
    if re.fullmatch(r"\d+", query.cell) and int(query.cell) < len(cells):
        return int(query.cell)
    raise query.error(f"cell {query.cell!r} is not in the store (names or 0-based indices)")


def _site_row(query: SiteQuery, dataset: Any) -> int:
    if query.chrom not in dataset.chromosomes:
        raise query.error(f"chromosome {query.chrom!r} is not in the store")
    positions = dataset.positions(query.chrom)
    row = int(np.searchsorted(positions, query.position))
    if row >= len(positions) or int(positions[row]) != query.position:
        near = [int(positions[i]) for i in (row - 1, row) if 0 <= i < len(positions)]
        hint = f" (nearest: {', '.join(map(str, near))})" if near else ""
        raise query.error(
            f"{query.chrom}:{query.position} is not a site of the store (0-based + strand C){hint}"
        )
    return row


def explain_sites(
    model: Any,
    dataset: Any,
    sites: Sequence[SiteQuery],
    reference: Any = None,
    n_steps: int = 50,
    baseline: str = "unknown",
    *,
    cells: Sequence[str] | None = None,
    attention: bool = True,
    internal_batch_size: int | None = None,
    device: Any = None,
) -> list[SiteExplanation]:
    """Explain the model's prediction for every query (see the module docstring).

    ``model``: a :class:`~cpgformer.nn.CpGTransformer`; ``dataset``: an open store; ``reference``: a
    :class:`~cpgformer.io.fasta.Reference` (required when the model uses DNA); ``cells``: the
    checkpoint's cell names (store cells are matched to them by name; ``None`` = same order).
    ``device``: where to run (default: the model's device). Returns one
    :class:`SiteExplanation` per query, in order.
    """
    import torch

    from cpgformer.codes import to_model_input
    from cpgformer.utils.progress import progress

    config = model.config
    if config.has_dna and reference is None:
        raise UsageError(
            "this model uses DNA (dna_window "
            f"{config.dna_window}): a reference FASTA is needed (--fasta)"
        )
    if device is not None:
        model = model.to(device)
    device = next(model.parameters()).device
    cell_ids = _cell_mapping(dataset, cells, config.n_cells)
    radius = model.receptive_field_sites
    continuous = config.data_mode == "continuous"
    results = []
    for query in progress(sites, desc="explain", unit="site"):
        row = _site_row(query, dataset)
        target_cell = _resolve_cell(query, dataset.cells)
        start, stop = site_window(dataset.n_sites(query.chrom), row, radius)
        if continuous:
            stored = np.asarray(dataset.betas(query.chrom, start, stop), dtype=np.float32)
        else:
            stored = np.asarray(dataset.states(query.chrom, start, stop), dtype=np.float32)
        target_index = row - start
        if query.label_change is not None:
            value = query.label_change
            if not continuous and value not in (-1.0, 0.0, 1.0):
                raise query.error(f"label change {value:g}: a binary model takes mask/-1, 0 or 1")
            stored[target_index, target_cell] = value
        positions = np.asarray(dataset.positions(query.chrom)[start:stop], dtype=np.int64)
        model_input = to_model_input(stored)
        states_t = torch.as_tensor(model_input, device=device)
        states_t = (states_t.float() if continuous else states_t.long()).unsqueeze(0)
        if continuous:
            states_t = states_t.to(next(model.parameters()).dtype)
        positions_t = torch.as_tensor(positions - positions[0], device=device).unsqueeze(0)
        cells_t = torch.as_tensor(cell_ids, device=device).unsqueeze(0)
        dna = dna_t = None
        if config.has_dna:
            dna = dna_windows(reference, query.chrom, positions, int(config.dna_window))
            dna_t = torch.as_tensor(dna, device=device).long().unsqueeze(0)
        attrs = integrated_gradients(
            model,
            states_t,
            positions_t,
            cells_t,
            target_index,
            target_cell,
            dna=dna_t,
            n_steps=n_steps,
            baseline=baseline,
            internal_batch_size=internal_batch_size,
        )
        maps = None
        if attention and len(model.layers) and config.attention_kinds:
            maps = attention_maps(model, states_t, positions_t, cells_t, target_index, dna=dna_t)
        cell_totals = attrs.state.sum(axis=0) + attrs.cell
        results.append(
            SiteExplanation(
                query=query,
                chrom=query.chrom,
                cells=list(dataset.cells),
                target_cell=target_cell,
                site_rows=np.arange(start, stop, dtype=np.int64),
                positions=positions,
                target_index=target_index,
                states=stored,
                logit=attrs.logit,
                baseline_logit=attrs.baseline_logit,
                state_attribution=attrs.state,
                cell_attribution=attrs.cell,
                cell_totals=cell_totals,
                convergence_delta=attrs.convergence_delta,
                n_steps=n_steps,
                dna=dna,
                dna_attribution=attrs.dna,
                site_attention=None if maps is None else maps.site,
                cell_attention=None if maps is None else maps.cell,
                site_offsets=None if maps is None else maps.offsets,
            )
        )
        change = attrs.logit - attrs.baseline_logit
        if abs(attrs.convergence_delta) > 0.05 * max(abs(change), 0.1):
            log.warning(
                "%s:%d cell %s: integration error %.2e is large against the explained change "
                "%.3f; use more steps (--n-steps, now %d)",
                query.chrom,
                query.position,
                dataset.cells[target_cell],
                attrs.convergence_delta,
                change,
                n_steps,
            )
        log.info(
            "%s:%d cell %s: logit %+.3f (baseline %+.3f), attributions sum %+.3f, delta %.2e",
            query.chrom,
            query.position,
            dataset.cells[target_cell],
            attrs.logit,
            attrs.baseline_logit,
            attrs.total,
            attrs.convergence_delta,
        )
    return results


# --------------------------------------------------------------------------------------------------
# Figures (matplotlib, Agg canvas; no global pyplot state)
# --------------------------------------------------------------------------------------------------


def _new_figure(width: float, height: float) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Any, path: str | os.PathLike[str] | None, dpi: int = 120) -> None:
    if path is None:
        return
    from cpgformer.utils.atomic import atomic_path

    target = Path(path)
    with atomic_path(target) as tmp:
        fig.savefig(tmp, dpi=dpi, format=target.suffix.lstrip(".") or "png")


def _symmetric_limit(values: np.ndarray) -> float:
    finite = np.abs(values[np.isfinite(values)])
    vmax = float(finite.max()) if finite.size else 0.0
    return vmax if vmax > 0 else 1.0


def _title(expl: SiteExplanation) -> str:
    q = expl.query
    change = "" if q.label_change is None else f", input {q.label_change_text}"
    return (
        f"{expl.chrom}:{q.position} (0-based C), cell {expl.cells[expl.target_cell]}{change}: "
        f"p(methylated) = {expl.probability:.3f}, logit {expl.logit:+.3f} "
        f"(baseline {expl.baseline_logit:+.3f})"
    )


def _cell_ticks(ax: Any, cells: Sequence[str], target: int, axis: str = "y") -> None:
    n = len(cells)
    step = max(1, math.ceil(n / 40))
    ticks = list(range(0, n, step))
    if target not in ticks:
        ticks.append(target)
        ticks.sort()
    labels = [cells[i] for i in ticks]
    size = 8 if n <= 40 else 6
    if axis == "y":
        ax.set_yticks(ticks, labels, fontsize=size)
        for tick, i in zip(ax.get_yticklabels(), ticks):
            if i == target:
                tick.set_fontweight("bold")
    else:
        ax.set_xticks(ticks, labels, fontsize=size, rotation=90)
        for tick, i in zip(ax.get_xticklabels(), ticks):
            if i == target:
                tick.set_fontweight("bold")


def plot_attributions(expl: SiteExplanation, path: str | os.PathLike[str] | None = None) -> Any:
    """Heatmap cells x sites of the call-state attributions (observed calls marked: filled dot
    methylated, open dot unmethylated), with the per-cell totals beside it. Returns the figure."""
    from matplotlib.patches import Rectangle
    from matplotlib.ticker import MaxNLocator

    attr = expl.state_attribution.T  # [C, L]
    n_cells, n_sites = attr.shape
    offsets = np.arange(n_sites) - expl.target_index
    width = min(18.0, 4.0 + 0.14 * n_sites)
    height = min(14.0, 2.0 + 0.22 * n_cells)
    fig = _new_figure(width + 2.5, height)
    grid = fig.add_gridspec(1, 2, width_ratios=[width, 2.5])
    ax = fig.add_subplot(grid[0, 0])
    vmax = _symmetric_limit(attr)
    extent = (offsets[0] - 0.5, offsets[-1] + 0.5, n_cells - 0.5, -0.5)
    image = ax.imshow(
        attr,
        cmap="RdBu_r",
        vmin=-vmax,
        vmax=vmax,
        aspect="auto",
        interpolation="nearest",
        extent=extent,
    )
    states = expl.states.T
    meth_c, meth_s = np.nonzero(states >= 0.5)
    unmeth_c, unmeth_s = np.nonzero((states >= 0) & (states < 0.5))
    marker = 9 if n_cells * n_sites <= 2000 else 4
    ax.scatter(offsets[meth_s], meth_c, s=marker, c="black", linewidths=0, label="methylated")
    ax.scatter(
        offsets[unmeth_s],
        unmeth_c,
        s=marker,
        facecolors="none",
        edgecolors="black",
        linewidths=0.6,
        label="unmethylated",
    )
    ax.add_patch(
        Rectangle((-0.5, expl.target_cell - 0.5), 1, 1, fill=False, edgecolor="gold", linewidth=2)
    )
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("site offset from the target (CpG sites)")
    ax.set_ylabel("cell")
    _cell_ticks(ax, expl.cells, expl.target_cell)
    ax.set_title("call-state attribution (integrated gradients on the logit)", fontsize=9)
    fig.colorbar(image, ax=ax, shrink=0.6, pad=0.01, label="attribution")
    ax.legend(
        loc="upper center",
        bbox_to_anchor=(0.5, -0.12),
        ncol=2,
        fontsize=7,
        markerscale=1.5,
        frameon=False,
    )

    side = fig.add_subplot(grid[0, 1], sharey=ax)
    totals = expl.cell_totals
    colors = np.where(totals >= 0, "#b2182b", "#2166ac")
    side.barh(np.arange(n_cells), totals, color=colors, height=0.8)
    side.barh(
        np.arange(n_cells),
        expl.cell_attribution,
        height=0.35,
        color="none",
        edgecolor="black",
        linewidth=0.6,
        label="cell embedding part",
    )
    side.axvline(0, color="grey", linewidth=0.5)
    side.set_xlabel("cell total")
    side.tick_params(labelleft=False)
    side.legend(loc="upper center", bbox_to_anchor=(0.5, -0.12), fontsize=7, frameon=False)
    fig.suptitle(_title(expl), fontsize=9)
    _save(fig, path)
    return fig


def plot_dna_track(
    expl: SiteExplanation, path: str | os.PathLike[str] | None = None, zoom: int = 40
) -> Any:
    """DNA attribution of the target site's window: the whole window, a zoom of +-``zoom`` bp
    with the bases written out, and the summed per-base attribution of every site in the field."""
    from matplotlib.ticker import MaxNLocator

    from cpgformer.codes import NUCLEOTIDE_LETTERS

    if expl.dna_attribution is None or expl.dna is None:
        raise UsageError("this explanation has no DNA attribution (the model uses no DNA)")
    track = expl.dna_attribution[expl.target_index]
    bases = expl.dna[expl.target_index]
    width = track.shape[0]
    half = (width - 1) // 2
    offsets = np.arange(width) - half
    fig = _new_figure(12, 7)
    axes = fig.subplots(3, 1, height_ratios=[1, 1, 1.4])
    vmax = _symmetric_limit(track)
    colors = np.where(track >= 0, "#b2182b", "#2166ac")
    axes[0].bar(offsets, track, width=1.0, color=colors)
    axes[0].set_xlim(offsets[0] - 0.5, offsets[-1] + 0.5)
    axes[0].set_ylim(-vmax * 1.05, vmax * 1.05)
    axes[0].set_ylabel("attribution")
    axes[0].set_title("DNA window of the target site (bp offset from the C)", fontsize=9)
    z = min(zoom, half)
    sel = slice(half - z, half + z + 1)
    axes[1].bar(offsets[sel], track[sel], width=0.9, color=colors[sel])
    zmax = _symmetric_limit(track[sel])
    axes[1].set_ylim(-zmax * 1.3, zmax * 1.3)
    for off, code, value in zip(offsets[sel], bases[sel], track[sel]):
        letter = NUCLEOTIDE_LETTERS[int(code)]
        y = value + (0.08 * zmax if value >= 0 else -0.08 * zmax)
        axes[1].text(
            off,
            y,
            letter,
            ha="center",
            va="bottom" if value >= 0 else "top",
            fontsize=7,
            fontweight="bold" if off in (0, 1) else "normal",
        )
    axes[1].set_xlim(-z - 0.5, z + 0.5)
    axes[1].set_ylabel("attribution")
    axes[1].set_title(f"zoom: +-{z} bp (target CpG at 0, 1)", fontsize=9)
    rows = expl.dna_attribution
    site_offsets = np.arange(rows.shape[0]) - expl.target_index
    rmax = _symmetric_limit(rows)
    image = axes[2].imshow(
        rows,
        cmap="RdBu_r",
        vmin=-rmax,
        vmax=rmax,
        aspect="auto",
        interpolation="nearest",
        extent=(offsets[0] - 0.5, offsets[-1] + 0.5, site_offsets[-1] + 0.5, site_offsets[0] - 0.5),
    )
    axes[2].set_xlabel("bp offset from each site's C")
    axes[2].set_ylabel("site offset")
    axes[2].yaxis.set_major_locator(MaxNLocator(integer=True))
    axes[2].set_title("per-base attribution of every site's DNA window", fontsize=9)
    fig.colorbar(image, ax=axes[2], shrink=0.8, pad=0.01)
    fig.suptitle(_title(expl), fontsize=9)
    _save(fig, path)
    return fig


def plot_attention(expl: SiteExplanation, path: str | os.PathLike[str] | None = None) -> Any:
    """Per layer: attention of the target (site, cell) along the site window (heads x offsets) and
    across cells (heads x cells)."""
    from matplotlib.ticker import MaxNLocator

    panels = [
        (name, values)
        for name, values in (("site", expl.site_attention), ("cell", expl.cell_attention))
        if values is not None
    ]
    if not panels:
        raise UsageError("this explanation has no attention maps (the model has no attention)")
    n_layers = panels[0][1].shape[0]
    fig = _new_figure(5.5 * len(panels), 1.2 + 1.6 * n_layers)
    axes = np.asarray(fig.subplots(n_layers, len(panels), squeeze=False))
    for col, (name, values) in enumerate(panels):
        target = values[:, :, expl.target_cell, :]  # [N, H, S] or [N, H, C]
        finite = target[np.isfinite(target)]
        vmax = float(finite.max()) if finite.size and finite.max() > 0 else 1.0
        image = None
        for layer in range(n_layers):
            ax = axes[layer, col]
            weights = target[layer]
            if name == "site":
                offs = expl.site_offsets
                assert offs is not None
                extent = (offs[0] - 0.5, offs[-1] + 0.5, weights.shape[0] - 0.5, -0.5)
                image = ax.imshow(
                    weights,
                    cmap="viridis",
                    vmin=0,
                    vmax=vmax,
                    aspect="auto",
                    interpolation="nearest",
                    extent=extent,
                )
                ax.xaxis.set_major_locator(MaxNLocator(integer=True))
                ax.set_xlabel("site offset" if layer == n_layers - 1 else "")
                ax.set_title(f"layer {layer + 1}: along the site window", fontsize=8)
            else:
                image = ax.imshow(
                    weights,
                    cmap="viridis",
                    vmin=0,
                    vmax=vmax,
                    aspect="auto",
                    interpolation="nearest",
                )
                _cell_ticks(ax, expl.cells, expl.target_cell, axis="x")
                ax.set_title(f"layer {layer + 1}: across cells", fontsize=8)
            ax.set_ylabel("head")
            ax.set_yticks(range(weights.shape[0]), [str(h + 1) for h in range(weights.shape[0])])
        fig.colorbar(image, ax=list(axes[:, col]), shrink=0.6, pad=0.01, label="weight")
    fig.suptitle(
        f"attention of {expl.chrom}:{expl.query.position}, cell {expl.cells[expl.target_cell]}",
        fontsize=9,
    )
    _save(fig, path)
    return fig
