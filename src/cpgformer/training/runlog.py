"""A run directory's records: Lightning CSV logs merged into one ``metrics.csv``, learning curves,
JSON files; what a run stopped before its first checkpoint left (started again by the next run)."""

from __future__ import annotations

import csv
import json
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cpgformer.utils.atomic import PARTIAL_PREFIX, atomic_file, atomic_path


def read_metrics(paths: Sequence[Path]) -> list[dict[str, float]]:
    """Rows of Lightning CSV logs (later files continue earlier ones), empty cells dropped.

    A resumed run restarts from its last checkpoint, so the steps an earlier log recorded after
    that checkpoint are logged again by the next one: the later log's rows replace them (no
    duplicate rows).
    """
    rows: list[dict[str, float]] = []
    for p in paths:
        if not p.is_file():
            continue
        new: list[dict[str, float]] = []
        with open(p, newline="") as fh:
            for row in csv.DictReader(fh):
                clean = {}
                for k, v in row.items():
                    if v not in ("", None):
                        try:
                            clean[k] = float(v)
                        except ValueError:
                            continue
                new.append(clean)
        steps = [r["step"] for r in new if "step" in r]
        if steps:
            first = min(steps)
            rows = [r for r in rows if r.get("step", -1.0) < first]
        rows.extend(new)
    return rows


def write_merged_metrics(rows: list[dict[str, float]], out: Path) -> None:
    keys = sorted({k for r in rows for k in r})
    with atomic_file(out, "w") as fh:
        writer = csv.DictWriter(fh, fieldnames=keys)
        writer.writeheader()
        writer.writerows(rows)


def plot_learning_curves(rows: list[dict[str, float]], out: Path) -> None:
    """PNG: training/validation loss vs. step, validation AUROC (and baseline), learning rate."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # (heavy, optional for the library: imported when plotting)

    def series(key: str) -> tuple[list[float], list[float]]:
        pts = [(r["step"], r[key]) for r in rows if key in r and "step" in r]
        return [p[0] for p in pts], [p[1] for p in pts]

    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    for key, label in (("train_loss_step", "train (step)"), ("train_loss_epoch", "train (epoch)")):
        x, y = series(key)
        if x:
            axes[0].plot(x, y, label=label, alpha=0.5 if key.endswith("step") else 1.0)
    x, y = series("val_loss")
    if x:
        axes[0].plot(x, y, "o-", label="validation")
    axes[0].set(xlabel="optimiser step", ylabel="loss", title="loss on perturbed entries")
    axes[0].legend()
    for key, label in (
        ("val_auroc", "model"),
        ("val_baseline_auroc", "per-site mean of other cells"),
    ):
        x, y = series(key)
        if x:
            axes[1].plot(x, y, "o-", label=label)
    axes[1].set(xlabel="optimiser step", ylabel="AUROC", title="validation AUROC")
    axes[1].legend()
    x, y = series("lr")
    if x:
        axes[2].plot(x, y)
    axes[2].set(xlabel="optimiser step", ylabel="learning rate", title="learning rate")
    fig.tight_layout()
    with atomic_path(out) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)


def write_json(path: Path, obj: Any) -> None:
    with atomic_file(path, "w") as fh:
        json.dump(obj, fh, indent=1, default=str)
        fh.write("\n")


def version_key(path: Path) -> int:
    """Order of Lightning's ``logs/version_<k>`` folders (one per start of a run)."""
    name = path.parent.name
    try:
        return int(name.split("_", 1)[1])
    except (IndexError, ValueError):
        return -1


def merge_logs(run: Path) -> list[dict[str, float]]:
    """Rows of every start's CSV log of ``run``, merged into ``run/metrics.csv`` (and plotted)."""
    logs = sorted((run / "logs").glob("version_*/metrics.csv"), key=version_key)
    rows = read_metrics(logs)
    if rows:
        write_merged_metrics(rows, run / "metrics.csv")
        plot_learning_curves(rows, run / "learning_curves.png")
    return rows


RUN_FILES = (
    "config.json", "checkpoints", "logs", "tensorboard", "metrics.csv", "learning_curves.png",
    "summary.json", "init_key_map.tsv",
)  # fmt: skip
"""What ``fit`` writes in a run directory."""


def killed_before_first_checkpoint(run: Path) -> bool:
    """Whether ``run`` holds only what a run stopped before its first checkpoint left: its
    ``config.json`` (recording a store), no ``last.ckpt``, no summary, nothing fit did not write."""
    try:
        recorded = json.loads((run / "config.json").read_text())
    except (OSError, ValueError):
        return False
    if not isinstance(recorded, dict) or "store_fingerprint" not in recorded:
        return False
    if (run / "checkpoints" / "last.ckpt").exists() or (run / "summary.json").exists():
        return False
    return all(p.name in RUN_FILES or is_partial(p.name) for p in run.iterdir())


def is_partial(name: str) -> bool:
    """A temporary file of an atomic write of one of the run files (left by a killed run)."""
    return any(name.startswith(f"{PARTIAL_PREFIX}{f}-") for f in RUN_FILES)


def remove_partials(run: Path) -> None:
    if run.is_dir():
        for path in run.iterdir():
            if is_partial(path.name) and path.is_file():
                path.unlink()


def remove_run_files(run: Path) -> None:
    for name in RUN_FILES:
        path = run / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
    remove_partials(run)
