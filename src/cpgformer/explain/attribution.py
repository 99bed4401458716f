"""Integrated gradients on the outputs of the model's input embeddings (Captum)."""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from cpgformer.codes import CODE_N
from cpgformer.errors import UsageError
from cpgformer.nn.posenc import RelativePositions

log = logging.getLogger(__name__)

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
def eval_mode(model: Any) -> Iterator[None]:
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


def _cell_module(model: Any) -> Any:
    """The module whose output is the cell vectors (table or profile encoder; None: no identity)."""
    if not model.config.cell_identity:
        return None
    return model.cell_encoder if model.config.uses_profiles else model.cell_embed


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
    from captum.attr import IntegratedGradients

    if baseline not in BASELINES:
        raise UsageError(f"baseline must be one of {BASELINES}, got {baseline!r}")
    if n_steps < 1:
        raise UsageError(f"n_steps must be >= 1, got {n_steps}")
    if states.dim() != 3 or states.shape[0] != 1:
        raise ValueError(f"states must be [1, L, C], got {tuple(states.shape)}")
    if model.dna_encoder is not None and dna is None:
        raise UsageError("this model uses DNA: DNA windows (a reference FASTA) are required")
    seg = _Segment(model, states, positions, cell_ids, dna, target_site, target_cell)
    actual, base = seg.endpoints(baseline)
    names = list(actual)
    if internal_batch_size is None:
        internal_batch_size = seg.default_batch()
    internal_batch_size = min(internal_batch_size, n_steps)
    if baseline == "unknown":
        # stage 1: cells from 0 with no data; stage 2: data from unknown with the actual cells
        stages = [(["cell"], base)] if "cell" in names else []
        stages.append(([n for n in names if n != "cell"], actual))
    else:
        stages = [(names, {})]
    results: dict[str, Any] = {}
    delta = 0.0
    with eval_mode(model):
        logit, baseline_logit = seg.endpoint_logits(actual, base)
        for varying, fixed in stages:
            ig = IntegratedGradients(seg.forward(names, varying, fixed))
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
        cell=results.get("cell", np.zeros(states.shape[2])),
        dna=results.get("dna"),
        logit=logit,
        baseline_logit=baseline_logit,
        convergence_delta=delta,
    )


@dataclass
class _Segment:
    """One segment and target of :func:`integrated_gradients`: the embedding outputs at both ends
    of the path, and the target logit as a function of embedding outputs."""

    model: Any
    states: Any
    positions: Any
    cell_ids: Any
    dna: Any
    target_site: int
    target_cell: int

    def __post_init__(self) -> None:
        self.encoder = self.model.dna_encoder
        self.cell_module = _cell_module(self.model)
        self.dna = None if self.encoder is None else self.dna.long()

    def endpoints(self, baseline: str) -> tuple[dict[str, Any], dict[str, Any]]:
        """Embedding outputs ``state``, ``cell`` (unless cells carry no identity), ``dna`` (DNA
        models) of the inputs and of the baseline."""
        model, states = self.model, self.states
        with eval_mode(model), torch.no_grad():
            actual = {"state": model.state_embed(states)}
            if baseline == "unknown":
                base = {"state": model.state_embed(torch.zeros_like(states))}
            else:
                base = {"state": torch.zeros_like(actual["state"])}
            if self.cell_module is not None:
                actual["cell"] = model.cell_vectors(self.cell_ids)
                base["cell"] = torch.zeros_like(actual["cell"])
            if self.encoder is not None:
                codes = self.dna.reshape(states.shape[1], self.dna.shape[-1])
                actual["dna"] = self.encoder.nucleotide_embed(codes).unsqueeze(0)  # [1, L, W, 4]
                if baseline == "unknown":
                    unknown = torch.full_like(codes, CODE_N)
                    base["dna"] = self.encoder.nucleotide_embed(unknown).unsqueeze(0)
                else:
                    base["dna"] = torch.zeros_like(actual["dna"])
        return actual, base

    def default_batch(self) -> int:
        """Path points per forward/backward chunk, bounded by tokens (and DNA windows)."""
        length, n_cells = self.states.shape[1], self.states.shape[2]
        batch = max(1, _TOKENS_PER_CHUNK // max(1, length * n_cells))
        if self.encoder is not None:
            batch = min(batch, max(1, _DNA_WINDOWS_PER_CHUNK // length))
        return batch

    def forward(self, names: Sequence[str], varying: Sequence[str], fixed: dict[str, Any]) -> Any:
        """The target logit as a function of the ``varying`` embedding outputs (batch first); the
        others are held at ``fixed``."""
        model, length = self.model, self.states.shape[1]

        def forward(*embeddings: Any) -> Any:
            n = embeddings[0].shape[0]
            values = dict(zip(varying, embeddings))
            for name in names:
                if name not in values:
                    values[name] = fixed[name].expand(n, *fixed[name].shape[1:])
            replacements = [(model.state_embed, values["state"])]
            if self.cell_module is not None:
                replacements.append((self.cell_module, values["cell"]))
            if self.encoder is not None:
                flat = values["dna"].reshape(n * length, *values["dna"].shape[2:])
                replacements.append((self.encoder.nucleotide_embed, flat))
            with _replaced_outputs(replacements):
                return _target_logit(
                    model,
                    self.states.expand(n, -1, -1),
                    self.positions.expand(n, -1),
                    self.cell_ids.expand(n, -1),
                    None if self.dna is None else self.dna.expand(n, -1, -1),
                    self.target_site,
                    self.target_cell,
                )

        return forward

    def endpoint_logits(self, actual: dict[str, Any], base: dict[str, Any]) -> tuple[float, float]:
        """Logits at both ends of the path, the input end checked against a plain model call."""
        names = list(actual)
        full = self.forward(names, names, {})
        with torch.no_grad():
            logit = float(full(*(actual[n] for n in names))[0])
            baseline_logit = float(full(*(base[n] for n in names))[0])
            out = self.model(self.states, self.positions, self.cell_ids, dna=self.dna)
            plain = float(out[0, self.target_site, self.target_cell])
        if not math.isclose(logit, plain, rel_tol=1e-4, abs_tol=1e-4):
            raise RuntimeError(
                f"embedding replacement changed the model output ({logit} vs {plain}): the "
                "model's embedding modules are not used as cpgformer.explain expects"
            )
        return logit, baseline_logit
