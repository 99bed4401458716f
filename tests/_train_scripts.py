"""Scripts the training tests run in subprocesses (killed runs, DDP). ``python _train_scripts.py MODE ...``.

Lightning's DDP launcher re-executes this file for rank 1 with the same arguments.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

import torch
from lightning.pytorch.callbacks import Callback

from cpgformer.data.datamodule import DataConfig
from cpgformer.nn import ModelConfig
from cpgformer.training.fit import TrainConfig, fit


def tiny(n_cells: int) -> ModelConfig:
    return ModelConfig(
        n_cells=n_cells,
        dna_window=0,
        n_layers=1,
        hidden=16,
        n_heads=2,
        head_dim=4,
        site_window=5,
        cell_embed=8,
        state_embed=8,
    )


class KillAt(Callback):
    """SIGKILL the process at the start of batch ``batch`` of epoch ``epoch``."""

    def __init__(self, epoch: int, batch: int) -> None:
        self.epoch, self.batch = epoch, batch

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:  # noqa: ANN001
        if trainer.current_epoch == self.epoch and batch_idx == self.batch:
            os.kill(os.getpid(), signal.SIGKILL)


class KillAtStep(Callback):
    """Send ``signum`` to this process at the start of optimiser step ``step`` (printing when)."""

    def __init__(self, step: int, signum: int) -> None:
        self.step, self.signum = step, signum

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:  # noqa: ANN001
        if trainer.global_step == self.step:
            print(f"signal at {time.monotonic():.3f}", flush=True)
            os.kill(os.getpid(), self.signum)


class DumpStart(Callback):
    """Save step, epoch, optimiser and model state when training (re)starts."""

    def __init__(self, out: Path) -> None:
        self.out = out

    def on_train_start(self, trainer, pl_module) -> None:  # noqa: ANN001
        torch.save(
            {
                "step": trainer.global_step,
                "epoch": trainer.current_epoch,
                "optimizer": trainer.optimizers[0].state_dict(),
                "model": pl_module.model.state_dict(),
            },
            self.out,
        )


class Record(Callback):
    """Per rank: keys of the training/validation segments seen and the validation predictions."""

    def __init__(self, out_dir: Path) -> None:
        self.out_dir = out_dir
        self.train: list[tuple[int, int]] = []
        self.val: list[tuple[int, int]] = []
        self.scores: list[torch.Tensor] = []
        self.labels: list[torch.Tensor] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:  # noqa: ANN001
        self.train += list(zip(batch.chrom_ids.tolist(), batch.segment_ids.tolist()))

    def on_validation_batch_end(
        self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0
    ):  # noqa: ANN001
        if trainer.sanity_checking:
            return
        self.val += list(zip(batch.chrom_ids.tolist(), batch.segment_ids.tolist()))
        self.scores.append(outputs["scores"].cpu())
        self.labels.append(outputs["labels"].cpu())

    def on_fit_end(self, trainer, pl_module) -> None:  # noqa: ANN001
        torch.save(
            {
                "rank": trainer.global_rank,
                "world_size": trainer.world_size,
                "train": self.train,
                "val": self.val,
                "scores": torch.cat(self.scores),
                "labels": torch.cat(self.labels),
            },
            self.out_dir / f"rank{trainer.global_rank}.pt",
        )


def main(argv: list[str]) -> None:
    mode, store, run = argv[0], argv[1], Path(argv[2])
    data = DataConfig(segment_length=16, val_chromosomes=("5",), test_chromosomes=())
    if mode in ("kill", "resume"):
        training = TrainConfig(
            schedule="published",
            max_epochs=3,
            warmup_steps=2,
            log_every_n_steps=1,
            tensorboard=False,
            accelerator="cpu",
            devices="1",
        )
        cb = KillAt(1, 1) if mode == "kill" else DumpStart(run.parent / "resumed.pt")
        fit(
            store,
            run,
            tiny(4),
            data,
            training,
            resume=mode == "resume",
            callbacks=[cb],
            progress_bar=False,
        )
    elif mode.startswith("exact-"):
        # adaptive schedule, validation (and last.ckpt) every 4 steps, 5 training batches per
        # epoch: checkpoints fall inside epochs; dropout on (random state matters)
        training = TrainConfig(
            max_steps=14,
            val_interval_steps=4,
            warmup_steps=2,
            log_every_n_steps=1,
            tensorboard=False,
            accelerator="cpu",
            devices="1",
        )
        what = mode.split("-", 1)[1]
        callbacks = {
            "kill": [KillAtStep(9, signal.SIGKILL)],
            "early": [KillAtStep(2, signal.SIGKILL)],  # before the first checkpoint
            "term": [KillAtStep(6, signal.SIGTERM)],
            "int": [KillAtStep(6, signal.SIGINT)],
        }.get(what, [])
        result = fit(
            store,
            run,
            tiny(4),
            data,
            training,
            resume=what == "resume",
            callbacks=callbacks,
            progress_bar=False,
        )
        if result.interrupted:
            print(f"interrupted {result.interrupted} at {time.monotonic():.3f}")
    elif mode == "ddp":
        training = TrainConfig(
            schedule="published",
            max_epochs=1,
            warmup_steps=2,
            log_every_n_steps=1,
            tensorboard=False,
            accelerator="cpu",
            devices="2",
            strategy="ddp",
        )
        fit(store, run, tiny(4), data, training, callbacks=[Record(run.parent)], progress_bar=False)
    else:
        raise SystemExit(f"unknown mode {mode}")


if __name__ == "__main__":
    torch.set_num_threads(1)
    main(sys.argv[1:])
