"""What the best possible predictor scores on a simulated benchmark: oracle columns for
``predictions.tsv.gz``.

``cpgformer simulate`` knows each cell type's methylation probability at every site and each
cell's global offset (``truth.npz``, ``cell_types.tsv``). Added columns, for every scored call:

* ``oracle-type``: the true probability of the cell's type at the site;
* ``oracle-type-cell``: the same with the cell's own global logit offset added.

Neither uses the within-cell spatial process (the latent variable shared by nearby CpGs of a
cell), so they bound what cell identity alone can give: a model that beats the per-site mean by
more than ``oracle-type-cell`` does must take it from the cell's neighbouring calls. Score them with
``benchmarks/paired_auroc.py OUT --reference cpgformer --groups SIM/cell_types.tsv``.

Usage: ``python benchmarks/simulated_oracle.py SIM_DIR PREDICTIONS OUT`` (SIM_DIR is the
``simulate -o`` folder).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

from cpgformer.data.simulate import load_truth


def oracle_columns(sim_dir: Path, frame: pd.DataFrame) -> pd.DataFrame:
    truth = load_truth(sim_dir / "truth.npz")
    cells = pd.read_csv(sim_dir / "cell_types.tsv", sep="\t", dtype={"cell": str})
    offset = cells.set_index("cell")["global_offset_logit"]
    cell_index = {name: i for i, name in enumerate(truth.cells)}
    out = frame.copy()
    out["oracle-type"] = np.nan
    for k, chrom in enumerate(truth.chroms):
        rows = np.flatnonzero(out["chrom"].to_numpy() == chrom)
        if not len(rows):
            continue
        positions = truth.positions[k]
        pos = out["pos"].to_numpy()[rows]
        site = np.searchsorted(positions, pos)
        if (site >= len(positions)).any() or (positions[site] != pos).any():
            raise ValueError(f"{chrom}: scored positions that the simulation does not have")
        ctype = truth.cell_type[out["cell"].iloc[rows].map(cell_index).to_numpy()]
        out.iloc[rows, out.columns.get_loc("oracle-type")] = truth.probability[k][ctype, site]
    if out["oracle-type"].isna().any():
        raise ValueError("scored calls on chromosomes the simulation does not have")
    p = out["oracle-type"].clip(1e-6, 1 - 1e-6)
    logit = np.log(p / (1 - p)) + out["cell"].map(offset).to_numpy()
    out["oracle-type-cell"] = 1 / (1 + np.exp(-logit))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("sim_dir", type=Path)
    parser.add_argument("predictions", type=Path)
    parser.add_argument("out", type=Path)
    args = parser.parse_args(argv)
    frame = pd.read_csv(args.predictions, sep="\t", dtype={"chrom": str, "cell": str})
    oracle_columns(args.sim_dir, frame).to_csv(args.out, sep="\t", index=False)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
