"""Parsing speed of ``cpgformer.io.readers.read_calls`` (calls per second).

Usage::

    .venv/bin/python benchmarks/readers_speed.py                      # shared scbs_tutorial (30 .cov.gz)
    .venv/bin/python benchmarks/readers_speed.py --synthetic 5000000  # one generated .cov.gz
    .venv/bin/python benchmarks/readers_speed.py FILE [FILE ...] --format allc

Prints a markdown table row per data set: files, calls, best-of-N wall and CPU seconds and calls/s
for the full reader (CPU time of this process is less sensitive to other users of a shared machine),
and, for reference, the wall time spent only decompressing the same files.
"""

from __future__ import annotations

import argparse
import gzip
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from cpgformer.io.readers import read_calls

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("CPGFORMER_SHARED", REPO.parent / "shared"))


def synthetic_cov(path: Path, n: int, seed: int = 0) -> None:
    """Write a gzip Bismark .cov with ``n`` sorted calls over 3 contigs."""
    rng = np.random.default_rng(seed)
    per = [n // 3, n // 3, n - 2 * (n // 3)]
    with gzip.open(path, "wt", compresslevel=6) as handle:
        for k, m in enumerate(per):
            pos = np.cumsum(rng.integers(1, 200, size=m)) + 3000
            mc = rng.integers(0, 3, size=m)
            un = rng.integers(0, 3, size=m)
            un[(mc + un) == 0] = 1
            pct = 100.0 * mc / (mc + un)
            lines = [
                f"{k + 1}\t{p}\t{p}\t{q:.6f}\t{a}\t{b}\n"
                for p, q, a, b in zip(pos.tolist(), pct.tolist(), mc.tolist(), un.tolist())
            ]
            handle.write("".join(lines))


def time_files(files: list[Path], fmt: str | None, repeat: int) -> tuple[int, float, float, float]:
    """(calls, best wall seconds, best CPU seconds of this process, best gunzip-only wall seconds)."""
    best = best_cpu = float("inf")
    n = 0
    for _ in range(repeat):
        t0, c0 = time.perf_counter(), time.process_time()
        n = 0
        for f in files:
            for chunk in read_calls(f, fmt):
                n += len(chunk)
        best = min(best, time.perf_counter() - t0)
        best_cpu = min(best_cpu, time.process_time() - c0)
    gunzip = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        for f in files:
            with open(f, "rb") as raw:
                magic = raw.read(2)
            opener = gzip.open if magic == b"\x1f\x8b" else open
            with opener(f, "rb") as handle:
                while handle.read(8 << 20):
                    pass
        gunzip = min(gunzip, time.perf_counter() - t0)
    return n, best, best_cpu, gunzip


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("files", nargs="*", type=Path)
    ap.add_argument("--format", default=None, help="input format (default: detect)")
    ap.add_argument(
        "--synthetic", type=int, default=0, help="also time one generated file of N calls"
    )
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args(argv)

    sets: list[tuple[str, list[Path]]] = []
    if args.files:
        sets.append(("given files", args.files))
    elif not args.synthetic:
        files = sorted((SHARED / "data" / "scbs_tutorial").glob("cell_*.cov.gz"))
        sets.append(("scbs_tutorial (30 Bismark .cov.gz)", files))
    tmp = None
    if args.synthetic:
        tmp = tempfile.TemporaryDirectory()
        path = Path(tmp.name) / "synthetic.cov.gz"
        synthetic_cov(path, args.synthetic)
        sets.append((f"synthetic Bismark .cov.gz ({args.synthetic:,} calls, 1 file)", [path]))

    out = sys.stdout
    out.write(f"machine: {platform.node()} {platform.machine()}, {os.cpu_count()} CPUs; ")
    out.write(f"load average {os.getloadavg()[0]:.1f}; python {platform.python_version()}\n\n")
    out.write(
        f"| data | files | calls | wall s (best of {args.repeat}) | calls/s (wall) "
        "| CPU s | calls/s (CPU) | gunzip only, wall s |\n"
    )
    out.write("|---|---|---|---|---|---|---|---|\n")
    for label, files in sets:
        n, seconds, cpu, gunzip = time_files(files, args.format, args.repeat)
        out.write(
            f"| {label} | {len(files)} | {n:,} | {seconds:.2f} | {n / seconds:,.0f} | {cpu:.2f} "
            f"| {n / cpu:,.0f} | {gunzip:.2f} |\n"
        )
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
