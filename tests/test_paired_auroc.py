"""``benchmarks/paired_auroc.py``: joins benchmark predictions and compares models on shared calls."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pandas as pd

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "paired_auroc.py"


def _script():
    spec = importlib.util.spec_from_file_location("paired_auroc", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(module)
    return module


def test_joins_two_runs_and_never_scores_the_bookkeeping_columns(tmp_path, capsys):
    rng = np.random.default_rng(0)
    n = 400
    label = (rng.random(n) < 0.5).astype(int)
    base = pd.DataFrame(
        {"chrom": "1", "pos": np.arange(n), "cell": "c", "label": label,
         "round": np.arange(n) % 5, "cpg_density": 3}
    )  # fmt: skip
    good = base.assign(cpgformer=label * 0.6 + rng.random(n) * 0.5, **{"site-mean": rng.random(n)})
    other = base.assign(cpgformer=rng.random(n)).sample(frac=1.0, random_state=1)  # shuffled
    good.to_csv(tmp_path / "a.tsv.gz", sep="\t", index=False)
    other.to_csv(tmp_path / "b.tsv.gz", sep="\t", index=False)
    code = _script().main(
        [f"{tmp_path / 'a.tsv.gz'}:", f"{tmp_path / 'b.tsv.gz'}:b_", "--reference", "cpgformer",
         "--bootstrap", "200"]
    )  # fmt: skip
    assert code == 0
    out = capsys.readouterr().out
    rows = [line.split(" | ")[0].strip("| ") for line in out.splitlines() if line.startswith("| ")]
    assert rows[1:] == ["cpgformer", "site-mean", "b_cpgformer"]  # no round, no cpg_density
    b_row = next(line for line in out.splitlines() if line.startswith("| b_cpgformer"))
    low = float(b_row.split("[")[1].split(",")[0])
    assert low > 0.2  # the informative model beats noise on the same (joined) calls
