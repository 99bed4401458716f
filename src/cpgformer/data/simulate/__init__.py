"""Simulate single-cell methylomes with known truth.

The simulator reproduces the statistics that matter for imputation (see ``docs/simulation.md``):

* **Sequence-driven methylation.** CpG sites come from a real sequence (FASTA) or a synthetic genome with
  CpG-island-like dense regions. The number of CpGs within ±250 bp sets the bulk methylation level: dense
  regions (> 30 CpGs) are ~1–4 % methylated, sparse regions 65–80 %.
* **Regions and cell types.** Each chromosome is cut into regions of 0.5–3 kb with their own bulk offset (a
  few are low-methylated, enhancer-like). ``K`` cell types share this bulk profile and each deviates from it in
  ``dmr_fraction`` of the regions by at least 0.5. Every cell has a global offset (SD ~2.5 points).
* **Spatial correlation.** A cell's state at site ``i`` is ``u_i < p_i`` where ``p_i`` is the cell's
  methylation probability and ``u`` a latent uniform variable that is redrawn between consecutive CpGs with
  probability ``1 - exp(-d / correlation_length)`` (``d`` in bp) and otherwise kept. This gives a two-state
  process with exact marginals ``p_i`` whose unmethylated runs last ``correlation_length / p`` bp. A fraction
  ``resample`` of the sites is redrawn independently (short-range discordance).
* **Read-structured missingness.** Fragments of 100–300 bp (``scbs``, ``snmc``) or size-selected MspI
  fragments (``scrrbs``, cut at C^CGG) mark every CpG inside them as observed on one strand; the number of reads
  per fragment is ``1 + Poisson(extra_reads)``; per-cell coverage varies ~2-fold (log-normal factor).
* **Noise.** Each read of an unmethylated C is called methylated with probability ``non_conversion``
  (default 1 %). Optional QC-failure cells: ``low_methylation`` (global level ~0.15 of normal) and
  ``no_correlation`` (every site drawn independently).

Coordinates: a site is the 0-based position of the + strand C. Files written by :func:`write_simulation` use
Bismark coverage conventions (1-based, start == end, + strand C at p+1 and − strand C at p+2 in 1-based terms).
Every random draw comes from a generator seeded by ``(seed, purpose, cell)``, so a cell's data does not
depend on how the work is split, and the same seed gives byte-identical files.


Modules: :mod:`~cpgformer.data.simulate.config` (protocols, parameters),
:mod:`~cpgformer.data.simulate.genome` (sites and the methylation landscape),
:mod:`~cpgformer.data.simulate.cells` (cells, reads and :func:`simulate`),
:mod:`~cpgformer.data.simulate.files` (coverage files, truth, store) and
:mod:`~cpgformer.data.simulate.statistics`.
"""

from __future__ import annotations

from cpgformer.data.simulate.cells import (
    CellInfo,
    ChromCalls,
    Simulation,
    simulate,
)
from cpgformer.data.simulate.config import (
    PROTOCOL_NAMES,
    PROTOCOLS,
    QC_KINDS,
    TRUTH_FORMAT,
    Protocol,
    SimulationConfig,
)
from cpgformer.data.simulate.files import (
    Truth,
    format_bismark_cov,
    load_truth,
    simulate_to_directory,
    simulation_to_store,
    write_simulation,
)
from cpgformer.data.simulate.genome import (
    ChromModel,
    cpg_positions,
    local_density,
    mspi_fragments,
    read_fasta,
    synthetic_genome,
)
from cpgformer.data.simulate.statistics import (
    DISTANCE_BINS,
    concordance_by_distance,
)

__all__ = [
    "CellInfo",
    "ChromCalls",
    "ChromModel",
    "DISTANCE_BINS",
    "PROTOCOLS",
    "PROTOCOL_NAMES",
    "Protocol",
    "QC_KINDS",
    "Simulation",
    "SimulationConfig",
    "TRUTH_FORMAT",
    "Truth",
    "concordance_by_distance",
    "cpg_positions",
    "format_bismark_cov",
    "load_truth",
    "local_density",
    "mspi_fragments",
    "read_fasta",
    "simulate",
    "simulate_to_directory",
    "simulation_to_store",
    "synthetic_genome",
    "write_simulation",
]
