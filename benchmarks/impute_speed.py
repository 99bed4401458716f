"""Imputation throughput ((site, cell) predictions/s) and peak RSS: cpgformer vs the original's way.

For each number of cells C and with/without the DNA branch, on a synthetic store whose sites are the
first ``--sites`` CpGs of a real sequence (default: the shared human chr22 1-Mb piece), 15 % of the
(site, cell) matrix observed, and the published architecture with random weights (eval mode):

* ``cpgformer``: ``cpgformer.impute.impute`` end to end (store -> imputed store on disk): tiles of
  1024 sites, margin = receptive field (40), DNA embedding computed once per site, fast attention;
* ``original``: the original's inference with the port of its formulation
  (``cpgformer.nn.original_port.port_forward``): the whole chromosome in memory, tiles of 1024 with
  stride 944, the DNA CNN rerun on every tile row (overlaps included), float64 output.

With ``--scbs DIR`` the store holds the real calls of the scbs tutorial cells (Bismark coverage
files in DIR) on one chromosome (``--chrom``), and the reference is a synthetic FASTA of that
chromosome (random bases, C-G at the CpGs): real site spacing and observations, synthetic sequence.
The outputs are compared with the original's (maximum absolute difference of the probabilities).

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


def build_scbs_store(path: Path, folder: str, chrom: str) -> tuple[str, int]:
    """Store of the scbs cells' calls on ``chrom`` and a synthetic FASTA for it (next to the store);
    returns (FASTA path, number of cells)."""
    import glob
    import gzip

    from cpgformer.io.store import ChromArrays, write_store

    files = sorted(glob.glob(str(Path(folder) / "cell_*.cov.gz")))
    calls = []
    for k, name in enumerate(files):
        with gzip.open(name, "rt") as handle:
            rows = [line.split("\t") for line in handle if line.split("\t", 1)[0] == chrom]
        pos = np.array([int(r[1]) - 1 for r in rows], dtype=np.int64)  # 1-based -> 0-based
        mc = np.array([int(r[4]) for r in rows], dtype=np.int32)
        cov = mc + np.array([int(r[5]) for r in rows], dtype=np.int32)
        calls.append((pos, np.full(len(pos), k, dtype=np.int32), mc, cov))
    pos, cell, mc, cov = (np.concatenate(parts) for parts in zip(*calls))
    positions, site = np.unique(pos, return_inverse=True)
    order = np.lexsort((cell, site))
    site, cell, mc, cov = site[order], cell[order], mc[order], cov[order]
    indptr = np.zeros(len(positions) + 1, dtype=np.int64)
    np.cumsum(np.bincount(site, minlength=len(positions)), out=indptr[1:])
    label = (2 * mc >= cov).astype(np.int8)
    ch = ChromArrays(chrom, positions, indptr, cell, mc, cov, label)
    write_store(path, [ch], [Path(f).name.split(".")[0] for f in files])
    rng = np.random.default_rng(0)
    seq = np.frombuffer(b"ACGT", dtype=np.uint8)[rng.integers(0, 4, int(positions[-1]) + 2000)]
    seq[positions], seq[positions + 1] = ord("C"), ord("G")
    fasta = path.parent / f"synthetic-{chrom}.fa"
    with open(fasta, "wb") as handle:
        handle.write(f">{chrom}\n".encode())
        for i in range(0, len(seq), 60):
            handle.write(seq[i : i + 60].tobytes() + b"\n")
    return str(fasta), len(files)


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
    if args.scbs:
        store = work / "store-scbs"
        if not store.exists():
            build_scbs_store(store, args.scbs, args.chrom)
        args.fasta = str(work / f"synthetic-{args.chrom}.fa")
    else:
        store = work / f"store-{args.cells}"
        if not store.exists():
            build_store(store, args.fasta, args.sites, args.cells)
    ds = open_dataset(store)
    args.cells = ds.n_cells
    chrom = ds.chromosomes[0]
    dna_window = 1001 if args.dna else 0
    model = CpGTransformer(ModelConfig(n_cells=args.cells, dna_window=dna_window)).eval()
    n = ds.n_sites(chrom)
    t0 = time.perf_counter()
    c0 = time.process_time()
    if args.impl in ("cpgformer", "cpgformer-bf16"):
        out = Path(tempfile.mkdtemp(dir=work)) / "imputed"
        source = Model(model, checkpoint_id="bench")
        precision = "bf16" if args.impl == "cpgformer-bf16" else "fp32"
        opts = ImputeOptions(
            fasta=args.fasta, batch_size=args.batch_size, tile_sites=1024, dna_precision=precision
        )
        impute(ds, source, out, opts)
        seconds = time.perf_counter() - t0
        cpu_seconds = time.process_time() - c0
        from cpgformer.impute import open_imputed

        probs = np.asarray(open_imputed(out).values(chrom, 0, n), dtype=np.float64)
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
        cpu_seconds = time.process_time() - c0
        probs = output
    np.save(work / f"probs-{args.impl}-{args.cells}-{int(bool(args.dna))}.npy", probs)
    return {
        "impl": args.impl,
        "cells": args.cells,
        "dna": bool(args.dna),
        "sites": n,
        "seconds": seconds,
        "cpu_seconds": cpu_seconds,
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
    ap.add_argument(
        "--impls",
        nargs="+",
        default=["cpgformer", "original"],
        help="cpgformer, original, cpgformer-bf16 (impute --dna-precision bf16)",
    )
    ap.add_argument("--work", default=None, help="scratch directory (default: a temporary one)")
    ap.add_argument("--out", help="markdown file for the table (default: stdout only)")
    ap.add_argument("--scbs", help="folder of the scbs cells' coverage files: real calls")
    ap.add_argument("--chrom", default="19", help="chromosome of the --scbs calls")
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
                ] + (["--scbs", args.scbs, "--chrom", args.chrom] if args.scbs else [])  # fmt: skip
                res = subprocess.run(cmd, env=env, capture_output=True, text=True)
                if res.returncode != 0:
                    sys.stderr.write(res.stderr)
                    raise SystemExit(f"benchmark run failed: {' '.join(cmd)}")
                results.append(json.loads(res.stdout.strip().splitlines()[-1]))
                sys.stderr.write(json.dumps(results[-1]) + "\n")
    diffs = {}  # (impl, cells, dna) -> max. abs. difference of its probabilities to the original's
    for cells in {r["cells"] for r in results}:
        for dna in args.dna:
            original = work / f"probs-original-{cells}-{int(bool(dna))}.npy"
            for impl in ("cpgformer", "cpgformer-bf16"):
                ours = work / f"probs-{impl}-{cells}-{int(bool(dna))}.npy"
                if impl in args.impls and "original" in args.impls and ours.exists():
                    diff = np.abs(np.load(ours) - np.load(original)).max()
                    diffs[(impl, cells, bool(dna))] = float(diff)
    lines = [
        "# Imputation speed (CPU)",
        "",
        f"- date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC; "
        f"{platform.machine()} {os.cpu_count()} logical CPUs, load average "
        f"{os.getloadavg()[0]:.1f} at the end; torch threads {args.threads}; fp32",
        f"- command: `.venv/bin/python benchmarks/{Path(__file__).name} {' '.join(sys.argv[1:])}`",
        (
            f"- sites and calls: the scbs cells on chromosome {args.chrom} (real), synthetic "
            "reference sequence"
            if args.scbs
            else f"- {args.sites} sites (CpGs of {Path(args.fasta).name}), 15 % observed"
        )
        + "; published architecture (random weights), tiles of 1024 sites",
        "",
        "| C | DNA | cpgformer pred/s | original pred/s | speed-up | cpgformer peak RSS MiB | "
        "original peak RSS MiB | max abs. difference of probabilities | bf16 DNA pred/s | "
        "bf16 DNA speed-up | bf16 DNA max abs. difference |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    by = {(r["impl"], r["cells"], r["dna"]): r for r in results}

    def ratio(a: dict | None, b: dict | None) -> str:
        return f"{a['predictions_per_s'] / b['predictions_per_s']:.1f}x" if a and b else "-"

    for cells in sorted({r["cells"] for r in results}):
        for dna in args.dna:
            diff = diffs.get(("cpgformer", cells, bool(dna)))
            diff16 = diffs.get(("cpgformer-bf16", cells, bool(dna)))
            ours = by.get(("cpgformer", cells, bool(dna)))
            orig = by.get(("original", cells, bool(dna)))
            half = by.get(("cpgformer-bf16", cells, bool(dna)))
            lines.append(
                f"| {cells} | {'yes' if dna else 'no'} | {_fmt(ours, 'predictions_per_s', ',.0f')} "
                f"| {_fmt(orig, 'predictions_per_s', ',.0f')} | {ratio(ours, orig)} "
                f"| {_fmt(ours, 'peak_rss_mib', '.0f')} | {_fmt(orig, 'peak_rss_mib', '.0f')} "
                f"| {'-' if diff is None else format(diff, '.1e')} "
                f"| {_fmt(half, 'predictions_per_s', ',.0f')} | {ratio(half, orig)} "
                f"| {'-' if diff16 is None else format(diff16, '.1e')} |"
            )
    text = "\n".join(lines) + "\n"
    if args.out:
        Path(args.out).write_text(text)
    sys.stdout.write(text)


if __name__ == "__main__":
    main()
