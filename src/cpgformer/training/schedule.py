"""Training schedules: the published epoch-based one and the adaptive step/time-based one.

:func:`plan_schedule` turns a :class:`~cpgformer.training.config.TrainConfig` and the number of
training batches per epoch into a :class:`SchedulePlan`; :func:`adaptive_lr` is the adaptive
learning rate; :class:`TimeBudget` (a Lightning callback) re-plans the horizon and the validation
interval from measured step and validation times so that training, the final validation and the
best checkpoint all fit in ``--time-budget``.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass
from typing import Any

from lightning.pytorch.callbacks import Callback

from cpgformer.training.config import PUBLISHED_WARMUP_STEPS, TrainConfig

log = logging.getLogger(__name__)

DEFAULT_PASSES = 20
"""Adaptive horizon without a budget: this many passes over the training segments ..."""
MIN_HORIZON, MAX_HORIZON = 1000, 100_000
"""... clamped to this many optimiser steps."""
VALIDATIONS_PER_HORIZON = 20
WARMUP_SHARE, MAX_WARMUP = 0.05, PUBLISHED_WARMUP_STEPS
VALIDATION_TIME_SHARE = 0.2
"""Under a time budget, validations take at most about this share of it."""
CALIBRATION_STEPS = 3
"""Under a time budget, the first plan is made after this many optimiser steps."""


@dataclass
class SchedulePlan:
    """A resolved schedule. ``horizon``/``val_interval`` in optimiser steps (adaptive only);
    ``patience`` in validations (None = no early stopping); ``max_steps``/``max_epochs`` for the
    trainer (-1 = no limit)."""

    schedule: str
    warmup: int
    horizon: int | None
    val_interval: int | None
    patience: int | None
    patience_steps: int | None
    time_budget_s: float | None
    max_steps: int
    max_epochs: int
    final_lr_fraction: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def default_warmup(horizon: int) -> int:
    return max(1, min(MAX_WARMUP, round(WARMUP_SHARE * horizon)))


def default_horizon(n_train_batches: int) -> int:
    return int(min(MAX_HORIZON, max(MIN_HORIZON, DEFAULT_PASSES * max(1, n_train_batches))))


def plan_schedule(training: TrainConfig, n_train_batches: int) -> SchedulePlan:
    """The schedule of a run whose epochs hold ``n_train_batches`` optimiser steps (per process)."""
    t = training
    if t.schedule == "published":
        warmup = PUBLISHED_WARMUP_STEPS if t.warmup_steps is None else int(t.warmup_steps)
        return SchedulePlan(
            schedule="published",
            warmup=warmup,
            horizon=None,
            val_interval=None,
            patience=t.patience if t.early_stopping else None,
            patience_steps=None,
            time_budget_s=None,
            max_steps=t.max_steps,
            max_epochs=t.max_epochs,
            final_lr_fraction=t.final_lr_fraction,
        )
    budget = t.time_budget_seconds
    if t.max_steps > 0:
        horizon = int(t.max_steps)
    else:
        horizon = default_horizon(n_train_batches)  # provisional under a time budget
    warmup = default_warmup(horizon) if t.warmup_steps is None else int(t.warmup_steps)
    interval = t.val_interval_steps or max(1, horizon // VALIDATIONS_PER_HORIZON)
    planned_end = t.max_steps > 0 or budget is not None
    early = t.early_stopping and (t.patience_steps is not None or not planned_end)
    patience_steps = t.patience_steps or max(interval, horizon // 4)
    return SchedulePlan(
        schedule="adaptive",
        warmup=warmup,
        horizon=horizon,
        val_interval=interval,
        patience=math.ceil(patience_steps / interval) if early else None,
        patience_steps=patience_steps if early else None,
        time_budget_s=budget,
        max_steps=t.max_steps if t.max_steps > 0 else (-1 if budget is not None else horizon),
        max_epochs=-1,
        final_lr_fraction=t.final_lr_fraction,
    )


def adaptive_lr(step: int, lr: float, warmup: int, horizon: int, final_fraction: float) -> float:
    """Linear warm-up over ``warmup`` steps, then cosine decay to ``final_fraction * lr`` at step
    ``horizon`` (and constant after it)."""
    if step < warmup:
        return lr * (step + 1) / warmup
    span = max(1, horizon - warmup)
    progress = min(1.0, (step - warmup) / span)
    return lr * (
        final_fraction + (1.0 - final_fraction) * 0.5 * (1.0 + math.cos(math.pi * progress))
    )


class TimeBudget(Callback):
    """Ends training at a wall-clock deadline, with the horizon planned to end there.

    ``start``: ``time.monotonic()`` when the run started (setup counts against the budget). After
    :data:`CALIBRATION_STEPS` steps the step and validation costs are measured (the sanity check's
    validation batch scaled to the validation set until a real validation has run) and the plan
    is made: up to 20 validations taking at most ~20 % of the remaining time, the horizon at the
    number of steps that fit. Every validation re-plans the horizon from the measured costs. Training
    stops when one more step, the final validation and a margin would pass the deadline; that final
    validation runs (Lightning validates when asked to stop) and keeps the best checkpoint current.
    Decisions are made on process 0 and broadcast, so all processes stay in step.
    """

    def __init__(
        self,
        plan: SchedulePlan,
        start: float,
        *,
        fixed_interval: bool = False,
        fixed_warmup: bool = False,
        early_stopping: Any = None,
        n_val_batches: int = 1,
    ) -> None:
        assert plan.time_budget_s is not None
        self.plan = plan
        self.start = start
        self.deadline = start + plan.time_budget_s
        self.margin = max(0.5, 0.01 * plan.time_budget_s)
        self.fixed_interval = fixed_interval
        self.fixed_warmup = fixed_warmup
        self.early_stopping = early_stopping
        self.n_val_batches = int(n_val_batches)
        self.planned = False
        self.stopped_by_budget = False
        self._sanity_t0 = 0.0
        self._sanity_cost: float | None = None
        self._val_t0 = 0.0
        self._val_costs: list[float] = []
        self._val_in_train = 0.0
        self._t_first_step: float | None = None
        self._steps_at_first = 0
        self._val_at_first = 0.0
        self.train_seconds = 0.0
        self._t_train0 = 0.0

    # ---- measurements ---------------------------------------------------------------------------
    def on_sanity_check_start(self, trainer: Any, pl_module: Any) -> None:
        self._sanity_t0 = time.monotonic()

    def on_sanity_check_end(self, trainer: Any, pl_module: Any) -> None:
        self._sanity_cost = time.monotonic() - self._sanity_t0

    def on_validation_start(self, trainer: Any, pl_module: Any) -> None:
        if not trainer.sanity_checking:
            self._val_t0 = time.monotonic()

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        self._t_train0 = time.monotonic()

    def _val_cost(self, trainer: Any) -> float:
        if self._val_costs:
            return max(self._val_costs[-2:])
        if self._sanity_cost is None:
            return 0.0
        n_val = max(1, self.n_val_batches)
        sanity_batches = max(1, min(trainer.num_sanity_val_steps, n_val))
        return self._sanity_cost / sanity_batches * n_val

    def _step_cost(self, step: int) -> float:
        now = time.monotonic()
        if self._t_first_step is None or step <= self._steps_at_first:
            return (now - self._t_train0 - self._val_in_train) / max(1, step)
        busy = now - self._t_first_step - (self._val_in_train - self._val_at_first)
        return busy / (step - self._steps_at_first)

    # ---- planning -------------------------------------------------------------------------------
    def _replan(self, trainer: Any, pl_module: Any, first: bool) -> None:
        step = trainer.global_step
        values = None
        if trainer.is_global_zero:
            step_cost = max(self._step_cost(step), 1e-6)
            val_cost = self._val_cost(trainer)
            remaining = self.deadline - time.monotonic() - self.margin - val_cost
            interval = trainer.val_check_batch
            if first and not self.fixed_interval:
                n_val = int(VALIDATION_TIME_SHARE * max(remaining, 0.0) / max(val_cost, 1e-6))
                n_val = min(VALIDATIONS_PER_HORIZON, max(1, n_val))
                steps_left = max(1.0, (remaining - (n_val - 1) * val_cost) / step_cost)
                interval = max(1, math.ceil(steps_left / n_val))
            else:
                steps_left = max(1.0, remaining / (step_cost + val_cost / max(1, int(interval))))
            horizon = step + int(steps_left)
            if self.plan.max_steps > 0:
                horizon = min(horizon, self.plan.max_steps)
            warmup = pl_module.warmup_steps
            if first and not self.fixed_warmup:
                warmup = default_warmup(horizon)
            values = (int(horizon), int(interval), int(warmup), step_cost, val_cost)
        values = trainer.strategy.broadcast(values, src=0)
        horizon, interval, warmup, step_cost, val_cost = values
        trainer.val_check_batch = interval
        pl_module.horizon = horizon
        pl_module.warmup_steps = warmup
        self.plan.horizon, self.plan.val_interval, self.plan.warmup = horizon, interval, warmup
        if self.early_stopping is not None and self.plan.patience_steps:
            self.early_stopping.patience = math.ceil(self.plan.patience_steps / interval)
        if first:
            log.info(
                "time budget %.0f s: %.3f s per step, %.2f s per validation -> about %d steps, "
                "validation every %d steps, warm-up %d steps",
                self.plan.time_budget_s,
                step_cost,
                val_cost,
                horizon,
                interval,
                warmup,
            )

    def on_validation_end(self, trainer: Any, pl_module: Any) -> None:
        if trainer.sanity_checking:
            return
        cost = time.monotonic() - self._val_t0
        self._val_costs.append(cost)
        self._val_in_train += cost
        if self.planned and not trainer.should_stop:
            self._replan(trainer, pl_module, first=False)

    def on_train_batch_end(
        self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        step = trainer.global_step
        if self._t_first_step is None:
            self._t_first_step = time.monotonic()
            self._steps_at_first = step
            self._val_at_first = self._val_in_train
        if not self.planned and step >= CALIBRATION_STEPS:
            self._replan(trainer, pl_module, first=True)
            self.planned = True
        stop = False
        if trainer.is_global_zero:
            now = time.monotonic()
            needed = self._step_cost(step) + self._val_cost(trainer) + self.margin
            stop = now + needed >= self.deadline
        stop = bool(trainer.strategy.broadcast(stop, src=0))
        if stop and not trainer.should_stop:
            trainer.should_stop = True
            self.stopped_by_budget = True
            log.info("time budget reached after %d steps: final validation", step)

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        self.train_seconds = time.monotonic() - self.start
