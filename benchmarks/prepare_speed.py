"""Benchmark ``cpgformer prepare``: calls/s (parse only and end to end) and peak RSS.

Cases:

* ``scbs``: the 30 real Bismark ``.cov.gz`` cells in ``../shared/data/scbs_tutorial`` (2.5 M calls);
* ``allc``: the 8 real ALLC cells in ``../shared/data/allcools_snmc8`` (all contexts, CG kept);
* ``generated``: ``--cells`` Bismark ``.cov.gz`` files x ``--calls`` calls each (default 1,000 x
  100,000 = 10^8 calls), written into a temporary directory (deleted afterwards unless ``--keep``).

Every measurement runs in a fresh Python subprocess that reports its own peak RSS
(``ru_maxrss``), so numbers do not leak between cases. Usage::

    .venv/bin/python benchmarks/prepare_speed.py                       # all cases, full size
    .venv/bin/python benchmarks/prepare_speed.py --cases generated --cells 100 --calls 100000
    .venv/bin/python benchmarks/prepare_speed.py --markdown prepare-speed.md  # append a table
"""

from __future__ import annotations

import argparse
import datetime
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
SHARED = Path(os.environ.get("CPGFORMER_SHARED", REPO.parent / "shared"))

# mouse-like contig lengths (Mb) so that calls spread over contigs as in real data
CONTIGS = {
    "1": 195, "2": 182, "3": 160, "4": 157, "5": 152, "6": 150, "7": 145, "8": 130, "9": 125,
    "10": 131, "11": 122, "12": 120, "13": 121, "14": 125, "15": 104, "16": 98, "17": 95,
    "18": 91, "19": 61, "X": 171,
}  # fmt: skip

CHILD_PARSE = r"""
import json, resource, sys, time
from cpgformer.io.readers import read_calls
files = json.loads(sys.argv[1])
t0 = time.perf_counter(); n = 0
for f in files:
    for chunk in read_calls(f):
        n += len(chunk)
dt = time.perf_counter() - t0
ru = resource.getrusage(resource.RUSAGE_SELF)
print(json.dumps({"calls": n, "seconds": dt, "cpu_s": ru.ru_utime + ru.ru_stime,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""

CHILD_PREPARE = r"""
import json, logging, resource, sys, time
logging.basicConfig(level=logging.WARNING)
from cpgformer.prepare import PrepareOptions, prepare
files, out, spill_mb, jobs = json.loads(sys.argv[1]), sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
t0 = time.perf_counter()
m = prepare(files, out, PrepareOptions(spill_bytes=spill_mb << 20, jobs=jobs))
dt = time.perf_counter() - t0
rows = sum(i["n_calls_read"] for i in m["inputs"])
ru = resource.getrusage(resource.RUSAGE_SELF)
kids = resource.getrusage(resource.RUSAGE_CHILDREN)
print(json.dumps({"calls": rows, "worker_cpu_s": kids.ru_utime + kids.ru_stime,
                  "worker_peak_rss_mb": kids.ru_maxrss / 1024, "stored_calls": m["n_calls"], "sites": m["n_sites"],
                  "seconds": dt, "cpu_s": ru.ru_utime + ru.ru_stime,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def _child(code: str, *args: str) -> dict:
    env = dict(os.environ, CPGFORMER_NO_PROGRESS="1")
    res = subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, env=env, check=False
    )
    if res.returncode != 0:
        raise SystemExit(f"benchmark child failed:\n{res.stderr}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def _dir_mb(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2**20


def generate(directory: Path, n_cells: int, n_calls: int, seed: int = 0, gz: bool = True) -> list:
    """``n_cells`` Bismark .cov(.gz) files with ``n_calls`` calls each (1-based, start == end).

    Calls are drawn from a shared universe of 25 x n_calls candidate sites so that cells overlap
    (the matrix fill is about 4 %); reads per call 1-3, about 70 % methylated.
    """
    rng = np.random.default_rng(seed)
    names = list(CONTIGS)
    lengths = np.array([CONTIGS[c] for c in names], dtype=np.float64)
    n_universe = 25 * n_calls
    contig_of = np.sort(rng.choice(len(names), size=n_universe, p=lengths / lengths.sum()))
    pos_univ = np.empty(n_universe, dtype=np.int64)
    for k in range(len(names)):
        sel = contig_of == k
        pos_univ[sel] = np.sort(
            rng.choice(int(lengths[k] * 1e6), size=int(sel.sum()), replace=False) + 1
        )
    paths = []
    directory.mkdir(parents=True, exist_ok=True)
    for c in range(n_cells):
        idx = np.sort(rng.choice(n_universe, size=n_calls, replace=False))
        cov = rng.integers(1, 4, size=n_calls)
        mc = rng.binomial(cov, 0.7)
        chrom = np.array(names, dtype=object)[contig_of[idx]]
        pos = pos_univ[idx]
        # the columns after the position depend only on (mc, cov): format those once
        tails = {
            (m, t): f"\t{100.0 * m / t:.6f}\t{m}\t{t - m}\n"
            for t in range(1, 4)
            for m in range(t + 1)
        }
        text = "".join(
            f"{ch}\t{p}\t{p}{tails[m, t]}"
            for ch, p, m, t in zip(chrom, pos.tolist(), mc.tolist(), cov.tolist())
        ).encode()
        path = directory / f"gen_{c:05d}.cov{'.gz' if gz else ''}"
        if gz:
            path.write_bytes(gzip.compress(text, compresslevel=1))
        else:
            path.write_bytes(text)
        paths.append(path)
    return paths


def run_case(
    name: str, files: list, workdir: Path, spill_mb: int, parse_only: bool = True, jobs: int = 1
) -> dict:
    files = [str(f) for f in files]
    nan = float("nan")
    parse = {"seconds": nan, "calls": nan, "peak_rss_mb": nan, "cpu_s": nan}
    if parse_only:
        parse = _child(CHILD_PARSE, json.dumps(files))
    out = workdir / f"store-{name}"
    shutil.rmtree(out, ignore_errors=True)
    full = _child(CHILD_PREPARE, json.dumps(files), str(out), str(spill_mb), str(jobs))
    row = {
        "case": name,
        "files": len(files),
        "input_mb": sum(Path(f).stat().st_size for f in files) / 2**20,
        "calls": full["calls"],
        "stored_calls": full["stored_calls"],
        "sites": full["sites"],
        "parse_s": parse["seconds"],
        "parse_calls_per_s": parse["calls"] / parse["seconds"],
        "parse_peak_rss_mb": parse["peak_rss_mb"],
        "parse_cpu_s": parse["cpu_s"],
        "parse_calls_per_cpu_s": parse["calls"] / parse["cpu_s"],
        "prepare_s": full["seconds"],
        "prepare_calls_per_s": full["calls"] / full["seconds"],
        "prepare_peak_rss_mb": full["peak_rss_mb"],
        "jobs": jobs,
        "prepare_cpu_s": full["cpu_s"] + full["worker_cpu_s"],
        "prepare_calls_per_cpu_s": full["calls"] / (full["cpu_s"] + full["worker_cpu_s"]),
        "worker_peak_rss_mb": full["worker_peak_rss_mb"],
        "store_mb": _dir_mb(out),
    }
    shutil.rmtree(out, ignore_errors=True)
    return row


def markdown(rows: list, args: argparse.Namespace) -> str:
    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    head = [
        f"### prepare speed, {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, "
        f"load average at the end {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f}.",
        f"Command: `{' '.join([Path(sys.executable).name, *sys.argv])}`",
        "",
        "Rates per wall second and per CPU second (user + system of the process and its workers; "
        "includes ~1 s of imports and is less sensitive to other load on a shared machine).",
        "",
        "| case | jobs | files | input MiB | calls read | stored calls | parse wall s | parse calls/s "
        "(wall / CPU) | prepare wall s | prepare calls/s (wall / CPU) | peak RSS MiB (parse / "
        "prepare) | store MiB |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        head.append(
            f"| {r['case']} | {r['jobs']} | {r['files']} | {r['input_mb']:.1f} | {r['calls']:,} "
            f"| {r['stored_calls']:,} | {r['parse_s']:.1f} "
            f"| {r['parse_calls_per_s'] / 1e6:.2f} M / {r['parse_calls_per_cpu_s'] / 1e6:.2f} M "
            f"| {r['prepare_s']:.1f} "
            f"| {r['prepare_calls_per_s'] / 1e6:.2f} M / {r['prepare_calls_per_cpu_s'] / 1e6:.2f} M "
            f"| {r['parse_peak_rss_mb']:.0f} / {r['prepare_peak_rss_mb']:.0f}"
            + (f" (+{r['worker_peak_rss_mb']:.0f} per worker)" if r["jobs"] > 1 else "")
            + f" | {r['store_mb']:.0f} |"
        )
    return "\n".join(head) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", default="scbs,allc,generated", help="comma-separated cases")
    ap.add_argument("--cells", type=int, default=1000, help="generated: number of cell files")
    ap.add_argument("--calls", type=int, default=100_000, help="generated: calls per file")
    ap.add_argument("--no-gzip", action="store_true", help="generated: plain text files")
    ap.add_argument(
        "--skip-parse",
        action="store_true",
        help="generated: skip the separate parse-only pass (prepare is measured either way)",
    )
    ap.add_argument("--jobs", type=int, default=1, help="prepare --jobs (reader processes)")
    ap.add_argument("--spill-mb", type=int, default=128, help="prepare spill buffer (MiB)")
    ap.add_argument("--workdir", default=None, help="where to write (default: a temp dir)")
    ap.add_argument("--keep", action="store_true", help="keep generated files")
    ap.add_argument("--markdown", default=None, help="append a markdown table to this file")
    args = ap.parse_args()
    cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    work = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="cpgf-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    rows = []
    try:
        if "scbs" in cases:
            files = sorted((SHARED / "data" / "scbs_tutorial").glob("cell_*.cov.gz"))
            rows.append(
                run_case(
                    "scbs_tutorial (30 real cells)", files, work, args.spill_mb, True, args.jobs
                )
            )
        if "allc" in cases:
            files = sorted((SHARED / "data" / "allcools_snmc8").glob("*.allc.tsv.gz"))
            rows.append(
                run_case(
                    "allcools_snmc8 (8 real ALLC)", files, work, args.spill_mb, True, args.jobs
                )
            )
        if "generated" in cases:
            t0 = time.perf_counter()
            gen_dir = work / f"gen-{args.cells}x{args.calls}"
            files = sorted(gen_dir.glob("gen_*.cov*")) if gen_dir.exists() else []
            if len(files) != args.cells:
                shutil.rmtree(gen_dir, ignore_errors=True)
                files = generate(gen_dir, args.cells, args.calls, gz=not args.no_gzip)
            sys.stderr.write(
                f"generated/found {len(files)} files in {time.perf_counter() - t0:.0f} s\n"
            )
            name = f"generated {args.cells} x {args.calls:,}"
            rows.append(run_case(name, files, work, args.spill_mb, not args.skip_parse, args.jobs))
            if not args.keep:
                shutil.rmtree(gen_dir, ignore_errors=True)
    finally:
        if not args.keep and not args.workdir:
            shutil.rmtree(work, ignore_errors=True)
    table = markdown(rows, args)
    sys.stdout.write(table)
    sys.stdout.write(json.dumps(rows, indent=1) + "\n")
    if args.markdown:
        with open(args.markdown, "a") as fh:
            fh.write("\n" + table)


if __name__ == "__main__":
    main()
