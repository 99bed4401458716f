"""Optimisation and trainer parameters, importable without Lightning (the CLI builds flags from them).

Two schedules (``schedule``):

* ``adaptive`` (default): everything in optimiser steps or wall time, never epochs. A horizon of
  ``max_steps`` steps, or as many as fit in ``time_budget``, or (neither given) 20 passes over the
  training segments clamped to 1,000..100,000 steps; linear warm-up over ``warmup_steps`` (default 5 %
  of the horizon, at most 1,000), then cosine decay to ``final_lr_fraction`` x ``lr`` at the
  horizon; validation every ``val_interval_steps`` (default: 20 validations per horizon); early
  stopping after ``patience_steps`` without improvement (default a quarter of the horizon, and off
  with ``max_steps`` or ``time_budget`` unless given).
* ``published``: the original training script -- warm-up ``warmup_steps`` (default 1,000), x
  ``lr_decay`` per epoch, validation every epoch (``val_check_interval``), early stopping with
  ``patience`` validations, ``max_epochs``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from cpgformer.errors import UsageError

SCHEDULES = ("adaptive", "published")
PUBLISHED_WARMUP_STEPS = 1000

_UNITS = {"s": 1.0, "sec": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(text: str | float | int) -> float:
    """Seconds in a duration: ``90``, ``90s``, ``15m``, ``1h30m``, ``1.5h`` or ``HH:MM:SS``."""
    if isinstance(text, (int, float)):
        value = float(text)
    else:
        raw = str(text).strip().lower()
        value = 0.0
        try:
            if ":" in raw:
                parts = [float(p) for p in raw.split(":")]
                if len(parts) > 3:
                    raise ValueError
                for p in parts:
                    value = value * 60.0 + p
            else:
                matches = re.findall(r"(\d+(?:\.\d*)?|\.\d+)\s*([a-z]*)", raw)
                if not matches or re.sub(r"[\d.\sa-z]", "", raw):
                    raise ValueError
                if "".join(n + u for n, u in matches) != raw.replace(" ", ""):
                    raise ValueError
                for number, unit in matches:
                    if unit and unit not in _UNITS:
                        raise ValueError
                    value += float(number) * _UNITS.get(unit or "s", 1.0)
        except ValueError:
            raise UsageError(
                f"cannot read the duration {text!r} (examples: 900, 90s, 15m, 1h30m, 00:15:00)"
            ) from None
    if not value > 0:
        raise UsageError(f"a time budget must be > 0, got {text!r}")
    return value


@dataclass
class TrainConfig:
    """Optimisation and trainer parameters (defaults = the published training script)."""

    lr: float = 5e-4
    warmup_steps: int | None = None
    lr_decay: float = 0.9
    max_epochs: int = 1000
    max_steps: int = -1
    patience: int = 10
    early_stopping: bool = True
    schedule: str = "adaptive"
    time_budget: str | None = None
    val_interval_steps: int | None = None
    patience_steps: int | None = None
    final_lr_fraction: float = 0.05
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

    def __post_init__(self) -> None:
        if self.schedule not in SCHEDULES:
            raise UsageError(
                f"unknown --schedule {self.schedule!r}; choose {' or '.join(SCHEDULES)}"
            )
        if self.schedule == "published":
            adaptive_only = {
                "--time-budget": self.time_budget,
                "--val-interval-steps": self.val_interval_steps,
                "--patience-steps": self.patience_steps,
            }
            given = [flag for flag, value in adaptive_only.items() if value is not None]
            if given:
                raise UsageError(
                    f"{', '.join(given)}: only with --schedule adaptive (the published schedule "
                    "counts epochs)"
                )
        if self.time_budget is not None:
            parse_duration(self.time_budget)
        for name in ("warmup_steps", "val_interval_steps", "patience_steps"):
            value = getattr(self, name)
            if value is not None and (value < (0 if name == "warmup_steps" else 1)):
                raise UsageError(f"--{name.replace('_', '-')} must be positive, got {value}")
        if not 0.0 <= self.final_lr_fraction <= 1.0:
            raise UsageError(f"--final-lr-fraction must be in [0, 1], got {self.final_lr_fraction}")

    @property
    def time_budget_seconds(self) -> float | None:
        return None if self.time_budget is None else parse_duration(self.time_budget)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrainConfig:
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(data) - known)
        if unknown:
            raise UsageError(f"unknown training config field(s): {', '.join(unknown)}")
        return cls(**data)
