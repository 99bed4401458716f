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
from collections import deque
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
CALIBRATION_STEPS = 5
"""Under a time budget, the first plan is made after this many optimiser steps."""
NEVER = 10**15
"""A validation interval that is never reached (validations are triggered by time instead)."""
STEP_COST_WINDOW = 64
"""Step time is measured over this many recent steps (the first ones are slower)."""
SLOW_STEP_WINDOW = 8
"""The stop decision allows for the slowest of this many recent steps."""
MANY_CELLS = 256
"""New runs on at least this many cells default to the induced mode with profile cell encoders ..."""
RESAMPLE_CELLS = 128
"""... trained on this many random cells per batch."""
NEW_RUN_SEGMENT_LENGTH = 256
"""Sites per segment of a new run: more, cheaper optimiser steps per minute than the published 1,024."""


def new_run_defaults(n_cells: int, schedule: str = "adaptive") -> dict[str, dict[str, Any]]:
    """Defaults of a new run of the adaptive schedule, beyond the published model's (a run's own
    parameters, a config file or flags override them; ``published`` runs get none of them).

    * every run: input summaries and the per-site-mean output offset (the model starts at the
      per-site mean and learns from the summaries the baselines use); segments of
      ``NEW_RUN_SEGMENT_LENGTH`` sites;
    * ``MANY_CELLS`` cells or more: induced attention across cells, cells embedded from their
      profiles, ``RESAMPLE_CELLS`` random cells per training batch (a step's cost flat in the cells).
    """
    if schedule == "published":
        return {"model": {}, "data": {}}
    model: dict[str, Any] = {"input_summaries": True, "summary_offset": True}
    data: dict[str, Any] = {"segment_length": NEW_RUN_SEGMENT_LENGTH, "mask_unit": "run"}
    if n_cells >= MANY_CELLS:
        model.update(mode="induced", cell_encoder="profile")
        data["resample_cells"] = RESAMPLE_CELLS
    return {"model": model, "data": data}


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
    """Ends training at a wall-clock deadline, with the schedule planned to end there.

    ``start``: ``time.monotonic()`` when the run started (setup counts against the budget). After
    :data:`CALIBRATION_STEPS` steps, the warm-up is sized (5 % of the steps that fit, at most 1,000)
    and the validations are spaced in time: about 20 in all, taking at most ~20 % of the budget
    (validation cost: the sanity check's batch scaled to the validation set, then measured). After
    every step the horizon of the learning-rate decay is re-planned from the measured step time
    (recent steps, validation excluded), so the decay ends at the deadline even when the machine
    slows down. Training stops when one more step (as slow as the slowest of the last 8), the final
    validation and a margin would pass the deadline; that final validation runs (Lightning
    validates when asked to stop) and keeps the best checkpoint current. Decisions are made on
    process 0 and broadcast, so processes stay in step.
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
        self._busy: deque[tuple[int, float]] = deque(maxlen=STEP_COST_WINDOW)
        self._t_train0 = 0.0
        self._val_every_s = math.inf
        self._next_val = math.inf
        self._n_val_planned = VALIDATIONS_PER_HORIZON

    # ---- measurements ---------------------------------------------------------------------------
    def on_sanity_check_start(self, trainer: Any, pl_module: Any) -> None:
        self._sanity_t0 = time.monotonic()

    def on_sanity_check_end(self, trainer: Any, pl_module: Any) -> None:
        self._sanity_cost = time.monotonic() - self._sanity_t0

    def on_validation_start(self, trainer: Any, pl_module: Any) -> None:
        if not trainer.sanity_checking:
            self._val_t0 = time.monotonic()

    def on_validation_end(self, trainer: Any, pl_module: Any) -> None:
        if not trainer.sanity_checking:
            cost = time.monotonic() - self._val_t0
            self._val_costs.append(cost)
            self._val_in_train += cost

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        self._t_train0 = time.monotonic()
        if not self.fixed_interval:
            trainer.val_check_batch = NEVER

    def _val_cost(self) -> float:
        if self._val_costs:
            return max(self._val_costs[-2:])
        if self._sanity_cost is None:
            return 0.0
        return self._sanity_cost * max(1, self.n_val_batches)

    def _step_cost(self, step: int) -> float:
        """Seconds per optimiser step over the recent steps (validation time excluded)."""
        busy_now = time.monotonic() - self._val_in_train
        if len(self._busy) >= 2:
            step0, busy0 = self._busy[0]
            if step > step0:
                return (busy_now - busy0) / (step - step0)
        return (busy_now - self._t_train0) / max(1, step)

    def _slowest_step(self, default: float) -> float:
        """The longest of the last few steps (validation time excluded)."""
        recent = list(self._busy)[-SLOW_STEP_WINDOW - 1 :]
        gaps = [(b1 - b0) / (s1 - s0) for (s0, b0), (s1, b1) in zip(recent, recent[1:]) if s1 > s0]
        return max(gaps) if gaps else default

    # ---- planning -------------------------------------------------------------------------------
    def _decide(self, trainer: Any, pl_module: Any) -> tuple[int, int, bool, bool, int | None]:
        """(horizon, warm-up, validate now, stop, early-stopping patience) on process 0."""
        step = trainer.global_step
        now = time.monotonic()
        step_cost = max(self._step_cost(step), 1e-6)
        val_cost = self._val_cost()
        warmup = int(pl_module.warmup_steps)
        patience = None
        if not self.planned and step >= CALIBRATION_STEPS:
            available = self.deadline - self.margin - now
            n_val = int(VALIDATION_TIME_SHARE * max(available, 0.0) / max(val_cost, 1e-6))
            self._n_val_planned = max(1, min(VALIDATIONS_PER_HORIZON, n_val))
            self._val_every_s = max(available, 0.0) / self._n_val_planned
            self._next_val = now + self._val_every_s
            train_time = available - self._n_val_planned * val_cost
            if not self.fixed_warmup:
                warmup = default_warmup(step + int(max(train_time, 0.0) / step_cost))
            if self.plan.patience_steps and not self.fixed_interval:
                steps_per_val = max(1.0, train_time / self._n_val_planned / step_cost)
                patience = math.ceil(self.plan.patience_steps / steps_per_val)
        # validations still to come, the final one included
        if self._val_every_s < math.inf:
            to_come = max(1.0, (self.deadline - self.margin - now) / self._val_every_s)
        else:
            to_come = 1.0
        train_left = self.deadline - self.margin - now - to_come * val_cost
        horizon = step + max(1, int(train_left / step_cost))
        if self.plan.max_steps > 0:
            horizon = min(horizon, self.plan.max_steps)
        validate = not self.fixed_interval and now >= self._next_val
        if validate:
            self._next_val = now + self._val_every_s
        # stop on the slowest recent step, not the mean: a slow step must not overrun the budget
        stop = now + self._slowest_step(step_cost) + val_cost + self.margin >= self.deadline
        if stop:
            log.info(
                "%.1f s left: one more step (up to %.2f s) and the final validation (%.2f s) would "
                "pass the time budget",
                self.deadline - now,
                self._slowest_step(step_cost),
                val_cost,
            )
        return horizon, max(1, warmup), validate, stop, patience

    def on_train_batch_end(
        self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        step = trainer.global_step
        self._busy.append((step, time.monotonic() - self._val_in_train))
        decision = self._decide(trainer, pl_module) if trainer.is_global_zero else None
        horizon, warmup, validate, stop, patience = trainer.strategy.broadcast(decision, src=0)
        if patience is not None and self.early_stopping is not None:
            self.early_stopping.patience = int(patience)
        first = not self.planned and step >= CALIBRATION_STEPS
        self.planned = self.planned or first
        pl_module.horizon, pl_module.warmup_steps = int(horizon), int(warmup)
        self.plan.horizon, self.plan.warmup = int(horizon), int(warmup)
        if not self.fixed_interval:
            # Lightning validates after this hook when (batch index + 1) % val_check_batch == 0
            total = trainer.fit_loop.epoch_loop.total_batch_idx
            trainer.val_check_batch = total + 1 if validate else NEVER
        if first:
            log.info(
                "time budget %.0f s: %.3f s per step, %.2f s per validation -> about %d steps, "
                "%d validations, warm-up %d steps",
                self.plan.time_budget_s,
                self._step_cost(step),
                self._val_cost(),
                horizon,
                self._n_val_planned,
                warmup,
            )
        if stop and not trainer.should_stop:
            trainer.should_stop = True
            self.stopped_by_budget = True
            log.info("time budget reached after %d steps: final validation", step)

    # ---- checkpoints ----------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """The time already spent and the plan made, so that a resumed run continues the budget
        (the time between the checkpoint and a kill is redone, not charged twice)."""
        now = time.monotonic()
        return {
            "elapsed_s": now - self.start,
            "planned": self.planned,
            "val_every_s": self._val_every_s,
            "next_val_in_s": self._next_val - now,
            "n_val_planned": self._n_val_planned,
            "val_costs": list(self._val_costs),
            "horizon": self.plan.horizon,
            "warmup": self.plan.warmup,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        now = time.monotonic()
        self.start = now - float(state["elapsed_s"])
        self.deadline = self.start + float(self.plan.time_budget_s or 0.0)
        self.planned = bool(state["planned"])
        self._val_every_s = float(state["val_every_s"])
        self._next_val = now + float(state["next_val_in_s"])
        self._n_val_planned = int(state["n_val_planned"])
        self._val_costs = [float(c) for c in state["val_costs"]]
        self.plan.horizon, self.plan.warmup = state["horizon"], state["warmup"]

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        self.train_seconds = time.monotonic() - self.start
        self.plan.val_interval = None if not self.fixed_interval else self.plan.val_interval
