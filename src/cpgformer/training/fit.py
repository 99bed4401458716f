"""``fit``: train a CpG Transformer on a dataset store with Lightning.

Run directory layout::

    RUN_DIR/config.json                  model, data and training parameters, store path + fingerprint
    RUN_DIR/checkpoints/best.ckpt        lowest validation loss (early stopping monitors the same)
    RUN_DIR/checkpoints/last.ckpt        latest; ``resume=True`` continues from it
    RUN_DIR/logs/version_<k>/metrics.csv one CSV log per (re)start; RUN_DIR/metrics.csv merges them
    RUN_DIR/learning_curves.png          training/validation loss, validation AUROC vs. baseline, lr
    RUN_DIR/summary.json                 final and best metrics, checkpoint paths
    RUN_DIR/init_key_map.tsv             with ``init_from``: how every parameter was initialised

Transfer (``init_from``): our checkpoint (architecture from the file) or an original CpG Transformer
``.pt``/``.ckpt`` (architecture from the file's keys plus the given hyperparameters, through
:mod:`cpgformer.legacy`). The cell embedding table is re-initialised for the new store's cells; every
other parameter is loaded with strict key and shape checks, and the key map is written and logged.
"""

from __future__ import annotations

import csv
import dataclasses
import importlib.util
import json
import logging
import math
import os
import shutil
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from cpgformer.data.datamodule import DataConfig, SegmentDataModule
from cpgformer.data.profiles import CellProfiler, fit_for_training
from cpgformer.errors import CheckpointError, UsageError
from cpgformer.nn import ModelConfig
from cpgformer.training import plan as step_plan
from cpgformer.training.config import TrainConfig
from cpgformer.training.schedule import (
    CALIBRATION_STEPS,
    SchedulePlan,
    TimeBudget,
    plan_schedule,
)
from cpgformer.training.task import CHECKPOINT_KEY, CpGTask
from cpgformer.utils.atomic import PARTIAL_PREFIX, atomic_file, atomic_path
from cpgformer.utils.locks import output_lock

log = logging.getLogger(__name__)

CELL_EMBEDDING_KEYS = ("cell_embed.weight",)
"""Parameters that index the cell table: re-initialised on transfer to another set of cells."""


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


# ---- transfer ------------------------------------------------------------------------------------
def _is_cpgformer_file(path: str | os.PathLike[str]) -> bool:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - not readable safely: not one of ours
        return False
    return isinstance(obj, Mapping) and (
        obj.get("format") == "cpgformer-model" or CHECKPOINT_KEY in obj
    )


def load_source(
    path: str | os.PathLike[str], hparams: Mapping[str, Any] | None = None
) -> tuple[dict[str, torch.Tensor], ModelConfig, str]:
    """Weights (our key names) and config of a checkpoint to initialise from; kind "ours"/"original".

    For original files, ``hparams`` (our or the original's names) complete what the keys do not tell.
    """
    if not Path(path).is_file():
        raise UsageError(f"{path}: no such checkpoint")
    if _is_cpgformer_file(path):
        from cpgformer.checkpoint import load_checkpoint

        loaded = load_checkpoint(path)
        return loaded.model.state_dict(), loaded.config, "ours"
    from cpgformer import legacy

    state, file_hparams = legacy.load_original(path)
    merged = {**file_hparams, **dict(hparams or {})}
    merged.pop("n_cells", None)  # always taken from the weights
    model = legacy.from_original(state, merged)
    return model.state_dict(), model.config, "original"


def transfer_weights(
    model: torch.nn.Module,
    source: Mapping[str, torch.Tensor],
    reinit_keys: Sequence[str] = CELL_EMBEDDING_KEYS,
) -> list[tuple[str, str, str]]:
    """Copy ``source`` into ``model``: every key except ``reinit_keys`` must exist with equal shape.

    Returns the key map ``[(target key, source key or "-", "loaded" | "re-initialised")]``.
    Raises :class:`CheckpointError` listing every missing, unexpected or mis-shaped key.
    """
    target = model.state_dict()
    reinit = set(reinit_keys)
    problems = []
    missing = sorted(k for k in target if k not in reinit and k not in source)
    unexpected = sorted(k for k in source if k not in target)
    if missing:
        problems.append("missing in the source: " + ", ".join(missing))
    if unexpected:
        problems.append("not in the new model: " + ", ".join(unexpected))
    for key, value in source.items():
        if key in target and key not in reinit and tuple(value.shape) != tuple(target[key].shape):
            problems.append(
                f"{key}: shape {list(value.shape)} in the source, {list(target[key].shape)} here"
            )
    if problems:
        raise CheckpointError("cannot initialise from the checkpoint: " + "; ".join(problems))
    new_state = {}
    key_map: list[tuple[str, str, str]] = []
    for key, value in target.items():
        if key in reinit:
            new_state[key] = value
            key_map.append((key, "-", "re-initialised"))
        else:
            new_state[key] = source[key].to(value.dtype)
            key_map.append((key, key, "loaded"))
    model.load_state_dict(new_state, strict=True)
    return key_map


# ---- plots and logs ------------------------------------------------------------------------------
def read_metrics(paths: Sequence[Path]) -> list[dict[str, float]]:
    """Rows of Lightning CSV logs (later files continue earlier ones), empty cells dropped.

    A resumed run restarts from its last checkpoint, so the steps an earlier log recorded after
    that checkpoint are logged again by the next one: the later log's rows replace them (no
    duplicate rows).
    """
    rows: list[dict[str, float]] = []
    for p in paths:
        if not p.is_file():
            continue
        new: list[dict[str, float]] = []
        with open(p, newline="") as fh:
            for row in csv.DictReader(fh):
                clean = {}
                for k, v in row.items():
                    if v not in ("", None):
                        try:
                            clean[k] = float(v)
                        except ValueError:
                            continue
                new.append(clean)
        steps = [r["step"] for r in new if "step" in r]
        if steps:
            first = min(steps)
            rows = [r for r in rows if r.get("step", -1.0) < first]
        rows.extend(new)
    return rows


def write_merged_metrics(rows: list[dict[str, float]], out: Path) -> None:
    keys = sorted({k for r in rows for k in r})
    with atomic_file(out, "w") as fh:
        writer = csv.DictWriter(fh, fieldnames=keys)
        writer.writeheader()
        writer.writerows(rows)


def plot_learning_curves(rows: list[dict[str, float]], out: Path) -> None:
    """PNG: training/validation loss vs. step, validation AUROC (and baseline), learning rate."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def series(key: str) -> tuple[list[float], list[float]]:
        pts = [(r["step"], r[key]) for r in rows if key in r and "step" in r]
        return [p[0] for p in pts], [p[1] for p in pts]

    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    for key, label in (("train_loss_step", "train (step)"), ("train_loss_epoch", "train (epoch)")):
        x, y = series(key)
        if x:
            axes[0].plot(x, y, label=label, alpha=0.5 if key.endswith("step") else 1.0)
    x, y = series("val_loss")
    if x:
        axes[0].plot(x, y, "o-", label="validation")
    axes[0].set(xlabel="optimiser step", ylabel="loss", title="loss on perturbed entries")
    axes[0].legend()
    for key, label in (
        ("val_auroc", "model"),
        ("val_baseline_auroc", "per-site mean of other cells"),
    ):
        x, y = series(key)
        if x:
            axes[1].plot(x, y, "o-", label=label)
    axes[1].set(xlabel="optimiser step", ylabel="AUROC", title="validation AUROC")
    axes[1].legend()
    x, y = series("lr")
    if x:
        axes[2].plot(x, y)
    axes[2].set(xlabel="optimiser step", ylabel="learning rate", title="learning rate")
    fig.tight_layout()
    with atomic_path(out) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)


def _write_json(path: Path, obj: Any) -> None:
    with atomic_file(path, "w") as fh:
        json.dump(obj, fh, indent=1, default=str)
        fh.write("\n")


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
        _remove_partials(Path(run_dir))
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
    import lightning.pytorch as pl
    from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint, TQDMProgressBar
    from lightning.pytorch.loggers import CSVLogger

    from cpgformer.io.store import open_dataset

    warnings.filterwarnings("ignore", message=".*overridden `transfer_batch_to_device`.*")
    warnings.filterwarnings("ignore", message=".*LeafSpec.*is deprecated.*")
    started = time.monotonic()
    run = Path(run_dir)
    training = training or TrainConfig()
    data = data or DataConfig()
    ds = open_dataset(store)
    ckpt_dir = run / "checkpoints"
    last = ckpt_dir / "last.ckpt"
    ckpt_path = None
    if resume and init_from is not None:
        raise UsageError("--resume and --init-from exclude each other")
    if resume:
        if not last.is_file():
            hint = (
                "; it stopped before its first checkpoint: run the same command without --resume "
                "to start it again"
                if _killed_before_first_checkpoint(run)
                else ""
            )
            raise UsageError(f"{run}: nothing to resume (no {last}){hint}")
        meta = torch.load(last, map_location="cpu", weights_only=True).get(CHECKPOINT_KEY) or {}
        if meta.get("store_fingerprint") != ds.fingerprint:
            raise UsageError(
                f"{store}: store fingerprint {ds.fingerprint[:12]} differs from the one the run "
                f"was trained on ({str(meta.get('store_fingerprint'))[:12]})"
            )
        config = ModelConfig.from_dict(meta["config"])
        saved_data = {
            k: v
            for k, v in (meta.get("data") or {}).items()
            if k in DataConfig.__dataclass_fields__
        }
        data = DataConfig.from_dict({**saved_data, "num_workers": data.num_workers})
        ckpt_path = str(last)
        log.info("resuming %s from %s", run, last)
    elif _launcher_rank_zero() and run.exists() and any(run.iterdir()):
        # (processes started by a DDP launcher find the directory their rank 0 is filling)
        if not _killed_before_first_checkpoint(run):
            raise UsageError(
                f"{run}: run directory exists and is not empty (use --resume to continue it, "
                "or choose another directory)"
            )
        log.warning("%s: a run stopped here before its first checkpoint; starting it again", run)
        _remove_run_files(run)

    source_state = None
    source_profiles = None
    if init_from is not None:
        source_state, source_config, kind = load_source(init_from, init_hparams)
        source_profiles = _source_profiles(init_from, kind)
        given = dict(init_hparams or {})
        if config is not None:
            given = {**config.to_dict(), **given}
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
        config = dataclasses.replace(source_config, n_cells=ds.n_cells, **runtime)
        log.info("initialising from %s checkpoint %s", kind, init_from)
    if config is None:
        config = ModelConfig(n_cells=ds.n_cells, dna_window=1001 if ds.fasta_path else 0)
    if config.n_cells != ds.n_cells:
        config = dataclasses.replace(config, n_cells=ds.n_cells)

    budget = training.memory_budget_gb or 0.5 * step_plan.available_memory_gb()
    data = step_plan.fit_to_memory(config, data, ds.n_cells, budget)
    pl.seed_everything(training.seed, workers=True, verbose=False)
    dm = SegmentDataModule(
        store,
        data,
        data_mode=config.data_mode,
        dna_window=config.dna_window or 0,
        receptive_field=config.receptive_field_sites,
    )
    # the plan's step counts need the number of processes: provisional here, final after the Trainer
    sched = plan_schedule(training, 1)
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
    if config.uses_profiles:
        task.set_profiler(_profiler_for_run(ds, dm, config, ckpt_path, source_profiles), ds)
    key_map: list[tuple[str, str, str]] = []
    if source_state is not None:
        key_map = transfer_weights(task.model, source_state)
        n_loaded = sum(1 for k in key_map if k[2] == "loaded")
        log.info(
            "transfer: %d parameter tensors loaded, re-initialised: %s",
            n_loaded,
            ", ".join(k[0] for k in key_map if k[2] != "loaded"),
        )

    _report_plan(config, dm, data, training, ds.n_cells)
    loggers: list[Any] = [CSVLogger(save_dir=str(run), name="logs")]
    if training.tensorboard and (
        importlib.util.find_spec("tensorboard") or importlib.util.find_spec("tensorboardX")
    ):
        from lightning.pytorch.loggers import TensorBoardLogger

        loggers.append(TensorBoardLogger(save_dir=str(run), name="tensorboard"))
    checkpoint_cb = ModelCheckpoint(
        dirpath=str(ckpt_dir),
        filename="best",
        monitor="val_loss",
        mode="min",
        save_top_k=1,
        enable_version_counter=False,
    )
    # Lightning saves "last" only together with a new best; a second, unmonitored callback keeps
    # last.ckpt current after every validation (what --resume needs)
    last_cb = ModelCheckpoint(
        dirpath=str(ckpt_dir), filename="last", save_top_k=1, enable_version_counter=False
    )
    from cpgformer.training.progress_callback import TrainingProgress

    cbs: list[Any] = [
        checkpoint_cb,
        last_cb,
        _save_on_interrupt(last),
        TrainingProgress(),
        *callbacks,
    ]
    early_cb = None
    if training.early_stopping:
        early_cb = EarlyStopping(
            monitor="val_loss", mode="min", patience=training.patience, strict=False
        )
        cbs.append(early_cb)
    if progress_bar:
        cbs.append(TQDMProgressBar(refresh_rate=1))
    adaptive = sched.schedule == "adaptive"
    if adaptive and training.max_epochs != TrainConfig.max_epochs:
        log.warning("--max-epochs is ignored by the adaptive schedule (it counts steps or time)")
    trainer = pl.Trainer(
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
        callbacks=cbs,
        logger=loggers,
        enable_progress_bar=progress_bar,
        enable_model_summary=False,
        use_distributed_sampler=False,  # the DataModule assigns disjoint segments to ranks
        num_sanity_val_steps=1,
    )
    budget_cb = None
    if adaptive:
        sched = plan_schedule(training, dm.n_batches("train", trainer.world_size))
        task.horizon, task.warmup_steps = sched.horizon, sched.warmup
        trainer.val_check_interval = sched.val_interval
        trainer.fit_loop.epoch_loop.max_steps = sched.max_steps
        if early_cb is not None:
            if sched.patience is None:
                trainer.callbacks.remove(early_cb)
                early_cb = None
            else:
                early_cb.patience = sched.patience
        if sched.time_budget_s is not None:
            budget_cb = TimeBudget(
                sched,
                started,
                fixed_interval=training.val_interval_steps is not None,
                fixed_warmup=training.warmup_steps is not None,
                early_stopping=early_cb,
                n_val_batches=dm.n_batches("val", trainer.world_size),
            )
            trainer.callbacks.insert(0, budget_cb)
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
    if trainer.is_global_zero:
        run.mkdir(parents=True, exist_ok=True)
        _write_json(
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
    interrupted = _fit_interruptible(trainer, task, dm, ckpt_path, last)
    if interrupted:
        log.warning(
            "%s: training stopped after step %d; %s saved (continue with --resume)",
            interrupted,
            trainer.global_step,
            last,
        )
    elif trainer.global_step > max(last_cb._last_global_step_saved, 0) and not trainer.interrupted:
        # stopped between validations (max_steps, limit on batches): keep last.ckpt current
        trainer.save_checkpoint(str(last))

    best = Path(checkpoint_cb.best_model_path) if checkpoint_cb.best_model_path else None
    last_path = last if last.is_file() else None
    metrics = {
        k: float(v) for k, v in trainer.callback_metrics.items() if torch.as_tensor(v).numel() == 1
    }
    if checkpoint_cb.best_model_score is not None:
        metrics["best_val_loss"] = float(checkpoint_cb.best_model_score)
    if trainer.is_global_zero:
        logs = sorted((run / "logs").glob("version_*/metrics.csv"), key=_version_key)
        rows = read_metrics(logs)
        if rows:
            write_merged_metrics(rows, run / "metrics.csv")
            plot_learning_curves(rows, run / "learning_curves.png")
        val_rows = [r for r in rows if "val_loss" in r]
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
            "stopped_by": interrupted or _stopped_by(trainer, sched, budget_cb, early_cb),
            "seconds": round(time.monotonic() - started, 3),
        }
        _write_json(run / "summary.json", summary)
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
        run,
        best,
        last_path,
        metrics,
        key_map,
        split=dm.plan.describe(),
        schedule=sched.to_dict(),
        interrupted=interrupted,
    )


def _save_on_interrupt(path: Path) -> Any:
    """A callback writing ``path`` when training is stopped by SIGTERM (or SIGINT, see
    :func:`_fit_interruptible`), after the step in progress."""
    from lightning.pytorch.callbacks import Callback
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    class SaveOnInterrupt(Callback):
        def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
            if isinstance(exception, SIGTERMException):
                trainer.save_checkpoint(str(path))

    return SaveOnInterrupt()


def _fit_interruptible(trainer: Any, task: Any, dm: Any, ckpt_path: str | None, last: Path) -> str:
    """``trainer.fit`` that ends within a step of SIGTERM or SIGINT (Ctrl-C), saving ``last``.

    SIGINT is handled like SIGTERM (Lightning's own SIGINT handling exits the process without a
    checkpoint): the current step finishes, the checkpoint is written, and the signal's name is
    returned ("" when training ended normally).
    """
    import signal

    from lightning.pytorch.utilities.exceptions import SIGTERMException

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


def _report_plan(
    config: ModelConfig,
    dm: SegmentDataModule,
    data: DataConfig,
    training: TrainConfig,
    n_cells: int,
) -> step_plan.StepEstimate:
    """Log the estimated time per step and epoch before training; warn with a concrete suggestion
    when a step would take impractically long."""
    cells = step_plan.cells_per_batch(n_cells, data.resample_cells)
    device = "cpu"
    if training.accelerator in ("gpu", "cuda", "auto") and torch.cuda.is_available():
        device = "cuda"
    estimate = step_plan.estimate_step(
        config,
        cells=cells,
        segment_length=min(data.segment_length, max(s.length for s in dm.splits["train"])),
        batch_size=data.batch_size,
        steps_per_epoch=math.ceil(len(dm.splits["train"]) / data.batch_size),
        device=device,
    )
    log.info(
        "plan: ~%.2f s per training step of %d tokens on %s (~%.0f tokens/s), ~%s per epoch of %d "
        "steps; ~%.1f GB of activations",
        estimate.seconds_per_step,
        estimate.tokens_per_step,
        device,
        estimate.tokens_per_second,
        _duration(estimate.seconds_per_epoch),
        estimate.steps_per_epoch,
        estimate.activation_gb,
    )
    suggestion = step_plan.advice(config, cells, estimate)
    if suggestion:
        log.warning(
            "one training step will take ~%s (%d cells per batch): consider %s",
            _duration(estimate.seconds_per_step),
            cells,
            suggestion,
        )
    return estimate


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _profiler_for_run(
    ds: Any,
    dm: SegmentDataModule,
    config: ModelConfig,
    ckpt_path: str | None,
    source_profiles: dict | None,
) -> CellProfiler:
    """The cell profiler of a run with an inductive cell encoder: a resumed run's own, a fine-tuned
    model's (the features it learned on), else fitted on this store's training sites."""
    if ckpt_path is not None:
        meta = torch.load(ckpt_path, map_location="cpu", weights_only=True).get(CHECKPOINT_KEY)
        if meta and meta.get("cell_profiles"):
            return CellProfiler.from_dict(meta["cell_profiles"])
    if source_profiles:
        return CellProfiler.from_dict(source_profiles)
    return fit_for_training(ds, dm.splits["train"], config.profile_features)


def _source_profiles(path: str | os.PathLike[str], kind: str) -> dict | None:
    if kind != "ours":
        return None
    from cpgformer.checkpoint import load_checkpoint

    return load_checkpoint(path).cell_profiles


RUN_FILES = (
    "config.json", "checkpoints", "logs", "tensorboard", "metrics.csv", "learning_curves.png",
    "summary.json", "init_key_map.tsv",
)  # fmt: skip
"""What ``fit`` writes in a run directory."""


def _killed_before_first_checkpoint(run: Path) -> bool:
    """Whether ``run`` holds only what a run stopped before its first checkpoint left: its
    ``config.json`` (recording a store), no ``last.ckpt``, no summary, nothing fit did not write."""
    try:
        recorded = json.loads((run / "config.json").read_text())
    except (OSError, ValueError):
        return False
    if not isinstance(recorded, dict) or "store_fingerprint" not in recorded:
        return False
    if (run / "checkpoints" / "last.ckpt").exists() or (run / "summary.json").exists():
        return False
    return all(p.name in RUN_FILES or _is_partial(p.name) for p in run.iterdir())


def _is_partial(name: str) -> bool:
    """A temporary file of an atomic write of one of the run files (left by a killed run)."""
    return any(name.startswith(f"{PARTIAL_PREFIX}{f}-") for f in RUN_FILES)


def _remove_partials(run: Path) -> None:
    if run.is_dir():
        for path in run.iterdir():
            if _is_partial(path.name) and path.is_file():
                path.unlink()


def _remove_run_files(run: Path) -> None:
    for name in RUN_FILES:
        path = run / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
    _remove_partials(run)


def _launcher_rank_zero() -> bool:
    """False in a process that a distributed launcher started as another rank."""
    return all(os.environ.get(k, "0") == "0" for k in ("RANK", "LOCAL_RANK", "NODE_RANK"))


def _version_key(path: Path) -> int:
    name = path.parent.name
    try:
        return int(name.split("_", 1)[1])
    except (IndexError, ValueError):
        return -1
