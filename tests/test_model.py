"""The model layer: ``Model.load``/``save`` and the one store-vs-checkpoint rule (``Model.check``),
exercised through every command that takes both a store and a checkpoint."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from _training_helpers import dense_to_chrom

from cpgformer import Model
from cpgformer.checkpoint import save_checkpoint
from cpgformer.cli import main
from cpgformer.data.profiles import CellProfiler
from cpgformer.errors import UsageError
from cpgformer.io.store import open_dataset, write_store
from cpgformer.nn import CpGTransformer, ModelConfig

N_CELLS = 8
TABLE = dict(dna_window=0, hidden=16, n_heads=2, head_dim=8, n_layers=1, site_window=5)


def _store(path: Path, cells: list[str], seed: int) -> Path:
    """Two chromosomes of 300 sites; cells in two groups so that cell maps have structure."""
    rng = np.random.default_rng(seed)
    chroms = []
    for name in ("1", "2"):
        positions = np.arange(300) * 250 + 1000
        prob = np.where(np.arange(len(cells)) % 2 == 0, 0.85, 0.15)[None, :]
        labels = (rng.random((300, len(cells))) < prob).astype(np.int8)
        labels[rng.random((300, len(cells))) > 0.5] = -1
        chroms.append(dense_to_chrom(name, positions, labels))
    write_store(path, chroms, cells)
    return path


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Store ``a`` (training store), ``a2`` (same cells, other data: another fingerprint), ``b``
    (other cells); a table model trained on ``a`` and an inductive (profile) model."""
    root = tmp_path_factory.mktemp("model")
    cells = [f"a{i}" for i in range(N_CELLS)]
    paths = {
        "a": _store(root / "a", cells, seed=1),
        "a2": _store(root / "a2", cells, seed=2),
        "b": _store(root / "b", [f"b{i}" for i in range(N_CELLS)], seed=3),
    }
    ds = open_dataset(paths["a"])
    torch.manual_seed(0)
    table = CpGTransformer(ModelConfig(n_cells=N_CELLS, cell_embed=8, **TABLE))
    paths["table"] = root / "table.pt"
    save_checkpoint(
        paths["table"],
        table,
        cells=ds.cells,
        store_fingerprint=ds.fingerprint,
        data={"val_chromosomes": ["1"], "test_chromosomes_resolved": ["2"]},
    )
    profiler = CellProfiler.fit(ds, n_bins=6, n_components=3)
    config = ModelConfig(
        n_cells=1, mode="induced", cell_encoder="profile", profile_features=5, cell_embed=8,
        **{**TABLE, "n_heads": 2, "head_dim": 4},
    )  # fmt: skip
    paths["profile"] = root / "profile.pt"
    save_checkpoint(
        paths["profile"],
        CpGTransformer(config),
        store_fingerprint=ds.fingerprint,
        cell_profiles=profiler.to_dict(),
        data={"val_chromosomes": ["1"], "test_chromosomes_resolved": ["2"]},
    )
    sites = root / "sites.tsv"
    first = int(ds.positions("1")[10])
    sites.write_text(f"chrom\tposition\tcell\n1\t{first}\t0\n")
    paths["sites"] = sites
    return paths


def _argv(command: str, store: Path, ckpt: Path, out: Path, world: dict[str, Path]) -> list[str]:
    """The command line of ``command`` on ``store`` with ``ckpt`` (small and fast settings)."""
    if command == "impute":
        return ["impute", str(store), str(ckpt), "-o", str(out)]
    if command == "calibrate":
        return ["calibrate", str(store), str(ckpt), "-o", str(out), "--mask-fraction", "0.3"]
    if command == "explain":
        return [
            "explain", str(store), str(ckpt), "--sites", str(world["sites"]), "-o", str(out),
            "--n-steps", "2", "--no-figures", "--no-attention",
        ]  # fmt: skip
    if command == "cells":
        return ["cells", str(ckpt), str(store), "-o", str(out)]
    assert command == "benchmark"
    return [
        "benchmark", str(store), "--checkpoint", str(ckpt), "--models", "cpgformer,site-mean",
        "--test-chroms", "2", "-o", str(out), "--no-plots", "--bootstrap", "0",
    ]  # fmt: skip


COMMANDS = ["impute", "calibrate", "explain", "cells", "benchmark"]


def _run(capsys: pytest.CaptureFixture, argv: list[str]) -> tuple[int, str]:
    code = main(["-q", *argv])
    return code, capsys.readouterr().err


@pytest.mark.parametrize("command", COMMANDS)
def test_table_model_refuses_other_cells_with_the_one_message(
    command: str, world: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    store, ckpt = world["b"], world["table"]
    for extra in ([], ["--ignore-fingerprint"]):
        code, err = _run(capsys, _argv(command, store, ckpt, tmp_path / "out", world) + extra)
        assert code == 2, err
        assert f"{store} does not fit {ckpt}: the cells differ" in err
        assert "unknown to the model" in err and err.count("\n") == 1
        assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("command", COMMANDS)
def test_table_model_on_another_store_of_its_cells_needs_ignore_fingerprint(
    command: str, world: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    store, ckpt = world["a2"], world["table"]
    argv = _argv(command, store, ckpt, tmp_path / "out", world)
    code, err = _run(capsys, argv)
    assert code == 2 and f"{store} does not fit {ckpt}: store fingerprint" in err
    assert "--ignore-fingerprint" in err and not (tmp_path / "out").exists()
    code, err = _run(capsys, [*argv, "--ignore-fingerprint"])
    assert code == 0, err
    assert (tmp_path / "out").exists()


@pytest.mark.parametrize("command", COMMANDS)
def test_inductive_model_takes_new_cells(
    command: str, world: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    code, err = _run(capsys, _argv(command, world["b"], world["profile"], tmp_path / "o", world))
    assert code == 0, err
    assert (tmp_path / "o").exists()


def test_check_matches_cells_by_name_and_embeds_new_cells(world: dict[str, Path]) -> None:
    a, b = open_dataset(world["a"]), open_dataset(world["b"])
    table = Model.load(world["table"])
    assert table.check(a).tolist() == list(range(N_CELLS))
    reordered = Model(table.network, cells=table.cells[::-1], store_fingerprint=a.fingerprint)
    assert reordered.check(a).tolist() == list(range(N_CELLS))[::-1]
    unnamed = Model(table.network)  # no names: the store's order, if the counts agree
    assert unnamed.check(b).tolist() == list(range(N_CELLS))
    with pytest.raises(UsageError, match="the store has 3 cells, the model's cell table 8"):
        unnamed.check(_FakeStore(3))
    profile = Model.load(world["profile"])
    assert profile.inductive and not table.inductive
    assert profile.check(b).tolist() == list(range(N_CELLS))
    expected = CellProfiler.from_dict(profile.cell_profiles).transform(b)
    np.testing.assert_allclose(
        profile.network.cell_profiles.numpy(), expected, rtol=1e-6, atol=1e-6
    )


class _FakeStore:
    def __init__(self, n: int) -> None:
        self.path, self.fingerprint, self.n_cells = "fake", None, n
        self.cells = [f"x{i}" for i in range(n)]


def test_save_load_round_trip_and_original_checkpoints(world: dict[str, Path], tmp_path: Path):
    from cpgformer import legacy

    model = Model.load(world["table"])
    model.save(tmp_path / "copy.pt", temperature=1.5)
    again = Model.load(tmp_path / "copy.pt")
    assert again.cells == model.cells and again.temperature == 1.5
    assert again.store_fingerprint == model.store_fingerprint and again.data == model.data
    for key, value in model.network.state_dict().items():
        torch.testing.assert_close(again.network.state_dict()[key], value)
    # an original CpG Transformer checkpoint (state dict + hparams) loads as the same network
    torch.manual_seed(3)
    net = CpGTransformer(ModelConfig(n_cells=4, cell_embed=8, **{**TABLE, "dna_window": 101}))
    payload = {
        "state_dict": legacy.to_original(net),
        "hparams": legacy.to_original_hparams(net.config),
    }
    torch.save(payload, tmp_path / "original.pt")
    original = Model.load(tmp_path / "original.pt")
    assert original.kind == "original" and original.cells is None
    x = torch.randint(0, 3, (1, 20, 4))
    pos = torch.arange(20)[None] * 100
    dna = torch.randint(0, 4, (1, 20, 101))
    with torch.no_grad():
        torch.testing.assert_close(
            original.network(x, pos, torch.arange(4)[None], dna=dna),
            net.eval()(x, pos, torch.arange(4)[None], dna=dna),
        )
