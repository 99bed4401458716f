"""Consistent contigs across cells: naming aliases, spike-in and unplaced contigs.

* **Aliases.** Without a FASTA, one cell may name a chromosome ``19`` and another ``chr19`` (or
  ``MT``/``chrM``). Such names are one chromosome: with ``contig_aliases="unify"`` (default) they are
  renamed to the spelling most cells use, with a warning and a record in the manifest; with
  ``"refuse"`` prepare stops with one line. A file that uses both spellings is always refused.
* **Spike-ins and unplaced contigs.** Control sequences (lambda phage, pUC19, phiX) and unplaced or
  alternative scaffolds (``chrUn_*``, ``*_random``, ``*_alt``, ``GL000220.1``, ``KI270…``) are
  reported and kept out of the store, hence out of training, by default; the methylated fraction of
  spike-in calls (the bisulfite non-conversion rate for an unmethylated control) is recorded.
  ``keep`` names the classes to keep (``spike-in``, ``unplaced``).
"""

from __future__ import annotations

import logging
import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from cpgformer.errors import InputError, UsageError

log = logging.getLogger(__name__)

ALIAS_POLICIES = ("unify", "refuse")
CONTIG_CLASSES = ("spike-in", "unplaced")

_SPIKE_IN = re.compile(
    r"^(?:chr)?(?:lambda(?:[_-]?(?:neb|phage|dna))?|lambda_?phage|enterobacteria_phage_lambda"
    r"|chrL|J02459(?:\.\d+)?|NC_001416(?:\.\d+)?"
    r"|puc(?:19|18)c?|L09137(?:\.\d+)?|SYNPUC19CV|M77789(?:\.\d+)?"
    r"|phi[_-]?x(?:174)?|NC_001422(?:\.\d+)?|J02482(?:\.\d+)?)$",
    re.IGNORECASE,
)
_UNPLACED = re.compile(
    r"(?:^(?:chr)?Un(?:[_-].*)?$|_random$|_alt$|_fix$|_decoy$|^hs37d5$|^(?:chr)?EBV$"
    r"|^(?:GL|KI|JH|KB|KN|KQ|KV|KZ|MU|AAD|AABR|AAEX|NT_|NW_)\d+(?:\.\d+)?$)",
    re.IGNORECASE,
)
_MITO = {"m", "mt", "chrm", "chrmt"}


def classify(name: str) -> str | None:
    """``"spike-in"``, ``"unplaced"`` or None (a regular chromosome)."""
    if _SPIKE_IN.match(name):
        return "spike-in"
    if _UNPLACED.search(name):
        return "unplaced"
    return None


def canonical(name: str) -> str:
    """The spelling-independent key of a contig name: ``chr19`` and ``19`` -> ``19``,
    ``MT``/``chrM``/``M`` -> ``M``."""
    if name.lower() in _MITO:
        return "M"
    return name[3:] if name[:3].lower() == "chr" and len(name) > 3 else name


def parse_keep(text: str | Iterable[str] | None) -> tuple[str, ...]:
    """``--keep-contigs spike-in,unplaced`` -> the classes (``all``: both; ``none``: neither)."""
    if text is None:
        return ()
    items = text.split(",") if isinstance(text, str) else list(text)
    out: list[str] = []
    for item in (i.strip() for i in items):
        if not item or item == "none":
            continue
        if item == "all":
            out.extend(CONTIG_CLASSES)
        elif item in CONTIG_CLASSES:
            out.append(item)
        else:
            raise UsageError(
                f"--keep-contigs: unknown class {item!r} (choose from {', '.join(CONTIG_CLASSES)}, "
                "all)"
            )
    return tuple(dict.fromkeys(out))


@dataclass
class ContigPlan:
    """What happens to each contig name: renamed (aliases) and/or excluded."""

    aliases: dict[str, str] = field(default_factory=dict)  # file name -> store name
    excluded: dict[str, str] = field(default_factory=dict)  # store name -> class


def plan_aliases(cells_using: dict[str, int], policy: str = "unify") -> dict[str, str]:
    """``cells_using``: contig name -> number of cells with calls on it. -> {name: store name}.

    Names with the same :func:`canonical` key are one contig; the spelling most cells use wins
    (ties: the ``chr`` spelling, then the alphabetically first).
    """
    if policy not in ALIAS_POLICIES:
        raise UsageError(f"--contig-aliases must be one of {', '.join(ALIAS_POLICIES)}")
    groups: dict[str, list[str]] = defaultdict(list)
    for name in cells_using:
        groups[canonical(name)].append(name)
    mapping: dict[str, str] = {}
    for names in groups.values():
        if len(names) < 2:
            continue
        ranked = sorted(names, key=lambda n: (-cells_using[n], not n.startswith("chr"), n))
        if policy == "refuse":
            described = " and ".join(f"{n!r} ({cells_using[n]} cells)" for n in ranked)
            raise UsageError(
                f"cells name one contig differently: {described}; rename the contigs consistently, "
                "give --fasta, or pass --contig-aliases unify"
            )
        for n in ranked[1:]:
            mapping[n] = ranked[0]
    return mapping


# ----------------------------------------------------------------------------- prepare's hook


def _part_cells(spill: Any, chrom: str) -> np.ndarray:
    cells = [
        np.unique(np.load(str(base) + ".ints.npy", mmap_mode="r")[0]) for base in spill.parts[chrom]
    ]
    return np.unique(np.concatenate(cells)) if cells else np.zeros(0, dtype=np.int32)


def reconcile_contigs(
    spill: Any,
    reports: Sequence[Any],
    policy: str = "unify",
    keep: Sequence[str] = (),
) -> tuple[list[str], dict]:
    """Apply aliases and exclusions to prepare's spilled calls; return (contigs, manifest record).

    ``spill``: prepare's per-contig spill (``parts``, ``has_beta``, ``load``, ``release``);
    ``reports``: the per-file reports, indexed like the cells.
    """
    names = list(spill.parts)
    keys = Counter(canonical(n) for n in names)
    shared = [n for n in names if keys[canonical(n)] > 1]  # only these need a look at the cells
    cells_of = {name: _part_cells(spill, name) for name in shared}
    mapping = plan_aliases({n: len(c) for n, c in cells_of.items()}, policy)
    record: dict = {"aliases": {}, "excluded": [], "keep": list(keep)}
    merged: set[str] = set()
    for old, new in mapping.items():
        both = np.intersect1d(cells_of[old], cells_of[new])
        if both.size:
            path = reports[int(both[0])].path
            raise InputError(
                path, None, f"uses both {old!r} and {new!r} for one contig; rename one of them"
            )
    for old, new in mapping.items():
        spill.parts[new].extend(spill.parts.pop(old))
        if old in spill.has_beta:
            spill.has_beta.add(new)
        merged.add(new)
        record["aliases"][old] = new
    if mapping:
        log.warning(
            "cells name contigs differently; unified: %s (recorded in the manifest; "
            "--contig-aliases refuse stops instead)",
            ", ".join(
                f"{old} ({len(cells_of[old])} cells) -> {new} ({len(cells_of[new])} cells)"
                for old, new in mapping.items()
            ),
        )
        _restore_cell_order(spill, merged)

    kept: list[str] = []
    for name in spill.parts:
        kind = classify(name)
        if kind is None or kind in keep:
            kept.append(name)
            continue
        start, cell, mc, cov, _beta = spill.load(name)
        entry = {
            "name": name,
            "class": kind,
            "n_calls": int(len(start)),
            "n_cells": int(len(np.unique(cell))),
            "meth_frac": float(mc.sum() / cov.sum()) if cov.sum() else None,
        }
        record["excluded"].append(entry)
        spill.release(name)
    if record["excluded"]:
        parts = []
        for e in record["excluded"]:
            text = f"{e['name']} ({e['class']}, {e['n_calls']} calls in {e['n_cells']} cells"
            if e["class"] == "spike-in" and e["meth_frac"] is not None:
                text += f", {100 * e['meth_frac']:.2f}% methylated"
            parts.append(text + ")")
        log.warning(
            "left out of the store (and so out of training): %s; --keep-contigs %s keeps them",
            "; ".join(parts),
            ",".join(sorted({e["class"] for e in record["excluded"]})),
        )
    return kept, record


def _restore_cell_order(spill: Any, merged: set[str]) -> None:
    """Parts of a merged contig are no longer in cell order: load them sorted by cell (stable,
    so each cell's sorted starts stay sorted), which is what the merge step expects."""
    load = spill.load

    def ordered_load(chrom: str) -> tuple:
        start, cell, mc, cov, beta = load(chrom)
        if chrom not in merged or len(cell) < 2 or np.all(cell[1:] >= cell[:-1]):
            return start, cell, mc, cov, beta
        order = np.argsort(cell, kind="stable")
        return (
            start[order],
            cell[order],
            mc[order],
            cov[order],
            None if beta is None else beta[order],
        )

    spill.load = ordered_load
