"""Optimisation and trainer parameters, importable without Lightning (the CLI builds flags from them)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from cpgformer.errors import UsageError


@dataclass
class TrainConfig:
    """Optimisation and trainer parameters (defaults = the published training script)."""

    lr: float = 5e-4
    warmup_steps: int = 1000
    lr_decay: float = 0.9
    max_epochs: int = 1000
    max_steps: int = -1
    patience: int = 10
    early_stopping: bool = True
    limit_train_batches: float | None = None
    limit_val_batches: float | None = None
    val_check_interval: float | None = None
    log_every_n_steps: int = 50
    accelerator: str = "auto"
    devices: str = "auto"
    strategy: str = "auto"
    num_nodes: int = 1
    precision: str = "32-true"
    tensorboard: bool = True
    seed: int = 0
    memory_budget_gb: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrainConfig:
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(data) - known)
        if unknown:
            raise UsageError(f"unknown training config field(s): {', '.join(unknown)}")
        return cls(**data)
