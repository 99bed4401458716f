"""Training progress lines (tokens/s, ETA) and the final validation that makes best.ckpt exist."""

from __future__ import annotations

import csv
import logging
import sys
from pathlib import Path

import pytest

from cpgformer.data.datamodule import DataConfig
from cpgformer.nn import ModelConfig
from cpgformer.training.fit import TrainConfig, fit
from cpgformer.utils import progress

sys.path.insert(0, str(Path(__file__).parent))
from _training_helpers import make_store  # noqa: E402


@pytest.fixture
def log_mode(monkeypatch: pytest.MonkeyPatch) -> None:
    """Progress as in a batch job: log lines (stderr is no terminal), every update."""
    monkeypatch.delenv("CPGFORMER_NO_PROGRESS", raising=False)
    monkeypatch.setenv("CPGFORMER_PROGRESS_INTERVAL", "0")
    monkeypatch.setattr(progress, "_enabled", None)
    monkeypatch.setattr(progress.sys.stderr, "isatty", lambda: False, raising=False)
    monkeypatch.setattr(logging.getLogger("cpgformer"), "propagate", True)


def test_short_run_validates_at_max_steps_and_logs_tokens_per_second(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, log_mode: None, one_thread: None
) -> None:
    store = make_store(tmp_path / "store", {"1": 64, "chr5": 32, "9": 20}, 4, seed=1)
    config = ModelConfig(
        n_cells=4, dna_window=0, n_layers=1, hidden=16, n_heads=2, head_dim=4, site_window=5,
        cell_embed=8, state_embed=8,
    )  # fmt: skip
    data = DataConfig(segment_length=32, val_chromosomes=("5",), test_chromosomes=("9",))
    # 2 training segments per epoch (batch size 1): max_steps=1 stops in the middle of the first
    # epoch, long before the first scheduled validation
    training = TrainConfig(
        log_every_n_steps=1, tensorboard=False, accelerator="cpu", devices="1", max_epochs=4,
        max_steps=1,
    )  # fmt: skip
    with caplog.at_level(logging.INFO, logger="cpgformer.training"):
        result = fit(store, tmp_path / "run", config, data, training, progress_bar=False)
    run = tmp_path / "run"
    assert result.best_checkpoint == run / "checkpoints" / "best.ckpt"
    assert result.best_checkpoint.is_file()
    with open(run / "metrics.csv") as fh:
        val = [r for r in csv.DictReader(fh) if r.get("val_loss")]
    assert len(val) == 1 and int(float(val[0]["step"])) in (0, 1)
    lines = [r.getMessage() for r in caplog.records if r.name == "cpgformer.training"]
    periodic = [m for m in lines if "ETA" in m]
    assert periodic and periodic[0].startswith("training: step 1/1 (100%)")
    assert "tokens/s" in periodic[0] and "steps/s" in periodic[0]
    # 1 step x 1 segment x 32 sites x 4 cells = 128 tokens: the final line reports a rate > 0
    final = lines[-1]
    assert final.startswith("training: step 1/1") and "ETA" not in final
    rate = float(final.split(" steps/s, ")[1].split(" ")[0])
    assert rate > 0
