"""Benchmark ``cpgformer prepare`` on many small cell files (atlas-sized inputs).

Generates ``--cells`` Bismark coverage files (``.cov.gz``, 6 columns) of ``--calls`` calls each,
drawn from a shared pool of CpG sites spread over mouse-like contigs, into a scratch directory
(deleted afterwards unless ``--keep``), then runs the ``cpgformer prepare`` command on them with
``--jobs`` and measures wall time and peak resident memory of the whole process tree (the command
and its worker processes, summed, sampled every ``--sample-s`` seconds from ``/proc``). Usage::

    python benchmarks/prepare_many_files.py --cells 1000 --calls 1000 --jobs 2
    python benchmarks/prepare_many_files.py --cells 100000 --calls 1000 --jobs 2 --workdir DIR

Prints one JSON line with the measurements.
"""

from __future__ import annotations

import argparse
import gzip
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

REPO = Path(__file__).resolve().parents[1]

# mouse-like contig lengths (Mb): calls spread over contigs as in real data
CONTIGS = {
    "1": 195, "2": 182, "3": 160, "4": 157, "5": 152, "6": 150, "7": 145, "8": 130, "9": 125,
    "10": 131, "11": 122, "12": 120, "13": 121, "14": 125, "15": 104, "16": 98, "17": 95,
    "18": 91, "19": 61, "X": 171,
}  # fmt: skip


OPEN_STORE = (
    "import sys; from cpgformer.io.store import open_dataset; open_dataset(sys.argv[1]).cell_table"
)


def site_pool(n_sites: int) -> tuple[np.ndarray, np.ndarray]:
    """``n_sites`` CpG-like sites (contig index, 1-based position) spread by contig length."""
    lengths = np.array(list(CONTIGS.values()), dtype=np.int64) * 1_000_000
    share = lengths / lengths.sum()
    per = np.floor(share * n_sites).astype(np.int64)
    per[0] += n_sites - per.sum()
    contig = np.repeat(np.arange(len(per)), per)
    pos = np.concatenate(
        [np.linspace(1000, L - 1000, k).astype(np.int64) for L, k in zip(lengths, per)]
    )
    return contig, pos


def write_cells(directory: Path, n_cells: int, n_calls: int, n_sites: int, seed: int) -> list[Path]:
    """Write the cell files; return their paths."""
    rng = np.random.default_rng(seed)
    contig, pos = site_pool(n_sites)
    names = np.array(list(CONTIGS), dtype=object)
    paths = []
    for i in range(n_cells):
        pick = np.unique(rng.integers(0, n_sites, int(n_calls * 1.1) + 8))
        pick = np.sort(rng.permutation(pick)[:n_calls])
        cov = rng.integers(1, 4, len(pick))
        mc = rng.binomial(cov, 0.7)
        pct = 100.0 * mc / cov
        lines = [
            f"{c}\t{p}\t{p}\t{f:g}\t{m}\t{u}\n"
            for c, p, f, m, u in zip(
                names[contig[pick]],
                pos[pick].tolist(),
                pct.tolist(),
                mc.tolist(),
                (cov - mc).tolist(),
            )
        ]
        path = directory / f"cell_{i:06d}.cov.gz"
        with gzip.open(path, "wt", compresslevel=1) as fh:
            fh.write("".join(lines))
        paths.append(path)
    return paths


def _pss_bytes(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as fh:
            for line in fh:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def tree_memory(pid: int) -> tuple[int, int]:
    """(RSS, PSS) of ``pid`` and all its descendants, summed, in bytes.

    RSS counts pages shared by forked workers once per process; PSS splits them between the
    processes sharing them, so its sum is the memory the tree really holds."""
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        p = int(entry)
        children.setdefault(int(fields[1]), []).append(p)
        rss[p] = int(fields[21]) * os.sysconf("SC_PAGE_SIZE")
    total, pss, todo = 0, 0, [pid]
    while todo:
        p = todo.pop()
        total += rss.get(p, 0)
        pss += _pss_bytes(p)
        todo += children.get(p, [])
    return total, pss


def run_prepare(
    files: list[Path], out: Path, jobs: int, list_file: Path, sample_s: float = 0.5
) -> dict:
    """Run the prepare command (inputs from a file list) and measure it."""
    list_file.write_text("".join(f"{p}\n" for p in files))
    cmd = [
        sys.executable, "-m", "cpgformer.cli", "prepare", "--inputs-from", str(list_file),
        "-o", str(out), "--jobs", str(jobs), "--overwrite", "--json",
    ]  # fmt: skip
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"), OMP_NUM_THREADS="1")
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak, peak_pss = 0, 0
    while proc.poll() is None:
        rss, pss = tree_memory(proc.pid)
        peak, peak_pss = max(peak, rss), max(peak_pss, pss)
        time.sleep(sample_s)
    wall = time.perf_counter() - t0
    stdout, stderr = proc.communicate()
    if proc.returncode != 0:
        raise SystemExit(f"prepare failed ({proc.returncode}):\n{stderr[-3000:]}")
    return {
        "wall_s": wall,
        "peak_rss_mb": peak / 2**20,
        "peak_pss_mb": peak_pss / 2**20,
        "summary": json.loads(stdout),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cells", type=int, default=1000)
    ap.add_argument("--calls", type=int, default=1000)
    ap.add_argument("--sites", type=int, default=5_000_000, help="size of the shared site pool")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workdir", default=None, help="scratch directory (default: system temp)")
    ap.add_argument("--keep", action="store_true", help="keep the generated files and the store")
    ap.add_argument("--sample-s", type=float, default=0.5, help="memory sampling interval")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="prepare-many-", dir=args.workdir))
    try:
        (work / "cells").mkdir()
        t0 = time.perf_counter()
        files = write_cells(work / "cells", args.cells, args.calls, args.sites, args.seed)
        t_gen = time.perf_counter() - t0
        result = run_prepare(files, work / "store", args.jobs, work / "inputs.txt", args.sample_s)
        result.update(
            cells=args.cells,
            calls_per_cell=args.calls,
            jobs=args.jobs,
            generate_s=t_gen,
            calls_per_s=args.cells * args.calls / result["wall_s"],
            manifest_mb=(work / "store" / "manifest.json").stat().st_size / 2**20,
            load=os.getloadavg()[0],
            cpus=os.cpu_count(),
            machine=platform.machine(),
            date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        )
        t0 = time.perf_counter()
        subprocess.run(
            [sys.executable, "-c", OPEN_STORE, str(work / "store")],
            env=dict(os.environ, PYTHONPATH=str(REPO / "src")),
            check=True,
        )
        result["open_store_s"] = time.perf_counter() - t0
        print(json.dumps(result))
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
