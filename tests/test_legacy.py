"""Original checkpoints: strict conversion, key errors, CLI conversion, our model file format."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from cpgformer.cli import main
from cpgformer.errors import CheckpointError, UsageError
from cpgformer.legacy import (
    config_from_original,
    detect_mode,
    from_original,
    original_forward,
    to_original,
    to_original_hparams,
)
from cpgformer.nn import CpGTransformer, ModelConfig
from cpgformer.nn.serialize import load_model, save_model

pytestmark = pytest.mark.usefixtures("one_thread")


def _golden(shared: Path, case: str) -> dict:
    return torch.load(shared / "golden" / f"{case}.pt", weights_only=True)


# ---------------------------------------------------------------- parameter counts (reference §7)


def _n_params(**kwargs) -> int:
    return sum(p.numel() for p in CpGTransformer(ModelConfig(**kwargs)).parameters())


@pytest.mark.parametrize(
    ("n_cells", "expected"),
    [(12, 4_397_249), (20, 4_397_505), (25, 4_397_665), (30, 4_397_825), (122, 4_400_769)],
)
def test_parameter_count_axial_defaults(n_cells: int, expected: int) -> None:
    assert _n_params(n_cells=n_cells) == expected
    assert _n_params(n_cells=n_cells, data_mode="continuous") == expected


@pytest.mark.parametrize(
    ("mode", "expected"),
    [("2D", 4_330_433), ("intracell", 4_330_433), ("intercell", 4_313_281), ("none", 4_246_209)],
)
def test_parameter_count_other_modes(mode: str, expected: int) -> None:
    assert _n_params(n_cells=20, mode=mode) == expected


def test_parameter_count_components() -> None:
    model = CpGTransformer(ModelConfig(n_cells=20))
    count = lambda module: sum(p.numel() for p in module.parameters())  # noqa: E731
    assert count(model.dna_encoder) == 4_106_336
    assert count(model.dna_encoder.fc) == 3_997_824
    assert count(model.combine) == 6_208
    assert count(model.head) == 65
    assert count(model.layers[0]) == 71_040
    assert count(model.layers[0].attentions[0]) == 20_928
    assert count(model.layers[0].attentions[1]) == 16_640
    assert count(model.layers) == 284_160
    # DNA CNN + projection for any window: 108,640 + 32,768 * hlen
    for window, hlen in [(101, 10), (201, 22), (501, 60), (1501, 185), (2001, 247)]:
        encoder = CpGTransformer(ModelConfig(n_cells=2, dna_window=window)).dna_encoder
        assert count(encoder) == 108_640 + 32_768 * hlen


def test_no_dna_branch_combines_state_and_cell_only() -> None:
    model = CpGTransformer(ModelConfig(n_cells=3, dna_window=0))
    assert model.dna_encoder is None
    assert model.combine.in_features == 64
    states = torch.randint(0, 3, (1, 5, 3))
    out = model(states, torch.arange(5).unsqueeze(0) * 10, torch.arange(3).unsqueeze(0))
    assert out.shape == (1, 5, 3)


# ---------------------------------------------------------------- strict conversion


def test_missing_key_is_named(shared: Path) -> None:
    golden = _golden(shared, "axial_binary")
    sd = dict(golden["state_dict"])
    del sd["transformer.2.attn_list.1.out_lin.bias"]
    with pytest.raises(
        CheckpointError, match=r"missing key\(s\): transformer\.2\.attn_list\.1\.out_lin\.bias"
    ):
        from_original(sd, golden["hparams"])


def test_unexpected_key_is_named(shared: Path) -> None:
    golden = _golden(shared, "axial_binary")
    sd = dict(golden["state_dict"])
    sd["transformer.0.attn_list.0.extra_thing"] = torch.zeros(3)
    with pytest.raises(
        CheckpointError, match=r"unexpected key\(s\): transformer\.0\.attn_list\.0\.extra_thing"
    ):
        from_original(sd, golden["hparams"])


def test_shape_mismatch_is_named(shared: Path) -> None:
    golden = _golden(shared, "2D_binary")
    with pytest.raises(CheckpointError, match=r"shape of CNN\.0\.lin\.0\.weight is \[128, 2560\]"):
        from_original(golden["state_dict"], {**golden["hparams"], "RF": 201})


def test_mode_conflict_and_ambiguity(shared: Path) -> None:
    golden = _golden(shared, "axial_binary")
    with pytest.raises(CheckpointError, match="mode 'axial'"):
        from_original(golden["state_dict"], {**golden["hparams"], "mode": "intercell"})
    two_d = _golden(shared, "2D_binary")
    hparams = {k: v for k, v in two_d["hparams"].items() if k != "mode"}
    with pytest.raises(CheckpointError, match="mode=2D or mode=intracell"):
        from_original(two_d["state_dict"], hparams)


@pytest.mark.parametrize(
    ("case", "mode"),
    [
        ("axial_binary", "axial"),
        ("2D_binary", None),
        ("intracell_binary", None),
        ("intercell_binary", "intercell"),
        ("none_binary", "none"),
    ],
)
def test_detect_mode(shared: Path, case: str, mode: str | None) -> None:
    assert detect_mode(_golden(shared, case)["state_dict"]) == mode


def test_bare_state_dict_infers_architecture(shared: Path) -> None:
    # a shipped-style bare .pt: everything but window/act/RF follows from the keys and shapes
    golden = _golden(shared, "axial_continuous")
    config = config_from_original(golden["state_dict"], {"RF": 101})
    assert (config.n_cells, config.data_mode, config.mode, config.n_layers) == (
        6,
        "continuous",
        "axial",
        4,
    )
    assert (config.n_heads, config.head_dim, config.hidden, config.dna_window) == (8, 8, 64, 101)
    assert to_original_hparams(config)["RF"] == 101


def test_legacy_key_rename(shared: Path) -> None:
    golden = _golden(shared, "none_binary")
    sd = dict(golden["state_dict"])
    sd["CpG_embed.weight"] = sd.pop("CpG_embed.CpG_embed.weight")
    model = from_original(sd, golden["hparams"]).eval()
    with torch.no_grad():
        out = original_forward(model, **golden["inputs"])
    torch.testing.assert_close(out, golden["logits"], atol=1e-5, rtol=0)
    assert "CpG_embed.CpG_embed.weight" in to_original(model)


def test_unknown_hparam_rejected(shared: Path) -> None:
    golden = _golden(shared, "none_binary")
    with pytest.raises(UsageError, match="unknown hyperparameter 'windw'"):
        from_original(golden["state_dict"], {**golden["hparams"], "windw": 3})


# ---------------------------------------------------------------- CLI and our file format


def test_convert_checkpoint_end_to_end(shared: Path, tmp_path: Path, capsys) -> None:
    golden = _golden(shared, "axial_binary_gelu_w11")
    original = tmp_path / "orig.pt"
    torch.save(golden["state_dict"], original)  # bare state dict, as shipped
    hparams_file = tmp_path / "h.json"
    hparams_file.write_text(json.dumps({"RF": 201, "n_transformers": 2}))
    cells = tmp_path / "cells.txt"
    cells.write_text("".join(f"cell{i}\n" for i in range(7)))
    out = tmp_path / "model.pt"
    code = main(
        [
            "convert-checkpoint",
            str(original),
            "--hparams",
            str(hparams_file),
            "window=11",
            "act=gelu",
            '{"mode": "axial"}',
            "--cell-names",
            str(cells),
            "-o",
            str(out),
        ]
    )
    assert code == 0
    assert "mode axial" in capsys.readouterr().out
    payload = torch.load(out, weights_only=True)
    assert payload["format"] == "cpgformer-model" and payload["format_version"] == 1
    model, meta = load_model(out)
    assert meta["cells"] == [f"cell{i}" for i in range(7)]
    assert meta["config"].site_window == 11 and meta["config"].activation == "gelu"
    with torch.no_grad():
        logits = original_forward(model, **golden["inputs"])
    torch.testing.assert_close(logits, golden["logits"], atol=1e-5, rtol=0)


def test_convert_checkpoint_reports_missing_key(shared: Path, tmp_path: Path, capsys) -> None:
    golden = _golden(shared, "intercell_binary")
    sd = dict(golden["state_dict"])
    del sd["output_head.weight"]
    original = tmp_path / "orig.pt"
    torch.save({"state_dict": sd, "hparams": golden["hparams"]}, original)
    code = main(["convert-checkpoint", str(original), "-o", str(tmp_path / "m.pt")])
    assert code == 2
    err = capsys.readouterr().err
    assert "output_head.weight" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "m.pt").exists()


def test_save_load_model_round_trip(tmp_path: Path) -> None:
    torch.manual_seed(1)
    model = CpGTransformer(ModelConfig(n_cells=3, dna_window=0, n_layers=1, mode="2D")).eval()
    path = tmp_path / "m.pt"
    save_model(path, model, cells=["a", "b", "c"], extra={"temperature": 1.5})
    loaded, meta = load_model(path)
    assert meta["cells"] == ["a", "b", "c"] and meta["temperature"] == 1.5
    assert meta["config"] == model.config
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value)
    with pytest.raises(UsageError, match="2 cell names"):
        save_model(path, model, cells=["a", "b"])


def test_load_model_rejects_other_files(tmp_path: Path) -> None:
    path = tmp_path / "x.pt"
    torch.save({"a": torch.zeros(1)}, path)
    with pytest.raises(CheckpointError, match="not a cpgformer-model file"):
        load_model(path)
    with pytest.raises(CheckpointError, match="no such file"):
        load_model(tmp_path / "missing.pt")
