"""Explaining chosen predictions of a store: attributions and attention maps per query."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from cpgformer.codes import MISSING, to_model_input
from cpgformer.errors import UsageError
from cpgformer.explain.attention import attention_maps
from cpgformer.explain.attribution import integrated_gradients
from cpgformer.explain.queries import SiteQuery, dna_windows, resolve_cell, site_row, site_window
from cpgformer.explain.results import SiteExplanation
from cpgformer.model import Model
from cpgformer.utils.progress import progress

log = logging.getLogger(__name__)


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
    ignore_fingerprint: bool = False,
) -> list[SiteExplanation]:
    """Explain the model's prediction for every query (see the module docstring).

    ``model``: a :class:`~cpgformer.model.Model` (store and model must go together:
    :meth:`~cpgformer.model.Model.check`, with ``ignore_fingerprint``) or a bare
    :class:`~cpgformer.nn.CpGTransformer` with its ``cells`` (names of its cell table; ``None`` = the
    store's order); ``dataset``: an open store; ``reference``: a
    :class:`~cpgformer.io.fasta.Reference` (required when the model uses DNA).
    ``device``: where to run (default: the model's device). Returns one
    :class:`SiteExplanation` per query, in order.
    """
    if not isinstance(model, Model):
        model = Model(model, cells=None if cells is None else list(cells))
    cell_ids = model.check(dataset, ignore_fingerprint)
    network = model.require_network("explaining")
    config = network.config
    if config.has_dna and reference is None:
        raise UsageError(
            "this model uses DNA (dna_window "
            f"{config.dna_window}): a reference FASTA is needed (--fasta)"
        )
    if device is not None:
        network = network.to(device)
    results = []
    for query in progress(sites, desc="explain", unit="site"):
        window = _Window.of(query, dataset, network, reference)
        inputs = window.tensors(network, cell_ids)
        attrs = integrated_gradients(
            network,
            *inputs,
            window.target_index,
            window.target_cell,
            dna=window.dna_tensor(network),
            n_steps=n_steps,
            baseline=baseline,
            internal_batch_size=internal_batch_size,
        )
        maps = None
        if attention and len(network.layers) and config.attention_kinds:
            dna_t = window.dna_tensor(network)
            maps = attention_maps(network, *inputs, window.target_index, dna=dna_t)
        results.append(window.explanation(query, dataset, attrs, maps, n_steps))
        _log_result(query, dataset.cells[window.target_cell], attrs, n_steps)
    return results


@dataclass
class _Window:
    """The receptive field of one query: stored inputs (with the query's label change) and DNA."""

    start: int
    stop: int
    target_index: int
    target_cell: int
    stored: np.ndarray  # float32 [L, C] stored labels or betas (MISSING where unobserved)
    positions: np.ndarray  # int64 [L]
    dna: np.ndarray | None  # int8 [L, W]

    @classmethod
    def of(cls, query: SiteQuery, dataset: Any, network: Any, reference: Any) -> _Window:
        config = network.config
        continuous = config.data_mode == "continuous"
        row = site_row(query, dataset)
        target_cell = resolve_cell(query, dataset.cells)
        start, stop = site_window(dataset.n_sites(query.chrom), row, network.receptive_field_sites)
        read = dataset.betas if continuous else dataset.states
        stored = np.asarray(read(query.chrom, start, stop), dtype=np.float32)
        if query.label_change is not None:
            value = query.label_change
            if not continuous and value not in (MISSING, 0, 1):
                raise query.error(f"label change {value:g}: a binary model takes mask/-1, 0 or 1")
            stored[row - start, target_cell] = value
        positions = np.asarray(dataset.positions(query.chrom)[start:stop], dtype=np.int64)
        dna = None
        if config.has_dna:
            dna = dna_windows(reference, query.chrom, positions, int(config.dna_window))
        return cls(start, stop, row - start, target_cell, stored, positions, dna)

    def tensors(self, network: Any, cell_ids: np.ndarray) -> tuple[Any, Any, Any]:
        """``states [1, L, C]``, ``positions [1, L]``, ``cell_ids [1, C]`` on the model's device."""
        device = next(network.parameters()).device
        states = torch.as_tensor(to_model_input(self.stored), device=device)
        if network.config.data_mode == "continuous":
            states = states.to(next(network.parameters()).dtype)
        else:
            states = states.long()
        positions = torch.as_tensor(self.positions - self.positions[0], device=device)
        cells = torch.as_tensor(cell_ids, device=device)
        return states.unsqueeze(0), positions.unsqueeze(0), cells.unsqueeze(0)

    def dna_tensor(self, network: Any) -> Any:
        if self.dna is None:
            return None
        device = next(network.parameters()).device
        return torch.as_tensor(self.dna, device=device).long().unsqueeze(0)

    def explanation(
        self, query: SiteQuery, dataset: Any, attrs: Any, maps: Any, n_steps: int
    ) -> SiteExplanation:
        return SiteExplanation(
            query=query,
            chrom=query.chrom,
            cells=list(dataset.cells),
            target_cell=self.target_cell,
            site_rows=np.arange(self.start, self.stop, dtype=np.int64),
            positions=self.positions,
            target_index=self.target_index,
            states=self.stored,
            logit=attrs.logit,
            baseline_logit=attrs.baseline_logit,
            state_attribution=attrs.state,
            cell_attribution=attrs.cell,
            cell_totals=attrs.state.sum(axis=0) + attrs.cell,
            convergence_delta=attrs.convergence_delta,
            n_steps=n_steps,
            dna=self.dna,
            dna_attribution=attrs.dna,
            site_attention=None if maps is None else maps.site,
            cell_attention=None if maps is None else maps.cell,
            site_offsets=None if maps is None else maps.offsets,
        )


def _log_result(query: SiteQuery, cell: str, attrs: Any, n_steps: int) -> None:
    """One line per explanation; a warning when the integration error is large."""
    change = attrs.logit - attrs.baseline_logit
    if abs(attrs.convergence_delta) > 0.05 * max(abs(change), 0.1):
        log.warning(
            "%s:%d cell %s: integration error %.2e is large against the explained change "
            "%.3f; use more steps (--n-steps, now %d)",
            query.chrom,
            query.position,
            cell,
            attrs.convergence_delta,
            change,
            n_steps,
        )
    log.info(
        "%s:%d cell %s: logit %+.3f (baseline %+.3f), attributions sum %+.3f, delta %.2e",
        query.chrom,
        query.position,
        cell,
        attrs.logit,
        attrs.baseline_logit,
        attrs.total,
        attrs.convergence_delta,
    )
