"""Adaptive (step/time) and published (epoch) schedules, time budgets, honest validation metrics."""

from __future__ import annotations

import csv
import json
import logging
import math
import sys
from pathlib import Path

import numpy as np
import pytest

from cpgformer.data.datamodule import DataConfig
from cpgformer.errors import UsageError
from cpgformer.training.config import TrainConfig, parse_duration
from cpgformer.training.schedule import adaptive_lr, default_horizon, plan_schedule

sys.path.insert(0, str(Path(__file__).parent))
from _training_helpers import dense_to_chrom, make_store  # noqa: E402
from test_training import tiny_config  # noqa: E402


def _fast(**kw: object) -> TrainConfig:
    base = dict(log_every_n_steps=1, tensorboard=False, accelerator="cpu", devices="1")
    base.update(kw)
    return TrainConfig(**base)


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_parse_duration() -> None:
    assert [parse_duration(t) for t in ("900", "90s", "15m", "1h30m", "1.5h", "00:15:00")] == [
        900.0,
        90.0,
        900.0,
        5400.0,
        5400.0,
        900.0,
    ]
    for bad in ("abc", "15x", "0", "-3m", "1h-2m"):
        with pytest.raises(UsageError):
            parse_duration(bad)
    with pytest.raises(UsageError, match="only with --schedule adaptive"):
        TrainConfig(schedule="published", time_budget="15m")
    with pytest.raises(UsageError, match="schedule"):
        TrainConfig(schedule="epochs")


def test_adaptive_lr_by_hand() -> None:
    lrs = [adaptive_lr(s, 1.0, 4, 14, 0.1) for s in range(16)]
    assert lrs[:4] == [0.25, 0.5, 0.75, 1.0]
    # cosine from 1.0 at step 4 to 0.1 at step 14: half way (step 9) = 0.55
    assert math.isclose(lrs[9], 0.55)
    assert math.isclose(lrs[14], 0.1) and math.isclose(lrs[15], 0.1)
    assert all(a >= b for a, b in zip(lrs[4:], lrs[5:]))


def test_plans_adapt_to_store_size_and_budget() -> None:
    # no limit: 20 passes over the training batches, clamped to [1000, 100000] steps
    assert default_horizon(2) == 1000 and default_horizon(300) == 6000
    assert default_horizon(10**6) == 100_000
    small = plan_schedule(TrainConfig(), 2)
    assert (small.horizon, small.warmup, small.val_interval) == (1000, 50, 50)
    assert small.patience == 5 and small.max_steps == 1000 and small.max_epochs == -1
    big = plan_schedule(TrainConfig(), 3000)
    assert (big.horizon, big.warmup, big.val_interval, big.patience) == (60000, 1000, 3000, 5)
    # --max-steps: the decay ends there; no early stopping unless patience is given in steps
    steps = plan_schedule(TrainConfig(max_steps=400), 2)
    assert (steps.horizon, steps.warmup, steps.val_interval, steps.patience) == (400, 20, 20, None)
    patient = plan_schedule(TrainConfig(max_steps=400, patience_steps=100), 2)
    assert patient.patience == 5
    budget = plan_schedule(TrainConfig(time_budget="15m"), 2)
    assert budget.time_budget_s == 900 and budget.max_steps == -1 and budget.patience is None
    # the published preset is untouched: 1000 warm-up steps, per-epoch decay and patience
    pub = plan_schedule(TrainConfig(schedule="published"), 2)
    assert (pub.warmup, pub.horizon, pub.patience, pub.max_epochs) == (1000, None, 10, 1000)


def test_max_steps_run_follows_the_planned_cosine(tmp_path: Path) -> None:
    from cpgformer.training.fit import fit

    store = make_store(tmp_path / "s", {"1": 48, "5": 16, "10": 16}, 4, seed=2)
    result = fit(
        store,
        tmp_path / "run",
        tiny_config(4),
        DataConfig(segment_length=16),
        _fast(max_steps=40, lr=1e-3, warmup_steps=4, final_lr_fraction=0.1),
        progress_bar=False,
    )
    rows = _rows(tmp_path / "run" / "metrics.csv")
    lrs = {int(float(r["step"])): float(r["lr"]) for r in rows if r["lr"]}
    assert sorted(lrs) == list(range(40))  # 40 steps = 13+ epochs of 3 segments, never epochs
    for s, lr in lrs.items():
        assert math.isclose(lr, adaptive_lr(s, 1e-3, 4, 40, 0.1), rel_tol=1e-5), s
    val_steps = [int(float(r["step"])) for r in rows if r["val_loss"]]
    assert val_steps == [1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31, 33, 35, 37, 39]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["stopped_by"] == "max steps" and summary["global_step"] == 40
    assert result.schedule["val_interval"] == 2 and result.schedule["horizon"] == 40
    # the run's config.json is a valid --config for another run
    import argparse

    from cpgformer.commands import train as cmd

    parser = argparse.ArgumentParser()
    cmd.add_arguments(parser)
    args = parser.parse_args(["S", "-o", "R", "--config", str(tmp_path / "run" / "config.json")])
    model, data, training, _ = cmd.build_configs(args, n_cells=4, has_fasta=False)
    assert model == tiny_config(4) and data == DataConfig(segment_length=16)
    assert training == _fast(max_steps=40, lr=1e-3, warmup_steps=4, final_lr_fraction=0.1)


@pytest.mark.slow
def test_two_segment_store_trains_for_the_whole_budget(tmp_path: Path) -> None:
    """Acceptance: a store of two segments (one trains, one validates) trains for the budget."""
    from cpgformer.training.fit import fit

    budget = 8.0
    store = make_store(tmp_path / "s", {"1": 32, "5": 32}, 4, seed=3)
    result = fit(
        store,
        tmp_path / "run",
        tiny_config(4),
        DataConfig(segment_length=32, val_chromosomes=("5",), test_chromosomes=()),
        _fast(time_budget=f"{budget}s", warmup_steps=1),
        progress_bar=False,
    )
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert result.split.startswith("chromosome hold-out")
    assert summary["stopped_by"] == "time budget"
    # the whole budget used (setup included), not stopped after a few 1-step "epochs"
    assert 0.85 * budget <= summary["seconds"] <= budget + 1.0, summary["seconds"]
    # one step per epoch: many epochs, however slow the machine
    assert summary["global_step"] >= 3 and summary["epochs"] >= summary["global_step"] - 1
    # the decay was planned to end where the budget ended
    assert summary["schedule"]["horizon"] <= summary["global_step"] + 1
    lrs = [float(r["lr"]) for r in _rows(tmp_path / "run" / "metrics.csv") if r["lr"]]
    assert len(lrs) == summary["global_step"] and lrs[-1] < 0.6 * max(lrs)
    # the final validation ran at the end and the best checkpoint is among the validations
    val = summary["val_history"]
    assert val and int(val[-1]["step"]) == summary["global_step"] - 1
    assert result.best_checkpoint is not None and result.best_checkpoint.is_file()
    assert math.isclose(
        result.metrics["best_val_loss"], min(r["val_loss"] for r in val), rel_tol=1e-6
    )


def test_one_class_validation_logs_nan_auroc_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from cpgformer.io.store import write_store
    from cpgformer.training.fit import fit

    rng = np.random.default_rng(0)
    train = (rng.random((32, 3)) < 0.5).astype(np.int8)
    val = np.ones((16, 3), dtype=np.int8)  # every validation call methylated
    pos = np.arange(32, dtype=np.int64) * 10 + 100
    write_store(
        tmp_path / "s",
        [dense_to_chrom("1", pos, train), dense_to_chrom("5", pos[:16], val)],
        ["a", "b", "c"],
    )
    with caplog.at_level(logging.WARNING, logger="cpgformer"):
        fit(
            tmp_path / "s",
            tmp_path / "run",
            tiny_config(3),
            DataConfig(segment_length=16, val_chromosomes=("5",), test_chromosomes=()),
            _fast(schedule="published", max_epochs=1),
            progress_bar=False,
        )
    rows = [r for r in _rows(tmp_path / "run" / "metrics.csv") if r["val_loss"]]
    assert rows and all(r["val_auroc"] == "nan" for r in rows)
    assert all(r["val_auprc"] == "nan" and r["val_baseline_auroc"] == "nan" for r in rows)
    assert all(float(r["val_accuracy"]) >= 0 for r in rows)
    assert any("one class" in r.message for r in caplog.records)


def test_time_budget_state_continues_the_budget_after_a_resume() -> None:
    """A resumed run spends what is left of the budget (not a new one) and keeps its plan."""
    import time

    from cpgformer.training.schedule import TimeBudget, plan_schedule

    training = TrainConfig(time_budget="100")
    first = TimeBudget(plan_schedule(training, 10), time.monotonic() - 30.0)
    first.planned, first._val_every_s, first._n_val_planned = True, 5.0, 14
    first._next_val = time.monotonic() + 2.0
    first._val_costs = [0.5, 0.7]
    first.plan.horizon, first.plan.warmup = 321, 16
    state = first.state_dict()
    resumed = TimeBudget(plan_schedule(training, 10), time.monotonic())
    resumed.load_state_dict(state)
    now = time.monotonic()
    assert 69.0 < resumed.deadline - now <= 70.5
    assert 1.0 < resumed._next_val - now <= 2.0
    assert (resumed.planned, resumed._val_every_s, resumed._n_val_planned) == (True, 5.0, 14)
    assert resumed._val_costs == [0.5, 0.7]
    assert (resumed.plan.horizon, resumed.plan.warmup) == (321, 16)
