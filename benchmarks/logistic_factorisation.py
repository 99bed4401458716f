"""A flexible low-rank model of the whole matrix, as one more benchmark model: how much do the
visible calls say about a hidden one beyond the per-site mean?

``logit P(call of cell c at site i) = a_i + b_c + u_i . v_c`` (site and cell effects, rank ``r``
cell x site terms), fitted by L-BFGS with L2 penalties on every visible call the benchmark gives:
the training blocks or chromosomes (``fit``) and the masked test input (``predict``, refitted for
every round). It reads cell identity from all of a cell's calls at once, which the per-site mean
cannot. Run it through ``cpgformer benchmark``'s own protocol, so it scores exactly the hidden
calls every other model scores:

``python benchmarks/logistic_factorisation.py STORE CHECKPOINT OUT [--ranks 0,1,2] [--l2 3]``

(``CHECKPOINT``: the cpgformer run whose test blocks to use; it is scored alongside.)
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

import numpy as np
import torch

from cpgformer.benchmark.holdout import ChromData
from cpgformer.benchmark.simple import Baseline
from cpgformer.codes import MISSING


class LogisticFactorisation(Baseline):
    """Site effect + cell effect + rank-``rank`` interaction, L2 ``l2`` (site effects ``l2 / 10``)."""

    def __init__(
        self, rank: int = 1, l2: float = 3.0, iterations: int = 300, seed: int = 0
    ) -> None:
        super().__init__()
        self.name = f"factorisation-r{rank}"
        self.rank, self.l2, self.iterations, self.seed = rank, l2, iterations, seed
        self.train: list[ChromData] = []

    def fit(self, train: Sequence[ChromData], cells: Sequence[str]) -> None:
        super().fit(train, cells)
        self.train = list(train)

    def predict(self, chrom: ChromData, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        blocks = [*self.train, chrom]  # the test block last: its sites are the last rows
        states = np.concatenate([np.asarray(b.states) for b in blocks])
        offset = states.shape[0] - chrom.n_sites
        r, c = np.nonzero(states != MISSING)
        y = torch.as_tensor(states[r, c], dtype=torch.float64)
        r_t, c_t = torch.as_tensor(r), torch.as_tensor(c)
        n_sites, n_cells = states.shape
        gen = torch.Generator().manual_seed(self.seed)
        site = torch.zeros(n_sites, dtype=torch.float64, requires_grad=True)
        cell = torch.zeros(n_cells, dtype=torch.float64, requires_grad=True)
        u = 0.01 * torch.randn(n_sites, self.rank, generator=gen, dtype=torch.float64)
        v = 0.01 * torch.randn(n_cells, self.rank, generator=gen, dtype=torch.float64)
        u.requires_grad_(True)
        v.requires_grad_(True)
        params = [site, cell, u, v]
        opt = torch.optim.LBFGS(params, max_iter=self.iterations, line_search_fn="strong_wolfe")

        def closure() -> torch.Tensor:
            opt.zero_grad()
            z = site[r_t] + cell[c_t] + (u[r_t] * v[c_t]).sum(1)
            loss = torch.nn.functional.binary_cross_entropy_with_logits(z, y, reduction="sum")
            penalty = 0.1 * site.pow(2).sum() + cell.pow(2).sum() + u.pow(2).sum() + v.pow(2).sum()
            loss = loss + self.l2 * penalty
            loss.backward()
            return loss

        opt.step(closure)
        q = torch.as_tensor(np.asarray(rows) + offset)
        k = torch.as_tensor(np.asarray(cols))
        with torch.no_grad():
            z = site[q] + cell[k] + (u[q] * v[k]).sum(1)
        return torch.sigmoid(z).numpy().astype(np.float64)


def main(argv: list[str] | None = None) -> int:
    from cpgformer.benchmark.run import run_benchmark

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("store")
    parser.add_argument("checkpoint")
    parser.add_argument("out")
    parser.add_argument("--ranks", default="0,1,2")
    parser.add_argument("--l2", type=float, default=3.0)
    args = parser.parse_args(argv)
    models = [LogisticFactorisation(int(k), args.l2) for k in args.ranks.split(",")]
    result = run_benchmark(
        args.store, models=["cpgformer", "site-mean", *models], checkpoint=args.checkpoint,
        out_dir=args.out, figures=False,
    )  # fmt: skip
    boot = result.bootstrap
    for row in boot[(boot["scope"] == "all") & (boot["metric"] == "auroc")].itertuples():
        print(
            f"cpgformer - {row.model}: {row.difference:+.4f} [{row.ci_low:+.4f}, {row.ci_high:+.4f}]"
        )
    print(result.metrics[["model", "n", "auroc"]].to_string(index=False))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
