"""Benchmark the CpG-level AnnData export at scale: peak memory and time of ``cpgformer export``.

Builds a store of ``--cells`` x ``--sites`` (observed calls at ``--density``) with the project's
store writer, imputes it with the project's imputation writer driven by a cheap deterministic
stand-in model (the export cost does not depend on the model), then runs ``cpgformer export --to
h5ad`` in a fresh process and reports its wall time and peak RSS (``ru_maxrss`` of that process),
and checks that the file opens in anndata's backed mode with the right shape and values in a
sample of columns. Everything lives in a scratch directory deleted afterwards. Usage::

    python benchmarks/export_anndata_scale.py --cells 10000 --sites 100000 --workdir DIR

Prints one JSON line with the measurements.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from cpgformer.impute import ImputeOptions, Predictor, impute, open_imputed
from cpgformer.io.store import ChromArrays, write_store
from cpgformer.model import Model

REPO = Path(__file__).resolve().parents[1]
CHROMS = ("1", "2", "3", "4")


def build_store(path: Path, n_cells: int, n_sites: int, density: float, seed: int) -> None:
    """``n_sites`` CpGs over :data:`CHROMS`, each observed in a cell with probability ``density``."""
    rng = np.random.default_rng(seed)
    per = np.full(len(CHROMS), n_sites // len(CHROMS))
    per[0] += n_sites - per.sum()

    def chroms():  # noqa: ANN202
        for name, n in zip(CHROMS, per):
            pos = np.cumsum(rng.integers(2, 200, size=n)).astype(np.int64)
            counts = rng.binomial(n_cells, density, size=n)
            indptr = np.zeros(n + 1, dtype=np.int64)
            np.cumsum(counts, out=indptr[1:])
            cell = np.concatenate(
                [np.sort(rng.choice(n_cells, k, replace=False)) for k in counts]
            ).astype(np.int32)
            cov = rng.integers(1, 4, size=cell.size).astype(np.int32)
            mc = rng.binomial(cov, 0.7).astype(np.int32)
            label = (2 * mc >= cov).astype(np.int8)
            yield ChromArrays(name, pos, indptr, cell, mc, cov, label)

    write_store(path, chroms(), [f"cell{i:05d}" for i in range(n_cells)])


def stand_in_model(n_cells: int) -> Model:
    """Logits from the observed state, the position and the cell (no context): cheap,
    deterministic, varied enough that the values compress like real probabilities."""

    def predict(states, positions, cell_ids, emb):  # noqa: ANN001, ANN202
        site = torch.sin(positions.double() * 0.37).float()[..., None]
        cell = torch.cos(cell_ids.double() * 1.3).float()[:, None, :]
        return (states.float() - 1.0) * 2.0 + site + cell * site

    return Model.from_predictor(Predictor(predict, 0, n_cells), "stand-in")


CHILD = r"""
import json, resource, sys, time
from cpgformer.cli import main
t0 = time.perf_counter()
rc = main(["export", sys.argv[1], "-o", sys.argv[2], "--to", "h5ad"] + sys.argv[3:])
dt = time.perf_counter() - t0
ru = resource.getrusage(resource.RUSAGE_SELF)
cpu = ru.ru_utime + ru.ru_stime
print(json.dumps({"rc": rc, "export_s": dt, "cpu_s": cpu, "peak_rss_mb": ru.ru_maxrss / 1024}))
"""


def check_backed(out: Path, imputed: Path, n_cells: int, n_sites: int) -> dict:
    """Open in backed mode; compare X and the observed layer on sampled columns."""
    import anndata as ad

    a = ad.read_h5ad(out, backed="r")
    imp = open_imputed(imputed)
    assert a.shape == (n_cells, n_sites), a.shape
    n1 = imp.n_sites(CHROMS[0])
    for lo in (0, n1 // 2, n1 - 50):
        np.testing.assert_array_equal(a.X[:, lo : lo + 50], imp.values(CHROMS[0], lo, lo + 50).T)
    info = {"backed": bool(a.isbacked), "layers": sorted(a.layers.keys())}
    a.file.close()
    return info


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cells", type=int, default=10_000)
    ap.add_argument("--sites", type=int, default=100_000)
    ap.add_argument("--density", type=float, default=0.05, help="observed fraction of entries")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workdir", default=None, help="scratch directory (default: system temp)")
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("export_flags", nargs="*", help="extra flags for cpgformer export")
    args = ap.parse_args()
    torch.set_num_threads(1)
    work = Path(tempfile.mkdtemp(prefix="export-scale-", dir=args.workdir))
    try:
        t0 = time.perf_counter()
        build_store(work / "store", args.cells, args.sites, args.density, args.seed)
        t_store = time.perf_counter() - t0
        t0 = time.perf_counter()
        impute(work / "store", stand_in_model(args.cells), work / "imp", ImputeOptions())
        t_impute = time.perf_counter() - t0
        out = work / "out.h5ad"
        env = dict(os.environ, PYTHONPATH=str(REPO / "src"), OMP_NUM_THREADS="1")
        proc = subprocess.run(
            [sys.executable, "-c", CHILD, str(work / "imp"), str(out), *args.export_flags],
            env=env,
            capture_output=True,
            text=True,
        )
        if proc.returncode != 0:
            raise SystemExit(f"export failed:\n{proc.stderr[-3000:]}")
        result = json.loads(proc.stdout.strip().splitlines()[-1])
        result.update(check_backed(out, work / "imp", args.cells, args.sites))
        result.update(
            cells=args.cells,
            sites=args.sites,
            density=args.density,
            flags=args.export_flags,
            file_mb=out.stat().st_size / 2**20,
            store_s=t_store,
            impute_s=t_impute,
            load=os.getloadavg()[0],
            cpus=os.cpu_count(),
            machine=platform.machine(),
            date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        )
        print(json.dumps(result))
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
