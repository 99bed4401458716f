"""Resumed runs: exact continuation after a kill, SIGTERM/SIGINT, metrics without duplicates."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from cpgformer.training.fit import read_metrics

sys.path.insert(0, str(Path(__file__).parent))
from _training_helpers import make_store  # noqa: E402
from test_training import run_script  # noqa: E402


def test_merged_metrics_have_no_duplicate_rows(tmp_path: Path) -> None:
    first = tmp_path / "version_0.csv"
    second = tmp_path / "version_1.csv"
    # killed after step 5; the last checkpoint was at step 3 (validation row), so the resumed
    # process logs steps 4 and 5 again
    first.write_text(
        "epoch,step,train_loss_step,val_loss\n"
        + "".join(f"0,{s},{s / 10},\n" for s in range(6))
        + "0,3,,0.5\n"
    )
    second.write_text(
        "epoch,step,train_loss_step,val_loss\n" + "".join(f"1,{s},{s},\n" for s in range(4, 8))
    )
    rows = read_metrics([first, second])
    steps = [(r["step"], "val_loss" in r) for r in rows]
    assert steps == [(0, False), (1, False), (2, False), (3, False), (3, True)] + [
        (s, False) for s in range(4, 8)
    ]
    assert [r["train_loss_step"] for r in rows if r["step"] >= 4] == [4, 5, 6, 7]


def _final(run: Path) -> tuple[dict, list]:
    import csv

    import torch

    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    with open(run / "metrics.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    return ckpt, rows  # every column: epoch means, validation metrics and baseline included


def _assert_same_run(a: Path, b: Path) -> None:
    import torch

    (ca, ra), (cb, rb) = _final(a), _final(b)
    assert ca["global_step"] == cb["global_step"] == 14
    assert ca["state_dict"].keys() == cb["state_dict"].keys()
    for key, value in ca["state_dict"].items():
        assert torch.equal(value, cb["state_dict"][key]), key
    assert ra == rb


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(store, run directory) of the uninterrupted reference run (14 steps, 5 per epoch)."""
    base = tmp_path_factory.mktemp("exact")
    store = make_store(base / "store", {"1": 80, "5": 16}, 4, seed=8)
    full = run_script("exact-full", str(store), str(base / "full"))
    assert full.returncode == 0, full.stderr[-3000:]
    return store, base / "full"


@pytest.mark.slow
def test_killed_run_resumed_equals_the_uninterrupted_run(
    tmp_path: Path, uninterrupted: tuple[Path, Path]
) -> None:
    """A run killed inside an epoch (SIGKILL) and resumed gives the same weights and metrics as
    an uninterrupted run with the same seed: data order, masks and random state continue."""
    store, full = uninterrupted
    run = tmp_path / "run"
    killed = run_script("exact-kill", str(store), str(run))
    assert killed.returncode == -9, killed.stderr[-2000:]
    import torch

    saved = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert (saved["epoch"], saved["global_step"]) == (1, 8)  # 3 batches into epoch 1
    resumed = run_script("exact-resume", str(store), str(run))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    _assert_same_run(full, run)


@pytest.mark.slow
@pytest.mark.parametrize("signame", ["term", "int"])
def test_sigterm_and_sigint_save_a_checkpoint_and_stop_within_seconds(
    tmp_path: Path, signame: str, uninterrupted: tuple[Path, Path]
) -> None:
    store, full = uninterrupted
    run = tmp_path / "run"
    stopped = run_script(f"exact-{signame}", str(store), str(run))
    assert stopped.returncode == 0, stopped.stderr[-3000:]
    sent = float(stopped.stdout.split("signal at ")[1].split()[0])
    line = stopped.stdout.split("interrupted ")[1].split()
    assert line[0] == {"term": "SIGTERM", "int": "SIGINT"}[signame]
    assert float(line[2]) - sent < 5.0  # the step in progress, the checkpoint, no more
    import torch

    saved = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert saved["global_step"] == 7  # the step in progress when the signal came was finished
    summary = json.loads((run / "summary.json").read_text())
    assert summary["stopped_by"] == line[0]
    resumed = run_script("exact-resume", str(store), str(run))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    _assert_same_run(full, run)


@pytest.mark.slow
def test_run_killed_before_its_first_checkpoint_is_started_again(
    tmp_path: Path, uninterrupted: tuple[Path, Path]
) -> None:
    """The same command again (no --resume) starts a run that died before its first checkpoint
    from the beginning, replacing only what that run wrote; anything else there is refused."""
    store, full = uninterrupted
    run = tmp_path / "run"
    killed = run_script("exact-early", str(store), str(run))
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert (run / "config.json").is_file() and not (run / "checkpoints" / "last.ckpt").exists()
    resumed = run_script("exact-resume", str(store), str(run))
    assert resumed.returncode != 0 and "without --resume to start it again" in resumed.stderr
    again = run_script("exact-full", str(store), str(run))
    assert again.returncode == 0, again.stderr[-3000:]
    _assert_same_run(full, run)
    assert not list(tmp_path.glob(".*"))  # the lock is gone
    # a folder holding something the run did not write is never taken over
    other = tmp_path / "other"
    other.mkdir()
    (other / "config.json").write_text((run / "config.json").read_text())
    (other / "notes.txt").write_text("mine")
    refused = run_script("exact-full", str(store), str(other))
    assert refused.returncode != 0 and "not empty" in refused.stderr
    assert (other / "notes.txt").read_text() == "mine"


def test_a_second_train_into_a_run_being_written_is_refused(tmp_path: Path) -> None:
    from cpgformer.errors import UsageError
    from cpgformer.training.fit import fit
    from cpgformer.utils.locks import output_lock

    run = tmp_path / "run"
    with output_lock(run), pytest.raises(UsageError, match="another cpgformer process"):
        fit(tmp_path / "no-store", run)  # refused before anything is read or written
    assert not run.exists() and not list(tmp_path.glob(".*"))
