"""Two-process DDP on CPU (gloo): disjoint segments per rank, one checkpoint, global metrics."""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import torch
from torchmetrics.classification import BinaryAUROC

sys.path.insert(0, str(Path(__file__).parent))
from _training_helpers import make_store  # noqa: E402
from test_training import run_script  # noqa: E402

from cpgformer.checkpoint import load_checkpoint  # noqa: E402


def test_ddp_two_processes_disjoint_segments_global_auroc(tmp_path: Path) -> None:
    # 8 training segments (chr 1) and 4 validation segments (chr 5) of 16 sites
    store = make_store(tmp_path / "store", {"1": 128, "5": 64}, 4, seed=6, fill=0.6)
    run = tmp_path / "run"
    proc = run_script("ddp", str(store), str(run))
    assert proc.returncode == 0, proc.stderr[-4000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    assert [r["world_size"] for r in ranks] == [2, 2]
    train = [set(map(tuple, r["train"])) for r in ranks]
    val = [set(map(tuple, r["val"])) for r in ranks]
    assert len(train[0]) == len(train[1]) == 4 and not train[0] & train[1]
    assert train[0] | train[1] == {(0, i) for i in range(8)}
    assert not val[0] & val[1] and val[0] | val[1] == {(1, i) for i in range(4)}
    # the logged AUROC is the AUROC over the union of both ranks' predictions
    scores = torch.cat([r["scores"] for r in ranks])
    labels = torch.cat([r["labels"] for r in ranks])
    expected = float(BinaryAUROC()(scores, labels))
    per_rank = [float(BinaryAUROC()(r["scores"], r["labels"])) for r in ranks]
    with open(run / "metrics.csv", newline="") as fh:
        logged = [row for row in csv.DictReader(fh) if row.get("val_auroc")]
    assert len(logged) == 1
    assert abs(float(logged[0]["val_auroc"]) - expected) < 1e-6
    p = scores.double().clamp(1e-7, 1 - 1e-7)
    bce = -(labels * p.log() + (1 - labels) * (1 - p).log()).mean()
    assert abs(float(logged[0]["val_loss"]) - float(bce)) < 1e-4
    if abs(per_rank[0] - per_rank[1]) > 1e-3:  # then the mean of per-rank values would differ
        assert abs(float(logged[0]["val_auroc"]) - sum(per_rank) / 2) > 1e-6
    # checkpoints written once, by one process
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["best.ckpt", "last.ckpt"]
    assert len(list((run / "logs").glob("version_*"))) == 1
    loaded = load_checkpoint(run / "checkpoints" / "last.ckpt")
    assert loaded.config.n_cells == 4 and loaded.data["n_segments"]["train"] == 8
