"""Resumed runs: merged metrics without duplicate rows."""

from __future__ import annotations

from pathlib import Path

from cpgformer.training.fit import read_metrics


def test_merged_metrics_have_no_duplicate_rows(tmp_path: Path) -> None:
    first = tmp_path / "version_0.csv"
    second = tmp_path / "version_1.csv"
    # killed after step 5; the last checkpoint was at step 3 (validation row), so the resumed
    # process logs steps 4 and 5 again
    first.write_text(
        "epoch,step,train_loss_step,val_loss\n"
        + "".join(f"0,{s},{s / 10},\n" for s in range(6))
        + "0,3,,0.5\n"
    )
    second.write_text(
        "epoch,step,train_loss_step,val_loss\n" + "".join(f"1,{s},{s},\n" for s in range(4, 8))
    )
    rows = read_metrics([first, second])
    steps = [(r["step"], "val_loss" in r) for r in rows]
    assert steps == [(0, False), (1, False), (2, False), (3, False), (3, True)] + [
        (s, False) for s in range(4, 8)
    ]
    assert [r["train_loss_step"] for r in rows if r["step"] >= 4] == [4, 5, 6, 7]
