"""Imputation on an accelerator vs the CPU: same outputs, and the time each takes.

Builds a store from the demo data embedded in the package (30 real cells, chromosomes 16-19), a
published-size model (random weights, no DNA), and imputes it with ``--device cpu`` and
``--device cuda`` (or ``--device mps``). Prints the wall times and the largest difference between
the two imputed stores.

Example: ``python benchmarks/impute_device.py --device cuda --work /tmp/impdev``
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from cpgformer.checkpoint import save_checkpoint
from cpgformer.demo import demo_files
from cpgformer.impute import ImputeOptions, impute, open_imputed
from cpgformer.io.store import open_dataset
from cpgformer.nn import CpGTransformer, ModelConfig
from cpgformer.prepare import prepare


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--work", default="impute-device")
    ap.add_argument("--chroms", nargs="*", default=["19"])
    args = ap.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    cells, _ = demo_files()
    store = work / "store"
    if not store.exists():
        prepare([str(c) for c in cells], store)
    ds = open_dataset(store)
    torch.manual_seed(0)
    model = CpGTransformer(ModelConfig(n_cells=ds.n_cells, dna_window=0)).eval()
    ckpt = work / "model.pt"
    save_checkpoint(ckpt, model, cells=ds.cells, store_fingerprint=ds.fingerprint)
    times = {}
    for device in ("cpu", args.device):
        out = work / f"imputed-{device.replace(':', '')}"
        start = time.perf_counter()
        impute(store, ckpt, out, ImputeOptions(chroms=args.chroms, overwrite=True), device=device)
        times[device] = time.perf_counter() - start
    a = open_imputed(work / "imputed-cpu")
    b = open_imputed(work / f"imputed-{args.device.replace(':', '')}")
    worst = 0.0
    n_entries = 0
    for chrom in a.chromosomes:
        n = ds.n_sites(chrom)
        worst = max(worst, float(np.abs(a.values(chrom, 0, n) - b.values(chrom, 0, n)).max()))
        n_entries += n * ds.n_cells
    print(f"entries: {n_entries:,} (chromosomes {', '.join(a.chromosomes)}, {ds.n_cells} cells)")
    for device, seconds in times.items():
        print(f"{device}: {seconds:.1f} s, {n_entries / seconds:,.0f} predictions/s")
    print(f"largest |cpu - {args.device}| difference of stored probabilities: {worst:.2e}")


if __name__ == "__main__":
    main()
