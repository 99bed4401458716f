from __future__ import annotations

import csv
import json
import math
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cpgformer.checkpoint import load_checkpoint
from cpgformer.data.batch import Batch
from cpgformer.data.datamodule import DataConfig
from cpgformer.errors import CheckpointError, UsageError
from cpgformer.nn import ModelConfig
from cpgformer.training.fit import TrainConfig, fit, transfer_weights
from cpgformer.training.task import CpGTask, other_cells_mean

sys.path.insert(0, str(Path(__file__).parent))
from _training_helpers import make_store  # noqa: E402

TESTS = Path(__file__).parent


def tiny_config(n_cells: int, **kw: object) -> ModelConfig:
    base = dict(
        n_cells=n_cells,
        dna_window=0,
        n_layers=1,
        hidden=16,
        n_heads=2,
        head_dim=4,
        site_window=5,
        cell_embed=8,
        state_embed=8,
    )
    base.update(kw)
    return ModelConfig(**base)


def quiet(**kw: object) -> TrainConfig:
    """Epoch-based (published) schedule unless the test asks for another."""
    base = dict(
        log_every_n_steps=1,
        tensorboard=False,
        accelerator="cpu",
        devices="1",
        schedule="published",
    )
    base.update(kw)
    return TrainConfig(**base)


def test_other_cells_mean_by_hand() -> None:
    # one site, four cells: inputs unknown, unmeth, meth, meth
    states = torch.tensor([[[0, 1, 2, 2]], [[0, 0, 0, 2]]])
    out = other_cells_mean(states)
    assert torch.allclose(out[0, 0], torch.tensor([2 / 3, 1.0, 0.5, 0.5]))
    # second segment: only cell 3 observed -> others see 1.0; cell 3 itself has no other cell
    # observed and falls back to the segment mean (1.0)
    assert torch.allclose(out[1, 0], torch.tensor([1.0, 1.0, 1.0, 1.0]))


def test_loss_only_on_perturbed_entries() -> None:
    task = CpGTask(tiny_config(3))
    logits = torch.randn(1, 4, 3)
    targets = torch.tensor([[[1, 0, -1], [0, 0, 1], [-1, -1, 1], [1, 1, 0]]], dtype=torch.float32)
    mask = torch.zeros(1, 4, 3, dtype=torch.bool)
    mask[0, 0, 1] = mask[0, 2, 2] = mask[0, 3, 0] = True
    batch = Batch(
        states=torch.zeros(1, 4, 3, dtype=torch.long),
        targets=targets,
        loss_mask=mask,
        positions=torch.arange(4)[None],
        cell_ids=torch.arange(3)[None],
        chrom_ids=torch.zeros(1, dtype=torch.long),
        segment_ids=torch.zeros(1, dtype=torch.long),
        starts=torch.zeros(1, dtype=torch.long),
    )
    losses, out = task._loss(logits, batch)
    expected = [
        F.binary_cross_entropy_with_logits(logits[0, i, j], targets[0, i, j])
        for i, j in ((0, 1), (2, 2), (3, 0))
    ]
    assert torch.allclose(losses, torch.stack(expected))
    assert torch.equal(out, logits[mask])


def test_lr_schedule_by_hand() -> None:
    task = CpGTask(tiny_config(2), lr=1.0, warmup_steps=4, lr_decay=0.5)
    assert [task.lr_at(s, 0) for s in range(3)] == [0.25, 0.5, 0.75]
    task.warmup_end_epoch = 1  # step 3 (the last warm-up step) was taken in epoch 1
    assert task.lr_at(3, 1) == 1.0
    assert task.lr_at(7, 2) == 0.5 and task.lr_at(9, 4) == 0.125


def _csv_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_fit_writes_run_and_checkpoint_loads_without_lightning(tmp_path: Path) -> None:
    store = make_store(tmp_path / "store", {"1": 64, "chr5": 32, "9": 20}, 4, seed=1)
    result = fit(
        store,
        tmp_path / "run",
        tiny_config(4),
        DataConfig(segment_length=32, val_chromosomes=("5",), test_chromosomes=("9",)),
        quiet(max_epochs=4, warmup_steps=3, lr=1e-3, lr_decay=0.5),
        progress_bar=False,
    )
    run = tmp_path / "run"
    for name in ("config.json", "metrics.csv", "summary.json", "learning_curves.png"):
        assert (run / name).is_file(), name
    assert (run / "learning_curves.png").read_bytes()[:4] == b"\x89PNG"
    assert result.best_checkpoint == run / "checkpoints" / "best.ckpt"
    # learning rate per step: warm-up over 3 steps, decays only at epoch ends after warm-up
    # (2 training segments per epoch: steps 0,1 | 2,3 | 4,5 | 6,7)
    lrs = {int(float(r["step"])): float(r["lr"]) for r in _csv_rows(run / "metrics.csv") if r["lr"]}
    expected = [1 / 3, 2 / 3, 1, 1, 0.5, 0.5, 0.25, 0.25]
    assert [round(lrs[s] / 1e-3, 6) for s in range(8)] == [round(e, 6) for e in expected]
    val = [r for r in _csv_rows(run / "metrics.csv") if r["val_loss"]]
    assert len(val) == 4 and all(0 <= float(r["val_auroc"]) <= 1 for r in val)
    # the baseline is computed once on the fixed masks: identical in every validation
    assert len({r["val_baseline_auroc"] for r in val}) == 1
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    meta = ckpt["cpgformer"]
    assert meta["format_version"] == 1
    assert meta["cells"] == ["cell0", "cell1", "cell2", "cell3"]
    assert (
        meta["store_fingerprint"]
        == json.loads((run / "config.json").read_text())["store_fingerprint"]
    )
    assert meta["data"]["segment_length"] == 32 and meta["data"]["val_chromosomes_resolved"] == [
        "chr5"
    ]
    assert meta["temperature"] == 1.0
    # load in a process where Lightning cannot be imported
    code = textwrap.dedent(
        """
        import sys
        sys.modules["lightning"] = None
        sys.modules["lightning.pytorch"] = None
        sys.modules["pytorch_lightning"] = None
        import torch
        from cpgformer.checkpoint import load_checkpoint
        lc = load_checkpoint(sys.argv[1])
        print(lc.config.n_cells, lc.cells[0], lc.store_fingerprint[:8], lc.data["segment_length"])
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(run / "checkpoints" / "last.ckpt")],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert out == ["4", "cell0", meta["store_fingerprint"][:8], "32"]
    loaded = load_checkpoint(run / "checkpoints" / "last.ckpt")
    sd = {k[len("model.") :]: v for k, v in ckpt["state_dict"].items()}
    assert all(torch.equal(v, sd[k]) for k, v in loaded.model.state_dict().items())
    # a non-empty run directory is not overwritten
    with pytest.raises(UsageError, match="not empty"):
        fit(
            store,
            run,
            tiny_config(4),
            DataConfig(segment_length=32, val_chromosomes=("5",), test_chromosomes=()),
            quiet(max_epochs=1),
            progress_bar=False,
        )


def test_transfer_weights_strict_checks() -> None:
    from cpgformer.nn import CpGTransformer

    src = CpGTransformer(tiny_config(3)).state_dict()
    target = CpGTransformer(tiny_config(5))
    key_map = transfer_weights(target, src)
    assert ("cell_embed.weight", "-", "re-initialised") in key_map
    with pytest.raises(CheckpointError, match="missing in the source"):
        transfer_weights(target, {k: v for k, v in src.items() if k != "head.bias"})
    with pytest.raises(CheckpointError, match="shape"):
        transfer_weights(CpGTransformer(tiny_config(5, hidden=32, n_heads=4)), src)


def _write_fasta(path: Path, contigs: dict[str, int], seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    with open(path, "w") as fh:
        for name, n in contigs.items():
            seq = "".join(rng.choice(list("ACGT"), size=n))
            fh.write(f">{name}\n")
            for i in range(0, n, 60):
                fh.write(seq[i : i + 60] + "\n")
    return path


class _Capture:
    """Lightning callback recording the model weights when training starts (after any init)."""

    def __new__(cls):  # noqa: ANN204 - built lazily so importing the test needs no Lightning
        from lightning.pytorch.callbacks import Callback

        class Capture(Callback):
            state: dict | None = None

            def on_fit_start(self, trainer, pl_module) -> None:  # noqa: ANN001
                self.state = {k: v.clone() for k, v in pl_module.model.state_dict().items()}

        return Capture()


def test_transfer_to_other_cells_and_from_original(tmp_path: Path, shared: Path) -> None:
    data = DataConfig(segment_length=16, val_chromosomes=("5",), test_chromosomes=())
    store_a = make_store(tmp_path / "a", {"1": 32, "5": 16}, 3, seed=2, cell_prefix="a")
    res_a = fit(
        store_a, tmp_path / "run_a", tiny_config(3), data, quiet(max_epochs=1), progress_bar=False
    )
    source = load_checkpoint(res_a.last_checkpoint).model.state_dict()

    store_b = make_store(tmp_path / "b", {"1": 32, "5": 16}, 5, seed=3, cell_prefix="b")
    cap = _Capture()
    res_b = fit(
        store_b,
        tmp_path / "run_b",
        None,
        data,
        quiet(max_epochs=1),
        init_from=res_a.last_checkpoint,
        callbacks=[cap],
        progress_bar=False,
    )
    assert cap.state["cell_embed.weight"].shape == (5, 8)
    non_cell = [k for k in source if k != "cell_embed.weight"]
    assert non_cell and all(torch.equal(cap.state[k], source[k]) for k in non_cell)
    assert {(k, s) for k, _, s in res_b.key_map} == {(k, "loaded") for k in non_cell} | {
        ("cell_embed.weight", "re-initialised")
    }
    tsv = (tmp_path / "run_b" / "init_key_map.tsv").read_text().splitlines()
    assert tsv[0] == "parameter\tsource\tstatus" and len(tsv) == len(source) + 1
    assert load_checkpoint(res_b.last_checkpoint).cells == [f"b{i}" for i in range(5)]

    # an original CpG Transformer state dict (with DNA branch) initialises training on a store
    # with a FASTA and another number of cells
    from cpgformer import legacy

    golden = shared / "golden" / "axial_binary.pt"
    state, hparams = legacy.load_original(golden)
    reference = legacy.from_original(state, hparams).state_dict()
    fasta = _write_fasta(tmp_path / "ref.fa", {"1": 4000, "5": 4000})
    store_c = make_store(tmp_path / "c", {"1": 16, "5": 8}, 4, seed=4, fasta=str(fasta))
    cap = _Capture()
    res_c = fit(
        store_c,
        tmp_path / "run_c",
        None,
        DataConfig(segment_length=8, val_chromosomes=("5",), test_chromosomes=()),
        quiet(max_epochs=1, limit_train_batches=1),
        init_from=golden,
        callbacks=[cap],
        progress_bar=False,
    )
    assert cap.state["cell_embed.weight"].shape == (4, 32)
    loaded = [k for k in reference if k != "cell_embed.weight"]
    assert len(loaded) == len(res_c.key_map) - 1
    assert all(torch.equal(cap.state[k], reference[k]) for k in loaded)
    assert load_checkpoint(res_c.last_checkpoint).config.dna_window == 1001


def run_script(*args: str) -> subprocess.CompletedProcess:
    import os

    env = dict(os.environ, OMP_NUM_THREADS="1", CPGFORMER_NO_PROGRESS="1")
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS), env.get("PYTHONPATH", "")])
    return subprocess.run(
        [sys.executable, str(TESTS / "_train_scripts.py"), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )


def test_killed_run_resumes_at_saved_step_with_same_optimiser_state(tmp_path: Path) -> None:
    store = make_store(tmp_path / "store", {"1": 64, "5": 16}, 4, seed=5)  # 4 steps per epoch
    run = tmp_path / "run"
    killed = run_script("kill", str(store), str(run))
    assert killed.returncode == -9, killed.stderr[-2000:]
    last = run / "checkpoints" / "last.ckpt"
    saved = torch.load(last, weights_only=True)
    assert (saved["epoch"], saved["global_step"]) == (0, 4)
    # resuming without --resume is refused rather than overwriting the run
    with pytest.raises(UsageError):
        fit(
            store,
            run,
            tiny_config(4),
            DataConfig(segment_length=16, val_chromosomes=("5",), test_chromosomes=()),
            quiet(max_epochs=1),
            progress_bar=False,
        )

    resumed = run_script("resume", str(store), str(run))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    start = torch.load(tmp_path / "resumed.pt", weights_only=True)
    assert (start["step"], start["epoch"]) == (4, 1)
    opt, ref = start["optimizer"], saved["optimizer_states"][0]
    assert opt["param_groups"] == ref["param_groups"]
    assert opt["state"].keys() == ref["state"].keys() and len(ref["state"]) > 0
    for key, st in ref["state"].items():
        for name, value in st.items():
            assert torch.equal(opt["state"][key][name], value), (key, name)
    model_ref = {k[len("model.") :]: v for k, v in saved["state_dict"].items()}
    assert all(torch.equal(v, model_ref[k]) for k, v in start["model"].items())
    final = torch.load(last, weights_only=True)
    assert (final["epoch"], final["global_step"]) == (2, 12)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["global_step"] == 12
    steps = sorted({int(float(r["step"])) for r in _csv_rows(run / "metrics.csv") if r["lr"]})
    assert steps[0] == 0 and steps[-1] == 11  # the merged log spans both processes
    assert not math.isnan(summary["metrics"]["val_loss"])


def test_train_flags_config_file_and_precedence(tmp_path: Path) -> None:
    import argparse

    from cpgformer.commands import train as cmd

    parser = argparse.ArgumentParser()
    cmd.add_arguments(parser)
    cfg = tmp_path / "c.json"
    cfg.write_text(
        json.dumps(
            {
                "model": {"hidden": 32, "n_layers": 2},
                "mask_rule": "observed",
                "training": {"lr": 0.01, "seed": 3},
            }
        )
    )
    args = parser.parse_args(
        [
            "S",
            "-o",
            "R",
            "--config",
            str(cfg),
            "--n-layers",
            "3",
            "--no-layernorm",
            "--val-chromosomes",
            "chr7",
            "chr8",
            "--resample-cells",
            "2",
            "--devices",
            "2",
            "--strategy",
            "ddp",
        ]
    )
    model, data, training, given = cmd.build_configs(args, n_cells=6, has_fasta=False)
    assert (model.n_cells, model.hidden, model.n_layers, model.layernorm) == (6, 32, 3, False)
    assert model.dna_window == 0  # no FASTA -> no DNA branch by default
    assert given == {"hidden": 32, "n_layers": 3, "layernorm": False}
    assert data.mask_rule == "observed" and data.val_chromosomes == ("chr7", "chr8")
    assert data.resample_cells == 2 and data.seed == 3 and training.seed == 3
    assert (training.lr, training.devices, training.strategy) == (0.01, "2", "ddp")
    model, data, training, _ = cmd.build_configs(parser.parse_args(["S", "-o", "R"]), 4, True)
    assert model.dna_window == 1001 and training == TrainConfig()
    assert data == DataConfig(segment_length=256, mask_unit="run")  # new_run_defaults
    with pytest.raises(UsageError):
        cmd.build_configs(parser.parse_args(["S", "-o", "R", "--mode", "bogus"]), 4, False)


def test_resample_cells_and_dna_windows(tmp_path: Path) -> None:
    from cpgformer.data.datamodule import SegmentDataModule
    from cpgformer.io.fasta import Reference

    fasta = _write_fasta(tmp_path / "ref.fa", {"1": 4000, "5": 4000})
    store = make_store(tmp_path / "s", {"1": 48, "5": 16}, 6, seed=7, fasta=str(fasta))
    dm = SegmentDataModule(
        store,
        DataConfig(
            segment_length=16,
            batch_size=2,
            resample_cells=3,
            val_chromosomes=("5",),
            test_chromosomes=(),
        ),
        dna_window=11,
        rank=0,
        world_size=1,
    )
    batches = list(dm.train_dataloader())
    assert [b.batch_size for b in batches] == [2, 1]
    ds = dm.store
    for b in batches:
        assert b.states.shape[2] == 3 and b.cell_ids.shape == (b.batch_size, 3)
        assert torch.equal(b.cell_ids[0], b.cell_ids[-1])  # one cell subset per batch
        for k in range(b.batch_size):
            start = int(b.starts[k])
            full = ds.states("1", start, start + 16)[:, b.cell_ids[k].numpy()]
            observed = b.targets[k].numpy()
            assert np.array_equal(observed, full.astype(np.float32))
            pos = ds.positions("1")[start : start + 16]
            assert torch.equal(b.positions[k], torch.from_numpy(pos - pos[0]))
            expected = Reference(fasta).windows("1", np.asarray(pos), 11)
            starts = b.dna_starts[k]
            windows = b.dna_sequence[k].unfold(0, 11, 1)[starts]
            assert np.array_equal(windows.numpy(), expected)
    val = next(iter(dm.val_dataloader()))
    assert val.states.shape[2] == 3  # validation segments: a fixed subset of the same size
    again = next(iter(dm.val_dataloader()))
    assert torch.equal(val.cell_ids, again.cell_ids)  # the same at every validation
    assert torch.equal(val.targets, again.targets) and torch.equal(val.loss_mask, again.loss_mask)
    full = ds.states("5", int(val.starts[0]), int(val.starts[0]) + 16)
    assert np.array_equal(val.targets[0].numpy(), full[:, val.cell_ids[0].numpy()])
    with pytest.raises(UsageError, match="FASTA"):
        SegmentDataModule(
            make_store(tmp_path / "n", {"1": 16, "5": 16}, 2),
            DataConfig(segment_length=16, val_chromosomes=("5",), test_chromosomes=()),
            dna_window=11,
        )


def test_dna_precision_bf16_trains_the_dna_network_in_bf16(tmp_path: Path) -> None:
    """``--dna-precision bf16``: the DNA network runs in bfloat16 during training (its outputs
    differ from fp32 by rounding only), its weights stay fp32 and are updated; a bad value is a
    usage error."""
    fasta = _write_fasta(tmp_path / "ref.fa", {"1": 4000, "5": 4000})
    store = make_store(tmp_path / "s", {"1": 24, "5": 8}, 4, seed=5, fasta=str(fasta))
    seen: list[torch.dtype] = []

    class Watch:
        def __new__(cls):  # noqa: ANN204
            from lightning.pytorch.callbacks import Callback

            class _Watch(Callback):
                def on_fit_start(self, trainer, pl_module) -> None:  # noqa: ANN001
                    proj = pl_module.model.dna_encoder.proj  # the DNA network's last layer
                    proj.register_forward_hook(lambda m, a, o: seen.append(o.dtype))
                    self.before = pl_module.model.dna_encoder.fc.weight.detach().clone()

            return _Watch()

    watch = Watch()
    config = tiny_config(4, dna_window=101, n_conv_layers=2)
    result = fit(
        store,
        tmp_path / "run",
        config,
        DataConfig(segment_length=8, val_chromosomes=("5",), test_chromosomes=()),
        quiet(max_epochs=1, limit_train_batches=2, dna_precision="bf16"),
        callbacks=[watch],
        progress_bar=False,
    )
    model = load_checkpoint(result.last_checkpoint).model
    assert seen and set(seen) == {torch.bfloat16}
    assert model.dna_encoder.fc.weight.dtype == torch.float32
    assert not torch.equal(model.dna_encoder.fc.weight, watch.before)
    with pytest.raises(UsageError, match="dna-precision"):
        TrainConfig(dna_precision="fp16")
