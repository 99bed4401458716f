"""`cpgformer ablate`: every variant trained with the same budget, each really without its input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from _training_helpers import make_store

from cpgformer.checkpoint import load_checkpoint
from cpgformer.cli import main


def _fasta(path: Path, contigs: dict[str, int]) -> Path:
    rng = np.random.default_rng(0)
    with open(path, "w") as fh:
        for name, n in contigs.items():
            seq = "".join(rng.choice(list("ACGT"), size=n))
            fh.write(f">{name}\n" + "\n".join(seq[i : i + 60] for i in range(0, n, 60)) + "\n")
    return path


@pytest.mark.slow
def test_ablate_trains_every_variant_and_each_removes_its_input(tmp_path: Path) -> None:
    fasta = _fasta(tmp_path / "ref.fa", {"1": 6000, "5": 3000, "9": 3000})
    store = make_store(tmp_path / "s", {"1": 96, "5": 32, "9": 48}, 4, seed=2, fasta=str(fasta))
    out = tmp_path / "ablation"
    code = main([
        "-q", "ablate", str(store), "-o", str(out), "--max-steps", "2", "--hidden", "8",
        "--n-layers", "1", "--n-heads", "2", "--head-dim", "4", "--cell-embed", "4",
        "--state-embed", "4", "--dna-embed", "4", "--dna-window", "101", "--segment-length",
        "32", "--val-chromosomes", "5", "--test-chromosomes", "9", "--no-tensorboard",
        "--accelerator", "cpu",
    ])  # fmt: skip
    assert code == 0
    table = pd.read_csv(out / "ablation.tsv", sep="\t").set_index("variant")
    expected = {"full", "sites-only", "cells-only", "no-attention", "no-dna", "no-positions",
                "no-cell-identity", "site-mean"}  # fmt: skip
    assert set(table.index) == expected
    assert table["n"].nunique() == 1  # every variant scored on the same hidden calls
    assert table.drop(index="full")["ci_low"].le(table.drop(index="full")["minus_full"]).all()
    assert (out / "ablation.png").stat().st_size > 1000

    def model(name: str):
        return load_checkpoint(out / "runs" / name / "checkpoints" / "last.ckpt").model

    g = torch.Generator().manual_seed(0)
    states = torch.randint(0, 3, (1, 20, 4), generator=g)
    positions = torch.cumsum(torch.randint(1, 90, (1, 20), generator=g), 1)
    cells = torch.arange(4).unsqueeze(0)
    dna = torch.randint(0, 4, (1, 20, 101), generator=g)
    other_dna = torch.randint(0, 4, (1, 20, 101), generator=g)
    no_dna = model("no-dna")
    assert no_dna.dna_encoder is None
    assert not any(n.startswith("dna_encoder") for n, _ in no_dna.named_parameters())
    assert torch.equal(no_dna(states, positions, cells, dna=dna), no_dna(states, positions, cells))
    full = model("full")
    assert not torch.allclose(full(states, positions, cells, dna=dna),
                              full(states, positions, cells, dna=other_dna))  # fmt: skip
    no_pos = model("no-positions")
    assert torch.allclose(no_pos(states, positions, cells, dna=dna),
                          no_pos(states, positions * 7 + 3, cells, dna=dna))  # fmt: skip
    assert model("sites-only").config.attention_kinds == ("sites",)
    assert model("cells-only").config.attention_kinds == ("cells",)
    assert model("no-attention").config.attention_kinds == ()
    blind = model("no-cell-identity")
    assert not any("cell" in n for n, _ in blind.named_parameters())
