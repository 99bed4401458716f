"""Benchmark scripts: ``paired_auroc.py`` joins predictions and compares models on shared calls;
``logistic_factorisation.py`` is a benchmark model."""

from __future__ import annotations

import numpy as np
import pandas as pd
from _benchmark_helpers import benchmark_script


def _script():
    return benchmark_script("paired_auroc")


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


def test_logistic_factorisation_reads_cell_groups_the_site_mean_cannot(tmp_path):
    from _benchmark_helpers import synthetic_states, write_dense_store

    from cpgformer.benchmark.run import run_benchmark

    lf = benchmark_script("logistic_factorisation")
    cells = [f"cell{i}" for i in range(12)]
    chroms = {"1": synthetic_states(400, 12, 0, fill=0.5), "3": synthetic_states(300, 12, 2)}
    store = write_dense_store(tmp_path / "s", chroms, cells)
    models = [lf.LogisticFactorisation(rank=2, l2=1.0), "site-mean"]
    res = run_benchmark(store, models=models, out_dir=tmp_path / "b", test_chromosomes=["3"],
                        figures=False, bootstrap=0)  # fmt: skip
    p = res.predictions["factorisation-r2"]
    assert ((p > 0) & (p < 1)).all()
    auroc = res.metrics.set_index("model")["auroc"]
    # three cell groups with their own levels per 2-kb region: the rank-2 terms find them
    assert auroc["factorisation-r2"] > auroc["site-mean"] + 0.05
