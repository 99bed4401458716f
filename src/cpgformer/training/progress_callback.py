"""Training progress for logs and batch systems, and a final validation.

:class:`TrainingProgress` is a Lightning callback that

* counts tokens (site x cell entries of the model input) and logs, on rank zero, a line with
  step/total, steps/s, tokens/s, the last training loss, elapsed time and ETA: periodically when
  stderr is not a terminal (``cpgformer.utils.progress`` "log" mode, every
  ``CPGFORMER_PROGRESS_INTERVAL`` seconds) and once at the end of training in every mode but
  ``-q``;
* asks Lightning to stop (``trainer.should_stop``) at the step that reaches ``max_steps``, which makes
  its training loop run one last validation there, so a run that ends between two scheduled
  validations still validates its final weights and writes ``best.ckpt``.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any

from lightning.pytorch.callbacks import Callback

from cpgformer.utils import progress

log = logging.getLogger("cpgformer.training")


def batch_tokens(batch: Any) -> int:
    """Model-input entries (sites x cells, over the batch) of one training batch."""
    states = getattr(batch, "states", None)
    if states is None:
        return 0
    return int(states.numel())


def format_count(value: float) -> str:
    """``1234567`` -> ``1.23 M``."""
    if not math.isfinite(value):
        return "?"
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(value) >= size:
            return f"{value / size:.3g} {unit}"
    return f"{value:.3g}"


class TrainingProgress(Callback):
    """Tokens/s and ETA log lines; a final validation at ``max_steps`` (see the module doc)."""

    def __init__(self, interval: float | None = None) -> None:
        self.interval = interval
        self._t0 = 0.0
        self._last = 0.0
        self._start_step = 0
        self.tokens = 0
        self.lines = 0

    # -------------------------------------------------------------------------------- helpers
    def _total_steps(self, trainer: Any) -> float:
        try:
            total = float(trainer.estimated_stepping_batches)
        except Exception:  # noqa: BLE001 - no estimate (iterable data without a length)
            total = math.inf
        if trainer.max_steps is not None and trainer.max_steps > 0:
            total = min(total, float(trainer.max_steps))
        return total

    def summary(self, trainer: Any, final: bool = False) -> str:
        now = time.monotonic()
        elapsed = max(now - self._t0, 1e-9)
        step = int(trainer.global_step)
        done = step - self._start_step
        total = self._total_steps(trainer)
        text = f"training: step {step:,}"
        if math.isfinite(total):
            text += f"/{total:,.0f} ({100.0 * step / max(total, 1):.0f}%)"
        text += f", {done / elapsed:.3g} steps/s, {format_count(self.tokens / elapsed)} tokens/s"
        loss = trainer.callback_metrics.get("train_loss_step")
        if loss is not None:
            try:
                text += f", train_loss {float(loss):.4f}"
            except (TypeError, ValueError):
                pass
        text += f", elapsed {progress.format_duration(elapsed)}"
        if not final and math.isfinite(total) and done > 0:
            text += f", ETA {progress.format_duration((total - step) * elapsed / done)}"
        return text

    # ---------------------------------------------------------------------------------- hooks
    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        self._t0 = self._last = time.monotonic()
        self._start_step = int(trainer.global_step)
        self.tokens = 0
        self.lines = 0

    def on_train_batch_end(
        self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self.tokens += batch_tokens(batch) * max(1, int(getattr(trainer, "world_size", 1)))
        if trainer.max_steps is not None and 0 < trainer.max_steps <= trainer.global_step:
            trainer.should_stop = True  # Lightning validates once more before it stops
        if not trainer.is_global_zero or progress.mode() != "log":
            return
        now = time.monotonic()
        interval = progress.interval_s() if self.interval is None else self.interval
        if now - self._last >= interval:
            log.info("%s", self.summary(trainer))
            self._last = now
            self.lines += 1

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        if trainer.is_global_zero and progress.mode() != "off":
            log.info("%s", self.summary(trainer, final=True))
