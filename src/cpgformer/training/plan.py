"""Before training: fit a step into a memory budget, and say how long steps and epochs will take.

* :func:`fit_to_memory` shortens segments, then trains on random cell subsets per batch
  (``resample_cells``), until the activations of one training step fit the budget;
* :func:`estimate_step` times one real training step of the model on random inputs of the planned
  shape (a probe of at most ``PROBE_TOKENS`` tokens, scaled by the number of tokens: the cost per
  token of every mode depends on the cells per batch, which the probe keeps, not on the sites);
* :func:`advice` turns an impractical plan into a concrete suggestion (for many cells: the induced
  mode with the profile cell encoder, and cell subsets per batch).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import time
from dataclasses import dataclass
from typing import Any

import torch

from cpgformer.nn import CpGTransformer, ModelConfig

log = logging.getLogger(__name__)

ACTIVATION_BYTES_PER_TOKEN_LAYER_PER_HIDDEN = 96
"""Training activations kept for backward, per token, layer and hidden unit (about 6 KB per token
and layer at hidden 64, the figure measured for the fast path)."""
DNA_BYTES_PER_SITE = 1 << 20
"""The DNA network's training activations per site (one 1,001 bp window): about 1 MiB."""
PROBE_TOKENS = 1 << 14
MIN_SEGMENT = 128
SLOW_STEP_SECONDS = 30.0
MANY_CELLS = 256
"""From this many cells per batch, attention across all cells dominates a step: suggest induced."""


@dataclass
class StepEstimate:
    seconds_per_step: float
    steps_per_epoch: int
    tokens_per_step: int
    activation_gb: float

    @property
    def seconds_per_epoch(self) -> float:
        return self.seconds_per_step * self.steps_per_epoch

    @property
    def tokens_per_second(self) -> float:
        return self.tokens_per_step / self.seconds_per_step if self.seconds_per_step else math.inf


def available_memory_gb() -> float:
    """Memory this process may use: MemAvailable of /proc/meminfo, else physical memory."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) / 2**20
    except OSError:
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError, AttributeError):
        return 8.0


def activation_gb(config: ModelConfig, sites: int, cells: int) -> float:
    """Activations of one training step of ``sites`` sites (all segments) x ``cells`` cells."""
    per_token = (
        ACTIVATION_BYTES_PER_TOKEN_LAYER_PER_HIDDEN * config.hidden * max(1, config.n_layers)
    )
    per_site = DNA_BYTES_PER_SITE if config.has_dna else 0
    return (sites * cells * per_token + sites * per_site) / 2**30


def cells_per_batch(n_cells: int, resample_cells: int | None) -> int:
    return min(n_cells, resample_cells) if resample_cells else n_cells


def fit_to_memory(config: ModelConfig, data: Any, n_cells: int, budget_gb: float) -> Any:
    """``data`` (a DataConfig) with segments shortened, then cells subsampled per batch, so that
    one training step's activations fit ``budget_gb``; unchanged when they already fit."""
    cells = cells_per_batch(n_cells, data.resample_cells)

    def need(length: int, c: int) -> float:
        return activation_gb(config, data.batch_size * length, c)

    if need(data.segment_length, cells) <= budget_gb:
        return data
    floor = max(MIN_SEGMENT, 2 * config.receptive_field_sites + 1)
    length = data.segment_length
    while length > floor and need(length, cells) > budget_gb:
        length = max(floor, length // 2)
    changes: dict[str, Any] = {}
    if length != data.segment_length:
        changes["segment_length"] = length
    if need(length, cells) > budget_gb:
        per_cell = need(length, 1)
        changes["resample_cells"] = max(2, int(budget_gb / per_cell))
    log.warning(
        "a training step of %d x %d sites x %d cells needs ~%.1f GB of activations, over the "
        "memory budget of %.1f GB: using %s",
        data.batch_size,
        data.segment_length,
        cells,
        need(data.segment_length, cells),
        budget_gb,
        ", ".join(f"{k.replace('_', '-')} {v}" for k, v in changes.items()),
    )
    return dataclasses.replace(data, **changes)


def estimate_step(
    config: ModelConfig,
    *,
    cells: int,
    segment_length: int,
    batch_size: int,
    steps_per_epoch: int,
    device: str | torch.device = "cpu",
) -> StepEstimate:
    """Time one training step (forward + backward) of ``config`` at ``cells`` cells per batch on a
    probe of at most ``PROBE_TOKENS`` tokens and scale it to the planned step."""
    dev = torch.device(device)
    probe_sites = max(1, min(segment_length, PROBE_TOKENS // max(1, cells)))
    probe_config = dataclasses.replace(config, n_cells=cells)
    state = torch.random.get_rng_state()
    try:
        torch.manual_seed(0)
        model = CpGTransformer(probe_config).to(dev).train()
        if probe_config.uses_profiles:
            model.set_cell_profiles(torch.randn(cells, probe_config.profile_features))
        states = torch.randint(0, 3, (1, probe_sites, cells), device=dev)
        if probe_config.data_mode == "continuous":
            states = states.float()
        positions = torch.arange(probe_sites, device=dev).unsqueeze(0) * 50
        cell_ids = torch.arange(cells, device=dev).unsqueeze(0)
        dna: dict = {}
        if probe_config.has_dna:  # as training batches carry it: the covered sequence + starts
            span = int(positions[0, -1]) + (probe_config.dna_window or 0)
            dna["dna_sequence"] = torch.randint(0, 4, (1, span), device=dev)
            dna["dna_starts"] = positions

        def step() -> float:
            start = time.perf_counter()
            model.zero_grad(set_to_none=True)
            model(states, positions, cell_ids, **dna).float().square().mean().backward()
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
            return time.perf_counter() - start

        first = step()
        seconds = step() if first < 20.0 else first  # a second, warm call when affordable
    finally:
        torch.random.set_rng_state(state)
    tokens = batch_size * segment_length * cells
    scale = tokens / (probe_sites * cells)
    memory = activation_gb(config, batch_size * segment_length, cells)
    return StepEstimate(seconds * scale, steps_per_epoch, tokens, memory)


def advice(config: ModelConfig, cells: int, estimate: StepEstimate) -> str | None:
    """A suggestion when a step is impractically slow; None when the plan is fine."""
    if estimate.seconds_per_step < SLOW_STEP_SECONDS:
        return None
    parts = []
    if "cells" in config.attention_kinds or "sites_cells" in config.attention_kinds:
        if cells >= MANY_CELLS:
            parts.append("--mode induced --cell-encoder profile (cost per cell flat in the cells)")
    target = max(16, int(cells * SLOW_STEP_SECONDS / (4 * estimate.seconds_per_step)))
    if target < cells:
        parts.append(f"--resample-cells {target}")
    if config.hidden > 32:
        parts.append("a smaller model (--hidden 32 --n-layers 2 --n-heads 4)")
    return "; ".join(parts) if parts else None


def report_plan(
    config: ModelConfig,
    dm: Any,
    data: Any,
    training: Any,
    n_cells: int,
) -> StepEstimate:
    """Log the estimated time per step and epoch before training (``dm``: the data module,
    ``data``/``training``: the run's DataConfig and TrainConfig); warn with a concrete suggestion
    when a step would take impractically long."""
    cells = cells_per_batch(n_cells, data.resample_cells)
    device = "cpu"
    if training.accelerator in ("gpu", "cuda", "auto") and torch.cuda.is_available():
        device = "cuda"
    estimate = estimate_step(
        config,
        cells=cells,
        segment_length=min(data.segment_length, max(s.length for s in dm.splits["train"])),
        batch_size=data.batch_size,
        steps_per_epoch=math.ceil(len(dm.splits["train"]) / data.batch_size),
        device=device,
    )
    log.info(
        "plan: ~%.2f s per training step of %d tokens on %s (~%.0f tokens/s), ~%s per epoch of %d "
        "steps; ~%.1f GB of activations",
        estimate.seconds_per_step,
        estimate.tokens_per_step,
        device,
        estimate.tokens_per_second,
        duration(estimate.seconds_per_epoch),
        estimate.steps_per_epoch,
        estimate.activation_gb,
    )
    suggestion = advice(config, cells, estimate)
    if suggestion:
        log.warning(
            "one training step will take ~%s (%d cells per batch): consider %s",
            duration(estimate.seconds_per_step),
            cells,
            suggestion,
        )
    return estimate


def duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
