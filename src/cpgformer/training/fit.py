"""``fit``: train a CpG Transformer on a dataset store with Lightning.

Run directory layout::

    RUN_DIR/config.json                  model, data and training parameters, store path + fingerprint
    RUN_DIR/checkpoints/best.ckpt        lowest validation loss (early stopping monitors the same)
    RUN_DIR/checkpoints/last.ckpt        latest; ``resume=True`` continues from it
    RUN_DIR/logs/version_<k>/metrics.csv one CSV log per (re)start; RUN_DIR/metrics.csv merges them
    RUN_DIR/learning_curves.png          training/validation loss, validation AUROC vs. baseline, lr
    RUN_DIR/summary.json                 final and best metrics, checkpoint paths
    RUN_DIR/init_key_map.tsv             with ``init_from``: how every parameter was initialised

A run is resumed exactly: checkpoints hold the model, optimiser, data-loader position, random
states and running epoch metrics, so a run killed at any point and resumed ends as the same run.
Transfer (``init_from``): see :mod:`cpgformer.training.transfer`.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import logging
import math
import os
import signal
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback, EarlyStopping, ModelCheckpoint, TQDMProgressBar
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.utilities.exceptions import SIGTERMException

from cpgformer import pretrained
from cpgformer.data.datamodule import DataConfig, SegmentDataModule
from cpgformer.data.profiles import CellProfiler, fit_for_training
from cpgformer.errors import UsageError
from cpgformer.io.store import open_dataset
from cpgformer.nn import ModelConfig
from cpgformer.training import plan as step_plan
from cpgformer.training.config import TrainConfig
from cpgformer.training.progress_callback import TrainingProgress
from cpgformer.training.runlog import (
    killed_before_first_checkpoint,
    merge_logs,
    read_metrics,
    remove_partials,
    remove_run_files,
    write_json,
)
from cpgformer.training.schedule import CALIBRATION_STEPS, SchedulePlan, TimeBudget, plan_schedule
from cpgformer.training.task import CHECKPOINT_KEY, CpGTask
from cpgformer.training.transfer import (
    CELL_EMBEDDING_KEYS,
    load_source,
    source_profiles,
    transfer_weights,
)
from cpgformer.utils.atomic import atomic_file
from cpgformer.utils.locks import output_lock

__all__ = [
    "CELL_EMBEDDING_KEYS",
    "FitResult",
    "TrainConfig",
    "fit",
    "load_source",
    "read_metrics",
    "transfer_weights",
]

log = logging.getLogger(__name__)


@dataclass
class FitResult:
    run_dir: Path
    best_checkpoint: Path | None
    last_checkpoint: Path | None
    metrics: dict[str, float] = field(default_factory=dict)
    key_map: list[tuple[str, str, str]] = field(default_factory=list)
    split: str = ""
    """How the store was split (printed by the CLI; an automatic choice says why)."""
    schedule: dict[str, Any] = field(default_factory=dict)
    """The resolved schedule (:class:`cpgformer.training.schedule.SchedulePlan` as a dict)."""
    interrupted: str = ""
    """"SIGTERM" or "SIGINT" when a signal stopped training (``last_checkpoint`` holds the state)."""
    masking: str = ""
    """The training perturbation (:meth:`cpgformer.data.masking.MaskingConfig.describe`)."""


@dataclass
class _Start:
    """What a run starts from: its model and data parameters, the checkpoint it resumes, the
    weights and cell profiles it is initialised from."""

    config: ModelConfig | None
    data: DataConfig
    ckpt_path: str | None = None
    source_state: dict[str, torch.Tensor] | None = None
    source_profiles: dict | None = None


@dataclass
class _Callbacks:
    best: ModelCheckpoint
    last: ModelCheckpoint
    early: EarlyStopping | None
    budget: TimeBudget | None = None


def _limit(value: float | None) -> float | int | None:
    if value is None:
        return None
    return int(value) if float(value) >= 1 and float(value).is_integer() else float(value)


def _devices(value: str | int) -> Any:
    text = str(value)
    if text == "auto":
        return "auto"
    if text.lstrip("-").isdigit():
        return int(text)
    return text


# ---- fit -----------------------------------------------------------------------------------------
def fit(
    store: str | os.PathLike[str],
    run_dir: str | os.PathLike[str],
    config: ModelConfig | None = None,
    data: DataConfig | None = None,
    training: TrainConfig | None = None,
    *,
    resume: bool = False,
    init_from: str | os.PathLike[str] | None = None,
    init_hparams: Mapping[str, Any] | None = None,
    callbacks: Sequence[Any] = (),
    progress_bar: bool = True,
) -> FitResult:
    """Train on ``store``, writing checkpoints, logs and plots to ``run_dir``.

    ``config``: the model (``n_cells`` is always the store's; default: the published model, with the
    DNA branch only when the store has a FASTA). ``resume``: continue from ``run_dir``'s last
    checkpoint with its model and data parameters. ``init_from``: transfer (see module doc).
    A second process training into the same ``run_dir`` is refused while this one runs.
    """
    kwargs = dict(
        resume=resume, init_from=init_from, init_hparams=init_hparams, callbacks=callbacks,
        progress_bar=progress_bar,
    )  # fmt: skip
    if not _launcher_rank_zero():  # (other ranks of a DDP run: rank 0 holds the lock)
        return _fit(store, run_dir, config, data, training, **kwargs)
    with output_lock(run_dir):
        remove_partials(Path(run_dir))
        return _fit(store, run_dir, config, data, training, **kwargs)


def _fit(
    store: str | os.PathLike[str],
    run_dir: str | os.PathLike[str],
    config: ModelConfig | None,
    data: DataConfig | None,
    training: TrainConfig | None,
    *,
    resume: bool,
    init_from: str | os.PathLike[str] | None,
    init_hparams: Mapping[str, Any] | None,
    callbacks: Sequence[Any],
    progress_bar: bool,
) -> FitResult:
    warnings.filterwarnings("ignore", message=".*overridden `transfer_batch_to_device`.*")
    warnings.filterwarnings("ignore", message=".*LeafSpec.*is deprecated.*")
    # small stores have fewer batches per epoch than the logging interval: metrics are still
    # logged every epoch and in the progress lines, the warning tells the user nothing
    warnings.filterwarnings("ignore", message=".*is smaller than the logging interval.*")
    started = time.monotonic()
    run = Path(run_dir)
    training = training or TrainConfig()
    ds = open_dataset(store)
    last = run / "checkpoints" / "last.ckpt"
    start = _start_of(run, store, ds, config, data or DataConfig(), resume, init_from)
    if init_from is not None:
        _initialise_from(start, ds, init_from, init_hparams)
    config = start.config or ModelConfig(
        n_cells=ds.n_cells, dna_window=1001 if ds.fasta_path else 0
    )
    if config.n_cells != ds.n_cells:
        config = dataclasses.replace(config, n_cells=ds.n_cells)

    data = start.data
    if start.ckpt_path is None:  # (a resumed run keeps the data plan it started with)
        budget = training.memory_budget_gb or 0.5 * step_plan.available_memory_gb()
        data = step_plan.fit_to_memory(config, data, ds.n_cells, budget)
    pl.seed_everything(training.seed, workers=True, verbose=False)
    dm = SegmentDataModule(
        store, data, data_mode=config.data_mode, dna_window=config.dna_window or 0,
        receptive_field=config.receptive_field_sites,
    )  # fmt: skip
    # the plan's step counts need the number of processes: provisional here, final after the Trainer
    sched = plan_schedule(training, 1)
    task = _task(config, training, sched, dm)
    if config.uses_profiles:
        task.set_profiler(_profiler_for_run(ds, dm, config, start), ds)
    key_map = _transfer(task, start.source_state)
    step_plan.report_plan(config, dm, data, training, ds.n_cells)
    cbs = _callbacks(last.parent, training)
    trainer = _trainer(run, training, sched, cbs, [*callbacks], progress_bar)
    if sched.schedule == "adaptive":
        sched = _plan_adaptive(trainer, task, dm, training, cbs, started)
    if trainer.is_global_zero:
        _write_run_record(run, store, dm, config, training, sched, init_from, key_map)
    interrupted = _fit_interruptible(trainer, task, dm, start.ckpt_path)
    if interrupted:
        log.warning(
            "%s: training stopped after step %d; %s saved (continue with --resume)",
            interrupted, trainer.global_step, last,
        )  # fmt: skip
    elif trainer.global_step > max(cbs.last._last_global_step_saved, 0) and not trainer.interrupted:
        # stopped between validations (max_steps, limit on batches): keep last.ckpt current
        trainer.save_checkpoint(str(last))
    return _finish(run, trainer, dm, sched, cbs, key_map, interrupted, started)


# ---- the steps of fit ----------------------------------------------------------------------------
def _start_of(
    run: Path,
    store: str | os.PathLike[str],
    ds: Any,
    config: ModelConfig | None,
    data: DataConfig,
    resume: bool,
    init_from: str | os.PathLike[str] | None,
) -> _Start:
    """Check ``run`` against what is asked (resume it, or start it) and say where to start from."""
    last = run / "checkpoints" / "last.ckpt"
    if resume and init_from is not None:
        raise UsageError("--resume and --init-from exclude each other")
    if resume:
        if not last.is_file():
            hint = (
                "; it stopped before its first checkpoint: run the same command without --resume "
                "to start it again"
                if killed_before_first_checkpoint(run)
                else ""
            )
            raise UsageError(f"{run}: nothing to resume (no {last}){hint}")
        meta = torch.load(last, map_location="cpu", weights_only=True).get(CHECKPOINT_KEY) or {}
        if meta.get("store_fingerprint") != ds.fingerprint:
            raise UsageError(
                f"{store}: store fingerprint {ds.fingerprint[:12]} differs from the one the run "
                f"was trained on ({str(meta.get('store_fingerprint'))[:12]})"
            )
        saved_data = {
            k: v
            for k, v in (meta.get("data") or {}).items()
            if k in DataConfig.__dataclass_fields__
        }
        data = DataConfig.from_dict({**saved_data, "num_workers": data.num_workers})
        log.info("resuming %s from %s", run, last)
        return _Start(ModelConfig.from_dict(meta["config"]), data, ckpt_path=str(last))
    if _launcher_rank_zero() and run.exists() and any(run.iterdir()):
        # (processes started by a DDP launcher find the directory their rank 0 is filling)
        if not killed_before_first_checkpoint(run):
            raise UsageError(
                f"{run}: run directory exists and is not empty (use --resume to continue it, "
                "or choose another directory)"
            )
        log.warning("%s: a run stopped here before its first checkpoint; starting it again", run)
        remove_run_files(run)
    return _Start(config, data)


def _initialise_from(
    start: _Start,
    ds: Any,
    init_from: str | os.PathLike[str],
    init_hparams: Mapping[str, Any] | None,
) -> None:
    """Take the architecture and weights of ``init_from`` into ``start`` (cells: ``ds``'s)."""
    init_from = pretrained.resolve(init_from)
    start.source_state, source_config, kind = load_source(init_from, init_hparams)
    start.source_profiles = source_profiles(init_from, kind)
    given = dict(init_hparams or {})
    if start.config is not None:
        given = {**start.config.to_dict(), **given}
    differs = {
        k: (v, getattr(source_config, k))
        for k, v in given.items()
        if hasattr(source_config, k)
        and k not in ("n_cells", "attention_impl")
        and getattr(source_config, k) != v
    }
    if differs and kind == "ours":
        log.warning(
            "architecture taken from %s, ignoring: %s",
            init_from,
            ", ".join(f"{k}={a!r} (file: {b!r})" for k, (a, b) in differs.items()),
        )
    runtime = {"attention_impl": given["attention_impl"]} if "attention_impl" in given else {}
    start.config = dataclasses.replace(source_config, n_cells=ds.n_cells, **runtime)
    log.info("initialising from %s checkpoint %s", kind, init_from)


def _task(
    config: ModelConfig, training: TrainConfig, sched: SchedulePlan, dm: SegmentDataModule
) -> CpGTask:
    task = CpGTask(
        config,
        lr=training.lr,
        warmup_steps=sched.warmup,
        lr_decay=training.lr_decay,
        schedule=sched.schedule,
        horizon=sched.horizon,
        final_lr_fraction=sched.final_lr_fraction,
        cells=dm.cells,
        store_fingerprint=dm.fingerprint,
        data_params=dm.params(),
    )
    task.model.set_dna_precision(training.dna_precision)
    return task


def _transfer(task: CpGTask, source_state: dict | None) -> list[tuple[str, str, str]]:
    if source_state is None:
        return []
    key_map = transfer_weights(task.model, source_state)
    n_loaded = sum(1 for k in key_map if k[2] == "loaded")
    log.info(
        "transfer: %d parameter tensors loaded, re-initialised: %s",
        n_loaded,
        ", ".join(k[0] for k in key_map if k[2] != "loaded"),
    )
    return key_map


def _callbacks(ckpt_dir: Path, training: TrainConfig) -> _Callbacks:
    best = ModelCheckpoint(
        dirpath=str(ckpt_dir),
        filename="best",
        monitor="val_loss",
        mode="min",
        save_top_k=1,
        enable_version_counter=False,
    )
    # Lightning saves "last" only together with a new best; a second, unmonitored callback keeps
    # last.ckpt current after every validation (what --resume needs)
    last = ModelCheckpoint(
        dirpath=str(ckpt_dir), filename="last", save_top_k=1, enable_version_counter=False
    )
    early = None
    if training.early_stopping:
        early = EarlyStopping(
            monitor="val_loss", mode="min", patience=training.patience, strict=False
        )
    return _Callbacks(best, last, early)


def _trainer(
    run: Path,
    training: TrainConfig,
    sched: SchedulePlan,
    cbs: _Callbacks,
    extra: list[Any],
    progress_bar: bool,
) -> pl.Trainer:
    loggers: list[Any] = [CSVLogger(save_dir=str(run), name="logs")]
    if training.tensorboard and (
        importlib.util.find_spec("tensorboard") or importlib.util.find_spec("tensorboardX")
    ):
        from lightning.pytorch.loggers import TensorBoardLogger  # (needs tensorboard: optional)

        loggers.append(TensorBoardLogger(save_dir=str(run), name="tensorboard"))
    last = Path(str(cbs.last.dirpath)) / "last.ckpt"
    callbacks: list[Any] = [cbs.best, cbs.last, _SaveOnInterrupt(last), TrainingProgress(), *extra]
    if cbs.early is not None:
        callbacks.append(cbs.early)
    if progress_bar:
        callbacks.append(TQDMProgressBar(refresh_rate=1))
    adaptive = sched.schedule == "adaptive"
    if adaptive and training.max_epochs != TrainConfig.max_epochs:
        log.warning("--max-epochs is ignored by the adaptive schedule (it counts steps or time)")
    return pl.Trainer(
        default_root_dir=str(run),
        accelerator=training.accelerator,
        devices=_devices(training.devices),
        strategy=training.strategy,
        num_nodes=training.num_nodes,
        precision=training.precision,
        max_epochs=-1 if adaptive else training.max_epochs,
        max_steps=-1 if adaptive else training.max_steps,
        limit_train_batches=_limit(training.limit_train_batches),
        limit_val_batches=_limit(training.limit_val_batches),
        val_check_interval=None if adaptive else _limit(training.val_check_interval),
        check_val_every_n_epoch=None if adaptive else 1,
        log_every_n_steps=training.log_every_n_steps,
        callbacks=callbacks,
        logger=loggers,
        enable_progress_bar=progress_bar,
        enable_model_summary=False,
        use_distributed_sampler=False,  # the DataModule assigns disjoint segments to ranks
        num_sanity_val_steps=1,
    )


def _plan_adaptive(
    trainer: pl.Trainer,
    task: CpGTask,
    dm: SegmentDataModule,
    training: TrainConfig,
    cbs: _Callbacks,
    started: float,
) -> SchedulePlan:
    """The adaptive schedule for the trainer's processes, applied to the trainer and the task."""
    sched = plan_schedule(training, dm.n_batches("train", trainer.world_size))
    task.horizon, task.warmup_steps = sched.horizon, sched.warmup
    trainer.val_check_interval = sched.val_interval
    trainer.fit_loop.epoch_loop.max_steps = sched.max_steps
    if cbs.early is not None:
        if sched.patience is None:
            trainer.callbacks.remove(cbs.early)
            cbs.early = None
        else:
            cbs.early.patience = sched.patience
    if sched.time_budget_s is not None:
        cbs.budget = TimeBudget(
            sched,
            started,
            fixed_interval=training.val_interval_steps is not None,
            fixed_warmup=training.warmup_steps is not None,
            early_stopping=cbs.early,
            n_val_batches=dm.n_batches("val", trainer.world_size),
        )
        trainer.callbacks.insert(0, cbs.budget)
    log.info(
        "adaptive schedule: %s%s",
        f"time budget {sched.time_budget_s:.0f} s (planned after {CALIBRATION_STEPS} steps)"
        if sched.time_budget_s is not None
        else f"{sched.horizon} steps, warm-up {sched.warmup}, validation every "
        f"{sched.val_interval} steps",
        f", early stopping after {sched.patience_steps} steps without improvement"
        if sched.patience
        else "",
    )
    return sched


def _write_run_record(
    run: Path,
    store: str | os.PathLike[str],
    dm: SegmentDataModule,
    config: ModelConfig,
    training: TrainConfig,
    sched: SchedulePlan,
    init_from: str | os.PathLike[str] | None,
    key_map: list[tuple[str, str, str]],
) -> None:
    run.mkdir(parents=True, exist_ok=True)
    write_json(
        run / "config.json",
        {
            "store": str(Path(store).resolve()),
            "store_fingerprint": dm.fingerprint,
            "model": config.to_dict(),
            "data": dm.params(),
            "training": training.to_dict(),
            "schedule_plan": sched.to_dict(),
            "init_from": None if init_from is None else str(init_from),
        },
    )
    if key_map:
        with atomic_file(run / "init_key_map.tsv", "w") as fh:
            fh.write("parameter\tsource\tstatus\n")
            for row in key_map:
                fh.write("\t".join(row) + "\n")


def _finish(
    run: Path,
    trainer: pl.Trainer,
    dm: SegmentDataModule,
    sched: SchedulePlan,
    cbs: _Callbacks,
    key_map: list[tuple[str, str, str]],
    interrupted: str,
    started: float,
) -> FitResult:
    """Merge the logs, write the summary and say how the run ended."""
    best = Path(cbs.best.best_model_path) if cbs.best.best_model_path else None
    last = Path(str(cbs.last.dirpath)) / "last.ckpt"
    last_path = last if last.is_file() else None
    metrics = {
        k: float(v) for k, v in trainer.callback_metrics.items() if torch.as_tensor(v).numel() == 1
    }
    if cbs.best.best_model_score is not None:
        metrics["best_val_loss"] = float(cbs.best.best_model_score)
    if trainer.is_global_zero:
        val_rows = [r for r in merge_logs(run) if "val_loss" in r]
        summary = {
            "metrics": metrics,
            "val_history": val_rows,
            "best_checkpoint": str(best) if best else None,
            "last_checkpoint": str(last_path) if last_path else None,
            "global_step": trainer.global_step,
            "epochs": trainer.current_epoch,
            "split": dm.plan.describe(),
            "split_note": dm.plan.note,
            "schedule": sched.to_dict(),
            "stopped_by": interrupted or _stopped_by(trainer, sched, cbs.budget, cbs.early),
            "seconds": round(time.monotonic() - started, 3),
        }
        write_json(run / "summary.json", summary)
        if val_rows:
            first, final = val_rows[0], val_rows[-1]
            log.info(
                "validation loss %.4f -> %.4f; AUROC %.4f (per-site mean of other cells %.4f)",
                first["val_loss"],
                final["val_loss"],
                final.get("val_auroc", math.nan),
                final.get("val_baseline_auroc", math.nan),
            )
    return FitResult(
        run, best, last_path, metrics, key_map, split=dm.plan.describe(),
        schedule=sched.to_dict(), interrupted=interrupted, masking=dm.config.masking.describe(),
    )  # fmt: skip


class _SaveOnInterrupt(Callback):
    """Writes ``path`` when training is stopped by SIGTERM (or SIGINT, see
    :func:`_fit_interruptible`), after the step in progress."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
        if isinstance(exception, SIGTERMException):
            trainer.save_checkpoint(str(self.path))


def _fit_interruptible(trainer: Any, task: Any, dm: Any, ckpt_path: str | None) -> str:
    """``trainer.fit`` that ends within a step of SIGTERM or SIGINT (Ctrl-C), saving ``last``.

    SIGINT is handled like SIGTERM (Lightning's own SIGINT handling exits the process without a
    checkpoint): the current step finishes, the checkpoint is written, and the signal's name is
    returned ("" when training ended normally).
    """
    received: list[str] = []

    def on_sigint(signum: int, frame: Any) -> None:
        if received:  # a second Ctrl-C: stop at once
            raise KeyboardInterrupt
        received.append("SIGINT")
        trainer._signal_connector.received_sigterm = True

    previous = None
    try:
        previous = signal.signal(signal.SIGINT, on_sigint)
    except ValueError:  # not the main thread: leave SIGINT alone
        previous = None
    try:
        trainer.fit(task, datamodule=dm, ckpt_path=ckpt_path)
    except SIGTERMException:
        # (the checkpoint was written by _SaveOnInterrupt before Lightning tore the run down)
        return received[0] if received else "SIGTERM"
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
    return ""


def _stopped_by(trainer: Any, sched: SchedulePlan, budget_cb: Any, early_cb: Any) -> str:
    if budget_cb is not None and budget_cb.stopped_by_budget:
        return "time budget"
    if early_cb is not None and getattr(early_cb, "stopped_epoch", 0) > 0:
        return "early stopping"
    if trainer.interrupted:
        return "interrupted"
    max_steps = trainer.max_steps
    if max_steps is not None and max_steps > 0 and trainer.global_step >= max_steps:
        return "max steps"
    return "max epochs" if sched.schedule == "published" else "end"


def _profiler_for_run(
    ds: Any, dm: SegmentDataModule, config: ModelConfig, start: _Start
) -> CellProfiler:
    """The cell profiler of a run with an inductive cell encoder: a resumed run's own, a fine-tuned
    model's (the features it learned on), else fitted on this store's training sites."""
    if start.ckpt_path is not None:
        meta = torch.load(start.ckpt_path, map_location="cpu", weights_only=True).get(
            CHECKPOINT_KEY
        )
        if meta and meta.get("cell_profiles"):
            return CellProfiler.from_dict(meta["cell_profiles"])
    if start.source_profiles:
        return CellProfiler.from_dict(start.source_profiles)
    return fit_for_training(ds, dm.splits["train"], config.profile_features)


def _launcher_rank_zero() -> bool:
    """False in a process that a distributed launcher started as another rank."""
    return all(os.environ.get(k, "0") == "0" for k in ("RANK", "LOCAL_RANK", "NODE_RANK"))
