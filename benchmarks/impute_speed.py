"""Imputation throughput ((site, cell) predictions/s) and peak RSS: cpgformer vs the original's way.

For each number of cells C and with/without the DNA branch, on a synthetic store whose sites are the
first ``--sites`` CpGs of a real sequence (default: the shared human chr22 1-Mb piece), 15 % of the
(site, cell) matrix observed, and the published architecture with random weights (eval mode):

* ``cpgformer``: ``cpgformer.impute.impute`` end to end (store -> imputed store on disk): tiles of
  1024 sites, margin = receptive field (40), DNA embedding computed once per site, fast attention;
* ``original``: the original's inference with the port of its formulation
  (``cpgformer.nn.original_port.port_forward``): the whole chromosome in memory, tiles of 1024 with
  stride 944, the DNA CNN rerun on every tile row (overlaps included), float64 output.

Each measurement runs in a fresh subprocess so its peak RSS (``VmHWM``) is its own. Example:

    .venv/bin/python benchmarks/impute_speed.py --cells 20 122 --sites 3000 --out impute-speed.md
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
import time
from pathlib import Path

import numpy as np

DEFAULT_FASTA = (
    Path(__file__).resolve().parents[2] / "shared/data/sequences/human_chr22_20-21Mb_hisat2.fa.gz"
)


def peak_rss_mib() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def build_store(path: Path, fasta: str, n_sites: int, n_cells: int, seed: int = 0) -> str:
    from cpgformer.impute import all_cpg_positions
    from cpgformer.io.fasta import Reference
    from cpgformer.io.store import ChromArrays, write_store

    ref = Reference(fasta)
    chrom = next(iter(ref.contigs))
    cpgs = all_cpg_positions(ref, chrom)
    start = int(np.searchsorted(cpgs, 20_000))  # skip the leading N run, if any
    positions = cpgs[start : start + n_sites]
    rng = np.random.default_rng(seed)
    rows, cols = np.nonzero(rng.random((len(positions), n_cells)) < 0.15)
    indptr = np.zeros(len(positions) + 1, dtype=np.int64)
    np.cumsum(np.bincount(rows, minlength=len(positions)), out=indptr[1:])
    label = (rng.random(rows.size) < 0.6).astype(np.int8)
    ch = ChromArrays(
        chrom,
        positions,
        indptr,
        cols.astype(np.int32),
        label.astype(np.int32),
        np.ones(rows.size, dtype=np.int32),
        label,
    )
    write_store(path, [ch], [f"c{i}" for i in range(n_cells)])
    return chrom


def run_one(args: argparse.Namespace) -> dict:
    import torch

    from cpgformer.impute import ImputeOptions, impute, plan_tiles
    from cpgformer.io.fasta import Reference
    from cpgformer.io.store import open_dataset
    from cpgformer.model import Model
    from cpgformer.nn import CpGTransformer, ModelConfig

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    work = Path(args.work)
    store = work / f"store-{args.cells}"
    if not store.exists():
        build_store(store, args.fasta, args.sites, args.cells)
    ds = open_dataset(store)
    chrom = ds.chromosomes[0]
    dna_window = 1001 if args.dna else 0
    model = CpGTransformer(ModelConfig(n_cells=args.cells, dna_window=dna_window)).eval()
    n = ds.n_sites(chrom)
    t0 = time.perf_counter()
    if args.impl == "cpgformer":
        out = Path(tempfile.mkdtemp(dir=work)) / "imputed"
        source = Model(model, checkpoint_id="bench")
        impute(
            ds,
            source,
            out,
            ImputeOptions(fasta=args.fasta, batch_size=args.batch_size, tile_sites=1024),
        )
    else:
        from cpgformer.nn.original_port import port_forward

        states = torch.from_numpy(ds.states(chrom, 0, n).astype(np.int64) + 1)
        positions = torch.from_numpy(np.array(ds.positions(chrom)))
        windows = None
        if args.dna:
            windows = torch.from_numpy(
                Reference(args.fasta).windows(chrom, np.array(ds.positions(chrom)), 1001)
            ).long()
        output = np.zeros((n, args.cells), dtype=np.float64)
        cell_ids = torch.arange(args.cells)[None]
        margin = model.receptive_field_sites
        with torch.inference_mode():
            for t in plan_tiles(0, n, n, 1024, margin):
                pos = positions[t.start : t.stop]
                logits = port_forward(
                    model,
                    states[None, t.start : t.stop],
                    (pos - pos[0])[None],
                    cell_ids,
                    dna=None if windows is None else windows[None, t.start : t.stop],
                )[0]
                keep = slice(t.keep_start - t.start, t.keep_stop - t.start)
                output[t.keep_start : t.keep_stop] = torch.sigmoid(logits[keep]).double().numpy()
    seconds = time.perf_counter() - t0
    return {
        "impl": args.impl,
        "cells": args.cells,
        "dna": bool(args.dna),
        "sites": n,
        "seconds": seconds,
        "predictions_per_s": n * args.cells / seconds,
        "peak_rss_mib": peak_rss_mib(),
    }


def _fmt(result: dict | None, key: str, spec: str) -> str:
    return format(result[key], spec) if result else "-"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cells", type=int, nargs="+", default=[20, 122])
    ap.add_argument("--sites", type=int, default=3000, help="sites of the synthetic chromosome")
    ap.add_argument("--fasta", default=str(DEFAULT_FASTA))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--dna", type=int, nargs="+", default=[0, 1], help="0 without, 1 with DNA")
    ap.add_argument("--impls", nargs="+", default=["cpgformer", "original"])
    ap.add_argument("--work", default=None, help="scratch directory (default: a temporary one)")
    ap.add_argument("--out", help="markdown file for the table (default: stdout only)")
    ap.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--impl", default="cpgformer", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        args.cells = args.cells[0]
        args.dna = args.dna[0]
        sys.stdout.write(json.dumps(run_one(args)) + "\n")
        return
    work = Path(args.work or tempfile.mkdtemp(prefix="impute-speed-"))
    work.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "CPGFORMER_NO_PROGRESS": "1"}
    results = []
    for cells in args.cells:
        for dna in args.dna:
            for impl in args.impls:
                cmd = [
                    sys.executable, __file__, "--one", "--impl", impl, "--cells", str(cells),
                    "--dna", str(dna), "--sites", str(args.sites), "--fasta", args.fasta,
                    "--threads", str(args.threads), "--batch-size", str(args.batch_size),
                    "--work", str(work),
                ]  # fmt: skip
                res = subprocess.run(cmd, env=env, capture_output=True, text=True)
                if res.returncode != 0:
                    sys.stderr.write(res.stderr)
                    raise SystemExit(f"benchmark run failed: {' '.join(cmd)}")
                results.append(json.loads(res.stdout.strip().splitlines()[-1]))
                sys.stderr.write(json.dumps(results[-1]) + "\n")
    lines = [
        "# Imputation speed (CPU)",
        "",
        f"- date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC; "
        f"{platform.machine()} {os.cpu_count()} logical CPUs, load average "
        f"{os.getloadavg()[0]:.1f} at the end; torch threads {args.threads}; fp32",
        f"- command: `.venv/bin/python benchmarks/{Path(__file__).name} {' '.join(sys.argv[1:])}`",
        f"- {args.sites} sites (CpGs of {Path(args.fasta).name}), 15 % observed, published "
        "architecture (random weights), tiles of 1024 sites",
        "",
        "| C | DNA | cpgformer pred/s | original pred/s | speed-up | cpgformer peak RSS MiB | "
        "original peak RSS MiB |",
        "|---|---|---|---|---|---|---|",
    ]
    by = {(r["impl"], r["cells"], r["dna"]): r for r in results}
    for cells in args.cells:
        for dna in args.dna:
            ours = by.get(("cpgformer", cells, bool(dna)))
            orig = by.get(("original", cells, bool(dna)))
            speed = (
                f"{ours['predictions_per_s'] / orig['predictions_per_s']:.1f}x"
                if ours and orig
                else "-"
            )
            lines.append(
                f"| {cells} | {'yes' if dna else 'no'} | {_fmt(ours, 'predictions_per_s', ',.0f')} "
                f"| {_fmt(orig, 'predictions_per_s', ',.0f')} | {speed} "
                f"| {_fmt(ours, 'peak_rss_mib', '.0f')} | {_fmt(orig, 'peak_rss_mib', '.0f')} |"
            )
    text = "\n".join(lines) + "\n"
    if args.out:
        Path(args.out).write_text(text)
    sys.stdout.write(text)


if __name__ == "__main__":
    main()
