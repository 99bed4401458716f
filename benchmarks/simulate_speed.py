"""Speed and peak memory of ``cpgformer simulate`` (issue 7: 10,000 cells × 1 Mb in < 10 min, < 4 GB).

Runs the CLI in a child process on the human chr22 piece, measures wall time and the child's peak RSS
(``wait4`` rusage), counts the written files and rows, and writes a markdown report (``--markdown``).

    .venv/bin/python benchmarks/simulate_speed.py                       # 10,000 cells, scbs
    .venv/bin/python benchmarks/simulate_speed.py --cells 1000 --protocol scrrbs --markdown /tmp/x.md
"""

from __future__ import annotations

import argparse
import datetime
import gzip
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("CPGFORMER_SHARED", REPO.parent / "shared"))
FASTA = SHARED / "data" / "sequences" / "human_chr22_20-21Mb_hisat2.fa.gz"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def run_once(args: argparse.Namespace, out: Path, store: Path | None) -> dict:
    exe = Path(sys.executable).with_name("cpgformer")
    cmd = [str(exe) if exe.exists() else "cpgformer", "-q", "simulate", "--fasta", args.fasta]
    cmd += ["-o", str(out), "--cells", str(args.cells), "--cell-types", str(args.cell_types)]
    cmd += ["--protocol", args.protocol, "--seed", str(args.seed)]
    if store is not None:
        cmd += ["--store", str(store)]
    load_before = os.getloadavg()
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"simulate failed with exit code {proc.returncode}: {' '.join(cmd)}")
    files = sorted((out / "cells").glob("*.cov.gz"))
    rows = 0
    for f in files[: min(len(files), 200)]:
        with gzip.open(f, "rb") as fh:
            rows += sum(1 for _ in fh)
    rows_est = rows * len(files) / max(1, min(len(files), 200))
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    return {
        "cmd": " ".join(cmd),
        "wall_s": wall,
        "cpu_s": usage.ru_utime + usage.ru_stime,
        "peak_rss_mb": usage.ru_maxrss / 1024.0,
        "files": len(files),
        "rows_per_cell": rows_est / max(1, len(files)),
        "bytes": size,
        "load_before": load_before,
        "load_after": os.getloadavg(),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fasta", default=str(FASTA))
    ap.add_argument("--cells", type=int, default=10_000)
    ap.add_argument("--cell-types", type=int, default=4)
    ap.add_argument("--protocol", default="scbs")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--workdir", default=None, help="where to write the output (default: a temp dir)"
    )
    ap.add_argument(
        "--variants",
        default="files,store",
        help="comma-separated runs: files (cov.gz + truth), store (also --store)",
    )
    ap.add_argument("--markdown", default="simulate-speed.md")
    args = ap.parse_args(argv)

    results = []
    for variant in args.variants.split(","):
        base = Path(tempfile.mkdtemp(prefix="simulate-speed-", dir=args.workdir))
        try:
            store = base / "store" if variant == "store" else None
            results.append((variant, run_once(args, base / "out", store)))
        finally:
            shutil.rmtree(base, ignore_errors=True)
    ok = all(r["wall_s"] < 600 and r["peak_rss_mb"] < 4096 for _, r in results)
    rows = []
    for variant, r in results:
        rows.append(
            f"| {args.cells:,} | {Path(args.fasta).name} (1 Mb) | {args.protocol} | "
            f"{'cov.gz + truth + store' if variant == 'store' else 'cov.gz + truth'} | "
            f"{r['wall_s']:.1f} s | {r['cpu_s']:.1f} s | {r['peak_rss_mb']:.0f} MB | {r['files']:,} | "
            f"{r['rows_per_cell']:,.0f} | {r['bytes'] / 1e6:.0f} MB | "
            f"{'yes' if r['wall_s'] < 600 else 'no'} | {'yes' if r['peak_rss_mb'] < 4096 else 'no'} |"
        )
    cmds = "\n".join(r["cmd"] for _, r in results)
    loads = ", ".join(
        f"{v}: {r['load_before'][0]:.1f} before / {r['load_after'][0]:.1f} after"
        for v, r in results
    )
    text = f"""# Benchmark: `cpgformer simulate` speed and memory

Date: {datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}.
Machine: {cpu_model()}, {os.cpu_count()} CPUs, Python {platform.python_version()}. Load average (1 min)
{loads}: the machine is shared with other jobs, so wall times are upper bounds; CPU time (user +
system of the child process) is the better measure of the work.

Commands (`benchmarks/simulate_speed.py --cells {args.cells} --protocol {args.protocol}`):

```
{cmds}
```

| cells | sequence | protocol | outputs | wall time | CPU time | peak RSS | files | rows per cell | output size | < 10 min | < 4 GB |
|---|---|---|---|---|---|---|---|---|---|---|---|
{chr(10).join(rows)}

One process, one cell at a time: memory is the chromosome model plus the packed truth (n_sites ×
n_cells / 8 bytes, here ~25 MB); with `--store` every call is also kept (16 bytes each) until the
store is written at the end. Time goes to drawing states and reads, formatting the text, gzip level 1
and creating 10,000 files.
"""
    text += """
Start-up: the child's peak RSS and CPU time include the CLI start-up itself (`cli.py` imports every
command module; compare `/usr/bin/time cpgformer --help`).
"""
    path = Path(args.markdown)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    sys.stdout.write(text)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
