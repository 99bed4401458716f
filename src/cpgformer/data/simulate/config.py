"""Simulation parameters: read protocols and :class:`SimulationConfig` (see the package doc)."""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass

from cpgformer.errors import UsageError

log = logging.getLogger(__name__)

PROTOCOL_NAMES = ("scbs", "scrrbs", "snmc")
QC_KINDS = ("low_methylation", "no_correlation")
TRUTH_FORMAT = "cpgformer-simulation-truth"


@dataclass(frozen=True)
class Protocol:
    """How reads sample a cell's methylome.

    ``kind`` ``"fragments"``: random fragments of ``fragment_min``–``fragment_max`` bp; ``coverage`` is the
    expected fraction of CpGs observed in a median cell. ``kind`` ``"mspi"``: the MspI fragments (C^CGG cuts)
    whose length lies in ``fragment_min``–``fragment_max`` are the only ones sequenced; ``coverage`` is the
    probability that a median cell captures one strand of such a fragment.
    """

    name: str
    kind: str
    fragment_min: int
    fragment_max: int
    coverage: float
    extra_reads: float
    coverage_sd: float


PROTOCOLS: dict[str, Protocol] = {
    "scbs": Protocol("scbs", "fragments", 100, 300, 0.10, 0.17, 0.15),
    "scrrbs": Protocol("scrrbs", "mspi", 40, 220, 0.30, 0.25, 0.15),
    "snmc": Protocol("snmc", "fragments", 100, 300, 0.03, 0.10, 0.30),
}


@dataclass(frozen=True)
class SimulationConfig:
    """Every parameter of the generative model (defaults reproduce the targets in ``docs/simulation.md``)."""

    protocol: str = "scbs"
    # sequence -> bulk methylation
    density_window: int = 250
    sparse_level: float = 0.8
    dense_level: float = 0.025
    density_midpoint: float = 18.0
    density_scale: float = 2.5
    # regions and cell types
    region_min: int = 500
    region_max: int = 3000
    region_sd: float = 0.5
    lmr_fraction: float = 0.05
    lmr_factor: float = 0.35
    dmr_fraction: float = 0.075
    cell_offset_sd: float = 0.025
    # spatial process
    correlation_length: float = 340.0
    resample: float = 0.08
    # reads and noise
    coverage: float | None = None
    coverage_sd: float | None = None
    extra_reads: float | None = None
    dense_enrichment: float = 1.0
    enrichment_flank: int = 1000
    non_conversion: float = 0.01
    false_unmethylated: float = 0.0
    # QC failures
    qc_failures: int = 0
    qc_low_factor: float = 0.15
    # synthetic genome
    island_spacing: float = 50_000.0
    island_min: int = 500
    island_max: int = 2000
    island_gc: float = 0.65
    island_cpg_keep: float = 0.9
    background_gc: float = 0.41
    background_cpg_keep: float = 0.22

    def protocol_params(self) -> Protocol:
        if self.protocol not in PROTOCOLS:
            raise UsageError(
                f"unknown protocol {self.protocol!r} (choose one of {', '.join(PROTOCOL_NAMES)})"
            )
        base = PROTOCOLS[self.protocol]
        return dataclasses.replace(
            base,
            coverage=base.coverage if self.coverage is None else self.coverage,
            coverage_sd=base.coverage_sd if self.coverage_sd is None else self.coverage_sd,
            extra_reads=base.extra_reads if self.extra_reads is None else self.extra_reads,
        )

    def validate(self) -> None:
        self.protocol_params()
        checks = [
            (
                0 <= self.dense_level <= 1 and 0 <= self.sparse_level <= 1,
                "levels must be in [0, 1]",
            ),
            (self.correlation_length > 0, "correlation_length must be > 0"),
            (0 <= self.resample <= 1, "resample must be in [0, 1]"),
            (0 <= self.dmr_fraction <= 1, "dmr_fraction must be in [0, 1]"),
            (0 <= self.lmr_fraction <= 1, "lmr_fraction must be in [0, 1]"),
            (0 <= self.non_conversion < 0.5, "non_conversion must be in [0, 0.5)"),
            (0 <= self.false_unmethylated < 0.5, "false_unmethylated must be in [0, 0.5)"),
            (0 < self.region_min <= self.region_max, "need 0 < region_min <= region_max"),
            (self.dense_enrichment >= 1, "dense_enrichment must be >= 1"),
            (self.qc_failures >= 0, "qc_failures must be >= 0"),
        ]
        cov = self.protocol_params().coverage
        checks.append((0 < cov < 1, "coverage must be in (0, 1)"))
        for ok, msg in checks:
            if not ok:
                raise UsageError(msg)
