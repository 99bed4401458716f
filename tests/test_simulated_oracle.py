"""``benchmarks/simulated_oracle.py``: the oracle columns are the simulation's true probabilities
of each call's cell type (and with the cell's offset), whatever order the calls come in."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from _benchmark_helpers import benchmark_script

from cpgformer.data.simulate import load_truth, simulate, write_simulation


def _script():
    return benchmark_script("simulated_oracle")


def test_oracle_columns_are_the_true_type_probabilities(tmp_path: Path) -> None:
    sim = simulate(30000, n_cells=12, n_cell_types=3, seed=3)
    write_simulation(sim, tmp_path / "sim")
    truth = load_truth(tmp_path / "sim" / "truth.npz")
    rng = np.random.default_rng(0)
    chrom = truth.chroms[0]
    sites = rng.integers(0, len(truth.positions[0]), 200)
    cells = rng.integers(0, len(truth.cells), 200)
    frame = pd.DataFrame(
        {
            "chrom": chrom,
            "pos": truth.positions[0][sites],
            "cell": np.asarray(truth.cells)[cells],
            "label": rng.integers(0, 2, 200),
            "model": rng.random(200),
        }
    )
    out = _script().oracle_columns(tmp_path / "sim", frame)
    want = truth.probability[0][truth.cell_type[cells], sites]
    np.testing.assert_allclose(out["oracle-type"].to_numpy(), want, rtol=1e-6)
    offset = pd.read_csv(tmp_path / "sim" / "cell_types.tsv", sep="\t").set_index("cell")
    shift = offset.loc[frame["cell"], "global_offset_logit"].to_numpy()
    p = np.clip(want, 1e-6, 1 - 1e-6)
    expected = 1 / (1 + np.exp(-(np.log(p / (1 - p)) + shift)))
    np.testing.assert_allclose(out["oracle-type-cell"].to_numpy(), expected, rtol=1e-5)
    bad = frame.assign(pos=frame["pos"] + 1)
    with pytest.raises(ValueError, match="does not have"):
        _script().oracle_columns(tmp_path / "sim", bad)
