"""``cpgformer info``: what a dataset store holds (cells, chromosomes, sites, calls, fill)."""

from __future__ import annotations

import argparse
import json
import math
import sys
from typing import Any

from cpgformer.io.store import open_dataset

NAME = "info"
HELP = "summarise a dataset store: cells, chromosomes, sites, calls, fill fraction, per-cell stats"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("store", help="dataset store (from cpgformer prepare)")
    parser.add_argument("--json", action="store_true", help="machine-readable JSON on stdout")
    parser.add_argument(
        "--max-cells",
        type=int,
        default=50,
        help="rows of the per-cell table in the text output (0 = all; JSON always has all)",
    )


def _num(value: Any) -> Any:
    if isinstance(value, float) and math.isnan(value):
        return None
    if hasattr(value, "item"):
        return _num(value.item())
    return value


def store_summary(path: str) -> dict:
    """The ``info --json`` dictionary of a store (reads only the manifest and cells table)."""
    ds = open_dataset(path)
    m = ds.manifest
    n_cells = ds.n_cells
    chroms = m["chromosomes"]
    n_sites = int(sum(c["n_sites"] for c in chroms))
    n_calls = int(sum(c["n_calls"] for c in chroms))
    table = ds.cell_table
    cell_stats = []
    for row in table.to_dict(orient="records"):
        cell_stats.append({k: _num(v) for k, v in row.items()})
    return {
        "store": str(path),
        "format_version": m["format_version"],
        "package_version": m.get("package_version"),
        "fingerprint": ds.fingerprint,
        "n_cells": n_cells,
        "n_sites": n_sites,
        "n_calls": n_calls,
        "fill_fraction": n_calls / (n_sites * n_cells) if n_sites and n_cells else 0.0,
        "chromosomes": {c["name"]: int(c["n_sites"]) for c in chroms},
        "calls_per_chromosome": {c["name"]: int(c["n_calls"]) for c in chroms},
        "cells": list(ds.cells),
        "cell_stats": cell_stats,
        "fasta": m.get("fasta"),
        "strand_rule": m.get("strand_rule"),
        "binarisation": m.get("binarisation"),
        "data_mode": m.get("data_mode"),
        "dropped": m.get("dropped", {}),
    }


def _fmt_frac(v: Any) -> str:
    return "NA" if v is None else f"{v:.3f}"


def render_text(s: dict, max_cells: int = 50) -> str:
    lines = [
        f"store        {s['store']}",
        f"cells        {s['n_cells']}",
        f"chromosomes  {len(s['chromosomes'])}",
        f"sites        {s['n_sites']}",
        f"calls        {s['n_calls']}",
        f"fill         {s['fill_fraction']:.4f}",
        f"data mode    {s.get('data_mode') or 'binary'}",
        f"fasta        {(s['fasta'] or {}).get('path') if s['fasta'] else 'none'}",
        f"fingerprint  {s['fingerprint']}",
    ]
    if s.get("binarisation"):
        b = s["binarisation"]
        lines.append("binarise     " + ", ".join(f"{k} {v}" for k, v in b.items() if v is not None))
    if s.get("dropped"):
        lines.append(
            "dropped      " + ", ".join(f"{k} {v}" for k, v in sorted(s["dropped"].items()))
        )
    lines += ["", f"{'chromosome':<16}{'sites':>12}{'calls':>14}{'fill':>9}"]
    for name, sites in s["chromosomes"].items():
        calls = s["calls_per_chromosome"][name]
        fill = calls / (sites * s["n_cells"]) if sites and s["n_cells"] else 0.0
        lines.append(f"{name:<16}{sites:>12}{calls:>14}{fill:>9.4f}")
    lines += [
        "",
        f"{'cell':<24}{'calls':>10}{'meth':>10}{'meth_frac':>11}{'mean_cov':>10}  flags",
    ]
    rows = s["cell_stats"] if max_cells <= 0 else s["cell_stats"][:max_cells]
    for c in rows:
        lines.append(
            f"{c['name']:<24}{c['n_calls']:>10}{c['n_meth']:>10}{_fmt_frac(c['global_meth_frac']):>11}"
            f"{_fmt_frac(c['mean_cov']):>10}  {c.get('flags') or ''}"
        )
    if len(rows) < len(s["cell_stats"]):
        lines.append(f"... {len(s['cell_stats']) - len(rows)} more cells (--max-cells 0 for all)")
    return "\n".join(lines) + "\n"


def run(args: argparse.Namespace) -> int:
    summary = store_summary(args.store)
    if args.json:
        sys.stdout.write(json.dumps(summary, indent=1) + "\n")
    else:
        sys.stdout.write(render_text(summary, args.max_cells))
    return 0
