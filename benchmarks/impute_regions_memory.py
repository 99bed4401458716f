"""Peak memory of ``cpgformer impute --regions`` against the number of CpGs per region.

The same cells and the same number of regions, each region holding ``k`` CpGs, for several ``k``
(so the CpGs imputed grow with ``k``): a synthetic store (15 % of the matrix observed), a very small
CpG Transformer checkpoint with random weights (hidden 16, one layer, no DNA: the memory of the
streaming is the question here, not the model's), the whole command
``cpgformer impute STORE CKPT -o OUT.h5ad --regions BED --chunk-sites S`` in a fresh process each,
its peak RSS (``VmHWM``), wall time and output size; for comparison the per-CpG imputed store
(``impute`` without ``--regions``) the same run would otherwise write. Example:

    python benchmarks/impute_regions_memory.py --cells 32 --regions 100 --per-region 10 100 1000 --per-cpg
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

RUN = """
import sys, json, time
from cpgformer.cli import main
t = time.perf_counter()
code = main(sys.argv[1:])
wall = time.perf_counter() - t
status = open("/proc/self/status").read()
peak_kib = int(status.split("VmHWM:")[1].split()[0])
print(json.dumps({"code": code, "wall_s": wall, "peak_mib": peak_kib / 1024}))
"""


def build(root: Path, n_cells: int, n_regions: int, per_region: int, seed: int = 0) -> tuple:
    import torch

    from cpgformer.checkpoint import save_checkpoint
    from cpgformer.io.store import ChromArrays, open_dataset, write_store
    from cpgformer.nn import CpGTransformer, ModelConfig

    rng = np.random.default_rng(seed)
    n_sites = n_regions * per_region
    positions = np.cumsum(rng.integers(20, 200, size=n_sites)).astype(np.int64)
    rows, cols = np.nonzero(rng.random((n_sites, n_cells)) < 0.15)
    indptr = np.zeros(n_sites + 1, dtype=np.int64)
    np.cumsum(np.bincount(rows, minlength=n_sites), out=indptr[1:])
    label = (rng.random(rows.size) < 0.6).astype(np.int8)
    ones = np.ones(rows.size, dtype=np.int32)
    chrom = ChromArrays("1", positions, indptr, cols.astype(np.int32), label.astype(np.int32),
                        ones, label)  # fmt: skip
    store = root / "store"
    write_store(store, [chrom], [f"c{i}" for i in range(n_cells)])
    ds = open_dataset(store)
    torch.manual_seed(0)
    cfg = ModelConfig(n_cells=n_cells, dna_window=0, hidden=16, n_heads=2, head_dim=8,
                      n_layers=1, site_window=11, state_embed=8, cell_embed=8)  # fmt: skip
    ckpt = root / "m.pt"
    save_checkpoint(ckpt, CpGTransformer(cfg).eval(), cells=ds.cells,
                    store_fingerprint=ds.fingerprint)  # fmt: skip
    bed = root / "regions.bed"
    first = positions[::per_region]
    last = positions[per_region - 1 :: per_region]
    with open(bed, "w") as fh:
        for j, (a, b) in enumerate(zip(first, last)):
            fh.write(f"1\t{a}\t{b + 1}\tr{j}\n")
    return store, ckpt, bed, n_sites


def measure(args: list[str], cwd: Path) -> dict:
    env = dict(os.environ, CPGFORMER_NO_PROGRESS="1")
    src = str(Path(__file__).resolve().parents[1] / "src")  # this checkout's package
    env["PYTHONPATH"] = os.pathsep.join([src, env.get("PYTHONPATH", "")])
    proc = subprocess.run([sys.executable, "-c", RUN, *args], capture_output=True, text=True,
                          env=env, cwd=cwd, check=False)  # fmt: skip
    if proc.returncode != 0:
        raise SystemExit(proc.stderr[-3000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def size_of(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cells", type=int, default=32)
    ap.add_argument("--regions", type=int, default=100)
    ap.add_argument("--per-region", type=int, nargs="+", default=[10, 100, 1000])
    ap.add_argument("--chunk-sites", type=int, default=4096)
    ap.add_argument("--per-cpg", action="store_true", help="also time the per-CpG imputed store")
    ap.add_argument("--json", help="write the rows here too")
    a = ap.parse_args()
    rows = []
    for k in a.per_region:
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp)
            store, ckpt, bed, n_sites = build(root, a.cells, a.regions, k)
            common = ["-q", "impute", str(store), str(ckpt), "--chunk-sites", str(a.chunk_sites)]
            r = measure([*common, "-o", "out.h5ad", "--regions", str(bed)], root)
            row = {"cpg_per_region": k, "sites": n_sites, "cells": a.cells,
                   "regions": a.regions, "peak_mib": round(r["peak_mib"], 1),
                   "wall_s": round(r["wall_s"], 1),
                   "h5ad_kib": round(size_of(root / "out.h5ad") / 1024, 1)}  # fmt: skip
            if a.per_cpg:
                full = measure([*common, "-o", "imputed"], root)
                row.update({"per_cpg_peak_mib": round(full["peak_mib"], 1),
                            "per_cpg_wall_s": round(full["wall_s"], 1),
                            "per_cpg_store_kib": round(size_of(root / "imputed") / 1024, 1)})  # fmt: skip
            rows.append(row)
            print(json.dumps(row), flush=True)
    info = {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{platform.machine()} {os.cpu_count()} CPUs",
        "load": os.getloadavg(),
        "rows": rows,
    }
    if a.json:
        Path(a.json).write_text(json.dumps(info, indent=1) + "\n")
    print(json.dumps({k: v for k, v in info.items() if k != "rows"}))


if __name__ == "__main__":
    main()
