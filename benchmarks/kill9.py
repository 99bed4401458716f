"""Kill -9 at random points of ``prepare``, ``impute``, ``export`` (and optionally ``train``), rerun,
and compare with an uninterrupted run.

A killed ``train`` is rerun with ``--resume`` when it had written ``last.ckpt``, else with the same
command line (which starts a run stopped before its first checkpoint again).

For every command: one uninterrupted reference run, then ``--points`` runs each killed with SIGKILL
after a random delay in ``[0, 1.2 x reference time]`` and rerun with the same command line to the
end. The rerun's output must be identical to the reference (stores: every array and the
fingerprint; imputed stores: every array; exports: decompressed file contents; training: final
weights and ``metrics.csv``), and nothing may be left next to it (``.partial-*``, lock files).

Usage::

    .venv/bin/python benchmarks/kill9.py                 # 20 points per command, prepare/impute/export
    .venv/bin/python benchmarks/kill9.py --points 5 --commands prepare impute
    .venv/bin/python benchmarks/kill9.py --commands train --train-steps 60
    .venv/bin/python benchmarks/kill9.py --commands train --small-model   # faster points

Everything is written in a temporary folder, removed at the end (``--keep`` keeps it). Exit code 0
when every rerun matched, 1 otherwise.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SMALL_MODEL = ["--hidden", 16, "--n-layers", 1, "--n-heads", 2, "--head-dim", 8,
               "--limit-val-batches", 5]  # fmt: skip
ENV = {**os.environ, "PYTHONPATH": str(REPO / "src"), "CPGFORMER_NO_PROGRESS": "1"}


def cpgformer(*args: object) -> list[str]:
    return [sys.executable, "-m", "cpgformer.cli", "-q", *map(str, args)]


def run(cmd: list[str], cwd: Path) -> float:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, env=ENV, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"command failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stderr}")
    return time.perf_counter() - t0


def killed_run(cmd: list[str], cwd: Path, delay: float) -> bool:
    """Start ``cmd`` and SIGKILL it after ``delay`` s; True when it was still running."""
    proc = subprocess.Popen(
        cmd, cwd=cwd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        proc.wait(timeout=delay)
        return False
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        return True


# ------------------------------------------------------------------------------------ inputs


def make_cells(folder: Path, n_cells: int, n_calls: int, seed: int) -> list[Path]:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    paths = []
    for k in range(n_cells):
        lines = []
        for chrom, length in (("chr1", 4_000_000), ("chr2", 3_000_000), ("chr3", 2_000_000)):
            pos = np.unique(rng.integers(1, length, size=n_calls // 3))
            cov = rng.integers(1, 6, size=pos.size)
            mc = rng.binomial(cov, 0.7)
            lines += [
                f"{chrom}\t{p}\t{p}\t{100 * m / c:.2f}\t{m}\t{c - m}\n"
                for p, m, c in zip(pos, mc, cov)
            ]
        path = folder / f"cell{k:02d}.cov.gz"
        with gzip.open(path, "wt") as fh:
            fh.writelines(lines)
        paths.append(path)
    return paths


def make_checkpoint(store: Path, path: Path) -> None:
    import torch

    sys.path.insert(0, str(REPO / "src"))
    from cpgformer.checkpoint import save_checkpoint
    from cpgformer.io.store import open_dataset
    from cpgformer.nn import CpGTransformer, ModelConfig

    ds = open_dataset(store)
    torch.manual_seed(0)
    cfg = ModelConfig(
        n_cells=ds.n_cells, dna_window=0, hidden=16, n_heads=2, head_dim=8, n_layers=1,
        site_window=5, state_embed=8, cell_embed=8,
    )  # fmt: skip
    save_checkpoint(
        path, CpGTransformer(cfg).eval(), cells=ds.cells, store_fingerprint=ds.fingerprint
    )


# -------------------------------------------------------------------------------- comparisons


def arrays_of(folder: Path) -> dict[str, bytes]:
    """Content of every ``.npy``/``.tsv`` (and decompressed ``.gz``) under ``folder``."""
    out = {}
    for p in sorted(folder.rglob("*")):
        if not p.is_file() or p.name.startswith("."):
            continue
        rel = str(p.relative_to(folder))
        if p.suffix == ".npy":
            a = np.load(p)
            out[rel] = a.dtype.str.encode() + str(a.shape).encode() + a.tobytes()
        elif p.suffix == ".gz":
            out[rel] = gzip.decompress(p.read_bytes())
        elif p.suffix in (".tsv", ".csv", ".bedGraph"):
            out[rel] = p.read_bytes()
    return out


def identical(kind: str, a: Path, b: Path) -> bool:
    if kind == "store":
        fa = json.loads((a / "manifest.json").read_text())["fingerprint"]
        fb = json.loads((b / "manifest.json").read_text())["fingerprint"]
        return fa == fb and arrays_of(a) == arrays_of(b)
    if kind == "h5ad":
        import anndata as ad

        x, y = ad.read_h5ad(a), ad.read_h5ad(b)
        same = np.array_equal(np.asarray(x.X), np.asarray(y.X), equal_nan=True)
        return same and list(x.obs_names) == list(y.obs_names)
    if kind == "run":
        return not run_differences(a, b)
    return arrays_of(a) == arrays_of(b)


def run_differences(a: Path, b: Path) -> list[str]:
    """How training run ``b`` differs from ``a``: final weights, then ``metrics.csv`` lines."""
    import torch

    out = []
    last_b = b / "checkpoints" / "last.ckpt"
    if not last_b.is_file():
        return [f"no {last_b}"]
    wa = torch.load(a / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    wb = torch.load(last_b, weights_only=True)["state_dict"]
    if wa.keys() != wb.keys():
        out.append("weights: other parameter names")
    else:
        delta = max((wa[k].float() - wb[k].float()).abs().max().item() for k in wa)
        if delta > 0 or not all(torch.equal(wa[k], wb[k]) for k in wa):
            out.append(f"weights: max |delta| {delta:.3g}")
    la = (a / "metrics.csv").read_text().splitlines()
    lb = (b / "metrics.csv").read_text().splitlines() if (b / "metrics.csv").is_file() else []
    if la != lb:
        diff = [f"{x!r} != {y!r}" for x, y in zip(la, lb) if x != y][:2]
        out.append(f"metrics.csv: {len(la)} vs {len(lb)} lines; " + "; ".join(diff))
    return out


def _finished(name: str, out: Path) -> bool:
    """Whether the killed run had completed its output (a rerun would rightly refuse it)."""
    if name in ("prepare", "impute"):
        return out.exists()
    if name == "export":
        marker = out / ".cpgformer-output.json"
        return marker.exists() and not json.loads(marker.read_text()).get("pending")
    return False


# -------------------------------------------------------------------------------------- main


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--points", type=int, default=20, help="kills per command (20)")
    ap.add_argument(
        "--commands", nargs="+", default=["prepare", "impute", "export"],
        choices=["prepare", "impute", "export", "train"],
    )  # fmt: skip
    ap.add_argument("--cells", type=int, default=8)
    ap.add_argument("--calls", type=int, default=20_000, help="calls per cell")
    ap.add_argument("--train-steps", type=int, default=60)
    ap.add_argument(
        "--small-model", action="store_true",
        help="train a one-layer model of width 16 validating on 5 batches (faster points; the "
        "schedule, epochs, checkpoints and resume are the same)",
    )  # fmt: skip
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--keep", action="store_true", help="keep the temporary folder")
    args = ap.parse_args()
    rng = random.Random(args.seed)
    base = Path(tempfile.mkdtemp(prefix="cpgformer-kill9-"))
    failures = 0
    try:
        cells = make_cells(base / "cells", args.cells, args.calls, args.seed)
        ref = base / "ref"
        ref.mkdir()
        store = ref / "store"
        commands: dict[str, tuple[str, list]] = {
            "prepare": ("store", ["prepare", *cells, "-o"]),
        }
        t_prep = run(cpgformer("prepare", *cells, "-o", store), base)
        ckpt = base / "model.pt"
        make_checkpoint(store, ckpt)
        commands["impute"] = ("imputed", ["impute", store, ckpt, "--chunk-sites", 2048, "-o"])
        imp = ref / "imp"
        t_imp = run(cpgformer("impute", store, ckpt, "--chunk-sites", 2048, "-o", imp), base)
        commands["export"] = ("export", ["export", imp, "--to", "bedgraph", "-o"])
        commands["train"] = (
            "run",
            ["train", store, "--max-steps", args.train_steps, "--seed", 0,
             "--val-chromosomes", "chr2", "--test-chromosomes", "chr3", "--dna-window", 0,
             *(SMALL_MODEL if args.small_model else []), "-o"],
        )  # fmt: skip
        times = {"prepare": t_prep, "impute": t_imp}
        for name in args.commands:
            kind, cmd = commands[name]
            target = ref / f"{name}-reference"
            times[name] = run(cpgformer(*cmd, target), base)
            print(f"{name}: reference run {times[name]:.1f} s", flush=True)
            resume = ["--resume"] if name == "train" else []
            n_mid = 0
            ok = 0
            for k in range(args.points):
                out = base / f"{name}-{k:02d}"
                delay = rng.uniform(0.0, 1.2 * times[name])
                mid = killed_run(cpgformer(*cmd, out), base, delay)
                n_mid += mid
                finished = _finished(name, out)  # killed while exiting: the output is complete
                if mid and not finished:  # the same command again (train: --resume if it can)
                    last = out / "checkpoints" / "last.ckpt"
                    run(cpgformer(*cmd, out, *(resume if last.exists() else [])), base)
                same = identical(kind, target, out)
                left = [p.name for p in base.iterdir() if p.name.startswith(".")]
                ok += same and not left
                if not same or left:
                    detail = "; ".join(run_differences(target, out)) if kind == "run" else ""
                    print(
                        f"  {name} kill {k} at {delay:.2f} s: identical={same} leftovers={left} "
                        f"{detail}",
                        flush=True,
                    )
                if same or not args.keep:  # (--keep keeps the outputs that differ)
                    shutil.rmtree(out)
            failures += args.points - ok
            print(
                f"{name:8s} reference {times[name]:6.2f} s; {args.points} kills "
                f"({n_mid} mid-run): {ok}/{args.points} reruns identical, nothing left over",
                flush=True,
            )
    finally:
        if args.keep:
            print(f"kept {base}")
        else:
            shutil.rmtree(base, ignore_errors=True)
    return 0 if failures == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
