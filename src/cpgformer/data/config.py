"""Data parameters of a training run, importable without Lightning (the CLI builds flags from them)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from cpgformer.data.masking import (
    DEFAULT_MASK_RULE,
    DEFAULT_MASK_UNIT,
    DEFAULT_RUN_GAP,
    MaskingConfig,
)
from cpgformer.errors import UsageError

DEFAULT_VAL_CHROMOSOMES = ("chr5",)
DEFAULT_TEST_CHROMOSOMES = ("chr10",)


@dataclass
class DataConfig:
    """Data parameters of a training run (saved in every checkpoint)."""

    segment_length: int = 1024
    batch_size: int = 1
    val_chromosomes: tuple[str, ...] = DEFAULT_VAL_CHROMOSOMES
    test_chromosomes: tuple[str, ...] = DEFAULT_TEST_CHROMOSOMES
    val_fraction: float | None = None
    test_fraction: float | None = None
    split: str = "auto"
    region_block_sites: int = 0
    region_gap_sites: int = 0
    mask_rule: str = DEFAULT_MASK_RULE
    mask_fraction: float = 0.25
    random_fraction: float = 0.2
    mask_unit: str = DEFAULT_MASK_UNIT
    mask_run_gap: int = DEFAULT_RUN_GAP
    resample_cells: int | None = None
    num_workers: int = 0
    seed: int = 0
    label_sample_size: int = 2500

    def __post_init__(self) -> None:
        self.val_chromosomes = tuple(self.val_chromosomes or ())
        self.test_chromosomes = tuple(self.test_chromosomes or ())
        if self.segment_length < 1:
            raise UsageError(f"segment length must be >= 1, got {self.segment_length}")
        if self.batch_size < 1:
            raise UsageError(f"batch size must be >= 1, got {self.batch_size}")
        if self.resample_cells is not None and self.resample_cells < 1:
            raise UsageError(f"--resample-cells must be >= 1, got {self.resample_cells}")
        if self.split not in ("auto", "chromosomes", "regions", "fraction"):
            raise UsageError(
                f"unknown --split {self.split!r}; choose auto, chromosomes, regions or fraction"
            )
        if self.split == "auto" and (self.val_chromosomes, self.test_chromosomes) != (
            DEFAULT_VAL_CHROMOSOMES,
            DEFAULT_TEST_CHROMOSOMES,
        ):
            self.split = "chromosomes"  # chromosomes you name are used as given (unknown = error)
        if self.region_block_sites < 0 or self.region_gap_sites < 0:
            raise UsageError("--region-block-sites and --region-gap-sites must be >= 0")
        if self.num_workers < 0:
            raise UsageError("--num-workers must be >= 0")
        _ = self.masking  # validates

    @property
    def masking(self) -> MaskingConfig:
        return MaskingConfig(
            self.mask_rule,
            self.mask_fraction,
            self.random_fraction,
            self.mask_unit,
            self.mask_run_gap,
        )

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["val_chromosomes"] = list(self.val_chromosomes)
        d["test_chromosomes"] = list(self.test_chromosomes)
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DataConfig:
        known = {f for f in cls.__dataclass_fields__}
        unknown = sorted(set(data) - known)
        if unknown:
            raise UsageError(f"unknown data config field(s): {', '.join(unknown)}")
        return cls(**data)
