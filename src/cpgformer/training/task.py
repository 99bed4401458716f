"""LightningModule for the masked denoising objective.

* Loss only on perturbed entries: BCE-with-logits (binary) or MSE (continuous).
* Adam (lr 5e-4). ``schedule="published"``: linear warm-up over the first 1000 optimiser steps,
  then x0.9 per epoch (epoch ends that fall inside the warm-up do not decay, as in the original).
  ``schedule="adaptive"``: warm-up, then cosine decay to ``final_lr_fraction`` at step ``horizon``
  (:func:`cpgformer.training.schedule.adaptive_lr`; a time budget may move the horizon).
* Validation loss, AUROC, AUPRC and accuracy over all perturbed validation entries of all ranks
  (torchmetrics states are gathered across processes before computing; never a mean of per-rank
  values). ``val_baseline_auroc`` scores the per-site mean of the *other* cells' model inputs on the
  same entries, for comparison. A validation whose perturbed entries hold one class only logs
  AUROC/AUPRC as NaN (undefined) with a warning, never a made-up number.
* ``on_save_checkpoint`` stores ``checkpoint["cpgformer"]`` (format version, model config, cell
  names, store fingerprint, data parameters, calibration temperature) so
  :func:`cpgformer.checkpoint.load_checkpoint` can rebuild the model without Lightning.
"""

from __future__ import annotations

import logging
from typing import Any

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torchmetrics import MeanMetric, SumMetric
from torchmetrics.classification import BinaryAccuracy, BinaryAUROC, BinaryAveragePrecision

from cpgformer.data.batch import Batch
from cpgformer.nn import CpGTransformer, ModelConfig
from cpgformer.training.schedule import adaptive_lr

log = logging.getLogger(__name__)

CHECKPOINT_KEY = "cpgformer"
CHECKPOINT_FORMAT_VERSION = 1
RNG_KEY = "cpgformer_rng"
EPOCH_LOSS_KEY = "cpgformer_epoch_loss"
"""The running training-loss sum and count of the epoch a checkpoint was written in."""


def _rng_states() -> dict[str, Any]:
    """The random states training draws from (torch CPU and CUDA, numpy, Python), as tensors and
    plain numbers only (checkpoints are read with ``weights_only=True``)."""
    import random

    import numpy as np

    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    version, py_state, py_gauss = random.getstate()
    out: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": [str(kind), torch.from_numpy(np.asarray(keys, dtype=np.int64)), int(pos)]
        + [int(has_gauss), float(gauss)],
        "python": [int(version), [int(v) for v in py_state], py_gauss],
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        out["cuda"] = torch.cuda.get_rng_state_all()
    return out


def _set_rng_states(states: dict[str, Any]) -> None:
    import random

    import numpy as np

    torch.set_rng_state(states["torch"])
    kind, keys, pos, has_gauss, gauss = states["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    version, py_state, py_gauss = states["python"]
    random.setstate((version, tuple(py_state), py_gauss))
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def other_cells_mean(states: torch.Tensor, data_mode: str = "binary") -> torch.Tensor:
    """Per entry, the mean of the other cells' observed model inputs at the same site.

    ``states`` [B, L, C] model-input coding (0 unknown). Returns [B, L, C] float; entries whose site
    has no other observed cell get the mean of all observed inputs of their segment.
    """
    observed = (states > 0).to(torch.float64)
    value = torch.where(
        states > 0, states.to(torch.float64) - 1.0, torch.zeros((), dtype=torch.float64)
    )
    if data_mode == "binary":
        value = value.clamp(0, 1)
    row_sum = value.sum(-1, keepdim=True)
    row_count = observed.sum(-1, keepdim=True)
    other_sum = row_sum - value
    other_count = row_count - observed
    seg_mean = value.sum((1, 2)) / observed.sum((1, 2)).clamp_min(1)
    fallback = seg_mean[:, None, None].expand_as(value)
    return torch.where(other_count > 0, other_sum / other_count.clamp_min(1), fallback).float()


def _two_classes(positives: SumMetric, entries: SumMetric) -> bool:
    """Whether the gathered labels hold both classes (AUROC/AUPRC are defined)."""
    pos, n = float(positives.compute()), float(entries.compute())
    return 0 < pos < n


class CpGTask(pl.LightningModule):
    """Training wrapper around :class:`cpgformer.nn.CpGTransformer` (held as ``self.model``)."""

    def __init__(
        self,
        config: ModelConfig | dict,
        *,
        lr: float = 5e-4,
        warmup_steps: int = 1000,
        lr_decay: float = 0.9,
        schedule: str = "published",
        horizon: int | None = None,
        final_lr_fraction: float = 0.05,
        cells: list[str] | None = None,
        store_fingerprint: str | None = None,
        data_params: dict | None = None,
        temperature: float = 1.0,
    ) -> None:
        super().__init__()
        if isinstance(config, dict):
            config = ModelConfig.from_dict(config)
        self.config = config
        self.save_hyperparameters(
            {
                "config": config.to_dict(),
                "lr": lr,
                "warmup_steps": warmup_steps,
                "lr_decay": lr_decay,
                "schedule": schedule,
                "horizon": horizon,
                "final_lr_fraction": final_lr_fraction,
            }
        )
        self.lr = lr
        self.warmup_steps = int(warmup_steps)
        self.lr_decay = lr_decay
        if schedule not in ("published", "adaptive"):
            raise ValueError(f"unknown schedule {schedule!r}")
        if schedule == "adaptive" and horizon is None:
            raise ValueError("the adaptive schedule needs a horizon (optimiser steps)")
        self.schedule = schedule
        self.horizon = horizon
        self.final_lr_fraction = float(final_lr_fraction)
        self.cells = list(cells) if cells is not None else None
        self.store_fingerprint = store_fingerprint
        self.data_params = dict(data_params or {})
        self.temperature = float(temperature)
        self.warmup_end_epoch: int | None = 0 if self.warmup_steps == 0 else None
        self.model = CpGTransformer(config)
        self.binary = config.data_mode == "binary"
        self.val_loss = MeanMetric()
        self.val_auroc = BinaryAUROC()
        self.val_auprc = BinaryAveragePrecision()
        self.val_accuracy = BinaryAccuracy()
        self.val_baseline_auroc = BinaryAUROC()
        self.val_positives = SumMetric()
        self.val_entries = SumMetric()
        self.val_baseline_positives = SumMetric()
        self.val_baseline_entries = SumMetric()
        self._baseline_value: float | None = None
        self._epoch_loss: tuple[torch.Tensor, int] = (torch.zeros(()), 0)
        self._epoch_loss_to_restore: dict[str, Any] | None = None
        self.cell_profiles: dict | None = None  # fitted CellProfiler (inductive cell encoder)

    def set_profiler(self, profiler: Any, dataset: Any) -> None:
        """Use ``profiler`` (a fitted :class:`~cpgformer.data.profiles.CellProfiler`) for the cells
        of ``dataset`` (the training store) and record it in every checkpoint."""
        self.cell_profiles = profiler.to_dict()
        self.model.set_cell_profiles(torch.from_numpy(profiler.transform(dataset)))

    # ---- forward / loss -------------------------------------------------------------------------
    def forward(self, batch: Batch) -> torch.Tensor:
        return self.model(
            batch.states,
            batch.positions,
            batch.cell_ids,
            dna=batch.dna,
            dna_sequence=batch.dna_sequence,
            dna_starts=batch.dna_starts,
            rest=batch.rest,
        )

    def _loss(self, logits: torch.Tensor, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """(per-entry losses on perturbed entries [N], their logits [N])."""
        mask = batch.loss_mask
        out = logits[mask].float()
        target = batch.targets[mask].float()
        if self.binary:
            losses = F.binary_cross_entropy_with_logits(out, target, reduction="none")
        else:
            losses = F.mse_loss(out, target, reduction="none")
        return losses, out

    def transfer_batch_to_device(
        self, batch: Any, device: torch.device, dataloader_idx: int
    ) -> Any:
        if isinstance(batch, Batch):
            return batch.to(device)
        return super().transfer_batch_to_device(batch, device, dataloader_idx)

    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        logits = self(batch)
        losses, _ = self._loss(logits, batch)
        if losses.numel() == 0:
            # nothing perturbed (an all-missing segment): a zero loss that still touches every
            # parameter used, so DDP's gradient reduction stays in step
            loss = logits.sum() * 0.0
        else:
            loss = losses.mean()
        self.log(
            "train_loss_step", loss, on_step=True, on_epoch=False, prog_bar=True,
            batch_size=batch.batch_size,
        )  # fmt: skip
        # the epoch mean is kept here, not by Lightning, so that checkpoints carry it: a run
        # resumed inside an epoch logs the same epoch mean as an uninterrupted one (the same
        # arithmetic as Lightning's batch-size-weighted mean)
        total, count = self._epoch_loss
        self._epoch_loss = (
            total + loss.detach().float() * batch.batch_size,
            count + batch.batch_size,
        )
        self.log("lr", self.current_lr(), on_step=True, on_epoch=False, batch_size=batch.batch_size)
        return loss

    def validation_step(self, batch: Batch, batch_idx: int) -> dict[str, torch.Tensor]:
        logits = self(batch)
        losses, out = self._loss(logits, batch)
        target = batch.targets[batch.loss_mask].float()
        if self.binary:
            score = torch.sigmoid(out)
            label = target.round().long()
        else:
            score = out
            label = (target >= 0.5).long()
        if losses.numel():
            self.val_loss.update(losses)
            self.val_auroc.update(score, label)
            self.val_auprc.update(score, label)
            self.val_accuracy.update(score.clamp(0, 1), label)
            self.val_positives.update(label.sum().float())
            self.val_entries.update(float(label.numel()))
            if self._baseline_value is None and not self.trainer.sanity_checking:
                base = other_cells_mean(batch.states, self.config.data_mode)[batch.loss_mask]
                self.val_baseline_auroc.update(base, label)
                self.val_baseline_positives.update(label.sum().float())
                self.val_baseline_entries.update(float(label.numel()))
        return {"scores": score.detach(), "labels": label.detach()}

    def on_validation_epoch_end(self) -> None:
        # computing a torchmetrics metric gathers its state from every rank first
        self.log("val_loss", self.val_loss.compute(), prog_bar=True, sync_dist=False)
        two_classes = _two_classes(self.val_positives, self.val_entries)
        nan = torch.tensor(float("nan"))
        if not two_classes and not self.trainer.sanity_checking:
            log.warning(
                "validation: the perturbed entries hold one class only; AUROC and AUPRC are "
                "undefined (logged as NaN)"
            )
        self.log("val_auroc", self.val_auroc.compute() if two_classes else nan, prog_bar=True)
        self.log("val_auprc", self.val_auprc.compute() if two_classes else nan)
        self.log("val_accuracy", self.val_accuracy.compute())
        for metric in (
            self.val_loss,
            self.val_auroc,
            self.val_auprc,
            self.val_accuracy,
            self.val_positives,
            self.val_entries,
        ):
            metric.reset()
        if not self.trainer.sanity_checking:
            if self._baseline_value is None:
                # the validation masks are fixed: the baseline is computed once, then reused
                if _two_classes(self.val_baseline_positives, self.val_baseline_entries):
                    self._baseline_value = float(self.val_baseline_auroc.compute())
                else:
                    self._baseline_value = float("nan")
                self.val_baseline_auroc.reset()
            self.log("val_baseline_auroc", self._baseline_value)

    # ---- optimisation ---------------------------------------------------------------------------
    def configure_optimizers(self) -> torch.optim.Optimizer:
        params = list(self.model.parameters())
        # one fused kernel for all parameters where available (same update, a faster step)
        fused = all(p.device.type in ("cpu", "cuda") for p in params)
        return torch.optim.Adam(params, lr=self.lr, fused=fused)

    def lr_at(self, step: int, epoch: int) -> float:
        """Learning rate for optimiser step ``step`` taken during epoch ``epoch``."""
        if self.schedule == "adaptive":
            assert self.horizon is not None
            return adaptive_lr(
                step, self.lr, self.warmup_steps, self.horizon, self.final_lr_fraction
            )
        if step < self.warmup_steps:
            return self.lr * min(1.0, (step + 1) / self.warmup_steps)
        end = self.warmup_end_epoch if self.warmup_end_epoch is not None else epoch
        return self.lr * self.lr_decay ** max(0, epoch - end)

    def current_lr(self) -> float:
        opt = self.optimizers()
        optimizer = opt.optimizer if hasattr(opt, "optimizer") else opt
        return float(optimizer.param_groups[0]["lr"])

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        step, epoch = self.global_step, self.current_epoch
        if self.warmup_end_epoch is None and step >= self.warmup_steps - 1:
            self.warmup_end_epoch = epoch
        lr = self.lr_at(step, epoch)
        opt = self.optimizers()
        optimizer = opt.optimizer if hasattr(opt, "optimizer") else opt
        for group in optimizer.param_groups:
            group["lr"] = lr

    def on_train_start(self) -> None:
        states = getattr(self, "_rng_to_restore", None)
        if states:
            _set_rng_states(states)
            self._rng_to_restore = None

    def on_train_epoch_start(self) -> None:
        saved, self._epoch_loss_to_restore = self._epoch_loss_to_restore, None
        if saved is not None and int(saved["epoch"]) == self.current_epoch:
            # resumed inside the epoch the checkpoint was written in
            self._epoch_loss = (saved["total"].to(self.device), int(saved["count"]))
        else:
            self._epoch_loss = (torch.zeros((), device=self.device), 0)

    def on_train_epoch_end(self) -> None:
        total, count = self._epoch_loss
        if count:
            self.log("train_loss_epoch", total / count, on_step=False, on_epoch=True)

    # ---- checkpoints ----------------------------------------------------------------------------
    def checkpoint_metadata(self) -> dict[str, Any]:
        return {
            "format_version": CHECKPOINT_FORMAT_VERSION,
            "config": self.config.to_dict(),
            "cells": self.cells,
            "store_fingerprint": self.store_fingerprint,
            "data": self.data_params,
            "temperature": self.temperature,
            "cell_profiles": self.cell_profiles,
            "training": {
                "lr": self.lr,
                "warmup_steps": self.warmup_steps,
                "lr_decay": self.lr_decay,
                "warmup_end_epoch": self.warmup_end_epoch,
                "schedule": self.schedule,
                "horizon": self.horizon,
                "final_lr_fraction": self.final_lr_fraction,
            },
        }

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint[CHECKPOINT_KEY] = self.checkpoint_metadata()
        # random states (dropout), so that a resumed run draws what the uninterrupted one would
        checkpoint[RNG_KEY] = _rng_states()
        total, count = self._epoch_loss
        checkpoint[EPOCH_LOSS_KEY] = {
            "epoch": self.current_epoch,
            "total": total.detach().cpu(),
            "count": int(count),
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # applied when training starts (after the sanity check and the loaders are set up)
        self._rng_to_restore = checkpoint.get(RNG_KEY)
        saved = checkpoint.get(EPOCH_LOSS_KEY)
        if saved is not None:
            # Lightning resumes inside the saved epoch without calling on_train_epoch_start
            self._epoch_loss = (saved["total"], int(saved["count"]))
        self._epoch_loss_to_restore = saved
        meta = checkpoint.get(CHECKPOINT_KEY) or {}
        training = meta.get("training") or {}
        if "warmup_end_epoch" in training:
            self.warmup_end_epoch = training["warmup_end_epoch"]
        if self.schedule == "adaptive" and training.get("schedule") == "adaptive":
            # a time budget may have moved the plan: continue the saved one
            if training.get("horizon") is not None:
                self.horizon = int(training["horizon"])
            self.warmup_steps = int(training.get("warmup_steps", self.warmup_steps))
        if "temperature" in meta:
            self.temperature = float(meta["temperature"])
