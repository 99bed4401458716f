"""The plan before training: memory budget, time estimate, suggestions."""

from __future__ import annotations

import pytest

from cpgformer.data.config import DataConfig
from cpgformer.nn import ModelConfig
from cpgformer.training import plan


def test_fit_to_memory_shortens_segments_then_subsamples_cells() -> None:
    config = ModelConfig(n_cells=740, dna_window=0)
    data = DataConfig(segment_length=1024, batch_size=1)
    unchanged = plan.fit_to_memory(config, data, 740, budget_gb=100.0)
    assert unchanged is data
    shorter = plan.fit_to_memory(config, data, 740, budget_gb=3.0)
    assert shorter.segment_length < 1024 and shorter.resample_cells is None
    assert plan.activation_gb(config, shorter.segment_length, 740) <= 3.0
    tight = plan.fit_to_memory(config, data, 740, budget_gb=0.2)
    assert tight.segment_length == plan.MIN_SEGMENT
    assert tight.resample_cells is not None and tight.resample_cells < 740
    assert plan.activation_gb(config, tight.segment_length, tight.resample_cells) <= 0.2


def test_dna_branch_counts_per_site_memory() -> None:
    with_dna = ModelConfig(n_cells=20, dna_window=1001)
    without = ModelConfig(n_cells=20, dna_window=0)
    extra = plan.activation_gb(with_dna, 1024, 20) - plan.activation_gb(without, 1024, 20)
    assert extra == pytest.approx(1024 * plan.DNA_BYTES_PER_SITE / 2**30)


def test_estimate_scales_a_probe_step_to_the_planned_step() -> None:
    config = ModelConfig(n_cells=8, dna_window=0, hidden=16, n_layers=1, n_heads=2, head_dim=4)
    estimate = plan.estimate_step(
        config, cells=8, segment_length=4096, batch_size=2, steps_per_epoch=10
    )
    assert estimate.tokens_per_step == 2 * 4096 * 8
    assert 0 < estimate.seconds_per_step < 60
    assert estimate.seconds_per_epoch == pytest.approx(10 * estimate.seconds_per_step)


def test_advice_for_slow_steps_with_many_cells() -> None:
    config = ModelConfig(n_cells=4345, dna_window=0)
    slow = plan.StepEstimate(600.0, 10, 1024 * 4345, 20.0)
    text = plan.advice(config, 4345, slow)
    assert text is not None and "--mode induced --cell-encoder profile" in text
    assert "--resample-cells" in text
    fast = plan.StepEstimate(1.0, 10, 1024 * 20, 0.1)
    assert plan.advice(config, 20, fast) is None
    induced = ModelConfig(n_cells=1, dna_window=0, mode="induced", cell_encoder="profile")
    assert "--mode induced" not in (plan.advice(induced, 4345, slow) or "")
