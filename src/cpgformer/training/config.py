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
from dataclasses import asdict, dataclass, field
from typing import Any

from cpgformer.errors import UsageError
from cpgformer.nn.config import DNA_PRECISIONS

SCHEDULES = ("adaptive", "published")
PUBLISHED_WARMUP_STEPS = 1000


def _f(default: Any, help: str) -> Any:  # noqa: A002 - the argparse name
    """A field with its command-line help in the metadata (``cpgformer train`` makes the flags)."""
    return field(default=default, metadata={"help": help})


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

    lr: float = _f(5e-4, "Adam learning rate")
    warmup_steps: int | None = _f(
        None,
        "linear learning-rate warm-up, optimiser steps (default: 1000 published; adaptive 5%% of "
        "the planned steps, at most 1000)",
    )
    lr_decay: float = _f(0.9, "published schedule: learning-rate factor per epoch after warm-up")
    max_epochs: int = _f(1000, "published schedule: maximum epochs")
    max_steps: int = _f(
        -1,
        "maximum optimiser steps (-1 = no limit); the adaptive schedule plans its decay to end "
        "there",
    )
    patience: int = _f(10, "published schedule: early stopping patience in validations")
    early_stopping: bool = _f(True, "stop when the validation loss stops improving")
    schedule: str = _f(
        "adaptive",
        "adaptive (steps or time: warm-up, cosine decay, validation and patience in steps, sized "
        "to the store or the budget) or published (the original, per epoch)",
    )
    time_budget: str | None = _f(
        None,
        "adaptive: train for this wall time (900, 15m, 1h30m, 00:15:00), the schedule planned to "
        "end there, best checkpoint kept",
    )
    val_interval_steps: int | None = _f(
        None,
        "adaptive: validate every this many steps (default: 20 validations over the planned steps)",
    )
    patience_steps: int | None = _f(
        None,
        "adaptive: stop after this many steps without a better validation loss (default: a "
        "quarter of the planned steps; off with --max-steps or --time-budget unless given)",
    )
    final_lr_fraction: float = _f(
        0.05, "adaptive: learning rate at the end of the cosine decay, as a fraction of --lr"
    )
    limit_train_batches: float | None = _f(
        None, "training batches per epoch (fraction if < 1, count if >= 1)"
    )
    limit_val_batches: float | None = _f(
        None, "validation batches per validation (fraction if < 1, count if >= 1)"
    )
    val_check_interval: float | None = _f(
        None,
        "published schedule: validate every this many training batches (or fraction of an epoch)",
    )
    log_every_n_steps: int = _f(50, "log training metrics every this many steps")
    accelerator: str = _f("auto", "cpu, gpu, mps or auto")
    devices: str = _f("auto", "devices per node: a count, a list like 0,1, or auto")
    strategy: str = _f("auto", "auto, ddp, ddp_spawn, fsdp, ...")
    num_nodes: int = _f(1, "nodes for multi-node training")
    precision: str = _f("32-true", "32-true, bf16-mixed, 16-mixed, ...")
    dna_precision: str = _f(
        "fp32",
        "precision of the DNA network's convolutions and Linear layers (models with DNA): fp32 or "
        "bf16 (faster on CPUs with bf16 units, AVX512-BF16 or AMX; the rest stays in --precision)",
    )
    tensorboard: bool = _f(True, "also write TensorBoard logs (if tensorboard is installed)")
    seed: int = _f(0, "random seed (weights, shuffling, masks, splits)")
    memory_budget_gb: float | None = _f(
        None,
        "activations of one training step must fit this (GB; default half the available "
        "memory): segments are shortened, then cells subsampled per batch",
    )

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
        if self.dna_precision not in DNA_PRECISIONS:
            raise UsageError(f"--dna-precision must be fp32 or bf16, got {self.dna_precision!r}")
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
