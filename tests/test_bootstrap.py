"""Paired bootstrap intervals of cpgformer minus each model (AUROC, AUPRC)."""

from __future__ import annotations

import logging
import math

import numpy as np
import pandas as pd
import pytest

from cpgformer.benchmark.metrics import binary_metrics, paired_bootstrap, weighted_auroc_auprc
from cpgformer.benchmark.report import bootstrap_table, metric_tables


def _data(n: int = 3000, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    good = np.round(np.clip(0.35 * y + 0.65 * rng.random(n), 0, 1), 2)  # ties on purpose
    weak = np.clip(good + rng.normal(0, 0.25, n), 0, 1)
    return y, good, weak


def test_weighted_metrics_equal_torchmetrics_on_repeated_samples() -> None:
    y, p, _ = _data()
    auroc, auprc = weighted_auroc_auprc(p, y, np.ones((1, y.size)))
    ref = binary_metrics(p, y)
    assert math.isclose(auroc[0], ref["auroc"], abs_tol=1e-6)
    assert math.isclose(auprc[0], ref["auprc"], abs_tol=1e-6)
    w = np.random.default_rng(1).integers(0, 4, y.size)
    rep = np.repeat(np.arange(y.size), w)
    auroc, auprc = weighted_auroc_auprc(p, y, w[None])
    ref = binary_metrics(p[rep], y[rep])
    assert math.isclose(auroc[0], ref["auroc"], abs_tol=1e-6)
    assert math.isclose(auprc[0], ref["auprc"], abs_tol=1e-6)
    one = weighted_auroc_auprc(p, np.ones_like(y), np.ones((2, y.size)))
    assert np.isnan(one[0]).all() and np.isnan(one[1]).all()


def test_paired_bootstrap_intervals() -> None:
    y, good, weak = _data()
    rows = {
        (r["model"], r["metric"]): r
        for r in paired_bootstrap(y, good, {"same": good.copy(), "weak": weak}, n_boot=300)
    }
    same = rows[("same", "auroc")]
    assert same["difference"] == 0 and same["ci_low"] == 0 and same["ci_high"] == 0
    for metric in ("auroc", "auprc"):
        r = rows[("weak", metric)]
        full = binary_metrics(good, y)[metric] - binary_metrics(weak, y)[metric]
        assert math.isclose(r["difference"], full, abs_tol=1e-6)
        assert 0 < r["ci_low"] < r["difference"] < r["ci_high"]
        assert r["n_boot"] == 300 and r["n"] == y.size
    # the paired interval is narrower than the one from independent resamples of each model
    rng = np.random.default_rng(5)
    indep = []
    for _ in range(300):
        a, b = rng.integers(0, y.size, y.size), rng.integers(0, y.size, y.size)
        indep.append(
            binary_metrics(good[a], y[a])["auroc"] - binary_metrics(weak[b], y[b])["auroc"]
        )
    lo, hi = np.quantile(indep, [0.025, 0.975])
    assert rows[("weak", "auroc")]["ci_high"] - rows[("weak", "auroc")]["ci_low"] < hi - lo
    # reproducible with the seed
    again = paired_bootstrap(y, good, {"weak": weak}, n_boot=300)
    assert again[0]["ci_low"] == rows[("weak", "auroc")]["ci_low"]
    # one class: undefined
    undefined = paired_bootstrap(np.ones(50, dtype=int), good[:50], {"weak": weak[:50]})
    assert all(math.isnan(r["ci_low"]) and math.isnan(r["reference"]) for r in undefined)


def test_bootstrap_table_overall_and_per_cell(caplog: pytest.LogCaptureFixture) -> None:
    y, good, weak = _data(600)
    cells = np.repeat(["a", "b", "c"], 200)
    y[400:] = 1  # cell c: one class only
    frame = pd.DataFrame(
        {"label": y, "cell": cells, "cpgformer": good, "site-mean": weak, "cpg_density": 3}
    )
    boot = bootstrap_table(frame, ["cpgformer", "site-mean"], n_boot=200)
    assert list(boot["scope"].value_counts().sort_index()) == [2, 6]
    per_cell = boot[boot["scope"] == "cell"].set_index(["cell", "metric"])
    assert math.isnan(per_cell.loc[("c", "auroc"), "ci_low"])
    assert per_cell.loc[("a", "auroc"), "ci_low"] < per_cell.loc[("a", "auroc"), "difference"]
    assert bootstrap_table(frame, ["site-mean"]).empty  # nothing to compare without cpgformer
    with caplog.at_level(logging.WARNING, logger="cpgformer"):
        metric_tables(frame, ["cpgformer"])
    assert any("1 of 3 cells" in r.message for r in caplog.records)
